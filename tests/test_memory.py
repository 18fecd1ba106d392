"""Memory flat in video length (issue 12, section 4).

The long check, the real ``track`` command over 3,000 frames with its RSS sampled, is
``benchmarks/memory_flat.py`` (minutes on 2 cores). These tests check its two causes fast:

* glibc's mmap threshold drifts up after the first large buffer is freed, so the featurizer's per-batch
  buffers come from the heap, where small long-lived allocations pin them: ``keep_memory_flat`` (called by
  ``track`` at start) keeps the threshold fixed;
* the track log kept three small tensors per frame (those long-lived allocations): it now copies each frame
  into preallocated blocks.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tracker.allocator import _glibc
from tracker.io.formats import TrackLog
from tracker.tracking import Queries, TrackResult

REPO = Path(__file__).resolve().parents[1]

# In a fresh process: free a 30 MiB buffer (glibc then raises its mmap threshold to 30 MiB unless it is
# fixed; its ceiling is 32 MiB), allocate 20 MiB and print how many bytes of it were mmapped (mallinfo2().hblkhd
# grew by).
PROBE = textwrap.dedent(
    """
    import ctypes, sys
    import numpy as np
    from tracker.allocator import keep_memory_flat
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Info
    if sys.argv[1] == "fixed":
        assert keep_memory_flat()
    big = np.ones(30 << 20, np.uint8)
    del big
    before = libc.mallinfo2().hblkhd
    buffer = np.ones(20 << 20, np.uint8)
    print(libc.mallinfo2().hblkhd - before)
    """
)


def mmapped_bytes_of_20mib(mode: str, env: dict | None = None) -> int:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True, text=True, check=True, env=env
    )
    return int(out.stdout.strip())


needs_glibc = pytest.mark.skipif(_glibc() is None or not hasattr(_glibc(), "mallinfo2"), reason="glibc >= 2.33 only")


@needs_glibc
def test_mmap_threshold_stays_fixed_after_a_large_free():
    # glibc's default: after a 30 MiB block is freed, a 20 MiB buffer comes from the heap (the cause) ...
    assert mmapped_bytes_of_20mib("default") == 0
    # ... with keep_memory_flat (a 16 MiB threshold) it gets its own mapping, returned to the system when freed.
    assert mmapped_bytes_of_20mib("fixed") >= 20 << 20


@needs_glibc
def test_keep_memory_flat_leaves_a_users_malloc_setting_alone():
    import os

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(4 << 20)}
    code = "from tracker.allocator import keep_memory_flat; print(keep_memory_flat())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "False"


def test_track_command_fixes_the_threshold(monkeypatch):
    import tracker.allocator as allocator
    from tracker.apps import cli

    calls = []
    monkeypatch.setattr(allocator, "keep_memory_flat", lambda *a: calls.append(a) or True)
    assert cli.main(["--model", "nope", "x.mp4", "--points", "p.json"]) == 2  # fails on input, after the call
    assert calls == [()]


def result(t: int, n: int) -> TrackResult:
    xy = torch.arange(2 * n, dtype=torch.float32).view(n, 2) + t
    xy[0] = float("nan")  # a point before its query frame
    return TrackResult(t, xy, torch.arange(n) % 2 == t % 2, torch.linspace(0, 1, n) * (t + 1))


def test_track_log_copies_results_into_blocks():
    n, frames = 5, 11
    log = TrackLog(Queries.create(np.zeros((n, 2))), block=4)  # 3 blocks, the last one partly filled
    results = [result(t, n) for t in range(frames)]
    for r in results:
        log.append(r)
        r.xy.fill_(-7)  # the log holds copies, not the result's tensors
        r.score.fill_(-7)
        r.visible.fill_(False)
    assert len(log) == frames and len(log._blocks) == 3
    got = log.arrays()
    fresh = [result(t, n) for t in range(frames)]
    xy = np.stack([r.xy.numpy() for r in fresh])
    np.testing.assert_array_equal(got["x"], xy[..., 0])
    np.testing.assert_array_equal(got["y"], xy[..., 1])
    np.testing.assert_array_equal(got["visible"], np.stack([r.visible.numpy() for r in fresh]))
    np.testing.assert_array_equal(got["score"], np.stack([r.score.numpy() for r in fresh]))
    assert got["visible"].dtype == bool and got["x"].dtype == got["score"].dtype == np.float32
    np.testing.assert_array_equal(got["frame"], np.arange(frames))
    np.testing.assert_array_equal(got["point"], np.arange(n))


def test_empty_track_log():
    got = TrackLog(Queries.create(np.zeros((3, 2)))).arrays()
    assert got["x"].shape == got["visible"].shape == (0, 3)
