"""CPU cost of the point refinement: PointTracker.advance per frame with --refine lk vs none, features precomputed.

Usage:
    python benchmarks/refine_cost.py [--video ../shared/data/videos/01_dog.mp4] [--points 256] [--frames 40]

The featurizer runs once per frame before timing, so the figures are the tracker step alone (matching, local
track, checks, re-detection); both modes run on the same frames and grids, alternated, one torch thread, and
process CPU time is reported beside wall time (CPU time is less disturbed by other jobs on a shared machine).
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from _common import random_queries

from tracker import PointTracker, create_featurizer, default_match_config, open_video
from tracker.geometry import frames_to_tensor


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", default="../shared/data/videos/01_dog.mp4")
    p.add_argument("--points", type=int, default=256)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--repeat", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    with open_video(args.video) as video:
        frames = list(itertools.islice(iter(video), args.frames))
    h, w = frames[0].shape[:2]
    featurizer = create_featurizer("sift", (h, w))
    grids = [featurizer(frames_to_tensor([f]))[0] for f in frames]
    queries = random_queries(args.points, h, w)
    cpu: dict[str, list[float]] = {"lk": [], "none": []}
    wall: dict[str, list[float]] = {"lk": [], "none": []}
    with torch.inference_mode():
        for _ in range(args.repeat):
            for mode in cpu:
                tracker = PointTracker(featurizer, default_match_config("sift"), refine=mode)
                state = tracker.advance(tracker.add_queries(tracker.empty_state(h, w), queries), grids[0], frames[0])
                c0, w0 = time.process_time(), time.perf_counter()
                for grid, frame in zip(grids[1:], frames[1:], strict=True):
                    state = tracker.advance(state, grid, frame)
                n = len(frames) - 1
                cpu[mode].append(1000 * (time.process_time() - c0) / n)
                wall[mode].append(1000 * (time.perf_counter() - w0) / n)
    best = {m: min(v) for m, v in cpu.items()}
    print(
        f"{w}x{h}, {args.points} points, {len(frames) - 1} frames: step CPU ms per frame "
        f"lk {best['lk']:.1f}, none {best['none']:.1f} (wall {min(wall['lk']):.1f} / {min(wall['none']):.1f}); "
        f"refinement {best['lk'] - best['none']:.1f} ms per frame"
    )


if __name__ == "__main__":
    main()
