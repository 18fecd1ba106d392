"""End-to-end runs for ``track bench``: a real video tracked as ``track`` does, timed per stage, and the naive
baseline on the same frames.

Stages are timed from the outside: the video iterator (decode), the featurizer's ``forward`` split into
upload (host -> device), pre-process (resize and normalise) and the featurizer proper, the overlay's
``draw`` and the writer's ``write``. ``matching`` is the rest of the tracker's step: batching frames, cosine
similarity, argmax and window soft-argmax, the forward-backward check and bookkeeping. On a GPU each stage
ends with a device synchronisation, which serialises work that could overlap, so frames/s come from a
separate run without it and the stage run only apportions the time.

Frames/s of the point runs come from :func:`run_points_overlapped`, the frame loop of ``track`` itself
(:mod:`tracker.io.pipeline`: a :class:`~tracker.io.pipeline.BatchPrefetcher` decodes ahead in a thread straight
into the ring's batch slots, a :class:`~tracker.io.pipeline.Sink` draws and encodes behind in another; on a CPU
torch keeps one core fewer, as ``track`` sets it). The stages cannot be timed from the outside while three threads
overlap, so they come from :func:`run_points`, a serial loop over the same frames that only apportions the time.
Mask propagation and the naive baseline are serial loops (timed and counted as they run).
"""

from __future__ import annotations

import contextlib
import itertools
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from tracker.featurizers import Featurizer, ViTFeaturizer
from tracker.geometry import frames_to_tensor
from tracker.matching import MatchConfig
from tracker.tracking import PointTracker, Queries, TrackResult

if TYPE_CHECKING:
    from tracker.io.video import AtomicVideoWriter, VideoInfo

POINT_STAGES = ("decode", "upload", "preprocess", "featurizer", "matching", "drawing", "encoding")
MASK_STAGES = ("decode", "upload", "preprocess", "featurizer", "propagation")
NAIVE_STAGES = ("decode", "featurizer", "upsample", "matching", "drawing", "encoding")


class StageClock:
    """Accumulates seconds per named stage; ``with clock("decode"): ...``.

    Args:
        device: the device whose work the stages wait for.
        sync: synchronise the device at both ends of every stage (a GPU's stages are otherwise asynchronous).
        enabled: False makes every stage a no-op (the plain run that gives frames/s).
    """

    def __init__(self, device: torch.device, sync: bool, enabled: bool = True):
        self.device = device
        self.sync = sync and device.type == "cuda"
        self.enabled = enabled
        self.seconds: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        if self.sync:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize(self.device)
            self.seconds[name] += time.perf_counter() - start


class TimedFrames:
    """The first ``limit`` frames of a video, decode timed; keeps each frame until :meth:`pop` when asked."""

    def __init__(self, video: Iterable[np.ndarray], limit: int | None, clock: StageClock, keep: bool = False):
        self.source = iter(video if limit is None else itertools.islice(video, limit))
        self.clock = clock
        self.keep = keep
        self.kept: dict[int, np.ndarray] = {}
        self.count = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            with self.clock("decode"):
                frame = next(self.source, None)
            if frame is None:
                return
            if self.keep:
                self.kept[self.count] = frame
            self.count += 1
            yield frame

    def pop(self, index: int) -> np.ndarray:
        return self.kept.pop(index)


@contextlib.contextmanager
def instrumented(featurizer: Featurizer, clock: StageClock) -> Iterator[None]:
    """Time the featurizer's stages: upload, pre-process and features (a ViT's ``preprocess`` / ``features``;
    other backends resize inside, so their pre-process counts as featurizer)."""
    if not clock.enabled:
        yield
        return
    original = featurizer.forward
    device = featurizer.device
    split = isinstance(featurizer, ViTFeaturizer)

    @torch.inference_mode()
    def forward(frames: torch.Tensor) -> torch.Tensor:
        with clock("upload"):  # as ViTFeaturizer.preprocess does it: uint8 through pinned memory
            if frames.device.type == "cpu" and device.type == "cuda":
                frames = frames.pin_memory()
            frames = frames.to(device, non_blocking=True)
        if split:
            with clock("preprocess"):
                x = featurizer.preprocess(frames)
            with clock("featurizer"):
                return featurizer.features(x)
        with clock("featurizer"):
            return original(frames)

    featurizer.forward = forward
    try:
        yield
    finally:
        del featurizer.forward  # the instance attribute; the class's forward shows through again


