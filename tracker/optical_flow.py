"""Optical flow for ``refine="flow"``: DIS flow between consecutive frames and what dense propagation does with it.

:class:`FlowEstimator` computes the flow (grey frames at a reduced short side) with its forward-backward error,
carries the previous frame's label probabilities to the next frame (:class:`Warp`) and fuses them with the
feature estimate; :func:`unsure_tiles` says where the flow alone is not enough. :data:`REFINE_MODES` names the
ways dense propagation (masks, correspondence fields) may use the frames themselves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tracker.label_propagation import tiles_of

if TYPE_CHECKING:
    from tracker.propagation import PropagationConfig

REFINE_MODES: tuple[str, ...] = ("flow", "none")
"""How dense propagation uses the frames themselves (the first is the default).

- ``flow``: DIS optical flow from the previous frame warps the previous label probabilities (or carries the
  correspondence field); feature matching to the first and recent frames corrects them, weighted by where
  the flow is forward-backward consistent.
- ``none``: feature matching alone (label propagation from the references; the field's cycle check).
"""


class FlowState(NamedTuple):
    """What ``refine="flow"`` carries between frames (at the flow resolution ``h' x w'``).

    Attributes:
        gray: ``[h', w']`` uint8 grey previous frame.
        probs: ``[h', w', K+1]`` float32 label probabilities of the previous frame (channel 0 background).
    """

    gray: np.ndarray
    probs: np.ndarray


class FlowEstimator:
    """Dense optical flow between consecutive frames (OpenCV DIS) and the flow-feature fusion of labels.

    Args:
        short_side: frames are resized (grey, area-averaged) to this short side before the flow; never enlarged.
        preset: a ``cv2.DISOPTICAL_FLOW_PRESET_*``.

    Attributes:
        scale: flow pixels per frame pixel (set by :meth:`gray`).
    """

    def __init__(self, short_side: int = 240, preset: int = cv2.DISOPTICAL_FLOW_PRESET_FAST):
        self.short_side = short_side
        self.scale = 1.0
        self.dis = cv2.DISOpticalFlow_create(preset)
        self._grid: np.ndarray | None = None

    def gray(self, frame: np.ndarray) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB -> ``[h', w']`` uint8 grey at the flow resolution."""
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        h, w = gray.shape
        self.scale = min(1.0, self.short_side / min(h, w))
        if self.scale == 1.0:
            return gray
        return cv2.resize(gray, (round(w * self.scale), round(h * self.scale)), interpolation=cv2.INTER_AREA)

    def backward(self, previous: np.ndarray, gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where each pixel of ``gray`` was in ``previous``, and how consistent that is.

        Returns:
            ``map_xy`` ``[h', w', 2]`` float32 pixel xy in ``previous``; ``error`` ``[h', w']`` float32
            forward-backward error in flow pixels (inf where the flow leaves the frame).
        """
        h, w = gray.shape
        if self._grid is None or self._grid.shape[:2] != (h, w):
            self._grid = np.stack(np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)), -1)
        back = self.dis.calc(gray, previous, None)
        fwd = self.dis.calc(previous, gray, None)
        map_xy = self._grid + back
        fwd_at = cv2.remap(fwd, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        error = np.linalg.norm(back + fwd_at, axis=2)
        outside = (
            (map_xy[..., 0] < -0.5) | (map_xy[..., 0] > w - 0.5) | (map_xy[..., 1] < -0.5) | (map_xy[..., 1] > h - 0.5)
        )
        error[outside] = np.inf
        return map_xy, error

    def warp(self, previous: FlowState, gray: np.ndarray, channels: int, config: PropagationConfig) -> Warp:
        """The previous frame's label probabilities carried to this frame by the flow, and where to trust them."""
        map_xy, error = self.backward(previous.gray, gray)
        prev = previous.probs
        if prev.shape[2] < channels:  # objects that joined since
            prev = np.concatenate([prev, np.zeros((*prev.shape[:2], channels - prev.shape[2]), np.float32)], 2)
        warped = remap_channels(prev, map_xy)
        tolerance = config.flow_tolerance * self.scale
        consistency = np.exp(-((error / tolerance) ** 2)).astype(np.float32)
        return Warp(warped.reshape(*gray.shape, channels), consistency)

    @staticmethod
    def fuse(warp: Warp, probs: Tensor, config: PropagationConfig) -> np.ndarray:
        """Label probabilities ``[h', w', K+1]`` of this frame: the flow-warped ones corrected by the feature
        estimate ``probs`` (``[K+1, h, w]`` on the feature grid).

        Where the flow is forward-backward consistent it gets ``config.flow_weight``, falling off as a Gaussian
        in the error (``config.flow_tolerance`` pixels of the original frame); elsewhere the features decide.
        """
        h, w, k1 = warp.probs.shape
        feat = cv2.resize(probs.permute(1, 2, 0).float().cpu().numpy(), (w, h), interpolation=cv2.INTER_LINEAR)
        weight = (config.flow_weight * warp.consistency)[..., None]
        return (weight * warp.probs + (1 - weight) * feat.reshape(h, w, k1)).astype(np.float32)


def remap_channels(image: np.ndarray, map_xy: np.ndarray) -> np.ndarray:
    """``[h, w, C]`` float32 sampled bilinearly at ``map_xy`` ``[h', w', 2]`` (border replicated): ``[h', w', C]``.

    Four channels per ``cv2.remap`` call: one call on an image of 150 channels and more crashed the process."""
    return np.concatenate(
        [
            cv2.remap(
                np.ascontiguousarray(image[..., c : c + 4]),
                map_xy[..., 0],
                map_xy[..., 1],
                cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_REPLICATE,
            ).reshape(*map_xy.shape[:2], -1)
            for c in range(0, image.shape[2], 4)
        ],
        2,
    )


class Warp(NamedTuple):
    """The previous label probabilities carried by the flow (at the flow resolution ``h' x w'``).

    Attributes:
        probs: ``[h', w', K+1]`` float32 warped label probabilities.
        consistency: ``[h', w']`` float32 in [0, 1]: ``exp(-(e / tolerance)^2)`` of the forward-backward error.
    """

    probs: np.ndarray
    consistency: np.ndarray


CONFIDENT = 0.9
"""``band``: a cell whose flow-warped label probability is below this (or whose flow is inconsistent) is unsure."""


def unsure_tiles(warp: Warp, grid_hw: tuple[int, int], band: int) -> tuple[Tensor, Tensor]:
    """The tiles the feature estimate is needed on, and the flow's estimate for the others.

    A grid cell is unsure where the flow-warped labels are not confident (below :data:`CONFIDENT`: near a
    boundary) or the flow is inconsistent (``consistency < 0.5``: occlusions, fast motion); unsure cells
    are dilated by ``band`` cells (how far a boundary may move in a frame beyond the flow).

    Returns:
        ``[n tiles]`` bool (:func:`tiles_of`) and ``[K+1, h, w]`` the warped probabilities on the grid.
    """
    h, w = grid_hw
    both = torch.from_numpy(np.dstack([warp.probs, warp.consistency])).permute(2, 0, 1)[None]  # any K (cv2: 4)
    pooled = F.interpolate(both, size=(h, w), mode="area")[0].numpy()
    grid, consistency = pooled[:-1], pooled[-1]
    unsure = ((grid.max(0) < CONFIDENT) | (consistency < 0.5)).astype(np.uint8)
    if band > 0:
        unsure = cv2.dilate(unsure, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * band + 1, 2 * band + 1)))
    return tiles_of(unsure > 0), torch.from_numpy(np.ascontiguousarray(grid))


