"""Synthetic videos with known ground truth: textured objects moving on sub-pixel paths.

Used by the tests and by ``make demo`` (so nothing needs downloading).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


def texture(height: int, width: int, rng: np.random.Generator, colour: bool = True) -> np.ndarray:
    """Multi-scale smooth noise, ``[H, W, 3]`` uint8: rich enough for descriptors at every scale."""
    out = np.zeros((height, width, 3), np.float32)
    for cell, weight in ((64, 1.0), (24, 0.7), (8, 0.5), (3, 0.3)):
        small = rng.random((height // cell + 2, width // cell + 2, 3 if colour else 1)).astype(np.float32)
        up = cv2.resize(small, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
        up = up.reshape(up.shape[0], up.shape[1], -1)[cell : cell + height, cell : cell + width]
        out += weight * up
    out -= out.min()
    return (255 * out / out.max()).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticVideo:
    """Frames and ground truth.

    Attributes:
        frames: ``[T, H, W, 3]`` uint8 RGB.
        offsets: ``[T, K, 2]`` float, each object's translation (pixels) relative to frame 0.
        masks: ``[T, H, W]`` uint8, 0 background, k+1 for object k.
        object_boxes: ``[K, 4]`` x0, y0, x1, y1 of each object in frame 0 (pixels).
    """

    frames: np.ndarray
    offsets: np.ndarray
    masks: np.ndarray
    object_boxes: np.ndarray

    def ground_truth(self, xy: np.ndarray, obj: int = 0) -> np.ndarray:
        """``[T, N, 2]`` true positions of points ``xy`` ``[N, 2]`` of frame 0 that lie on object ``obj``."""
        return xy[None] + self.offsets[:, obj][:, None]


def moving_objects(
    num_frames: int = 24,
    size: tuple[int, int] = (240, 320),
    num_objects: int = 1,
    seed: int = 0,
) -> SyntheticVideo:
    """Textured rounded rectangles translating over a textured background on smooth sub-pixel paths.

    Args:
        num_frames: T.
        size: ``(height, width)``.
        num_objects: K objects, each with its own texture and path.
        seed: random seed.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    background = texture(h, w, rng)
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    frames = np.empty((num_frames, h, w, 3), np.uint8)
    masks = np.zeros((num_frames, h, w), np.uint8)
    objects, offsets, boxes = [], [], []
    for k in range(num_objects):
        oh, ow = h // 3, w // 4
        x0 = w * (0.15 + 0.45 * k) if num_objects > 1 else w * 0.2
        y0 = h * (0.2 + 0.35 * (k % 2))
        tex = texture(oh, ow, rng)
        shape = np.zeros((oh, ow), np.float32)
        cv2.rectangle(shape, (3, 3), (ow - 4, oh - 4), 1.0, -1)
        shape = cv2.GaussianBlur(shape, (0, 0), 1.0)
        speed = np.array([[1.37 - 2.2 * k, 0.61 - 0.9 * k]])  # object 1 moves left: both stay in frame
        wobble = np.concatenate([4.3 * np.sin(t / 5.0 + k), 3.1 * np.sin(t / 7.0 + 2 * k)], 1)
        offsets.append(speed * t + wobble - wobble[0])
        objects.append((tex, shape, x0, y0))
        boxes.append((x0, y0, x0 + ow - 1, y0 + oh - 1))
    offsets_arr = np.stack(offsets, 1)  # [T, K, 2]
    for i in range(num_frames):
        canvas = background.astype(np.float32)
        for k, (tex, shape, x0, y0) in enumerate(objects):
            dx, dy = offsets_arr[i, k]
            m = np.float32([[1, 0, x0 + dx], [0, 1, y0 + dy]])
            warped = cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT).astype(
                np.float32
            )
            alpha = cv2.warpAffine(shape, m, (w, h), flags=cv2.INTER_LINEAR)[..., None]
            canvas = canvas * (1 - alpha) + warped * alpha
            masks[i][alpha[..., 0] > 0.5] = k + 1
        frames[i] = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
    return SyntheticVideo(frames, offsets_arr, masks, np.asarray(boxes, np.float64))


