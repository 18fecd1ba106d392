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

from tracker.errors import TrackerError
from tracker.featurizers import Featurizer
from tracker.geometry import GridGeometry, frames_to_tensor
from tracker.matching import MatchConfig, forward_backward_ok, match, sample_descriptors

REFINE_MODES: tuple[str, ...] = ("none",)
"""Refinement modes; the first is the default. ``none``: pure per-frame matching of the query descriptor."""

NOT_STARTED, FOLLOW, REDETECT, OCCLUDED = -1, 0, 1, 2
"""Per-point decisions (``TrackResult.decision``, int8): before the query frame; followed the local track;
jumped to the semantic match; neither is trusted (the point is predicted and reported invisible)."""


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
    """

    next_frame: int
    geometry: GridGeometry
    queries: Queries
    descriptors: Tensor
    query_features: dict[int, Tensor] = field(default_factory=dict)
    query_descriptors: Tensor | None = None
    last_uv: Tensor | None = None
    latest: TrackResult | None = None

    @property
    def started(self) -> Tensor:
        """``[N]`` bool: the point's query frame has been reached."""
        return self.queries.frame < self.next_frame


class PointTracker:
    """Tracks query points with a featurizer and a matcher.

    Args:
        featurizer: any :class:`~tracker.featurizers.Featurizer`.
        config: matcher settings.
        refine: one of :data:`REFINE_MODES` (the first is the default); ``none`` is pure matching.

    Raises:
        TrackerError: an unknown refinement mode.
    """

    def __init__(self, featurizer: Featurizer, config: MatchConfig | None = None, refine: str = REFINE_MODES[0]):
        if refine not in REFINE_MODES:
            raise TrackerError(f"unknown refinement {refine!r}; choose from: {', '.join(REFINE_MODES)}")
        self.featurizer = featurizer
        self.config = config or MatchConfig()
        self.refine = refine

    # ----------------------------------------------------------------- public API

    def init(self, frame: np.ndarray | Tensor, queries: Queries) -> TrackState:
        """Start on ``frame`` (video frame 0) with ``queries`` (on frame 0 or later frames)."""
        height, width = frame.shape[:2]
        state = self.empty_state(height, width)
        state = self.add_queries(state, queries)
        return self.advance(state, self.featurizer(frames_to_tensor([frame]))[0])

    def step(self, state: TrackState, frame: np.ndarray | Tensor) -> tuple[TrackResult, TrackState]:
        """Track every started point into the next frame."""
        state = self.advance(state, self.featurizer(frames_to_tensor([frame]))[0])
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
        frames: Iterable[np.ndarray],
        queries: Queries,
        batch_size: int = 8,
        state: TrackState | None = None,
    ) -> Iterator[TrackResult]:
        """Yield one :class:`TrackResult` per frame of ``frames`` (``[H, W, 3]`` uint8 RGB arrays).

        Frames go through the featurizer ``batch_size`` at a time; memory stays flat in video length.
        """
        if batch_size < 1:
            raise TrackerError("batch size must be at least 1")
        pending: list[np.ndarray] = []
        source = iter(frames)
        while True:
            try:
                frame = next(source)
            except StopIteration:
                break
            except Exception:  # the source failed (e.g. a corrupt frame): track the frames already read
                if pending:
                    yield from self._run_batch(state, pending)[0]
                raise
            if state is None:
                state = self.add_queries(self.empty_state(*frame.shape[:2]), queries)
            pending.append(frame)
            if len(pending) == batch_size:
                results, state = self._run_batch(state, pending)
                pending = []
                yield from results
        if pending:
            yield from self._run_batch(state, pending)[0]

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

    def _run_batch(self, state: TrackState, frames: list[np.ndarray]) -> tuple[list[TrackResult], TrackState]:
        results = []
        for grid in self.featurizer(frames_to_tensor(frames)):
            state = self.advance(state, grid)
            results.append(state.latest)
        return results, state

    def advance(self, state: TrackState, features: Tensor) -> TrackState:
        """Process the next frame given its ``[C, h, w]`` unit feature grid."""
        t = state.next_frame
        q = state.queries
        g = state.geometry
        n = len(q)
        descriptors = state.descriptors
        query_features = state.query_features
        query_descriptors = state.query_descriptors
        last_uv = state.last_uv
        if query_descriptors is None or query_descriptors.shape[0] != n:  # new points: grow the tables
            grow = n - (0 if query_descriptors is None else query_descriptors.shape[0])
            zeros = features.new_zeros(grow, features.shape[0])
            descriptors = zeros if query_descriptors is None else torch.cat([descriptors, zeros])
            query_descriptors = zeros if query_descriptors is None else torch.cat([query_descriptors, zeros])
            pad_uv = features.new_zeros(grow, 2)
            last_uv = pad_uv if last_uv is None else torch.cat([last_uv, pad_uv])
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

        xy = torch.full((n, 2), float("nan"))
        score = torch.full((n,), float("nan"))
        visible = torch.zeros(n, dtype=torch.bool)
        active = (q.frame < t).nonzero().flatten()
        if len(active):
            found = match(descriptors[active], features, self.config, prior_uv=last_uv[active])
            confident = found.score >= self.config.min_score
            ok = confident.clone()
            for qf in q.frame[active].unique().tolist():  # forward-backward, per query frame
                sel = (q.frame[active] == qf).nonzero().flatten().to(features.device)
                query_uv = g.pixel_to_grid(q.xy[active[sel.cpu()]].to(features.device))
                ok[sel] &= forward_backward_ok(found.uv[sel], features, query_features[qf], query_uv, self.config)
            last_uv = last_uv.clone()
            last_uv[active] = found.uv  # the prior follows every estimate
            if self.config.update > 0 and confident.any():
                seen = active[confident.cpu()]
                current = sample_descriptors(features, found.uv[confident])
                descriptors = descriptors.clone()
                descriptors[seen] = F.normalize(
                    (1 - self.config.update) * query_descriptors[seen] + self.config.update * current, dim=1
                )
            xy[active] = g.grid_to_pixel(found.uv).cpu().float()
            score[active] = found.score.cpu().float()
            visible[active] = ok.cpu()
        xy[starting] = q.xy[starting]
        score[starting] = 1.0
        visible[starting] = True
        decision = torch.where(visible, FOLLOW, OCCLUDED).to(torch.int8)
        decision[q.frame > t] = NOT_STARTED
        result = TrackResult(frame_index=t, xy=xy, visible=visible, score=score, decision=decision)
        return replace(
            state,
            next_frame=t + 1,
            descriptors=descriptors,
            query_features=query_features,
            query_descriptors=query_descriptors,
            last_uv=last_uv,
            latest=result,
        )