def _hwc_to_labels(
    probs: np.ndarray,
    ids: tuple[int, ...],
    frame_hw: tuple[int, int],
    previous: tuple[int, ...] = (),
    keep: float | None = None,
    floor: float = 0.0,
) -> np.ndarray:
    """``[h', w', K+1]`` label probabilities -> ``[H, W]`` uint8 ids (bilinear upsampling, then argmax).

    With ``keep``, an object whose argmax area fell below ``keep`` times its area ``previous`` (pixels, as
    ``ids``; the previous frame's prediction) takes back the background pixels where its probability is highest,
    down to ``floor`` at most, until it has that area again: see :class:`tracker.propagation.PropagationConfig`.
    """
    up = cv2.resize(probs, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_LINEAR).reshape(*frame_hw, -1)
    winner = up.argmax(2)
    if keep is not None:
        for channel, before in enumerate(previous[: len(ids)], 1):
            need = int(keep * before) - int(np.count_nonzero(winner == channel))
            if need <= 0:
                continue
            p = up[..., channel]
            candidates = (winner == 0) & (p >= floor)
            values = p[candidates]
            if values.size > need:  # the `need` most likely of them
                candidates &= p >= np.partition(values, values.size - need)[values.size - need]
            winner[candidates] = channel
    lut = np.array((0, *ids), np.uint8)
    return lut[winner]
