"""Queries from a reference image: points or a mask given on an image that is not a frame of the video.

The reference (another dog, a drawing, a photo of the same object) goes through the video's own featurizer,
so its descriptors live in the same space as the frames'. To keep one input size (fixed-shape backends) and the
video's pixel scale, the image is placed on a frame-sized canvas (:func:`letterbox`: shrunk only when it does
not fit, centred, grey around it); the cells of that padding are never matched.

Points (:class:`ReferenceSearch`): each point's reference descriptor is matched over the whole grid of the
frames (the global best match, window soft-argmax), and the match is accepted on the first frame where it is
confident (cosine >= ``min_score``) and passes the forward-backward check against the reference: the
descriptor found in the frame, matched back into the reference, lands within ``fb_radius`` reference cells of
the reference point. With ``flip`` the left-right mirrored reference is tried too (DistillDIFT's pose
alignment) and, per point, the orientation with the higher mean score over the frames searched is kept. A found
position becomes an ordinary query of the tracker on that frame (its descriptor sampled there), so the tracking
is the tracker's own; a point not found yet is reported invisible (NaN position, ``NOT_STARTED``) until found,
and the search stops after ``search_frames`` frames.

Masks (:func:`transfer_mask`): every cell of frame 0 takes the label of its most similar reference cell where
that match is confident and forward-backward consistent (the reference cell's best frame cell lies within
``mask_radius`` cells), giving a frame-0 mask for the ordinary propagation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

from tracker.errors import TrackerError
from tracker.featurizers import Featurizer
from tracker.geometry import GridGeometry, frames_to_tensor
from tracker.io.ring import batches_of
from tracker.matching import MatchConfig, sample_descriptors, similarity, window_soft_argmax
from tracker.tracking import NOT_STARTED, PointTracker, Queries, TrackResult, TrackState

PAD_GREY = 128


@dataclass(frozen=True)
class ReferenceConfig:
    """Settings of the reference search.

    Attributes:
        search_frames: frames searched from the first (the first few: a point not found by then stays
            invisible); None searches the whole video.
        min_score: cosine similarity a match needs (None: the tracker's ``MatchConfig.min_score``).
        fb_radius: forward-backward check, in reference grid cells: the frame's descriptor at the match must
            match back within this distance of the reference point. Semantic matches across instances are
            looser than a video's frame-to-frame ones, hence wider than ``MatchConfig.fb_tolerance``.
        flip: also try the left-right mirrored reference; per point (or mask) keep the better orientation.
        mask_radius: masks: a frame cell -> reference cell match is kept when the reference cell's best frame
            cell lies within this many frame grid cells.
    """

    search_frames: int | None = 8
    min_score: float | None = None
    fb_radius: float = 2.0
    flip: bool = False
    mask_radius: float = 2.0

    def __post_init__(self) -> None:
        if self.search_frames is not None and self.search_frames < 1:
            raise ValueError("--reference-frames must be at least 1 (or 0 for the whole video)")
        if self.fb_radius <= 0 or self.mask_radius <= 0:
            raise ValueError("the reference forward-backward radius must be positive")


@dataclass(frozen=True)
class Canvas:
    """Where a reference image sits on the frame-sized canvas: ``canvas_xy = scale * (xy + 0.5) - 0.5 + offset``.

    Attributes:
        image_hw: ``(height, width)`` of the reference image.
        frame_hw: ``(height, width)`` of the canvas (the video's frames).
        scale: image pixels -> canvas pixels (at most 1: a reference is shrunk to fit, never enlarged).
        offset: ``(ox, oy)`` canvas pixels of the image's top-left corner.
    """

    image_hw: tuple[int, int]
    frame_hw: tuple[int, int]
    scale: float
    offset: tuple[float, float]

    def to_canvas(self, xy: np.ndarray) -> np.ndarray:
        """``[N, 2]`` pixel xy on the image -> on the canvas."""
        return self.scale * (np.asarray(xy, np.float64) + 0.5) - 0.5 + np.asarray(self.offset)


def letterbox(image: np.ndarray, frame_hw: tuple[int, int], interpolation: int = cv2.INTER_AREA):
    """Place ``image`` (``[h, w, 3]`` uint8 RGB, or ``[h, w]`` labels with ``cv2.INTER_NEAREST``) centred on a
    ``frame_hw`` canvas, shrunk (aspect kept) only if it does not fit.

    Returns:
        ``(canvas [H, W, ...] of the image's dtype, inside [H, W] bool, Canvas)``.
    """
    (h, w), (fh, fw) = image.shape[:2], frame_hw
    scale = min(1.0, fh / h, fw / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        image = cv2.resize(image, (nw, nh), interpolation=interpolation)
    oy, ox = (fh - nh) // 2, (fw - nw) // 2
    fill = PAD_GREY if image.ndim == 3 else 0
    canvas = np.full((fh, fw, *image.shape[2:]), fill, image.dtype)
    canvas[oy : oy + nh, ox : ox + nw] = image
    inside = np.zeros((fh, fw), bool)
    inside[oy : oy + nh, ox : ox + nw] = True
    exact = Canvas((h, w), (fh, fw), float(min(nh / h, nw / w)), (float(ox), float(oy)))
    return canvas, inside, exact


@dataclass(frozen=True)
class ReferenceView:
    """A featurized reference (or its mirror image).

    Attributes:
        features: ``[C, h, w]`` unit grid of the canvas.
        valid: ``[h, w]`` bool, the cells whose centre lies on the image (not the padding).
        geometry: cell <-> canvas pixel mapping (the canvas is frame-sized).
        canvas: image <-> canvas mapping.
        flipped: this is the left-right mirrored reference.
    """

    features: Tensor
    valid: Tensor
    geometry: GridGeometry
    canvas: Canvas
    flipped: bool

    def to_grid(self, xy: np.ndarray) -> Tensor:
        """``[N, 2]`` pixel xy on the (unflipped) reference image -> ``[N, 2]`` grid uv of this view."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2).copy()
        if self.flipped:
            xy[:, 0] = self.canvas.image_hw[1] - 1 - xy[:, 0]
        pixel = torch.from_numpy(self.canvas.to_canvas(xy)).float()
        return self.geometry.pixel_to_grid(pixel).to(self.features.device)

    def cell_labels(self, labels: np.ndarray) -> Tensor:
        """``[h, w]`` int64: the reference labels (``[H_ref, W_ref]`` on the unflipped image) at the cell centres."""
        labels = labels[:, ::-1] if self.flipped else labels
        canvas, _, _ = letterbox(np.ascontiguousarray(labels), self.canvas.frame_hw, cv2.INTER_NEAREST)
        return torch.from_numpy(_at_cell_centres(canvas, self.geometry).astype(np.int64))


def _at_cell_centres(image: np.ndarray, g: GridGeometry) -> np.ndarray:
    """``image [H, W]`` read (nearest pixel) at the centre of every cell of ``g``: ``[h, w]``."""
    sx, sy = g.cell_size
    cols = np.clip(np.round((np.arange(g.grid_w) + 0.5) * sx - 0.5).astype(int), 0, g.frame_w - 1)
    rows = np.clip(np.round((np.arange(g.grid_h) + 0.5) * sy - 0.5).astype(int), 0, g.frame_h - 1)
    return image[np.ix_(rows, cols)]


def featurize_reference(
    featurizer: Featurizer, image: np.ndarray, frame_hw: tuple[int, int], flip: bool = False
) -> list[ReferenceView]:
    """The reference's views (the image, and with ``flip`` its mirror) through the video's ``featurizer``.

    Args:
        image: ``[H_ref, W_ref, 3]`` uint8 RGB.
        frame_hw: ``(height, width)`` of the video's frames (the canvas).
    """
    images = [image, np.ascontiguousarray(image[:, ::-1])] if flip else [image]
    canvases = [letterbox(im, frame_hw) for im in images]
    grids = featurizer(frames_to_tensor([c for c, _, _ in canvases]))
    g = featurizer.geometry(*frame_hw)
    views = []
    for k, ((_, inside, canvas), grid) in enumerate(zip(canvases, grids, strict=True)):
        valid = torch.from_numpy(_at_cell_centres(inside, g)).to(grid.device)
        views.append(ReferenceView(grid, valid, g, canvas, flipped=k == 1))
    return views


def check_reference_points(xy: np.ndarray, image_hw: tuple[int, int]) -> None:
    """Refuse, in one line, a point outside the reference image (or not finite)."""
    h, w = image_hw
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    bad = ~np.isfinite(xy).all(1) | (xy[:, 0] < -0.5) | (xy[:, 0] > w - 0.5) | (xy[:, 1] < -0.5) | (xy[:, 1] > h - 0.5)
    if bad.any():
        x, y = xy[np.flatnonzero(bad)[0]]
        raise TrackerError(f"point ({x:g}, {y:g}) is outside the {w}x{h} reference image")


@dataclass(frozen=True)
class FrameMatch:
    """Reference points matched in one frame.

    Attributes:
        uv: ``[N, 2]`` grid position of the global best match in the frame.
        score: ``[N]`` cosine similarity there.
        ok: ``[N]`` bool, confident and forward-backward consistent with the reference.
    """

    uv: Tensor
    score: Tensor
    ok: Tensor


def match_in_frame(
    view: ReferenceView, ref_uv: Tensor, features: Tensor, match: MatchConfig, min_score: float, fb_radius: float
) -> FrameMatch:
    """Match the reference descriptors at ``ref_uv`` ``[N, 2]`` (grid of ``view``) in a frame's grid ``features``
    ``[C, h, w]``, with the forward-backward check against the reference (padding cells excluded)."""
    descriptors = sample_descriptors(view.features, ref_uv)
    uv, score = window_soft_argmax(similarity(descriptors, features), match.window_radius, match.temperature)
    back = similarity(sample_descriptors(features, uv), view.features)
    back = back.masked_fill(~view.valid[None], float("-inf"))
    back_uv, _ = window_soft_argmax(back, match.window_radius, match.temperature)  # padding: -inf
    ok = (score >= min_score) & ((back_uv - ref_uv).norm(dim=1) <= fb_radius)
    return FrameMatch(uv, score, ok)


class ReferenceSearch:
    """Find reference points in a video and track them with ``tracker`` from where they are found.

    Args:
        tracker: the point tracker (its featurizer, matcher and refinement are used as they are).
        views: :func:`featurize_reference` of the reference through ``tracker.featurizer``.
        ref_xy: ``[N, 2]`` pixel xy on the reference image.
        labels: N names.
        config: search settings.

    Attributes (filled while :meth:`track` runs):
        found_frame: ``[N]`` int64, the frame each point was found on (-1: not found).
        found_xy: ``[N, 2]`` float32 pixel xy in that frame (NaN: not found).
        score: ``[N]`` float32 cosine similarity of the accepted match (NaN: not found).
        flipped: ``[N]`` bool, found through the mirrored reference.
        searched: frames searched so far.
    """

    def __init__(
        self,
        tracker: PointTracker,
        views: Sequence[ReferenceView],
        ref_xy: np.ndarray,
        labels: Sequence[str] | None = None,
        config: ReferenceConfig | None = None,
    ):
        self.tracker, self.views = tracker, list(views)
        self.config = config or ReferenceConfig()
        self.ref_xy = np.asarray(ref_xy, np.float64).reshape(-1, 2)
        n = len(self.ref_xy)
        self.labels = tuple(labels) if labels is not None else ("",) * n
        self.min_score = self.config.min_score if self.config.min_score is not None else tracker.config.min_score
        self.ref_uv = [v.to_grid(self.ref_xy) for v in self.views]
        self.found_frame = np.full(n, -1, np.int64)
        self.found_xy = np.full((n, 2), np.nan, np.float32)
        self.score = np.full(n, np.nan, np.float32)
        self.flipped = np.zeros(n, bool)
        self.searched = 0
        self._score_sum = np.zeros((len(self.views), n))
        self._order: list[int] = []  # tracker state index -> point index

    def reference_queries(self) -> Queries:
        """The points as given (pixel xy on the reference image, frame 0), for logs and reports."""
        return Queries.create(self.ref_xy, 0, self.labels)

    def _searching(self, t: int) -> bool:
        limit = self.config.search_frames
        return bool((self.found_frame < 0).any()) and (limit is None or t < limit)

    def search(self, t: int, features: Tensor, geometry: GridGeometry) -> Queries:
        """Look for the points not found yet in frame ``t`` (``features [C, h, w]``); the ones found now
        are recorded and returned as queries on frame ``t``."""
        todo = np.flatnonzero(self.found_frame < 0)
        self.searched = max(self.searched, t + 1)
        if len(todo) == 0:
            return Queries.create(np.zeros((0, 2)))
        sel = torch.from_numpy(todo)
        results = [
            match_in_frame(
                v, uv[sel.to(uv.device)], features, self.tracker.config, self.min_score, self.config.fb_radius
            )
            for v, uv in zip(self.views, self.ref_uv, strict=True)
        ]
        for k, r in enumerate(results):
            self._score_sum[k, todo] += r.score.float().cpu().numpy()
        ok = np.stack([r.ok.cpu().numpy() for r in results])  # [V, M]
        mean = np.where(ok, self._score_sum[:, todo], -np.inf)  # the same frame count for every view
        best = mean.argmax(0)
        hit = ok.any(0)
        if not hit.any():
            return Queries.create(np.zeros((0, 2)))
        cols = np.flatnonzero(hit)
        ids = todo[cols]
        uv = torch.stack([results[best[c]].uv[c] for c in cols]).cpu().float()
        xy = geometry.grid_to_pixel(uv).numpy()
        xy[:, 0] = np.clip(xy[:, 0], -0.5, geometry.frame_w - 0.5)
        xy[:, 1] = np.clip(xy[:, 1], -0.5, geometry.frame_h - 0.5)
        self.found_frame[ids] = t
        self.found_xy[ids] = xy
        self.score[ids] = [float(results[best[c]].score[c]) for c in cols]
        self.flipped[ids] = [self.views[best[c]].flipped for c in cols]
        self._order.extend(ids.tolist())
        return Queries.create(xy, t, [self.labels[i] for i in ids])

    def track(self, frames: Iterable[np.ndarray], batch_size: int = 8) -> Iterator[TrackResult]:
        """Yield one :class:`TrackResult` per frame for all N points (in the given order).

        Each batch of frames is featurized once: the grids serve the search first (points found on a frame
        become queries there), then the tracker's own step (``advance_batch`` for ``refine=none``, else
        ``advance`` frame by frame, as :meth:`PointTracker.track`).
        """
        if batch_size < 1:
            raise TrackerError("batch size must be at least 1")
        state: TrackState | None = None
        for batch in batches_of(frames, batch_size, self.tracker.featurizer.device):  # as PointTracker.track
            if state is None:
                state = self.tracker.empty_state(*batch.shape[1:3])
            results, state = self._run_batch(state, batch)
            yield from results

    def _run_batch(self, state: TrackState, frames: Tensor) -> tuple[list[TrackResult], TrackState]:
        tracker = self.tracker
        grids = tracker.featurizer(frames)
        t0 = state.next_frame
        for i, grid in enumerate(grids):
            if self._searching(t0 + i):
                new = self.search(t0 + i, grid, state.geometry)
                if len(new):
                    state = tracker.add_queries(state, new)
        out, state = tracker.advance_frames(state, grids, frames)
        return [self._full(r) for r in out], state

    def _full(self, result: TrackResult) -> TrackResult:
        """The tracker's result (points in the order found) for all N points; the accepted match's score on
        the frame a point was found."""
        n = len(self.ref_xy)
        order = torch.as_tensor(self._order[: len(result.xy)], dtype=torch.int64)
        xy = torch.full((n, 2), float("nan"))
        score = torch.full((n,), float("nan"))
        visible = torch.zeros(n, dtype=torch.bool)
        decision = torch.full((n,), NOT_STARTED, dtype=torch.int8)
        xy[order], score[order], visible[order] = result.xy, result.score, result.visible
        if result.decision is not None:
            decision[order] = result.decision
        here = torch.from_numpy(self.found_frame == result.frame_index)
        score[here] = torch.from_numpy(self.score)[here]
        return TrackResult(result.frame_index, xy, visible, score, decision)

    def summary(self) -> dict:
        """JSON-able record of the search: per point where it was found and the score of the match."""
        return {
            "search_frames": self.config.search_frames,
            "frames_searched": self.searched,
            "min_score": self.min_score,
            "fb_radius_cells": self.config.fb_radius,
            "flip": len(self.views) > 1,
            "found": int((self.found_frame >= 0).sum()),
            "points": [
                {
                    "point": i,
                    "label": self.labels[i],
                    "reference_x": float(self.ref_xy[i, 0]),
                    "reference_y": float(self.ref_xy[i, 1]),
                    "found_frame": int(self.found_frame[i]) if self.found_frame[i] >= 0 else None,
                    "x": float(self.found_xy[i, 0]) if self.found_frame[i] >= 0 else None,
                    "y": float(self.found_xy[i, 1]) if self.found_frame[i] >= 0 else None,
                    "match_score": float(self.score[i]) if self.found_frame[i] >= 0 else None,
                    "flipped": bool(self.flipped[i]),
                }
                for i in range(len(self.ref_xy))
            ],
        }


# --------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class MaskTransfer:
    """A reference mask carried onto frame 0.

    Attributes:
        labels: ``[H, W]`` uint8 object ids on frame 0.
        score: mean cosine similarity of the accepted object cells (NaN: none).
        cells: object cells accepted on frame 0's grid.
        flipped: the mirrored reference gave it.
    """

    labels: np.ndarray
    score: float
    cells: int
    flipped: bool


_MASK_CHUNK = 1 << 22  # similarities held at once (16 MiB in float32)


def _transfer_one(
    view: ReferenceView, ref_labels: np.ndarray, features: Tensor, min_score: float, radius: float
) -> tuple[Tensor, float, int]:
    """``(cell labels [h, w] int64, mean score, cells)`` of frame 0 from one reference view."""
    c, h, w = features.shape
    cells = view.cell_labels(ref_labels).to(features.device)
    valid = view.valid.flatten()
    ref = view.features.reshape(c, -1)[:, valid]  # [C, M]
    ref_label = cells.flatten()[valid]
    frame = features.reshape(c, h * w)
    best_s = torch.empty(h * w, device=features.device)
    best_j = torch.empty(h * w, dtype=torch.int64, device=features.device)
    col_s = torch.full((ref.shape[1],), float("-inf"), device=features.device)
    col_i = torch.zeros(ref.shape[1], dtype=torch.int64, device=features.device)
    step = max(1, _MASK_CHUNK // max(1, ref.shape[1]))
    for s in range(0, h * w, step):
        sim = frame[:, s : s + step].T @ ref  # [rows, M]
        best_s[s : s + step], best_j[s : s + step] = sim.max(1)
        top_s, top_i = sim.max(0)
        better = top_s > col_s
        col_s, col_i = torch.where(better, top_s, col_s), torch.where(better, top_i + s, col_i)
    back = col_i[best_j]  # frame cell -> reference cell -> frame cell
    here = torch.arange(h * w, device=features.device)
    du = (back % w - here % w).float()
    dv = (torch.div(back, w, rounding_mode="floor") - torch.div(here, w, rounding_mode="floor")).float()
    ok = (best_s >= min_score) & (du * du + dv * dv <= radius * radius)
    labels = torch.where(ok, ref_label[best_j], 0)
    obj = labels > 0
    score = float(best_s[obj].mean()) if obj.any() else float("nan")
    return labels.view(h, w), score, int(obj.sum())


def transfer_mask(
    views: Sequence[ReferenceView],
    ref_labels: np.ndarray,
    features: Tensor,
    frame_hw: tuple[int, int],
    min_score: float = 0.5,
    radius: float = 2.0,
) -> MaskTransfer:
    """Carry a reference mask onto a frame through cell correspondences.

    Each frame cell takes the label of its most similar reference cell (padding excluded) where the similarity
    is at least ``min_score`` and the reference cell's own best frame cell lies within ``radius`` cells; the
    cell labels are then read at every frame pixel (nearest cell). With several views (the mirrored one), the
    one whose accepted object cells have the higher mean similarity is kept.

    Args:
        views: :func:`featurize_reference` output.
        ref_labels: ``[H_ref, W_ref]`` uint8 object ids on the reference image (0 background).
        features: ``[C, h, w]`` unit grid of the frame.
        frame_hw: ``(height, width)`` of the frame.
    """
    if ref_labels.shape != views[0].canvas.image_hw:
        (h, w), (rh, rw) = ref_labels.shape, views[0].canvas.image_hw
        raise TrackerError(f"the reference mask is {w}x{h}, the reference image {rw}x{rh}")
    best = None
    for view in views:
        labels, score, cells = _transfer_one(view, ref_labels, features, min_score, radius)
        key = score if np.isfinite(score) else -np.inf
        if best is None or key > best[0]:
            best = (key, labels, score, cells, view.flipped)
    _, labels, score, cells, flipped = best
    grid = labels.cpu().numpy().astype(np.uint8)
    (fh, fw), (h, w) = frame_hw, grid.shape
    rows = np.minimum(((np.arange(fh) + 0.5) * h / fh).astype(int), h - 1)  # the cell each pixel lies in
    cols = np.minimum(((np.arange(fw) + 0.5) * w / fw).astype(int), w - 1)
    return MaskTransfer(grid[np.ix_(rows, cols)], score, cells, flipped)
