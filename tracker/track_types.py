"""The point tracker's data: the query points (:class:`Queries`), its answer per frame (:class:`TrackResult`) and
everything it carries from one frame to the next (:class:`TrackState`); :class:`tracker.tracking.PointTracker`
makes and updates them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from tracker.geometry import GridGeometry
from tracker.reacquire import Sightings

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
