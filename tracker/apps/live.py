"""Live tracking: ``track live --camera 0``, clicks add points and drags paint masks on the frame shown.

The logic lives in :class:`LiveSession`, fed frames and events (click, paint, keys) and free of any I/O
but the tracks it is asked to save; the OpenCV window and capture around it are a thin shell
(:func:`run`). Frame sources:

- :class:`LatestFrame`: a capture thread that keeps only the newest frame, so the tracker always works on
  the latest one; frames it never took are dropped (counted), never queued. A camera, or a video file
  played at its own frame rate, standing in for one.
- :func:`every_frame`: every frame of a file in order, for deterministic headless runs (tests).

Headless runs take scripted events (``--script events.json``), frame-indexed::

    {"events": [{"frame": 0, "click": [120, 80]}, {"frame": 0, "paint": [[90, 60], [150, 60], [150, 110]]},
                {"frame": 12, "key": "s"}, {"frame": 20, "key": "q"}]}

An event applies once its frame (the source's frame index) has been processed, before the next one, as
if the user clicked on that frame. While paused no frames advance, so the following events apply to the
paused frame in order.

Point tracking reuses :meth:`PointTracker.advance` and masks :meth:`MaskPropagator.advance` on one feature
grid per frame. A click on frame ``t`` (already processed and shown) is exact: the session keeps the state
from before ``t`` and ``t``'s feature grid, adds the point on ``t`` and advances again (with the same refinement, the
featurizer does not run twice).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from tracker.apps.parsers import LIVE_KEYS
from tracker.errors import TrackerError
from tracker.featurizers import Featurizer
from tracker.geometry import frames_to_tensor
from tracker.io.formats import TRACK_SUFFIXES, TrackLog, read_json, write_tracks
from tracker.matching import MatchConfig
from tracker.propagation import MaskPropagator, MaskState, PropagationConfig
from tracker.tracking import PointTracker, Queries, TrackResult, TrackState

# --------------------------------------------------------------------------- events

KEYS = {"c": "clear", "p": "pause", " ": "pause", "s": "save", "q": "quit", "\x1b": "quit"}
KEY_NAMES = {"space": " ", "esc": "\x1b", "escape": "\x1b"}
MESSAGE_SECONDS = 3.0  # how long the overlay shows what the last event did


@dataclass(frozen=True)
class Click:
    """Add a point at pixel ``(x, y)`` of the frame shown."""

    x: float
    y: float


@dataclass(frozen=True)
class Paint:
    """Paint a new mask object on the frame shown.

    Attributes:
        polygon: ``[P, 2]`` pixel xy of the drag path; the region is the polygon it encloses plus a stroke
            ``brush`` pixels wide around the path (a scribble or a lasso both work).
        brush: stroke radius in pixels.
    """

    polygon: np.ndarray
    brush: float = 6.0


@dataclass(frozen=True)
class Key:
    """A key press, one of :data:`KEYS` (``c``, ``p`` or space, ``s``, ``q`` or escape)."""

    key: str

    @property
    def action(self) -> str | None:
        return KEYS.get(self.key.lower())


Event = Click | Paint | Key


@dataclass(frozen=True)
class ScriptEvent:
    """An event of a headless script, applied once the source's frame ``frame`` has been processed."""

    frame: int
    event: Event


def read_script(path: str | Path) -> list[ScriptEvent]:
    """Read a script: ``{"events": [...]}`` or a bare list of ``{"frame": F, "click"|"paint"|"key": ...}``.

    Raises:
        TrackerError: unreadable, not JSON, or an event of the wrong shape.
    """
    path = Path(path)
    data = read_json(path, "script")
    items = data.get("events") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise TrackerError(f"script {path}: expected a list of events or {{'events': [...]}}")
    events = [_script_event(item, i, path) for i, item in enumerate(items)]
    return sorted(events, key=lambda e: e.frame)  # stable: events of one frame keep their order


