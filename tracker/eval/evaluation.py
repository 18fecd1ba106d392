"""Ground truth readers and metrics for real data (BADJA joint tracks on DAVIS frames).

BADJA protocol: query the annotated joints (``BADJA_JOINTS``) visible on the first annotated frame and predict
them on every later annotated frame; a prediction is correct strictly within ``0.2 * sqrt(mask area)`` of the
truth (PCK@0.2), the area taken from that frame's DAVIS mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tracker.errors import TrackerError
from tracker.featurizers import Featurizer

BADJA_NUM_JOINTS = 37
# The joints BADJA annotates: ``SMALJointInfo.annotated_classes`` of benjiebob/BADJA ``code/joint_catalog.py``
# (legs 8-10, 12-14, 18-20, 22-24; neck 15; tail 25, 28, 31; jaw 32, nose 33, ears 35, 36). The other 17 of the
# 37 slots, the chin 34 among them, are not part of the benchmark even where a file marks them visible.
BADJA_JOINTS = (8, 9, 10, 12, 13, 14, 15, 18, 19, 20, 22, 23, 24, 25, 28, 31, 32, 33, 35, 36)


@dataclass(frozen=True)
class BadjaSequence:
    """BADJA annotations scaled to the DAVIS 480p frames.

    Attributes:
        name: sequence name (``dog``).
        frames_dir: folder of the 480p JPEG frames.
        frame_index: ``[A]`` annotated frame indices, ascending.
        joints: ``[A, J, 2]`` pixel xy in the 480p frames.
        visible: ``[A, J]`` bool.
        mask_area: ``[A]`` object mask area in 480p pixels.
    """

    name: str
    frames_dir: Path
    frame_index: np.ndarray
    joints: np.ndarray
    visible: np.ndarray
    mask_area: np.ndarray


def _badja_entry(entry: object, json_path: Path) -> tuple[int, np.ndarray, np.ndarray]:
    """``(frame index, joints [37, 2] row-col, visibility [37])`` of one BADJA record, or a one-line error."""

    def bad(why: str) -> TrackerError:
        return TrackerError(f"{json_path} is not a BADJA annotation file: {why}")

    if not isinstance(entry, dict) or not {"image_path", "joints", "visibility"} <= set(entry):
        raise bad("each entry needs image_path, joints and visibility")
    try:
        index = int(Path(str(entry["image_path"])).stem)
    except ValueError:
        raise bad(f"image_path {entry['image_path']!r} does not end in a frame number") from None
    try:
        rc = np.asarray(entry["joints"], np.float64)
        visibility = np.asarray(entry["visibility"])
    except (TypeError, ValueError):
        raise bad("joints must be [row, col] number pairs") from None
    if rc.shape != (BADJA_NUM_JOINTS, 2) or visibility.shape != (BADJA_NUM_JOINTS,):
        raise bad(f"expected {BADJA_NUM_JOINTS} joints and visibilities, got {rc.shape} and {visibility.shape}")
    if not np.isfinite(rc).all():
        raise bad("joints must be finite numbers")
    return index, rc, visibility.astype(bool)


def load_badja(json_path: str | Path, davis_root: str | Path) -> BadjaSequence:
    """Read a BADJA sequence (joints ``[row, col]`` in 1920x1080, scaled by 480/1080 to the 480p frames).

    All 37 joint slots are kept; :func:`badja_queries` picks the benchmark's :data:`BADJA_JOINTS`.

    Raises:
        TrackerError: an unreadable file, a file that is not BADJA annotations, or a missing DAVIS mask.
    """
    json_path, davis_root = Path(json_path), Path(davis_root)
    try:
        entries = json.loads(json_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TrackerError(f"cannot read BADJA file {json_path}: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise TrackerError(f"{json_path} is not a BADJA annotation file: expected a non-empty list of frames")
    name = json_path.stem
    frames_dir = davis_root / "JPEGImages" / "480p" / name
    masks_dir = davis_root / "Annotations" / "480p" / name
    scale = 480 / 1080
    records = []
    for entry in entries:
        index, rc, visibility = _badja_entry(entry, json_path)
        xy = rc[:, ::-1] * scale
        mask = cv2.imread(str(masks_dir / f"{index:05d}.png"), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise TrackerError(f"missing DAVIS mask {masks_dir / f'{index:05d}.png'}")
        records.append((index, xy, visibility, float((mask > 0).sum())))
    records.sort(key=lambda r: r[0])
    return BadjaSequence(
        name=name,
        frames_dir=frames_dir,
        frame_index=np.array([r[0] for r in records]),
        joints=np.stack([r[1] for r in records]),
        visible=np.stack([r[2] for r in records]),
        mask_area=np.array([r[3] for r in records]),
    )


def davis_sequence(root: str | Path, sequence: str | None) -> tuple[Path, Path]:
    """Frames and masks folders of a DAVIS-layout sequence.

    Tries ``root/{JPEGImages,Annotations}/480p/<sequence>``, then ``root/{JPEGImages,Annotations}/<sequence>``,
    then (no sequence) ``root/{JPEGImages,Annotations}``.
    """
    root = Path(root)
    if not sequence:  # a dataset root, not one sequence's: say which sequences it holds
        held = [
            p.name
            for base in (root / "JPEGImages" / "480p", root / "JPEGImages")
            if base.is_dir() and not any(f.suffix.lower() in (".jpg", ".jpeg", ".png") for f in base.iterdir())
            for p in sorted(base.iterdir())
            if p.is_dir() and p.name != "480p"
        ]
        if held:
            shown = ", ".join(held[:8]) + (f" ... ({len(held)} in all)" if len(held) > 8 else "")
            raise TrackerError(f"{root} holds several sequences: name one with --sequence ({shown})")
    candidates = [("480p", sequence), (sequence,)] if sequence else [()]
    for parts in candidates:
        frames, masks = root.joinpath("JPEGImages", *parts), root.joinpath("Annotations", *parts)
        if frames.is_dir() and masks.is_dir():
            return frames, masks
    where = f"{root}/JPEGImages/[480p/]{sequence}" if sequence else f"{root}/JPEGImages"
    raise TrackerError(f"no DAVIS sequence at {where} (with Annotations beside it)")


def given_masks(masks_dir: Path, frame_hw: tuple[int, int]) -> dict[int, np.ndarray]:
    """The masks a semi-supervised method is given: frame 0's, and those of frames where new objects appear.

    Returns:
        frame index -> ``[H, W]`` uint8 ids (DAVIS-2016 0/255 masks become 0/1).
    """
    from tracker.io.formats import fit_mask, read_mask

    paths = sorted(masks_dir.glob("*.png"))
    if not paths:
        raise TrackerError(f"no masks in {masks_dir}")
    given, seen = {}, set()
    for path in paths:
        labels = read_mask(path)
        ids = set(np.unique(labels).tolist()) - {0}
        if int(path.stem) == 0 or ids - seen:
            given[int(path.stem)] = fit_mask(labels, frame_hw, str(path))
            seen |= ids
    if 0 not in given:
        raise TrackerError(f"{masks_dir} has no mask for frame 0 (00000.png)")
    return given


def pck(pred: np.ndarray, truth: np.ndarray, visible: np.ndarray, area: np.ndarray, alpha: float = 0.2) -> float:
    """BADJA PCK: visible joints strictly within ``alpha * sqrt(area)`` (``[A, J, 2]``, ``[A, J]``, ``[A]``)."""
    from tracker.eval.metrics import pck as pck_within

    return pck_within(pred, truth, visible, alpha * np.sqrt(np.asarray(area, np.float64)))


def badja_queries(seq: BadjaSequence) -> tuple[np.ndarray, int, np.ndarray]:
    """``(xy [J', 2], query frame, joint ids [J'])``: the :data:`BADJA_JOINTS` visible on the first annotated frame.

    Raises:
        TrackerError: none of them is visible there.
    """
    annotated = np.zeros(seq.visible.shape[1], bool)
    annotated[[j for j in BADJA_JOINTS if j < len(annotated)]] = True
    ids = np.flatnonzero(seq.visible[0] & annotated)
    if len(ids) == 0:
        raise TrackerError(f"BADJA {seq.name}: no annotated joint is visible on the first annotated frame")
    return seq.joints[0, ids], int(seq.frame_index[0]), ids


# --------------------------------------------------------------------------- benchmark runners
# Each runner takes ``make_featurizer(frame_hw) -> Featurizer`` and returns a JSON-able dict with the
# per-sequence and mean figures of ours, once per refinement mode (``tracker.tracking.REFINE_MODES`` for points,
# ``tracker.propagation.REFINE_MODES`` for masks; the first is the default), and of the OpenCV baseline, all
# run on the same data in the same call.

LK_BASELINE = "opencv-lk"
DIS_BASELINE = "opencv-dis"


def ours(mode: str | None) -> str:
    """The method name of our tracker with refinement ``mode`` in the reports (``ours (refine=lk)``)."""
    return "ours" if mode is None else f"ours (refine={mode})"


def point_refine_modes() -> tuple[str, ...]:
    """Every point refinement mode, the default first (``tracker.tracking.REFINE_MODES``)."""
    from tracker import tracking

    return tuple(getattr(tracking, "REFINE_MODES", (None,)))


def mask_refine_modes() -> tuple[str | None, ...]:
    """Every mask refinement mode, the default first (``tracker.propagation.REFINE_MODES``)."""
    from tracker import propagation

    return tuple(getattr(propagation, "REFINE_MODES", (None,)))


def _point_tracker(featurizer, match_config, mode: str | None):
    from tracker.tracking import PointTracker

    return (
        PointTracker(featurizer, match_config) if mode is None else PointTracker(featurizer, match_config, refine=mode)
    )


def _track_points(featurizer, match_config, mode, frames, xy, query_t, batch) -> tuple[np.ndarray, np.ndarray]:
    """``(xy [N, T, 2], visible [N, T])`` of our tracker on ``frames`` from queries ``xy [N, 2]`` on ``query_t``."""
    from tracker.tracking import Queries

    tracker = _point_tracker(featurizer, match_config, mode)
    results = list(tracker.track(frames, Queries.create(xy, query_t), batch))
    return np.stack([r.xy.numpy() for r in results], 1), np.stack([r.visible.numpy() for r in results], 1)


def _track_lk(frames, xy, query_t) -> tuple[np.ndarray, np.ndarray]:
    """``(xy [N, T, 2], visible [N, T])`` of the OpenCV pyramidal Lucas-Kanade baseline."""
    from tracker.eval.baselines import lucas_kanade

    out = list(lucas_kanade(frames, np.asarray(xy, np.float32), np.asarray(query_t)))
    return np.stack([p for p, _ in out], 1), np.stack([v for _, v in out], 1)


def _frames(folder: Path) -> list[np.ndarray]:
    from tracker.io.video import open_video

    with open_video(folder) as video:
        return list(video)


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(values)) if values else None  # None (written as null, shown "-"): nothing to score


def _means(per_sequence: dict, methods: list[str], keys: tuple[str, ...]) -> dict:
    return {m: {k: _mean([s[m] for s in per_sequence.values()], k) for k in keys} for m in methods}


def eval_davis(root: str | Path, sequences: list[str] | None, make_featurizer, prop_config, batch: int = 8) -> dict:
    """DAVIS semi-supervised J, F, J&F (official toolkit frames ``[1:-1]``): ours per mode vs OpenCV DIS flow."""
    from dataclasses import replace

    from tracker.eval.baselines import dis_flow_masks
    from tracker.eval.metrics import jaccard_and_f
    from tracker.io.formats import fit_mask, read_mask
    from tracker.propagation import MaskPropagator

    root = Path(root)
    if sequences is None:
        base = root / "JPEGImages" / "480p"
        sequences = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if not sequences:
        raise TrackerError(f"no DAVIS sequences under {root}/JPEGImages/480p")
    modes = mask_refine_modes()
    methods = [ours(m) for m in modes] + [DIS_BASELINE]
    per_sequence = {}
    for name in sequences:
        frames_dir, masks_dir = davis_sequence(root, name)
        frames = _frames(frames_dir)
        frame_hw = frames[0].shape[:2]
        given = given_masks(masks_dir, frame_hw)
        truths = [
            fit_mask(read_mask(p), frame_hw) if (p := masks_dir / f"{i:05d}.png").is_file() else None
            for i in range(len(frames))
        ]
        row = {}
        featurizer = MemoFeaturizer(make_featurizer(frame_hw))
        for mode in modes:
            config = prop_config if mode is None else replace(prop_config, refine=mode)
            propagator = MaskPropagator(featurizer, config)
            labels = [r.labels for r in propagator.propagate(frames, given, batch)]
            row[ours(mode)] = {**_jf(jaccard_and_f(labels, truths, exclude_last=True)), "kept": _kept(labels, truths)}
        dis = list(dis_flow_masks(frames, given[0]))
        row[DIS_BASELINE] = {**_jf(jaccard_and_f(dis, truths, exclude_last=True)), "kept": _kept(dis, truths)}
        per_sequence[name] = row
    return {
        "benchmark": "davis",
        "data": str(root),
        "protocol": "semi-supervised: first-frame mask given; J, F averaged over frames 1..T-2 (DAVIS toolkit)",
        "methods": methods,
        "sequences": per_sequence,
        "mean": _means(per_sequence, methods, ("J", "F", "J&F", "kept")),
    }


def _jf(scores: dict) -> dict:
    return {k: float(scores[k]) for k in ("J", "F", "J&F")}


def _kept(labels: list[np.ndarray], truths: list[np.ndarray | None]) -> float:
    """Share of object pixels a method keeps: predicted over true object area, mean over frames ``1..T-2``."""
    ratios = [
        np.count_nonzero(p) / np.count_nonzero(t)
        for p, t in zip(labels[1:-1], truths[1:-1], strict=True)
        if t is not None and t.any()
    ]
    return float(np.mean(ratios)) if ratios else float("nan")


def eval_badja(root: str | Path, davis_root: str | Path, make_featurizer, match_config, batch: int = 8) -> dict:
    """BADJA PCK@0.2 from the first annotated frame: ours per refinement mode vs OpenCV pyramidal Lucas-Kanade."""
    root = Path(root)
    files = sorted(root.glob("*.json"))
    if not files:
        raise TrackerError(f"no BADJA .json files in {root}")
    modes = point_refine_modes()
    methods = [ours(m) for m in modes] + [LK_BASELINE]
    per_sequence = {}
    for path in files:
        seq = load_badja(path, davis_root)
        xy, query_frame, ids = badja_queries(seq)
        frames = _frames(seq.frames_dir)
        query_t = np.full(len(xy), query_frame)
        featurizer = MemoFeaturizer(make_featurizer(frames[0].shape[:2]))
        tracks = {ours(m): _track_points(featurizer, match_config, m, frames, xy, query_t, batch)[0] for m in modes}
        tracks[LK_BASELINE] = _track_lk(frames, xy, query_t)[0]
        later = seq.frame_index[1:]
        truth, visible, area = seq.joints[1:, ids], seq.visible[1:, ids], seq.mask_area[1:]
        row = {m: {"PCK@0.2": pck(tracks[m][:, later].transpose(1, 0, 2), truth, visible, area)} for m in methods}
        per_sequence[seq.name] = {**row, "joints": int(len(ids)), "annotated_frames": int(len(later))}
    return {
        "benchmark": "badja",
        "data": str(root),
        "protocol": f"those of the {len(BADJA_JOINTS)} BADJA joints visible on the first annotated frame, scored on "
        "later annotated frames; correct strictly within 0.2*sqrt(DAVIS mask area)",
        "methods": methods,
        "sequences": per_sequence,
        "mean": _means(per_sequence, methods, ("PCK@0.2",)),
    }


TAPVID_KEYS = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")


def _tapvid_scores(query_t, gt_raster, occluded, pred_xy, pred_visible, raster_scale) -> dict:
    """TAP-Vid metrics of one method; ``pred_xy`` in our pixel convention, scaled to the 256 raster here."""
    from tracker.eval.metrics import tapvid_metrics

    n = len(gt_raster)
    queries = np.stack([query_t, gt_raster[np.arange(n), query_t, 1], gt_raster[np.arange(n), query_t, 0]], 1)
    return tapvid_metrics(queries, occluded, gt_raster, ~pred_visible, (pred_xy + 0.5) * raster_scale)


def load_tapvid(pkl: str | Path) -> dict:
    """A TAP-Vid pickle as ``{video name: item}`` (a list of items is keyed by position).

    Raises:
        TrackerError: the file cannot be read as a pickle.
    """
    import pickle

    try:
        with open(pkl, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - the user's own benchmark file
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise TrackerError(f"cannot read TAP-Vid pickle {pkl}: {exc}") from None
    return {str(i): v for i, v in enumerate(data)} if isinstance(data, list) else data


def eval_tapvid(pkl: str | Path, make_featurizer, match_config, batch: int = 8) -> dict:
    """TAP-Vid-DAVIS first-query protocol (256x256 raster): ours per refinement mode vs OpenCV Lucas-Kanade.

    The pickle maps video names to ``{"video": [T, H, W, 3] uint8, "points": [N, T, 2] xy in [0, 1],
    "occluded": [N, T] bool}``; each point is queried on its first visible frame.
    """
    data = load_tapvid(pkl)
    modes = point_refine_modes()
    methods = [ours(m) for m in modes] + [LK_BASELINE]
    per_video = {}
    for name, item in data.items():
        video = list(np.asarray(item["video"]))
        points, occluded = np.asarray(item["points"], np.float64), np.asarray(item["occluded"], bool)
        h, w = video[0].shape[:2]
        keep = (~occluded).any(1)
        points, occluded = points[keep], occluded[keep]
        query_t = np.argmax(~occluded, axis=1)
        query_xy = points[np.arange(len(points)), query_t] * [w, h] - 0.5  # our pixel-centre convention
        featurizer = MemoFeaturizer(make_featurizer((h, w)))
        runs = {ours(m): _track_points(featurizer, match_config, m, video, query_xy, query_t, batch) for m in modes}
        runs[LK_BASELINE] = _track_lk(video, query_xy, query_t)
        scale = 256 / np.array([w, h])
        row = {m: _tapvid_scores(query_t, points * 256, occluded, *runs[m], scale) for m in methods}
        per_video[str(name)] = {**row, "points": int(len(points))}
    return {
        "benchmark": "tapvid",
        "data": str(pkl),
        "protocol": "TAP-Vid first-query: each point queried on its first visible frame, 256x256 raster",
        "methods": methods,
        "sequences": per_video,
        "mean": _means(per_video, methods, TAPVID_KEYS),
    }


class MemoFeaturizer(Featurizer):
    """Remembers a featurizer's output per input batch, so that the runs of one video (one per refinement mode)
    compute each frame's features once. Keyed by the bytes of the input frames; make one per video.

    Args:
        base: the featurizer to remember.
    """

    def __init__(self, base: Featurizer):
        super().__init__()
        self.base = base
        self.name, self.input_hw, self.stride = base.name, base.input_hw, base.stride
        self.memo: dict[bytes, object] = {}

    @property
    def device(self):
        return self.base.device

    def geometry(self, frame_h: int, frame_w: int):
        return self.base.geometry(frame_h, frame_w)

    def forward(self, frames):
        import hashlib

        key = hashlib.blake2b(frames.cpu().numpy().tobytes(), digest_size=16).digest() + bytes(
            str(frames.shape), "ascii"
        )
        if key not in self.memo:
            self.memo[key] = self.base(frames)
        return self.memo[key].clone()  # a caller may write into its copy


class PooledFeaturizer(Featurizer):
    """A featurizer whose grid is average-pooled by ``factor`` and re-normalised: a coarser cell, same features.

    Used to give the weight-free SIFT path a ViT-sized grid (a 14-16 px cell) in :func:`eval_synthetic`: pooled
    cell ``j`` averages base cells ``factor * j .. factor * j + factor - 1``, centred at input pixel
    ``base.stride * factor * (j + 0.5) - 0.5``, the project's grid convention at stride ``base.stride * factor``.

    Args:
        base: any featurizer whose grid sides are multiples of ``factor``.
        factor: pooling factor (cells per side).
    """

    def __init__(self, base: Featurizer, factor: int):
        super().__init__()
        bh, bw = base.grid_hw
        if factor < 1 or bh % factor or bw % factor:
            raise ValueError(f"grid {bh}x{bw} is not a multiple of the pooling factor {factor}")
        self.base, self.factor = base, int(factor)
        self.name = f"{base.name}-pool{factor}"
        self.input_hw = base.input_hw
        self.stride = base.stride * self.factor

    @property
    def device(self):
        return self.base.device

    def forward(self, frames):
        import torch.nn.functional as F

        return F.normalize(F.avg_pool2d(self.base(frames), self.factor), dim=1)


def coarse_sift(frame_hw: tuple[int, int], cell: float = 14.0) -> PooledFeaturizer:
    """Dense SIFT pooled 4x4 to a grid of about ``cell`` frame pixels per cell (a ViT/14-like grid)."""
    from tracker.featurizers import SiftFeaturizer

    grid = [max(1, round(side / cell)) for side in frame_hw]
    return PooledFeaturizer(SiftFeaturizer((grid[0] * 16, grid[1] * 16)), 4)


SYNTHETIC_KEYS = (*TAPVID_KEYS, "reacquired_within_3", "error_px", "error_cells")


def synthetic_scores(
    query_frame: np.ndarray,
    tracks: np.ndarray,
    visible: np.ndarray,
    reappear: np.ndarray,
    pred_xy: np.ndarray,
    pred_visible: np.ndarray,
    cell: float | None,
) -> dict:
    """One method's scores on synthetic points (:class:`tracker.synthetic.SyntheticTracks` fields): the TAP-Vid
    metrics, ``reacquired_within_3``, and ``error_px``, the mean error of the points judged visible where they
    truly are (:func:`tracker.eval.metrics.visible_error`), also in grid cells of ``cell`` pixels
    (``error_cells``; None for a method without a grid). None where there is nothing to score."""
    from tracker.eval.metrics import reacquired_share, visible_error

    gt_raster = tracks.astype(np.float64) + 0.5
    scores = _tapvid_scores(query_frame, gt_raster, ~visible, pred_xy, pred_visible, np.ones(2))
    share = reacquired_share(reappear, tracks, visible, pred_xy, pred_visible)
    error = visible_error(query_frame, tracks, visible, pred_xy, pred_visible)
    scores["reacquired_within_3"] = None if np.isnan(share) else share  # None: no reappearance to score
    scores["error_px"] = None if np.isnan(error) else error
    scores["error_cells"] = None if np.isnan(error) or cell is None else error / cell
    return scores


def eval_synthetic(
    make_featurizer,
    match_config,
    batch: int = 8,
    seeds: tuple[int, ...] = (0, 1),
    frames: int = 48,
    size: int = 256,
    coarse_cell: float | None = 14.0,
) -> dict:
    """The synthetic TAP-Vid-style benchmark (:func:`tracker.synthetic.occlusion_video`), first-query protocol.

    Every clip is ``size x size`` (256 as TAP-Vid scores), so pixels are the raster. Methods: ours with the
    given featurizer once per refinement mode, the same with :func:`coarse_sift` (``coarse_cell`` px cells,
    what refinement buys a ViT-sized grid; ``None`` leaves it out), and OpenCV Lucas-Kanade. Besides AJ, <δ_avg
    and OA: ``reacquired_within_3``, the share of reappearances (after an occlusion or an exit) where the point
    is found again (predicted visible within 8 px) on one of the first 3 frames it is back
    (:func:`tracker.eval.metrics.reacquired_share`), and the mean error of the points judged visible, in pixels
    and in the featurizer's grid cells (:func:`synthetic_scores`).
    """
    from tracker.synthetic import occlusion_video

    if frames < 2 or not seeds:
        raise TrackerError(f"the synthetic benchmark needs at least 2 frames and one seed (got {frames}, {seeds})")
    modes = point_refine_modes()
    featurizers = [("", make_featurizer)]
    if coarse_cell:
        featurizers.append((f"coarse {coarse_cell:g}px, ", lambda hw: coarse_sift(hw, coarse_cell)))
    methods = [ours(m) if not tag else f"ours ({tag}refine={m})" for tag, _ in featurizers for m in modes]
    methods.append(LK_BASELINE)
    per_video = {}
    for seed in seeds:
        clip = occlusion_video(seed, frames=frames, size=size)
        video = list(clip.frames)
        query_t, query_xy = clip.query_frame, clip.query_xy
        runs, cells = {}, {LK_BASELINE: None}
        for tag, make in featurizers:
            featurizer = MemoFeaturizer(make((size, size)))
            cell = size / featurizer.geometry(size, size).grid_w  # frame pixels per grid cell
            for m in modes:
                name = ours(m) if not tag else f"ours ({tag}refine={m})"
                runs[name] = _track_points(featurizer, match_config, m, video, query_xy, query_t, batch)
                cells[name] = cell
        runs[LK_BASELINE] = _track_lk(video, query_xy, query_t)
        truth = (clip.query_frame, clip.tracks, clip.visible, clip.reappear)
        row = {m: synthetic_scores(*truth, *runs[m], cells[m]) for m in methods}
        per_video[f"seed{seed}"] = {
            **row,
            "points": int(len(clip.tracks)),
            "reappearances": int(clip.reappear.sum()),
        }
    return {
        "benchmark": "synthetic",
        "data": f"tracker.synthetic.occlusion_video(seed, frames={frames}, size={size}), seeds {list(seeds)}",
        "protocol": "TAP-Vid first-query at 256x256: each point queried on its first visible frame; "
        "reacquired_within_3: share of reappearances found again (visible, < 8 px) within 3 frames; error_px, "
        "error_cells: mean error of the points judged visible where they are, after their query frame, in pixels "
        "and in the method's grid cells",
        "methods": methods,
        "sequences": per_video,
        "mean": _means(per_video, methods, SYNTHETIC_KEYS),
    }


def markdown_table(report: dict) -> str:
    """A markdown table of a runner's report: one row per sequence and method, then the means per method."""
    methods = report.get("methods") or list(report["mean"])
    keys = list(report["mean"][methods[0]])
    header = ["sequence", "method", *keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(report["sequences"].items()) + [("**mean**", report["mean"])]
    for name, row in rows:
        for m in methods:
            cells = ["-" if row[m][k] is None else f"{row[m][k]:.3f}" for k in keys]
            lines.append("| " + " | ".join([name, m, *cells]) + " |")
    return "\n".join(lines) + "\n"
