"""End-to-end tracking frames/s on a video (decode + featurizer + matching; no overlay writing).

Usage:
    python benchmarks/track_fps.py [--video ../shared/data/videos/01_dog.mp4] [--model sift]
        [--weights random] [--points 256] [--frames 120] [--batch 8] [--device cpu] [--out DIR]

Prints one line and, with --out, writes ``<model>.json`` with the machine description.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from tracker import PointTracker, Queries, create_featurizer, default_match_config, open_video


def machine() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", default=str(Path(__file__).resolve().parents[2] / "shared/data/videos/01_dog.mp4"))
    p.add_argument("--model", default="sift")
    p.add_argument("--weights", default=None)
    p.add_argument("--points", type=int, default=256)
    p.add_argument("--frames", type=int, default=120, help="frames to time (after 8 warm-up frames)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    video = open_video(args.video)
    h, w = video.info.height, video.info.width
    featurizer = create_featurizer(args.model, (h, w), weights=args.weights, device=args.device)
    tracker = PointTracker(featurizer, default_match_config(args.model))
    rng = np.random.default_rng(0)
    queries = Queries.create(np.stack([rng.uniform(0, w - 1, args.points), rng.uniform(0, h - 1, args.points)], 1))
    frames = iter(video)
    warm = list(itertools.islice(frames, 8))
    list(tracker.track(warm, queries, batch_size=args.batch))
    timed = itertools.islice(frames, args.frames)

    featurizer_s = 0.0
    original = featurizer.forward

    def timed_forward(x):
        nonlocal featurizer_s
        start = time.perf_counter()
        out = original(x)
        if out.is_cuda:
            torch.cuda.synchronize()
        featurizer_s += time.perf_counter() - start
        return out

    featurizer.forward = timed_forward
    start = time.perf_counter()
    count = sum(1 for _ in tracker.track(timed, queries, batch_size=args.batch))
    total = time.perf_counter() - start
    result = {
        "video": args.video,
        "frame_size": [w, h],
        "model": args.model,
        "weights": args.weights or "table",
        "input_size": list(featurizer.input_hw[::-1]),
        "points": args.points,
        "frames": count,
        "batch": args.batch,
        "device": args.device,
        "end_to_end_fps": count / total,
        "featurizer_ms_per_frame": 1000 * featurizer_s / count,
        "rest_ms_per_frame": 1000 * (total - featurizer_s) / count,
        "machine": machine(),
    }
    print(
        f"{args.model} ({result['weights']}) {w}x{h} -> {result['input_size']}, {args.points} points: "
        f"{result['end_to_end_fps']:.1f} frames/s end to end; "
        f"featurizer {result['featurizer_ms_per_frame']:.1f} ms, "
        f"decode+matching {result['rest_ms_per_frame']:.1f} ms per frame"
    )
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"track_fps_{args.model}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