def _script_event(item, i: int, path: Path) -> ScriptEvent:
    where = f"script {path}, event {i}"
    if not isinstance(item, dict) or not isinstance(item.get("frame"), int) or item["frame"] < 0:
        raise TrackerError(f"{where}: needs a 'frame' (integer >= 0)")
    kinds = [k for k in ("click", "paint", "key") if k in item]
    if len(kinds) != 1:
        raise TrackerError(f"{where}: needs exactly one of 'click', 'paint', 'key'")
    value = item[kinds[0]]
    try:
        if kinds[0] == "click":
            x, y = (float(v) for v in value)
            if not (math.isfinite(x) and math.isfinite(y)):
                raise ValueError
            event: Event = Click(x, y)
        elif kinds[0] == "paint":
            polygon = np.asarray(value, np.float64).reshape(-1, 2)
            if len(polygon) < 1 or not np.isfinite(polygon).all():
                raise ValueError
            event = Paint(polygon, float(item.get("brush", 6.0)))
        else:
            event = Key(KEY_NAMES.get(str(value).lower(), str(value)))
            if event.action is None:
                raise TrackerError(f"{where}: unknown key {value!r}; keys: c, p, space, s, q, esc")
    except (TypeError, ValueError):
        raise TrackerError(f"{where}: '{kinds[0]}' must be {_SHAPES[kinds[0]]}") from None
    return ScriptEvent(item["frame"], event)


_SHAPES = {"click": "[x, y]", "paint": "a list of [x, y] points", "key": "a key"}


class MouseGesture:
    """Turns mouse button presses, moves and releases into :class:`Click` s and :class:`Paint` strokes.

    A press released within ``slop`` pixels of where it started is a click; anything longer is a drag.

    Args:
        slop: pixels the pointer may move during a click.
        brush: stroke radius of a painted region, pixels.
    """

    def __init__(self, slop: float = 4.0, brush: float = 6.0):
        self.slop, self.brush = slop, brush
        self.stroke: list[tuple[float, float]] = []

    def down(self, x: float, y: float) -> None:
        self.stroke = [(x, y)]

    def move(self, x: float, y: float) -> None:
        if self.stroke:
            self.stroke.append((x, y))

    def up(self, x: float, y: float) -> Event | None:
        """The finished gesture, or None when no press was seen."""
        if not self.stroke:
            return None
        path = np.asarray([*self.stroke, (x, y)], np.float64)
        self.stroke = []
        if np.linalg.norm(path - path[0], axis=1).max() <= self.slop:
            return Click(float(path[0, 0]), float(path[0, 1]))
        return Paint(path, self.brush)


def paint_region(paint: Paint, frame_hw: tuple[int, int]) -> np.ndarray:
    """``[H, W]`` bool: the region a :class:`Paint` covers (enclosed polygon and the stroke around the path)."""
    region = np.zeros(frame_hw, np.uint8)
    shift = 4
    pts = np.round(paint.polygon * (1 << shift)).astype(np.int32).reshape(-1, 1, 2)
    if len(pts) >= 3:
        cv2.fillPoly(region, [pts], 1, cv2.LINE_8, shift)
    thickness = max(1, round(2 * paint.brush))
    cv2.polylines(region, [pts], False, 1, thickness, cv2.LINE_8, shift)
    if len(pts) == 1:
        cv2.circle(region, tuple(int(v) for v in pts[0, 0]), round(paint.brush) << shift, 1, -1, cv2.LINE_8, shift)
    return region.astype(bool)


# --------------------------------------------------------------------------- session


@dataclass
class _Frame:
    """The frame shown: its pixels, feature grid, and the states from before it (for exact clicks)."""

    index: int  # processed-frame index since the last clear
    source_index: int
    pixels: np.ndarray
    grid: torch.Tensor
    points_before: TrackState
    masks_before: MaskState | None
    given: np.ndarray | None = None  # objects painted on this frame (ids)


