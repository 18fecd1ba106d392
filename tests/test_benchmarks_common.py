"""benchmarks/_common.py: results are saved atomically (an interrupted save keeps the previous file whole)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _common  # noqa: E402


def test_save_is_atomic_and_records_the_machine(tmp_path, monkeypatch):
    _common.save(str(tmp_path / "out"), "r", {"x": 1})
    path = tmp_path / "out" / "r.json"
    first = json.loads(path.read_text())
    assert first["x"] == 1 and "torch" in first["machine"]

    import tracker.io.atomic as atomic

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError):
        _common.save(str(tmp_path / "out"), "r", {"x": 2})
    assert json.loads(path.read_text()) == first  # the previous result, whole
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]  # no temporary file left
    _common.save(None, "r", {"x": 3})  # no --out: nothing written
