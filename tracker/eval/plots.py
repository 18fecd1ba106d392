"""The PNG beside a ``track eval`` report: the benchmark's headline metric per sequence, one bar per method.

matplotlib is imported only when a plot is drawn (Agg backend), never when the core is imported.
"""

from __future__ import annotations

import io
from pathlib import Path

# The metric each benchmark is judged by; a report of another benchmark is plotted on its first metric.
HEADLINE = {
    "davis": "J&F",
    "badja": "PCK@0.2",
    "tapvid": "average_jaccard",
    "synthetic": "average_jaccard",
}
LABEL = {"J&F": "J&F", "PCK@0.2": "PCK@0.2", "average_jaccard": "AJ (average Jaccard)"}


def headline_metric(report: dict) -> str:
    """The key of ``report["mean"][method]`` the plot shows."""
    methods = report.get("methods") or list(report["mean"])
    keys = list(report["mean"][methods[0]])
    key = HEADLINE.get(str(report.get("benchmark")))
    return key if key in keys else keys[0]


def plot_png(report: dict) -> bytes:
    """PNG: grouped bars of the headline metric, one group per sequence and the mean last, one bar per method.

    Linear axis from zero, each bar's value written above it (``-`` where a method has no value).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = report.get("methods") or list(report["mean"])
    key = headline_metric(report)
    groups = [*report["sequences"].items(), ("mean", report["mean"])]
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 + 0.45 * len(groups) * len(methods)), 4.8))
    cmap = plt.get_cmap("tab10")
    top = 0.0
    for j, method in enumerate(methods):
        xs, values = [], []
        for i, (_, row) in enumerate(groups):
            value = row.get(method, {}).get(key)
            xs.append(i + (j - (len(methods) - 1) / 2) * width)
            values.append(value)
        # the OpenCV baseline hatched, so it reads apart from ours in grey print too
        hatch = "//" if method.startswith("opencv") else None
        heights = [0.0 if v is None else float(v) for v in values]
        ax.bar(xs, heights, width * 0.95, color=cmap(j % 10), hatch=hatch, edgecolor="white", label=method)
        for x, v in zip(xs, values, strict=True):
            text = "-" if v is None else f"{float(v):.3f}"
            ax.text(x, 0.0 if v is None else float(v), text, ha="center", va="bottom", fontsize=7, rotation=90)
        top = max(top, *heights)
    ax.axvline(len(groups) - 1.5, color="grey", linewidth=0.8, linestyle=":")  # the mean apart from the sequences
    ax.set_xticks(range(len(groups)), [name for name, _ in groups], rotation=30, ha="right")
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylim(0.0, max(top, 1e-9) * 1.25 if top > 0 else 1.0)
    ax.set_ylabel(LABEL.get(key, key))
    ax.legend(fontsize=8, loc="upper left", ncols=min(3, len(methods)), framealpha=0.85)
    model = report.get("model")
    title = f"track eval {report.get('benchmark', '')}" + (f": {model}" if model else "") + f", {LABEL.get(key, key)}"
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_plot(report: dict, path: str | Path) -> str | None:
    """Write :func:`plot_png` to ``path`` atomically; ``None``, or a one-line reason the plot was not written.

    A plot that cannot be drawn or written (no matplotlib, a full disk) never costs the JSON and markdown reports
    written before it: the caller prints the reason as a warning.
    """
    from tracker.io.atomic import atomic_write

    try:
        data = plot_png(report)
    except ImportError as exc:
        return f"no plot {path}: matplotlib is not available ({exc})"
    except Exception as exc:  # a plot is a convenience: any drawing failure is a warning, not a lost report
        return f"no plot {path}: {type(exc).__name__}: {exc}"
    try:
        atomic_write(path, data)
    except OSError as exc:
        return f"no plot {path}: cannot write it ({exc.strerror or exc})"
    return None
