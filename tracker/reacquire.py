"""Re-acquisition of lost points from the motion of their neighbours: a local similarity transform, then a
template check with the point's appearance warped by it.

A point judged occluded (hidden, drifted, out of frame) is predicted where the followed points around it say
it is: the similarity (rotation, scale, translation) that carries those neighbours from an earlier frame to this
one, fitted by weighted least squares with robust re-weighting (:func:`fit_similarity`) to the strongest
neighbours. Two sources, the higher correlation wins (:func:`reacquire_lost`):

- **sightings** (:func:`reacquire`): from how the point looked 5-10 frames before it was lost (:class:`Sightings`
  keeps a fresh and a kept appearance: the kept one is rarely covered already by what hides the point),
  neighbours weighted by their distance then and by how much their motion was like its own;
- **query** (:func:`from_query`): from its query position and patch, by the points queried on the same frame:
  free of the drift a chain of sightings can gather.

The appearance, warped by the similarity's rotation and scale, is searched for around the prediction by
normalised cross-correlation (:func:`search`): a clear peak re-acquires the point there (visible again); no peak
leaves it hidden at the prediction. Unlike the semantic re-detection (dense SIFT is not rotation invariant), this
follows a rotating, scaling object and finds a point as it comes out from behind an occluder.

A followed point is also checked against where the points queried with it carry its query position
(:func:`drifted`): one that stopped on an occluder's edge while its object moved on is dropped (then searched
for as a lost point).

Measured (sift, defaults; ``PointTracker(reacquire=False)`` in brackets; ``track eval synthetic``, ``track eval
badja``): synthetic benchmark (seeds 0, 1) AJ 0.427 (0.399), <delta_avg 0.562 (0.531), OA 0.672 (0.654),
re-acquired within 3 frames 0.147 (0.147); on its coarse 14 px grid AJ 0.286 (0.276), mean error of the visible
points 1.61 cells (1.71); BADJA mean PCK@0.2 0.507 (0.504); a disc turning behind a bar
(tests/test_reacquire.py, ``sigma`` 0.15) 23 of 28 reappearances re-acquired within 3 frames (0), hidden points
judged visible 7-11% (9-12%). ``sigma`` (BADJA / synthetic AJ, without :func:`drifted`, patches taken at the loss):
0.05 0.507 / 0.428, 0.06 0.507 / 0.429, 0.08 0.496 / 0.432, 0.1 0.465 / 0.428, 0.12 0.437 / -: articulated animals
want a small neighbourhood. One round instead of two, or ``every`` 3, scored the same on both benchmarks (AJ
0.431 / 0.507) but brought back 16 and 9 of the disc's 28 points (23 and 23 with both). Appearances taken at the
loss itself were found on the occluder (the disc: hidden points judged visible 35% against 12%); ``drift`` 0.02,
0.03 and 0.05 measured the same; templates 2 and 2.5 x the window lowered the synthetic AJ (0.418, 0.414: they
straddle the object's edge). Cost at 720p with 256 points (sift): 7.6-8.2 ms of CPU a frame on the main thread
(benchmarks/results/cpu-2core/track_fps_sift_profile.md: from the query patch 3, from the sightings 2.5, the drift
check 1.6); ``track`` there runs at 38.7-39.8 frames/s with it.

The memory is flat in video length: per point two patches and where/when they were taken, and a ring of every
point's positions over the last ``history`` frames. Everything is in the pixels of the local track's working
frame (:func:`tracker.refine.working_gray`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from tracker.refine import patches


@dataclass(frozen=True)
class ReacquireConfig:
    """Settings of the re-acquisition (:func:`reacquire`).

    Attributes:
        history: frames of positions kept (a point lost longer than this is left to the semantic re-detection).
        sigma: spatial scale of the neighbour weights, a share of the working frame's long side.
        tau: velocity scale of the neighbour weights, working pixels per frame.
        min_support: total neighbour weight below which no prediction is made.
        robust_px: residual scale of the robust re-weighting (working pixels).
        min_ncc: the warped patch must correlate at least this with the frame at the peak.
        search: radius of the template search around the prediction, a share of the patch side.
        max_scale: the fitted scale change must be within ``[1 / max_scale, max_scale]``.
        sources: where the points are predicted from: ``sightings`` (where each was last seen, its last patch:
            :func:`reacquire`) and ``query`` (its query position and patch: :func:`from_query`); the higher
            correlation wins.
        neighbours: the similarity is fitted to the (at most) this many neighbours of largest weight.
        patience, every: a point lost for at least ``patience`` frames is looked for on every ``every``-th frame
            only, and the followed points are checked for drift (:func:`drifted`) on those frames only (the cost
            stays bounded when many points are gone for long).
        template: template side, a multiple of the local track's NCC window.
        refresh: frames between a point's appearance refreshes (:class:`Sightings`).
        drift: a followed point farther than this share of the frame's long side from where its query frame's
            neighbours carry it is not followed (:func:`drifted`); None: no check.
        rounds: points re-acquired in one round support the prediction of the others in the next.
    """

    history: int = 24
    sigma: float = 0.05
    tau: float = 1.5
    min_support: float = 1.5
    robust_px: float = 2.0
    min_ncc: float = 0.85
    search: float = 0.3
    max_scale: float = 1.5
    rounds: int = 2
    drift: float | None = 0.03
    refresh: int = 5
    template: float = 1.5
    patience: int = 3
    every: int = 2
    neighbours: int = 12
    sources: tuple[str, ...] = ("sightings", "query")


@dataclass(frozen=True)
class Sightings:
    """How each point looked some frames ago, and a short history of all positions (working pixels).

    Every point keeps two appearances: a fresh one, refreshed every ``ReacquireConfig.refresh`` frames it is seen,
    and the one before it, which is searched for (:func:`reacquire`): taken 5-10 frames before a point is lost,
    it is rarely already covered by what hides the point.

    Attributes:
        frame: ``[N]`` int64 frame of each point's kept appearance (-1: none yet).
        xy: ``[N, 2]`` float32 its position there; velocity: ``[N, 2]`` its displacement into that frame (NaN
            unknown); patch: ``[N, P, P]`` uint8 its patch there (:func:`patch_side`).
        fresh_frame, fresh_xy, fresh_velocity, fresh_patch: the same for the fresh appearance.
        ring: ``[H, N, 2]`` float32 positions of the points seen on frame ``ring_frame[k]`` (NaN elsewhere).
        ring_frame: ``[H]`` int64 frame of each ring slot (-1: empty).
    """

    frame: np.ndarray
    xy: np.ndarray
    velocity: np.ndarray
    patch: np.ndarray
    fresh_frame: np.ndarray
    fresh_xy: np.ndarray
    fresh_velocity: np.ndarray
    fresh_patch: np.ndarray
    ring: np.ndarray
    ring_frame: np.ndarray

    @staticmethod
    def empty(n: int, side: int, history: int) -> Sightings:
        """No point seen yet; patches of ``side`` pixels (:func:`patch_side`)."""

        def appearance():
            return (
                np.full(n, -1, np.int64),
                np.full((n, 2), np.nan, np.float32),
                np.full((n, 2), np.nan, np.float32),
                np.zeros((n, side, side), np.uint8),
            )

        return Sightings(
            *appearance(),
            *appearance(),
            ring=np.full((history, n, 2), np.nan, np.float32),
            ring_frame=np.full(history, -1, np.int64),
        )

    def grow(self, n: int) -> Sightings:
        """The same with room for ``n`` points (new ones never seen)."""
        extra = n - len(self.frame)
        if extra <= 0:
            return self
        fresh = Sightings.empty(extra, self.patch.shape[1], len(self.ring_frame))
        grown = {
            name: np.concatenate([getattr(self, name), getattr(fresh, name)])
            for name in self.__dataclass_fields__
            if name not in ("ring", "ring_frame")
        }
        return Sightings(**grown, ring=np.concatenate([self.ring, fresh.ring], axis=1), ring_frame=self.ring_frame)


def record(s: Sightings, t: int, gray: np.ndarray, seen: np.ndarray, xy: np.ndarray, refresh: int) -> Sightings:
    """Record frame ``t`` (``gray``, its working grey frame): points ``seen [N]`` are at ``xy [N, 2]``. Those whose
    fresh appearance is ``refresh`` frames old (or missing) take a new one here, and keep the one it replaces."""
    ring, ring_frame = s.ring.copy(), s.ring_frame.copy()
    k = t % len(s.ring_frame)
    ring[k] = np.where(seen[:, None], xy, np.nan)
    ring_frame[k] = t
    prev = _slots(s, np.array([t - 1]))[0]
    velocity = np.full_like(xy, np.nan)
    if prev >= 0:
        velocity[seen] = xy[seen] - s.ring[prev][seen]
    due = np.flatnonzero(seen & ((s.fresh_frame < 0) | (t - s.fresh_frame >= refresh)))
    if len(due) == 0:
        return replace(s, ring=ring, ring_frame=ring_frame)
    out = {name: getattr(s, name).copy() for name in s.__dataclass_fields__ if name not in ("ring", "ring_frame")}
    had = due[s.fresh_frame[due] >= 0]
    first = due[s.fresh_frame[due] < 0]
    for name in ("frame", "xy", "velocity", "patch"):  # the fresh appearance becomes the kept one
        out[name][had] = out["fresh_" + name][had]
    out["fresh_frame"][due] = t
    out["fresh_xy"][due] = xy[due]
    out["fresh_velocity"][due] = velocity[due]
    out["fresh_patch"][due] = patches(gray, xy[due], s.patch.shape[1])
    for name in ("frame", "xy", "velocity", "patch"):  # a point's first appearance is also its kept one
        out[name][first] = out["fresh_" + name][first]
    return Sightings(**out, ring=ring, ring_frame=ring_frame)


def fit_similarity(
    src: np.ndarray, dst: np.ndarray, weight: np.ndarray, robust_px: float, iterations: int = 3
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted least-squares similarity ``dst ~ M src + b`` per row, with Cauchy re-weighting of the residuals.

    Args:
        src, dst: ``[L, F, 2]`` corresponding positions; ``weight``: ``[L, F]`` prior weights (0: unused).
        robust_px: residual scale of the re-weighting.

    Returns:
        ``(M [L, 2, 2], b [L, 2], support [L])``: ``M = s [[cos, -sin], [sin, cos]]``; ``support`` is the sum of
        the final weights.
    """
    src, dst, weight = (np.asarray(a, np.float64) for a in (src, dst, weight))
    w = weight
    p, q, b = np.ones(len(src)), np.zeros(len(src)), np.zeros((len(src), 2))
    for _ in range(iterations):
        total = np.maximum(w.sum(1), 1e-12)
        mu_s = (w[..., None] * src).sum(1) / total[:, None]
        mu_d = (w[..., None] * dst).sum(1) / total[:, None]
        s, d = src - mu_s[:, None], dst - mu_d[:, None]
        a = (w * (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1])).sum(1)
        c = (w * (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0])).sum(1)
        var = np.maximum((w * (s * s).sum(-1)).sum(1), 1e-9)
        p, q = a / var, c / var
        b = mu_d - np.stack([p * mu_s[:, 0] - q * mu_s[:, 1], q * mu_s[:, 0] + p * mu_s[:, 1]], -1)
        rx = p[:, None] * src[..., 0] - q[:, None] * src[..., 1] + b[:, None, 0] - dst[..., 0]
        ry = q[:, None] * src[..., 0] + p[:, None] * src[..., 1] + b[:, None, 1] - dst[..., 1]
        w = weight / (1 + (rx * rx + ry * ry) / robust_px**2)
    m = np.stack([np.stack([p, -q], -1), np.stack([q, p], -1)], -2)
    return m, b, w.sum(1)


