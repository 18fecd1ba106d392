"""Streaming point tracker with explicit state (its data in :mod:`tracker.track_types`, the coarse-to-fine step of
``refine="lk"`` in :mod:`tracker.coarse_to_fine`).

``init(frame, queries) -> state``; ``step(state, frame) -> (result, state)``; ``add_queries(state, queries)``
for points that start on a later frame; and :meth:`PointTracker.track`, a generator over a whole video that
batches frames through the featurizer. Memory is flat in video length: the state holds the query
descriptors and the feature grids of the query frames only (for the forward-backward check).

Each point is matched against its own query descriptor in every frame (no template drift).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tracker.choices import POINT_REFINE_MODES
from tracker.coarse_to_fine import coarse_to_fine, fb_ok, reacquire_step, sightings_for, work_xy
from tracker.errors import TrackerError
from tracker.featurizers import Featurizer
from tracker.geometry import frames_to_tensor
from tracker.io.pipeline import BatchPrefetcher
from tracker.io.ring import Batches, batches_of
from tracker.matching import (
    MatchConfig,
    match,
    match_batch,
    sample_descriptors,
)
from tracker.reacquire import ReacquireConfig, record
from tracker.refine import (
    FOLLOW,
    OCCLUDED,
    REDETECT,
    RefineConfig,
    patches,
    scaled,
    to_gray,
    working_gray,
)
from tracker.track_types import NOT_STARTED, Queries, TrackResult, TrackState

__all__ = ["BATCH_BUDGET", "NOT_STARTED", "REFINE_MODES", "PointTracker", "Queries", "TrackResult", "TrackState"]

REFINE_MODES: tuple[str, ...] = POINT_REFINE_MODES
"""Refinement modes; the first is the default. ``lk``: coarse-to-fine (motion prediction, Lucas-Kanade local
track, semantic match, per-point decision, sub-cell refinement; see :mod:`tracker.refine`). ``none``: pure
per-frame matching of the query descriptor (the original method)."""

BATCH_BUDGET = {"cpu": 2**21}
"""At most this many similarities (``B * N * Q * h * w``, float32) per batched match, per device type
(:meth:`PointTracker.advance_batch`; others: ``BATCH_BUDGET_DEFAULT``). On the CPU a whole batch does not pay (no
sync to save, and 8 frames' maps fall out of cache): at 360x640 (sift grid 60x107), 256 points, one thread,
frame by frame 7.7 ms a frame, in runs of 2^21 (one frame) 7.7, of 2^23 (5 frames) 8.8 with local search; global
7.6, 7.8 and 13.3 ms."""
BATCH_BUDGET_DEFAULT = 2**25


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
        second copy (``batch_size`` is then theirs); a prefetcher made with this tracker's featurizer hands over the
        grids it made in its thread too. When the source fails half way, the frames read before are
        tracked, then the failure is raised.
        """
        if batch_size < 1:
            raise TrackerError("batch size must be at least 1")
        if isinstance(frames, BatchPrefetcher) and frames.featurizer is self.featurizer:
            pairs = frames.featurized()  # the grids made in the decode thread, beside this thread's last batch
        else:
            pairs = ((batch, None) for batch in batches_of(frames, batch_size, self.featurizer.device))
        for batch, grids in pairs:
            if state is None:
                state = self.add_queries(self.empty_state(*batch.shape[1:3]), queries)
            if grids is None:
                results, state = self._run_batch(state, batch)  # done with the batch before the next is asked for
            else:
                results, state = self.advance_frames(state, grids, batch)
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
                found_uv, act_xy, act_score, act_decision, act_velocity = coarse_to_fine(
                    self.config,
                    self.refine_config,
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
                    sightings = sightings_for(self.reacquire_config, sightings, n, side)
                    found_uv, act_xy, act_score, act_decision = reacquire_step(
                        self.refine_config,
                        self.reacquire_config,
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
                ok = confident & fb_ok(self.config, found_uv, features, active, q, query_features, g)
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
            sightings = sightings_for(self.reacquire_config, sightings, n, side)
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
