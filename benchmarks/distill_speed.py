"""Distillation speed: teacher caching (images/s) and training throughput (pairs/s) with peak memory.

Usage:
    python benchmarks/distill_speed.py [--config tiny|student-b|real] [--images DIR] [--num-images 16]
        [--steps 40] [--warmup 5] [--batch 1] [--device cpu|cuda] [--precision auto] [--out DIR] [--note TEXT]

Configs:
    tiny       the test configuration: 32-wide 2-block ViT at 70 px, tiny random SDXL-like UNet at 80 px.
    student-b  the real student (ViT-B/14-reg4 at 434 px, 31x31, random weights) with the tiny random UNet at
               980 px: the student's real cost without any download.
    real       the real teachers and student (table DINOv2 weights, stabilityai/sdxl-turbo from the Hugging Face
               cache): runs only where those weights are present, else says so and exits 2.

Without --images, ``--num-images`` smooth random images are generated. Steps are timed one by one (the loss is
read back every step, which synchronises the GPU); the first ``--warmup`` are dropped and the median is reported.
Peak memory: ``torch.cuda.max_memory_allocated`` on GPU, the process's peak resident set on CPU.
Prints one line and, with --out, writes ``distill_speed_<config>.json`` (with the machine) and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import machine, save
from PIL import Image

from tracker.distill.teachers import DiffusionConfig
from tracker.distill.train import DistillConfig, DistillRun, tiny_config
from tracker.errors import TrackerError


def make_images(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = folder / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.BILINEAR).save(sub / f"{i:04d}.jpg", quality=90)


def build_config(name: str, images: str, out: str, args) -> DistillConfig:
    common = dict(
        steps=args.warmup + args.steps,
        batch=args.batch,
        device=args.device,
        precision=args.precision,
        checkpoint_every=10**9,  # one checkpoint at the end, not inside the timed steps
        pairs="random",
        teacher_batch=args.teacher_batch,
    )
    if name == "tiny":
        return replace(tiny_config(images, out), **common)
    if name == "student-b":
        return DistillConfig(
            images=images, out=out, base_weights="random", diffusion=DiffusionConfig(source="random"), **common
        )
    if name == "real":
        return DistillConfig(images=images, out=out, **common)
    raise SystemExit(f"unknown --config {name}")


def peak_memory_mib(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="tiny", choices=("tiny", "student-b", "real"))
    p.add_argument("--images", help="training images (default: generated)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--steps", type=int, default=40, help="timed steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--teacher-batch", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--out", help="folder for the JSON and markdown results")
    p.add_argument("--note", default="", help="machine description for the result (e.g. '2-core EPYC VM, no GPU')")
    args = p.parse_args()

    import diffusers  # noqa: F401  (the heavy imports happen before anything is timed)
    import peft  # noqa: F401
    import timm  # noqa: F401

    with tempfile.TemporaryDirectory() as tmp:
        images = args.images
        if images is None:
            images = str(Path(tmp) / "images")
            make_images(Path(images), args.num_images)
        config = build_config(args.config, images, str(Path(tmp) / "run"), args)
        try:
            run = DistillRun(config)
            load_s = 0.0
            make_teachers = run.make_teachers

            def timed_make_teachers():
                nonlocal load_s
                tick = time.perf_counter()
                teachers = make_teachers()
                load_s = time.perf_counter() - tick
                return teachers

            run.make_teachers = timed_make_teachers
            start = time.perf_counter()
            last = list(run.cache_teachers())[-1]
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            cache_s = time.perf_counter() - start - load_s
            teacher_peak = peak_memory_mib(args.device)
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            reports = list(run.train())
        except TrackerError as exc:
            print(f"distill_speed: {args.config}: {exc}", file=sys.stderr)
            return 2
        timed = [r.seconds for r in reports[args.warmup :]]
        median = statistics.median(timed)
        result = {
            "config": args.config,
            "device": args.device,
            "precision": str(run.amp or "fp32").replace("torch.", ""),
            "images": len(run.usable),
            "student": {"arch": config.arch, "overrides": config.overrides, "input_size": config.input_size},
            "diffusion_teacher": {"source": config.diffusion.source, "input_size": config.diffusion.input_size},
            "teacher_cache": {
                "images_computed": last.computed,
                "teacher_load_seconds": load_s,
                "seconds": cache_s,
                "images_per_s": last.computed / cache_s if cache_s > 0 else None,
                "teacher_batch": config.teacher_batch,
                "peak_memory_mib": teacher_peak,
            },
            "training": {
                "batch_pairs": config.batch,
                "timed_steps": len(timed),
                "warmup_steps": args.warmup,
                "median_step_ms": 1000 * median,
                "p90_step_ms": 1000 * float(np.percentile(timed, 90)),
                "pairs_per_s": config.batch / median,
                "first_loss": reports[0].loss,
                "last_mean_loss": reports[-1].mean_loss,
                "peak_memory_mib": peak_memory_mib(args.device),
            },
            "note": args.note,
        }
    t = result["training"]
    c = result["teacher_cache"]
    print(
        f"distill {args.config} on {args.device} ({result['precision']}): teachers {c['images_per_s']:.2f} images/s; "
        f"training {t['pairs_per_s']:.2f} pairs/s (median step {t['median_step_ms']:.1f} ms, batch {config.batch}), "
        f"peak memory {t['peak_memory_mib']:.0f} MiB"
    )
    if args.out:
        name = f"distill_speed_{args.config}"
        save(args.out, name, result)
        info = machine()
        md = [
            f"# Distillation speed: `{args.config}` on {args.device}",
            "",
            f"Machine: {args.note or info['cpu']} ({info['threads']} torch threads, Python {info['python']}, "
            f"torch {info['torch']}{', ' + info['gpu'] if 'gpu' in info else ''}).",
            "",
            f"`python benchmarks/distill_speed.py --config {args.config} --steps {args.steps} --warmup {args.warmup} "
            f"--batch {args.batch} --device {args.device}`",
            "",
            f"Student {config.arch}{' ' + json.dumps(config.overrides) if config.overrides else ''} at "
            f"{config.input_size}x{config.input_size}; diffusion teacher `{config.diffusion.source}` at "
            f"{config.diffusion.input_size}x{config.diffusion.input_size}; {result['images']} images (640x480 JPEG).",
            "",
            "| stage | figure |",
            "|---|---|",
            f"| teacher caching | {c['images_per_s']:.2f} images/s ({c['images_computed']} images, "
            f"batch {c['teacher_batch']}; loading the teachers took {c['teacher_load_seconds']:.1f} s more), "
            f"peak memory {c['peak_memory_mib']:.0f} MiB |",
            f"| training | {t['pairs_per_s']:.2f} pairs/s (median step {t['median_step_ms']:.1f} ms, p90 "
            f"{t['p90_step_ms']:.1f} ms, {t['timed_steps']} steps after {t['warmup_steps']} warm-up, batch "
            f"{t['batch_pairs']}) |",
            f"| peak memory (training) | {t['peak_memory_mib']:.0f} MiB "
            f"({'CUDA allocated' if args.device.startswith('cuda') else 'peak RSS of the whole process'}) |",
            "",
        ]
        (Path(args.out) / f"{name}.md").write_text("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
