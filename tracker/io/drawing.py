"""Overlay drawing: points with short trails; points judged invisible drawn as hollow crosses."""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from tracker.tracking import TrackResult


def palette(n: int) -> np.ndarray:
    """``[n, 3]`` uint8 RGB colours, evenly spread in hue."""
    hsv = np.zeros((max(n, 1), 1, 3), np.uint8)
    hsv[:, 0, 0] = (np.arange(max(n, 1)) * 180 / max(n, 1)).astype(np.uint8)
    hsv[:, 0, 1:] = 230
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[:, 0]


class TrackOverlay:
    """Draws tracked points onto frames, keeping the last ``trail`` positions of each point.

    Args:
        trail: number of past frames drawn as a trail.
        radius: marker radius in pixels (scaled up for large frames).
    """

    def __init__(self, trail: int = 12, radius: int = 4):
        self.history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=trail)
        self.radius = radius

    def draw(self, frame: np.ndarray, result: TrackResult) -> np.ndarray:
        """A copy of ``frame`` (``[H, W, 3]`` RGB) with ``result`` drawn on it."""
        out = frame.copy()
        xy, visible = result.xy.numpy(), result.visible.numpy()
        self.history.append((xy, visible))
        colours = palette(len(xy))
        scale = max(1, round(max(frame.shape[:2]) / 720))
        r, thick = self.radius * scale, scale
        shift = 4  # sub-pixel drawing: coordinates in 1/16 pixel
        fixed = lambda p: (int(round(p[0] * (1 << shift))), int(round(p[1] * (1 << shift))))  # noqa: E731
        past = list(self.history)
        for i, colour in enumerate(colours[: len(xy)]):
            c = tuple(int(v) for v in colour)
            for (a, va), (b, vb) in zip(past[:-1], past[1:], strict=False):
                if (
                    i < len(a)
                    and i < len(b)
                    and va[i]
                    and vb[i]
                    and np.isfinite(a[i]).all()
                    and np.isfinite(b[i]).all()
                ):
                    cv2.line(out, fixed(a[i]), fixed(b[i]), c, thick, cv2.LINE_AA, shift)
            if not np.isfinite(xy[i]).all():
                continue
            centre = fixed(xy[i])
            if visible[i]:
                cv2.circle(out, centre, r << shift, c, -1, cv2.LINE_AA, shift)
                cv2.circle(out, centre, r << shift, (0, 0, 0), thick, cv2.LINE_AA, shift)
            else:  # invisible: a hollow ring with a cross, where the matcher last put it
                cv2.circle(out, centre, r << shift, c, thick, cv2.LINE_AA, shift)
                d = int(r * 0.7) << shift
                cv2.line(
                    out,
                    (centre[0] - d, centre[1] - d),
                    (centre[0] + d, centre[1] + d),
                    c,
                    thick,
                    cv2.LINE_AA,
                    shift,
                )
                cv2.line(
                    out,
                    (centre[0] - d, centre[1] + d),
                    (centre[0] + d, centre[1] - d),
                    c,
                    thick,
                    cv2.LINE_AA,
                    shift,
                )
        return out


def draw_masks(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``frame`` with each object id tinted in its DAVIS palette colour and outlined."""
    from tracker.io.formats import davis_palette

    colours = davis_palette()
    out = frame.astype(np.float32)
    objects = labels > 0
    out[objects] = (1 - alpha) * out[objects] + alpha * colours[labels[objects]]
    out = out.astype(np.uint8)
    for i in np.unique(labels[objects]):
        contours, _ = cv2.findContours((labels == i).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in colours[i]), 2, cv2.LINE_AA)
    return out
