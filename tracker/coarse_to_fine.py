"""The coarse-to-fine step of :class:`tracker.tracking.PointTracker` (``refine="lk"``) for the started points
of one frame: predict from the motion model, track locally (Lucas-Kanade, :mod:`tracker.refine`), match the
query descriptor around the prediction (widened while a point is lost), decide per point (FOLLOW / REDETECT /
OCCLUDED), refine re-detections below the grid, and re-acquire lost points from their neighbours' motion
(:mod:`tracker.reacquire`). Pure functions of the tracker's settings and state; the state update is the
tracker's.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tracker.geometry import GridGeometry
from tracker.matching import MatchConfig, forward_backward_ok, match, sample_descriptors, similarity, window_soft_argmax
from tracker.reacquire import ReacquireConfig, Sightings, patch_side, reacquire_lost
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
)
from tracker.refine import ncc as ncc_of
from tracker.track_types import Queries, TrackState


def widened_search(
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


def fb_ok(
    config: MatchConfig,
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
        ok[sel] = forward_backward_ok(uv[sel], features, query_features[qf], query_uv, config)
    return ok


def coarse_to_fine(
    config: MatchConfig,
    refine_config: RefineConfig,
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
    mc, g, q = config, state.geometry, state.queries
    rc = scaled(refine_config, gray) if gray is not None else refine_config
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
            sem_uv[wide], sem_score[wide] = widened_search(
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
        semantic_ok[check] = fb_ok(mc, sem_uv[check], features, active[check.cpu()], q, query_features, g)
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


def sightings_for(config: ReacquireConfig, sightings: Sightings | None, n: int, side: int) -> Sightings:
    """The sightings, grown to ``n`` points (new, or with a new template side when the frame size changed)."""
    p = patch_side(side, config)
    if sightings is None or sightings.patch.shape[1] != p:
        return Sightings.empty(n, p, config.history)
    return sightings.grow(n)


def reacquire_step(
    refine_config: RefineConfig,
    reacquire_config: ReacquireConfig,
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
    rc = reacquire_config
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
        (lambda c: c.ncc_window or c.window)(scaled(refine_config, gray)),
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
