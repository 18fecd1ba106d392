"""Widely used trackers from OpenCV, run side by side with ours on the same data.

- Points: pyramidal Lucas-Kanade (``cv2.calcOpticalFlowPyrLK``) chained frame to frame, with OpenCV's
  default-like settings (21x21 window, 3 pyramid levels) and a forward-backward check for visibility.
- Masks: DIS optical flow (``cv2.DISOpticalFlow``, preset MEDIUM) chained frame to frame: each frame's flow
  back to the previous frame warps the previous labels (nearest neighbour).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import cv2
import numpy as np


def lucas_kanade(
    frames: Iterable[np.ndarray], xy: np.ndarray, query_frame: np.ndarray, fb_tolerance: float = 1.0
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(xy [N, 2], visible [N])`` per frame; points start on their query frames (NaN before).

    Args:
        frames: ``[H, W, 3]`` uint8 RGB frames.
        xy: ``[N, 2]`` query pixel xy.
        query_frame: ``[N]`` query frame per point.
        fb_tolerance: forward-backward error in pixels above which a point is judged invisible.
    """
    params = dict(winSize=(21, 21), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    n = len(xy)
    current = np.full((n, 2), np.nan, np.float32)
    previous = None
    for t, frame in enumerate(frames):
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        visible = np.zeros(n, bool)
        live = np.isfinite(current).all(1)
        if previous is not None and live.any():
            p0 = current[live].reshape(-1, 1, 2)
            p1, ok, _ = cv2.calcOpticalFlowPyrLK(previous, gray, p0, None, **params)
            back, ok_back, _ = cv2.calcOpticalFlowPyrLK(gray, previous, p1, None, **params)
            fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
            good = ok.ravel().astype(bool) & ok_back.ravel().astype(bool) & (fb < fb_tolerance)
            current[live] = p1.reshape(-1, 2)
            visible[live] = good
        starting = query_frame == t
        current[starting] = xy[starting]
        visible[starting] = True
        previous = gray
        yield current.copy(), visible


def dis_flow_masks(frames: Iterable[np.ndarray], first_labels: np.ndarray) -> Iterator[np.ndarray]:
    """Yield ``[H, W]`` uint8 labels per frame, warping the previous frame's labels by DIS flow."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    labels = first_labels.astype(np.uint8)
    previous = None
    grid = None
    for frame in frames:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if previous is not None:
            flow = dis.calc(gray, previous, None)  # for each pixel of this frame, where it was before
            if grid is None:
                h, w = gray.shape
                grid = np.stack(np.meshgrid(np.arange(w), np.arange(h)), -1).astype(np.float32)
            maps = grid + flow
            labels = cv2.remap(labels, maps[..., 0], maps[..., 1], cv2.INTER_NEAREST, borderValue=0)
        previous = gray
        yield labels
