"""File formats: the query-points file (JSON Schema in ``tracker/schemas/points.schema.json``) and tracks.

Tracks are written atomically (temporary file + rename) as JSON, CSV or NPZ, all carrying the same fields:
``frame, point, x, y, visible, score`` (CSV: one row per point per frame; JSON/NPZ: ``[T, N]`` arrays).
Coordinates are pixels of the original frame; a point before its query frame has no position (empty in
CSV, null in JSON, NaN in NPZ).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError
from tracker.io.atomic import atomic_write
from tracker.tracking import Queries, TrackResult

TRACK_SUFFIXES = (".json", ".csv", ".npz")


def points_schema() -> dict:
    """The published JSON Schema of the points file."""
    return json.loads(resources.files("tracker").joinpath("schemas/points.schema.json").read_text())


# Points per file at most. Matching holds a similarity map per point and grid cell: measured 10-13 bytes per
# point per cell (peak RSS, 4 frames of 1280x720; see the README): sift's 60x107 grid there takes ~80 KB per
# point, 0.8 GB at this maximum (~1.9 GB at 1080p, extrapolated), a ViT's 31x31 grid ~10 KB per point.
MAX_POINTS = 10_000
MAX_DEPTH = 16  # nesting of JSON arrays/objects accepted (a points file needs 3)
_MAX_INT_DIGITS = 18  # integers longer than this cannot be a pixel coordinate or a frame


def loads_json(text: str | bytes, what: str):
    """Parse JSON text; every failure is one line naming ``what`` (e.g. ``"points file p.json"``).

    Integers are bounded (at most 18 digits: no unbounded int conversion) and so is nesting (``MAX_DEPTH``).

    Raises:
        TrackerError: not UTF-8, not JSON, an integer too long, or nested too deeply.
    """

    def parse_int(digits: str) -> int:
        length = len(digits.lstrip("-"))
        if length > _MAX_INT_DIGITS:
            raise TrackerError(f"{what} has an integer of {length} digits, too large for a coordinate or a frame")
        return int(digits)

    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = json.loads(text, parse_int=parse_int)
    except UnicodeDecodeError:
        raise TrackerError(f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise TrackerError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except RecursionError:
        raise TrackerError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:  # anything else json's number parsing refuses
        raise TrackerError(f"{what} is not valid JSON: {str(exc)[:80]}") from None
    if _depth(data, MAX_DEPTH) > MAX_DEPTH:
        raise TrackerError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)")
    return data


def _depth(data, limit: int) -> int:
    """Nesting depth of lists/dicts in ``data``, iteratively; stops counting past ``limit``."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            deepest = max(deepest, depth)
            if depth > limit:
                return depth
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def read_json(path: str | Path, what: str):
    """Parse a JSON file given on the command line; ``what`` names it in the one-line errors.

    Raises:
        TrackerError: missing, unreadable, not JSON, an integer too long or nested too deeply.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TrackerError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise TrackerError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    return loads_json(raw, f"{what} {path}")


def read_points(path: str | Path) -> Queries:
    """Read and validate a points file (see :func:`parse_points`).

    Raises:
        TrackerError: missing, not JSON, not matching the schema, empty, or more than ``MAX_POINTS`` points.
    """
    return parse_points(read_json(path, "points file"), f"points file {path}")


_NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)"
_ONE_POINT = rf"\s*{_NUMBER}\s*,\s*{_NUMBER}(\s*,\s*\d+)?\s*"
_INLINE = re.compile(rf"^{_ONE_POINT}(;{_ONE_POINT})*;?\s*$")
POINTS_SYNTAX = (
    'a points JSON file, inline points "x,y;x,y" (pixels of frame 0, e.g. "495,405;560,430"; "x,y,frame" '
    "for another frame), or --grid N instead"
)


def is_inline_points(value: str) -> bool:
    """Whether ``value`` is written as inline points (``"495,405;560,430"``, optionally ``x,y,frame``)."""
    return bool(_INLINE.match(value))


def parse_inline_points(value: str, max_points: int = MAX_POINTS) -> Queries:
    """Inline points ``"x,y;x,y"`` (pixels of frame 0) or ``"x,y,frame;..."``.

    Raises:
        TrackerError: not that syntax (the error shows it), or more than ``max_points`` points.
    """
    if not is_inline_points(value):
        raise TrackerError(f"--points {value!r} is not inline points; give {POINTS_SYNTAX}")
    items = [item for item in value.strip().strip(";").split(";") if item.strip()]
    if len(items) > max_points:
        raise TrackerError(f"--points gives {len(items)} points; at most {max_points} are tracked in one run")
    xy, frames = [], []
    for item in items:
        parts = [float(v) for v in item.split(",")]
        xy.append(parts[:2])
        frames.append(int(parts[2]) if len(parts) == 3 else 0)
    if max(abs(v) for pair in xy for v in pair) >= 2**31 or max(frames) >= 2**31:
        raise TrackerError("--points has a coordinate or frame too large")
    return Queries.create(xy, frames)


def points_argument(value: str) -> Queries:
    """``--points``: a points file when one exists by that name, else inline points.

    Raises:
        TrackerError: a bad file (see :func:`read_points`), or neither a file nor inline points, in one line
            that shows the syntax.
    """
    path = Path(value)
    if path.exists() or not is_inline_points(value):
        if not path.exists():
            raise TrackerError(f"--points: points file {value} not found, nor inline points; give {POINTS_SYNTAX}")
        return read_points(path)
    return parse_inline_points(value)


def grid_points(n: int, height: int, width: int, frame: int = 0) -> Queries:
    """An ``n x n`` grid of query points over a ``height x width`` frame (cell centres), as demos start with.

    Raises:
        TrackerError: ``n`` below 1 or the grid over ``MAX_POINTS`` points.
    """
    if n < 1:
        raise TrackerError(f"--grid N needs N >= 1 (an N x N grid of points), got {n}")
    if n * n > MAX_POINTS:
        raise TrackerError(f"--grid {n} is {n * n} points; at most {MAX_POINTS} (--grid {math.isqrt(MAX_POINTS)})")
    xs = (np.arange(n) + 0.5) * width / n - 0.5
    ys = (np.arange(n) + 0.5) * height / n - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return Queries.create(np.stack([gx.ravel(), gy.ravel()], 1), frame)


def points_from_json_text(text: str | bytes, what: str = "points", max_points: int = MAX_POINTS) -> Queries:
    """Parse and validate points given as JSON text (a file's contents, a request body).

    Args:
        text: JSON in the points schema (``tracker/schemas/points.schema.json``).
        what: names the input in the one-line errors.
        max_points: most points accepted.

    Raises:
        TrackerError: one line, for every bad input (never another exception).
    """
    return parse_points(loads_json(text, what), what, max_points)


def parse_points(data, what: str = "points", max_points: int = MAX_POINTS) -> Queries:
    """Validate parsed JSON against the points schema and build the queries (``N`` points, pixels).

    Raises:
        TrackerError: not matching the schema, empty, more than ``max_points`` points, a coordinate that is not
            finite or a frame index too large.
    """
    import jsonschema

    items = data.get("points") if isinstance(data, dict) else data
    if items == []:
        raise TrackerError(f"{what} holds no points")
    if isinstance(items, list) and len(items) > max_points:
        raise TrackerError(f"{what} has {len(items)} points; at most {max_points} are tracked in one run")
    try:
        jsonschema.validate(data, points_schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise TrackerError(f"{what} does not match the schema at {where}: {_short(exc)}") from None
    except RecursionError:
        raise TrackerError(f"{what} is nested too deeply") from None
    xy, frames, labels = [], [], []
    for item in items:
        if isinstance(item, dict):
            xy.append((item["x"], item["y"]))
            frames.append(item.get("frame", 0))
            labels.append(item.get("label", ""))
        else:
            xy.append(tuple(item))
            frames.append(0)
            labels.append("")
    if max(frames) >= 2**31:
        raise TrackerError(f"{what} has a frame index too large to be a frame")
    try:
        finite = all(math.isfinite(v) and abs(v) < 2**31 for pair in xy for v in pair)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite:
        raise TrackerError(f"{what} has a coordinate that is not a finite number (or beyond 2**31 pixels)")
    return Queries.create(xy, frames, labels)


def _short(exc) -> str:
    message = exc.message
    return message if len(message) < 120 else message[:117] + "..."


@dataclass
class TrackLog:
    """Results gathered frame by frame; what a run has finished is always writable.

    Each frame is copied into preallocated blocks of ``block`` frames, so a long run leaves one allocation
    per block behind instead of three small tensors per frame: small long-lived allocations made between
    the featurizer's large short-lived buffers pin freed heap space and made the memory of a long run grow
    (see :mod:`tracker.allocator`).

    Attributes:
        queries: the query points (N).
        block: frames per storage block.
    """

    queries: Queries
    block: int = 1024

    def __post_init__(self) -> None:
        self._blocks: list[np.ndarray] = []  # each [block, N, 4] float32: x, y, score, visible
        self._count = 0

    def append(self, result: TrackResult) -> None:
        """Copy ``result`` (``N`` points) into the log; the result's tensors are not kept."""
        row = self._count % self.block
        if row == 0:
            self._blocks.append(np.empty((self.block, len(result.xy), 4), np.float32))
        out = self._blocks[-1][row]
        out[:, :2] = result.xy.numpy()
        out[:, 2] = result.score.numpy()
        out[:, 3] = result.visible.numpy()
        self._count += 1

    def __len__(self) -> int:
        return self._count

    def arrays(self) -> dict[str, np.ndarray]:
        """``frame [T]``, ``point [N]``, ``x, y, score [T, N]`` float32, ``visible [T, N]`` bool."""
        n = len(self.queries)
        rows = np.concatenate(self._blocks)[: self._count] if self._blocks else np.zeros((0, n, 4), np.float32)
        return {
            "frame": np.arange(len(self), dtype=np.int64),
            "point": np.arange(n, dtype=np.int64),
            "x": np.ascontiguousarray(rows[..., 0]),
            "y": np.ascontiguousarray(rows[..., 1]),
            "visible": rows[..., 3] > 0.5,
            "score": np.ascontiguousarray(rows[..., 2]),
        }


def write_tracks(path: str | Path, log: TrackLog, meta: dict) -> None:
    """Write tracks atomically; the format follows the suffix (``.json``, ``.csv`` or ``.npz``)."""
    path = Path(path)
    arrays = log.arrays()
    suffix = path.suffix.lower()
    if suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["frame", "point", "x", "y", "visible", "score"])
        for t in arrays["frame"]:
            for i in arrays["point"]:
                x, y, s = arrays["x"][t, i], arrays["y"][t, i], arrays["score"][t, i]
                writer.writerow([t, i, _num(x), _num(y), int(arrays["visible"][t, i]), _num(s, 4)])
        atomic_write(path, buffer.getvalue().encode())
    elif suffix == ".json":
        doc = {
            **meta,
            "num_frames_tracked": len(log),
            "points": _points_meta(log.queries),
            "fields": {
                "x": "[frame][point] pixels",
                "y": "[frame][point] pixels",
                "visible": "[frame][point]",
                "score": "[frame][point] cosine similarity",
            },
            "frame": arrays["frame"].tolist(),
            "point": arrays["point"].tolist(),
            "x": _nested(arrays["x"]),
            "y": _nested(arrays["y"]),
            "visible": arrays["visible"].astype(int).tolist(),
            "score": _nested(arrays["score"], 4),
        }
        atomic_write(path, json.dumps(doc, separators=(",", ":")).encode())
    elif suffix == ".npz":
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            **arrays,
            query_xy=log.queries.xy.numpy(),
            query_frame=log.queries.frame.numpy(),
            label=np.asarray(log.queries.labels, dtype=str),
            meta=np.asarray(json.dumps(meta)),
        )
        atomic_write(path, buffer.getvalue())
    else:
        raise TrackerError(f"--out-tracks must end in .json, .csv or .npz, got {path.name}")


