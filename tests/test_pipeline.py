"""The overlapped pipeline (tracker.io.pipeline): decode ahead, draw and encode behind, bounded, failures raised in
the caller's thread; through ``track``: the same tracks as the serial loop, a reader or writer failure is the
one-line error with finished frames kept, Ctrl-C keeps the finished tracks and overlay."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from _helpers import signal_after_progress

from tracker import PointTracker, create_featurizer, default_match_config
from tracker.io.formats import read_points
from tracker.io.pipeline import Prefetcher, Sink
from tracker.io.video import open_video
from tracker.synthetic import moving_objects, write_video

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 96)


# --------------------------------------------------------------------------- Prefetcher


class Source:
    """Yields 0, 1, 2 ... (``fail_at`` raises there); records how far it ran ahead and whether it was closed."""

    def __init__(self, n: int, fail_at: int | None = None):
        self.n, self.fail_at, self.produced, self.closed = n, fail_at, 0, False
        self.info = "info"

    def __iter__(self):
        for i in range(self.n):
            if i == self.fail_at:
                raise OSError(5, "Input/output error")
            self.produced += 1
            yield i

    def close(self):
        self.closed = True


def test_prefetcher_yields_in_order_ahead_but_bounded():
    source = Source(100)
    pre = Prefetcher(source, depth=4)
    assert pre.info == "info"
    it = iter(pre)
    assert next(it) == 0
    time.sleep(0.3)  # the producer runs ahead, but no further than the queue allows
    assert 2 <= source.produced <= 1 + 4 + 1
    assert [next(it) for _ in range(9)] == list(range(1, 10))
    pre.close()
    assert source.closed and not pre._thread.is_alive()
    assert source.produced < 100  # stopped, not decoded to the end


def test_prefetcher_raises_the_source_failure_after_the_items_before_it():
    pre = Prefetcher(Source(10, fail_at=6), depth=3)
    got = []
    with pytest.raises(OSError, match="Input/output error"):
        for item in pre:
            got.append(item)
    assert got == [0, 1, 2, 3, 4, 5]
    pre.close()
    with pytest.raises(ValueError):
        Prefetcher([], depth=0)


def test_both_prefetchers_refuse_a_second_iteration_and_one_after_close():
    """A closed prefetcher's producer stops at once and never says so: iterating it must fail, not wait for ever."""
    from tracker.io.pipeline import BatchPrefetcher

    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(5)]

    def first(make):
        outcome = []

        def run():
            try:
                outcome.append(next(iter(make())))
            except RuntimeError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive(), "iterating hung"
        return outcome[0]

    for make in (lambda: Prefetcher(list(frames), depth=2), lambda: BatchPrefetcher(list(frames), 2)):
        closed = make()
        closed.close()
        got = first(lambda closed=closed: closed)
        assert isinstance(got, RuntimeError) and "closed" in str(got)
        used = make()
        assert next(iter(used)) is not None
        got = first(lambda used=used: used)
        assert isinstance(got, RuntimeError) and "once" in str(got)
        used.close()


# --------------------------------------------------------------------------- Sink


def test_sink_keeps_order_and_raises_its_failure_in_the_caller():
    seen = []
    closed = []
    sink = Sink(lambda i, x: seen.append((i, x)), depth=2, on_close=lambda: closed.append(1))
    for i in range(20):
        sink.submit(i, i * i)
    sink.finish()
    assert seen == [(i, i * i) for i in range(20)] and sink.done == 20
    sink.close()
    sink.close()
    assert closed == [1]  # on_close once

    def fail(i):
        if i == 3:
            raise OSError(28, "No space left on device")
        seen.append(i)

    seen.clear()
    sink = Sink(fail, depth=2)
    with pytest.raises(OSError, match="No space"):
        for i in range(50):
            sink.submit(i)
            time.sleep(0.005)
    assert seen == [0, 1, 2]
    sink.finish()  # raised once; finishing after it does not raise again
    sink = Sink(fail, depth=8)
    for i in range(5):
        sink.submit(i)
    with pytest.raises(OSError, match="No space"):
        sink.finish()


# --------------------------------------------------------------------------- through `track`


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    write_video(str(folder / "clip.mp4"), moving_objects(num_frames=20, size=SIZE).frames)
    (folder / "points.json").write_text(json.dumps([[30.0, 25.0], [60.0, 40.0], [20.0, 50.0]]))
    return folder


