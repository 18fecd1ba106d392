"""Pixel-level refinement and the per-point decision of the coarse-to-fine tracker.

The coarse-to-fine step (``PointTracker(refine="lk")``) combines two kinds of evidence per point and frame:

- the **local track**: pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``, batched over all points) from the
  point's previous position, started at the motion prediction, with a forward-backward error in pixels and the
  photometric agreement of its patch with the previous frame's (:func:`patch_ncc`);
- the **semantic match**: the query descriptor matched in the new feature grid (:func:`tracker.matching.match`),
  with its cosine score and the forward-backward verdict into the query frame;
- the **neighbours**: a point that is not followed (drifted, hidden) moves with the followed points near it that
  moved like it (:func:`neighbour_motion`), so a hidden point is predicted where it comes back.

The local track runs on a working copy of the frame of at most ``RefineConfig.lines`` lines (:func:`working_gray`),
with windows scaled to it (:func:`scaled`).

:func:`decide` turns them into one of FOLLOW / REDETECT / OCCLUDED (a small pure function over tensors);
:func:`lk_from_query` refines a re-detected position below the feature grid by Lucas-Kanade from the query
frame's patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import Tensor

FOLLOW, REDETECT, OCCLUDED = 0, 1, 2


@dataclass(frozen=True)
class RefineConfig:
    """Settings of the local track and of the decision.

    Attributes:
        window: Lucas-Kanade window side in pixels at ``lines`` lines (OpenCV's default 21), scaled with the
            frame (:func:`scaled`): 11 px on the 256x256 synthetic benchmark, 21 px on 480p BADJA. Synthetic
            (seeds 0, 1) AJ / <delta_avg at 256 px: 21 px 0.341 / 0.460, 15 px 0.350 / 0.473, 11 px 0.379 / 0.504.
        lines: frames with more lines are tracked on a copy halved (``cv2.pyrDown``) until at most this many
            (:func:`working_gray`): a 720p frame at 640x360 with a 15 px window, a quarter of the pixels.
        levels: pyramid levels above the frame for the frame-to-frame track (3: motions up to ~8x the window).
        fb_px: the local track is valid when Lucas-Kanade back into the previous frame lands within this many
            pixels of where it started. BADJA (sift, mean PCK@0.2 of dog and horsejump-high, other settings
            at their defaults then): 1 px 0.441, 2 px 0.447, 4 px 0.440; with the photometric check (``min_ncc``
            0.8) 1 px 0.497, 2 px 0.476 (synthetic AJ 0.331 and 0.334).
        agree_cells: the local track and the semantic match agree when within this many grid cells.
        follow_score: the descriptor at the local track must have at least this cosine similarity with the query
            descriptor to be followed; None uses the matcher's ``min_score``. Dense SIFT scores 0.5 and more on
            unrelated texture, so 0.5 does not catch drift (see ``min_ncc``).
        min_ncc: the local track is photometrically consistent when the normalised cross-correlation of the
            patch at the previous position (previous frame) and at the local track (this frame) is at least this.
            Together with ``follow_score`` (sift; BADJA mean PCK@0.2 / synthetic AJ / OA, :mod:`tracker.eval`):
            0.5 and 0.5: 0.489 / 0.212 / 0.663 (drifted points stay followed: median error of the points judged
            visible 11.5 px); ncc 0.8, score 0.5: 0.493 / 0.227 / 0.664; 0.9, 0.5: 0.472 / 0.242 / 0.673; 0.7, 0.8:
            0.472 / 0.326 / 0.643; 0.8, 0.8: 0.476 / 0.334 / 0.640 (median error 0.5 px); 0.5, 0.9: 0.448 / 0.330 /
            0.610. The earlier rule (the track must match back into the query frame) 0.469 / 0.325 / 0.609.
        ncc_window: side in pixels of those patches; None uses ``window``.
        margin: a confident semantic match elsewhere overrides a valid local track only when its score exceeds
            the score at the local track by this much (semantic matches on repeated parts are noisy).
            BADJA: 0.2 0.437, 0.1 0.447, 0.03 0.454.
        loose_fb_cells: a point that is not followed is predicted at its local track when that track's
            forward-backward error is within this many grid cells (a loose but still local motion estimate),
            else by its velocity. BADJA: 0 (velocity only) 0.454, 1 cell 0.497, 3 cells 0.454 (drifts onto
            occluders and background).
        momentum: weight of the previous velocity in the motion model (0: last displacement only).
        occluded_decay: per-frame factor on the velocity while a point is occluded (its prediction slows down).
        widen: while a point is occluded, a local semantic search (``search_radius``) grows by this many times
            the radius per occluded frame, up to ``max_widen`` times.
        max_widen: cap of the search radius growth factor.
        far_score: a re-detection beyond the usual search radius (found by the widened search of a lost point)
            is taken when the query frame's patch confirms it at pixel level (:func:`lk_from_query`), or when its
            semantic score is at least this (None: only the former). BADJA / synthetic AJ / re-acquired within 3
            frames (fb_px 1): None 0.497 / 0.331 / 0.116; 0.85 0.497 / 0.341 / 0.132; 0.8 (fb_px 2) 0.486 / 0.336
            / 0.143 but a false jump onto the noise texture in tests/test_refine.py's occluder clip; 0.7 0.448.
            Every re-detection needs that confirmation (not only the far ones): synthetic AJ 0.388 -> 0.397, the
            points judged visible 8.1 -> 6.3 px mean error, BADJA 0.504 both.
        neighbours: a point that is not followed moves with the followed points near it that moved like it
            (:func:`neighbour_motion`), spatial scale this share of the frame's long side (12.8 px at 256, 43 px at
            854); its prediction and, while hidden, its velocity. 0 turns it off. Synthetic AJ / <delta_avg / BADJA
            (window 11 at 256): off 0.335 / 0.463 / 0.497; 0.05 with tau 2: 0.383 / 0.526 / 0.437; 0.05 with tau 1:
            0.379 / 0.532 / 0.526; tau 0.5: 0.374 / 0.519 / 0.514; 0.1 with tau 1: 0.380 / 0.528 / 0.423.
        min_support: total neighbour weight below which a point keeps its own motion model.
        neighbour_predict: use the neighbours' motion for the prediction (not only for the velocity).
        neighbour_tau: velocity scale of the neighbour weights, pixels per frame.
        anchor_ncc: the local track must also agree (NCC at least this) with the point's anchor patch, its
            appearance refreshed every ``anchor_every`` frames it is seen (and on a re-detection): it catches
            the slow slide onto an occluder's edge or the background that the frame-to-frame check passes.
            Synthetic AJ / coarse-grid AJ / BADJA: off 0.379 / 0.227 / 0.526; 0.5 0.388 / 0.270 / 0.504; 0.6
            0.389 / 0.275 / 0.494; 0.8 0.391 / 0.286 / 0.469. -2 turns it off.
        anchor_every: frames between anchor refreshes (5; 10 measured the same).
    """

    window: int = 21
    lines: int = 480
    levels: int = 3
    fb_px: float = 1.0
    agree_cells: float = 1.5
    follow_score: float | None = 0.8
    margin: float = 0.03
    loose_fb_cells: float = 1.0
    min_ncc: float = 0.8
    ncc_window: int | None = None
    momentum: float = 0.5
    occluded_decay: float = 0.8
    widen: float = 0.5
    max_widen: float = 4.0
    far_score: float | None = 0.85
    neighbours: float = 0.05
    min_support: float = 0.01
    neighbour_predict: bool = True
    neighbour_tau: float = 1.0
    anchor_ncc: float = 0.5
    anchor_every: int = 5


def to_gray(frame: np.ndarray | Tensor) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB (array or CPU/GPU tensor) -> ``[H, W]`` uint8 grey (contiguous)."""
    if isinstance(frame, Tensor):
        frame = frame.detach().cpu().numpy()
    frame = np.ascontiguousarray(frame)
    if frame.ndim == 2:
        return frame
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def working_gray(gray: np.ndarray, config: RefineConfig) -> np.ndarray:
    """The grey frame the local track works on: halved (``cv2.pyrDown``) until its short side is at most
    ``config.lines`` (a 720p frame is tracked at 640x360, a 480p one as it is)."""
    while min(gray.shape[:2]) > config.lines and min(gray.shape[:2]) >= 2 * 7:
        gray = cv2.pyrDown(gray)
    return gray