@dataclass
class LiveStats:
    """What the overlay shows about speed.

    Attributes:
        fps: processed frames per second (exponential moving average over the intervals between frames).
        ms: milliseconds the last frame took (features + matching + masks).
        processed: frames processed since the session started.
        dropped: frames the source dropped because the tracker was busy (set by the shell).
    """

    fps: float = 0.0
    ms: float = 0.0
    processed: int = 0
    dropped: int = 0
    _first: float | None = field(default=None, repr=False)
    _last: float | None = field(default=None, repr=False)

    def tick(self, now: float, ms: float) -> None:
        if self._last is not None and now > self._last:
            rate = 1.0 / (now - self._last)
            self.fps = rate if self.fps == 0 else 0.8 * self.fps + 0.2 * rate
        self._first = now if self._first is None else self._first
        self._last, self.ms = now, ms
        self.processed += 1

    @property
    def mean_fps(self) -> float:
        """Frames per second over the whole run (from the first processed frame to the last)."""
        span = (self._last or 0.0) - (self._first or 0.0)
        return (self.processed - 1) / span if span > 0 else 0.0


class LiveSession:
    """Points and masks tracked on frames fed one at a time, with events applied to the frame shown.

    Args:
        featurizer: any featurizer for frames of the session's size.
        match: matcher settings for points.
        propagation: label propagation settings for masks.
        description: what runs (model, backend, device), shown on the overlay and saved with the tracks.
        meta: extra fields saved with the tracks (source, model, ...).
        clock: seconds, for the frame rate (injectable for tests).
    """

    def __init__(
        self,
        featurizer: Featurizer,
        match: MatchConfig,
        propagation: PropagationConfig,
        description: str = "",
        meta: dict | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ):
        from tracker.io.drawing import TrackOverlay

        self.featurizer = featurizer
        self.tracker = PointTracker(featurizer, match)
        self.propagator = MaskPropagator(featurizer, propagation)
        self.description = description
        self.meta = dict(meta or {})
        self.clock = clock
        self.stats = LiveStats()
        self.paused = False
        self.stopped = False
        self.message = ""  # the last thing an event did (shown on the overlay for MESSAGE_SECONDS)
        self.message_time = -math.inf
        self.frame: _Frame | None = None
        self.points: TrackState | None = None  # after the frame shown
        self.masks: MaskState | None = None
        self.results: list[TrackResult] = []  # one per processed frame since the last clear
        self.source_frames: list[int] = []
        self._overlay = TrackOverlay()
        self._drawn: int | None = None  # index of the frame drawn last (its trail entry is replaced on redraw)

    # ----------------------------------------------------------------- frames

    def feed(self, frame: np.ndarray, source_index: int | None = None) -> TrackResult:
        """Process the next frame (``[H, W, 3]`` uint8 RGB); returns its points."""
        start = self.clock()
        if self.points is None:
            self.points = self.tracker.empty_state(*frame.shape[:2])
        elif frame.shape[:2] != (self.points.geometry.frame_h, self.points.geometry.frame_w):
            g = self.points.geometry
            raise TrackerError(f"frame is {frame.shape[1]}x{frame.shape[0]}, the session {g.frame_w}x{g.frame_h}")
        with torch.inference_mode():
            grid = self.featurizer(frames_to_tensor([frame]))[0]
        source_index = self.stats.processed if source_index is None else source_index
        self.frame = _Frame(self.points.next_frame, source_index, frame, grid, self.points, self.masks)
        self._advance()
        self.results.append(self.points.latest)
        self.source_frames.append(source_index)
        now = self.clock()
        self.stats.tick(now, 1000 * (now - start))
        return self.points.latest

    def _advance(self) -> None:
        """(Re)process the frame shown from the states before it (its pixels feed the local refinement)."""
        f = self.frame
        with torch.inference_mode():
            self.points = self.tracker.advance(f.points_before, f.grid, f.pixels)
            self.masks = (
                None
                if f.masks_before is None
                else self.propagator.advance(f.masks_before, f.grid, f.given, frame=f.pixels)
            )

    # ----------------------------------------------------------------- events

    def handle(self, event: Event, save_path: str | Path | None = None) -> str:
        """Apply an event to the frame shown; returns a one-line description of what happened."""
        if isinstance(event, Click):
            return self.click(event.x, event.y)
        if isinstance(event, Paint):
            return self.paint(event)
        action = event.action
        if action == "clear":
            return self.clear()
        if action == "pause":
            self.paused = not self.paused
            return self.note("paused" if self.paused else "resumed")
        if action == "save":
            if save_path is None:
                raise TrackerError("no path to save the tracks to")
            return self.note(self.save(save_path))
        if action == "quit":
            self.stopped = True
            return "quit"
        raise TrackerError(f"unknown key {event.key!r}")

    def note(self, message: str) -> str:
        """Show ``message`` on the overlay for a few seconds; returns it."""
        self.message, self.message_time = message, self.clock()
        return message

    def _require_frame(self) -> _Frame:
        if self.frame is None:
            raise TrackerError("no frame yet: events apply to the frame shown")
        return self.frame

    def click(self, x: float, y: float, label: str = "") -> str:
        """Add a point at pixel ``(x, y)`` of the frame shown; it is tracked from this frame on."""
        f = self._require_frame()
        queries = Queries.create([[x, y]], frame=f.index, labels=[label or f"p{len(f.points_before.queries)}"])
        f.points_before = self.tracker.add_queries(f.points_before, queries)  # validates the position
        self._advance()
        self.results[-1] = self.points.latest
        return self.note(f"point {len(self.points.queries) - 1} at ({x:.0f}, {y:.0f})")

    def paint(self, paint: Paint) -> str:
        """Add a mask object: the region painted on the frame shown; it is propagated from this frame on."""
        f = self._require_frame()
        hw = f.pixels.shape[:2]
        region = paint_region(paint, hw)
        if not region.any():
            raise TrackerError("the painted region lies outside the frame")
        known = () if f.masks_before is None else f.masks_before.ids
        pending = () if f.given is None else tuple(int(i) for i in np.unique(f.given) if i)
        new_id = max((*known, *pending, 0)) + 1
        if new_id > 255:
            raise TrackerError("at most 255 mask objects; press c to clear")
        if f.masks_before is None:  # masks start on this frame
            f.masks_before = replace(self.propagator.empty_state(*hw), next_frame=f.index)
        f.given = np.zeros(hw, np.uint8) if f.given is None else f.given.copy()
        f.given[region] = new_id
        self._advance()
        return self.note(f"mask {new_id}: {int(region.sum())} pixels")

    def clear(self) -> str:
        """Forget every point and mask; the frame shown becomes frame 0 of the tracks saved from now on."""
        f = self._require_frame()
        h, w = f.pixels.shape[:2]
        f.index, f.points_before, f.masks_before, f.given = 0, self.tracker.empty_state(h, w), None, None
        self._advance()
        self.results, self.source_frames = [self.points.latest], [f.source_index]
        self._overlay.history.clear()
        self._drawn = None
        return self.note("cleared")

    # ----------------------------------------------------------------- outputs

    @property
    def num_points(self) -> int:
        return 0 if self.points is None else len(self.points.queries)

    @property
    def num_masks(self) -> int:
        return 0 if self.masks is None else len(self.masks.ids)

    def track_log(self) -> TrackLog:
        """The tracks since the last clear, points added later padded with no position before their frame."""
        queries = self.points.queries if self.points is not None else Queries.create(np.zeros((0, 2)))
        n = len(queries)
        log = TrackLog(queries)
        for r in self.results:
            pad = n - len(r.xy)
            if pad:
                r = TrackResult(
                    r.frame_index,
                    torch.cat([r.xy, torch.full((pad, 2), float("nan"))]),
                    torch.cat([r.visible, torch.zeros(pad, dtype=torch.bool)]),
                    torch.cat([r.score, torch.full((pad,), float("nan"))]),
                )
            log.append(r)
        return log

    def save(self, path: str | Path) -> str:
        """Write the tracks since the last clear (``.json``, ``.csv`` or ``.npz``, atomically)."""
        log = self.track_log()
        meta = {
            **self.meta,
            "what": self.description,
            "source_frame": list(self.source_frames),
            "dropped_frames": self.stats.dropped,
            "coordinates": "pixels of the original frame, centre of the top-left pixel at (0, 0)",
        }
        write_tracks(path, log, meta)
        return f"saved {_count(len(log.queries), 'point')} x {_count(len(log), 'frame')} -> {path}"

    def render(self, stroke: list[tuple[float, float]] | None = None, hud: bool = True) -> np.ndarray:
        """``[H, W, 3]`` RGB: the frame shown with masks, points (with trails), a drag in progress and the HUD."""
        from tracker.io.drawing import draw_masks

        f = self._require_frame()
        out = f.pixels
        if self.masks is not None and self.masks.latest is not None and self.masks.latest.labels.any():
            out = draw_masks(out, self.masks.latest.labels)
        if self._drawn == f.index and self._overlay.history:
            self._overlay.history.pop()  # the same frame again (after an event): replace, not extend, the trail
        out = self._overlay.draw(out, self.points.latest)
        self._drawn = f.index
        scale = max(1.0, max(out.shape[:2]) / 640)
        if stroke and len(stroke) > 1:
            pts = np.round(np.asarray(stroke)).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [pts], False, (255, 255, 255), max(1, round(2 * scale)), cv2.LINE_AA)
        if hud:
            s = self.stats
            lines = [
                self.description,
                f"{s.fps:.1f} frames/s  {s.ms:.0f} ms/frame  dropped {s.dropped}",
                f"{_count(self.num_points, 'point')}  {_count(self.num_masks, 'mask')}{'  PAUSED' * self.paused}",
            ]
            if self.message and self.clock() - self.message_time < MESSAGE_SECONDS:
                lines.append(self.message)
            _text_block(out, lines, (6, 6), scale)
            _text_block(out, [LIVE_KEYS], (6, out.shape[0] - round(20 * scale)), scale * 0.8)
        return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _text_block(image: np.ndarray, lines: list[str], origin: tuple[int, int], scale: float) -> None:
    """White text on a dark translucent box, in place."""
    font, size, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.42 * scale, max(1, round(scale))
    line_h = round(18 * scale)
    width = max(cv2.getTextSize(t, font, size, thick)[0][0] for t in lines) + round(8 * scale)
    x0, y0 = origin
    x1, y1 = min(image.shape[1], x0 + width), min(image.shape[0], y0 + line_h * len(lines) + round(6 * scale))
    image[y0:y1, x0:x1] = (image[y0:y1, x0:x1] * 0.4).astype(np.uint8)
    for i, text in enumerate(lines):
        y = y0 + line_h * (i + 1)
        cv2.putText(image, text, (x0 + round(4 * scale), y), font, size, (255, 255, 255), thick, cv2.LINE_AA)


