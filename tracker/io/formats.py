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


def read_json(path: str | Path, what: str):
    """Parse a JSON file given on the command line; ``what`` names it in the one-line errors.

    Raises:
        TrackerError: missing, unreadable, or not JSON.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise TrackerError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrackerError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except json.JSONDecodeError as exc:
        raise TrackerError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


def read_points(path: str | Path) -> Queries:
    """Read and validate a points file.

    Raises:
        TrackerError: missing, not JSON, not matching the schema, or empty.
    """
    import jsonschema

    data = read_json(path, "points file")
    if data == [] or (isinstance(data, dict) and data.get("points") == []):
        raise TrackerError(f"points file {path} holds no points")
    try:
        jsonschema.validate(data, points_schema())
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "top level"
        raise TrackerError(f"points file {path} does not match the schema at {where}: {_short(exc)}") from None
    items = data["points"] if isinstance(data, dict) else data
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
        raise TrackerError(f"points file {path} has a frame index too large to be a frame")
    if not all(math.isfinite(v) for pair in xy for v in pair):
        raise TrackerError(f"points file {path} has a coordinate that is not a finite number")
    return Queries.create(xy, frames, labels)


def _short(exc) -> str:
    message = exc.message
    return message if len(message) < 120 else message[:117] + "..."


@dataclass
class TrackLog:
    """Results gathered frame by frame; what a run has finished is always writable.

    Attributes:
        queries: the query points (N).
        xy, visible, score: per frame ``[N, 2]``, ``[N]``, ``[N]`` arrays.
    """

    queries: Queries

    def __post_init__(self) -> None:
        self.xy: list[np.ndarray] = []
        self.visible: list[np.ndarray] = []
        self.score: list[np.ndarray] = []

    def append(self, result: TrackResult) -> None:
        self.xy.append(result.xy.numpy())
        self.visible.append(result.visible.numpy())
        self.score.append(result.score.numpy())

    def __len__(self) -> int:
        return len(self.xy)

    def arrays(self) -> dict[str, np.ndarray]:
        """``frame [T]``, ``point [N]``, ``x, y, score [T, N]`` float32, ``visible [T, N]`` bool."""
        n = len(self.queries)
        xy = np.stack(self.xy) if self.xy else np.zeros((0, n, 2), np.float32)
        return {
            "frame": np.arange(len(self), dtype=np.int64),
            "point": np.arange(n, dtype=np.int64),
            "x": xy[..., 0].astype(np.float32),
            "y": xy[..., 1].astype(np.float32),
            "visible": np.stack(self.visible) if self.visible else np.zeros((0, n), bool),
            "score": np.stack(self.score).astype(np.float32) if self.score else np.zeros((0, n), np.float32),
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


def read_mask(path: str | Path) -> np.ndarray:
    """``[H, W]`` uint8 object ids from a palette PNG (indices) or a binary/grey PNG (non-zero -> 1).

    A grey PNG whose non-zero values are not all one value keeps its values as ids.

    Raises:
        TrackerError: missing or unreadable.
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
    if mode == "P":
        return array.astype(np.uint8)
    if array.ndim == 3:
        array = array[..., :3].max(-1)
    values = np.unique(array[array > 0])
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
