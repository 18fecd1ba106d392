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
