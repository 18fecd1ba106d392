"""Every featurizer backend available here: parity with torch fp32 and speed, written with the machine.

Usage:
    python benchmarks/backends.py [--model distilldift] [--weights random] [--size 434] [--device cuda]
        [--batches 1,8,32] [--iters 50] [--compile] [--out benchmarks/results/<machine>]

For each backend and precision that runs here (torch fp32/fp16/bf16 [+ torch.compile], ONNX Runtime fp32/fp16,
TensorRT fp32/fp16/bf16) it reports the lowest per-cell cosine against torch fp32 on two textured check
images, batch-1 latency (p50/p90 over ``--iters``; CUDA events after warm-up on a GPU, wall clock on CPU)
and throughput at each batch. Writes ``backends_<model>_<size>.json`` and ``.md`` to ``--out``. A backend
that cannot run here is listed with the reason. Speed does not depend on weight values, so ``--weights
random`` (the default: no pretrained weights needed) measures the real architecture's speed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine

from export.onnx import check_images, cosine_per_cell
from tracker.backends import BackendOptions, available_backends, build_featurizer
from tracker.errors import TrackerError
from tracker.io.atomic import atomic_write


def timed(featurizer, frames: torch.Tensor, iters: int, warmup: int) -> list[float]:
    """Milliseconds per call (CUDA events on a GPU, perf_counter on CPU) after ``warmup`` calls."""
    cuda = featurizer.device.type == "cuda"
    if cuda:
        frames = frames.to(featurizer.device)
    for _ in range(warmup):
        featurizer(frames)
    times = []
    for _ in range(iters):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            featurizer(frames)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            featurizer(frames)
            times.append(1000 * (time.perf_counter() - t0))
    return times


def variants(device: str, compile_too: bool) -> list[tuple[str, BackendOptions | str]]:
    """``(label, options or onnx precision)`` for every backend and precision worth trying on ``device``."""
    cuda = device.startswith("cuda")
    out = [("torch fp32", BackendOptions(backend="torch", precision="fp32"))]
    out += [("torch bf16", BackendOptions(backend="torch", precision="bf16"))]
    if cuda:
        out += [("torch fp16", BackendOptions(backend="torch", precision="fp16"))]
        if compile_too:
            out += [
                (f"torch {p} compiled", BackendOptions(backend="torch", precision=p, compile=True))
                for p in ("fp16", "bf16")
            ]
    out += [("onnx fp32", "fp32")] + ([("onnx fp16", "fp16")] if cuda else [])
    out += [(f"tensorrt {p}", BackendOptions(backend="tensorrt", precision=p)) for p in ("fp32", "fp16", "bf16")]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="distilldift")
    p.add_argument("--weights", default="random")
    p.add_argument("--size", default="434")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--compile", action="store_true", help="also time torch.compile variants (slow to build)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    side = int(args.size)
    frame_hw = (side, side)
    warmup = 10 if args.device.startswith("cuda") else 3

    reference, _ = build_featurizer(
        args.model, frame_hw, BackendOptions(backend="torch", precision="fp32"), size=args.size, weights=args.weights
    )
    check = check_images(reference.input_hw)
    with torch.inference_mode():
        want = reference(check).numpy()
    status = available_backends(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, option in variants(args.device, args.compile):
            backend = label.split()[0]
            row = {"backend": label}
            if status.get(backend):
                rows.append({**row, "skipped": status[backend]})
                print(f"{label:24s} skipped: {status[backend]}", file=sys.stderr)
                continue
            try:
                featurizer = make(label, option, reference, args, frame_hw, Path(tmp))
                got = featurizer(check).float().cpu().numpy()
                row["min_cosine"] = float(cosine_per_cell(got, want).min())
                lat = timed(featurizer, check[:1], args.iters, warmup)
                row["latency_ms"] = {q: float(np.percentile(lat, q)) for q in (50, 90, 99)}
                row["frames_per_s"] = {}
                for b in batches:
                    frames = check[torch.arange(b) % 2]
                    ms = timed(featurizer, frames, max(3, args.iters // max(1, b // 4)), warmup)
                    row["frames_per_s"][str(b)] = 1000 * b / float(np.median(ms))
                if torch.cuda.is_available() and args.device.startswith("cuda"):
                    row["peak_torch_mib"] = torch.cuda.max_memory_allocated() / 2**20
                    torch.cuda.reset_peak_memory_stats()
            except TrackerError as exc:
                row["skipped"] = str(exc)
            rows.append(row)
            print(format_row(row), file=sys.stderr)
            featurizer = None
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    result = {
        "model": args.model,
        "weights": args.weights,
        "input_size": list(reference.input_hw[::-1]),
        "device": args.device,
        "iters": args.iters,
        "parity_reference": "torch fp32 eager on the same weights, two textured check images",
        "results": rows,
        "machine": machine(),
    }
    if args.out:
        folder = Path(args.out)
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"backends_{args.model}_{side}"
        atomic_write(stem.with_suffix(".json"), json_bytes(result))
        atomic_write(stem.with_suffix(".md"), markdown(result).encode())
        print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)


def make(label, option, reference, args, frame_hw, tmp: Path):
    """The featurizer of one variant, with the reference's weights (ONNX and TensorRT exported from it)."""
    import copy

    from tracker.backends import PRECISIONS

    if isinstance(option, str):
        from export.onnx import export_onnx

        path = tmp / f"f_{option}.onnx"
        export_onnx(reference, path, precision=option)
        featurizer, _ = build_featurizer("", frame_hw, BackendOptions(onnx=str(path)), device=args.device)
        return featurizer
    if option.backend == "tensorrt":
        from export.tensorrt import engine_for

        featurizer, _ = engine_for(copy.deepcopy(reference), precision=option.precision, device=args.device)
        return featurizer
    featurizer = copy.deepcopy(reference).to(args.device).set_precision(PRECISIONS[option.precision])
    return featurizer.compile() if option.compile else featurizer


def format_row(row: dict) -> str:
    if "skipped" in row:
        return f"{row['backend']:24s} skipped: {row['skipped']}"
    fps = ", ".join(f"b{b} {v:.1f}/s" for b, v in row["frames_per_s"].items())
    lat = row["latency_ms"]
    return f"{row['backend']:24s} cos {row['min_cosine']:.5f}  p50 {lat[50]:.2f} ms p90 {lat[90]:.2f} ms  {fps}"


def json_bytes(result: dict) -> bytes:
    import json

    return json.dumps(result, indent=1).encode()


def markdown(result: dict) -> str:
    m = result["machine"]
    batches = sorted({b for r in result["results"] for b in r.get("frames_per_s", {})}, key=int)
    lines = [
        f"# Backends: {result['model']} ({result['weights']} weights) at "
        f"{result['input_size'][0]}x{result['input_size'][1]} on {result['device']}",
        "",
        f"Machine: {m}",
        "",
        f"Parity: {result['parity_reference']}. Latency: batch 1, {result['iters']} calls after warm-up.",
        "",
        "| backend | min cosine | p50 ms | p90 ms | " + " | ".join(f"batch {b} frames/s" for b in batches) + " |",
        "|---|---|---|---|" + "---|" * len(batches),
    ]
    for r in result["results"]:
        if "skipped" in r:
            lines.append(f"| {r['backend']} | not run: {r['skipped']} | | |" + " |" * len(batches))
            continue
        fps = " | ".join(f"{r['frames_per_s'][b]:.1f}" for b in batches)
        lat = r["latency_ms"]
        lines.append(f"| {r['backend']} | {r['min_cosine']:.5f} | {lat[50]:.2f} | {lat[90]:.2f} | {fps} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
