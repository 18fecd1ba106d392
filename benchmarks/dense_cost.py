"""Per-frame cost of dense mask propagation against a point-tracking step, and memory over video length.

Usage:
    python benchmarks/dense_cost.py [--video ../shared/data/videos/01_dog.mp4] [--model sift]
        [--weights random] [--points 256] [--frames 90] [--out DIR]

Both runs use the same featurizer on the same frames (decoded once, outside the timings). The mask is an
ellipse on frame 0 (the cost does not depend on the mask's content). Memory: the process's resident set
size sampled every 10 frames while propagating; flat in video length means it stops growing.
"""

from __future__ import annotations

import itertools
import time

import cv2
import numpy as np
import torch
from _common import describe, parser, random_queries, save

from tracker import PointTracker, create_featurizer, default_match_config, open_video
from tracker.propagation import MaskPropagator, default_propagation_config


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    p = parser(__doc__.splitlines()[0], frames=90)
    args = p.parse_args()
    torch.set_grad_enabled(False)

    with open_video(args.video) as video:
        frames = list(itertools.islice(video, args.frames))
    h, w = frames[0].shape[:2]
    featurizer = create_featurizer(args.model, (h, w), weights=args.weights)
    queries = random_queries(args.points, h, w)
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(mask, (w // 2, h // 2), (w // 5, h // 4), 0, 0, 360, 1, -1)

    tracker = PointTracker(featurizer, default_match_config(args.model))
    list(tracker.track(frames[:8], queries, args.batch))  # warm-up
    start = time.perf_counter()
    for _ in tracker.track(frames, queries, args.batch):
        pass
    points_s = (time.perf_counter() - start) / len(frames)

    propagator = MaskPropagator(featurizer, default_propagation_config(args.model))
    list(propagator.propagate(frames[:8], {0: mask}, args.batch))  # warm-up
    memory = []
    start = time.perf_counter()
    for i, _ in enumerate(propagator.propagate(frames, {0: mask}, args.batch)):
        if i % 10 == 9:
            memory.append((i + 1, round(rss_mib(), 1)))
    masks_s = (time.perf_counter() - start) / len(frames)

    result = {
        **describe(args, featurizer, (h, w), len(frames)),
        "points_ms_per_frame": round(1000 * points_s, 1),
        "masks_ms_per_frame": round(1000 * masks_s, 1),
        "masks_over_points": round(masks_s / points_s, 2),
        "rss_mib_by_frame": memory,
        "propagation": vars(default_propagation_config(args.model)),
        "threads": torch.get_num_threads(),
    }
    print(
        f"{args.model}: point tracking ({args.points} points) {result['points_ms_per_frame']} ms/frame, "
        f"mask propagation {result['masks_ms_per_frame']} ms/frame ({result['masks_over_points']}x); "
        f"RSS MiB by frame: {memory}"
    )
    save(args.out, f"dense_cost_{args.model}", result)


if __name__ == "__main__":
    main()