# --------------------------------------------------------------------------- frame sources


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


# --------------------------------------------------------------------------- the shell


@dataclass
class RunOptions:
    """What the shell does around a session.

    Attributes:
        window: show an OpenCV window and take mouse and key events from it.
        script: frame-indexed events (headless runs).
        save: where ``s`` writes the tracks; also written at the end when ``save_on_exit``.
        record: an ``.mp4`` of the rendered overlay, one frame per processed frame (written at 25 frames/s).
        snapshot: a PNG of the last rendered overlay, written at the end.
        max_frames: stop after this many processed frames.
        first_frame_timeout: seconds to wait for the source's first frame.
    """

    window: bool = False
    script: list[ScriptEvent] = field(default_factory=list)
    save: Path = Path("live_tracks.json")
    save_on_exit: bool = False
    record: Path | None = None
    snapshot: Path | None = None
    max_frames: int | None = None
    first_frame_timeout: float = 10.0


WINDOW = "track live"


def run(
    make_session: Callable[[np.ndarray], LiveSession],
    source: LatestFrame | Iterator[tuple[int, np.ndarray]],
    options: RunOptions,
    say: Callable[[str], None] = lambda line: None,
) -> tuple[LiveSession, str]:
    """Drive a session from a frame source, the window (or the script) and the keys, until quit or the end.

    Ctrl-C and a source failing half-way end the run like a quit: the snapshot and the tracks are still
    written (the failure is raised afterwards, naming what was kept).

    Args:
        make_session: builds the session from the first frame (its size decides the featurizer's).
        source: :class:`LatestFrame` (drops frames while busy) or an iterator of ``(index, frame)``.
        options: window, script and outputs.
        say: where one-line messages go (the command prints them; the library does not).

    Returns:
        ``(session, why it ended)``: ``quit``, ``ended`` (the source), ``max-frames``, ``paused`` (headless,
        paused with no scripted events left), ``window closed`` or ``interrupted``.
    """

    def take() -> tuple[int, np.ndarray] | None:
        if isinstance(source, LatestFrame):
            return source.next(timeout=options.first_frame_timeout if session is None else None)
        return next(source, None)

    session: LiveSession | None = None
    first = take()
    if first is None:
        raise TrackerError("the video source gave no frame")
    session = make_session(first[1])
    gesture = MouseGesture(brush=max(4.0, min(first[1].shape[:2]) / 40))
    pending: list[Event] = []
    script = list(options.script)
    writer = None
    failure: TrackerError | None = None
    if options.window:
        _open_window(gesture, pending)
    try:
        item: tuple[int, np.ndarray] | None = first
        while True:
            if item is not None:
                session.feed(item[1], item[0])
                if isinstance(source, LatestFrame):
                    session.stats.dropped = source.dropped
            while script and (script[0].frame <= session.frame.source_index or session.paused):
                _apply(session, script.pop(0).event, options, say)
            if options.window or options.record or options.snapshot:
                image = session.render(gesture.stroke if options.window else None)
                if options.record and item is not None:
                    if writer is None:
                        from tracker.io.video import AtomicVideoWriter

                        writer = AtomicVideoWriter(options.record, 25.0, (image.shape[1], image.shape[0]))
                    writer.write(image)
            if options.window:
                cv2.imshow(WINDOW, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                code = cv2.waitKey(15 if session.paused else 1) & 0xFF  # mouse callbacks run in here
                if code != 0xFF and Key(chr(code)).action is not None:
                    pending.append(Key(chr(code)))
                for event in pending:  # the frame they were given on is still the one shown
                    _apply(session, event, options, say)
                pending.clear()
                if cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                    status = "window closed"
                    break
            if session.stopped:
                status = "quit"
                break
            if options.max_frames is not None and session.stats.processed >= options.max_frames:
                status = "max-frames"
                break
            if session.paused:
                if not options.window and not script:
                    status = "paused"
                    break
                item = None
                continue
            try:
                item = take()
            except TrackerError as exc:
                status, failure = "failed", exc
                break
            if item is None:
                status = "ended"
                break
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        if options.window:
            cv2.destroyAllWindows()
        if writer is not None:
            writer.close()
    if options.snapshot is not None and session.frame is not None:
        from tracker.io.atomic import atomic_write

        ok, png = cv2.imencode(".png", cv2.cvtColor(session.render(), cv2.COLOR_RGB2BGR))
        if ok:
            atomic_write(options.snapshot, png.tobytes())
    if options.save_on_exit:
        say(session.save(options.save))
    if failure is not None:
        kept = f"tracks of {session.stats.processed} frames saved to {options.save}" if options.save_on_exit else ""
        raise TrackerError(f"{failure}{f' ({kept})' if kept else ''}")
    return session, status


def _apply(session: LiveSession, event: Event, options: RunOptions, say: Callable[[str], None]) -> None:
    """Apply one event; a bad one (a click outside the frame) is reported, not fatal."""
    try:
        say(session.handle(event, options.save))
    except TrackerError as exc:
        session.note(str(exc))
        say(f"ignored: {exc}")


def _pip() -> str:
    """The pip of the Python running this (the venv's, not whatever ``pip`` the shell finds first)."""
    import shlex

    return f"{shlex.quote(sys.executable)} -m pip"


NO_GUI = (
    "this OpenCV has no window support (opencv-python-headless); run with --headless, or replace it: "
    f"{_pip()} uninstall -y opencv-python-headless && {_pip()} install opencv-python"
)


def has_gui() -> bool:
    """Whether this OpenCV build can open windows (the headless wheels say ``GUI: NONE``)."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match is None or match.group(1).upper() != "NONE"


def _open_window(gesture: MouseGesture, pending: list[Event]) -> None:
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
    except cv2.error:
        raise TrackerError(NO_GUI) from None

    def on_mouse(kind: int, x: int, y: int, flags: int, _param) -> None:
        if kind == cv2.EVENT_LBUTTONDOWN:
            gesture.down(x, y)
        elif kind == cv2.EVENT_MOUSEMOVE and flags & cv2.EVENT_FLAG_LBUTTON:
            gesture.move(x, y)
        elif kind == cv2.EVENT_LBUTTONUP:
            event = gesture.up(x, y)
            if event is not None:
                pending.append(event)

    cv2.setMouseCallback(WINDOW, on_mouse)


# --------------------------------------------------------------------------- command line

# Masks live: sift's offline setting (radius 12, context 7) costs 640 ms a frame on one core at 320x240;
# radius 8 with the last prediction as context costs about 100 ms (IoU after 48 frames of the synthetic
# two-object clip 0.26 / 0.43 against 0.38 / 0.53 offline). ViT grids keep the offline default.
LIVE_SIFT_PROPAGATION = {"radius": 8.0, "context": 1}


def _check_output(path: Path, option: str, suffixes: tuple[str, ...]) -> Path:
    if path.suffix.lower() not in suffixes:
        names = " or ".join(filter(None, [", ".join(suffixes[:-1]), suffixes[-1]]))
        raise TrackerError(f"{option} must end in {names}, got {path.name}")
    from tracker.apps.cli import check_writable

    check_writable(path, option)
    return path


def main(argv: list[str]) -> int:
    """``track live ...``; returns the exit code (bad input raises TrackerError)."""
    from tracker.apps.parsers import live_parser

    return run_command(live_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """``track live`` with parsed options; returns the exit code (bad input raises TrackerError)."""
    from tracker.featurizers import MODEL_NAMES, default_match_config, resolve_model
    from tracker.io.video import open_video
    from tracker.propagation import default_propagation_config

    say = lambda line: print(f"track live: {line}", file=sys.stderr)  # noqa: E731
    from tracker.backends import pick_device

    device = pick_device(args.device)
    if args.max_frames is not None and args.max_frames < 1:
        raise TrackerError("--max-frames must be at least 1")
    options = RunOptions(
        window=not args.headless,
        script=read_script(args.script) if args.script else [],
        save=_check_output(Path(args.save or "live_tracks.json"), "--save", TRACK_SUFFIXES),
        save_on_exit=args.save is not None,
        record=_check_output(Path(args.record), "--record", (".mp4",)) if args.record else None,
        snapshot=_check_output(Path(args.snapshot), "--snapshot", (".png",)) if args.snapshot else None,
        max_frames=args.max_frames,
    )
    if options.window and not has_gui():
        raise TrackerError(NO_GUI)
    if args.model not in MODEL_NAMES:
        raise TrackerError(f"unknown model {args.model!r}; choose from: {', '.join(MODEL_NAMES)}")
    camera = args.camera
    video = None
    if camera.isdigit():
        if args.every_frame:
            raise TrackerError("--every-frame applies to a video file given as --camera, not a camera")
        camera_size = _parse_size(args.camera_size) if args.camera_size else None
        kind = f"camera {camera}"
    else:
        video = open_video(camera)  # a clear error now for a missing or broken file
        kind = f"file {camera}" + (" (every frame)" if args.every_frame else f" (at {video.info.fps:g} frames/s)")
    from tracker.backends import BackendOptions, build_featurizer

    backend = BackendOptions(backend=args.backend, precision=args.precision, onnx=args.onnx, engine=args.engine)
    try:
        # an exported file brings its own (ViT) model; every ViT model has the same matcher settings
        model, warning = ("distilldift", None) if args.onnx or args.engine else resolve_model(args.model, args.weights)
        if warning:
            say(f"warning: {warning}")
        try:
            match = default_match_config(model)
            live_defaults = LIVE_SIFT_PROPAGATION if model == "sift" else {}
            overrides = {"context": args.context, "radius": args.radius, "pool": args.pool}
            propagation = default_propagation_config(
                model, **{**live_defaults, **{k: v for k, v in overrides.items() if v is not None}}
            )
        except ValueError as exc:
            raise TrackerError(str(exc)) from None
    except BaseException:
        if video is not None:
            video.close()
        raise

    release: Callable[[], None]
    if video is None:
        frames, release = camera_frames(int(camera), camera_size)
        source: LatestFrame | Iterator[tuple[int, np.ndarray]] = LatestFrame(frames)
    else:
        release = video.close
        source = every_frame(iter(video)) if args.every_frame else LatestFrame(iter(video), fps=video.info.fps)

    def make_session(first: np.ndarray) -> LiveSession:
        featurizer, how = build_featurizer(
            model,
            first.shape[:2],
            backend,
            size=args.size,
            keep_aspect=args.keep_aspect,
            weights=args.weights,
            device=device,
        )
        how = how.split(" (auto:")[0]
        description = f"{featurizer.name} | {how} | input {featurizer.input_hw[1]}x{featurizer.input_hw[0]}"
        meta = {
            "source": kind,
            "width": first.shape[1],
            "height": first.shape[0],
            "model": featurizer.name,
            "backend": how,
            "device": device,
            "weights": args.weights or ("none" if model == "sift" else "table"),
            "input_size": list(featurizer.input_hw[::-1]),
            "grid_size": list(featurizer.grid_hw[::-1]),
            "match": vars(match),
        }
        return LiveSession(featurizer, match, propagation, description, meta)

    say(f"{kind}; {'headless' if args.headless else LIVE_KEYS}")
    try:
        session, status = run(make_session, source, options, say)
    finally:
        if isinstance(source, LatestFrame):
            source.close()
        release()
    s = session.stats
    say(
        f"{status}: {s.processed} frames processed ({s.dropped} dropped) at {s.mean_fps:.1f} frames/s, "
        f"{session.description}; {_count(session.num_points, 'point')}, {_count(session.num_masks, 'mask')}"
    )
    return 130 if status == "interrupted" else 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise TrackerError(f"--camera-size must be WxH, got {text!r}") from None
    if w < 1 or h < 1:
        raise TrackerError(f"--camera-size must be positive, got {text!r}")
    return w, h


if __name__ == "__main__":
    from tracker.apps.cli import main as track_main

    sys.exit(track_main(["live", *sys.argv[1:]]))