def scaled(config: RefineConfig, gray: np.ndarray) -> RefineConfig:
    """``config`` with its windows scaled to the working frame ``gray``: ``window`` (and ``ncc_window``) are
    sides at ``config.lines`` lines, so a window covers the same share of any frame (21 px at 480 lines, 11 px
    at 256, 15 px on a 720p frame's 360-line working copy); odd, at least 7."""

    def odd(side: int) -> int:
        return max(7, 2 * round((side * min(gray.shape[:2]) / config.lines - 1) / 2) + 1)

    window = odd(config.window)
    ncc = None if config.ncc_window is None else odd(config.ncc_window)
    return RefineConfig(**{**config.__dict__, "window": window, "ncc_window": ncc})


def _criteria() -> tuple[int, int, float]:
    return (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01)


def lk_track(
    previous: np.ndarray, current: np.ndarray, xy: np.ndarray, guess: np.ndarray, config: RefineConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Pyramidal Lucas-Kanade of many points at once, with the forward-backward error.

    Args:
        previous, current: ``[H, W]`` uint8 grey frames.
        xy: ``[N, 2]`` float32 pixel positions in ``previous``.
        guess: ``[N, 2]`` float32 initial positions in ``current`` (the motion prediction).

    Returns:
        ``(xy [N, 2] float32 in current, fb [N] float32)``: ``fb`` is the forward-backward distance in pixels,
        ``inf`` where OpenCV lost the point either way.
    """
    n = len(xy)
    if n == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
    p0 = np.ascontiguousarray(xy, np.float32).reshape(-1, 1, 2)
    p1 = np.ascontiguousarray(guess, np.float32).reshape(-1, 1, 2).copy()
    params = dict(
        winSize=(config.window, config.window),
        maxLevel=config.levels,
        criteria=_criteria(),
        flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
    )
    p1, ok, _ = cv2.calcOpticalFlowPyrLK(previous, current, p0, p1, **params)
    back = p0.copy()
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(current, previous, p1, back, **params)
    fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1).astype(np.float32)
    fb[~(ok.ravel().astype(bool) & ok_back.ravel().astype(bool))] = np.inf
    fb[~np.isfinite(p1.reshape(-1, 2)).all(1)] = np.inf
    return p1.reshape(-1, 2), fb


def lk_from_query(
    query: np.ndarray,
    current: np.ndarray,
    query_xy: np.ndarray,
    candidate: np.ndarray,
    max_shift: float,
    config: RefineConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine re-detected positions below the grid: Lucas-Kanade of the query frame's patch, started there.

    Only one pyramid level above the frame is used, so the refinement stays local to the candidate.

    Args:
        query: ``[H, W]`` uint8 grey query frame; ``current``: the frame being tracked.
        query_xy: ``[N, 2]`` query pixel positions; ``candidate``: ``[N, 2]`` coarse positions in ``current``.
        max_shift: refinements moving further than this (pixels) from the candidate are rejected.

    Returns:
        ``(xy [N, 2], refined [N] bool)``: the refined position where accepted, else the candidate.
    """
    if len(query_xy) == 0:
        return np.zeros((0, 2), np.float32), np.zeros(0, bool)
    local = RefineConfig(**{**config.__dict__, "levels": 1})
    xy, fb = lk_track(query, current, query_xy, candidate, local)
    shift = np.linalg.norm(xy - candidate, axis=1)
    ok = (fb <= 2 * config.fb_px) & (shift <= max_shift)
    return np.where(ok[:, None], xy, candidate).astype(np.float32), ok


def patches(gray: np.ndarray, xy: np.ndarray, size: int) -> np.ndarray:
    """``[N, size, size]`` uint8 patches of ``gray`` centred on ``xy [N, 2]`` (bilinear, border replicated)."""
    n = len(xy)
    if n == 0:
        return np.zeros((0, size, size), np.uint8)
    r = (size - 1) / 2
    offsets = np.linspace(-r, r, size, dtype=np.float32)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    xy = np.asarray(xy, np.float32)
    map_x = (xy[:, 0, None, None] + dx[None]).reshape(n * size, size)
    map_y = (xy[:, 1, None, None] + dy[None]).reshape(n * size, size)
    patch = cv2.remap(gray, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return patch.reshape(n, size, size)


def ncc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised cross-correlation of patch pairs ``[N, S, S]``, float32 in ``[-1, 1]``; 1 where both patches
    are flat (below 2 grey levels of deviation: no texture to disagree on)."""
    n = len(a)
    a = a.reshape(n, -1).astype(np.float32)
    b = b.reshape(n, -1).astype(np.float32)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    va, vb = (a * a).sum(1), (b * b).sum(1)
    out = (a * b).sum(1) / np.sqrt(va * vb + 1e-6)
    flat = (va < a.shape[1] * 4.0) & (vb < a.shape[1] * 4.0)
    return np.where(flat, 1.0, out).astype(np.float32)


def patch_ncc(
    previous: np.ndarray, previous_xy: np.ndarray, current: np.ndarray, current_xy: np.ndarray, size: int
) -> np.ndarray:
    """Photometric agreement: normalised cross-correlation of ``size x size`` patches, sampled bilinearly.

    Args:
        previous, current: ``[H, W]`` uint8 grey frames.
        previous_xy, current_xy: ``[N, 2]`` patch centres (pixels) in each.
        size: patch side in pixels.

    Returns:
        ``[N]`` float32 NCC in ``[-1, 1]``; 1 where both patches are flat (no texture to disagree on).
    """
    if len(previous_xy) == 0:
        return np.zeros(0, np.float32)
    return ncc(patches(previous, previous_xy, size), patches(current, current_xy, size))


def decide(
    lk_ok: Tensor,
    photo_ok: Tensor,
    score_lk: Tensor,
    semantic_ok: Tensor,
    score_semantic: Tensor,
    distance_cells: Tensor,
    follow_score: float,
    agree_cells: float,
    margin: float,
) -> Tensor:
    """The per-point decision from the local and the semantic evidence.

    - FOLLOW: the local track is consistent: Lucas-Kanade found it with a small forward-backward error
      (``lk_ok``) and its patch agrees with the previous frame's (``photo_ok``); the descriptor there still
      resembles the query (``score_lk >= follow_score``); and no confident, consistent semantic match elsewhere
      clearly beats it (it either agrees within ``agree_cells`` or is not better than ``score_lk + margin``).
      The semantic match is not required to agree: a correctly tracked point needs no confirmation from a
      whole-frame search that fails on repeated and noise textures. What an occluder changes is the local
      evidence: the forward-backward error jumps, the patch and the descriptor stop resembling the point.
    - REDETECT: not followed, and the semantic match is confident and forward-backward consistent.
    - OCCLUDED: neither.

    Args:
        lk_ok: ``[N]`` bool, Lucas-Kanade found the point with a small forward-backward error.
        photo_ok: ``[N]`` bool, the patch at the local track agrees with the previous frame's patch.
        score_lk: ``[N]`` cosine similarity of the query descriptor at the local track's position.
        semantic_ok: ``[N]`` bool, semantic score above the matcher's ``min_score`` and forward-backward ok.
        score_semantic: ``[N]`` cosine similarity at the semantic match.
        distance_cells: ``[N]`` distance between the local track and the semantic match, grid cells.

    Returns:
        ``[N]`` int8 decisions.
    """
    contradicted = semantic_ok & (distance_cells > agree_cells) & (score_semantic > score_lk + margin)
    follow = lk_ok & photo_ok & (score_lk >= follow_score) & ~contradicted
    redetect = ~follow & semantic_ok
    out = torch.full(lk_ok.shape, OCCLUDED, dtype=torch.int8)
    out[follow] = FOLLOW
    out[redetect] = REDETECT
    return out


# --------------------------------------------------------------------------- motion of the points not followed


def neighbour_motion(
    lost_xy: Tensor,
    lost_velocity: Tensor,
    ref_xy: Tensor,
    ref_velocity: Tensor,
    ref_motion: Tensor,
    sigma: float,
    tau: float,
    chunk: int = 2048,
) -> tuple[Tensor, Tensor]:
    """Motion of points that are not followed, from the followed points near them that moved like them.

    Weights ``exp(-d^2 / 2 sigma^2) * exp(-|v_i - v_j|^2 / 2 tau^2)`` over the followed points ``j`` (``d``: pixel
    distance, ``v``: velocities before this frame): a hidden point keeps moving with the part it moved with.

    Args:
        lost_xy, lost_velocity: ``[L, 2]`` previous positions and velocities of the points to predict.
        ref_xy, ref_velocity, ref_motion: ``[F, 2]`` the followed points' previous positions, velocities and
            displacements this frame.
        sigma: spatial scale in pixels; tau: velocity scale in pixels per frame.

    Returns:
        ``(motion [L, 2], weight [L])``: the weighted mean displacement and the total weight (0: no support).
    """
    motion = torch.zeros_like(lost_xy)
    weight = torch.zeros(len(lost_xy))
    if len(ref_xy) == 0 or len(lost_xy) == 0:
        return motion, weight
    for start in range(0, len(lost_xy), chunk):
        sl = slice(start, start + chunk)
        d2 = torch.cdist(lost_xy[sl], ref_xy).square()
        v2 = torch.cdist(lost_velocity[sl], ref_velocity).square()
        w = torch.exp(-d2 / (2 * sigma**2) - v2 / (2 * tau**2))
        total = w.sum(1)
        weight[sl] = total
        motion[sl] = (w @ ref_motion) / total.clamp_min(1e-12)[:, None]
    return motion, weight
