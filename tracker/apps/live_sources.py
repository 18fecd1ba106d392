"""Frame sources of ``track live``: a capture thread that keeps only the newest frame, or every frame in order.

- :class:`LatestFrame`: a capture thread that keeps only the newest frame, so the tracker always works on
  the latest one; frames it never took are dropped (counted), never queued. A camera, or a video file
  played at its own frame rate, standing in for one.
- :func:`every_frame`: every frame of a file in order, for deterministic headless runs (tests).
- :func:`camera_frames`: an OpenCV camera's frames as RGB.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import cv2
import numpy as np

from tracker.errors import TrackerError


class LatestFrame:
    """A capture thread that keeps only the newest frame; frames nobody took are dropped and counted.

    Args:
        frames: an iterator of ``[H, W, 3]`` uint8 RGB frames (a camera or a video file); it runs in the thread.
        fps: pace the iterator at this rate (a file standing in for a camera); the first frame waits until the
            reader asks for the second (the model is built on the first), then the file plays on whether the
            reader keeps up or not. None reads as fast as the iterator gives (a camera paces itself).
    """

    def __init__(self, frames: Iterator[np.ndarray], fps: float | None = None):
        self._frames = frames
        self._fps = fps
        self._cond = threading.Condition()
        self._latest: tuple[int, np.ndarray] | None = None
        self._taken = -1
        self._stop = threading.Event()
        self._playing = threading.Event()
        self.ended = False
        self.error: BaseException | None = None
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="live-capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        start = None  # a paced file plays on once the reader, done with its first frame, asks for more
        try:
            for index, frame in enumerate(self._frames):
                if self._stop.is_set():
                    break
                if self._fps and index == 1:
                    while not self._playing.wait(0.1) and not self._stop.is_set():
                        pass
                    start = time.perf_counter() - 1 / self._fps
                if self._fps and start is not None:
                    delay = start + index / self._fps - time.perf_counter()
                    if delay > 0 and self._stop.wait(delay):
                        break
                with self._cond:
                    if self._latest is not None and self._latest[0] > self._taken:
                        self.dropped += 1  # the previous frame was never taken
                    self._latest = (index, frame)
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the reader
            self.error = exc
        finally:
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def next(self, timeout: float | None = None) -> tuple[int, np.ndarray] | None:
        """The newest frame not taken yet, waiting for one; None when the source has ended.

        Raises:
            TrackerError: no frame within ``timeout`` seconds, or the source failed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._taken >= 0:
            self._playing.set()
        with self._cond:
            while self._latest is None or self._latest[0] <= self._taken:
                if self.ended:
                    if self.error is not None:
                        raise (
                            self.error
                            if isinstance(self.error, TrackerError)
                            else TrackerError(f"the video source failed: {self.error}")
                        )
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TrackerError(f"no frame from the source within {timeout:g} s")
                self._cond.wait(left)
            self._taken = self._latest[0]
            return self._latest

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def every_frame(frames: Iterator[np.ndarray]) -> Iterator[tuple[int, np.ndarray]]:
    """Every frame in order with its index (deterministic: nothing is dropped)."""
    yield from enumerate(frames)


def camera_frames(index: int, size: tuple[int, int] | None = None) -> tuple[Iterator[np.ndarray], Callable[[], None]]:
    """Frames of camera ``index`` as RGB, and a function releasing it.

    Raises:
        TrackerError: the camera cannot be opened.
    """
    cap = cv2.VideoCapture(index)
    if not cap.isOpened():
        raise TrackerError(f"cannot open camera {index} (is one connected, and not used by another program?)")
    if size is not None:
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, size[0])
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, size[1])
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # where the backend allows: no stale frames queued in the driver

    def frames() -> Iterator[np.ndarray]:
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

    return frames(), cap.release
