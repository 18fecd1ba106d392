"""End-to-end tracking frames/s on a video: decode + featurizer + tracker step (+ overlay drawing and encoding with
``--overlay``), each variant measured in the same run, alternated, with the time of every stage.

Variants (``--variants``, comma separated, run in turn ``--repeat`` times):
    ``serial``: the frame loop as it was: decode, track, draw and encode one after the other on the main thread;
    ``pipeline``: decode ahead in a producer thread, draw and encode behind in a consumer thread
        (:mod:`tracker.io.pipeline`), the featurizer on the main thread;
    ``track``: ``track``'s loop: as ``pipeline``, but the frames decoded straight into batches
        (:class:`~tracker.io.pipeline.BatchPrefetcher`) and, on a CPU, featurized in the decode thread beside the
        step on the batch before (the featurizer's time is then off the main thread);
    ``kornia-serial``: ``serial`` with the seed's sift featurizer (kornia's ``DenseSIFTDescriptor`` and the torch
        luma), the "before" of the featurizer rewrite (sift only).

Usage:
    python benchmarks/track_fps.py [--video ../shared/data/videos/01_dog.mp4] [--model sift] [--weights random]
        [--points 256] [--frames 120] [--batch 8] [--device cpu] [--refine lk|none] [--overlay]
        [--variants kornia-serial,serial,pipeline] [--repeat 2] [--threads N] [--out DIR]

A variant may name its torch intra-op threads: ``pipeline@1`` runs ``pipeline`` with one.

Prints one line per run and, with --out, writes ``track_fps_<model>[_refine-none][_overlay].json`` with every run,
the median per variant, the load average before and after, and the machine description. Stage times are busy
times per frame: decode (in whichever thread decodes), featurizer, step (matching, refinement, decisions: the
main thread's time outside the featurizer and outside waiting for frames), draw+encode; ``cpu_ms_per_frame`` is
the process's CPU time, which a busy machine disturbs less than the wall clock.
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import describe, parser, random_queries, save, timed_items

from tracker import PointTracker, create_featurizer, default_match_config, open_video
from tracker.allocator import keep_memory_flat
from tracker.io.drawing import TrackOverlay
from tracker.io.pipeline import BatchPrefetcher, Prefetcher, Sink
from tracker.io.video import AtomicVideoWriter
from tracker.tracking import REFINE_MODES

VARIANTS = ("kornia-serial", "serial", "pipeline", "track")


def seed_sift_forward(featurizer):
    """The seed's ``SiftFeaturizer.forward`` (kornia's descriptor after the torch luma and resize)."""
    import torch.nn.functional as F
    from kornia.feature import DenseSIFTDescriptor

    sift = DenseSIFTDescriptor(
        num_ang_bins=8, num_spatial_bins=4, spatial_bin_size=4, rootsift=True, stride=4, padding=4
    ).to(featurizer.device)

    @torch.inference_mode()
    def forward(frames):
        x = frames.to(featurizer.device).permute(0, 3, 1, 2).float()
        gray = (x * featurizer.luma).sum(1, keepdim=True)
        if tuple(gray.shape[-2:]) != featurizer.input_hw:
            gray = F.interpolate(gray, size=featurizer.input_hw, mode="bilinear", align_corners=False, antialias=True)
        return F.normalize(sift(gray).float(), dim=1)

    return forward


class Clock:
    """Busy seconds per stage, added from any thread."""

    def __init__(self):
        self.s = {"decode": 0.0, "featurizer": 0.0, "wait": 0.0, "draw_encode": 0.0, "step": 0.0}
        self.decoded = 0

    def timed_iter(self, iterable, key):
        for item in timed_items(iterable, self.s, key):
            self.decoded += key == "decode"
            yield item


def run(args, variant: str, queries, out_dir: Path) -> dict:
    name, _, threads = variant.partition("@")
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads) if threads else before)
    try:
        return {**_run(args, name, queries, out_dir), "variant": variant, "torch_threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(before)


def _run(args, variant: str, queries, out_dir: Path) -> dict:
    video = open_video(args.video)
    h, w = video.info.height, video.info.width
    featurizer = create_featurizer(args.model, (h, w), weights=args.weights, device=args.device)
    if variant == "kornia-serial":
        featurizer.forward = seed_sift_forward(featurizer)
    tracker = PointTracker(featurizer, default_match_config(args.model), refine=args.refine)
    clock = Clock()
    original = featurizer.forward

    def timed_forward(x):
        start = time.perf_counter()
        out = original(x)
        if out.is_cuda:
            torch.cuda.synchronize()
        clock.s["featurizer"] += time.perf_counter() - start
        return out

    featurizer.forward = timed_forward
    total_frames = 8 + args.frames
    decoded = clock.timed_iter(itertools.islice(video, total_frames), "decode")
    pipelined = variant in ("pipeline", "track")
    kept: dict[int, object] = {}

    def tee(frames):
        for i, frame in enumerate(frames):
            kept[i] = frame
            yield frame

    if variant == "track":  # as track: batches filled (and, on a CPU, featurized) in the decode thread
        ahead = featurizer if args.device == "cpu" else None
        source = BatchPrefetcher(tee(decoded), args.batch, device=featurizer.device, featurizer=ahead)
        frames_in = source
        advance = tracker.advance_frames

        def timed_advance(state, grids, frames):  # the main thread's busy time: the step on each batch
            start = time.perf_counter()
            try:
                return advance(state, grids, frames)
            finally:
                clock.s["step"] += time.perf_counter() - start

        tracker.advance_frames = timed_advance
    else:
        source = Prefetcher(decoded, depth=2 * args.batch) if pipelined else decoded
        frames_in = tee(clock.timed_iter(source, "wait") if pipelined else source)

    writer = AtomicVideoWriter(out_dir / f"{variant}.mp4", video.info.fps, (w, h)) if args.overlay else None
    overlay = TrackOverlay()

    def draw(frame, result):
        start = time.perf_counter()
        writer.write(overlay.draw(frame, result))
        clock.s["draw_encode"] += time.perf_counter() - start

    sink = Sink(draw, 2 * args.batch) if (writer is not None and pipelined) else None
    count, start, cpu0 = 0, None, None
    try:
        with torch.inference_mode():
            for result in tracker.track(frames_in, queries, batch_size=args.batch):
                frame = kept.pop(result.frame_index)
                if writer is not None:
                    sink.submit(frame, result) if sink is not None else draw(frame, result)
                count += 1
                if count == 8:  # warm-up done: time from here on (the next batch starts clean)
                    if sink is not None:
                        while sink._queue.qsize():
                            time.sleep(0.001)
                    clock.s.update(dict.fromkeys(clock.s, 0.0))  # in place: the timed iterators hold this dict
                    clock.decoded = 0
                    start, cpu0 = time.perf_counter(), time.process_time()
            if sink is not None:
                sink.finish()
    finally:
        if pipelined:
            source.close()
        if writer is not None:
            writer.discard()
        video.close()
    total, cpu = time.perf_counter() - start, time.process_time() - cpu0
    timed = count - 8
    ms = {k: 1000 * v / timed for k, v in clock.s.items()}
    if variant == "track":  # the featurizer ran in the decode thread: the step is the main thread's work
        step_ms = ms["step"]
    else:
        main_busy = total - clock.s["wait"] if pipelined else total - clock.s["decode"] - clock.s["draw_encode"]
        step_ms = 1000 * main_busy / timed - ms["featurizer"]
    return {
        **describe(args, featurizer, (h, w), timed),
        "variant": variant,
        "overlay": args.overlay,
        "end_to_end_fps": timed / total,
        "ms_per_frame": 1000 * total / timed,
        "cpu_ms_per_frame": 1000 * cpu / timed,
        "decode_ms_per_frame": 1000 * clock.s["decode"] / max(clock.decoded, 1),
        "featurizer_ms_per_frame": ms["featurizer"],
        "step_ms_per_frame": step_ms,
        "draw_encode_ms_per_frame": ms["draw_encode"],
        "main_thread_wait_for_frames_ms": ms["wait"] if variant == "pipeline" else None,
    }


def main() -> None:
    p = parser(__doc__.splitlines()[0], frames=120)
    p.add_argument("--device", default="cpu")
    p.add_argument("--refine", choices=REFINE_MODES, default=REFINE_MODES[0], help="as for `track` (default: lk)")
    p.add_argument("--overlay", action="store_true", help="draw and encode the overlay video, as `track` does")
    p.add_argument("--variants", default="serial,pipeline", help=f"comma separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--repeat", type=int, default=2, help="rounds over the variants (alternated)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = p.parse_args()
    keep_memory_flat()  # the malloc setting the track command runs with
    variants = args.variants.split(",")
    if unknown := {v.partition("@")[0] for v in variants} - set(VARIANTS):
        p.error(f"unknown variants {sorted(unknown)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    probe = open_video(args.video)
    queries = random_queries(args.points, probe.info.height, probe.info.width)
    probe.close()
    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="track_fps_") as tmp:
        for _ in range(args.repeat):
            for variant in variants:
                r = run(args, variant, queries, Path(tmp))
                runs.append(r)
                print(
                    f"{args.model} ({r['weights']}, refine={args.refine}{', overlay' if args.overlay else ''}) "
                    f"{variant}: {r['frame_size'][0]}x{r['frame_size'][1]} -> {r['input_size']}, {args.points} points: "
                    f"{r['end_to_end_fps']:.1f} frames/s ({r['ms_per_frame']:.1f} ms, cpu {r['cpu_ms_per_frame']:.1f} "
                    f"ms); decode {r['decode_ms_per_frame']:.1f}, featurizer {r['featurizer_ms_per_frame']:.1f}, "
                    f"step {r['step_ms_per_frame']:.1f}, draw+encode {r['draw_encode_ms_per_frame']:.1f} ms per frame",
                    flush=True,
                )
    keys = [k for k in runs[0] if k.endswith(("_fps", "_ms_per_frame")) or k == "ms_per_frame"]
    median = {
        v: {k: statistics.median(r[k] for r in runs if r["variant"] == v) for k in keys if runs[0][k] is not None}
        for v in variants
    }
    for v in variants[1:]:
        median[v]["speedup_vs_" + variants[0]] = median[v]["end_to_end_fps"] / median[variants[0]]["end_to_end_fps"]
    result = {
        **{k: runs[0][k] for k in ("video", "frame_size", "model", "weights", "input_size", "frames", "points")},
        "batch": args.batch,
        "device": args.device,
        "refine": args.refine,
        "overlay": args.overlay,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "median": median,
        "runs": runs,
    }
    print("median:", {v: round(m["end_to_end_fps"], 1) for v, m in median.items()}, "frames/s")
    suffix = ("" if args.refine == REFINE_MODES[0] else f"_refine-{args.refine}") + ("_overlay" if args.overlay else "")
    save(args.out, f"track_fps_{args.model}{suffix}", result)


if __name__ == "__main__":
    main()
