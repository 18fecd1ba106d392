"""Streaming tracker on synthetic video with known sub-pixel motion; state API; output formats."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import tracker.tracking as tracking
from tracker import MatchConfig, PointTracker, Queries, TrackerError, create_featurizer, default_match_config
from tracker.io.formats import TrackLog, read_tracks, write_tracks
from tracker.synthetic import moving_objects, write_video


@pytest.fixture(scope="module")
def video():
    return moving_objects(num_frames=24, size=(240, 320), seed=0)


@pytest.fixture(scope="module")
def object_points(video):
    x0, y0, x1, y1 = video.object_boxes[0]
    rng = np.random.default_rng(1)
    return np.stack([rng.uniform(x0 + 12, x1 - 12, 20), rng.uniform(y0 + 12, y1 - 12, 20)], 1)


def run(tracker, frames, queries, batch=8):
    results = list(tracker.track(frames, queries, batch_size=batch))
    return torch.stack([r.xy for r in results]).numpy(), torch.stack([r.visible for r in results]).numpy()


def test_sift_tracks_subpixel_motion(video, object_points):
    tracker = PointTracker(create_featurizer("sift", (240, 320)), default_match_config("sift"))
    xy, visible = run(tracker, video.frames, Queries.create(object_points))
    error = np.linalg.norm(xy - video.ground_truth(object_points), axis=-1)
    print(f"sift synthetic: mean error {error.mean():.3f} px, visible {visible.mean():.2f}")
    assert error.mean() < 1.3  # measured 1.06 px
    assert np.median(error) < 1.2
    assert visible.mean() > 0.8
    assert error[visible].max() < 4.0  # nothing judged visible is far off


def test_global_matching_marks_its_outliers_invisible(video, object_points):
    tracker = PointTracker(create_featurizer("sift", (240, 320)), MatchConfig())
    xy, visible = run(tracker, video.frames, Queries.create(object_points))
    error = np.linalg.norm(xy - video.ground_truth(object_points), axis=-1)
    assert error[visible].mean() < 1.5
    assert (error[visible] > 8).sum() == 0


def test_init_step_equals_generator_and_batch_size_does_not_matter(video, object_points):
    tracker = PointTracker(create_featurizer("sift", (240, 320)), default_match_config("sift"))
    queries = Queries.create(object_points[:5])
    state = tracker.init(video.frames[0], queries)
    stepped = [state.latest]
    for frame in video.frames[1:10]:
        result, state = tracker.step(state, frame)
        stepped.append(result)
    batched = list(tracker.track(video.frames[:10], queries, batch_size=3))
    assert [r.frame_index for r in stepped] == list(range(10))
    for a, b in zip(stepped, batched, strict=True):
        assert torch.allclose(a.xy, b.xy, atol=1e-4) and torch.equal(a.visible, b.visible)
    assert torch.equal(stepped[0].xy, queries.xy) and stepped[0].visible.all()


def test_points_added_on_a_later_frame_without_restarting(video, object_points):
    tracker = PointTracker(create_featurizer("sift", (240, 320)), default_match_config("sift"))
    truth = video.ground_truth(object_points)
    state = tracker.init(video.frames[0], Queries.create(object_points[:3]))
    for t in range(1, 24):
        if t == 6:
            state = tracker.add_queries(state, Queries.create(truth[6, 3:6], frame=6, labels=["a", "b", "c"]))
        result, state = tracker.step(state, video.frames[t])
        if t < 6:
            assert result.xy.shape == (3, 2)
    assert result.xy.shape == (6, 2) and state.queries.labels[3:] == ("a", "b", "c")
    assert np.linalg.norm(result.xy.numpy() - truth[23, :6], axis=1).mean() < 2.0
    with pytest.raises(TrackerError, match="not yet processed"):
        tracker.add_queries(state, Queries.create([[10.0, 10.0]], frame=3))


def test_queries_on_a_later_frame_report_nothing_before(video, object_points):
    tracker = PointTracker(create_featurizer("sift", (240, 320)), default_match_config("sift"))
    truth = video.ground_truth(object_points)
    queries = Queries.create(truth[5, :4], frame=5)
    results = list(tracker.track(video.frames, queries))
    assert all(torch.isnan(r.xy).all() and not r.visible.any() for r in results[:5])
    assert torch.allclose(results[5].xy, queries.xy)
    assert np.linalg.norm(results[-1].xy.numpy() - truth[-1, :4], axis=1).mean() < 2.0


def test_points_outside_the_frame_are_refused(video):
    tracker = PointTracker(create_featurizer("sift", (240, 320)))
    with pytest.raises(TrackerError, match="outside"):
        tracker.init(video.frames[0], Queries.create([[400.0, 10.0]]))


@pytest.mark.parametrize("suffix", [".json", ".csv", ".npz"])
def test_tracks_round_trip_in_every_format(tmp_path, video, object_points, suffix):
    tracker = PointTracker(create_featurizer("sift", (240, 320)), default_match_config("sift"))
    queries = Queries.create(np.concatenate([object_points[:2], [[50.0, 60.0]]]), frame=[0, 0, 3])
    log = TrackLog(queries)
    for result in tracker.track(video.frames[:6], queries):
        log.append(result)
    path = tmp_path / f"tracks{suffix}"
    write_tracks(path, log, {"model": "sift"})
    back = read_tracks(path)
    ref = log.arrays()
    assert np.array_equal(back["visible"], ref["visible"])
    for key in ("x", "y", "score"):
        assert np.allclose(back[key], ref[key], atol=1e-3, equal_nan=True)
    assert np.isnan(back["x"][:3, 2]).all() and back["x"][3, 2] == pytest.approx(50.0)


def test_tiny_random_vit_end_to_end_through_the_command_line(tmp_path, video, object_points):
    """The real ViT-S/14-reg4 architecture with random weights, through `track`, at a small input size."""
    write_video(str(tmp_path / "clip.mp4"), video.frames[:6])
    (tmp_path / "points.json").write_text(json.dumps([[float(x), float(y)] for x, y in object_points[:4]]))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tracker.apps.cli",
            "clip.mp4",
            "--points",
            "points.json",
            "--model",
            "dinov2-s",
            "--weights",
            "random",
            "--size",
            "112",
            "--keep-aspect",
            "--out-tracks",
            "t.npz",
            "--out-video",
            "o.mp4",
            "--batch",
            "4",
            "--no-progress",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "dinov2-s, torch fp32 on cpu" in proc.stderr
    tracks = read_tracks(tmp_path / "t.npz")
    assert tracks["x"].shape == (6, 4) and np.isfinite(tracks["x"]).all()
    assert np.allclose(tracks["x"][0], object_points[:4, 0], atol=1e-3)
    with np.load(tmp_path / "t.npz") as data:
        meta = json.loads(str(data["meta"]))
    assert meta["input_size"] == [154, 112] and meta["grid_size"] == [11, 8]
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "o.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6


def test_refine_modes_interface(video, object_points):
    from tracker.tracking import FOLLOW, NOT_STARTED, OCCLUDED, REDETECT, REFINE_MODES

    assert "none" in REFINE_MODES and len({FOLLOW, REDETECT, OCCLUDED, NOT_STARTED}) == 4
    featurizer = create_featurizer("sift", (240, 320))
    with pytest.raises(TrackerError, match="unknown refinement"):
        PointTracker(featurizer, refine="magic")
    tracker = PointTracker(featurizer, default_match_config("sift"), refine="none")
    queries = Queries.create(object_points[:4], frame=[0, 0, 2, 2])
    results = list(tracker.track(video.frames[:4], queries))
    decision = torch.stack([r.decision for r in results])
    assert decision.dtype == torch.int8 and decision.shape == (4, 4)
    assert (decision[:2, 2:] == NOT_STARTED).all() and (decision[2:, 2:] != NOT_STARTED).all()


@pytest.fixture(scope="module")
def staggered():
    """16 small frames, their sift grids, and 30 points given on frames 0, 3, 9 and 13 (mid-video, mid-batch)."""
    clip = moving_objects(num_frames=16, size=(96, 128), seed=2)
    featurizer = create_featurizer("sift", (96, 128))
    with torch.inference_mode():
        grids = featurizer(torch.from_numpy(clip.frames))
    rng = np.random.default_rng(3)
    xy = np.stack([rng.uniform(2, 125, 30), rng.uniform(2, 93, 30)], 1)
    return clip, featurizer, grids, Queries.create(xy, [0] * 10 + [3] * 8 + [9] * 7 + [13] * 5)


@pytest.mark.parametrize("model", ["sift", "dinov2-s"])  # local search + update 0.2; global (the ViT defaults)
@pytest.mark.parametrize("budget", [None, 1])  # runs as long as the batch allows; one frame per run
def test_batched_refine_none_step_equals_the_per_frame_step(staggered, model, budget, monkeypatch):
    clip, featurizer, grids, queries = staggered
    if budget is not None:
        monkeypatch.setattr(tracking, "BATCH_BUDGET", {"cpu": budget})
    tracker = PointTracker(featurizer, default_match_config(model), refine="none")
    start = tracker.add_queries(tracker.empty_state(96, 128), queries)
    state, per_frame = start, []
    for grid in grids:
        state = tracker.advance(state, grid)
        per_frame.append(state.latest)
    for batch in (5, 8):  # runs split at frames 3, 9, 13 inside and at the edges of batches
        batched = list(tracker.track(clip.frames, queries, batch_size=batch))
        assert [r.frame_index for r in batched] == list(range(16))
        for want, got in zip(per_frame, batched, strict=True):
            assert torch.equal(want.xy.isnan(), got.xy.isnan())
            assert torch.allclose(want.xy.nan_to_num(), got.xy.nan_to_num(), atol=1e-4, rtol=0)  # measured 7.6e-6 px
            assert torch.allclose(want.score.nan_to_num(), got.score.nan_to_num(), atol=1e-5, rtol=0)
            assert torch.equal(want.visible, got.visible) and torch.equal(want.decision, got.decision)
    visible = torch.stack([r.visible for r in per_frame])
    assert 0.3 < visible[4:].float().mean() < 1  # matches judged both ways, so the verdicts are compared for real
    assert (torch.stack([r.decision for r in per_frame])[:13] == -1).any()  # points not started yet, masked
    # the state the batches leave is the per-frame one: same descriptors (updated with sift), priors, query grids
    after = tracker.advance_batch(start, grids[:8])[1]
    mid = start
    for grid in grids[:8]:
        mid = tracker.advance(mid, grid)
    assert after.next_frame == mid.next_frame == 8 and sorted(after.query_features) == sorted(mid.query_features)
    assert torch.allclose(after.descriptors, mid.descriptors, atol=1e-5)
    assert torch.allclose(after.last_uv, mid.last_uv, atol=1e-5)
