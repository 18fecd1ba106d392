"""Exact mapping between feature-grid cells and pixels of the original frame.

Conventions used throughout the project:

- Pixel coordinates: ``x`` to the right, ``y`` down, the centre of the top-left pixel at ``(0, 0)``
  (OpenCV's convention). A frame of width ``W`` spans ``[-0.5, W - 0.5]``.
- Grid coordinates: ``u`` (column) and ``v`` (row) of the feature grid, cell centres at integers.

Every featurizer resizes the *whole* frame (no crop, no padding) to its input size and produces one cell
per ``stride x stride`` block of input pixels, so a cell covers ``W / grid_w`` original pixels and::

    x = (u + 0.5) * W / grid_w - 0.5        u = (x + 0.5) * grid_w / W - 0.5

which is the ``align_corners=False`` convention of ``torch.nn.functional.grid_sample``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tracker.errors import TrackerError


@dataclass(frozen=True)
class GridGeometry:
    """Original frame size and feature-grid size of one featurizer applied to one video."""

    frame_h: int
    frame_w: int
    grid_h: int
    grid_w: int

    @property
    def cell_size(self) -> tuple[float, float]:
        """Original-frame pixels per grid cell, ``(sx, sy)``."""
        return self.frame_w / self.grid_w, self.frame_h / self.grid_h

    def pixel_to_grid(self, xy: Tensor) -> Tensor:
        """``[..., 2]`` pixel xy in the original frame -> ``[..., 2]`` grid uv (cell centres at integers)."""
        sx, sy = self.cell_size
        scale = xy.new_tensor([sx, sy])
        return (xy + 0.5) / scale - 0.5

    def grid_to_pixel(self, uv: Tensor) -> Tensor:
        """``[..., 2]`` grid uv -> ``[..., 2]`` pixel xy in the original frame."""
        sx, sy = self.cell_size
        scale = uv.new_tensor([sx, sy])
        return (uv + 0.5) * scale - 0.5

    def grid_to_normalized(self, uv: Tensor) -> Tensor:
        """``[..., 2]`` grid uv -> ``grid_sample`` coordinates in ``[-1, 1]`` (``align_corners=False``)."""
        size = uv.new_tensor([self.grid_w, self.grid_h])
        return 2.0 * (uv + 0.5) / size - 1.0


@dataclass(frozen=True)
class SizeSpec:
    """How to choose a featurizer's input size from a frame size.

    Attributes:
        width, height: a fixed input size (``height`` equal to ``width`` for ``--size N``), or
        short_side: with ``keep_aspect``, the short side; the long side follows the frame's aspect ratio.
        keep_aspect: preserve the frame's aspect ratio.
    """

    width: int
    height: int
    keep_aspect: bool = False

    @classmethod
    def parse(cls, text: str, keep_aspect: bool = False) -> SizeSpec:
        """Parse ``"434"`` (square, or short side with ``keep_aspect``) or ``"WxH"``."""
        try:
            if "x" in text.lower():
                w, h = (int(p) for p in text.lower().split("x"))
                if keep_aspect:
                    raise TrackerError("--keep-aspect takes a single size (the short side), not WxH")
            else:
                w = h = int(text)
        except ValueError:
            raise TrackerError(f"--size must be N or WxH with whole numbers, got {text!r}") from None
        if w <= 0 or h <= 0:
            raise TrackerError(f"--size must be positive, got {text!r}")
        return cls(width=w, height=h, keep_aspect=keep_aspect)

    def resolve(self, frame_h: int, frame_w: int, multiple: int) -> tuple[int, int]:
        """Input ``(height, width)`` for a frame, each side a multiple of ``multiple``.

        Raises:
            TrackerError: a fixed size whose sides are not multiples of ``multiple``.
        """
        if not self.keep_aspect:
            if self.width % multiple or self.height % multiple:
                size = self.width if self.width == self.height else f"{self.width}x{self.height}"
                raise TrackerError(f"--size {size}: sides must be multiples of {multiple} for this model")
            return self.height, self.width
        short = self.width
        if short % multiple:
            raise TrackerError(f"--size {short}: the short side must be a multiple of {multiple}")
        long_side = max(multiple, round(short * max(frame_h, frame_w) / min(frame_h, frame_w) / multiple) * multiple)
        return (short, long_side) if frame_h <= frame_w else (long_side, short)


def frames_to_tensor(frames: list | Tensor) -> Tensor:
    """A list of ``[H, W, 3]`` uint8 RGB arrays (or a tensor) -> a ``[B, H, W, 3]`` uint8 tensor."""
    if isinstance(frames, Tensor):
        return frames if frames.dim() == 4 else frames.unsqueeze(0)
    import numpy as np

    return torch.from_numpy(np.ascontiguousarray(np.stack(frames)))
