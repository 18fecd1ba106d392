"""``track distill``: distil a DistillDIFT student from a folder of unlabeled images, or convert a published one.

    track distill --images DIR [--out DIR] [--steps N] [--batch B] [--unet stabilityai/sdxl-turbo] ...
    track distill convert distilldift_us.ckpt --out adapter.safetensors [--merged merged.safetensors]

Bad input is one line and exit code 2 (raised as TrackerError, reported by ``track``); Ctrl-C stops with the
last checkpoint kept, and the same command resumes from it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

from tracker.errors import TrackerError

EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    from tracker.apps.cli import Parser

    p = Parser(
        prog="track distill",
        description="Distil a DistillDIFT student (DINOv2 ViT-B/14-reg + LoRA r8 on q,v) from unlabeled images, "
        "with DINOv2 and a diffusers UNet (SDXL-Turbo) as teachers. Writes adapter.safetensors + adapter.json "
        "and merged.safetensors to --out; use them with `track VIDEO --model distilldift --weights FILE`.",
        epilog="`track distill convert CKPT --out adapter.safetensors` converts a published DistillDIFT checkpoint.",
    )
    p.add_argument("--images", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--out", help="output folder (default distill_out): checkpoint, adapter, card, merged weights")
    p.add_argument("--cache", help="teacher feature cache folder (default OUT/teacher_cache)")
    p.add_argument("--tiny", action="store_true", help="tiny random teacher and student (CPU smoke test, no downloads)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, help="optimiser steps (default: 10 epochs, ceil(10 * images / batch))")
    t.add_argument("--batch", type=int, help="image pairs per step (1)")
    t.add_argument("--lr", type=float, help="AdamW learning rate (1e-4)")
    t.add_argument("--weight-decay", type=float, help="AdamW weight decay (0.05)")
    t.add_argument("--lr-step", type=int, help="multiply the lr by --lr-gamma every N steps (default: steps / 2)")
    t.add_argument("--lr-gamma", type=float, help="step schedule factor (0.1)")
    t.add_argument("--temperature", type=float, help="softmax temperature of the loss (0.01)")
    t.add_argument("--pairs", choices=("retrieval", "random"), help="retrieval (top-k by DINOv2 embedding) or random")
    t.add_argument("--top-k", type=int, help="retrieval neighbours per image (10)")
    t.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (100)")
    t.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    t.add_argument("--seed", type=int, help="seed of pairs, noise and LoRA initialisation (0)")
    s = p.add_argument_group("student")
    s.add_argument("--base", help="base weights: a local file (timm or Meta format), 'random', or the table (default)")
    s.add_argument("--size", type=int, help="student and DINOv2 input side, a multiple of 14 (434: 31x31 grid)")
    s.add_argument("--rank", type=int, help="LoRA rank (8)")
    s.add_argument("--alpha", type=float, help="LoRA alpha (8: scaling alpha/rank = 1, as DistillDIFT)")
    s.add_argument("--dropout", type=float, help="LoRA dropout (0.05)")
    d = p.add_argument_group("diffusion teacher")
    d.add_argument(
        "--unet",
        help="diffusers pipeline: hub id (default stabilityai/sdxl-turbo; also SD 1.5 / 2.1), local folder, "
        "'random' (tiny, no download) or 'none' (DINOv2 teacher only)",
    )
    d.add_argument(
        "--unet-size", type=int, help="UNet input side in pixels, at least 64 (980: 31x31 at layer 1 for SDXL)"
    )
    d.add_argument("--timesteps", help="comma-separated noise timesteps, features averaged (51,101,151,201)")
    d.add_argument("--unet-layer", type=int, help="decoder layer, DistillDIFT numbering (1: first up-block layer)")
    d.add_argument("--prompt", help="prompt; {category} is the image's sub-folder name (default: empty)")
    r = p.add_argument_group("running")
    r.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    r.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), help="auto: bf16/fp16 on GPU, fp32 on CPU")
    r.add_argument("--teacher-batch", type=int, help="images per teacher pass (4)")
    r.add_argument("--workers", type=int, help="data loader processes (0)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def build_convert_parser() -> argparse.ArgumentParser:
    from tracker.apps.cli import Parser

    p = Parser(
        prog="track distill convert",
        description="Convert a published DistillDIFT checkpoint to an adapter (safetensors + JSON card) in the "
        "format `track distill` writes, optionally with merged weights.",
    )
    p.add_argument("checkpoint", help="published checkpoint, e.g. distilldift_us.ckpt")
    p.add_argument("--out", required=True, help="adapter file (.safetensors); the card is written beside it (.json)")
    p.add_argument("--merged", help="also write merged weights (.safetensors) for `track --weights`")
    p.add_argument("--base", help="base weights file for --merged (default: the checkpoint's own or the table)")
    p.add_argument("--size", type=int, default=434, help="input side the merged weights are built at (434)")
    return p


def _device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested != "cpu" and not requested.startswith("cuda"):
        raise TrackerError(f"--device must be cpu or cuda[:N], got {requested!r}")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise TrackerError("--device cuda: no CUDA GPU is available to torch on this machine")
    return requested


def _timesteps(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise TrackerError(f"--timesteps must be comma-separated integers, got {text!r}") from None
    if not values:
        raise TrackerError("--timesteps needs at least one timestep")
    return values


def config_from_args(args: argparse.Namespace):
    """The :class:`~tracker.distill.train.DistillConfig` of the command line (only given options change it)."""
    from tracker.distill.train import DistillConfig, tiny_config

    out = args.out or "distill_out"
    config = tiny_config(args.images, out) if args.tiny else DistillConfig(images=args.images, out=out)
    top = {
        "cache": args.cache,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "lr_step": args.lr_step,
        "lr_gamma": args.lr_gamma,
        "temperature": args.temperature,
        "pairs": args.pairs,
        "top_k": args.top_k,
        "checkpoint_every": args.checkpoint_every,
        "seed": args.seed,
        "base_weights": args.base,
        "input_size": args.size,
        "precision": args.precision,
        "teacher_batch": args.teacher_batch,
        "workers": args.workers,
    }
    config = replace(config, **{k: v for k, v in top.items() if v is not None}, device=_device(args.device))
    lora = {"rank": args.rank, "alpha": args.alpha, "dropout": args.dropout}
    if args.rank is not None and args.alpha is None:
        lora["alpha"] = float(args.rank)  # keep the scaling at 1 unless asked otherwise
    config = replace(config, lora=replace(config.lora, **{k: v for k, v in lora.items() if v is not None}))
    diffusion = {
        "source": args.unet,
        "input_size": args.unet_size,
        "timesteps": _timesteps(args.timesteps) if args.timesteps is not None else None,
        "layer": args.unet_layer,
        "prompt": args.prompt,
    }
    config = replace(
        config, diffusion=replace(config.diffusion, **{k: v for k, v in diffusion.items() if v is not None})
    )
    return config.validate()


def main(argv: list[str]) -> int:
    """``track distill ...``; returns the exit code (TrackerError propagates to ``track``: one line, exit 2)."""
    if argv and argv[0] == "convert":
        return convert_command(build_convert_parser().parse_args(argv[1:]))
    return distill_command(build_parser().parse_args(argv))


def convert_command(args: argparse.Namespace) -> int:
    from tracker.distill.adapter import convert_checkpoint

    card = convert_checkpoint(
        args.checkpoint, args.out, merged=args.merged, base_weights=args.base, input_size=args.size
    )
    written = [args.out, str(args.out).rsplit(".", 1)[0] + ".json"] + ([args.merged] if args.merged else [])
    print(f"converted {args.checkpoint} (rank {card['lora']['rank']}, {card['blocks']} blocks): {', '.join(written)}")
    return 0


def distill_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tracker.distill.train import DistillRun

    config = config_from_args(args)
    run = DistillRun(config)
    quiet = args.no_progress
    bar = tqdm(total=len(run.entries), desc="teachers", unit="img", disable=quiet, file=sys.stderr)
    computed = 0
    for progress in run.cache_teachers():
        bar.n = progress.done
        bar.refresh()
        computed = progress.computed
    bar.close()
    failed = run.failed
    print(
        f"teacher features: {len(run.usable)} images ({computed} computed now, {len(run.usable) - computed} from "
        f"{run.cache.folder})" + (f"; {len(failed)} unreadable skipped (e.g. {failed[0][0]})" if failed else "")
    )
    native = run.cache.diffusion_grid(run.usable[0]) if config.diffusion.source != "none" else None
    if native and tuple(native) != config.grid_hw:
        grid = "x".join(map(str, config.grid_hw))
        print(
            f"note: the diffusion layer gives a {native[0]}x{native[1]} grid at --unet-size "
            f"{config.diffusion.input_size}; resized to the student's {grid}"
        )

    bar = tqdm(total=run.total_steps, desc="distill", unit="step", disable=quiet, file=sys.stderr)
    report = None
    try:
        for report in run.train(restart=args.restart):
            bar.n = report.step
            bar.set_postfix(loss=f"{report.mean_loss:.4f}", lr=f"{report.lr:.1e}")
    except KeyboardInterrupt:
        bar.close()
        saved = run.checkpoint_path if run.checkpoint_path.is_file() else None
        where = f"the last checkpoint is {saved}" if saved else "no checkpoint was written yet"
        print(
            f"track distill: interrupted after step {run.steps_done}; {where}: rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    bar.close()
    outputs = run.write_outputs()
    loss = f", mean loss of the last steps {sum(run.losses) / len(run.losses):.4f}" if run.losses else ""
    print(f"{run.steps_done} steps{loss}")
    print(f"wrote {outputs.adapter}, {outputs.card}, {outputs.merged}")
    print(f"track it: track VIDEO --points P --model distilldift --weights {outputs.merged}")
    if report is None and run.steps_done:
        print(f"(the run had already finished: {run.steps_done} steps in {run.checkpoint_path})")
    return 0
