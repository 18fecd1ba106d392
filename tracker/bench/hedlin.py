"""``track bench --model hedlin``'s end-to-end part: hedlin's own point tracker (no feature grid, so no batched
featurizer, naive baseline or mask run), timed per point on a probe of one restart, one crop and one optimisation
step, the paper's settings scaled from it by their UNet passes (:func:`run_hedlin`).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tracker.bench.config import BenchConfig, Log, _free, _weights_label

if TYPE_CHECKING:
    import torch


HEDLIN_POINTS = (1,)  # hedlin's default --points: each point is minutes (GPU) to hours (CPU) of UNet passes
HEDLIN_FRAMES = 3  # its default --frames: the query frame (optimisation) and two matched frames


def run_hedlin(config: BenchConfig, device: torch.device, log: Log) -> dict:
    """``track bench --model hedlin``'s end-to-end part: hedlin's own point tracker
    (:class:`tracker.hedlin_tracker.HedlinTracker`) on the first ``config.frames`` frames of the clip, once per
    ``config.points`` count, each frame timed (:func:`tracker.bench.e2e.run_per_point`).

    It is not :func:`tracker.bench.runner.run_end_to_end`: hedlin has no feature grid, so there is no batched
    featurizer, no matching step, no naive baseline and no mask mode; its time is UNet passes per point (optimising
    each point's embeddings on its query frame, then ``restarts x crops`` attention passes per point per frame), so
    it is timed as frames/s for a given number of points. The run uses probe settings of one restart, one crop and one
    optimisation step (the paper's layers, timesteps, crop size and input); the paper's settings
    (:data:`tracker.hedlin_tracker.CONFIG`) cost the same passes that many times over, so their seconds are the
    probe's scaled by the pass counts (linear: every pass is one VAE encode and one UNet call on an ``S x S``
    crop). The embeddings are optimised into a temporary cache (a cached point would not be timed).
    """
    from tracker import hedlin_tracker as HT
    from tracker.bench.e2e import run_per_point
    from tracker.hedlin import weights_digest
    from tracker.io.video import open_video

    paper = HT.CONFIG
    probe = replace(paper, restarts=1, crops=1, steps=1)
    with open_video(config.video) as video:
        info = video.info
    precision = config.precisions[0]
    log(f"end to end: building hedlin ({config.weights or HT.PIPELINE}, {config.size}x{config.size}, {precision}) ...")
    with tempfile.TemporaryDirectory(prefix="bench-hedlin-") as cache:
        tracker = HT.create_hedlin_tracker(
            (info.height, info.width),
            size=str(config.size),
            weights=config.weights,
            device=device,
            precision=precision,
            cache=Path(cache),
            config=probe,
        )
        weights_digest(tracker.matcher)  # the embedding cache's key hashes the weights once per run: not timed
        if device.type == "cuda":  # kernels tuned before the timed runs; a CPU has none to tune
            run_per_point(tracker, config.video, 1, 2)
        runs = []
        for n in config.points:
            log(f"end to end: hedlin, {n} point(s) on {config.frames} frames ...")
            timing = run_per_point(tracker, config.video, n, config.frames)
            runs.append(_hedlin_record(timing, probe, paper))
            log(f"  {_hedlin_run_line(runs[-1])}")
    tracker = None
    _free(device)
    return {
        "video": str(config.video),
        "frame_size": [info.width, info.height],
        "model": "hedlin",
        "weights": _weights_label(config.weights, "hedlin"),
        "input_size": [config.size, config.size],
        "precision": precision,
        "probe_settings": asdict(probe),
        "paper_settings": asdict(paper),
        "why": "hedlin tracks each point with its own UNet passes (no feature grid): no batched featurizer, no "
        "naive baseline and no mask run; its frames/s is for a given number of points",
        "runs": runs,
        "line": _hedlin_line(runs, config.size, paper),
    }


def _hedlin_record(timing, probe, paper) -> dict:
    match = timing.match_seconds_per_point
    optimise = timing.optimise_seconds_per_point
    match_paper = match * (paper.restarts * paper.crops) / (probe.restarts * probe.crops)
    optimise_paper = optimise * (paper.restarts * paper.steps) / (probe.restarts * probe.steps)
    return {
        "points": timing.points,
        "frames": timing.frames,
        "query_frame_seconds": timing.query_seconds,
        "frame_seconds": list(timing.frame_seconds),
        "probe": {
            "fps": len(timing.frame_seconds) / sum(timing.frame_seconds),
            "match_seconds_per_point_frame": match,
            "optimise_seconds_per_point": optimise,
        },
        "paper": {
            "fps": 1 / (timing.points * match_paper) if match_paper > 0 else None,
            "match_seconds_per_point_frame": match_paper,
            "optimise_seconds_per_point": optimise_paper,
            "how": f"the probe's seconds x {paper.restarts * paper.crops} attention passes per point per frame "
            f"({paper.restarts} restarts x {paper.crops} crops) and x {paper.restarts * paper.steps} optimisation "
            f"steps per point ({paper.restarts} x {paper.steps}), once per point (cached after)",
        },
    }


def _seconds(value: float) -> str:
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 60:
        return f"{value / 60:.1f} min"
    return f"{value:.3g} s"


def _hedlin_run_line(r: dict) -> str:
    probe, paper = r["probe"], r["paper"]
    if not paper["fps"]:
        return f"{r['points']} point(s): too fast to time"
    return (
        f"{r['points']} point(s): {paper['fps']:.3g} frames/s, {_seconds(paper['match_seconds_per_point_frame'])} "
        f"per point per frame, {_seconds(paper['optimise_seconds_per_point'])} per point to optimise once "
        f"(probe {probe['fps']:.3g} frames/s)"
    )


def _hedlin_line(runs: list[dict], size: int, paper) -> str:
    """The one line ``track bench --model hedlin`` prints about its end-to-end part."""
    return (
        f"hedlin end to end, its own per-point tracker (no feature grid: no batched featurizer, naive baseline or "
        f"mask run) on {runs[0]['frames']} frames of the clip at {size}x{size}, the paper's settings scaled from a "
        f"1-restart 1-crop 1-step probe by their UNet passes ({paper.restarts}x{paper.crops} per point per frame, "
        f"{paper.restarts}x{paper.steps} per point once): " + "; ".join(_hedlin_run_line(r) for r in runs)
    )
