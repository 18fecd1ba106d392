"""Benchmark metrics: DAVIS J/F (region and boundary), keypoint PCK and the TAP-Vid point metrics.

Pure numpy (plus ``cv2.dilate`` for the boundary tolerance); no I/O, no torch. The DAVIS measures mirror the
official toolkit, davisvideochallenge/davis2017-evaluation ``davis2017/metrics.py`` (``db_eval_iou``,
``db_eval_boundary`` / ``f_measure``, ``_seg2bmap``) and ``davis2017/evaluation.py`` (semi-supervised
protocol); the TAP-Vid measures mirror ``compute_tapvid_metrics`` of google-deepmind/tapnet
``tapnet/tapvid/evaluation_datasets.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

TAPVID_THRESHOLDS = (1, 2, 4, 8, 16)
DAVIS_VOID_LABEL = 255


def region_jaccard(pred: np.ndarray, truth: np.ndarray) -> float:
    """DAVIS region similarity J: intersection over union of two masks.

    Mirrors ``db_eval_iou`` of davis2017-evaluation (``davis2017/metrics.py``): ``|P & T| / |P | T|``, and 1.0
    when both masks are empty.

    Args:
        pred: ``[H, W]`` predicted mask (any dtype; non-zero is foreground).
        truth: ``[H, W]`` ground-truth mask, same shape.

    Returns:
        J in ``[0, 1]``.
    """
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: pred {pred.shape} vs truth {truth.shape}")
    union = int(np.count_nonzero(pred | truth))
    if union == 0:
        return 1.0
    return float(np.count_nonzero(pred & truth) / union)


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary map of a mask (the DAVIS ``_seg2bmap``, width/height unchanged).

    A pixel is on the boundary when it differs from its right (east), bottom (south) or bottom-right
    (south-east) neighbour, neighbours outside the image counting as background; on the last row only the east
    neighbour is compared, on the last column only the south one, and the bottom-right pixel is never a
    boundary. This is the toolkit's pixel-for-pixel rule (boundaries offset half a pixel towards the origin).

    Args:
        seg: ``[H, W]`` mask (non-zero is foreground).

    Returns:
        ``[H, W]`` bool boundary map.
    """
    seg = np.asarray(seg).astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = False
    return b


def _disk(radius: float) -> np.ndarray:
    """Disk structuring element, the same array as ``skimage.morphology.disk(radius)``.

    skimage samples ``x^2 + y^2 <= r^2`` on the grid ``np.arange(-r, r + 1)`` along each axis, so for an integer
    ``r`` the disk is ``[2r+1, 2r+1]`` centred on a pixel, and for a non-integer ``r`` the grid starts at ``-r``
    itself (``r = 2.5``: offsets -2.5, -1.5, ..., 2.5, a ``[6, 6]`` disk centred between pixels). The DAVIS
    toolkit passes this array to ``cv2.dilate`` (anchor at index ``size // 2``), and so does :func:`boundary_f`.

    Args:
        radius: disk radius in pixels (``>= 0``).

    Returns:
        ``[S, S]`` uint8 disk, ``S = len(np.arange(-radius, radius + 1))``.
    """
    grid = np.arange(-radius, radius + 1)
    return ((grid[None, :] ** 2 + grid[:, None] ** 2) <= radius**2).astype(np.uint8)


