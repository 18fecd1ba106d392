"""The PNG beside a `track eval` report: drawn from a results dict, written atomically, and never at the cost of
the JSON and markdown reports."""

import json
import pickle
import struct
import subprocess
import sys

import numpy as np

from tracker.apps.cli import main
from tracker.eval.plots import headline_metric, plot_png, write_plot
from tracker.synthetic import texture


def _report(benchmark="badja", key="PCK@0.2"):
    methods = ["ours (refine=lk)", "ours (refine=none)", "opencv-lk"]
    sequences = {
        "dog": {methods[0]: {key: 0.6}, methods[1]: {key: 0.45}, methods[2]: {key: 0.53}},
        "horse": {methods[0]: {key: 0.4}, methods[1]: {key: None}, methods[2]: {key: 0.33}},
    }
    mean = {methods[0]: {key: 0.5}, methods[1]: {key: 0.45}, methods[2]: {key: 0.43}}
    return {"benchmark": benchmark, "model": "sift", "methods": methods, "sequences": sequences, "mean": mean}


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_headline_metric_per_benchmark():
    davis = _report("davis", "J&F")
    for row in [*davis["sequences"].values(), davis["mean"]]:
        for m in row:
            row[m] = {"J": 0.1, "F": 0.2, "J&F": row[m]["J&F"], "kept": 1.0}
    assert headline_metric(davis) == "J&F"
    assert headline_metric(_report("badja", "PCK@0.2")) == "PCK@0.2"
    tapvid = _report("tapvid", "occlusion_accuracy")
    for row in [*tapvid["sequences"].values(), tapvid["mean"]]:
        for m in row:
            row[m] = {"occlusion_accuracy": 0.9, "average_jaccard": 0.3}
    assert headline_metric(tapvid) == "average_jaccard"
    assert headline_metric(_report("other", "x")) == "x"  # an unknown benchmark: its first metric


def test_plot_of_a_small_report_is_a_sensible_png(tmp_path):
    path = tmp_path / "badja_sift.png"
    assert write_plot(_report(), path) is None
    data = path.read_bytes()
    width, height = _png_size(data)
    assert 500 <= width <= 4000 and 300 <= height <= 2000
    assert len(data) > 10_000  # bars, labels and a legend, not an empty canvas
    assert [p.name for p in tmp_path.iterdir()] == ["badja_sift.png"]  # no temporary file left beside it
    # more sequences widen the figure instead of squeezing the groups
    wide = _report()
    wide["sequences"] = {f"s{i}": wide["sequences"]["dog"] for i in range(10)}
    assert _png_size(plot_png(wide))[0] > width


def test_plot_failures_are_a_reason_not_an_exception(tmp_path, monkeypatch):
    assert "cannot write" in write_plot(_report(), tmp_path / "missing" / "x.png")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    reason = write_plot(_report(), tmp_path / "x.png")
    assert "matplotlib is not available" in reason and "\n" not in reason
    assert not (tmp_path / "x.png").exists()


def test_core_import_does_not_import_matplotlib():
    code = "import sys, tracker.eval.plots, tracker.apps.cli; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def _tiny_pickle(tmp_path):
    frame = texture(128, 128, np.random.default_rng(0))
    video = np.repeat(frame[None], 4, 0)
    points = np.repeat((np.array([[40.0, 30.0], [90.0, 100.0]]) / 128)[:, None], 4, 1)
    with open(tmp_path / "tiny.pkl", "wb") as f:
        pickle.dump({"static": {"video": video, "points": points, "occluded": np.zeros((2, 4), bool)}}, f)
    return ["eval", "tapvid", "--pkl", str(tmp_path / "tiny.pkl"), "--model", "sift"]


def test_eval_writes_the_png_beside_the_reports(tmp_path, capsys):
    out = tmp_path / "out"
    assert main([*_tiny_pickle(tmp_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tapvid_sift.json", "tapvid_sift.md", "tapvid_sift.png"]
    _png_size((out / "tapvid_sift.png").read_bytes())
    err = capsys.readouterr().err
    assert "tapvid_sift.md and " in err and "tapvid_sift.png" in err.splitlines()[-1]


def test_eval_without_matplotlib_keeps_the_reports(tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main([*_tiny_pickle(tmp_path), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["tapvid_sift.json", "tapvid_sift.md"]
    assert json.loads((out / "tapvid_sift.json").read_text())["benchmark"] == "tapvid"
    assert "| static |" in (out / "tapvid_sift.md").read_text()
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "matplotlib" in warnings[0]
    assert "png" not in err.splitlines()[-1]  # the "wrote" line names only what was written
