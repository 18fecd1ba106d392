"""glibc malloc settings that keep a long run's memory flat in video length.

Every featurizer batch allocates and frees large short-lived buffers (frames, the resized input, the dense
SIFT gradient and orientation maps, the ``[B, C, h, w]`` grids: a few MB to tens of MB each), while every
frame leaves a few small long-lived allocations behind (the per-frame result tensors the track log keeps,
the overlay writer's state). glibc serves large requests with ``mmap`` only above a threshold that starts
at 128 KiB and *rises* to the size of any mmapped block that is freed (up to 32 MiB), so after the first
batch the large buffers come from the heap instead. Small long-lived allocations are then carved out of
freed large blocks, which pins them, and the next batch's buffers no longer fit in the holes: the heap
grows by several MB per batch although nothing leaks. Measured (``--model sift --size 120``, 160x120 clip,
12 points, no overlay, 2 cores): RSS 1014 MiB at frames 450-1050, 1218 at 1650, 1722 at 2850; with this
fixed threshold 855 MiB at frame 50 and 865 at 1650; with the track log in blocks 873 and 877; with
``malloc_trim(0)`` every 50 frames 855-859 after each trim (runs stopped at frame 1650-1736).

:func:`keep_memory_flat` fixes the threshold (which also switches off glibc's dynamic adjustment), so
large buffers are mapped and unmapped with each batch and return to the system when freed. The threshold is
16 MiB, not lower: every mapping is faulted in and zeroed page by page when first touched, and at 64 KiB the
many 0.2-3 MB per-frame buffers of a 720p run (decoded frames, grey copies, similarity maps) were mapped afresh
each frame. ``track`` on the 720p dog clip with 256 points (sift, 2-core CPU, two alternated rounds): 19.0 / 22.7
frames/s at 64 KiB (system time 10.7 / 8.2 s), 28.1 / 30.6 at 16 MiB (5.0 / 4.2 s). It stays flat at 16 MiB
(``benchmarks/memory_flat.py``): 320x240, 3,000 frames, x1.013 without and x0.976 with the overlay; 1280x720,
2,000 frames, x0.978; 160x120 at ``--size 120``, 8,000 frames, x1.004. The ``track``
command calls it at start; library users with long runs can call it too. It also sets the trim threshold to the
same 16 MiB: fixing the mmap threshold leaves that one at its 128 KiB start (the dynamic mode would have raised
it), and the heap's free top was handed back to the system and faulted in again every frame (720p, 256 points:
1.42 M -> 0.37 M minor faults, 3.4 -> 0.8 s system time, +10 MB peak; ``track`` 29.5-31.2 -> 33.6-34.2 frames/s
without the overlay, 24.0-25.3 -> 27.2-28.2 with it, benchmarks/results/cpu-2core/track_fps_sift_profile.md);
still flat: 1280x720, 1,500 frames, x0.996 without and x1.006 with the overlay; 320x240, 3,000 frames, x1.003 and
x0.999 (``benchmarks/memory_flat.py``). It does nothing on other C
libraries (macOS, Windows, musl) and when the user set ``MALLOC_MMAP_THRESHOLD_`` in the environment.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 << 20  # bytes; requests this large or larger get their own mapping

_applied: bool | None = None


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
    except OSError:  # pragma: no cover - static or unusual interpreter builds
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None


def keep_memory_flat(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve allocations of ``threshold`` bytes or more with their own ``mmap`` (glibc only; idempotent).

    Args:
        threshold: bytes; glibc's own default starts at 128 KiB but drifts up to 32 MiB, which is what
            fragments the heap of a long run (fixing it, at any value, is what keeps memory flat).

    Returns:
        True when the setting is in force (applied now or earlier), False on other C libraries or when
        ``MALLOC_MMAP_THRESHOLD_`` is set in the environment (then glibc already uses the user's value).
    """
    global _applied
    if _applied is not None:
        return _applied
    libc = _glibc()
    if libc is None or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        _applied = False
    else:
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.mallopt.restype = ctypes.c_int
        _applied = bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
        if _applied and "MALLOC_TRIM_THRESHOLD_" not in os.environ:
            # fixing the mmap threshold also leaves the trim threshold at its 128 KiB start (the dynamic mode
            # would have raised it to twice the mmap threshold): the heap's free top was returned to the system
            # and faulted in again every frame (720p, 256 points: 1.4 M minor faults, 3.4 s system time)
            libc.mallopt(M_TRIM_THRESHOLD, int(threshold))
    return _applied
