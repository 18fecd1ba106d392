"""Unlabeled training images: listing a folder, identifying each image by content, decoding and resizing.

Images are identified by the sha256 of their bytes, so the teacher cache survives renames and moves and a
changed file is never served stale features.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tracker.errors import TrackerError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageEntry:
    """One training image.

    Attributes:
        path: the file.
        key: sha256 of the file's bytes (hex), the teacher cache key.
        category: the first sub-folder under the image root (the root's own name for images at the top),
            used by category prompts ``"a photo of a {category}"``.
    """

    path: Path
    key: str
    category: str


def list_images(folder: str | Path) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted; hidden files and folders skipped).

    Raises:
        TrackerError: the folder is missing, not a folder, unreadable, or holds no image files.
    """
    root = Path(folder)
    if not root.exists():
        raise TrackerError(f"--images {root}: no such folder")
    if not root.is_dir():
        raise TrackerError(f"--images {root} is not a folder")
    found: list[Path] = []
    try:
        for path in sorted(root.rglob("*")):
            if any(part.startswith(".") for part in path.relative_to(root).parts):
                continue
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
                found.append(path)
    except OSError as exc:
        raise TrackerError(f"--images {root}: cannot read the folder ({exc.strerror or type(exc).__name__})") from None
    if not found:
        raise TrackerError(f"--images {root}: no image files ({', '.join(IMAGE_SUFFIXES)}) found")
    return found


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_images(paths: list[Path], root: str | Path) -> tuple[list[ImageEntry], list[tuple[Path, str]]]:
    """Content keys and categories of ``paths``; files that cannot be read are returned apart with the reason."""
    root = Path(root)
    entries, failed = [], []
    for path in paths:
        try:
            key = file_digest(path)
        except OSError as exc:
            failed.append((path, exc.strerror or type(exc).__name__))
            continue
        parts = path.relative_to(root).parts
        category = parts[0] if len(parts) > 1 else root.resolve().name
        entries.append(ImageEntry(path=path, key=key, category=category.replace("_", " ")))
    return entries, failed


def decode_image(path: Path) -> Tensor:
    """``[H, W, 3]`` uint8 RGB of an image file.

    Raises:
        TrackerError: the file cannot be decoded as an image.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except Exception as exc:  # PIL raises many types for truncated or foreign files
        raise TrackerError(f"cannot decode image {path}: {type(exc).__name__}") from None
    return torch.from_numpy(rgb.copy())


def resize_image(image: Tensor, hw: tuple[int, int]) -> Tensor:
    """``[H, W, 3]`` uint8 -> ``[3, h, w]`` float32 in 0..255, resized as the tracker's featurizers resize frames
    (bilinear, antialiased, half-pixel centres)."""
    x = image.permute(2, 0, 1)[None].float()
    if tuple(x.shape[-2:]) != tuple(hw):
        x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return x[0]
