"""The accuracy harness end to end: `track eval tapvid` on a tiny pickle written here, and on real data."""

import json
import pickle

import numpy as np
import pytest

from tracker.apps.cli import main
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
    # evaluated (after each query frame): point 0 frames 1-7 (7), point 1 frames 1-7 (7), point 2 frames 3-7 (5)
    # = 19 entries, of which 16 visible in the truth; predicted visible everywhere, within 16 px everywhere:
    # occlusion accuracy 16/19, pts_within_16 16/16, jaccard_16 = 16 / (16 + 3 false positives) = 16/19
    for method in ("ours", "opencv-lk"):
        m = report["sequences"]["static"][method]
        assert m["occlusion_accuracy"] == pytest.approx(16 / 19)
        assert m["pts_within_16"] == pytest.approx(1.0)
        assert m["jaccard_16"] == pytest.approx(16 / 19)
    # static video: LK is exact; ours is within 2 px (a 4.3 px SIFT cell, soft-argmax without bias)
    assert report["sequences"]["static"]["opencv-lk"]["pts_within_1"] == pytest.approx(1.0)
    assert report["sequences"]["static"]["ours"]["pts_within_2"] == pytest.approx(1.0)
    assert report["sequences"]["static"]["points"] == 3
    assert report["model"] == "sift" and "first-query" in report["protocol"]
    table = (tmp_path / "tapvid_sift.md").read_text()
    assert "| static |" in table and "ours average_jaccard" in table
    assert "| static |" in capsys.readouterr().out


def test_eval_bad_input_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.pkl").write_bytes(b"not a pickle")
    assert main(["eval", "tapvid", "--pkl", str(tmp_path / "bad.pkl"), "--out", str(tmp_path)]) == 2
    assert main(["eval", "davis", "--root", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert main(["eval", "badja", "--root", str(tmp_path), "--davis-root", str(tmp_path), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("track: error: ") for line in err)


def test_davis_and_badja_eval_on_real_data(shared_data, tmp_path, capsys):
    args = ["--model", "sift", "--out", str(tmp_path)]
    assert main(["eval", "davis", "--root", str(shared_data / "davis2016"), "--sequences", "blackswan", *args]) == 0
    davis = json.loads((tmp_path / "davis_sift.json").read_text())
    ours, theirs = davis["sequences"]["blackswan"]["ours"], davis["sequences"]["blackswan"]["opencv-dis"]
    print(f"DAVIS blackswan J&F: ours {ours['J&F']:.3f}, OpenCV DIS {theirs['J&F']:.3f}")
    assert ours["J"] > 0.6 and theirs["J"] > 0.3
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
    assert badja["sequences"]["dog"]["ours"]["PCK@0.2"] > 0.35
