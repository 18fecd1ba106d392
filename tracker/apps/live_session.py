"""The logic of ``track live``, free of any I/O but the tracks it is asked to save: events and the session.

Events: :class:`Click` (add a point), :class:`Paint` (add a mask object; :func:`paint_region` is the region
it covers) and :class:`Key` (clear, pause, save, quit), from the window (:class:`MouseGesture` turns mouse
presses, moves and releases into clicks and strokes) or from a headless script (:func:`read_script`).

:class:`LiveSession` is fed frames one at a time and applies events to the frame shown. Point tracking
reuses :meth:`PointTracker.advance` and masks :meth:`MaskPropagator.advance` on one feature grid per frame.
A click on frame ``t`` (already processed and shown) is exact: the session keeps the state from before ``t``
and ``t``'s feature grid, adds the point on ``t`` and advances again (with the same refinement, the
featurizer does not run twice). :meth:`LiveSession.render` draws the frame shown with its overlay and HUD.
The window, capture and command line around it are :mod:`tracker.apps.live`; frame sources
:mod:`tracker.apps.live_sources`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from tracker.apps.parsers import LIVE_KEYS
from tracker.errors import TrackerError
from tracker.featurizers import Featurizer
from tracker.geometry import frames_to_tensor
from tracker.io.formats import TrackLog, read_json, write_tracks
from tracker.matching import MatchConfig
from tracker.propagation import MaskPropagator, MaskState, PropagationConfig
from tracker.tracking import PointTracker, Queries, TrackResult, TrackState

# --------------------------------------------------------------------------- events

KEYS = {"c": "clear", "p": "pause", " ": "pause", "s": "save", "q": "quit", "\x1b": "quit"}
KEY_NAMES = {"space": " ", "esc": "\x1b", "escape": "\x1b"}


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

MESSAGE_SECONDS = 3.0  # how long the overlay shows what the last event did


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
