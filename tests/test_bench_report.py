"""`track bench`'s report wording: a plain line per model first, slowdowns never bold, the plot renders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tracker.bench.report import _speedup, in_short, plot_png, to_markdown

RESULT = Path(__file__).resolve().parents[1] / "benchmarks/results/cpu-2core/bench.json"


@pytest.fixture(scope="module")
def report() -> dict:
    if not RESULT.is_file():
        pytest.skip(f"{RESULT} is not in this checkout")
    return json.loads(RESULT.read_text())


def test_a_slowdown_is_never_bold():
    assert _speedup(5.75, 2) == "**5.75x**" and _speedup(0.96, 2) == "0.96x (slower)" and _speedup(None, 1) == "-"


def test_bench_md_opens_with_one_plain_line_per_model(report):
    md = to_markdown(report)
    head = md.split("## Machine")[0]
    lines = [line for line in head.splitlines() if line.startswith("- ")]
    assert lines == in_short(report)
    e2e = report["end_to_end"]
    assert re.match(rf"- {e2e['model']} at 434x434: [\d.]+ frames/s here end to end on the 1280x720 \(720p\)", lines[0])
    archs = {(r["arch"], r["size"]) for r in report["model_only"] if r["status"] == "ok" and not r.get("role")}
    assert len(lines) == 1 + len(archs) and all("frames/s here" in line for line in lines)
    names = {r["name"] for r in e2e["runs"]}
    rows = [row.split(" | ") for row in md.splitlines() if row.startswith("| ") and row[2:].split(" | ")[0] in names]
    speedups = [cells[4] for cells in rows if "x" in cells[4]]  # the end-to-end table (not the stage table)
    assert len(speedups) == len(names)
    for cell in speedups:  # a speedup below 1x is written plainly and called slower
        value = float(cell.split("x")[0].strip("*"))
        assert cell.startswith("**") == (value >= 1) and cell.endswith("(slower)") == (value < 1), cell
    assert "0.95x (slower)" in speedups  # the committed run's mask row (0.71 vs 0.742 frames/s)


def test_plot_has_a_panel_per_batch_size(report):
    png = plot_png(report)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
