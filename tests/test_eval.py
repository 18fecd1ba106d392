"""The accuracy harness end to end: `track eval tapvid` on a tiny pickle written here, and on real data."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from tracker.apps.cli import main
from tracker.eval.evaluation import mask_refine_modes, ours, point_refine_modes
from tracker.synthetic import texture


def test_tapvid_eval_on_a_tiny_synthetic_pickle(tmp_path, capsys):
    # a static textured 256x256 video: every tracker sees every point where it was queried
    frame = texture(256, 256, np.random.default_rng(0))
    video = np.repeat(frame[None], 8, 0)
    xy = np.array([[100.0, 60.0], [180.0, 200.0], [50.0, 150.0]])  # 256-raster xy (pixel-edge convention)
    points = np.repeat((xy / 256)[:, None], 8, 1)  # [N, T, 2] in [0, 1]
    occluded = np.zeros((3, 8), bool)
    occluded[1, 5:] = True  # point 1 occluded on frames 5..7 (but still seen: a false positive each)
    occluded[2, :2] = True  # point 2 first visible on frame 2: its query frame
    with open(tmp_path / "tiny.pkl", "wb") as f:
        pickle.dump({"static": {"video": video, "points": points, "occluded": occluded}}, f)

    assert main(["eval", "tapvid", "--pkl", str(tmp_path / "tiny.pkl"), "--model", "sift", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "tapvid_sift.json").read_text())
    # every refinement mode of ours and the OpenCV baseline, in one run, the default mode first
    methods = [ours(m) for m in point_refine_modes()] + ["opencv-lk"]
    assert report["methods"] == methods and len(methods) >= 2
    # evaluated (after each query frame): point 0 frames 1-7 (7), point 1 frames 1-7 (7), point 2 frames 3-7 (5)
    # = 19 entries, of which 16 visible in the truth; predicted visible everywhere, within 16 px everywhere:
    # occlusion accuracy 16/19, pts_within_16 16/16, jaccard_16 = 16 / (16 + 3 false positives) = 16/19
    for method in methods:
        m = report["sequences"]["static"][method]
        assert m["occlusion_accuracy"] == pytest.approx(16 / 19), method
        assert m["pts_within_16"] == pytest.approx(1.0)
        assert m["jaccard_16"] == pytest.approx(16 / 19)
        assert set(report["mean"][method]) == {"average_jaccard", "average_pts_within_thresh", "occlusion_accuracy"}
    # static video: LK is exact; ours is within 2 px (a 4.3 px SIFT cell, soft-argmax without bias)
    assert report["sequences"]["static"]["opencv-lk"]["pts_within_1"] == pytest.approx(1.0)
    for method in methods[:-1]:
        assert report["sequences"]["static"][method]["pts_within_2"] == pytest.approx(1.0), method
    assert report["sequences"]["static"]["points"] == 3
    assert report["model"] == "sift" and "first-query" in report["protocol"]
    table = (tmp_path / "tapvid_sift.md").read_text()
    assert "| sequence | method | average_jaccard |" in table
    for method in methods:
        assert f"| static | {method} |" in table and f"| **mean** | {method} |" in table
    assert "| static |" in capsys.readouterr().out


def test_eval_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    (tmp_path / "data").mkdir()
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    assert main(["eval", "tapvid", "--pkl", str(tmp_path / "bad.pkl"), "--out", out]) == 2
    assert main(["eval", "davis", "--root", data, "--out", out]) == 2
    assert main(["eval", "badja", "--root", data, "--davis-root", data, "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("track: error: ") for line in err), err
    assert "bad.pkl" in err[0] and "no DAVIS sequences" in err[1] and "BADJA" in err[2], err
    assert not (tmp_path / "out").exists()


def davis_prefix(davis_root: Path, sequence: str, frames: int, into: Path) -> Path:
    """A DAVIS root holding the first ``frames`` frames (and masks) of one sequence, as symbolic links."""
    for kind in ("JPEGImages", "Annotations"):
        src = davis_root / kind / "480p" / sequence
        dst = into / kind / "480p" / sequence
        dst.mkdir(parents=True)
        for f in sorted(src.iterdir())[:frames]:
            (dst / f.name).symlink_to(f)
    return into


def test_davis_and_badja_eval_on_real_data(shared_data, tmp_path, capsys):
    args = ["--model", "sift", "--out", str(tmp_path)]
    # every mask mode runs: 20 frames of blackswan keep the test short (the full 8 sequences: benchmarks/results)
    davis = davis_prefix(shared_data / "davis2016", "blackswan", 20, tmp_path / "davis")
    assert main(["eval", "davis", "--root", str(davis), "--sequences", "blackswan", *args]) == 0
    davis = json.loads((tmp_path / "davis_sift.json").read_text())
    mask_methods = [ours(m) for m in mask_refine_modes()] + ["opencv-dis"]
    assert davis["methods"] == mask_methods
    row = davis["sequences"]["blackswan"]
    print("DAVIS blackswan J&F: " + ", ".join(f"{m} {row[m]['J&F']:.3f}" for m in mask_methods))
    assert all(row[m]["J"] > 0.6 for m in mask_methods[:-1]) and row["opencv-dis"]["J"] > 0.3
    assert (
        main(
            [
                "eval",
                "badja",
                "--root",
                str(shared_data / "badja"),
                "--davis-root",
                str(shared_data / "davis2016"),
                *args,
            ]
        )
        == 0
    )
    badja = json.loads((tmp_path / "badja_sift.json").read_text())
    assert set(badja["sequences"]) == {"dog", "horsejump-high"}
    assert badja["methods"] == [ours(m) for m in point_refine_modes()] + ["opencv-lk"]
    dog = badja["sequences"]["dog"]
    print("BADJA dog PCK@0.2: " + ", ".join(f"{m} {dog[m]['PCK@0.2']:.3f}" for m in badja["methods"]))
    assert all(dog[m]["PCK@0.2"] > 0.35 for m in badja["methods"])
    # horsejump-high marks the chin (34) visible on its first annotated frame: it is not one of BADJA's joints
    assert badja["sequences"]["horsejump-high"]["joints"] == 18 and dog["joints"] == 17  # 19 and 17 marked visible


def test_badja_eval_on_unrelated_json_is_one_line(tmp_path, capsys):
    # a folder of JSON that is not BADJA: a dict, a list of numbers, records without joints, bad joint shapes
    (tmp_path / "a.json").write_text('{"name": "x"}')
    (tmp_path / "b.json").write_text("[1, 2, 3]")
    (tmp_path / "c.json").write_text('[{"image_path": "x/00000.jpg"}]')
    (tmp_path / "d.json").write_text('[{"image_path": "x/00000.jpg", "joints": [[1, 2]], "visibility": [true]}]')
    (tmp_path / "e.json").write_text('[{"image_path": "x/abc.jpg", "joints": [], "visibility": []}]')
    for name in "abcde":
        one = tmp_path / name
        one.mkdir()
        (tmp_path / f"{name}.json").rename(one / f"{name}.json")
        args = ["eval", "badja", "--root", str(one), "--davis-root", str(tmp_path), "--out", str(tmp_path / "out")]
        assert main(args) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("track: error: ") and "BADJA" in err[0], (name, err)


def test_badja_scores_only_its_20_annotated_joints(tmp_path):
    # two annotated frames; every one of the 37 slots marked visible, the chin (34) and unannotated slots too
    import cv2

    from tracker.eval.evaluation import badja_queries, load_badja

    name = "seq"
    masks = tmp_path / "Annotations" / "480p" / name
    masks.mkdir(parents=True)
    entries = []
    for index in (0, 5):
        cv2.imwrite(str(masks / f"{index:05d}.png"), np.full((48, 64), 255, np.uint8))
        joints = [[10.0 * j, 20.0 + j] for j in range(37)]
        entries.append({"image_path": f"a/b/{index:05d}.jpg", "joints": joints, "visibility": [True] * 37})
    (tmp_path / f"{name}.json").write_text(json.dumps(entries[::-1]))  # unordered on purpose
    seq = load_badja(tmp_path / f"{name}.json", tmp_path)
    assert seq.frame_index.tolist() == [0, 5] and seq.joints.shape == (2, 37, 2)
    assert seq.mask_area.tolist() == [48 * 64, 48 * 64]
    xy, query_frame, ids = badja_queries(seq)
    assert ids.tolist() == [8, 9, 10, 12, 13, 14, 15, 18, 19, 20, 22, 23, 24, 25, 28, 31, 32, 33, 35, 36]
    assert 34 not in ids.tolist() and query_frame == 0
    # [row, col] in 1920x1080 -> xy in the 480p frames (x 480/1080 * col, y 480/1080 * row)
    np.testing.assert_allclose(xy[0], [(20 + 8) * 480 / 1080, 80 * 480 / 1080])
    # a joint invisible on the first annotated frame is not queried
    seq.visible[0, 9] = False
    assert 9 not in badja_queries(seq)[2].tolist()


def test_synthetic_eval_lists_every_mode_the_coarse_grid_and_opencv(tmp_path, capsys):
    from tracker.synthetic import occlusion_video

    args = ["eval", "synthetic", "--seeds", "1", "--frames", "10", "--model", "sift", "--out", str(tmp_path)]
    assert main(args) == 0
    report = json.loads((tmp_path / "synthetic_sift.json").read_text())
    modes = point_refine_modes()
    expected = [ours(m) for m in modes] + [f"ours (coarse 14px, refine={m})" for m in modes] + ["opencv-lk"]
    assert report["methods"] == expected
    clip = occlusion_video(1, frames=10)  # 12 reappearances with 3 frames left to find them
    row = report["sequences"]["seed1"]
    assert row["points"] == len(clip.tracks) and row["reappearances"] == int(clip.reappear.sum())
    for method in expected:
        m = row[method]
        assert 0 <= m["average_jaccard"] <= m["average_pts_within_thresh"] <= 1, method
        assert 0 <= m["occlusion_accuracy"] <= 1
        assert 0 <= m["reacquired_within_3"] <= 1
        assert m["error_px"] > 0 and (m["error_cells"] is None) == (method == "opencv-lk"), method
    # the error in the method's own grid cells: sift's (a 240 px input at stride 4: 60 cells over the 256 px
    # frame), the coarse grid's (18 cells)
    assert row[ours(modes[0])]["error_cells"] == pytest.approx(row[ours(modes[0])]["error_px"] / (256 / 60))
    coarse = row[f"ours (coarse 14px, refine={modes[0]})"]
    assert coarse["error_cells"] == pytest.approx(coarse["error_px"] / (256 / 18))
    # 10 frames of smooth motion: LK follows most visible points within 16 px; so does ours with its default
    assert row["opencv-lk"]["pts_within_16"] > 0.5 and row[ours(modes[0])]["pts_within_16"] > 0.5
    table = (tmp_path / "synthetic_sift.md").read_text()
    assert all(f"| seed1 | {m} |" in table for m in expected) and "reacquired_within_3" in table
    # --no-coarse leaves the coarse grid out
    assert main([*args, "--no-coarse", "--frames", "6"]) == 0
    short = json.loads((tmp_path / "synthetic_sift.json").read_text())  # 6 frames: no reappearance to score
    assert short["sequences"]["seed1"]["opencv-lk"]["reacquired_within_3"] is None
    assert short["mean"]["opencv-lk"]["reacquired_within_3"] is None  # null in the JSON, not NaN
    assert short["methods"] == [ours(m) for m in modes] + ["opencv-lk"]


def test_pooled_and_memo_featurizers():
    import torch

    from tracker.eval.evaluation import MemoFeaturizer, PooledFeaturizer, coarse_sift
    from tracker.featurizers import SiftFeaturizer

    frames = torch.as_tensor(texture(64, 64, np.random.default_rng(1)))[None].repeat(2, 1, 1, 1)
    base = SiftFeaturizer((64, 64))
    pooled = PooledFeaturizer(base, 4)
    assert pooled.stride == 16 and pooled.grid_hw == (4, 4) and pooled.input_hw == (64, 64)
    full, coarse = base(frames), pooled(frames)
    # cell (1, 2) of the pooled grid is the normalised mean of base cells rows 4..7, cols 8..11
    mean = full[0, :, 4:8, 8:12].mean((1, 2))
    torch.testing.assert_close(coarse[0, :, 1, 2], mean / mean.norm())
    torch.testing.assert_close(coarse.norm(dim=1), torch.ones(2, 4, 4))
    # pooled cell centres on the project's grid convention: cell j at 16 (j + 0.5) - 0.5 input px
    g = pooled.geometry(64, 64)
    assert g.grid_to_pixel(torch.tensor([[1.0, 2.0]])).tolist() == [[23.5, 39.5]]
    with pytest.raises(ValueError):
        PooledFeaturizer(base, 3)  # 16 cells are not a multiple of 3
    # coarse_sift: a 256x256 frame gets an 18x18 grid, 14.2 px cells
    c = coarse_sift((256, 256))
    assert c.grid_hw == (18, 18) and c.geometry(256, 256).cell_size == (256 / 18, 256 / 18)

    calls = []

    class Counting(SiftFeaturizer):
        def forward(self, x):
            calls.append(1)
            return super().forward(x)

    memo = MemoFeaturizer(Counting((64, 64)))
    a, b = memo(frames), memo(frames.clone())
    torch.testing.assert_close(a, full) and torch.testing.assert_close(b, full)
    assert len(calls) == 1  # the second batch of the same frames came from memory
    memo(frames[:1])
    assert len(calls) == 2 and memo.geometry(64, 64) == base.geometry(64, 64)


@pytest.mark.parametrize("seed", ["-1", "x"])
def test_a_negative_or_non_integer_seed_is_one_line_and_exit_2(seed, tmp_path, capsys):
    args = ["eval", "synthetic", "--seeds", seed, "--frames", "8", "--model", "sift", "--out", str(tmp_path)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"track: error: argument --seeds: a seed is a non-negative integer, not '{seed}'"]
    assert list(tmp_path.iterdir()) == []