@contextlib.contextmanager
def track_threads(featurizer: Featurizer) -> Iterator[None]:
    """torch's threads as ``track`` sets them: on a CPU one fewer, leaving the I/O threads a core."""
    threads = torch.get_num_threads()
    if featurizer.device.type == "cpu":
        torch.set_num_threads(max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def random_queries(n: int, height: int, width: int, seed: int = 0) -> Queries:
    """``n`` points uniformly over the frame (the cost does not depend on where they are)."""
    rng = np.random.default_rng(seed)
    return Queries.create(np.stack([rng.uniform(0, width - 1, n), rng.uniform(0, height - 1, n)], 1))


def centre_box_mask(height: int, width: int) -> np.ndarray:
    """``[H, W]`` uint8: object 1 on the middle third of the frame."""
    mask = np.zeros((height, width), np.uint8)
    mask[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = 1
    return mask


@dataclass(frozen=True)
class RunTiming:
    """One pass over the frames.

    Attributes:
        frames: frames processed.
        seconds: wall time from the first decode to the last output (video opening and model building excluded).
        stages: seconds per stage (empty for a plain run).
    """

    frames: int
    seconds: float
    stages: dict[str, float]


def _writer(out_dir: Path | None, fps: float, size: tuple[int, int]):
    if out_dir is None:
        return None
    from tracker.io.video import AtomicVideoWriter

    return AtomicVideoWriter(out_dir / "overlay.mp4", fps, size)


class _PointRun(NamedTuple):
    """What both point runs set up (:func:`_point_run`)."""

    info: VideoInfo
    source: TimedFrames  # the video's frames through the tee, the clock's decode stage, frames kept to draw
    tracker: PointTracker
    queries: Queries  # n_points random points (random_queries: seeded, the same in every run)
    writer: AtomicVideoWriter | None  # the overlay mp4 in a temporary folder, with write only


@contextlib.contextmanager
def _point_run(
    featurizer: Featurizer,
    config: MatchConfig,
    video_path: str,
    n_points: int,
    frames: int | None,
    clock: StageClock,
    write: bool,
) -> Iterator[_PointRun]:
    """The setup :func:`run_points` and :func:`run_points_overlapped` share: the video opened and read through a
    :class:`TimedFrames` tee of its first ``frames`` frames (keeping them for drawing with ``write``), a
    :class:`~tracker.tracking.PointTracker`, ``n_points`` random queries and with ``write`` the overlay's writer
    in a temporary folder; inside ``track``'s torch threads (:func:`track_threads`)."""
    from tracker.io.video import open_video

    with (
        open_video(video_path) as video,
        tempfile.TemporaryDirectory(prefix="bench-") as tmp,
        track_threads(featurizer),
    ):
        info = video.info
        source = TimedFrames(video, frames, clock, keep=write)
        tracker = PointTracker(featurizer, config)
        queries = random_queries(n_points, info.height, info.width)
        writer = _writer(Path(tmp) if write else None, info.fps, (info.width, info.height))
        yield _PointRun(info, source, tracker, queries, writer)


def run_points(
    featurizer: Featurizer,
    config: MatchConfig,
    video_path: str,
    n_points: int,
    frames: int | None,
    batch: int,
    clock: StageClock,
    write: bool = False,
) -> RunTiming:
    """Track ``n_points`` random points through the first ``frames`` frames in a serial loop, each stage timed
    (with ``track``'s torch threads); with ``write`` also draw the overlay and encode it to an mp4 (in a
    temporary folder). It apportions the time; frames/s come from :func:`run_points_overlapped`."""
    from tracker.io.drawing import TrackOverlay

    with _point_run(featurizer, config, video_path, n_points, frames, clock, write) as run:
        _, source, tracker, queries, writer = run
        overlay = TrackOverlay() if write else None
        step = 0.0
        with instrumented(featurizer, clock):
            start = time.perf_counter()
            results = tracker.track(source, queries, batch_size=batch)
            while True:
                t0 = time.perf_counter()
                result = next(results, None)
                step += time.perf_counter() - t0
                if result is None:
                    break
                _render(result, source, overlay, writer, clock)
            _close(writer, clock)
            seconds = time.perf_counter() - start
    return RunTiming(source.count, seconds, _stages(clock, step, "matching"))


def run_points_overlapped(
    featurizer: Featurizer,
    config: MatchConfig,
    video_path: str,
    n_points: int,
    frames: int | None,
    batch: int,
    write: bool = False,
) -> RunTiming:
    """Track ``n_points`` random points through the first ``frames`` frames in ``track``'s overlapped loop:
    frames decoded ahead by a :class:`~tracker.io.pipeline.BatchPrefetcher` straight into the ring's
    ``[batch, H, W, 3]`` slots (on a CPU featurized there too) and tracked batch by batch, with ``write`` the overlay
    drawn and encoded to an mp4 (in a temporary folder) in a :class:`~tracker.io.pipeline.Sink`, and on a CPU one
    torch thread fewer (as ``track`` leaves the I/O threads a core). No stages (see :func:`run_points`)."""
    from tracker.io.drawing import TrackOverlay
    from tracker.io.pipeline import BatchPrefetcher, Sink

    off = StageClock(torch.device("cpu"), sync=False, enabled=False)
    with _point_run(featurizer, config, video_path, n_points, frames, off, write) as run:
        info, source, tracker, queries, writer = run
        # as track: the decode thread reads through the tee (which keeps the frames not drawn yet) into the slots
        # on a CPU its thread also runs the featurizer (as track does); the thread starts on the first iter()
        ahead = featurizer if torch.device(featurizer.device).type == "cpu" else None
        batches = BatchPrefetcher(source, batch, device=featurizer.device, featurizer=ahead)
        overlay = TrackOverlay(num_frames=info.num_frames) if write else None
        sink = None if writer is None else Sink(lambda f, r: writer.write(overlay.draw(f, r)), 2 * batch)
        try:
            with torch.inference_mode():
                start = time.perf_counter()
                for result in tracker.track(batches, queries, batch_size=batch):
                    if sink is not None:
                        sink.submit(source.pop(result.frame_index), result)
                if sink is not None:
                    sink.finish()
                    writer.close()
                seconds = time.perf_counter() - start
        finally:
            if sink is not None:
                sink.close()
            batches.close()
    return RunTiming(source.count, seconds, {})


def run_masks(
    featurizer: Featurizer,
    model: str,
    video_path: str,
    mask: np.ndarray | None,
    frames: int | None,
    batch: int,
    clock: StageClock,
) -> RunTiming:
    """Propagate a first-frame mask (default: a centred box) with :class:`~tracker.propagation.MaskPropagator`."""
    from tracker.io.video import open_video
    from tracker.propagation import MaskPropagator, default_propagation_config

    with open_video(video_path) as video:
        info = video.info
        given = mask if mask is not None else centre_box_mask(info.height, info.width)
        source = TimedFrames(video, frames, clock)
        propagator = MaskPropagator(featurizer, default_propagation_config(model))
        step = 0.0
        with instrumented(featurizer, clock):
            start = time.perf_counter()
            results = propagator.propagate(source, {0: given}, batch_size=batch)
            while True:
                t0 = time.perf_counter()
                result = next(results, None)
                step += time.perf_counter() - t0
                if result is None:
                    break
            seconds = time.perf_counter() - start
    return RunTiming(source.count, seconds, _stages(clock, step, "propagation"))


def _stages(clock: StageClock, step: float, rest: str) -> dict[str, float]:
    """The clock's stages plus ``rest``: the step's time not spent decoding or in the featurizer."""
    if not clock.enabled:
        return {}
    stages = dict(clock.seconds)
    inside = sum(stages.get(k, 0.0) for k in ("decode", "upload", "preprocess", "featurizer"))
    stages[rest] = max(step - inside, 0.0)
    return stages


# --------------------------------------------------------------------------- a tracker with a cost per point (hedlin)


@dataclass(frozen=True)
class PerPointTiming:
    """A per-point tracker (``--model hedlin``: each point is its own UNet passes) on the first frames of a video.

    Attributes:
        points: query points, all on frame 0.
        query_seconds: frame 0: decode, each point's optimisation and its first attention map.
        frame_seconds: each later frame's seconds: decode and one attention map per point.
    """

    points: int
    query_seconds: float
    frame_seconds: tuple[float, ...]

    @property
    def frames(self) -> int:
        return 1 + len(self.frame_seconds)

    @property
    def match_seconds_per_point(self) -> float:
        """One point's attention map on one frame (the mean over the later frames)."""
        return float(np.mean(self.frame_seconds)) / self.points

    @property
    def optimise_seconds_per_point(self) -> float:
        """One point's optimisation: the query frame's time beyond a later frame's."""
        return max(self.query_seconds - float(np.mean(self.frame_seconds)), 0.0) / self.points


def run_per_point(tracker, video_path: str, n_points: int, frames: int) -> PerPointTiming:
    """Track ``n_points`` random points (on frame 0) through the first ``frames`` frames (at least 2) of the
    video with ``tracker`` (a :class:`tracker.hedlin_tracker.HedlinTracker`), each frame timed on its own: the
    time goes to the UNet passes of each point, so the serial loop is the measurement (no threads to overlap, no
    stages beside the passes worth splitting)."""
    from tracker.io.video import open_video

    if frames < 2:
        raise ValueError("a per-point run needs the query frame and at least one more")
    seconds = []
    with open_video(video_path) as video:
        info = video.info
        queries = random_queries(n_points, info.height, info.width)
        results = tracker.track(itertools.islice(video, frames), queries)
        while True:
            start = time.perf_counter()
            result = next(results, None)
            if result is None:
                break
            seconds.append(time.perf_counter() - start)
    if len(seconds) < 2:
        raise ValueError(f"{video_path} has fewer than 2 frames")
    return PerPointTiming(n_points, seconds[0], tuple(seconds[1:]))


# --------------------------------------------------------------------------- the naive baseline


class NaivePointTracker:
    """The straightforward implementation every end-to-end figure is compared with.

    One frame at a time through an fp32 eager featurizer; the whole feature map bilinearly upsampled to the
    frame (``[C, H, W]``) and re-normalised per pixel; each point's descriptor read at its query pixel on
    frame 0; in every frame the cosine of each descriptor with every pixel and an argmax. Points go through
    the cosine in chunks of ``chunk`` to bound memory (the arithmetic is the same). A point is visible when
    its best cosine reaches ``min_score`` (no forward-backward check).

    Args:
        featurizer: an fp32 eager featurizer, called with one frame at a time.
        min_score: visibility threshold.
        chunk: points per similarity matmul.
    """

    def __init__(self, featurizer: Featurizer, min_score: float = 0.5, chunk: int = 256):
        self.featurizer = featurizer
        self.min_score = min_score
        self.chunk = chunk

    @torch.inference_mode()
    def track(
        self, frames: Iterable[np.ndarray], queries: Queries, clock: StageClock | None = None
    ) -> Iterator[TrackResult]:
        """Yield one :class:`~tracker.tracking.TrackResult` per frame (queries on frame 0)."""
        clock = clock or StageClock(torch.device("cpu"), sync=False, enabled=False)
        descriptors = None
        for t, frame in enumerate(frames):
            with clock("featurizer"):
                # a ViT's grid is a channels-innermost view; upsampling that layout is 6x slower on a CPU
                grid = self.featurizer(frames_to_tensor([frame]))[0].contiguous()
            h, w = frame.shape[:2]
            with clock("upsample"):
                dense = F.interpolate(grid[None], size=(h, w), mode="bilinear", align_corners=False)[0]
                # sqrt of the sum of squares: 3x faster here than F.normalize / norm(dim=0) over channels
                dense /= dense.square().sum(0, keepdim=True).sqrt_().clamp_min_(1e-12)
            with clock("matching"):
                flat = dense.reshape(dense.shape[0], h * w)
                if descriptors is None:
                    xi = queries.xy[:, 0].round().long().clamp(0, w - 1).to(flat.device)
                    yi = queries.xy[:, 1].round().long().clamp(0, h - 1).to(flat.device)
                    descriptors = flat[:, yi * w + xi].T.clone()  # [N, C]
                scores, index = [], []
                for part in descriptors.split(self.chunk):
                    best, where = (part @ flat).max(1)
                    scores.append(best)
                    index.append(where)
                score = torch.cat(scores).cpu()
                where = torch.cat(index).cpu()
                xy = torch.stack([(where % w).float(), (where // w).float()], 1)
            del dense, flat
            yield TrackResult(frame_index=t, xy=xy, visible=score >= self.min_score, score=score)


def run_naive_points(
    featurizer: Featurizer,
    video_path: str,
    n_points: int,
    frames: int | None,
    clock: StageClock,
    write: bool = False,
    min_score: float = 0.5,
) -> RunTiming:
    """The naive baseline on the first ``frames`` frames, optionally drawing and encoding the overlay."""
    from tracker.io.drawing import TrackOverlay
    from tracker.io.video import open_video

    with open_video(video_path) as video, tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        info = video.info
        source = TimedFrames(video, frames, clock, keep=write)
        queries = random_queries(n_points, info.height, info.width)
        naive = NaivePointTracker(featurizer, min_score=min_score)
        overlay = TrackOverlay() if write else None
        writer = _writer(Path(tmp) if write else None, info.fps, (info.width, info.height))
        start = time.perf_counter()
        for result in naive.track(source, queries, clock):
            _render(result, source, overlay, writer, clock)
        _close(writer, clock)
        seconds = time.perf_counter() - start
    return RunTiming(source.count, seconds, dict(clock.seconds) if clock.enabled else {})


def _render(result, source, overlay, writer, clock) -> None:
    """Draw ``result`` on its frame and encode it (timed as drawing and encoding); nothing without a writer."""
    if writer is not None:
        frame = source.pop(result.frame_index)
        with clock("drawing"):
            image = overlay.draw(frame, result)
        with clock("encoding"):
            writer.write(image)


def _close(writer, clock) -> None:
    """Finish the overlay video (timed as encoding)."""
    if writer is not None:
        with clock("encoding"):
            writer.close()
