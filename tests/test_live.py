"""Desktop live demo, headless: a synthetic clip stands in for the camera, clicks and keys come from a script.

The saved tracks are checked against the clip's known motion; clicks added on a later frame (and while
paused) must equal the library's own add-queries path; the latest-frame source must drop, never queue.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tracker import PointTracker, Queries, TrackerError, create_featurizer, default_match_config
from tracker.apps.cli import main as track_main
from tracker.apps.live import has_gui
from tracker.apps.live_session import Click, Key, LiveSession, MouseGesture, Paint, paint_region, read_script
from tracker.apps.live_sources import LatestFrame, every_frame
from tracker.io.formats import read_tracks
from tracker.propagation import default_propagation_config
from tracker.synthetic import moving_objects, write_video

REPO = Path(__file__).resolve().parents[1]
NUM_FRAMES, SIZE = 24, (240, 320)


@pytest.fixture(scope="module")
def video():
    return moving_objects(num_frames=NUM_FRAMES, size=SIZE, num_objects=2, seed=0)


@pytest.fixture(scope="module")
def clip(video, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("live") / "clip.mp4"
    write_video(str(path), video.frames, fps=25)
    return path


def inner_points(video, obj: int, n: int, seed: int) -> np.ndarray:
    x0, y0, x1, y1 = video.object_boxes[obj]
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(x0 + 14, x1 - 14, n), rng.uniform(y0 + 14, y1 - 14, n)], 1)


def session_for(video) -> LiveSession:
    featurizer = create_featurizer("sift", SIZE)
    propagation = default_propagation_config("sift", radius=8.0, context=1)
    return LiveSession(featurizer, default_match_config("sift"), propagation, "sift | torch | cpu", {"model": "sift"})


def test_headless_scripted_run_through_the_command_line(tmp_path, video, clip):
    """`track live --camera clip.mp4 --headless --every-frame --script ... --save ...`: the tracks follow the motion."""
    on_a = inner_points(video, 0, 3, seed=1)  # clicked on frame 0
    truth_b = video.ground_truth(inner_points(video, 1, 2, seed=2), obj=1)
    on_b = truth_b[6]  # clicked on frame 6, where object 1 then is
    x0, y0, x1, y1 = video.object_boxes[1]
    events = [{"frame": 0, "click": p.tolist()} for p in on_a]
    events += [{"frame": 0, "paint": [[x0 + 8, y0 + 8], [x1 - 8, y0 + 8], [x1 - 8, y1 - 8], [x0 + 8, y1 - 8]]}]
    events += (
        [{"frame": 6, "key": "p"}] + [{"frame": 6, "click": p.tolist()} for p in on_b] + [{"frame": 6, "key": "space"}]
    )
    events += [{"frame": 12, "key": "s"}, {"frame": 20, "key": "q"}]
    (tmp_path / "events.json").write_text(json.dumps({"events": events}))
    proc = subprocess.run(
        [sys.executable, "-m", "tracker.apps.cli", "live", "--camera", str(clip), "--every-frame", "--headless"]
        + ["--script", "events.json", "--save", "tracks.json", "--model", "sift", "--snapshot", "last.png"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "saved 5 points x 13 frames" in proc.stderr  # key s after frame 12
    assert "quit: 21 frames processed (0 dropped)" in proc.stderr  # q after frame 20
    tracks = read_tracks(tmp_path / "tracks.json")
    doc = json.loads((tmp_path / "tracks.json").read_text())
    assert doc["source_frame"] == list(range(21)) and doc["model"] == "sift" and doc["dropped_frames"] == 0
    xy = np.stack([tracks["x"], tracks["y"]], -1)  # [T, N, 2]
    assert xy.shape == (21, 5, 2)
    error_a = np.linalg.norm(xy[:, :3] - video.ground_truth(on_a)[:21], axis=-1)
    assert np.allclose(xy[0, :3], on_a, atol=1e-3) and error_a.mean() < 1.5  # sift: about 1 px
    assert np.isnan(xy[:6, 3:]).all() and not tracks["visible"][:6, 3:].any()  # nothing before the click
    assert np.allclose(xy[6, 3:], on_b, atol=1e-3)
    error_b = np.linalg.norm(xy[6:, 3:] - truth_b[6:21], axis=-1)
    assert error_b.mean() < 1.5
    assert tracks["visible"][:, :3].mean() > 0.8 and tracks["visible"][6:, 3:].mean() > 0.8
    assert [p["frame"] for p in doc["points"]] == [0, 0, 0, 6, 6]
    assert (tmp_path / "last.png").stat().st_size > 0


def test_clicks_on_the_frame_shown_equal_the_library_path(video):
    """A click on frame t (already processed) gives the same tracks as queries added on t before processing it."""
    session = session_for(video)
    first, later = inner_points(video, 0, 2, seed=3), video.ground_truth(inner_points(video, 0, 2, seed=4))[5]
    for t, frame in enumerate(video.frames[:12]):
        session.feed(frame)
        if t == 0:
            for x, y in first:
                session.handle(Click(x, y))
        if t == 5:
            session.handle(Key("p"))
            for x, y in later:
                session.handle(Click(x, y))
            session.handle(Key("p"))
    assert not session.paused
    tracker = PointTracker(create_featurizer("sift", SIZE), default_match_config("sift"))
    queries = Queries.create(np.concatenate([first, later]), frame=[0, 0, 5, 5])
    expected = list(tracker.track(video.frames[:12], queries, batch_size=1))
    log = session.track_log().arrays()
    for t, r in enumerate(expected):
        assert np.allclose(np.stack([log["x"][t], log["y"][t]], -1), r.xy.numpy(), atol=1e-4, equal_nan=True)
        assert np.array_equal(log["visible"][t], r.visible.numpy())


def test_painted_mask_follows_its_object_and_clear_starts_over(video, tmp_path):
    session = session_for(video)
    session.feed(video.frames[0])
    with pytest.raises(TrackerError, match="outside"):
        session.handle(Click(400.0, 10.0))
    x0, y0, x1, y1 = video.object_boxes[0]
    lasso = np.array([[x0 + 6, y0 + 6], [x1 - 6, y0 + 6], [x1 - 6, y1 - 6], [x0 + 6, y1 - 6]])
    assert "mask 1" in session.handle(Paint(lasso, brush=6.0))
    for frame in video.frames[1:10]:
        session.feed(frame)
    labels, truth = session.masks.latest.labels, video.masks[9]
    iou = ((labels == 1) & (truth == 1)).sum() / ((labels == 1) | (truth == 1)).sum()
    assert iou > 0.7, iou  # measured 0.85
    image = session.render()
    assert image.shape == (*SIZE, 3) and not np.array_equal(image, video.frames[9])
    session.handle(Click(100.0, 100.0))
    session.handle(Key("c"))
    assert session.num_points == 0 and session.num_masks == 0 and len(session.results) == 1
    session.handle(Click(50.0, 60.0))
    session.feed(video.frames[10])
    message = session.handle(Key("s"), save_path=tmp_path / "t.csv")
    assert message == f"saved 1 point x 2 frames -> {tmp_path / 't.csv'}"
    assert read_tracks(tmp_path / "t.csv")["x"].shape == (2, 1)


def test_mouse_gestures_and_painted_regions():
    gesture = MouseGesture(slop=4, brush=3)
    gesture.down(10, 10)
    gesture.move(12, 11)
    assert gesture.up(12, 11) == Click(10, 10)
    gesture.down(10, 10)
    for x in range(10, 41, 5):
        gesture.move(x, 10 + (x - 10) // 2)
    paint = gesture.up(10, 40)
    assert isinstance(paint, Paint) and len(paint.polygon) == 9
    region = paint_region(paint, (60, 60))
    assert region[20, 15] and not region[55, 55]  # inside the lasso; far outside it
    assert gesture.up(0, 0) is None  # a release without a press


def test_latest_frame_source_drops_and_never_queues():
    frames = (np.full((4, 4, 3), i, np.uint8) for i in range(40))
    source = LatestFrame(frames, fps=400.0)
    taken = []
    while (item := source.next(timeout=5)) is not None:
        taken.append(item[0])
        assert int(item[1][0, 0, 0]) == item[0]
        time.sleep(0.02)  # a slow tracker
    source.close()
    assert taken == sorted(set(taken)) and taken[-1] == 39  # in order, and the newest frame is always taken
    assert source.dropped > 10 and source.dropped + len(taken) == 40
    assert list(every_frame(iter([np.zeros(1)] * 3)))[-1][0] == 2


def test_file_at_its_frame_rate_drops_frames_and_keeps_tracking(tmp_path, video, monkeypatch):
    """A clip at 200 frames/s (each synthetic frame 8 times) with a tracker step of at least 12 ms: the tracker
    cannot keep up, so frames are dropped and the points are tracked across them; the newest frame is always the
    one processed. (The step is slowed on purpose: a fast machine runs sift on 3 points at over 200 frames/s.)"""
    from tracker.tracking import PointTracker

    advance = PointTracker.advance

    def slow_advance(self, *args, **kwargs):
        time.sleep(0.012)  # 2.4 frame periods of the clip
        return advance(self, *args, **kwargs)

    monkeypatch.setattr(PointTracker, "advance", slow_advance)
    fast = tmp_path / "fast.mp4"
    write_video(str(fast), np.repeat(video.frames, 8, axis=0), fps=200)
    points = inner_points(video, 0, 3, seed=5)
    (tmp_path / "s.json").write_text(json.dumps([{"frame": 0, "click": p.tolist()} for p in points]))
    code = track_main(
        ["live", "--camera", str(fast), "--headless", "--model", "sift"]
        + ["--script", str(tmp_path / "s.json"), "--save", str(tmp_path / "t.json")]
    )
    assert code == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    source_frames = np.array(doc["source_frame"])
    total = 8 * NUM_FRAMES
    assert doc["dropped_frames"] > 0 and len(source_frames) + doc["dropped_frames"] == total
    assert source_frames[0] == 0 and source_frames[-1] == total - 1 and (np.diff(source_frames) > 0).all()
    tracks = read_tracks(tmp_path / "t.json")
    xy = np.stack([tracks["x"], tracks["y"]], -1)
    error = np.linalg.norm(xy - video.ground_truth(points)[source_frames // 8], axis=-1)
    # sift searches 3 cells around the last estimate: points follow across gaps of up to 2 clip frames; on a
    # loaded machine the gaps can be larger (a limit of the weight-free fallback), so check the frames up to
    # the first larger gap
    gaps = np.diff(source_frames // 8)
    k = len(source_frames) if (gaps <= 2).all() else int(np.argmax(gaps > 2)) + 1
    assert k >= 2 and error[:k].mean() < 2.0


def test_a_source_failing_half_way_keeps_the_tracks(tmp_path, video, capsys):
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(video.frames[:8]):
        cv2.imwrite(str(folder / f"{i:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (folder / "00005.png").write_bytes(b"not a png")
    (tmp_path / "s.json").write_text(json.dumps([{"frame": 0, "click": [100.0, 100.0]}]))
    argv = ["live", "--camera", str(folder), "--every-frame", "--headless", "--model", "sift"]
    argv += ["--script", str(tmp_path / "s.json"), "--save", str(tmp_path / "t.json")]
    assert track_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("track: error: cannot read frame") and f"(tracks of 5 frames saved to {tmp_path}" in err
    assert read_tracks(tmp_path / "t.json")["x"].shape == (5, 1)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--camera", "missing.mp4", "--model", "sift"], "video not found: missing.mp4"),
        (["--camera", "0", "--every-frame", "--model", "sift"], "--every-frame applies to a video file"),
        (["--camera", "{clip}", "--save", "t.txt"], "--save must end in .json, .csv or .npz, got t.txt"),
        (["--camera", "{clip}", "--script", "{bad}"], "event 0: 'click' must be [x, y]"),
        (["--camera", "{clip}", "--model", "nope"], "unknown model 'nope'"),
        (["--camera", "{clip}", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, clip, capsys, argv, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"frame": 0, "click": [1, "a"]}]))
    argv = [a.format(clip=clip, bad=bad) for a in argv] + ["--headless"]
    assert track_main(["live", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("track: error: ") and message in err[0], err


@pytest.mark.skipif(Path("/dev/video7").exists(), reason="this machine has a camera 7")
def test_a_missing_camera_is_our_one_line_without_opencvs_warnings(tmp_path):
    """OpenCV logs "[ WARN:0@3.2] ... can't open camera by index" to fd 2 (two lines) before our error."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("OPENCV_LOG_LEVEL", None)
    argv = [sys.executable, "-m", "tracker.apps.cli", "live", "--camera", "7", "--headless", "--model", "sift"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [
        "track: error: cannot open camera 7 (is one connected, and not used by another program?)"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(has_gui(), reason="this OpenCV can open windows")
def test_a_window_without_gui_support_is_a_clear_error(clip, capsys):
    assert track_main(["live", "--camera", str(clip), "--model", "sift"]) == 2
    err = capsys.readouterr().err
    assert f"run with --headless, or replace it: {sys.executable} -m pip uninstall -y opencv-python-headless" in err
    assert f"&& {sys.executable} -m pip install opencv-python" in err  # the venv's pip, not the shell's


def test_script_reading(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"frame": 3, "key": "q"}, {"frame": 1, "click": [1, 2]}, {"frame": 1, "key": "esc"}]))
    events = read_script(path)
    assert [e.frame for e in events] == [1, 1, 3] and events[0].event == Click(1.0, 2.0)
    assert events[1].event.action == "quit"
    path.write_text(json.dumps([{"frame": 0, "key": "x"}]))
    with pytest.raises(TrackerError, match="unknown key 'x'"):
        read_script(path)
