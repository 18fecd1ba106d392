"""Video sources (file, DAVIS-style folder of frames) streamed frame by frame, and an atomic video writer.

Frames are ``[H, W, 3]`` uint8 RGB numpy arrays. Files are read sequentially with OpenCV (on 720p H.264
OpenCV decoded 267 frames/s against decord's 154 on the 2-core CI machine); decord, where installed, reads
files OpenCV cannot open.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tracker.errors import TrackerError
from tracker.io.atomic import default_file_mode

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video before reading it.

    Attributes:
        source: path as given.
        width, height: frame size in pixels.
        fps: frames per second (25 for folders of frames).
        num_frames: number of frames (from the container header for files).
    """

    source: str
    width: int
    height: int
    fps: float
    num_frames: int


class VideoSource:
    """A video opened for streaming; iterate for frames."""

    info: VideoInfo

    def __iter__(self) -> Iterator[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder."""

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FolderVideo(VideoSource):
    """A DAVIS-style folder of frames (``00000.jpg``, ``00001.jpg`` ...), sorted by name."""

    def __init__(self, folder: Path):
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not self.paths:
            raise TrackerError(f"{folder} holds no .jpg or .png frames")
        first = self._read(self.paths[0])
        self.info = VideoInfo(str(folder), first.shape[1], first.shape[0], 25.0, len(self.paths))

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise TrackerError(f"cannot read frame {path}")
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            frame = self._read(path)
            if frame.shape[:2] != (self.info.height, self.info.width):
                raise TrackerError(f"{path} is {frame.shape[1]}x{frame.shape[0]}, unlike the first frame")
            yield frame


class OpenCVVideo(VideoSource):
    """A video file decoded sequentially by OpenCV."""

    def __init__(self, path: Path):
        self.path = path
        self.cap = cv2.VideoCapture(str(path))
        ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not ok:
            self.cap.release()
            raise _Unreadable
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self._first = first
        self.info = VideoInfo(str(path), first.shape[1], first.shape[0], float(fps), max(count, 1))

    def __iter__(self) -> Iterator[np.ndarray]:
        frame, self._first = self._first, None
        if frame is None:
            raise TrackerError(f"{self.path} can be iterated once")
        while frame is not None:
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            ok, frame = self.cap.read()
            frame = frame if ok else None

    def close(self) -> None:
        self.cap.release()


class DecordVideo(VideoSource):
    """A video file decoded by decord, in chunks."""

    def __init__(self, path: Path, chunk: int = 16):
        import decord

        try:
            self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
            count = len(self.reader)
            first = self.reader[0].asnumpy() if count else None
        except Exception:
            raise _Unreadable from None
        if first is None:
            raise _Unreadable
        self.chunk = chunk
        self.info = VideoInfo(str(path), first.shape[1], first.shape[0], float(self.reader.get_avg_fps()), count)

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, self.info.num_frames, self.chunk):
            indices = list(range(start, min(start + self.chunk, self.info.num_frames)))
            try:
                batch = self.reader.get_batch(indices).asnumpy()
            except Exception:
                raise TrackerError(f"{self.info.source}: cannot decode frame {start} (corrupt video?)") from None
            yield from batch


class _Unreadable(Exception):
    pass


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence native decoders (FFmpeg, decord) that print to file descriptor 2 while probing a file."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_video(path: str | Path) -> VideoSource:
    """Open a video file or a folder of frames for streaming.

    Raises:
        TrackerError: missing, unreadable, corrupt or empty.
    """
    path = Path(path)
    if not path.exists():
        raise TrackerError(f"video not found: {path}")
    if path.is_dir():
        return FolderVideo(path)
    if not os.access(path, os.R_OK):
        raise TrackerError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise TrackerError(f"{path} is empty")
    with _quiet_stderr():
        try:
            return OpenCVVideo(path)
        except _Unreadable:
            pass
        try:
            return DecordVideo(path)
        except (_Unreadable, ImportError):
            pass
    raise TrackerError(f"cannot decode {path}: not a video, or corrupt, or no frames")


class AtomicVideoWriter:
    """Writes an mp4 to a temporary file beside the target and moves it into place on :meth:`close`.

    Args:
        path: target ``.mp4`` path.
        fps: frame rate.
        size: ``(width, height)``.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.stem}.", suffix=self.path.suffix)
        os.close(fd)
        self.tmp = Path(tmp)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise TrackerError(f"cannot write video {self.path}")
        self.frames = 0

    def write(self, frame_rgb: np.ndarray) -> None:
        self.writer.write(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR))
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it into place (a video of no frames is discarded); idempotent."""
        if not self.tmp.exists():
            return
        self.writer.release()
        if self.frames:
            os.chmod(self.tmp, default_file_mode())
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
