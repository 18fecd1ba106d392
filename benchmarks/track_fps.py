"""End-to-end tracking frames/s on a video (decode + featurizer + matching; no overlay writing).

Usage:
    python benchmarks/track_fps.py [--video ../shared/data/videos/01_dog.mp4] [--model sift]
        [--weights random] [--points 256] [--frames 120] [--batch 8] [--device cpu] [--refine lk|none]
        [--out DIR]

Prints one line and, with --out, writes ``track_fps_<model>.json`` (``track_fps_<model>_refine-none.json``
for ``--refine none``) with the machine description.
"""

from __future__ import annotations

import itertools
import time

import torch
from _common import describe, parser, random_queries, save

from tracker import PointTracker, create_featurizer, default_match_config, open_video
from tracker.tracking import REFINE_MODES


def main() -> None:
    p = parser(__doc__.splitlines()[0], frames=120)
    p.add_argument("--device", default="cpu")
    p.add_argument("--refine", choices=REFINE_MODES, default=REFINE_MODES[0], help="as for `track` (default: lk)")
    args = p.parse_args()

    video = open_video(args.video)
    h, w = video.info.height, video.info.width
    featurizer = create_featurizer(args.model, (h, w), weights=args.weights, device=args.device)
    tracker = PointTracker(featurizer, default_match_config(args.model), refine=args.refine)
    queries = random_queries(args.points, h, w)
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
        **describe(args, featurizer, (h, w), count),
        "batch": args.batch,
        "device": args.device,
        "refine": args.refine,
        "end_to_end_fps": count / total,
        "featurizer_ms_per_frame": 1000 * featurizer_s / count,
        "rest_ms_per_frame": 1000 * (total - featurizer_s) / count,
    }
    print(
        f"{args.model} ({result['weights']}, refine={args.refine}) {w}x{h} -> {result['input_size']}, "
        f"{args.points} points: "
        f"{result['end_to_end_fps']:.1f} frames/s end to end; "
        f"featurizer {result['featurizer_ms_per_frame']:.1f} ms, "
        f"decode+matching {result['rest_ms_per_frame']:.1f} ms per frame"
    )
    suffix = "" if args.refine == REFINE_MODES[0] else f"_refine-{args.refine}"
    save(args.out, f"track_fps_{args.model}{suffix}", result)


if __name__ == "__main__":
    main()
