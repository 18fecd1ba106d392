"""What the decode thread filling the ring saves the tracker's thread: main-thread time per frame to get each batch.

Both ways decode ahead in a thread; they differ in who copies the frames into the ring's ``[B, H, W, 3]`` slots:

- ``frames``: a :class:`~tracker.io.pipeline.Prefetcher` of frames, copied into the ring on the consumer's thread
  (:func:`~tracker.io.ring.ring_batches`; ``track`` before the batch prefetcher);
- ``batches``: a :class:`~tracker.io.pipeline.BatchPrefetcher`, the frames copied into the slots in the decode
  thread, whole batches handed over (``track`` now).

The consumer sleeps ``--step-ms`` per frame after each batch, as a thread waiting for a GPU would (so the CPU is
free for the decode thread): the figure is the time left on the tracker's thread per frame, and the total run
time. The two are run in turn (ABBA) ``--reps`` times; medians and their ratio are reported.

Usage:
    python benchmarks/ring_handover.py [--video V] [--batch 8] [--step-ms 5 20] [--reps 3] [--out DIR]

Skips (exit 0, one line) when the video is absent.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import DEFAULT_VIDEO, save

from tracker.io.pipeline import BatchPrefetcher, Prefetcher
from tracker.io.ring import ring_batches
from tracker.io.video import open_video


def run(path: str, kind: str, batch: int, step_s: float) -> tuple[float, float]:
    """One pass over the video: (main-thread ms per frame getting batches, total seconds)."""
    video = open_video(path)
    source = Prefetcher(video, depth=2 * batch) if kind == "frames" else BatchPrefetcher(video, batch)
    batches = ring_batches(source, batch) if kind == "frames" else iter(source)
    waited, frames = 0.0, 0
    start = time.perf_counter()
    try:
        while True:
            t0 = time.perf_counter()
            item = next(batches, None)
            waited += time.perf_counter() - t0
            if item is None:
                break
            frames += len(item)
            time.sleep(step_s * len(item))  # the device step; this thread idle
    finally:
        source.close()
    return 1e3 * waited / max(frames, 1), time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--step-ms", type=float, nargs="+", default=[5.0, 20.0])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None, help="folder for ring_handover.json")
    args = p.parse_args()
    if args.batch < 1 or args.reps < 1 or any(ms < 0 for ms in args.step_ms):
        p.error("--batch and --reps must be at least 1, --step-ms not negative")
    if not Path(args.video).exists():
        print(f"ring_handover: skipped: no video at {args.video}", file=sys.stderr)
        return 0
    with open_video(args.video) as video:
        info = video.info
    result = {"video": args.video, "size": [info.width, info.height], "frames": info.num_frames, "batch": args.batch}
    result["runs"] = []
    for step_ms in args.step_ms:
        got: dict[str, list[tuple[float, float]]] = {"frames": [], "batches": []}
        for rep in range(args.reps):
            for kind in ("frames", "batches") if rep % 2 == 0 else ("batches", "frames"):
                got[kind].append(run(args.video, kind, args.batch, step_ms / 1e3))
        row = {"step_ms": step_ms}
        for kind, values in got.items():
            row[kind] = {
                "main_ms_per_frame": statistics.median(v[0] for v in values),
                "total_s": statistics.median(v[1] for v in values),
                "all": values,
            }
        row["ratio_main_ms"] = row["batches"]["main_ms_per_frame"] / row["frames"]["main_ms_per_frame"]
        row["ratio_total"] = row["batches"]["total_s"] / row["frames"]["total_s"]
        result["runs"].append(row)
        print(
            f"step {step_ms:g} ms/frame: main thread {row['frames']['main_ms_per_frame']:.2f} -> "
            f"{row['batches']['main_ms_per_frame']:.2f} ms/frame (x{row['ratio_main_ms']:.2f}), total "
            f"{row['frames']['total_s']:.2f} -> {row['batches']['total_s']:.2f} s (x{row['ratio_total']:.2f})"
        )
    save(args.out, "ring_handover", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
