"""``track eval`` for a model with a point tracker of its own (``hedlin``, :mod:`tracker.hedlin_tracker`).

Hedlin et al. has no feature grid: its own point tracker runs in place of ours, one method row beside the same
OpenCV baseline on the same points. Our refinement modes, and the synthetic benchmark's coarse-grid rows (ours with
pooled sift), do not apply to it, so these runners leave them out. ``make_tracker(frame_hw)`` returns an object with
``track(frames, queries) -> TrackResult per frame``. The data readers, metrics and baselines are those of
:mod:`tracker.eval.evaluation`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.eval.evaluation import (
    BADJA_JOINTS,
    LK_BASELINE,
    SYNTHETIC_KEYS,
    TAPVID_KEYS,
    _frames,
    _means,
    _tapvid_scores,
    _track_lk,
    badja_queries,
    load_badja,
    load_tapvid,
    pck,
    synthetic_scores,
)


def own_tracker_method(name: str) -> str:
    """The method name of a tracker of its own in the reports (``ours (hedlin)``)."""
    return f"ours ({name})"


def spread(n: int, max_points: int | None) -> np.ndarray:
    """Indices of at most ``max_points`` of ``n`` points, evenly spread over their order (all when None)."""
    if max_points is None or max_points >= n:
        return np.arange(n)
    if max_points < 1:
        raise TrackerError(f"--max-points must be at least 1, got {max_points}")
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))


def _track_own(tracker, frames, xy, query_t) -> tuple[np.ndarray, np.ndarray]:
    """``(xy [N, T, 2], visible [N, T])`` of a tracker of its own from queries ``xy [N, 2]`` on ``query_t``."""
    from tracker.tracking import Queries

    results = list(tracker.track(frames, Queries.create(xy, np.asarray(query_t))))
    return np.stack([r.xy.numpy() for r in results], 1), np.stack([r.visible.numpy() for r in results], 1)


def _own_protocol(protocol: str, method: str, max_points: int | None, also: str = "") -> str:
    few = f"at most {max_points} points per sequence (--max-points, evenly spread over the query list)"
    return (
        f"{protocol}; {method}: the model's own point tracker in place of ours (it has no feature grid), so our "
        f"refinement on/off rows do not apply{also}; {few if max_points else 'every point'}, the same for every "
        "method"
    )


def eval_badja_own(root: str | Path, davis_root: str | Path, make_tracker, name: str, max_points=None) -> dict:
    """:func:`eval_badja` with a tracker of its own (``name``) in place of ours, on at most ``max_points`` joints."""
    root = Path(root)
    files = sorted(root.glob("*.json"))
    if not files:
        raise TrackerError(f"no BADJA .json files in {root}")
    own = own_tracker_method(name)
    methods = [own, LK_BASELINE]
    per_sequence = {}
    for path in files:
        seq = load_badja(path, davis_root)
        xy, query_frame, ids = badja_queries(seq)
        keep = spread(len(ids), max_points)
        xy, ids = xy[keep], ids[keep]
        frames = _frames(seq.frames_dir)
        query_t = np.full(len(xy), query_frame)
        tracks = {own: _track_own(make_tracker(frames[0].shape[:2]), frames, xy, query_t)[0]}
        tracks[LK_BASELINE] = _track_lk(frames, xy, query_t)[0]
        later = seq.frame_index[1:]
        truth, visible, area = seq.joints[1:, ids], seq.visible[1:, ids], seq.mask_area[1:]
        row = {m: {"PCK@0.2": pck(tracks[m][:, later].transpose(1, 0, 2), truth, visible, area)} for m in methods}
        per_sequence[seq.name] = {**row, "joints": int(len(ids)), "annotated_frames": int(len(later))}
    protocol = (
        f"those of the {len(BADJA_JOINTS)} BADJA joints visible on the first annotated frame, scored on later "
        "annotated frames; correct strictly within 0.2*sqrt(DAVIS mask area)"
    )
    return {
        "benchmark": "badja",
        "data": str(root),
        "protocol": _own_protocol(protocol, own, max_points),
        "methods": methods,
        "sequences": per_sequence,
        "mean": _means(per_sequence, methods, ("PCK@0.2",)),
    }


def eval_tapvid_own(pkl: str | Path, make_tracker, name: str, max_points=None) -> dict:
    """:func:`eval_tapvid` with a tracker of its own (``name``) in place of ours, on at most ``max_points`` points
    per video."""
    data = load_tapvid(pkl)
    own = own_tracker_method(name)
    methods = [own, LK_BASELINE]
    per_video = {}
    for key, item in data.items():
        video = list(np.asarray(item["video"]))
        points, occluded = np.asarray(item["points"], np.float64), np.asarray(item["occluded"], bool)
        h, w = video[0].shape[:2]
        seen = np.flatnonzero((~occluded).any(1))
        keep = seen[spread(len(seen), max_points)]
        points, occluded = points[keep], occluded[keep]
        query_t = np.argmax(~occluded, axis=1)
        query_xy = points[np.arange(len(points)), query_t] * [w, h] - 0.5  # our pixel-centre convention
        runs = {own: _track_own(make_tracker((h, w)), video, query_xy, query_t)}
        runs[LK_BASELINE] = _track_lk(video, query_xy, query_t)
        scale = 256 / np.array([w, h])
        row = {m: _tapvid_scores(query_t, points * 256, occluded, *runs[m], scale) for m in methods}
        per_video[str(key)] = {**row, "points": int(len(points))}
    protocol = "TAP-Vid first-query: each point queried on its first visible frame, 256x256 raster"
    return {
        "benchmark": "tapvid",
        "data": str(pkl),
        "protocol": _own_protocol(protocol, own, max_points),
        "methods": methods,
        "sequences": per_video,
        "mean": _means(per_video, methods, TAPVID_KEYS),
    }


def eval_synthetic_own(
    make_tracker, name: str, seeds: tuple[int, ...] = (0, 1), frames: int = 48, size: int = 256, max_points=None
) -> dict:
    """:func:`eval_synthetic` with a tracker of its own (``name``) in place of ours (no coarse-grid rows), on at
    most ``max_points`` points per clip."""
    from tracker.synthetic import occlusion_video

    if frames < 2 or not seeds:
        raise TrackerError(f"the synthetic benchmark needs at least 2 frames and one seed (got {frames}, {seeds})")
    own = own_tracker_method(name)
    methods = [own, LK_BASELINE]
    per_video = {}
    for seed in seeds:
        clip = occlusion_video(seed, frames=frames, size=size)
        keep = spread(len(clip.tracks), max_points)
        query_t, tracks, visible, reappear = (
            a[keep] for a in (clip.query_frame, clip.tracks, clip.visible, clip.reappear)
        )
        query_xy = tracks[np.arange(len(keep)), query_t]
        video = list(clip.frames)
        runs = {own: _track_own(make_tracker((size, size)), video, query_xy, query_t)}
        runs[LK_BASELINE] = _track_lk(video, query_xy, query_t)
        truth = (query_t, tracks, visible, reappear)
        row = {m: synthetic_scores(*truth, *runs[m], None) for m in methods}  # error_cells: no grid of ours
        per_video[f"seed{seed}"] = {**row, "points": int(len(keep)), "reappearances": int(reappear.sum())}
    protocol = (
        "TAP-Vid first-query at 256x256: each point queried on its first visible frame; reacquired_within_3: "
        "share of reappearances found again (visible, < 8 px) within 3 frames; error_px: mean error of the points "
        "judged visible where they are, after their query frame"
    )
    return {
        "benchmark": "synthetic",
        "data": f"tracker.synthetic.occlusion_video(seed, frames={frames}, size={size}), seeds {list(seeds)}",
        "protocol": _own_protocol(protocol, own, max_points, " (nor the coarse-grid rows: ours with pooled sift)"),
        "methods": methods,
        "sequences": per_video,
        "mean": _means(per_video, methods, SYNTHETIC_KEYS),
    }
