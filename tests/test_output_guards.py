"""Outputs of ``track live`` and ``track bench`` that are inputs, or that cannot be written, are refused before
any work: one line on stderr, exit code 2, the inputs byte-identical and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tracker.synthetic import moving_objects, write_video

TRACK = [sys.executable, "-c", "import sys; from tracker.apps.cli import main; sys.exit(main(sys.argv[1:]))"]


@pytest.fixture
def clip(tmp_path) -> Path:
    path = tmp_path / "clip.mp4"
    write_video(str(path), moving_objects(num_frames=6, size=(96, 128), num_objects=1, seed=0).frames, fps=25)
    return path


@pytest.fixture
def events(tmp_path) -> Path:
    path = tmp_path / "ev.json"
    path.write_text(json.dumps([{"frame": 0, "click": [40, 40]}, {"frame": 2, "key": "s"}]))
    return path


def refused(argv: list[str], cwd: Path, *inputs: Path, message: str) -> None:
    before = {p: p.read_bytes() for p in inputs}
    listing = sorted(cwd.iterdir())
    res = subprocess.run([*TRACK, *argv], cwd=cwd, capture_output=True, text=True, timeout=300)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert len(err) == 1 and err[0].startswith("track: error: ") and message in err[0], err
    assert "Traceback" not in res.stderr
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was changed"
    assert sorted(cwd.iterdir()) == listing  # nothing written beside them either


LIVE = ["live", "--headless", "--every-frame", "--model", "sift", "--device", "cpu"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--record", "clip.mp4"], "--record clip.mp4 is the --camera video"),
        (["--save", "ev.json"], "--save ev.json is the --script events file"),
    ],
)
def test_live_refuses_an_output_that_is_an_input(tmp_path, clip, events, extra, message):
    argv = [*LIVE, "--camera", "clip.mp4", "--script", "ev.json", *extra]
    refused(argv, tmp_path, clip, events, message=message)


def test_live_refuses_a_snapshot_that_is_an_input_or_another_output(tmp_path, clip, events):
    shot = tmp_path / "in.png"
    cv2.imwrite(str(shot), np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "w.pt").write_bytes(b"weights")
    argv = [*LIVE, "--camera", "clip.mp4", "--script", "ev.json"]
    # an input by another name (a symlink with the output's suffix)
    (tmp_path / "ev_link.png").symlink_to("ev.json")
    refused([*argv, "--snapshot", "ev_link.png"], tmp_path, clip, events, message="is the --script events file")
    # one output over another
    (tmp_path / "out.mp4").symlink_to("out.png")
    refused(
        [*argv, "--snapshot", "out.png", "--record", "out.mp4"],
        tmp_path,
        clip,
        events,
        message="--record out.mp4 is the --snapshot output",
    )


BENCH = ["bench", "--model", "sift", "--only", "e2e", "--frames", "3", "--points", "16", "--naive-frames", "1"]
BENCH += ["--device", "cpu", "--no-progress"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mask", "bm.png", "--json", "bm.json"], "the chart (from --json bm.json) bm.png is the --mask file"),
        (["--mask", "out/bench.png", "--json", "out"], "the chart (from --json out) out/bench.png is the --mask file"),
        (["--mask", "m.png", "--json", "bm.json", "--video", "bm.md"], "bm.md is the --video file"),
        (["--mask", "m.png", "--json", "clip.json", "--video", "clip.json"], "--json clip.json is the --video file"),
    ],
)
def test_bench_refuses_a_result_file_that_is_an_input(tmp_path, clip, extra, message):
    m = np.zeros((96, 128), np.uint8)
    m[30:60, 40:80] = 255
    (tmp_path / "out").mkdir()
    inputs = [tmp_path / name for name in ("bm.png", "out/bench.png", "m.png")]
    for path in inputs:
        cv2.imwrite(str(path), m)
    for name in ("bm.md", "clip.json"):  # the clip under an output's name
        inputs.append(tmp_path / name)
        inputs[-1].write_bytes(clip.read_bytes())
    refused([*BENCH, "--video", "clip.mp4", *extra], tmp_path, clip, *inputs, message=message)


def test_bench_refuses_an_unwritable_json_before_any_work(tmp_path, clip):
    argv = [*BENCH, "--video", "clip.mp4", "--json", "/proc/x.json"]
    refused(argv, tmp_path, clip, message="--json /proc/x.json: cannot create a file in /proc")
