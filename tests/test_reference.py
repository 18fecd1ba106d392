"""Queries from a reference image (tracker.reference, ``track --reference``): sift on synthetic clips whose
reference is a shifted crop of frame 0 (or its mirror image), so every point's truth is known."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from tracker.apps.cli import main
from tracker.featurizers import create_featurizer, default_match_config
from tracker.reference import (
    ReferenceConfig,
    ReferenceSearch,
    featurize_reference,
    letterbox,
    transfer_mask,
)
from tracker.synthetic import moving_objects, write_video
from tracker.tracking import NOT_STARTED, PointTracker

SIZE = (240, 320)
CROP = (10, 16)  # the reference is frame 0 from this (row, column) on, 220 x 300 pixels


@pytest.fixture(scope="module")
def clip():
    return moving_objects(12, SIZE, 1, seed=0)


@pytest.fixture(scope="module")
def featurizer():
    return create_featurizer("sift", SIZE)


def _reference(clip, mirror: bool = False):
    """``(reference image, points on it [N, 2], the same points on frame 0 [N, 2])``."""
    oy, ox = CROP
    ref = clip.frames[0][oy : oy + 220, ox : ox + 300].copy()
    x0, y0, x1, y1 = clip.object_boxes[0]
    pts = np.array([(x, y) for x in np.linspace(x0 + 8, x1 - 8, 4) for y in np.linspace(y0 + 8, y1 - 8, 3)])
    ref_xy = pts - [ox, oy]
    if mirror:
        ref = np.ascontiguousarray(ref[:, ::-1])
        ref_xy[:, 0] = ref.shape[1] - 1 - ref_xy[:, 0]
    return ref, ref_xy, pts


def _run(clip, featurizer, ref, ref_xy, refine="lk", **config):
    tracker = PointTracker(featurizer, default_match_config("sift"), refine=refine)
    config = ReferenceConfig(**config)
    views = featurize_reference(featurizer, ref, SIZE, flip=config.flip)
    search = ReferenceSearch(tracker, views, ref_xy, config=config)
    with torch.inference_mode():
        results = list(search.track(list(clip.frames), batch_size=5))
    return search, np.stack([r.xy.numpy() for r in results]), np.stack([r.visible.numpy() for r in results])


def test_letterbox_keeps_the_pixel_scale_and_maps_points():
    image = np.arange(50 * 80 * 3, dtype=np.uint8).reshape(50, 80, 3)
    canvas, inside, where = letterbox(image, (60, 100))
    assert where.scale == 1.0 and where.offset == (10.0, 5.0) and inside.sum() == 50 * 80
    assert (canvas[5:55, 10:90] == image).all()
    np.testing.assert_allclose(where.to_canvas(np.array([[0.0, 0.0], [79.0, 49.0]])), [[10, 5], [89, 54]])
    _, _, shrunk = letterbox(np.zeros((120, 100, 3), np.uint8), (60, 100))  # too tall: halved, centred
    assert shrunk.scale == 0.5 and shrunk.offset == (25.0, 0.0)


@pytest.mark.parametrize("refine", ["lk", "none"])
def test_points_found_within_a_cell_and_tracked(clip, featurizer, refine):
    ref, ref_xy, pts = _reference(clip)
    search, xy, visible = _run(clip, featurizer, ref, ref_xy, refine)
    truth = clip.ground_truth(pts)  # [T, N, 2]
    cell = max(featurizer.geometry(*SIZE).cell_size)
    found = search.found_frame >= 0
    assert found.mean() >= 0.9 and (search.found_frame[found] <= 1).all()
    for i in np.flatnonzero(found):
        t = search.found_frame[i]
        assert np.linalg.norm(search.found_xy[i] - truth[t, i]) <= cell
        assert np.isnan(xy[:t, i]).all() and not visible[:t, i].any()  # invisible until found
    err_last = np.linalg.norm(xy[-1, found] - truth[-1, found], axis=1)
    assert np.median(err_last) <= cell and visible[-1, found].mean() >= 0.8
    summary = search.summary()
    assert summary["found"] == found.sum()
    assert all(0.5 <= p["match_score"] <= 1 for p in summary["points"] if p["found_frame"] is not None)


def test_flip_finds_points_on_a_mirrored_reference(clip, featurizer):
    ref, ref_xy, pts = _reference(clip, mirror=True)
    cell = max(featurizer.geometry(*SIZE).cell_size)

    def right(search) -> np.ndarray:  # found, on frame 0 or 1, within a cell of the truth
        truth = clip.ground_truth(pts)
        t = np.maximum(search.found_frame, 0)
        near = np.linalg.norm(search.found_xy - truth[t, np.arange(len(pts))], axis=1) <= cell
        return (search.found_frame >= 0) & near

    plain, _, _ = _run(clip, featurizer, ref, ref_xy)
    flipped, _, _ = _run(clip, featurizer, ref, ref_xy, flip=True)
    assert right(flipped).mean() >= 0.9 and flipped.flipped[right(flipped)].all()
    assert right(plain).mean() <= 0.5  # sift is not mirror-invariant: without the flip most are lost or wrong


def test_points_never_found_are_invisible_throughout(clip, featurizer):
    ref, ref_xy, _ = _reference(clip)
    noise = np.random.default_rng(0).integers(0, 256, ref.shape, np.uint8)  # nothing of the clip in it
    search, xy, visible = _run(clip, featurizer, noise, ref_xy, search_frames=3)
    lost = search.found_frame < 0
    assert lost.mean() >= 0.8 and search.searched == 3
    assert np.isnan(xy[:, lost]).all() and not visible[:, lost].any()


def test_mask_transferred_to_frame_zero(clip, featurizer):
    oy, ox = CROP
    truth = clip.masks[0] > 0
    with torch.inference_mode():
        grid = featurizer(torch.from_numpy(clip.frames[:1]))[0]
        for mirror in (False, True):
            ref = clip.frames[0][oy : oy + 220, ox : ox + 300]
            mask = clip.masks[0][oy : oy + 220, ox : ox + 300]
            if mirror:
                ref, mask = np.ascontiguousarray(ref[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
            views = featurize_reference(featurizer, ref, SIZE, flip=mirror)
            done = transfer_mask(views, mask, grid, SIZE)
            got = done.labels > 0
            assert (truth & got).sum() / (truth | got).sum() >= 0.8
            assert done.flipped == mirror


# --------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def files(tmp_path_factory, clip):
    d = tmp_path_factory.mktemp("reference")
    small = moving_objects(6, (96, 128), 1, seed=1)
    write_video(str(d / "clip.mp4"), small.frames)
    ref = small.frames[0][4:92, 8:120]
    cv2.imwrite(str(d / "ref.png"), cv2.cvtColor(ref, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "ref_mask.png"), (small.masks[0][4:92, 8:120] > 0).astype(np.uint8) * 255)
    cv2.imwrite(str(d / "other_mask.png"), np.zeros((20, 20), np.uint8))
    (d / "broken.png").write_bytes(b"not an image")
    x0, y0, x1, y1 = small.object_boxes[0]
    pts = {"points": [{"x": x0 + 6 - 8, "y": y0 + 6 - 4, "label": "corner"}, {"x": x1 - 14, "y": y1 - 10}]}
    (d / "pts.json").write_text(json.dumps(pts))
    return d


def test_cli_points_from_a_reference(files, capsys):
    out = files / "tracks.json"
    argv = [str(files / "clip.mp4"), "--reference", str(files / "ref.png"), "--points", str(files / "pts.json")]
    code = main([*argv, "--model", "sift", "--out-tracks", str(out), "--no-video", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "2 points through 6 frames (2 found from the reference)" in err
    doc = json.loads(out.read_text())
    ref = doc["reference"]
    assert ref["path"] == str(files / "ref.png") and ref["found"] == 2
    assert [p["label"] for p in ref["points"]] == ["corner", ""]
    for i, p in enumerate(ref["points"]):  # found on frame 0 or 1 (mp4 noise), a query there
        t = p["found_frame"]
        assert t in (0, 1) and p["match_score"] >= 0.5
        assert doc["visible"][t][i] == 1 and doc["score"][t][i] == round(p["match_score"], 4)
        assert doc["x"][t][i] == round(p["x"], 3) and doc["y"][t][i] == round(p["y"], 3)
        assert all(doc["x"][k][i] is None for k in range(t))


def test_cli_mask_from_a_reference(files, capsys):
    out = files / "masks"
    argv = [str(files / "clip.mp4"), "--reference", str(files / "ref.png"), "--mask", str(files / "ref_mask.png")]
    code = main([*argv, "--model", "sift", "--out-masks", str(out), "--no-video", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "reference: mask carried onto frame 0" in err and len(list(out.glob("*.png"))) == 6


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reference", "{d}/missing.png", "--points", "{d}/pts.json"], "--reference: image not found"),
        (["--reference", "{d}/broken.png", "--points", "{d}/pts.json"], "--reference: cannot read image"),
        (["--reference", "{d}/ref.png", "--points", "500,10"], "outside the 112x88 reference image"),
        (["--reference", "{d}/ref.png", "--points", "5,10,3"], "drop their frame numbers"),
        (["--reference", "{d}/ref.png", "--colormap"], "--reference goes with --points or --mask"),
        (["--reference", "{d}/ref.png", "--edit", "{d}/ref.png"], "--reference goes with --points or --mask"),
        (["--reference", "{d}/ref.png", "--grid", "3"], "--reference goes with --points or --mask"),
        (["--reference-flip", "--points", "5,5"], "--reference-flip goes with --reference"),
        (["--reference-frames", "3", "--points", "5,5"], "--reference-frames goes with --reference"),
        (["--reference", "{d}/ref.png", "--points", "5,5", "--reference-frames", "-1"], "--reference-frames"),
        (
            ["--reference", "{d}/ref.png", "--mask", "{d}/other_mask.png", "--out-masks", "{d}/masks_bad"],
            "is not the size of the --reference",
        ),
    ],
)
def test_cli_bad_reference_input_is_one_line_exit_2(files, capsys, extra, message):
    argv = [str(files / "clip.mp4"), *(a.format(d=files) for a in extra), "--model", "sift", "--no-progress"]
    outputs = [] if "--mask" in extra else ["--out-tracks", str(files / "bad.json")]  # masks write no tracks
    code = main([*argv, *outputs, "--no-video"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("track: error:") and message in err, err
    assert not (files / "bad.json").exists() and not (files / "masks_bad").exists()


def test_decision_is_not_started_before_a_point_is_found(clip, featurizer):
    ref, ref_xy, _ = _reference(clip)
    tracker = PointTracker(featurizer, default_match_config("sift"))
    search = ReferenceSearch(tracker, featurize_reference(featurizer, ref, SIZE), ref_xy[:2])
    search.found_frame[:] = -1
    frames = [np.full_like(clip.frames[0], 128), *clip.frames[:3]]  # a blank first frame: nothing matches there
    with torch.inference_mode():
        results = list(search.track(frames, batch_size=4))
    assert (results[0].decision == NOT_STARTED).all() and not results[0].visible.any()
    assert (search.found_frame == 1).all() and results[1].visible.all()


def test_badja_benchmark_skips_cleanly_without_the_data(tmp_path, monkeypatch, capsys):
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "badja_reference.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--data", str(tmp_path), "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code == 0 and "skipped" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_reference_frames_default_is_8_and_0_searches_the_whole_video():
    from argparse import Namespace

    from tracker.apps.reference_args import reference_config

    def frames(n):
        return reference_config(Namespace(reference_frames=n, reference_flip=False)).search_frames

    assert (frames(None), frames(0), frames(3)) == (8, None, 3)
