"""Streaming point tracker with explicit state.

``init(frame, queries) -> state``; ``step(state, frame) -> (result, state)``; ``add_queries(state, queries)``
for points that start on a later frame; and :meth:`PointTracker.track`, a generator over a whole video that
batches frames through the featurizer. Memory is flat in video length: the state holds the query
descriptors and the feature grids of the query frames only (for the forward-backward check).

Each point is matched against its own query descriptor in every frame (no template drift).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tracker.choices import POINT_REFINE_MODES
from tracker.errors import TrackerError
from tracker.featurizers import Featurizer
from tracker.geometry import GridGeometry, frames_to_tensor
from tracker.io.ring import Batches, batches_of
from tracker.matching import (
    MatchConfig,
    forward_backward_ok,
    match,
    match_batch,
    sample_descriptors,
    similarity,
    window_soft_argmax,
)
from tracker.reacquire import ReacquireConfig, Sightings, patch_side, reacquire_lost, record
from tracker.refine import (
    FOLLOW,
    OCCLUDED,
    REDETECT,
    RefineConfig,
    decide,
    lk_from_query,
    lk_track,
    neighbour_motion,
    patch_ncc,
    patches,
    scaled,
    to_gray,
    working_gray,
)
from tracker.refine import ncc as ncc_of

REFINE_MODES: tuple[str, ...] = POINT_REFINE_MODES
"""Refinement modes; the first is the default. ``lk``: coarse-to-fine (motion prediction, Lucas-Kanade local
track, semantic match, per-point decision, sub-cell refinement; see :mod:`tracker.refine`). ``none``: pure
per-frame matching of the query descriptor (the original method)."""

NOT_STARTED = -1
"""``TrackResult.decision`` before a point's query frame. The others (int8): FOLLOW (the local track, consistent
with the semantic evidence), REDETECT (jumped to the semantic match, then refined), OCCLUDED (neither is trusted:
the point is predicted by its motion and reported invisible); see :func:`tracker.refine.decide`."""


@dataclass(frozen=True)
class Queries:
    """Query points.

    Attributes:
        xy: ``[N, 2]`` float32, pixel xy in the original frame (centre of the top-left pixel at 0, 0).
        frame: ``[N]`` int64, the frame index each point is given on.
        labels: N names (may be empty strings).
    """

    xy: Tensor
    frame: Tensor
    labels: tuple[str, ...]

    @classmethod
    def create(
        cls,
        xy: Sequence[Sequence[float]] | np.ndarray | Tensor,
        frame: Sequence[int] | int = 0,
        labels: Sequence[str] | None = None,
    ) -> Queries:
        xy_t = torch.as_tensor(np.asarray(xy, dtype=np.float32)).reshape(-1, 2)
        n = xy_t.shape[0]
        frame_t = (
            torch.full((n,), frame, dtype=torch.int64)
            if isinstance(frame, int)
            else torch.as_tensor(np.asarray(frame, dtype=np.int64)).reshape(n)
        )
        return cls(xy=xy_t, frame=frame_t, labels=tuple(labels) if labels is not None else ("",) * n)

    def __len__(self) -> int:
        return int(self.xy.shape[0])

    def concat(self, other: Queries) -> Queries:
        return Queries(torch.cat([self.xy, other.xy]), torch.cat([self.frame, other.frame]), self.labels + other.labels)


@dataclass(frozen=True)
class TrackResult:
    """The tracker's answer for one frame, for every query point known to the state.

    Attributes:
        frame_index: index of the frame in the video.
        xy: ``[N, 2]`` float32 pixel xy in the original frame; NaN before a point's query frame.
        visible: ``[N]`` bool; False before a point's query frame.
        score: ``[N]`` float32 cosine similarity at the match (1 on the query frame, NaN before it).
        decision: ``[N]`` int8, one of :data:`FOLLOW`, :data:`REDETECT`, :data:`OCCLUDED` per point
            (:data:`NOT_STARTED` before its query frame); None from producers that do not decide.
    """

    frame_index: int
    xy: Tensor
    visible: Tensor
    score: Tensor
    decision: Tensor | None = None


@dataclass(frozen=True)
class TrackState:
    """Everything the tracker carries from one frame to the next.

    Attributes:
        next_frame: index of the next frame ``step`` expects.
        geometry: cell <-> pixel mapping of this video.
        queries: all query points, also those whose query frame is still ahead.
        descriptors: ``[N, C]`` unit query descriptors (zeros until a point's query frame is reached).
        query_features: query frame index -> its ``[C, h, w]`` grid (for the forward-backward check).
        query_descriptors: ``[N, C]`` descriptors sampled on the query frames (``descriptors`` drifts from
            them only with ``MatchConfig.update``).
        last_uv: ``[N, 2]`` grid position of each point's latest estimate (the search prior).
        latest: the result for frame ``next_frame - 1``.
        previous_gray: working grey copy of frame ``next_frame - 1`` (refinement only; one frame, not a
            history).
        query_gray: query frame index -> its working grey copy (:func:`tracker.refine.working_gray`; refinement
            of re-detections).
        anchors: ``[N, S, S]`` uint8 anchor patch of each point in the working grey (refinement only; ``S`` the
            scaled NCC window): its appearance, refreshed every ``RefineConfig.anchor_every`` frames it is seen.
        anchor_age: ``[N]`` int64 frames since each anchor was refreshed.
        xy: ``[N, 2]`` float32 pixel estimate of each point (refinement only).
        velocity: ``[N, 2]`` float32 pixels per frame, the motion model (refinement only).
        lost: ``[N]`` int64 frames since each point was last judged visible (refinement only).
        sightings: where and how each point was last seen, for the re-acquisition from its neighbours' motion
            (:mod:`tracker.reacquire`; refinement only).
    """

    next_frame: int
    geometry: GridGeometry
    queries: Queries
    descriptors: Tensor
    query_features: dict[int, Tensor] = field(default_factory=dict)
    query_descriptors: Tensor | None = None
    last_uv: Tensor | None = None
    latest: TrackResult | None = None
    previous_gray: np.ndarray | None = None
    query_gray: dict[int, np.ndarray] = field(default_factory=dict)
    anchors: np.ndarray | None = None
    anchor_age: np.ndarray | None = None
    xy: Tensor | None = None
    velocity: Tensor | None = None
    lost: Tensor | None = None
    sightings: Sightings | None = None

    @property
    def started(self) -> Tensor:
        """``[N]`` bool: the point's query frame has been reached."""
        return self.queries.frame < self.next_frame


BATCH_BUDGET = {"cpu": 2**21}
"""At most this many similarities (``B * N * Q * h * w``, float32) per batched match, per device type
(:meth:`PointTracker.advance_batch`; others: ``BATCH_BUDGET_DEFAULT``). On the CPU a whole batch does not pay (no
sync to save, and 8 frames' maps fall out of cache): at 360x640 (sift grid 60x107), 256 points, one thread,
frame by frame 7.7 ms a frame, in runs of 2^21 (one frame) 7.7, of 2^23 (5 frames) 8.8 with local search; global
7.6, 7.8 and 13.3 ms."""
BATCH_BUDGET_DEFAULT = 2**25


def _widened_search(
    descriptors: Tensor, features: Tensor, config: MatchConfig, prior_uv: Tensor, radius: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`tracker.matching.match` with a per-point ``search_radius`` ``radius [N]`` (grid cells) around
    ``prior_uv [N, 2]``: the whole-grid similarity, cells farther than the radius masked, window soft-argmax.
    Returns ``(uv [N, 2], score [N])``."""
    _, h, w = features.shape
    sim = similarity(descriptors, features)
    v = torch.arange(h, device=features.device, dtype=prior_uv.dtype).view(1, h, 1)
    u = torch.arange(w, device=features.device, dtype=prior_uv.dtype).view(1, 1, w)
    d2 = (u - prior_uv[:, 0, None, None]) ** 2 + (v - prior_uv[:, 1, None, None]) ** 2
    return window_soft_argmax(sim, config.window_radius, config.temperature, eligible=d2 <= radius.view(-1, 1, 1) ** 2)


def work_xy(xy: Tensor, gray: np.ndarray, g: GridGeometry) -> np.ndarray:
    """Frame pixel xy ``[N, 2]`` -> pixel xy in the working copy ``gray`` of the frame (:func:`working_gray`)."""
    scale = gray.shape[0] / g.frame_h
    return ((xy + 0.5) * scale - 0.5).numpy()


class PointTracker:
    """Tracks query points with a featurizer and a matcher.

    Args:
        featurizer: any :class:`~tracker.featurizers.Featurizer`.
        config: matcher settings.
        refine: one of :data:`REFINE_MODES` (the first is the default); ``none`` is pure matching.

    Raises:
        TrackerError: an unknown refinement mode.
    """

    def __init__(
        self,
        featurizer: Featurizer,
        config: MatchConfig | None = None,
        refine: str = REFINE_MODES[0],
        refine_config: RefineConfig | None = None,
        reacquire_config: ReacquireConfig | None = None,
        reacquire: bool = True,
    ):
        if refine not in REFINE_MODES:
            raise TrackerError(f"unknown refinement {refine!r}; choose from: {', '.join(REFINE_MODES)}")
        self.featurizer = featurizer
        self.config = config or MatchConfig()
        self.refine = refine
        self.refine_config = refine_config or RefineConfig()
        # the re-acquisition of lost points from their neighbours' motion (tracker.reacquire); off: None
        self.reacquire_config = (reacquire_config or ReacquireConfig()) if reacquire else None

    # ----------------------------------------------------------------- public API

    def init(self, frame: np.ndarray | Tensor, queries: Queries) -> TrackState:
        """Start on ``frame`` (video frame 0) with ``queries`` (on frame 0 or later frames)."""
        height, width = frame.shape[:2]
        state = self.empty_state(height, width)
        state = self.add_queries(state, queries)
        return self.advance(state, self.featurizer(frames_to_tensor([frame]))[0], frame)

    def step(self, state: TrackState, frame: np.ndarray | Tensor) -> tuple[TrackResult, TrackState]:
        """Track every started point into the next frame."""
        state = self.advance(state, self.featurizer(frames_to_tensor([frame]))[0], frame)
        return state.latest, state

    def add_queries(self, state: TrackState, queries: Queries) -> TrackState:
        """Add points on the frame ``step`` processes next, or any later frame, without restarting.

        Raises:
            TrackerError: a query on a frame already processed, or outside the frame.
        """
        if len(queries) == 0:
            return state
        if int(queries.frame.min()) < state.next_frame:
            raise TrackerError(
                f"a query is on frame {int(queries.frame.min())}, but frame {state.next_frame} is next; "
                "queries can only be added on frames not yet processed"
            )
        g = state.geometry
        x, y = queries.xy[:, 0], queries.xy[:, 1]
        outside = (
            (x < -0.5) | (x > g.frame_w - 0.5) | (y < -0.5) | (y > g.frame_h - 0.5) | ~torch.isfinite(queries.xy).all(1)
        )
        if outside.any():
            i = int(outside.nonzero()[0])
            raise TrackerError(f"point ({float(x[i]):g}, {float(y[i]):g}) is outside the {g.frame_w}x{g.frame_h} frame")
        return replace(state, queries=state.queries.concat(queries))

    def track(
        self,
        frames: Iterable[np.ndarray] | Batches,
        queries: Queries,
        batch_size: int = 8,
        state: TrackState | None = None,
    ) -> Iterator[TrackResult]:
        """Yield one :class:`TrackResult` per frame of ``frames`` (``[H, W, 3]`` uint8 RGB arrays).

        Frames go through the featurizer ``batch_size`` at a time, copied into a ring of two reused batch buffers
        (:func:`~tracker.io.ring.ring_batches`, pinned when the featurizer is on CUDA); memory stays flat in video
        length. Pre-batched ``frames`` (a :class:`~tracker.io.ring.Batches`, such as a
        :class:`~tracker.io.pipeline.BatchPrefetcher` filled in a decode thread) are used as they come, with no
        second copy (``batch_size`` is then theirs). When the source fails half way, the frames read before are
        tracked, then the failure is raised.
        """
        if batch_size < 1:
            raise TrackerError("batch size must be at least 1")
        for batch in batches_of(frames, batch_size, self.featurizer.device):
            if state is None:
                state = self.add_queries(self.empty_state(*batch.shape[1:3]), queries)
            results, state = self._run_batch(state, batch)  # done with the batch before the next is asked for
            yield from results

    # ----------------------------------------------------------------- internals

    def empty_state(self, height: int, width: int) -> TrackState:
        """A state for a ``height x width`` video with no queries yet."""
        geometry = self.featurizer.geometry(height, width)
        return TrackState(
            next_frame=0,
            geometry=geometry,
            queries=Queries.create(np.zeros((0, 2))),
            descriptors=torch.zeros(0, 0),
        )

    def _run_batch(self, state: TrackState, frames: Tensor) -> tuple[list[TrackResult], TrackState]:
        """The next ``[B, H, W, 3]`` frames (a ring slot, on the host) through the featurizer and the tracker."""
        return self.advance_frames(state, self.featurizer(frames), frames)

    def advance_frames(self, state: TrackState, grids: Tensor, frames: Tensor) -> tuple[list[TrackResult], TrackState]:
        """The next ``B`` frames given their ``[B, C, h, w]`` grids and ``[B, H, W, 3]`` host pixels: one
        :meth:`advance_batch` for ``refine=none``, else :meth:`advance` frame by frame."""
        if self.refine == "none":
            return self.advance_batch(state, grids)
        # refine=lk stays per frame: each frame's search prior is predicted from the previous frame's refined
        # positions and velocities (Lucas-Kanade, decisions), so the coarse matches of a batch are not independent
        results = []
        for grid, frame in zip(grids, frames.numpy(), strict=True):  # [H, W, 3] views of the slot
            state = self.advance(state, grid, frame)
            results.append(state.latest)
        return results, state

    def advance_batch(self, state: TrackState, features: Tensor) -> tuple[list[TrackResult], TrackState]:
        """:meth:`advance` (``refine=none``) over the next ``B`` frames given their ``[B, C, h, w]`` grids.

        Runs of frames where no point starts are matched on the device in one :func:`match_batch` call each
        (masks, no boolean indexing), with one copy of the results to the host per run (non-blocking, into pinned
        memory on CUDA); a frame where points start (or the first frame with new points) goes through
        :meth:`advance`. Same results as :meth:`advance` frame after frame.
        """
        b = features.shape[0]
        results: list[TrackResult] = []
        i = 0
        while i < b:
            t = state.next_frame
            frame_of = state.queries.frame.numpy()
            n = len(frame_of)
            grown = state.query_descriptors is not None and state.query_descriptors.shape[0] == n
            if not grown or not (frame_of < t).any() or (frame_of == t).any():
                state = self.advance(state, features[i])
                results.append(state.latest)
                i += 1
                continue
            ahead = frame_of[frame_of >= t]
            stop = min(b, i + int(ahead.min()) - t) if len(ahead) else b  # up to the next frame where points start
            q_keys = sorted(state.query_features)
            # the backward check holds B * N * Q * h * w similarities: at most a budget (or one frame's) at a time
            _, _, h, w = features.shape
            budget = BATCH_BUDGET.get(features.device.type, BATCH_BUDGET_DEFAULT)
            stop = min(stop, i + max(1, budget // max(1, n * len(q_keys) * h * w)))
            part, more = self._match_run(state, features[i:stop], q_keys)
            results.extend(part)
            state = more
            i = stop
        return results, state

    def _match_run(
        self, state: TrackState, features: Tensor, q_keys: list[int]
    ) -> tuple[list[TrackResult], TrackState]:
        """Frames ``next_frame .. next_frame + B - 1`` where no point starts: one batched match on the device."""
        t, q, g = state.next_frame, state.queries, state.geometry
        dev = features.device
        b = features.shape[0]
        frame_of = q.frame.numpy()
        active_np = frame_of < t  # the same in every frame of the run (no point starts inside it)
        position = {k: j for j, k in enumerate(q_keys)}
        index_np = np.array([position.get(int(f), 0) for f in frame_of], dtype=np.int64)  # 0: not started (masked)
        sx, sy = g.cell_size
        host_uv = (q.xy + 0.5) / torch.tensor([sx, sy]) - 0.5  # query grid positions, made on the host
        to_dev = dev.type == "cuda"
        query_index = torch.from_numpy(index_np).to(dev, non_blocking=to_dev)
        query_uv = host_uv.to(dev, non_blocking=to_dev)  # float32, as advance's pixel_to_grid
        active = torch.from_numpy(active_np).to(dev, non_blocking=to_dev)
        grids = [state.query_features[k] for k in q_keys]
        stacked = grids[0][None] if len(grids) == 1 else torch.stack(grids)  # one query frame: a view, no copy
        found = match_batch(
            features,
            state.descriptors,
            self.config,
            stacked,
            query_index,
            query_uv,
            prior_uv=state.last_uv,
            query_descriptors=state.query_descriptors,
        )
        xy_dev = torch.stack([(found.uv[..., 0] + 0.5) * sx - 0.5, (found.uv[..., 1] + 0.5) * sy - 0.5], -1)
        packed = torch.cat([xy_dev, found.score[..., None], found.visible[..., None].to(xy_dev.dtype)], -1).float()
        if to_dev:  # one copy back per run, into pinned memory, then one wait
            host = torch.empty(packed.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(packed, non_blocking=True)
            torch.cuda.current_stream(dev).synchronize()
        else:
            host = packed.cpu()
        keep = torch.from_numpy(active_np)
        nan = torch.tensor(float("nan"))
        not_started = torch.from_numpy(frame_of > t)  # no point has frame == t here
        results = []
        for k in range(b):
            visible = (host[k, :, 3] > 0.5) & keep
            decision = torch.where(visible, FOLLOW, OCCLUDED).to(torch.int8).masked_fill(not_started, NOT_STARTED)
            results.append(
                TrackResult(
                    frame_index=t + k,
                    xy=torch.where(keep[:, None], host[k, :, :2], nan),
                    visible=visible,
                    score=torch.where(keep, host[k, :, 2], nan),
                    decision=decision,
                )
            )
        last_uv = torch.where(active[:, None], found.uv[-1].to(state.last_uv.dtype), state.last_uv)
        descriptors = torch.where(active[:, None], found.descriptors, state.descriptors)
        return results, replace(
            state,
            next_frame=t + b,
            descriptors=descriptors,
            last_uv=last_uv,
            latest=results[-1],
            previous_gray=None,
            anchors=None,
            anchor_age=None,
            xy=None,
            velocity=None,
            lost=None,
            sightings=None,
        )

    def advance(self, state: TrackState, features: Tensor, frame: np.ndarray | Tensor | None = None) -> TrackState:
        """Process the next frame given its ``[C, h, w]`` unit feature grid (and its ``[H, W, 3]`` uint8 RGB
        pixels, which the refinement needs; without them this frame has no local track, only the semantic one)."""
        t = state.next_frame
        q = state.queries
        g = state.geometry
        n = len(q)
        refine = self.refine != "none"
        gray = working_gray(to_gray(frame), self.refine_config) if refine and frame is not None else None
        descriptors = state.descriptors
        query_features = state.query_features
        query_descriptors = state.query_descriptors
        last_uv = state.last_uv
        track_xy, velocity, lost = state.xy, state.velocity, state.lost
        if query_descriptors is None or query_descriptors.shape[0] != n:  # new points: grow the tables
            grow = n - (0 if query_descriptors is None else query_descriptors.shape[0])
            zeros = features.new_zeros(grow, features.shape[0])
            descriptors = zeros if query_descriptors is None else torch.cat([descriptors, zeros])
            query_descriptors = zeros if query_descriptors is None else torch.cat([query_descriptors, zeros])
            pad_uv = features.new_zeros(grow, 2)
            last_uv = pad_uv if last_uv is None else torch.cat([last_uv, pad_uv])
            pad = torch.zeros(grow, 2)
            track_xy = pad if track_xy is None else torch.cat([track_xy, pad])
            velocity = pad if velocity is None else torch.cat([velocity, pad])
            lost = torch.zeros(grow, dtype=torch.int64) if lost is None else torch.cat([lost, lost.new_zeros(grow)])
        query_gray = state.query_gray
        anchors, anchor_age = state.anchors, state.anchor_age
        sightings = state.sightings
        side = (lambda c: c.ncc_window or c.window)(scaled(self.refine_config, gray)) if gray is not None else 0
        if refine and gray is not None and (anchors is None or len(anchors) != n or anchors.shape[1] != side):
            grow = n - (0 if anchors is None else len(anchors))
            pad_a = np.zeros((grow, side, side), np.uint8)
            anchors = pad_a if anchors is None else np.concatenate([anchors, pad_a])
            anchor_age = (
                np.zeros(grow, np.int64)
                if anchor_age is None
                else np.concatenate([anchor_age, np.zeros(grow, np.int64)])
            )
        starting = q.frame == t
        if starting.any():
            query_uv = g.pixel_to_grid(q.xy[starting].to(features.device))
            sampled = sample_descriptors(features, query_uv)
            descriptors, query_descriptors, last_uv = (
                descriptors.clone(),
                query_descriptors.clone(),
                last_uv.clone(),
            )
            descriptors[starting] = sampled
            query_descriptors[starting] = sampled
            last_uv[starting] = query_uv
            query_features = {**query_features, t: features.clone()}  # not a view keeping the batch alive
            if gray is not None:
                query_gray = {**query_gray, t: gray}
                anchors, anchor_age = anchors.copy(), anchor_age.copy()
                anchors[starting.numpy()] = patches(gray, work_xy(q.xy[starting], gray, g), side)
                anchor_age[starting.numpy()] = 0

        xy = torch.full((n, 2), float("nan"))
        score = torch.full((n,), float("nan"))
        visible = torch.zeros(n, dtype=torch.bool)
        decision = torch.full((n,), OCCLUDED, dtype=torch.int8)
        active = (q.frame < t).nonzero().flatten()
        if len(active):
            if refine:
                found_uv, act_xy, act_score, act_decision, act_velocity = self._coarse_to_fine(
                    state,
                    features,
                    gray,
                    active,
                    descriptors,
                    track_xy,
                    velocity,
                    lost,
                    query_features,
                    query_gray,
                    anchors,
                )
                if gray is not None and self.reacquire_config is not None:
                    sightings = self._sightings(sightings, n, side)
                    found_uv, act_xy, act_score, act_decision = self._reacquire(
                        state,
                        sightings,
                        t,
                        gray,
                        g,
                        features,
                        descriptors,
                        active,
                        found_uv,
                        act_xy,
                        act_score,
                        act_decision,
                    )
                if gray is not None:  # anchors: each point's appearance, refreshed every few frames it is seen
                    seen = (act_decision != OCCLUDED).numpy()
                    ids = active.numpy()
                    anchor_age = anchor_age.copy()
                    anchor_age[ids[seen]] += 1
                    refresh = ids[
                        seen
                        & ((anchor_age[ids] >= self.refine_config.anchor_every) | (act_decision == REDETECT).numpy())
                    ]
                    if len(refresh):
                        anchors = anchors.copy()
                        where = act_xy[torch.from_numpy(np.isin(ids, refresh))]
                        anchors[refresh] = patches(gray, work_xy(where, gray, g), side)
                        anchor_age[refresh] = 0
                confident = torch.as_tensor(act_decision != OCCLUDED).to(features.device)
                track_xy, velocity, lost = track_xy.clone(), velocity.clone(), lost.clone()
                track_xy[active], velocity[active] = act_xy, act_velocity
                lost[active] = torch.where(act_decision == OCCLUDED, lost[active] + 1, 0)
                ok = confident
            else:
                found = match(descriptors[active], features, self.config, prior_uv=last_uv[active])
                found_uv = found.uv
                confident = found.score >= self.config.min_score
                ok = confident & self._fb_ok(found_uv, features, active, q, query_features, g)
                act_score = found.score.cpu().float()
                act_decision = torch.where(ok.cpu(), FOLLOW, OCCLUDED).to(torch.int8)
            last_uv = last_uv.clone()
            last_uv[active] = found_uv.to(last_uv.dtype)  # the prior follows every estimate
            if self.config.update > 0 and confident.any():
                seen = active[confident.cpu()]
                current = sample_descriptors(features, found_uv[confident])
                descriptors = descriptors.clone()
                descriptors[seen] = F.normalize(
                    (1 - self.config.update) * query_descriptors[seen] + self.config.update * current, dim=1
                )
            xy[active] = g.grid_to_pixel(found_uv).cpu().float() if not refine else act_xy
            score[active] = act_score
            visible[active] = ok.cpu()
            decision[active] = act_decision
        xy[starting] = q.xy[starting]
        score[starting] = 1.0
        visible[starting] = True
        decision[starting] = FOLLOW
        decision[q.frame > t] = NOT_STARTED
        if refine:
            track_xy = track_xy.clone()
            track_xy[starting] = q.xy[starting]
            velocity = velocity.clone()
            velocity[starting] = 0.0
            lost = lost.clone()
            lost[starting] = 0
        if refine and gray is not None and self.reacquire_config is not None:
            sightings = self._sightings(sightings, n, side)
            seen = (decision == FOLLOW) | (decision == REDETECT)
            where = np.nan_to_num(work_xy(xy, gray, g), nan=-1.0).astype(np.float32)
            sightings = record(sightings, t, gray, seen.numpy(), where, self.reacquire_config.refresh)
        result = TrackResult(frame_index=t, xy=xy, visible=visible, score=score, decision=decision)
        return replace(
            state,
            next_frame=t + 1,
            descriptors=descriptors,
            query_features=query_features,
            query_descriptors=query_descriptors,
            last_uv=last_uv,
            latest=result,
            previous_gray=gray,
            query_gray=query_gray,
            anchors=anchors if refine else None,
            anchor_age=anchor_age if refine else None,
            xy=track_xy if refine else None,
            velocity=velocity if refine else None,
            lost=lost if refine else None,
            sightings=sightings if refine else None,
        )

    def _sightings(self, sightings: Sightings | None, n: int, side: int) -> Sightings:
        """The sightings, grown to ``n`` points (new, or with a new template side when the frame size changed)."""
        p = patch_side(side, self.reacquire_config)
        if sightings is None or sightings.patch.shape[1] != p:
            return Sightings.empty(n, p, self.reacquire_config.history)
        return sightings.grow(n)

    def _reacquire(
        self,
        state: TrackState,
        sightings: Sightings,
        t: int,
        gray: np.ndarray,
        g: GridGeometry,
        features: Tensor,
        descriptors: Tensor,
        active: Tensor,
        found_uv: Tensor,
        act_xy: Tensor,
        act_score: Tensor,
        act_decision: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The points judged occluded, predicted from their followed neighbours' motion and re-acquired where
        their warped last patch is found (:func:`tracker.reacquire.reacquire`)."""
        rc = self.reacquire_config
        ids = active.numpy()
        lost_for = state.lost[active].numpy() if state.lost is not None else np.zeros(len(ids), np.int64)
        wxy, predicted, back, dropped = reacquire_lost(
            sightings,
            t,
            gray,
            ids,
            work_xy(act_xy, gray, g).astype(np.float32),
            (act_decision == FOLLOW).numpy(),
            (act_decision == OCCLUDED).numpy(),
            lost_for,
            (work_xy(state.queries.xy, gray, g).astype(np.float32), state.queries.frame.numpy(), state.query_gray),
            (lambda c: c.ncc_window or c.window)(scaled(self.refine_config, gray)),
            rc,
        )
        if not (predicted.any() or dropped.any()):
            return found_uv, act_xy, act_score, act_decision
        scale = gray.shape[0] / g.frame_h
        act_xy, act_decision, act_score = act_xy.clone(), act_decision.clone(), act_score.clone()
        act_decision[torch.from_numpy(dropped)] = OCCLUDED
        moved = torch.from_numpy(np.flatnonzero(predicted))
        act_xy[moved] = (torch.from_numpy(wxy[predicted]) + 0.5) / scale - 0.5
        found_uv = found_uv.clone()
        found_uv[moved.to(found_uv.device)] = g.pixel_to_grid(act_xy[moved]).to(found_uv.device, found_uv.dtype)
        if back.any():
            rows = torch.from_numpy(np.flatnonzero(back))
            act_decision[rows] = REDETECT
            here = g.pixel_to_grid(act_xy[rows]).to(features.device)
            act_score[rows] = (sample_descriptors(features, here) * descriptors[active[rows]]).sum(1).cpu().float()
        return found_uv, act_xy, act_score, act_decision

    def _fb_ok(
        self,
        uv: Tensor,
        features: Tensor,
        active: Tensor,
        q: Queries,
        query_features: dict,
        g: GridGeometry,
    ) -> Tensor:
        """Forward-backward verdict ``[A]`` of the matches ``uv`` ``[A, 2]`` of points ``active``, per query frame."""
        ok = torch.zeros(len(active), dtype=torch.bool, device=features.device)
        for qf in q.frame[active].unique().tolist():
            sel = (q.frame[active] == qf).nonzero().flatten().to(features.device)
            query_uv = g.pixel_to_grid(q.xy[active[sel.cpu()]].to(features.device))
            ok[sel] = forward_backward_ok(uv[sel], features, query_features[qf], query_uv, self.config)
        return ok

    def _coarse_to_fine(
        self,
        state: TrackState,
        features: Tensor,
        gray: np.ndarray | None,
        active: Tensor,
        descriptors: Tensor,
        track_xy: Tensor,
        velocity: Tensor,
        lost: Tensor,
        query_features: dict[int, Tensor],
        query_gray: dict[int, np.ndarray],
        anchors: np.ndarray | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Predict, match coarsely, track locally, decide and refine the ``active`` points.

        Returns:
            ``(uv [A, 2] grid on the features' device, xy [A, 2] pixels, score [A], decision [A] int8,
            velocity [A, 2])`` for the active points (CPU unless said otherwise).
        """
        mc, g, q = self.config, state.geometry, state.queries
        rc = scaled(self.refine_config, gray) if gray is not None else self.refine_config
        # the local track works on a working copy of the frame (``scale`` of its side): positions go there and back
        scale = 1.0 if gray is None else gray.shape[0] / g.frame_h

        def work(xy: Tensor) -> np.ndarray:
            return ((xy + 0.5) * scale - 0.5).numpy()

        def frame_xy(xy: np.ndarray) -> Tensor:
            return (torch.from_numpy(xy) + 0.5) / scale - 0.5

        dev = features.device
        previous = track_xy[active]
        speed = velocity[active]
        limit = torch.tensor([g.frame_w - 0.5, g.frame_h - 0.5])
        predicted = torch.maximum(torch.minimum(previous + speed, limit), torch.full((2,), -0.5))
        # 1. local track: Lucas-Kanade from the previous position, started at the prediction
        photo_ok = torch.zeros(len(active), dtype=torch.bool)
        if gray is not None and state.previous_gray is not None:
            lk_xy, fb = lk_track(state.previous_gray, gray, work(previous), work(predicted), rc)
            lk_xy = frame_xy(lk_xy)
            inside = (lk_xy >= -0.5).all(1) & (lk_xy <= limit).all(1)
            lk_ok = torch.from_numpy(fb <= rc.fb_px) & inside
            if lk_ok.any():  # photometric agreement of the tracked patch with the previous frame's
                sel = lk_ok.nonzero().flatten()
                ncc = patch_ncc(
                    state.previous_gray, work(previous[sel]), gray, work(lk_xy[sel]), rc.ncc_window or rc.window
                )
                photo_ok[sel] = torch.from_numpy(ncc >= rc.min_ncc)
                if anchors is not None and rc.anchor_ncc > -1:  # and with the point's anchor appearance
                    here = patches(gray, work(lk_xy[sel]), anchors.shape[1])
                    photo_ok[sel] &= torch.from_numpy(ncc_of(anchors[active[sel].numpy()], here) >= rc.anchor_ncc)
            # a loosely consistent local track is still the best prediction of a point that is not followed
            loose = torch.from_numpy(fb <= rc.loose_fb_cells * max(g.cell_size) * scale) & inside
            predicted = torch.where(loose[:, None], lk_xy, predicted)
            lk_xy = torch.where(lk_ok[:, None], lk_xy, predicted)
        else:
            lk_xy, lk_ok = predicted, torch.zeros(len(active), dtype=torch.bool)
        # 2. coarse: the semantic match, searched around the prediction; wider while a point is lost
        prior = g.pixel_to_grid(predicted).to(dev)
        act_desc = descriptors[active]
        if mc.search_radius is None:
            found = match(act_desc, features, mc, prior_uv=prior)
            sem_uv, sem_score = found.uv, found.score
        else:
            factor = torch.clamp(1 + rc.widen * lost[active].float(), max=rc.max_widen)
            sem_uv = features.new_zeros(len(active), 2)
            sem_score = features.new_zeros(len(active))
            near = (factor == 1).nonzero().flatten().to(dev)
            if len(near):
                found = match(act_desc[near], features, mc, prior[near])
                sem_uv[near], sem_score[near] = found.uv, found.score
            wide = (factor > 1).nonzero().flatten().to(dev)
            if len(wide):  # lost points: one whole-grid product (cheaper than gathering wide windows), masked
                sem_uv[wide], sem_score[wide] = _widened_search(
                    act_desc[wide], features, mc, prior[wide], mc.search_radius * factor[wide.cpu()].to(dev)
                )
        # 3. the evidence at the local track, and the decision
        lk_uv = g.pixel_to_grid(lk_xy).to(dev)
        score_lk = (sample_descriptors(features, lk_uv) * act_desc).sum(1)
        distance = (lk_uv - sem_uv).norm(dim=1)
        follow_score = mc.min_score if rc.follow_score is None else rc.follow_score
        # the semantic match's forward-backward check (a whole-grid match per point) only where its verdict can
        # change the decision: a consistent local track that the match agrees with, or does not beat, is followed
        # whatever the check says
        semantic_ok = sem_score >= mc.min_score
        settled = (lk_ok & photo_ok).to(dev) & (score_lk >= follow_score)
        settled &= (distance <= rc.agree_cells) | (sem_score <= score_lk + rc.margin)
        check = (semantic_ok & ~settled).nonzero().flatten()
        semantic_ok = semantic_ok & settled  # not used for these (see tracker.refine.decide)
        if len(check):
            fb_ok = self._fb_ok(sem_uv[check], features, active[check.cpu()], q, query_features, g)
            semantic_ok[check] = fb_ok
        decision = decide(
            lk_ok.to(dev),
            photo_ok.to(dev),
            score_lk,
            semantic_ok,
            sem_score,
            distance,
            follow_score,
            rc.agree_cells,
            rc.margin,
        ).cpu()
        follow, redetect = decision == FOLLOW, decision == REDETECT
        # 4. the points not followed move with the followed points near them that moved like them
        rest = (~follow).nonzero().flatten()
        support = torch.zeros(len(active), dtype=torch.bool)
        neighbour = torch.zeros_like(speed)
        if len(rest) and follow.any() and rc.neighbours > 0:
            fi = follow.nonzero().flatten()
            motion, weight = neighbour_motion(
                previous[rest],
                speed[rest],
                previous[fi],
                speed[fi],
                lk_xy[fi] - previous[fi],
                rc.neighbours * max(g.frame_w, g.frame_h),
                rc.neighbour_tau,
            )
            has = weight > rc.min_support
            neighbour[rest[has]] = motion[has]
            support[rest[has]] = True
            if rc.neighbour_predict:
                guess = torch.maximum(torch.minimum(previous + neighbour, limit), torch.full((2,), -0.5))
                predicted = torch.where(support[:, None], guess, predicted)
        # 5. positions: the local track, the refined semantic match, or the prediction
        sem_xy = g.grid_to_pixel(sem_uv).cpu().float()
        out = predicted.clone()
        out[follow] = lk_xy[follow]
        if redetect.any():
            cell = max(g.cell_size)
            jumped = sem_xy.clone()
            verified = torch.zeros(len(active), dtype=torch.bool)
            for qf in q.frame[active[redetect]].unique().tolist():
                sel = (redetect & (q.frame[active] == qf)).nonzero().flatten()
                if gray is None or qf not in query_gray:
                    continue
                refined, ok = lk_from_query(
                    query_gray[qf], gray, work(q.xy[active[sel]]), work(sem_xy[sel]), cell * scale, rc
                )
                jumped[sel], verified[sel] = frame_xy(refined), torch.from_numpy(ok)
            if mc.search_radius is not None:
                # a local (non-semantic) match is taken only when the query frame's patch confirms it at pixel
                # level (Lucas-Kanade from it lands there) or its score is strong: a re-detection is reported
                # visible, and the coarse match alone drifts (sift, any search radius)
                strong = sem_score.cpu() >= (rc.far_score if rc.far_score is not None else float("inf"))
                redetect &= verified | strong
                decision[~redetect & (decision == REDETECT)] = OCCLUDED
            out[redetect] = jumped[redetect]
        score = torch.where(follow, score_lk.cpu().float(), sem_score.cpu().float())
        # 6. the motion model: smoothed displacement while followed; else the neighbours' motion where there is
        # support, reset on a jump, decaying while occluded
        new_velocity = torch.where(
            follow[:, None],
            rc.momentum * speed + (1 - rc.momentum) * (out - previous),
            torch.where(
                support[:, None],
                neighbour,
                torch.where(redetect[:, None], torch.zeros_like(speed), rc.occluded_decay * speed),
            ),
        )
        return g.pixel_to_grid(out).to(dev), out, score, decision, new_velocity