def write_video(path: str, frames: np.ndarray, fps: float = 25.0) -> None:
    """Write ``[T, H, W, 3]`` RGB frames as an mp4 (mp4v)."""
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


# --------------------------------------------------------------------------- TAP-Vid-style occlusion video


def natural_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A real-looking texture, ``[H, W, 3]`` uint8: :func:`texture` noise plus strokes, blobs and edges.

    Smooth noise alone has no corners or sharp edges; real surfaces do, and descriptors (SIFT, ViT patches)
    respond to them. Drawn with anti-aliased lines and filled ellipses over the noise, then blurred a little.
    """
    img = texture(height, width, rng).astype(np.float32)
    scale = max(height, width)
    n = max(4, int(height * width / 900))
    for _ in range(n):
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        if rng.random() < 0.5:
            axes = (int(rng.uniform(1, 0.05 * scale)), int(rng.uniform(1, 0.05 * scale)))
            cv2.ellipse(img, (int(x), int(y)), axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
        else:
            length, angle = rng.uniform(0.03, 0.15) * scale, rng.uniform(0, np.pi)
            end = (int(x + length * np.cos(angle)), int(y + length * np.sin(angle)))
            cv2.line(img, (int(x), int(y)), end, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    img = cv2.GaussianBlur(img, (0, 0), 0.7)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticTracks:
    """A TAP-Vid-style video with exact point tracks and occlusion flags.

    Coordinates are pixel xy in the frame, the centre of the top-left pixel at (0, 0) (the project's
    convention; TAP-Vid's ``[0, 1]`` raster position is ``(xy + 0.5) / size``).

    Attributes:
        frames: ``[T, H, W, 3]`` uint8 RGB.
        tracks: ``[N, T, 2]`` float32 true pixel xy on every frame (also where hidden or outside the frame).
        visible: ``[N, T]`` bool, the point is inside the frame and not covered by anything in front of it.
        query_frame: ``[N]`` int64, each point's first visible frame (TAP-Vid's query-first protocol).
        reappear: ``[N, T]`` bool, True on a frame where a point is visible again after one or more hidden
            frames (behind an occluder or another object, or outside the frame) after its query frame.
        point_object: ``[N]`` int64, 0 for a background point, k for a point on object k.
        masks: ``[T, H, W]`` uint8, the visible part of object k is k (background and occluders 0).
    """

    frames: np.ndarray
    tracks: np.ndarray
    visible: np.ndarray
    query_frame: np.ndarray
    reappear: np.ndarray
    point_object: np.ndarray
    masks: np.ndarray

    @property
    def occluded(self) -> np.ndarray:
        """``[N, T]`` bool, the TAP-Vid ``occluded`` flags (``~visible``)."""
        return ~self.visible

    @property
    def query_xy(self) -> np.ndarray:
        """``[N, 2]`` float32 pixel xy of each point on its query frame."""
        return self.tracks[np.arange(len(self.tracks)), self.query_frame]


def _layer_alpha(alpha: np.ndarray, inverse: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear alpha ``[N]`` of a layer at frame points ``xy [N, 2]`` (``inverse``: frame -> layer 2x3)."""
    local = xy @ inverse[:, :2].T + inverse[:, 2]
    h, w = alpha.shape
    x, y = local[:, 0], local[:, 1]
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    out = np.zeros(len(xy))
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        xi, yi = x0 + dx, y0 + dy
        ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
        out[ok] += wgt[ok] * alpha[yi[ok], xi[ok]]
    return out


def _similarity(cx: float, cy: float, angle: float, scale: float, px: float, py: float) -> np.ndarray:
    """2x3 matrix taking layer pixel ``(px, py)`` to frame ``(cx, cy)``, rotated by ``angle`` and scaled."""
    c, s = scale * np.cos(angle), scale * np.sin(angle)
    return np.array([[c, -s, cx - c * px + s * py], [s, c, cy - s * px - c * py]], np.float64)


_TIME_BASE = 48  # frames: the motion's periods are set against this, so a shorter clip is the same motion, cut