def _subpixel(score: np.ndarray, y: int, x: int) -> tuple[float, float]:
    def peak(lo: float, mid: float, hi: float) -> float:
        den = lo - 2 * mid + hi
        return 0.0 if den >= 0 else float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5))

    h, w = score.shape
    dx = peak(score[y, x - 1], score[y, x], score[y, x + 1]) if 0 < x < w - 1 else 0.0
    dy = peak(score[y - 1, x], score[y, x], score[y + 1, x]) if 0 < y < h - 1 else 0.0
    return dx, dy


def template_side(side: int, config: ReacquireConfig) -> int:
    """The template side (odd pixels) for the local track's NCC window ``side``."""
    return max(5, 2 * round(config.template * side / 2) + 1)


def patch_side(side: int, config: ReacquireConfig) -> int:
    """The side of the kept patches: room for the template turned by 45 degrees and scaled by ``max_scale``."""
    return 2 * int(np.ceil(template_side(side, config) * config.max_scale / np.sqrt(2))) + 1


def _slots(s: Sightings, frames: np.ndarray) -> np.ndarray:
    """Ring slot of each frame in ``frames`` (-1 where that frame is no longer, or not, in the ring)."""
    k = np.mod(frames, len(s.ring_frame))
    return np.where((frames >= 0) & (s.ring_frame[k] == frames), k, -1)


