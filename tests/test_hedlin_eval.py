"""``track eval`` and ``track bench`` with ``--model hedlin`` (its own point tracker, no feature grid), on a tiny
random UNet of SD-1.x's layout (the real path, ``--weights random``, with the architecture's widths shrunk and
``hedlin_tracker.CONFIG`` set to a few passes, as in test_hedlin_track.py)."""

import json

import numpy as np
import pytest
from test_hedlin_track import CHEAP, use_tiny_sd

from tracker import hedlin_tracker as HT
from tracker.apps.cli import main
from tracker.eval import own_tracker as own
from tracker.synthetic import moving_objects, write_video

pytest.importorskip("diffusers")


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    use_tiny_sd(monkeypatch, tmp_path)
    built = []
    create = HT.create_hedlin_tracker
    monkeypatch.setattr(HT, "create_hedlin_tracker", lambda *a, **k: built.append(k) or create(*a, **k))
    return built


@pytest.fixture()
def no_model(monkeypatch):
    """Building hedlin's model fails the test: the error must come first."""
    monkeypatch.setattr(HT, "create_hedlin_tracker", lambda *a, **k: pytest.fail("built the model first"))


HEDLIN = ["--model", "hedlin", "--weights", "random", "--size", "64", "--device", "cpu"]


def test_eval_synthetic_runs_hedlins_own_tracker_beside_lucas_kanade(tiny, tmp_path, capsys):
    args = ["eval", "synthetic", "--seeds", "0", "--frames", "4", "--max-points", "3", "--out", str(tmp_path)]
    assert main([*args, *HEDLIN]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "synthetic_hedlin.json").read_text())
    assert report["methods"] == ["ours (hedlin)", "opencv-lk"]  # no refine rows, no coarse-grid rows
    row = report["sequences"]["seed0"]
    assert row["points"] == 3 and len(tiny) == 1  # one tracker for the run
    for method in report["methods"]:
        scores = [row[method][k] for k in ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")]
        assert np.isfinite(scores).all() and all(0 <= s <= 1 for s in scores)
    assert "refinement on/off rows do not apply" in report["protocol"] and "at most 3 points" in report["protocol"]
    assert report["settings"]["hedlin"]["steps"] == CHEAP.steps and report["settings"]["max_points"] == 3
    assert "| seed0 | ours (hedlin) |" in capsys.readouterr().out
    assert (tmp_path / "synthetic_hedlin.md").is_file()


def test_the_baseline_runs_on_the_same_few_points():
    """--max-points picks the same evenly spread points for every method; all of them without it."""
    assert own.spread(10, None).tolist() == list(range(10)) and own.spread(4, 9).tolist() == [0, 1, 2, 3]
    assert own.spread(10, 3).tolist() == [0, 4, 9] and own.spread(10, 1).tolist() == [0]


def test_eval_davis_with_hedlin_is_one_line_before_any_model(no_model, tmp_path, capsys):
    args = ["eval", "davis", "--root", str(tmp_path), "--out", str(tmp_path / "out"), *HEDLIN]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        "track: error: track eval davis needs masks, and hedlin tracks points only; "
        "use badja, tapvid or synthetic with hedlin\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "sift", "--max-points", "2"], "--max-points applies to --model hedlin only"),
        ([*HEDLIN, "--max-points", "0"], "--max-points must be at least 1"),
        ([*HEDLIN, "--window-radius", "3"], "--window-radius: our matcher's settings, not hedlin's"),
        ([*HEDLIN, "--size", "100"], "square and a multiple of 64"),
    ],
)
def test_eval_options_that_do_not_fit_are_one_line(no_model, extra, message, tmp_path, capsys):
    assert main(["eval", "synthetic", "--frames", "4", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("track: error: ") and message in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    write_video(str(folder / "clip.mp4"), moving_objects(num_frames=4, size=(96, 128), seed=0).frames)
    return folder / "clip.mp4"


def test_bench_with_hedlin_exits_0_with_its_line_and_keeps_the_featurizer_part(tiny, clip, tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model", "hedlin", "--weights", "random", "--size", "64", "--video", str(clip),
            "--points", "1,2", "--tiny", "--model-only-models", "dinov2-s", "--sizes", "28", "--batches", "1",
            "--backends", "torch", "--iters", "1", "--warmup", "0", "--max-seconds", "1", "--device", "cpu",
            "--json", str(out), "--no-progress"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    lines = [line.strip() for line in capsys.readouterr().out.splitlines() if "hedlin end to end" in line]
    assert len(lines) == 1
    assert "1 point(s): " in lines[0] and "2 point(s): " in lines[0] and "on 3 frames" in lines[0]
    assert "no batched featurizer, naive baseline or mask run" in lines[0]
    report = json.loads(out.read_text())
    assert [r["status"] for r in report["model_only"]] == ["ok"]  # the featurizer part is still measured
    hedlin = report["end_to_end_hedlin"]
    assert [r["points"] for r in hedlin["runs"]] == [1, 2] and hedlin["input_size"] == [64, 64]
    for r in hedlin["runs"]:
        assert r["frames"] == 3 and len(r["frame_seconds"]) == 2 and all(s > 0 for s in r["frame_seconds"])
        # the paper's settings cost the probe's passes that many times over: 1 x 4 per frame, 1 x 2 once
        per_frame = r["paper"]["match_seconds_per_point_frame"]
        assert per_frame == pytest.approx(4 * r["probe"]["match_seconds_per_point_frame"])
        assert r["paper"]["fps"] == pytest.approx(1 / (r["points"] * per_frame))
    assert hedlin["probe_settings"]["restarts"] == hedlin["probe_settings"]["crops"] == 1
    assert "end_to_end" not in report and lines[0] in report["notes"]
    assert "hedlin end to end" in out.with_suffix(".md").read_text()
    assert len(tiny) == 1 and tiny[0]["config"].steps == 1  # the probe, into a temporary cache
    assert not (tmp_path / "cache" / "hedlin").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--size", "100"], "square and a multiple of 64"),
        (["--mask", "MASK"], "--mask does not apply to hedlin"),
        (["--frames", "1"], "--frames for hedlin must be at least 2"),
        (["--weights", "POINTS"], "hedlin's --weights takes one diffusers folder"),
    ],
)
def test_bench_options_for_hedlin_are_one_line(no_model, extra, message, clip, tmp_path, capsys):
    points = tmp_path / "pts.json"
    points.write_text("[[1, 2]]")
    extra = [str(points) if e == "POINTS" else str(clip) if e == "MASK" else e for e in extra]
    weights = [] if "--weights" in extra else ["--weights", "random"]
    assert main(["bench", "--model", "hedlin", *weights, "--video", str(clip), "--only", "e2e", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_bad_points_are_one_line_before_the_model_is_built(no_model, clip, tmp_path, capsys):
    for points, message in (([[400.0, 50.0]], "point (400, 50) is outside the 128x96 frame"),
                            ([{"x": 4.0, "y": 5.0, "frame": 9}], "a point is on frame 9")):  # fmt: skip
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(points))
        argv = [str(clip), *HEDLIN, "--points", str(path), "--out-tracks", str(tmp_path / "t.json"), "--no-video"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("track: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "t.json").exists()
