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
# per-sequence and mean figures of ours and of the OpenCV baseline run on the same data.


def _frames(folder: Path) -> list[np.ndarray]:
    from tracker.io.video import open_video

    with open_video(folder) as video:
        return list(video)


def _mean(rows: list[dict], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None and np.isfinite(r[key])]
    return float(np.mean(values)) if values else float("nan")


def eval_davis(root: str | Path, sequences: list[str] | None, make_featurizer, prop_config, batch: int = 8) -> dict:
    """DAVIS semi-supervised J, F, J&F (official toolkit frames ``[1:-1]``): ours vs OpenCV DIS flow."""
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
        propagator = MaskPropagator(make_featurizer(frame_hw), prop_config)
        ours = [r.labels for r in propagator.propagate(frames, given, batch)]
        theirs = list(dis_flow_masks(frames, given[0]))
        per_sequence[name] = {
            "ours": _jf(jaccard_and_f(ours, truths, exclude_last=True)),
            "opencv-dis": _jf(jaccard_and_f(theirs, truths, exclude_last=True)),
        }
    return {
        "benchmark": "davis",
        "data": str(root),
        "protocol": "semi-supervised: first-frame mask given; J, F averaged over frames 1..T-2 (DAVIS toolkit)",
        "sequences": per_sequence,
        "mean": {
            m: {k: _mean([s[m] for s in per_sequence.values()], k) for k in ("J", "F", "J&F")}
            for m in ("ours", "opencv-dis")
        },
    }


def _jf(scores: dict) -> dict:
    return {k: float(scores[k]) for k in ("J", "F", "J&F")}


def eval_badja(root: str | Path, davis_root: str | Path, make_featurizer, match_config, batch: int = 8) -> dict:
    """BADJA PCK@0.2 from the first annotated frame: ours vs OpenCV pyramidal Lucas-Kanade."""
    from tracker.eval.baselines import lucas_kanade
    from tracker.tracking import PointTracker, Queries

    root = Path(root)
    files = sorted(root.glob("*.json"))
    if not files:
        raise TrackerError(f"no BADJA .json files in {root}")
    per_sequence = {}
    for path in files:
        seq = load_badja(path, davis_root)
        xy, query_frame, ids = badja_queries(seq)
        frames = _frames(seq.frames_dir)
        tracker = PointTracker(make_featurizer(frames[0].shape[:2]), match_config)
        ours = [r.xy.numpy() for r in tracker.track(frames, Queries.create(xy, query_frame), batch)]
        theirs = [p for p, _ in lucas_kanade(frames, xy.astype(np.float32), np.full(len(xy), query_frame))]
        later = seq.frame_index[1:]
        truth, visible, area = seq.joints[1:, ids], seq.visible[1:, ids], seq.mask_area[1:]
        per_sequence[seq.name] = {
            "ours": {"PCK@0.2": pck(np.stack([ours[i] for i in later]), truth, visible, area)},
            "opencv-lk": {"PCK@0.2": pck(np.stack([theirs[i] for i in later]), truth, visible, area)},
            "joints": int(len(ids)),
            "annotated_frames": int(len(later)),
        }
    return {
        "benchmark": "badja",
        "data": str(root),
        "protocol": "joints visible on the first annotated frame, scored on later annotated frames; "
        "correct within 0.2*sqrt(DAVIS mask area)",
        "sequences": per_sequence,
        "mean": {
            m: {"PCK@0.2": _mean([s[m] for s in per_sequence.values()], "PCK@0.2")} for m in ("ours", "opencv-lk")
        },
    }


def eval_tapvid(pkl: str | Path, make_featurizer, match_config, batch: int = 8) -> dict:
    """TAP-Vid-DAVIS first-query protocol (256x256 raster): ours vs OpenCV pyramidal Lucas-Kanade.

    The pickle maps video names to ``{"video": [T, H, W, 3] uint8, "points": [N, T, 2] xy in [0, 1],
    "occluded": [N, T] bool}``; each point is queried on its first visible frame.
    """
    import pickle

    from tracker.eval.baselines import lucas_kanade
    from tracker.eval.metrics import tapvid_metrics
    from tracker.tracking import PointTracker, Queries

    try:
        with open(pkl, "rb") as f:
            data = pickle.load(f)  # noqa: S301 - the user's own benchmark file
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise TrackerError(f"cannot read TAP-Vid pickle {pkl}: {exc}") from None
    if isinstance(data, list):
        data = {str(i): v for i, v in enumerate(data)}
    per_video = {}
    for name, item in data.items():
        video = np.asarray(item["video"])
        points, occluded = np.asarray(item["points"], np.float64), np.asarray(item["occluded"], bool)
        n, t = occluded.shape
        h, w = video.shape[1:3]
        keep = (~occluded).any(1)
        points, occluded = points[keep], occluded[keep]
        query_t = np.argmax(~occluded, axis=1)
        query_xy = points[np.arange(len(points)), query_t] * [w, h] - 0.5  # our pixel-centre convention
        tracker = PointTracker(make_featurizer((h, w)), match_config)
        results = list(tracker.track(list(video), Queries.create(query_xy, query_t), batch))
        ours_xy = np.stack([r.xy.numpy() for r in results], 1)
        ours_vis = np.stack([r.visible.numpy() for r in results], 1)
        lk = list(lucas_kanade(list(video), query_xy.astype(np.float32), query_t))
        lk_xy, lk_vis = np.stack([p for p, _ in lk], 1), np.stack([v for _, v in lk], 1)
        scale = 256 / np.array([w, h])
        gt = points * 256
        queries = np.stack([query_t, gt[np.arange(len(gt)), query_t, 1], gt[np.arange(len(gt)), query_t, 0]], 1)
        per_video[str(name)] = {
            "ours": tapvid_metrics(queries, occluded, gt, ~ours_vis, (ours_xy + 0.5) * scale),
            "opencv-lk": tapvid_metrics(queries, occluded, gt, ~lk_vis, (lk_xy + 0.5) * scale),
            "points": int(len(points)),
        }
    keys = ("average_jaccard", "average_pts_within_thresh", "occlusion_accuracy")
    return {
        "benchmark": "tapvid",
        "data": str(pkl),
        "protocol": "TAP-Vid first-query: each point queried on its first visible frame, 256x256 raster",
        "sequences": per_video,
        "mean": {m: {k: _mean([v[m] for v in per_video.values()], k) for k in keys} for m in ("ours", "opencv-lk")},
    }


def markdown_table(report: dict) -> str:
    """A markdown table of a runner's report: one row per sequence and the mean, ours beside the baseline."""
    methods = list(report["mean"])
    keys = list(report["mean"][methods[0]])
    header = ["sequence"] + [f"{m} {k}" for m in methods for k in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = list(report["sequences"].items()) + [("**mean**", report["mean"])]
    for name, row in rows:
        cells = [f"{row[m][k]:.3f}" for m in methods for k in keys]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines) + "\n"