def _points_meta(queries: Queries) -> list[dict]:
    return [
        {"point": i, "label": label, "frame": int(f), "x": float(xy[0]), "y": float(xy[1])}
        for i, (label, f, xy) in enumerate(
            zip(queries.labels, queries.frame.tolist(), queries.xy.tolist(), strict=True)
        )
    ]


def _num(value: float, digits: int = 3) -> str:
    return "" if not np.isfinite(value) else f"{value:.{digits}f}"


def _nested(array: np.ndarray, digits: int = 3) -> list:
    rounded = np.round(array.astype(np.float64), digits)
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in rounded]


def read_tracks(path: str | Path) -> dict[str, np.ndarray]:
    """Read tracks written by :func:`write_tracks` back into ``frame, point, x, y, visible, score`` arrays."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as data:
            return {k: data[k] for k in ("frame", "point", "x", "y", "visible", "score")}
    if suffix == ".json":
        doc = json.loads(path.read_text())
        as_float = lambda rows: np.array([[np.nan if v is None else v for v in r] for r in rows], np.float32)  # noqa: E731
        return {
            "frame": np.array(doc["frame"]),
            "point": np.array(doc["point"]),
            "x": as_float(doc["x"]),
            "y": as_float(doc["y"]),
            "visible": np.array(doc["visible"], bool),
            "score": as_float(doc["score"]),
        }
    rows = list(csv.DictReader(path.open()))
    frames = sorted({int(r["frame"]) for r in rows})
    points = sorted({int(r["point"]) for r in rows})
    out = {k: np.full((len(frames), len(points)), np.nan, np.float32) for k in ("x", "y", "score")}
    out["visible"] = np.zeros((len(frames), len(points)), bool)
    for r in rows:
        t, i = int(r["frame"]), int(r["point"])
        for k in ("x", "y", "score"):
            out[k][t, i] = float(r[k]) if r[k] else np.nan
        out["visible"][t, i] = r["visible"] == "1"
    return {"frame": np.array(frames), "point": np.array(points), **out}


# --------------------------------------------------------------------------- masks (DAVIS palette PNGs)


def davis_palette() -> np.ndarray:
    """``[256, 3]`` uint8: the DAVIS / PASCAL VOC palette (id 1 dark red, 2 green, 3 olive, ...)."""
    palette = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


MAX_OBJECTS = 100
"""At most this many objects in one mask: DAVIS-2017 and YouTube-VOS masks hold a few to a dozen; more distinct
values mean a JPEG, anti-aliased or grey-scale image rather than object ids (and OpenCV's remap of the flow-warped
label probabilities crashed beyond about 150 channels)."""


def read_mask(path: str | Path) -> np.ndarray:
    """``[H, W]`` uint8 object ids from a palette PNG (indices) or a binary/grey PNG (non-zero -> 1).

    A grey PNG whose non-zero values are not all one value keeps its values as ids.

    Raises:
        TrackerError: missing or unreadable, or more than :data:`MAX_OBJECTS` objects.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            mode = image.mode
            array = np.asarray(image)
    except FileNotFoundError:
        raise TrackerError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError):
        raise TrackerError(f"cannot read mask {path}: not an image") from None
    if mode != "P" and array.ndim == 3:
        array = array[..., :3].max(-1)
    values = np.unique(array[array > 0])
    if len(values) > MAX_OBJECTS:
        raise TrackerError(
            f"mask {path} has {len(values)} distinct non-zero values, more than {MAX_OBJECTS} objects: a mask holds "
            "object ids (0 background; one value for one object, or 1..K), so save it as a PNG without "
            "anti-aliasing or as a palette PNG, not as a JPEG or a grey-scale image"
        )
    if mode == "P":
        return array.astype(np.uint8)
    return (array > 0).astype(np.uint8) if len(values) <= 1 else array.astype(np.uint8)


def write_mask(path: str | Path, labels: np.ndarray) -> None:
    """Write ``[H, W]`` uint8 ids as a DAVIS palette PNG, atomically."""
    from PIL import Image

    image = Image.fromarray(labels.astype(np.uint8), mode="P")
    image.putpalette(davis_palette().ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(Path(path), buffer.getvalue())


def fit_mask(labels: np.ndarray, frame_hw: tuple[int, int], name: str = "mask") -> np.ndarray:
    """Object ids resized (nearest) to the frame when they are within 2% of its size; else an error.

    Real annotations can be a pixel off (the Cutie ``judo`` example has 853x480 masks for 854x480 frames).
    """
    import cv2

    if labels.shape == frame_hw:
        return labels
    (h, w), (fh, fw) = labels.shape, frame_hw
    if abs(h - fh) > 0.02 * fh or abs(w - fw) > 0.02 * fw:
        raise TrackerError(f"{name} is {w}x{h}, the video {fw}x{fh}")
    return cv2.resize(labels, (fw, fh), interpolation=cv2.INTER_NEAREST)
