"""What the pixel-level refinement adds to a ViT-S tracking step (issue 13: <= 15%), measured in one run.

A dinov2-s featurizer (``--weights random``: the real architecture and cost, no download) at 434x434 computes the
feature grids of ``--frames`` frames once, timed per batch; then the same grids go through the tracker's step
(``PointTracker.advance``) with ``--refine none`` (the semantic match alone) and ``--refine lk`` (plus the
pixel-level refinement and decisions), alternated ``--repeat`` times. The refinement's cost is the difference of
the two steps; the ViT-S step is the featurizer plus the matching step.

Usage:
    python benchmarks/refine_cost.py [--video ../shared/data/videos/01_dog.mp4] [--model dinov2-s]
        [--weights random] [--points 256] [--frames 24] [--batch 8] [--repeat 3] [--out DIR]

Prints the numbers and, with --out, writes ``refine_cost_<model>.json``.
"""

from __future__ import annotations

import itertools
import os
import statistics
import time

import numpy as np
import torch
from _common import describe, parser, random_queries, save

from tracker import PointTracker, create_featurizer, default_match_config, open_video


def main() -> None:
    p = parser(__doc__.splitlines()[0], frames=24)
    p.set_defaults(model="dinov2-s", weights="random")  # with --model sift: the weight-free step (no weights)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if args.model == "sift":
        args.weights = None  # it has none
    video = open_video(args.video)
    h, w = video.info.height, video.info.width
    frames = list(itertools.islice(video, args.frames + 1))
    video.close()
    featurizer = create_featurizer(args.model, (h, w), weights=args.weights)
    queries = random_queries(args.points, h, w)
    load_before = os.getloadavg()

    grids, featurizer_s, featurizer_cpu = [], [], []
    with torch.inference_mode():
        featurizer(torch.from_numpy(np.stack(frames[: args.batch])))  # warm-up
        for i in range(0, len(frames), args.batch):
            batch = torch.from_numpy(np.stack(frames[i : i + args.batch]))
            start, cpu = time.perf_counter(), time.process_time()
            grids.extend(featurizer(batch))
            featurizer_s.append((time.perf_counter() - start) / len(batch))
            featurizer_cpu.append((time.process_time() - cpu) / len(batch))

    def steps(refine: str) -> tuple[float, float]:
        tracker = PointTracker(featurizer, default_match_config(args.model), refine=refine)
        state = tracker.add_queries(tracker.empty_state(h, w), queries)
        with torch.inference_mode():
            state = tracker.advance(state, grids[0], frames[0])  # the query frame
            start, cpu = time.perf_counter(), time.process_time()
            for grid, frame in zip(grids[1:], frames[1:], strict=True):
                state = tracker.advance(state, grid, frame)
        n = len(grids) - 1
        return (time.perf_counter() - start) / n, (time.process_time() - cpu) / n

    rounds = {"none": [], "lk": []}
    for _ in range(args.repeat):
        for refine in rounds:
            rounds[refine].append(steps(refine))
    med = {k: (statistics.median(t for t, _ in v), statistics.median(c for _, c in v)) for k, v in rounds.items()}
    feat = statistics.median(featurizer_s), statistics.median(featurizer_cpu)
    vit_step = feat[0] + med["none"][0], feat[1] + med["none"][1]
    refine_cost = med["lk"][0] - med["none"][0], med["lk"][1] - med["none"][1]
    result = {
        **describe(args, featurizer, (h, w), len(grids) - 1),
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "featurizer_ms_per_frame": 1000 * feat[0],
        "match_step_ms_per_frame": 1000 * med["none"][0],
        "lk_step_ms_per_frame": 1000 * med["lk"][0],
        "vit_step_ms_per_frame": 1000 * vit_step[0],
        "refinement_ms_per_frame": 1000 * refine_cost[0],
        "refinement_share_of_vit_step": refine_cost[0] / vit_step[0],
        "cpu": {
            "featurizer_ms_per_frame": 1000 * feat[1],
            "match_step_ms_per_frame": 1000 * med["none"][1],
            "lk_step_ms_per_frame": 1000 * med["lk"][1],
            "refinement_ms_per_frame": 1000 * refine_cost[1],
            "refinement_share_of_vit_step": refine_cost[1] / vit_step[1],
        },
        "rounds_s_per_frame": rounds,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "target": "refinement adds <= 15% to a ViT-S step",
    }
    print(
        f"{args.model} ({result['weights']}) {w}x{h} -> {result['input_size']}, {args.points} points, "
        f"{len(grids) - 1} frames: featurizer {result['featurizer_ms_per_frame']:.1f} ms/frame, matching step "
        f"{result['match_step_ms_per_frame']:.1f} ms, with lk {result['lk_step_ms_per_frame']:.1f} ms: the refinement "
        f"adds {result['refinement_ms_per_frame']:.1f} ms = {100 * result['refinement_share_of_vit_step']:.0f}% of the "
        f"{args.model} step ({result['vit_step_ms_per_frame']:.1f} ms); CPU time: "
        f"{100 * result['cpu']['refinement_share_of_vit_step']:.0f}%"
    )
    save(args.out, f"refine_cost_{args.model}", result)


if __name__ == "__main__":
    main()
