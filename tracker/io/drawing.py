"""Overlay drawing: points with trails that read at a glance, masks, and where a correspondence was rejected.

One palette indexed by point (:func:`point_colours`): point ``i`` has the same colour however many points
there are, in the command line's overlay, ``track live`` and the web page (which gets it from the server).

A tracked point is a filled disc in its colour with a dark rim; a lost point (judged invisible) is a dashed
ring with a small cross, fading the longer it stays lost. Trails run through the last ``trail`` frames,
solid between visible frames and dashed through invisible ones, fading with age. Everything of one frame is
drawn with a fixed number of array operations (no Python loop over points or segments), so drawing 256
points costs about as much as drawing 4.
"""

from __future__ import annotations

from collections import deque

import cv2
import numpy as np

from tracker.tracking import TrackResult

# Distinct, saturated colours first (after Sasha Trubetskoy's list of 20, without the greys and the palest);
# points past these get golden-angle hues, so a colour never depends on how many points there are.
_BASE = (
    "e6194b 3cb44b ffe119 4363d8 f58231 911eb4 42d4f4 f032e6 bfef45 fabed4 "
    "469990 dcbeff 9a6324 800000 aaffc3 808000 ffd8b1 000075"
).split()
LOST_GREY = (200, 200, 200)


def point_colours(n: int) -> np.ndarray:
    """``[n, 3]`` uint8 RGB: the colour of points ``0 .. n-1`` (point ``i``'s colour does not depend on ``n``)."""
    base = np.array([[int(h[k : k + 2], 16) for k in (0, 2, 4)] for h in _BASE], np.uint8)
    if n <= len(base):
        return base[:n].copy()
    extra = np.arange(n - len(base))
    hsv = np.zeros((len(extra), 1, 3), np.uint8)
    hsv[:, 0, 0] = ((extra * 137.508) % 180).astype(np.uint8)  # golden angle, OpenCV's 0..180 hue
    hsv[:, 0, 1] = 200 + 55 * (extra % 2)
    hsv[:, 0, 2] = 255 - 40 * ((extra // 2) % 2)
    return np.concatenate([base, cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[:, 0]])


def palette_hex(n: int) -> list[str]:
    """``point_colours(n)`` as ``#rrggbb`` strings (for the web page)."""
    return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in point_colours(n)]


def _disc(radius: float) -> np.ndarray:
    """``[K, 2]`` int offsets (dx, dy) of the pixels within ``radius`` of the centre."""
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = dx**2 + dy**2 <= radius**2 + 0.25
    return np.stack([dx[keep], dy[keep]], 1)


def _ring(radius: float, width: float, dashes: int = 0) -> np.ndarray:
    """Offsets of a ring (``width`` thick around ``radius``); with ``dashes``, every other arc left out."""
    r = int(np.ceil(radius + width))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    d = np.hypot(dx, dy)
    keep = np.abs(d - radius) <= width / 2
    if dashes:
        sector = np.floor((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * 2 * dashes).astype(int)
        keep &= sector % 2 == 0
    return np.stack([dx[keep], dy[keep]], 1)


def _cross(half: float, width: float) -> np.ndarray:
    """Offsets of an X, ``half`` pixels from the centre to each tip."""
    r = int(np.ceil(half))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    keep = (np.minimum(np.abs(dx - dy), np.abs(dx + dy)) <= width * 0.75) & (np.maximum(abs(dx), abs(dy)) <= half)
    return np.stack([dx[keep], dy[keep]], 1)


class _Canvas:
    """A frame copied into a padded buffer, so that stencils are blended with flat indices and no bounds checks.

    The buffer has a fourth, unused channel: a pixel is one ``uint32``, so a stencil's pixels are gathered and
    scattered as single items (a third of the cost of 3-byte rows at 720p with 256 points); the blend is done
    per channel as before, so the pixels are the same.

    Args:
        frame: ``[H, W, 3]`` uint8.
        pad: border in pixels, at least twice the largest stencil radius.
    """

    def __init__(self, frame: np.ndarray, pad: int, buffer: np.ndarray | None = None):
        h, w = frame.shape[:2]
        self.h, self.w, self.pad = h, w, pad
        shape = (h + 2 * pad, w + 2 * pad, 4)
        self.buffer = buffer if buffer is not None and buffer.shape == shape else np.empty(shape, np.uint8)
        inner = self.buffer[pad : pad + h, pad : pad + w]
        # OpenCV's channel conversions: a twentieth of numpy's strided copies in and out (720p: 0.3 against 5 ms)
        done = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2RGBA, dst=inner)
        if not np.shares_memory(done, self.buffer):  # not written in place (never seen): copy it there
            inner[:] = done
        self.flat = self.buffer.view(np.uint32).reshape(-1)  # a view: one item per pixel

    def frame(self) -> np.ndarray:
        """The drawn frame, ``[H, W, 3]`` contiguous."""
        p = self.pad
        return cv2.cvtColor(self.buffer[p : p + self.h, p : p + self.w], cv2.COLOR_RGBA2RGB)

    def splat(self, xy: np.ndarray, offsets: np.ndarray, colours: np.ndarray, alpha) -> None:
        """Blend ``colours`` (``[M, 3]``) with ``alpha`` (``[M]`` or a number) at ``xy`` (``[M, 2]``) + each offset.

        Later entries are drawn over earlier ones. One gather and one scatter for all ``M x K`` pixels (only the
        scatter where every alpha is 1: the blend is then the colour itself).
        """
        if len(xy) == 0 or len(offsets) == 0:
            return
        reach = self.pad // 2
        # kept before the cast to integers: a point far outside (or NaN) never becomes an index, nor a cast warning
        keep = (xy[:, 0] > -reach) & (xy[:, 0] < self.w + reach) & (xy[:, 1] > -reach) & (xy[:, 1] < self.h + reach)
        if not keep.all():
            xy, colours = xy[keep], colours[keep]
            alpha = alpha[keep] if np.ndim(alpha) else alpha
        centre = np.rint(xy).astype(np.int64)
        width = self.w + 2 * self.pad
        start = (centre[:, 1] + self.pad) * width + centre[:, 0] + self.pad
        lin = start[:, None] + (offsets[:, 1] * width + offsets[:, 0])[None, :]  # [M, K]
        a = np.rint(np.clip(np.asarray(alpha, np.float32), 0.0, 1.0) * 256).astype(np.uint16)
        a = np.broadcast_to(a, (len(centre),))[:, None, None]
        rgba = np.zeros((len(centre), 4), np.uint8)
        rgba[:, :3] = colours
        if (a == 256).all():  # (old * 0 + colour * 256) >> 8 is the colour
            self.flat[lin] = rgba.view(np.uint32)
            return
        old = self.flat[lin].view(np.uint8).reshape(*lin.shape, 4).astype(np.uint16)  # [M, K, 4]
        new = (old * (256 - a) + rgba.astype(np.uint16)[:, None, :] * a) >> 8
        self.flat[lin] = new.astype(np.uint8).view(np.uint32)[..., 0]


class TrackOverlay:
    """Draws tracked points onto frames, keeping the last ``trail`` positions of each point.

    Args:
        trail: past frames drawn as a trail (24: about a second of video).
        radius: marker radius in pixels at 720p (scaled with the frame).
        legend: draw a legend box (frame i/N, points visible, each point's number or label and state).
        labels: point names for the legend (e.g. from the points file); numbers (1-based) where empty.
        num_frames: the video's length, for the legend's "frame i/N".
        fade: frames after which a lost point's marker has faded to its faintest.

    ``history`` holds ``(xy [N, 2], visible [N])`` of the last frames drawn (callers may pop or clear it).
    """

    def __init__(
        self,
        trail: int = 24,
        radius: int = 5,
        legend: bool = False,
        labels: tuple[str, ...] | list[str] | None = None,
        num_frames: int | None = None,
        fade: int = 12,
    ):
        self.history: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=trail)
        self.trail, self.radius, self.legend, self.fade = trail, radius, legend, fade
        self.labels = tuple(labels or ())
        self.num_frames = num_frames
        self._buffer: np.ndarray | None = None  # the canvas of the last frame drawn (reused: same size, same pad)

    def draw(self, frame: np.ndarray, result: TrackResult, scale: float = 1.0) -> np.ndarray:
        """A copy of ``frame`` (``[H, W, 3]`` RGB) with ``result`` drawn on it.

        Args:
            frame: the frame to draw on, possibly resized from the original by ``scale``.
            result: points in pixels of the original frame.
            scale: ``frame``'s size over the original's (the web page's preview draws at its displayed size).
        """
        xy = result.xy.numpy().astype(np.float32)
        visible = result.visible.numpy().astype(bool)
        self.history.append((xy, visible))
        return self.draw_history(frame, scale, result.frame_index)

    def draw_history(self, frame: np.ndarray, scale: float = 1.0, frame_index: int | None = None) -> np.ndarray:
        """``frame`` with the points of ``history`` drawn (the newest entry as markers, the rest as trails)."""
        if not self.history:
            return np.ascontiguousarray(frame).copy()
        n = len(self.history[-1][0])
        t = len(self.history)
        xy = np.full((t, n, 2), np.nan, np.float32)
        vis = np.zeros((t, n), bool)
        for i, (p, v) in enumerate(self.history):  # at most `trail` entries; points added later padded
            m = min(n, len(p))
            xy[i, :m], vis[i, :m] = p[:m], v[:m]
        xy = (xy + 0.5) * scale - 0.5
        unit = max(frame.shape[:2]) / 720
        colours = point_colours(n)
        thick = max(2.0, 1.6 * unit)
        r = max(3.0, self.radius * unit)
        # the padded buffer is kept for the next frame: a few MB allocated and freed per frame made glibc hand the
        # heap's top back to the system and fault it in again each time (system time 5 -> 14 s over 289 720p frames)
        canvas = _Canvas(frame, pad=2 * int(np.ceil(r * 1.25 + thick * 1.4)) + 4, buffer=self._buffer)
        self._buffer = canvas.buffer
        self._trails(canvas, xy, vis, colours, thick)
        self._markers(canvas, xy[-1], vis, colours, r, thick)
        out = canvas.frame()
        if self.legend:
            self._legend(out, vis[-1], np.isfinite(xy[-1]).all(1), colours, frame_index, unit)
        return out

    def _trails(self, out: _Canvas, xy: np.ndarray, vis: np.ndarray, colours: np.ndarray, thick: float) -> None:
        t, n = vis.shape
        if t < 2 or n == 0:
            return
        a, b = xy[:-1], xy[1:]  # [T-1, N, 2]
        length = np.linalg.norm(b - a, axis=-1)
        ok = np.isfinite(length)
        length = np.where(ok, length, 0.0)
        along = np.concatenate([np.zeros((1, n), np.float32), np.cumsum(length, 0)])  # arc length at each frame
        solid = vis[:-1] & vis[1:]
        age = (t - 1 - np.arange(1, t))[:, None] / max(self.trail - 1, 1)  # 0 newest .. 1 oldest
        alpha = np.broadcast_to(0.9 - 0.7 * age, (t - 1, n)) * np.where(solid, 1.0, 0.75)
        seg = np.nonzero(ok.ravel())[0]  # oldest first: newer segments are drawn over older ones
        step = max(1.0, thick * 0.7)  # samples along a segment, each a disc of the line's width
        count = np.minimum(np.ceil(length.ravel()[seg] / step).astype(np.int64) + 1, 4 * max(out.h, out.w))
        sid = np.repeat(seg, count)
        within = np.arange(len(sid)) - np.repeat(np.cumsum(count) - count, count)
        u = within / np.repeat(np.maximum(count - 1, 1), count)
        start, end = a.reshape(-1, 2)[sid], b.reshape(-1, 2)[sid]
        pts = start + (end - start) * u[:, None]
        dash = 3 * thick
        s = along[:-1].ravel()[sid] + u * length.ravel()[sid]
        keep = solid.ravel()[sid] | (np.floor(s / dash) % 2 == 0)
        sid, pts = sid[keep], pts[keep]
        out.splat(pts, _disc(thick / 2), colours[sid % n], alpha.ravel()[sid])

    def _markers(
        self, out: _Canvas, xy: np.ndarray, vis: np.ndarray, colours: np.ndarray, r: float, thick: float
    ) -> None:
        here = np.isfinite(xy).all(1)
        shown = vis[-1] & here
        idx = np.nonzero(shown)[0]
        ones = np.ones(len(idx), np.float32)
        out.splat(xy[idx], _ring(r + thick * 0.3, thick * 0.6 + 1), np.zeros((len(idx), 3), np.uint8), 0.85 * ones)
        out.splat(xy[idx], _disc(r), colours[idx], ones)
        lost = np.nonzero(~vis[-1] & here)[0]
        if len(lost):
            # frames each lost point has been lost for (up to the trail's length): its marker fades
            run = np.cumprod(~vis[::-1, lost], 0).sum(0)
            alpha = np.clip(1.0 - (run - 1) / max(self.fade, 1), 0.4, 1.0).astype(np.float32)
            ring = r * 1.25
            black = np.zeros((len(lost), 3), np.uint8)
            out.splat(xy[lost], _ring(ring, thick * 2.6), black, alpha * 0.45)
            out.splat(xy[lost], _ring(ring, thick * 1.4, dashes=6), colours[lost], alpha)
            grey = np.broadcast_to(np.array(LOST_GREY, np.uint8), (len(lost), 3))
            out.splat(xy[lost], _cross(r * 0.7, thick * 0.8), grey, 0.35 + 0.65 * alpha)

    def _legend(
        self, out: np.ndarray, visible: np.ndarray, here: np.ndarray, colours: np.ndarray, index, unit: float
    ) -> None:
        """A box at the top left: frame i/N, points visible, then up to 10 points with their state."""
        n = len(visible)
        font, fs = cv2.FONT_HERSHEY_SIMPLEX, 0.38 * max(unit, 0.8)
        th = max(1, round(unit))
        line = int(17 * max(unit, 0.8))
        total = f"/{self.num_frames}" if self.num_frames else ""
        rows = [(f"frame {'?' if index is None else index + 1}{total}   {int(visible.sum())}/{n} visible", None)]
        shown = min(n, 10)
        for i in range(shown):
            name = self.labels[i] if i < len(self.labels) and self.labels[i] else f"{i + 1}"
            state = "tracked" if visible[i] else ("lost" if here[i] else "not yet")
            rows.append((f"{name[:16]}  {state}", i))
        if n > shown:
            rows.append((f"... {n - shown} more", None))
        width = max(cv2.getTextSize(text, font, fs, th)[0][0] for text, _ in rows) + 3 * line // 2 + 8
        height = line * len(rows) + 8
        box = out[4 : 4 + height, 4 : 4 + width]
        box[:] = (box.astype(np.float32) * 0.35).astype(np.uint8)
        for k, (text, i) in enumerate(rows):
            y = 4 + line * (k + 1) - line // 4
            x = 10
            if i is not None:
                c = tuple(int(v) for v in colours[i])
                centre, rr = (x + line // 3, y - line // 3), max(3, line // 3)
                if visible[i]:
                    cv2.circle(out, centre, rr, c, -1, cv2.LINE_AA)
                else:
                    cv2.circle(out, centre, rr, c, th, cv2.LINE_AA)
                x += line
            colour = (255, 255, 255) if i is None or visible[i] else LOST_GREY
            cv2.putText(out, text, (x, y), font, fs, colour, th, cv2.LINE_AA)


def shade_rejected(image: np.ndarray, valid: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``image`` with the pixels whose ``valid`` is below ``threshold`` darkened and hatched.

    For colormaps and edits: where the cycle check rejected the correspondence nothing is composited, and the
    hatching says so (a near-empty colormap then reads as "rejected here", not as a broken output).
    """
    out = image.copy()
    rejected = valid < threshold
    if not rejected.any():
        return out
    h, w = rejected.shape
    yy, xx = np.mgrid[0:h, 0:w]
    hatch = ((xx + yy) // max(4, round(max(h, w) / 160))) % 3 == 0
    dark = (out[rejected].astype(np.float32) * 0.55).astype(np.uint8)
    out[rejected] = dark
    out[rejected & hatch] = (out[rejected & hatch].astype(np.float32) * 0.5 + 50).astype(np.uint8)
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