def occlusion_video(
    seed: int = 0,
    frames: int = 48,
    size: int = 256,
    num_objects: int = 3,
    points_per_object: int = 24,
    background_points: int = 24,
    num_occluders: int = 2,
) -> SyntheticTracks:
    """A TAP-Vid-style clip with exact ground truth: moving, rotating, scaling objects, occluders, exits.

    Layers, back to front: a static :func:`natural_texture` background; ``num_objects`` textured ellipses or
    rounded rectangles, each with its own texture and a per-frame similarity transform (translation on a
    path that leaves the frame and comes back for some objects, rotation up to about 1.5 deg per frame,
    scale between about 0.75 and 1.3); and ``num_occluders`` opaque textured bars (one static, the others
    sliding slowly). Every layer is rendered by inverse warping (``cv2.warpAffine``, bilinear) with its
    known matrix, so a texture point's frame position is exact. A point is visible when it lies inside the
    frame and the layers in front of it cover it by less than half (their alpha bilinearly sampled there).
    Object points are drawn on the object's opaque interior, background points anywhere; points never
    visible are dropped. Motion is set per frame (up to about 12 px per frame at 256), so a clip with fewer
    ``frames`` is a prefix of a longer one with the same seed.

    Args:
        seed: random seed (same seed, same clip).
        frames: T.
        size: frame height and width (TAP-Vid scores at 256x256).
        num_objects: moving objects.
        points_per_object: points sampled on each object.
        background_points: points sampled on the background.
        num_occluders: opaque bars in front of everything.

    Returns:
        A :class:`SyntheticTracks`.
    """
    rng = np.random.default_rng(seed)
    h = w = int(size)
    t = np.arange(frames, dtype=np.float64)
    background = natural_texture(h, w, rng)
    layers = []  # (texture [h, w, 3], alpha [h, w] float32, matrices [T, 2, 3] layer -> frame, kind)
    point_xy, point_layer = [], []

    # background: identity transform; its points anywhere in the frame
    identity = np.repeat(np.array([[[1.0, 0, 0], [0, 1.0, 0]]]), frames, 0)
    layers.append((background, np.ones((h, w), np.float32), identity))
    point_xy.append(rng.uniform(2, size - 3, (background_points, 2)))
    point_layer.append(np.zeros(background_points, np.int64))

    for k in range(num_objects):
        oh, ow = (int(size * rng.uniform(0.22, 0.32)) for _ in range(2))
        pad = 4
        tex = natural_texture(oh + 2 * pad, ow + 2 * pad, rng)
        alpha = np.zeros((oh + 2 * pad, ow + 2 * pad), np.float32)
        centre = ((ow + 2 * pad - 1) / 2, (oh + 2 * pad - 1) / 2)
        if k % 2 == 0:
            cv2.ellipse(alpha, (int(round(centre[0])), int(round(centre[1]))), (ow // 2, oh // 2), 0, 0, 360, 1.0, -1)
        else:
            cv2.rectangle(alpha, (pad, pad), (pad + ow - 1, pad + oh - 1), 1.0, -1)
        alpha = cv2.GaussianBlur(alpha, (0, 0), 0.8)
        # path: a sweep across the frame plus a wobble; odd objects swing out of the frame and back in
        start = rng.uniform(0.25, 0.75, 2) * size
        amplitude = rng.uniform(0.15, 0.25, 2) * size * (1.6 if k % 2 else 1.0)
        period = rng.uniform(0.9, 1.4, 2) * _TIME_BASE  # in frames, whatever the clip's length
        phase = rng.uniform(0, 2 * np.pi, 2)
        cx = start[0] + amplitude[0] * (np.sin(2 * np.pi * t / period[0] + phase[0]) - np.sin(phase[0]))
        cy = start[1] + 0.5 * amplitude[1] * (np.sin(2 * np.pi * t / period[1] + phase[1]) - np.sin(phase[1]))
        angle = rng.uniform(0, 2 * np.pi) + np.deg2rad(rng.uniform(-1.5, 1.5)) * t
        scale = 1.0 + 0.27 * np.sin(2 * np.pi * t / rng.uniform(1.0, 2.0) / _TIME_BASE + rng.uniform(0, 2 * np.pi))
        mats = np.stack([_similarity(cx[i], cy[i], angle[i], scale[i], *centre) for i in range(frames)])
        layers.append((tex, alpha, mats))
        # points on the opaque interior (alpha > 0.99 with a 2 px margin)
        interior = cv2.erode((alpha > 0.99).astype(np.uint8), np.ones((5, 5), np.uint8))
        ys, xs = np.nonzero(interior)
        pick = rng.choice(len(xs), points_per_object, replace=len(xs) < points_per_object)
        point_xy.append(np.stack([xs[pick], ys[pick]], 1) + rng.uniform(-0.5, 0.5, (points_per_object, 2)))
        point_layer.append(np.full(points_per_object, k + 1, np.int64))

    for j in range(num_occluders):
        vertical = j % 2 == 0
        thick, length = int(size * rng.uniform(0.06, 0.09)), size + 40
        bh, bw = (length, thick) if vertical else (thick, length)
        tex = natural_texture(bh, bw, rng)
        alpha = np.ones((bh, bw), np.float32)
        pos = rng.uniform(0.3, 0.7) * size
        drift = 0.0 if j == 0 else rng.uniform(-0.6, 0.6)
        offset = (pos + drift * (t - _TIME_BASE / 2)) - (bw - 1) / 2 if vertical else -20.0 + 0 * t
        offset_y = -20.0 + 0 * t if vertical else (pos + drift * (t - _TIME_BASE / 2)) - (bh - 1) / 2
        mats = np.zeros((frames, 2, 3))
        mats[:, 0, 0] = mats[:, 1, 1] = 1.0
        mats[:, 0, 2], mats[:, 1, 2] = offset, offset_y
        layers.append((tex, alpha, mats))

    # render back to front; the mask shows which object is on top
    video = np.empty((frames, h, w, 3), np.uint8)
    masks = np.zeros((frames, h, w), np.uint8)
    for i in range(frames):
        canvas = np.zeros((h, w, 3), np.float32)
        top = np.zeros((h, w), np.uint8)
        for index, (tex, alpha, mats) in enumerate(layers):
            m = mats[i].astype(np.float32)
            warped = cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            a = cv2.warpAffine(alpha, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            canvas = canvas * (1 - a[..., None]) + warped.astype(np.float32) * a[..., None]
            cover = a > 0.5
            top[cover] = index if 1 <= index <= num_objects else 0
        video[i] = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
        masks[i] = top

    # tracks and visibility
    local = np.concatenate(point_xy)
    owner = np.concatenate(point_layer)
    n = len(local)
    tracks = np.zeros((n, frames, 2))
    visible = np.zeros((n, frames), bool)
    for i in range(frames):
        for index in range(1 + num_objects):
            sel = owner == index
            m = layers[index][2][i]
            tracks[sel, i] = local[sel] @ m[:, :2].T + m[:, 2]
        xy = tracks[:, i]
        inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= w - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= h - 0.5)
        through = np.ones(n)
        for index in range(1, len(layers)):
            above = owner < index
            if not above.any():
                continue
            inverse = cv2.invertAffineTransform(layers[index][2][i])
            through[above] *= 1 - _layer_alpha(layers[index][1], inverse, xy[above])
        visible[:, i] = inside & (through > 0.5)
    keep = visible.any(1)
    tracks, visible, owner = tracks[keep], visible[keep], owner[keep]
    query_frame = np.argmax(visible, 1).astype(np.int64)
    after = np.arange(frames)[None] > query_frame[:, None]
    reappear = np.zeros_like(visible)
    reappear[:, 1:] = visible[:, 1:] & ~visible[:, :-1]
    reappear &= after
    return SyntheticTracks(
        frames=video,
        tracks=tracks.astype(np.float32),
        visible=visible,
        query_frame=query_frame,
        reappear=reappear,
        point_object=owner,
        masks=masks,
    )
