"""What ``track serve`` takes from a client, checked before it is used: uploads by their first bytes, job points.

:func:`sniff_container` names the video container of an upload's first bytes (:data:`CONTAINERS`: those
accepted; the video is then decoded with OpenCV before it is taken) and :func:`describe_content` says what a
file that is not a video looks like. A job's body is read up to :func:`points_body_limit` bytes,
parsed by :func:`parse_points_body` (numbers too large for a float, NaN/Infinity and deep nesting are a
clean error, never a crash) and checked by :func:`check_points`.
"""

import json

import numpy as np

from tracker.errors import TrackerError

# First bytes of the containers accepted (the video is then decoded with OpenCV before it is taken).
CONTAINERS = "MP4/MOV, WebM/MKV, AVI, Ogg, FLV, MPEG-PS/TS"


def sniff_container(head: bytes) -> str | None:
    """The container named by a file's first bytes (at least 12; 189 for MPEG-TS), or None."""
    if len(head) >= 12 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"FLV"):
        return "flv"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg-ps"
    if len(head) > 188 and head[0] == 0x47 and head[188] == 0x47:
        return "mpeg-ts"
    return None


def describe_content(head: bytes) -> str:
    """What a file that is not a video looks like, in words a user knows (from its first bytes)."""
    kinds = [
        (b"\x89PNG", "a PNG image"),
        (b"\xff\xd8\xff", "a JPEG image"),
        (b"GIF8", "a GIF image"),
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a zip archive"),
        (b"#EXTM3U", "an HLS playlist"),
    ]
    for magic, what in kinds:
        if head.startswith(magic):
            return what
    if head.startswith(b"RIFF") and head[8:12] == b"WAVE":
        return "a WAV sound file"
    if head.startswith((b"ID3", b"\xff\xfb")):
        return "an MP3 sound file"
    text = None
    for cut in range(4):  # the first bytes may end inside a multi-byte character (up to 3 of its bytes)
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    if text is not None and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "text"
    return "no format known here"


# --------------------------------------------------------------------------- the points of a job


def points_body_limit(max_points: int) -> int:
    """Bytes a job's body may have: ``max_points`` points, even pretty-printed with long numbers, fit."""
    return 4096 + 160 * max_points


def _json_number(text: str) -> float:
    value = float(text)  # a number literal too large for a float (1e400, 10**400, 5000 digits) is inf
    if not np.isfinite(value):
        raise TrackerError("a number in the body is too large")
    return value


def _json_constant(text: str):
    raise TrackerError(f"{text} is not a number JSON allows")


def parse_points_body(raw: bytes) -> list:
    """A job's body, ``{"points": [[x, y], ...]}`` as UTF-8 JSON, parsed so that no input raises but a clean error.

    Numbers are parsed as floats (never as unbounded integers); NaN and Infinity are refused.

    Returns:
        The ``points`` list, not yet checked (``check_points`` does).

    Raises:
        TrackerError: not JSON of that shape, a number too large for a float, NaN/Infinity, or nested too deeply.
    """
    usage = 'the body must be JSON: {"points": [[x, y], ...]}'
    try:
        body = json.loads(
            raw.decode("utf-8"), parse_int=_json_number, parse_float=_json_number, parse_constant=_json_constant
        )
    except RecursionError:
        raise TrackerError("the body is nested too deeply") from None
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        raise TrackerError(usage) from None
    if not isinstance(body, dict) or not isinstance(body.get("points"), list):
        raise TrackerError(usage)
    return body["points"]


def _kind(value) -> str:
    """What a JSON value is, in words (for error messages; the value itself is not echoed)."""
    if isinstance(value, (bool, np.bool_)):
        return "true/false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return "a number" if isinstance(value, (int, float, np.number)) else type(value).__name__


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_points(points, max_points: int) -> np.ndarray:
    """Query points as ``[N, 3]`` float64: pixel x, y and the frame each is given on (0 when not given).

    Each point is ``[x, y]`` or ``[x, y, frame]`` of finite real numbers, the frame a whole number >= 0.

    Raises:
        TrackerError: not a list, no points, more than ``max_points``, or a point that is not two finite numbers
            (and optionally a frame).
    """
    if not isinstance(points, (list, tuple)):
        raise TrackerError(f"points must be a list of [x, y] pixel pairs; got {_kind(points)}")
    if len(points) == 0:
        raise TrackerError("no points: click on the first frame to add some")
    if len(points) > max_points:
        raise TrackerError(f"{len(points)} points; at most {max_points}")
    for i, point in enumerate(points):
        if not (isinstance(point, (list, tuple)) and len(point) in (2, 3)):
            raise TrackerError(f"points[{i}] must be [x, y], two numbers (or [x, y, frame]); got {_kind(point)}")
        for value in point:
            if not _is_number(value):
                got = "a list" if isinstance(value, (list, tuple)) else _kind(value)
                raise TrackerError(f"points[{i}] must be [x, y], two numbers (or [x, y, frame]); got {got}")
    try:
        xy = np.array([[*p, 0][:3] for p in points], dtype=np.float64)
    except OverflowError:
        raise TrackerError("a point's coordinate is too large") from None
    if not np.isfinite(xy).all():
        raise TrackerError(f"points[{int(np.argmin(np.isfinite(xy).all(1)))}] is not finite")
    bad = (xy[:, 2] < 0) | (xy[:, 2] != np.round(xy[:, 2]))
    if bad.any():
        raise TrackerError(f"points[{int(np.argmax(bad))}]: the frame must be a whole number >= 0")
    return xy