def boundary_f(pred: np.ndarray, truth: np.ndarray, bound_th: float = 0.008) -> float:
    """DAVIS contour accuracy F: F-measure of the mask boundaries with a distance tolerance.

    Mirrors ``f_measure`` (called by ``db_eval_boundary``) of davis2017-evaluation ``davis2017/metrics.py``:
    boundaries from ``_seg2bmap``; tolerance ``bound_pix = bound_th`` if ``bound_th >= 1`` else
    ``ceil(bound_th * ||(H, W)||)`` (8 px for 480x854 DAVIS frames); each boundary is dilated with
    ``cv2.dilate`` by a disk of radius ``bound_pix`` built exactly as ``skimage.morphology.disk`` (the
    toolkit's structuring element; ``cv2.MORPH_ELLIPSE`` differs from it for some radii, so it is not used);
    precision = predicted boundary pixels within the dilated true boundary / predicted boundary pixels, recall
    the converse, ``F = 2PR / (P + R)``. Edge cases as the toolkit: both boundaries empty -> P = R = 1, F = 1;
    exactly one empty -> F = 0.

    Args:
        pred: ``[H, W]`` predicted mask (non-zero is foreground).
        truth: ``[H, W]`` ground-truth mask, same shape.
        bound_th: tolerance, a fraction of the image diagonal if ``< 1``, else pixels.

    Returns:
        F in ``[0, 1]``.
    """
    pred, truth = np.asarray(pred).astype(bool), np.asarray(truth).astype(bool)
    if pred.shape != truth.shape or pred.ndim != 2:
        raise ValueError(f"expected two [H, W] masks of one shape, got {pred.shape} and {truth.shape}")
    # davis2017-evaluation/davis2017/metrics.py::f_measure
    bound_pix = bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(pred.shape))
    fg_boundary = _seg2bmap(pred)
    gt_boundary = _seg2bmap(truth)
    kernel = _disk(bound_pix)
    fg_dil = cv2.dilate(fg_boundary.astype(np.uint8), kernel).astype(bool)
    gt_dil = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
    n_fg = int(np.count_nonzero(fg_boundary))
    n_gt = int(np.count_nonzero(gt_boundary))
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = np.count_nonzero(fg_boundary & gt_dil) / n_fg
        recall = np.count_nonzero(gt_boundary & fg_dil) / n_gt
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def _label_map(mask: np.ndarray | None) -> np.ndarray | None:
    """Integer label map of a frame (a bool mask becomes ids {0, 1}); ``None`` stays ``None``."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    return mask.astype(np.int64)


def jaccard_and_f(
    preds: Sequence[np.ndarray | None] | np.ndarray,
    truths: Sequence[np.ndarray | None] | np.ndarray,
    objects: list[int] | None = None,
    bound_th: float = 0.008,
    exclude_last: bool = True,
) -> dict:
    """DAVIS semi-supervised J, F and J&F of one sequence, per object and averaged over objects.

    Protocol of davis2017-evaluation ``davis2017/evaluation.py``: frame 0 (the given mask) is not scored;
    for each object id, J and F are computed on every scored frame (a frame where the object is absent in
    both prediction and truth scores 1) and averaged over frames; the sequence J (F) is the mean of the
    per-object means, ``J&F = (J + F) / 2``. As in the toolkit's reader, the void label 255 in the truth is
    background. As the toolkit (``all_gt_masks[:, 1:-1]``), the last frame is not scored either, unless
    ``exclude_last=False``. Differences from the toolkit, on purpose: objects are the ids present in the truth
    of any frame (the toolkit takes ``1..max`` of the first frame), and frames whose truth is ``None`` are
    skipped (sparse annotations).

    Args:
        preds: ``[T, H, W]`` predicted label maps (0 background, k object k; a bool mask is object 1).
        truths: ``[T, H, W]`` ground-truth label maps, ``None`` for frames without annotation.
        objects: object ids to score; default every id > 0 (and != 255) present in ``truths``.
        bound_th: boundary tolerance passed to :func:`boundary_f`.
        exclude_last: leave out the last frame, as the official toolkit does (default); ``False`` scores it.

    Returns:
        ``{"J": float, "F": float, "J&F": float, "per_object": {id: {"J": float, "F": float}}}``; means are
        NaN when there is no object or no scored frame.
    """
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predicted frames for {len(truths)} ground-truth frames")
    truth_maps = [_label_map(t) for t in truths]
    truth_maps = [None if t is None else np.where(t == DAVIS_VOID_LABEL, 0, t) for t in truth_maps]
    if objects is None:
        ids: set[int] = set()
        for t in truth_maps:
            if t is not None:
                ids.update(int(v) for v in np.unique(t))
        objects = sorted(ids - {0})
    last = len(truths) - 1 if exclude_last else len(truths)
    scored = [i for i in range(1, last) if truth_maps[i] is not None]
    per_object: dict[int, dict[str, float]] = {}
    for obj in objects:
        js, fs = [], []
        for i in scored:
            pred = _label_map(preds[i])
            if pred is None:
                raise ValueError(f"no prediction for annotated frame {i}")
            p, t = pred == obj, truth_maps[i] == obj
            js.append(region_jaccard(p, t))
            fs.append(boundary_f(p, t, bound_th))
        per_object[int(obj)] = {
            "J": float(np.mean(js)) if js else math.nan,
            "F": float(np.mean(fs)) if fs else math.nan,
        }
    j = float(np.mean([v["J"] for v in per_object.values()])) if per_object else math.nan
    f = float(np.mean([v["F"] for v in per_object.values()])) if per_object else math.nan
    return {"J": j, "F": f, "J&F": (j + f) / 2, "per_object": per_object}


def pck(pred: np.ndarray, truth: np.ndarray, visible: np.ndarray, threshold: np.ndarray | float) -> float:
    """Percentage of correct keypoints with a pixel threshold.

    A visible ground-truth point is correct when ``||pred - truth|| < threshold``, strictly below, as PIPs'
    BADJA evaluation and TAP-Vid's ``pts_within`` count it; NaN predictions count as wrong, invisible points
    are ignored. For BADJA the caller passes ``0.2 * sqrt(mask area)`` per annotated frame.

    Args:
        pred: ``[A, J, 2]`` predicted xy (NaN for no prediction).
        truth: ``[A, J, 2]`` ground-truth xy.
        visible: ``[A, J]`` bool, which ground-truth points are scored.
        threshold: ``[A]`` per-frame pixel threshold, or a scalar.

    Returns:
        Fraction of visible points that are correct.
    """
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    visible = np.asarray(visible, bool)
    if pred.shape != truth.shape or pred.shape[:-1] != visible.shape:
        raise ValueError(f"shape mismatch: pred {pred.shape}, truth {truth.shape}, visible {visible.shape}")
    if not visible.any():
        raise ValueError("no visible points to score")
    thr = np.asarray(threshold, np.float64)
    thr = thr[:, None] if thr.ndim == 1 else thr
    dist = np.linalg.norm(pred - truth, axis=-1)
    correct = np.nan_to_num(dist, nan=np.inf) < thr
    return float(correct[visible].mean())


def tapvid_metrics(
    query_points: np.ndarray,
    gt_occluded: np.ndarray,
    gt_tracks: np.ndarray,
    pred_occluded: np.ndarray,
    pred_tracks: np.ndarray,
    query_mode: str = "first",
) -> dict[str, float]:
    """TAP-Vid metrics of one video, mirroring tapnet's ``compute_tapvid_metrics``.

    Source: google-deepmind/tapnet ``tapnet/tapvid/evaluation_datasets.py`` (per-video metrics, i.e.
    ``get_trackwise_metrics=False``), applied to a single video: the inputs carry no batch dimension and the
    official code's per-video sums over (tracks, frames) are done here over ``[N, T]``. The benchmark number
    is the plain mean of these per-video values. Evaluated entries exclude each track's query frame and, for
    ``query_mode="first"``, the frames before it (``"strided"`` keeps them). A point is within a threshold
    when its squared distance is strictly below ``thr**2`` (NaN predictions are never within). Coordinates
    must be in the 256x256 benchmark raster (the caller rescales).

    Args:
        query_points: ``[N, 3]`` queries ``(t, y, x)``; ``t`` is rounded to the frame index.
        gt_occluded: ``[N, T]`` bool, True where the ground truth is occluded.
        gt_tracks: ``[N, T, 2]`` ground-truth ``(x, y)``.
        pred_occluded: ``[N, T]`` bool predicted occlusion.
        pred_tracks: ``[N, T, 2]`` predicted ``(x, y)``.
        query_mode: ``"first"`` or ``"strided"``.

    Returns:
        ``occlusion_accuracy``, ``pts_within_{1,2,4,8,16}``, ``jaccard_{1,2,4,8,16}``,
        ``average_pts_within_thresh`` (<delta^x_avg) and ``average_jaccard`` as floats (NaN where a
        denominator is zero, as the official code yields).
    """
    query_points = np.asarray(query_points)
    gt_occluded = np.asarray(gt_occluded, bool)
    pred_occluded = np.asarray(pred_occluded, bool)
    gt_tracks = np.asarray(gt_tracks, np.float64)
    pred_tracks = np.asarray(pred_tracks, np.float64)
    n, t = gt_occluded.shape
    if query_points.shape != (n, 3) or gt_tracks.shape != (n, t, 2):
        raise ValueError(f"bad shapes: query_points {query_points.shape}, gt_tracks {gt_tracks.shape}")
    if pred_occluded.shape != (n, t) or pred_tracks.shape != (n, t, 2):
        raise ValueError(f"bad shapes: pred_occluded {pred_occluded.shape}, pred_tracks {pred_tracks.shape}")

    eye = np.eye(t, dtype=np.int32)
    if query_mode == "first":
        query_frame_to_eval_frames = np.cumsum(eye, axis=1) - eye  # frames strictly after the query
    elif query_mode == "strided":
        query_frame_to_eval_frames = 1 - eye  # every frame but the query
    else:
        raise ValueError("Unknown query mode " + query_mode)
    query_frame = np.round(query_points[:, 0]).astype(np.int32)
    evaluation_points = query_frame_to_eval_frames[query_frame] > 0  # [N, T]

    metrics: dict[str, float] = {}
    with np.errstate(divide="ignore", invalid="ignore"):
        occ_acc = np.sum((pred_occluded == gt_occluded) & evaluation_points) / np.sum(evaluation_points)
        metrics["occlusion_accuracy"] = float(occ_acc)
        visible = ~gt_occluded
        pred_visible = ~pred_occluded
        all_frac_within, all_jaccard = [], []
        for thresh in TAPVID_THRESHOLDS:
            within_dist = np.sum(np.square(pred_tracks - gt_tracks), axis=-1) < np.square(thresh)
            is_correct = within_dist & visible
            count_correct = np.sum(is_correct & evaluation_points)
            count_visible_points = np.sum(visible & evaluation_points)
            frac_correct = float(count_correct / count_visible_points)
            metrics[f"pts_within_{thresh}"] = frac_correct
            all_frac_within.append(frac_correct)

            true_positives = np.sum(is_correct & pred_visible & evaluation_points)
            gt_positives = np.sum(visible & evaluation_points)
            false_positives = (~visible & pred_visible) | (~within_dist & pred_visible)
            false_positives = np.sum(false_positives & evaluation_points)
            jaccard = float(true_positives / (gt_positives + false_positives))
            metrics[f"jaccard_{thresh}"] = jaccard
            all_jaccard.append(jaccard)
    metrics["average_jaccard"] = float(np.mean(all_jaccard))
    metrics["average_pts_within_thresh"] = float(np.mean(all_frac_within))
    return metrics


def reacquired_share(
    reappear: np.ndarray,
    gt_tracks: np.ndarray,
    gt_visible: np.ndarray,
    pred_tracks: np.ndarray,
    pred_visible: np.ndarray,
    frames: int = 3,
    threshold: float = 8.0,
) -> float:
    """Share of reappearances where the point is found again within ``frames`` frames.

    A reappearance is a frame ``t`` where a point is visible again after hidden frames (``reappear``, see
    :class:`tracker.synthetic.SyntheticTracks`); only those with ``frames`` frames left in the video count. It
    is re-acquired when on one of the frames ``t .. t + frames - 1`` where the truth is visible, the prediction
    is marked visible and strictly within ``threshold`` pixels of the truth.

    Args:
        reappear: ``[N, T]`` bool reappearance frames.
        gt_tracks: ``[N, T, 2]`` true xy.
        gt_visible: ``[N, T]`` bool.
        pred_tracks: ``[N, T, 2]`` predicted xy (NaN never within).
        pred_visible: ``[N, T]`` bool.
        frames: the window, in frames, starting at the reappearance.
        threshold: pixels.

    Returns:
        The share in ``[0, 1]``; NaN when there is no reappearance to score.
    """
    reappear = np.asarray(reappear, bool)
    n, t = reappear.shape
    dist = np.linalg.norm(np.asarray(pred_tracks, np.float64) - np.asarray(gt_tracks, np.float64), axis=-1)
    found = (
        np.asarray(pred_visible, bool) & np.asarray(gt_visible, bool) & (np.nan_to_num(dist, nan=np.inf) < threshold)
    )
    events = [(i, j) for i, j in zip(*np.nonzero(reappear), strict=True) if j + frames <= t]
    if not events:
        return math.nan
    return float(np.mean([found[i, j : j + frames].any() for i, j in events]))


def visible_error(
    query_frame: np.ndarray,
    gt_tracks: np.ndarray,
    gt_visible: np.ndarray,
    pred_tracks: np.ndarray,
    pred_visible: np.ndarray,
) -> float:
    """Mean distance (pixels) between prediction and truth where both say the point is visible, query frames
    left out (the first-query protocol scores the frames after it; the query frame is given).

    Args:
        query_frame: ``[N]`` each point's query frame.
        gt_tracks, pred_tracks: ``[N, T, 2]`` xy; gt_visible, pred_visible: ``[N, T]`` bool.

    Returns:
        The mean distance; NaN when no point-frame is both.
    """
    after = np.arange(np.shape(gt_visible)[1])[None] > np.asarray(query_frame)[:, None]
    both = np.asarray(gt_visible, bool) & np.asarray(pred_visible, bool) & after
    if not both.any():
        return math.nan
    dist = np.linalg.norm(np.asarray(pred_tracks, np.float64) - np.asarray(gt_tracks, np.float64), axis=-1)
    return float(dist[both].mean())
