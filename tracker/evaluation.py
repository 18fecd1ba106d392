"""Ground truth readers and metrics for real data (BADJA joint tracks on DAVIS frames).

BADJA protocol: query the joints visible on the first annotated frame and predict them on every later
annotated frame; a prediction is correct within ``0.2 * sqrt(mask area)`` of the truth (PCK@0.2), the area
taken from that frame's DAVIS mask.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tracker.errors import TrackerError


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


def load_badja(json_path: str | Path, davis_root: str | Path) -> BadjaSequence:
    """Read a BADJA sequence (joints ``[row, col]`` in 1920x1080, scaled by 480/1080 to the 480p frames)."""
    json_path, davis_root = Path(json_path), Path(davis_root)
    try:
        entries = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrackerError(f"cannot read BADJA file {json_path}: {exc}") from None
    name = json_path.stem
    frames_dir = davis_root / "JPEGImages" / "480p" / name
    masks_dir = davis_root / "Annotations" / "480p" / name
    scale = 480 / 1080
    records = []
    for entry in entries:
        index = int(Path(entry["image_path"]).stem)
        rc = np.asarray(entry["joints"], np.float64)
        xy = rc[:, ::-1] * scale
        mask = cv2.imread(str(masks_dir / f"{index:05d}.png"), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise TrackerError(f"missing DAVIS mask {masks_dir / f'{index:05d}.png'}")
        records.append((index, xy, np.asarray(entry["visibility"], bool), float((mask > 0).sum())))
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
    from tracker.formats import fit_mask, read_mask

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


def pck(
    pred: np.ndarray, truth: np.ndarray, visible: np.ndarray, area: np.ndarray, alpha: float = 0.2
) -> float:
    """Fraction of visible ground-truth joints predicted within ``alpha * sqrt(area)``.

    Args:
        pred, truth: ``[A, J, 2]`` pixel xy (NaN predictions count as wrong).
        visible: ``[A, J]`` which ground-truth joints count.
        area: ``[A]`` mask area per annotated frame.
    """
    if not visible.any():
        raise ValueError("no visible joints to score")
    dist = np.linalg.norm(pred - truth, axis=-1)
    correct = np.nan_to_num(dist, nan=np.inf) <= alpha * np.sqrt(area)[:, None]
    return float(correct[visible].mean())


def badja_queries(seq: BadjaSequence) -> tuple[np.ndarray, int, np.ndarray]:
    """``(xy [J', 2], query frame, joint ids [J'])``: the joints visible on the first annotated frame."""
    ids = np.flatnonzero(seq.visible[0])
    return seq.joints[0, ids], int(seq.frame_index[0]), ids
