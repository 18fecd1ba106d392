"""`track --help` and argument errors answer without importing torch; the package's public API loads lazily.

Each case runs in a fresh interpreter (this test process has long imported torch) and reports its exit code
and whether torch got imported. Not timed: what keeps help fast is that torch is never imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

RUN_CLI = """
import json, sys
from tracker.apps.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help exits through argparse
    code = exc.code
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def run_cli(*argv: str) -> tuple[dict, str, str]:
    """``(result, stdout before the result line, stderr)`` of ``track ARGV`` in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_CLI, *argv], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    *out, last = done.stdout.rstrip("\n").split("\n")
    assert done.returncode == 0, done.stderr
    return json.loads(last), "\n".join(out), done.stderr


@pytest.mark.parametrize(
    "argv,usage",
    [
        ([], "usage: track "),
        (["eval"], "usage: track eval"),
        (["export"], "usage: track export"),
        (["weights"], "usage: track weights"),
        (["bench"], "usage: track bench"),
        (["distill"], "usage: track distill"),
        (["live"], "usage: track live"),
        (["serve"], "usage: track serve"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_help_exits_0_without_importing_torch(argv, usage):
    result, out, err = run_cli(*argv, "--help")
    assert result == {"code": 0, "torch": False}, err
    assert out.startswith(usage) and err == ""


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["clip.mp4", "--batch", "eight"], "--batch: invalid int value"),
        (["eval"], "the following arguments are required: benchmark"),
        (["weights", "download"], "the following arguments are required: models"),
        (["export", "onnx"], "the following arguments are required: --out"),
        (["bench", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["live", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["serve", "--port", "eighty"], "--port: invalid int value"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_argument_errors_give_one_line_and_exit_2_without_importing_torch(argv, message):
    result, out, err = run_cli(*argv)
    assert result == {"code": 2, "torch": False}, err
    assert out == "" and err.count("\n") == 1 and err.startswith("track: error:") and message in err


def test_the_public_api_loads_on_first_use():
    probe = """
import json, sys
import tracker
before = "torch" in sys.modules
from tracker import PointTracker, TrackerError
from tracker import weights
names = {name: getattr(tracker, name).__module__ for name in tracker.__all__}
try:
    tracker.no_such_name
    missing = "no error"
except AttributeError as exc:
    missing = str(exc)
print(json.dumps({"before": before, "after": "torch" in sys.modules, "names": names, "missing": missing,
                  "weights": weights.__name__, "dir": sorted(set(tracker.__all__) - set(dir(tracker)))}))
"""
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["before"] is False and result["after"] is True  # torch comes with the first heavy name
    assert result["weights"] == "tracker.weights" and result["dir"] == []
    assert result["missing"] == "module 'tracker' has no attribute 'no_such_name'"
    assert len(result["names"]) == 20 and result["names"]["PointTracker"] == "tracker.tracking"
    assert result["names"]["TrackerError"] == "tracker.errors"


def test_every_public_name_is_the_defining_modules_object():
    import importlib

    import tracker

    assert sorted(tracker.__all__) == sorted(tracker._SOURCES)
    for name, source in tracker._SOURCES.items():
        assert getattr(tracker, name) is getattr(importlib.import_module(source), name), name


def test_the_command_lines_choices_are_the_librarys():
    from tracker import choices, featurizers, tracking

    assert featurizers.MODEL_NAMES is choices.MODEL_NAMES and featurizers.VIT_MODELS is choices.VIT_MODELS
    assert tracking.REFINE_MODES is choices.POINT_REFINE_MODES
