"""The layout's one rule: imports point one way.

``apps``, ``bench`` and ``distill`` use the core, ``io`` and ``eval``; the core (the modules at the top of
``tracker/``), ``io`` and the exporters never import ``apps``, ``bench`` or ``eval``, and ``eval`` never imports
``apps`` or ``bench``. The imports are read with :mod:`ast` (every ``import`` and ``from ... import``, also the
ones inside functions), not by matching text.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UPPER = ("tracker.apps", "tracker.bench", "tracker.eval")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, as absolute dotted names (``from a import b`` counts as ``a`` and ``a.b``)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.add(stem)
            found.update(f"{stem}.{alias.name}" for alias in node.names)
    return found


def reaches(imported: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(m for m in imported if any(m == f or m.startswith(f + ".") for f in forbidden))


def files(*globs: str) -> list[Path]:
    return sorted(p for g in globs for p in REPO.glob(g))


CORE = files("tracker/*.py", "tracker/io/*.py", "export/*.py")
EVAL = files("tracker/eval/*.py")


def test_the_layout_has_its_rooms():
    for room in ("io", "eval", "bench", "apps", "distill", "schemas"):
        assert (REPO / "tracker" / room).is_dir(), room
    assert {p.name for p in REPO.glob("tracker/*.py")} >= {"featurizers.py", "tracking.py", "matching.py"}
    assert not list(REPO.glob("tracker/bench_*.py")), "bench modules belong in tracker/bench/"
    assert len(CORE) > 10 and EVAL


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(REPO)))
def test_core_io_and_export_never_import_apps_bench_or_eval(path):
    assert reaches(imported_modules(path), UPPER) == []


@pytest.mark.parametrize("path", EVAL, ids=lambda p: str(p.relative_to(REPO)))
def test_eval_never_imports_apps_or_bench(path):
    assert reaches(imported_modules(path), ("tracker.apps", "tracker.bench")) == []


def test_the_import_reader_sees_every_form(tmp_path, monkeypatch):
    """The check can fail: absolute, from-, package-level and function-local imports are all read."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    pkg = tmp_path / "tracker"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import tracker.apps.cli\n"
        "from tracker import eval\n"
        "def f():\n    from tracker.bench.runner import main\n"
        "from . import matching\n"
    )
    got = imported_modules(pkg / "bad.py")
    assert reaches(got, UPPER) == ["tracker.apps.cli", "tracker.bench.runner", "tracker.bench.runner.main",
                                   "tracker.eval"]
    assert "tracker.matching" in got
