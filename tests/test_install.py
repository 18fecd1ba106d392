"""Reproducible installs: constraints.txt pins what the suite passed with, within pyproject's ranges, and the
Makefile (hence `make test`, `make demo` and `.ci/run`) installs with it."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    """``{canonical name: version}`` of constraints.txt's ``name==version`` lines."""
    out = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"not a pin: {line!r}"
            out[canonicalize_name(name)] = version
    return out


def test_constraints_pin_every_requirement_within_pyprojects_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = pins()
    assert canonicalize_name(project["name"]) not in pinned  # the project itself is installed from the clone
    checked = 0
    for text in project["dependencies"] + project["optional-dependencies"]["dev"]:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue  # not installed on this platform
        name = canonicalize_name(req.name)
        assert name in pinned, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), f"{req.name}=={pinned[name]} outside {req}"
        checked += 1
    assert checked > 20
    assert pinned["torch"] == "2.14.1"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_installs_with_the_constraints():
    """What `make` would run to build .venv (``-n``: print, do not run; ``-B``: as if out of date)."""
    done = subprocess.run(["make", "-n", "-B", ".venv/.installed"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    installs = [line for line in done.stdout.splitlines() if " install " in line]
    assert len(installs) == 2 and all("-c constraints.txt" in line for line in installs), done.stdout
    rules = subprocess.run(["make", "-p", "-n", "-q", "test"], cwd=REPO, capture_output=True, text=True).stdout
    stamp = next(line for line in rules.splitlines() if line.startswith(".venv/.installed:"))
    assert "constraints.txt" in stamp  # a changed pin reinstalls
    assert "make test" in (REPO / ".ci" / "run").read_text()