def _nearest(weight: np.ndarray, k: int) -> np.ndarray:
    """``[L, K]`` indices of each row's ``k`` largest weights (all when there are fewer)."""
    if weight.shape[1] <= k:
        return np.broadcast_to(np.arange(weight.shape[1]), weight.shape)
    return np.argpartition(-weight, k - 1, axis=1)[:, :k]


def predict(
    src: np.ndarray, dst: np.ndarray, anchor: np.ndarray, weight: np.ndarray, config: ReacquireConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's point carried by its neighbours' similarity (:func:`fit_similarity`).

    Args:
        src, dst: ``[L, F, 2]`` the neighbours then and now (entries with NaN or zero weight are ignored);
        anchor: ``[L, 2]`` the points then; weight: ``[L, F]`` the neighbours' prior weights.

    Returns:
        ``(xy [L, 2], m [L, 2, 2], good [L] bool)``: good where the support and the scale change are plausible.
    """
    near = _nearest(np.nan_to_num(weight, nan=0.0), config.neighbours)  # the strongest only: cheaper, as local
    src, dst = (np.take_along_axis(a, near[..., None], 1) for a in (src, dst))
    weight = np.take_along_axis(weight, near, 1)
    valid = np.isfinite(src).all(-1) & np.isfinite(dst).all(-1) & (weight > 1e-6)
    weight = np.where(valid, weight, 0.0)
    src = np.where(valid[..., None], src, 0.0)
    dst = np.where(valid[..., None], dst, 0.0)
    fit, b, support = fit_similarity(src, dst, weight, config.robust_px)
    scale = np.sqrt(np.maximum(np.linalg.det(fit), 0))
    good = (support >= config.min_support) & (scale <= config.max_scale) & (scale >= 1 / config.max_scale)
    xy = np.einsum("lij,lj->li", fit, anchor) + b
    return xy.astype(np.float32), fit, good


def search(
    gray: np.ndarray, centre: np.ndarray, patch: np.ndarray, m: np.ndarray, side: int, config: ReacquireConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Find each patch, seen through its linear map, near its centre in ``gray`` (normalised cross-correlation).

    Args:
        centre: ``[K, 2]`` where to look (working pixels); patch: ``[K, P, P]`` the appearances (centred on the
            point); m: ``[K, 2, 2]`` the maps from the patch's frame to this one.

    Returns:
        ``(xy [K, 2], peak [K])``: the peak's sub-pixel position and its correlation (-inf: outside the frame or
        no texture).
    """
    k = len(centre)
    xy, peak = np.asarray(centre, np.float32).copy(), np.full(k, -np.inf, np.float32)
    h, w = gray.shape
    inside = np.flatnonzero((xy[:, 0] >= 0) & (xy[:, 0] <= w - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= h - 1))
    if len(inside) == 0:
        return xy, peak
    tside = template_side(side, config)
    radius = max(2, int(round(config.search * side)))
    regions = patches(gray, xy[inside], tside + 2 * radius)
    templates = _warped_templates(patch[inside], m[inside], tside)
    textured = templates.reshape(len(inside), -1).std(1) >= 2.0  # a flat template has nothing to find
    for region, template, r in zip(regions[textured], templates[textured], inside[textured], strict=True):
        score = cv2.matchTemplate(region, template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (px, py) = cv2.minMaxLoc(score)
        dx, dy = _subpixel(score, py, px)
        xy[r] += np.array([px + dx - radius, py + dy - radius], np.float32)
        peak[r] = best
    return xy, peak


def reacquire(
    s: Sightings,
    t: int,
    gray: np.ndarray,
    ids: np.ndarray,
    ref: np.ndarray,
    ref_xy: np.ndarray,
    side: int,
    config: ReacquireConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predict points ``ids`` (not followed on frame ``t``) from where they were last seen, by the similarity
    of the points followed on ``t`` since then, and look for their last patch there.

    ``s`` holds the frames before ``t`` (:func:`record` frame ``t`` afterwards).

    Args:
        s: the sightings; gray: frame ``t``'s working grey frame; ids: ``[L]`` point indices.
        ref, ref_xy: ``[F]`` indices and ``[F, 2]`` positions on frame ``t`` of the points followed there.
        side: template side (odd, working pixels).

    Returns:
        ``(xy [L, 2] float32, predicted [L] bool, peak [L])``: the template peak near the prediction where
        ``predicted`` (NaN elsewhere) and its correlation (-inf: not searched).
    """
    n_ids = len(ids)
    xy = np.full((n_ids, 2), np.nan, np.float32)
    predicted = np.zeros(n_ids, bool)
    peak = np.full(n_ids, -np.inf, np.float32)
    if n_ids == 0 or len(ref) < 2:
        return xy, predicted, peak
    seen_at = s.frame[ids]
    slots = _slots(s, seen_at)
    rows = np.flatnonzero((seen_at >= 0) & (seen_at < t) & (slots >= 0))
    if len(rows) == 0:
        return xy, predicted, peak
    src = s.ring[slots[rows]][:, ref]  # [L, F, 2] the neighbours then
    dst = np.broadcast_to(np.asarray(ref_xy, np.float32), src.shape)  # and now
    anchor = s.xy[ids[rows]]  # the points then
    sigma = config.sigma * max(gray.shape)
    weight = np.exp(-np.square(src - anchor[:, None]).sum(-1) / (2 * sigma**2))
    prev = _slots(s, seen_at[rows] - 1)
    before = np.where(prev[:, None, None] >= 0, s.ring[np.maximum(prev, 0)][:, ref], np.nan)
    dv2 = np.square(src - before - s.velocity[ids[rows]][:, None]).sum(-1)  # motion then, like the point's own
    known = np.isfinite(dv2)
    weight = weight * np.where(known, np.exp(-np.where(known, dv2, 0) / (2 * config.tau**2)), 0.5)
    weight = weight * (ref[None] != ids[rows, None])
    pred, m, good = predict(src, dst, anchor, weight, config)
    rows, pred, m = rows[good], pred[good], m[good]
    found_xy, found_peak = search(gray, pred, s.patch[ids[rows]], m, side, config)
    xy[rows], predicted[rows], peak[rows] = found_xy, True, found_peak
    xy[rows[found_peak < config.min_ncc]] = pred[found_peak < config.min_ncc]
    return xy, predicted, peak


def from_query(
    gray: np.ndarray,
    ids: np.ndarray,
    query_xy: np.ndarray,
    query_frame: np.ndarray,
    query_gray: dict[int, np.ndarray],
    ref: np.ndarray,
    ref_xy: np.ndarray,
    side: int,
    config: ReacquireConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Predict points ``ids`` from their query positions, by the similarity that carries the followed points of
    the same query frame from there to now, and look for their query patch there: free of the drift a chain of
    sightings can gather (a point that slid onto an occluder's edge is found again where its object is).

    Args:
        query_xy: ``[N, 2]`` every point's query position (working pixels); query_frame: ``[N]``;
        query_gray: query frame -> its working grey frame; the rest as :func:`reacquire`.

    Returns:
        As :func:`reacquire`.
    """
    n_ids = len(ids)
    xy = np.full((n_ids, 2), np.nan, np.float32)
    predicted = np.zeros(n_ids, bool)
    peak = np.full(n_ids, -np.inf, np.float32)
    sigma = config.sigma * max(gray.shape)
    for qf in np.unique(query_frame[ids]):
        rows = np.flatnonzero(query_frame[ids] == qf)
        mates = np.flatnonzero(query_frame[ref] == qf)
        if len(mates) < 2 or int(qf) not in query_gray:
            continue
        src = np.broadcast_to(query_xy[ref[mates]], (len(rows), len(mates), 2))
        dst = np.broadcast_to(np.asarray(ref_xy, np.float32)[mates], src.shape)
        anchor = query_xy[ids[rows]]
        weight = np.exp(-np.square(src - anchor[:, None]).sum(-1) / (2 * sigma**2))
        weight = weight * (ref[mates][None] != ids[rows, None])
        pred, m, good = predict(src, dst, anchor, weight, config)
        rows, pred, m = rows[good], pred[good], m[good]
        if len(rows) == 0:
            continue
        template = patches(query_gray[int(qf)], query_xy[ids[rows]], patch_side(side, config))
        found_xy, found_peak = search(gray, pred, template, m, side, config)
        xy[rows], predicted[rows], peak[rows] = found_xy, True, found_peak
        xy[rows[found_peak < config.min_ncc]] = pred[found_peak < config.min_ncc]
    return xy, predicted, peak


def _warped_templates(patch: np.ndarray, m: np.ndarray, side: int) -> np.ndarray:
    """``[K, side, side]`` templates: each patch ``[K, P, P]`` (centred on its point) seen through its linear map
    ``m [K, 2, 2]``, sampled bilinearly (border replicated) in one ``cv2.remap`` over the stacked patches."""
    k, p = len(patch), patch.shape[1]
    if k == 0:
        return np.zeros((0, side, side), np.uint8)
    centre = (p - 1) / 2
    r = (side - 1) / 2
    offsets = np.linspace(-r, r, side)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    inv = np.linalg.inv(m)  # [K, 2, 2]: this frame's offsets -> the patch's
    sx = inv[:, 0, 0, None, None] * dx + inv[:, 0, 1, None, None] * dy + centre
    sy = inv[:, 1, 0, None, None] * dx + inv[:, 1, 1, None, None] * dy + centre
    sx, sy = np.clip(sx, 0, p - 1), np.clip(sy, 0, p - 1) + (np.arange(k) * p)[:, None, None]
    stacked = np.ascontiguousarray(patch.reshape(k * p, p))
    out = cv2.remap(
        stacked,
        sx.reshape(k * side, side).astype(np.float32),
        sy.reshape(k * side, side).astype(np.float32),
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return out.reshape(k, side, side)


def drifted(
    ids: np.ndarray,
    xy: np.ndarray,
    query_xy: np.ndarray,
    query_frame: np.ndarray,
    frame_side: float,
    config: ReacquireConfig,
) -> np.ndarray:
    """Which followed points ``ids`` (at ``xy [F, 2]`` now) are far from where the similarity of the other
    followed points of their query frame carries their query position: a point that slid onto an occluder's edge
    or the background stops while its object moves on (:func:`predict`, spatial weights on the query frame).

    Returns:
        ``[F]`` bool: supported, and more than ``config.drift`` x ``frame_side`` (working pixels) off.
    """
    out = np.zeros(len(ids), bool)
    if config.drift is None:
        return out
    sigma = config.sigma * frame_side
    for qf in np.unique(query_frame[ids]):
        rows = np.flatnonzero(query_frame[ids] == qf)
        if len(rows) < 3:
            continue
        src = np.broadcast_to(query_xy[ids[rows]], (len(rows), len(rows), 2))
        dst = np.broadcast_to(np.asarray(xy, np.float32)[rows], src.shape)
        anchor = query_xy[ids[rows]]
        weight = np.exp(-np.square(src - anchor[:, None]).sum(-1) / (2 * sigma**2)) * (1 - np.eye(len(rows)))
        pred, _, good = predict(src, dst, anchor, weight, config)
        off = np.linalg.norm(pred - np.asarray(xy, np.float32)[rows], axis=1) > config.drift * frame_side
        out[rows] = good & off
    return out


def reacquire_lost(
    s: Sightings,
    t: int,
    gray: np.ndarray,
    ids: np.ndarray,
    xy: np.ndarray,
    followed: np.ndarray,
    lost: np.ndarray,
    lost_for: np.ndarray,
    queries: tuple[np.ndarray, np.ndarray, dict[int, np.ndarray]],
    side: int,
    config: ReacquireConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame's re-acquisition of the points ``ids`` judged lost, from each source in ``config.sources``
    (the higher correlation wins), over ``config.rounds`` rounds (points found support the others next round).

    Args:
        s: the sightings before frame ``t``; gray: frame ``t``'s working grey frame.
        ids: ``[A]`` the active points; xy: ``[A, 2]`` their positions on ``t`` (working pixels);
            followed, lost: ``[A]`` bool, their decisions; lost_for: ``[A]`` frames each has been lost.
        queries: ``(xy [N, 2] working pixels, frame [N], query frame -> working grey frame)`` of all points.
        side: the local track's NCC window (working pixels).

    Returns:
        ``(xy [A, 2], predicted [A], found [A], dropped [A])``: positions (moved to the neighbours' prediction
        where ``predicted``, to the template peak where ``found``: visible again); ``dropped``: followed points
        judged drifted (:func:`drifted`) and not found again.
    """
    query_xy, query_frame, query_gray = queries
    xy = np.array(xy, np.float32)
    seen = followed.copy()
    if config.drift is not None and followed.sum() >= 3 and t % config.every == 0:  # followed, not with its object
        off = np.flatnonzero(followed)[
            drifted(ids[followed], xy[followed], query_xy, query_frame, max(gray.shape), config)
        ]
        seen[off], lost = False, lost.copy()
        lost[off] = True
    if config.every > 1:  # a point lost for long is looked for every few frames
        lost = lost & ((lost_for < config.patience) | ((t + ids) % config.every == 0))
    predicted = np.zeros(len(ids), bool)
    for _ in range(config.rounds):
        rows = np.flatnonzero(lost & ~seen)
        if len(rows) == 0 or seen.sum() < 2:
            break
        best_xy = np.full((len(rows), 2), np.nan, np.float32)
        best = np.full(len(rows), -np.inf, np.float32)
        any_pred = np.zeros(len(rows), bool)
        for source in config.sources:
            if source == "sightings":
                pxy, pred, peak = reacquire(s, t, gray, ids[rows], ids[seen], xy[seen], side, config)
            else:
                pxy, pred, peak = from_query(
                    gray, ids[rows], query_xy, query_frame, query_gray, ids[seen], xy[seen], side, config
                )
            take = pred & (~any_pred | (peak > best))
            best_xy[take], best[take] = pxy[take], peak[take]
            any_pred |= pred
        xy[rows[any_pred]] = best_xy[any_pred]
        predicted[rows[any_pred]] = True
        found = best >= config.min_ncc
        seen[rows[found]] = True
        if not found.any():
            break
    return xy, predicted, lost & seen & ~followed, followed & ~seen
