"""End-to-end mask propagation frames/s on a 480p video (decode + featurizer + flow + feature estimate + fusion).

Usage:
    python benchmarks/mask_fps.py [--root ../shared/data/davis2016] [--sequence dog] [--model sift]
        [--refine flow|none] [--frames N] [--batch 8] [--out DIR]

Runs :class:`tracker.propagation.MaskPropagator` (the model's default propagation settings, as ``track
--mask``) on a DAVIS-2016 480p sequence from its first-frame mask; without the DAVIS folder, on a generated
854x480 clip of two moving objects (``tracker.synthetic.moving_objects``). Frames are decoded from their
files inside the timed loop. Prints one line and, with --out, writes ``mask_fps_<model>.json``
(``mask_fps_<model>_refine-none.json`` for ``--refine none``): frames/s end to end, milliseconds per frame
of each stage (decode, featurizer, flow, feature estimate, the rest of the propagation step: fusion,
upsampling, state; wall clock), the process CPU time per frame (comparable on a shared machine), J&F
and ``kept`` against the annotations when there are any, and the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from _common import save, timed_items

from tracker import create_featurizer
from tracker.allocator import keep_memory_flat
from tracker.eval.evaluation import davis_sequence, given_masks
from tracker.eval.metrics import jaccard_and_f
from tracker.io.formats import fit_mask, read_mask
from tracker.io.video import open_video
from tracker.optical_flow import REFINE_MODES
from tracker.propagation import MaskPropagator, default_propagation_config
from tracker.synthetic import moving_objects

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared/data/davis2016"


class Stages:
    """Seconds per stage, accumulated by wrapping the callables that do the work."""

    def __init__(self):
        self.s = {"decode": 0.0, "featurizer": 0.0, "flow": 0.0, "feature_estimate": 0.0}

    def wrap(self, key: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.s[key] += time.perf_counter() - start

        return timed

    def frames(self, iterable):
        return timed_items(iterable, self.s, "decode")


def generated_clip(folder: Path, frames: int) -> tuple[Path, dict[int, np.ndarray], list[np.ndarray]]:
    """An 854x480 two-object clip written as JPEGs (decoded like DAVIS in the timed loop)."""
    clip = moving_objects(num_frames=frames, size=(480, 854), num_objects=2, seed=0)
    for i, frame in enumerate(clip.frames):
        cv2.imwrite(
            str(folder / f"{i:05d}.jpg"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
    return folder, {0: clip.masks[0]}, list(clip.masks)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(DEFAULT_ROOT), help="DAVIS-2016 folder (a generated clip without it)")
    p.add_argument("--sequence", default="dog")
    p.add_argument("--model", default="sift")
    p.add_argument("--refine", choices=REFINE_MODES, default=REFINE_MODES[0])
    p.add_argument("--frames", type=int, default=None, help="at most this many frames (default: all; 60 generated)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default=None, help="folder for the JSON result")
    args = p.parse_args()
    keep_memory_flat()  # the malloc setting the track command runs with

    with tempfile.TemporaryDirectory() as scratch:
        if Path(args.root, "JPEGImages", "480p", args.sequence).is_dir():
            frames_dir, masks_dir = davis_sequence(args.root, args.sequence)
            source = str(frames_dir)
            first = next(iter(open_video(frames_dir)))
            given = given_masks(masks_dir, first.shape[:2])
            count = len(list(frames_dir.glob("*.jpg")))
            truths = [
                fit_mask(read_mask(q), first.shape[:2]) if (q := masks_dir / f"{i:05d}.png").is_file() else None
                for i in range(count)
            ]
        else:
            frames_dir, given, truths = generated_clip(Path(scratch), args.frames or 60)
            source = "generated 854x480 two-object clip (tracker.synthetic.moving_objects, seed 0)"
            first = next(iter(open_video(frames_dir)))
        h, w = first.shape[:2]
        featurizer = create_featurizer(args.model, (h, w))
        config = default_propagation_config(args.model, refine=args.refine)
        propagator = MaskPropagator(featurizer, config)
        stages = Stages()
        featurizer.forward = stages.wrap("featurizer", featurizer.forward)
        if propagator.flow is not None:
            propagator.flow.backward = stages.wrap("flow", propagator.flow.backward)
        import tracker.propagation as propagation

        original_propagate = propagation.propagate_labels
        propagation.propagate_labels = stages.wrap("feature_estimate", original_propagate)
        advance = propagator.advance
        step_s = 0.0

        def timed_advance(*a, **k):
            nonlocal step_s
            start = time.perf_counter()
            try:
                return advance(*a, **k)
            finally:
                step_s += time.perf_counter() - start

        propagator.advance = timed_advance
        frames = open_video(frames_dir)
        if args.frames:
            frames = (f for i, f in zip(range(args.frames), frames, strict=False))
        labels = []
        cpu_start = time.process_time()
        start = time.perf_counter()
        try:
            for result in propagator.propagate(stages.frames(frames), given, args.batch):
                labels.append(result.labels)
        finally:
            propagation.propagate_labels = original_propagate
        total = time.perf_counter() - start
        cpu = time.process_time() - cpu_start

    n = len(labels)
    ms = {k: 1000 * v / n for k, v in stages.s.items()}
    ms["propagation_rest"] = 1000 * step_s / n - ms["flow"] - ms["feature_estimate"]
    ms["other"] = 1000 * total / n - ms["decode"] - ms["featurizer"] - 1000 * step_s / n
    truths = truths[:n]
    scores = {}
    if sum(t is not None for t in truths[1:-1]):
        jf = jaccard_and_f(labels, truths, exclude_last=True)
        kept = [
            np.count_nonzero(q) / np.count_nonzero(t)
            for q, t in zip(labels[1:-1], truths[1:-1], strict=True)
            if t is not None and t.any()
        ]
        scores = {"J": float(jf["J"]), "F": float(jf["F"]), "J&F": float(jf["J&F"]), "kept": float(np.mean(kept))}
    result = {
        "video": source,
        "frame_size": [w, h],
        "model": args.model,
        "refine": args.refine,
        "propagation": dict(vars(config)),
        "frames": n,
        "batch": args.batch,
        "seconds": total,
        "fps": n / total,
        "cpu_ms_per_frame": round(1000 * cpu / n, 1),
        "ms_per_frame": {k: round(v, 2) for k, v in ms.items()},
        **scores,
    }
    print(
        f"mask_fps {args.model} refine={args.refine} {w}x{h}: {n / total:.2f} frames/s end to end ("
        + ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
        + f" ms/frame; process CPU {1000 * cpu / n:.0f} ms/frame)"
        + (f"; J&F {scores['J&F']:.3f}, kept {scores['kept']:.2f}" if scores else "")
    )
    name = f"mask_fps_{args.model}" + ("" if args.refine == REFINE_MODES[0] else f"_refine-{args.refine}")
    save(args.out, name, result)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
