"""Seconds per frame of each featurizer alone (real architecture, random weights), and Hedlin's cost per point.

Usage:
    OMP_NUM_THREADS=2 python benchmarks/featurizers_cpu.py --models distilldift,dinov2-s,sift,hedlin \\
        [--video ../shared/data/videos/01_dog.mp4] [--calls 3] [--out benchmarks/results/cpu-2core]

Each model: ``create_featurizer(model, frame_hw, weights="random")`` at its default input size, one untimed
call (skipped for models slower than ``--slow`` seconds per call: their first call is the timed one), then up to
``--calls`` timed calls of one frame within ``--budget`` seconds; the median is reported. ``hedlin`` has no
featurizer: the real SD-1.x UNet and VAE (random weights) at 512 run one optimisation step (random crop, VAE
encode, UNet forward and backward to the embedding) and one matching pass (crop, VAE encode, UNet forward),
through :class:`tracker.hedlin.HedlinMatcher` with ``steps = restarts = crops = 1``; the paper's cost is then
``restarts x steps`` optimisation steps per point and ``restarts x crops`` passes per point per frame.
Results are merged into ``featurizers_cpu.json`` (so models can be measured in several runs) and the table
``featurizers_cpu.md`` is rewritten from it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from _common import DEFAULT_VIDEO, machine

from tracker import create_featurizer, open_video
from tracker.io.atomic import atomic_write

ARCHITECTURE = {
    "distilldift": "ViT-B/14-reg4 (DINOv2-B)",
    "dinov2-s": "ViT-S/14-reg4",
    "dinov3-s": "ViT-S/16, RoPE, 4 registers",
    "dinov3-b": "ViT-B/16, RoPE, 4 registers",
    "dift": "SD-2.1 VAE encoder + UNet to up_blocks[1], ensemble 8",
    "dhf": "SD-1.5 VAE encoder + UNet x 50 (DDIM inversion) + aggregation x 11",
    "dhf-one-step": "SD-1.5 VAE encoder + UNet x 1 + aggregation",
    "dhf-sd21": "SD-2.1-base VAE encoder + UNet x 50 (DDIM inversion) + aggregation x 11",
    "sift": "OpenCV SIFT descriptors (no weights)",
    "hedlin": "SD-1.4/1.5 VAE encoder + UNet (860 M) per crop",
}


def time_featurizer(name: str, frame: torch.Tensor, calls: int, budget: float, slow: float) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    featurizer = create_featurizer(name, tuple(frame.shape[1:3]), weights=None if name == "sift" else "random")
    build = time.perf_counter() - start
    times, cpu = [], []
    with torch.inference_mode():
        start, start_cpu = time.perf_counter(), time.process_time()
        featurizer(frame)
        first = time.perf_counter() - start
        began = time.perf_counter()
        if first > slow:  # too slow to throw a call away: the first call is timed (and counts in the budget)
            times.append(first)
            cpu.append(time.process_time() - start_cpu)
            began = start
        while len(times) < calls and (not times or time.perf_counter() - began < budget):
            start, start_cpu = time.perf_counter(), time.process_time()
            featurizer(frame)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    s = statistics.median(times)
    return {
        "architecture": ARCHITECTURE[name],
        "input_size": list(featurizer.input_hw[::-1]),
        "grid": list(featurizer.grid_hw[::-1]),
        "build_s": round(build, 2),
        "first_call_s": round(first, 3),
        "timed_calls": len(times),
        "s_per_frame": round(s, 4),
        "cpu_s_per_frame": round(statistics.median(cpu), 4),  # CPU seconds of all threads: less load-dependent
        "frames_per_s": round(1 / s, 4),
    }


def time_hedlin(frame: torch.Tensor) -> dict:
    from tracker.diffusion_features import build_random
    from tracker.hedlin import HedlinConfig, HedlinMatcher

    paper = HedlinConfig()
    unet, vae, _ = build_random("sd-1.5")
    vae.decoder = None
    matcher = HedlinMatcher(unet, vae, 512, HedlinConfig(steps=1, restarts=1, crops=1))
    image = matcher.prepare(frame[0])
    out = {"architecture": ARCHITECTURE["hedlin"], "input_size": [512, 512], "grid": [32, 32]}
    for _ in range(2):  # the second of each is reported: the first pays the process's first allocations
        start, start_cpu = time.perf_counter(), time.process_time()
        embeddings = matcher.optimise(image, (256.0, 256.0))
        out["optimise_step_s"] = round(time.perf_counter() - start, 2)
        out["optimise_step_cpu_s"] = round(time.process_time() - start_cpu, 2)
        start, start_cpu = time.perf_counter(), time.process_time()
        matcher.attention(image, embeddings)
        out["match_pass_s"] = round(time.perf_counter() - start, 2)
        out["match_pass_cpu_s"] = round(time.process_time() - start_cpu, 2)
    out["optimise_s_per_point"] = round(out["optimise_step_s"] * paper.restarts * paper.steps, 1)
    out["s_per_point_per_frame"] = round(out["match_pass_s"] * paper.restarts * paper.crops, 1)
    out["s_per_frame"] = out["s_per_point_per_frame"]  # one point
    out["cpu_s_per_frame"] = round(out["match_pass_cpu_s"] * paper.restarts * paper.crops, 1)
    out["frames_per_s"] = round(1 / out["s_per_frame"], 6)
    out["note"] = (
        f"measured: 1 optimisation step, 1 matching pass; extrapolated x{paper.restarts * paper.steps} "
        f"(restarts x steps) per point and x{paper.restarts * paper.crops} (restarts x crops) per point per frame"
    )
    return out


def table(results: dict) -> str:
    base = results.get("distilldift", {}).get("s_per_frame")
    lines = [
        "| model | architecture (random weights) | input | grid | s / frame | frames/s | CPU s / frame "
        "| vs distilldift |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        s = r["s_per_frame"]
        ratio = "" if not base or name == "distilldift" else f"{s / base:.3g}x the time"
        what = "s / point / frame" if name == "hedlin" else ""
        lines.append(
            f"| `{name}` | {r['architecture']} | {'x'.join(map(str, r['input_size']))} | "
            f"{'x'.join(map(str, r['grid']))} | {s:.3g}{' ' + what if what else ''} | {r['frames_per_s']:.3g} | "
            f"{r['cpu_s_per_frame']:.3g} | {ratio} |"
        )
    if "hedlin" in results:
        h = results["hedlin"]
        lines += ["", f"hedlin: {h['note']}; optimisation {h['optimise_s_per_point']} s per point (once, cached)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", required=True)
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--budget", type=float, default=60.0, help="seconds of timed calls per model at most")
    p.add_argument("--slow", type=float, default=120.0, help="a first call slower than this is timed")
    p.add_argument("--out", default="benchmarks/results/cpu-2core")
    args = p.parse_args()
    with open_video(args.video) as video:
        frame = torch.from_numpy(next(iter(video)).copy())[None]
    out = Path(args.out)
    path = out / "featurizers_cpu.json"
    doc = json.loads(path.read_text()) if path.is_file() else {"results": {}}
    for name in args.models.split(","):
        print(f"{name} ...", flush=True)
        r = time_hedlin(frame) if name == "hedlin" else time_featurizer(name, frame, args.calls, args.budget, args.slow)
        r["frame_size"] = [frame.shape[2], frame.shape[1]]
        r["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        doc["results"][name] = r
        print(json.dumps(r), flush=True)
        doc["machine"] = machine()
        command = f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} python benchmarks/featurizers_cpu.py "
        command += f"--models {args.models} --calls {args.calls} --budget {args.budget:g}"
        if command not in doc.setdefault("commands", []):
            doc["commands"].append(command)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode())
        header = (
            "# Featurizers on this CPU: real architectures, random weights, one frame\n\n"
            "Written by `benchmarks/featurizers_cpu.py` (see its docstring; `commands`, `notes` and `machine` in the\n"
            "JSON); a shared 2-core CPU, so read the ratios more than the absolute values.\n\n"
        )
        atomic_write(out / "featurizers_cpu.md", (header + table(doc["results"])).encode())


if __name__ == "__main__":
    main()