def _track(folder: Path, *extra: str) -> tuple[int, str]:
    import contextlib
    import io

    from tracker.apps.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [str(folder / "clip.mp4"), "--points", str(folder / "points.json"), "--model", "sift", "--no-progress",
             "--batch", "4", *extra]
        )  # fmt: skip
    return code, err.getvalue()


def test_track_gives_the_serial_loop_s_tracks_and_a_full_overlay(clip: Path, tmp_path: Path):
    code, err = _track(clip, "--out-tracks", str(tmp_path / "t.npz"), "--out-video", str(tmp_path / "o.mp4"))
    assert code == 0, err
    got = np.load(tmp_path / "t.npz")
    # the serial loop: the same tracker over the decoded frames, no threads
    video = open_video(clip / "clip.mp4")
    featurizer = create_featurizer("sift", (video.info.height, video.info.width))
    tracker = PointTracker(featurizer, default_match_config("sift"))
    serial = list(tracker.track(iter(video), read_points(str(clip / "points.json")), batch_size=4))
    video.close()
    want = np.stack([r.xy.numpy() for r in serial])
    assert got["x"].shape == want.shape[:2] == (20, 3)
    # equal but for float summation order (track runs torch with one thread less on a CPU)
    np.testing.assert_allclose(np.stack([got["x"], got["y"]], -1), want, atol=1e-3, rtol=0)
    np.testing.assert_array_equal(got["visible"], np.stack([r.visible.numpy() for r in serial]))
    cap = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 20
    cap.release()


def test_a_writer_failure_half_way_is_one_line_and_keeps_the_tracks(clip: Path, tmp_path: Path, monkeypatch):
    from tracker.io import video as video_module

    original = video_module.AtomicVideoWriter.write

    def write(self, frame):
        if self.frames == 7:
            raise OSError(28, "No space left on device")
        original(self, frame)

    monkeypatch.setattr(video_module.AtomicVideoWriter, "write", write)
    code, err = _track(clip, "--out-tracks", str(tmp_path / "t.csv"), "--out-video", str(tmp_path / "o.mp4"))
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line.startswith("track: error")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in err, err
    assert "kept" in lines[0] and (tmp_path / "t.csv").exists()  # tracks of the finished frames
    assert threading.active_count() < 5  # the decode and draw threads ended


def test_a_reader_failure_half_way_is_one_line_and_keeps_the_tracks(clip: Path, tmp_path: Path, monkeypatch):
    from tracker.io import video as video_module

    frames = moving_objects(num_frames=10, size=SIZE).frames
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    data = (folder / "00006.png").read_bytes()
    (folder / "00006.png").write_bytes(data[: len(data) // 2])  # truncated: the reader fails there
    import contextlib
    import io

    from tracker.apps.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(
            [str(folder), "--points", str(clip / "points.json"), "--model", "sift", "--no-progress", "--batch", "4",
             "--out-tracks", str(tmp_path / "t.json"), "--out-video", str(tmp_path / "o.mp4")]
        )  # fmt: skip
    err = err.getvalue()
    assert code == 2, err
    assert "Traceback" not in err and re.search(r"00006\.png", err), err
    got = json.loads((tmp_path / "t.json").read_text())
    assert got["status"] == "failed" and got["num_frames_tracked"] == 6
    assert (tmp_path / "o.mp4").exists()
    cap = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6  # every frame before the truncated one, drawn
    cap.release()
    assert video_module  # imported for the same module state as the CLI


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_with_the_overlay_keeps_finished_tracks_and_video(tmp_path: Path):
    frames = 300
    write_video(str(tmp_path / "long.mp4"), moving_objects(num_frames=frames, size=SIZE).frames)
    (tmp_path / "points.json").write_text(json.dumps([[30.0, 25.0]]))
    env = dict(os.environ, PYTHONPATH=str(REPO), TRACKER_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "tracker.apps.cli", "long.mp4", "--points", "points.json", "--model", "sift",
            "--batch", "2", "--out-tracks", "t.json", "--out-video", "o.mp4"]  # fmt: skip
    code, stderr = signal_after_progress(argv, tmp_path, env, frames, signal.SIGINT, after=4)
    assert code == 130 and "Traceback" not in stderr and "track: interrupted" in stderr, stderr
    got = json.loads((tmp_path / "t.json").read_text())
    tracked = got["num_frames_tracked"]
    assert got["status"] == "interrupted"
    assert 4 <= tracked < frames
    cap = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == tracked  # every tracked frame drawn, none half-written
    cap.release()
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
