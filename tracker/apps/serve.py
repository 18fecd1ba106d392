"""Web demo: ``track serve`` starts a small web app on localhost (FastAPI + uvicorn, one static page).

Upload a video (or record a few seconds of the browser's camera), click query points on its first frame,
watch the tracked overlay stream back, download the tracks. The HTTP interface (JSON errors as
``{"error": "one line"}``):

- ``POST /api/videos``: the video as the raw request body (no file name is sent or used). It is streamed to
  a temporary folder under a server-made name, refused beyond the size limit (413), refused unless its first
  bytes are a known video container (415), and decoded with OpenCV before it is accepted (415 when it
  cannot be, or has fewer than 2 frames). Answers the video's id, size, frame rate and frame count.
- ``POST /api/demo``: a generated demo clip (moving textured objects), accepted as an upload would be, with
  suggested points on its objects.
- ``GET /api/videos/{id}/first.jpg``: its first frame; ``/frames/{k}.jpg``: frame ``k`` (for points on
  later frames).
- ``POST /api/videos/{id}/jobs`` ``{"points": [[x, y] or [x, y, frame], ...]}`` (pixels of the original
  frame, on frame 0 or the frame given): starts tracking in a worker thread (never on the event loop);
  answers the job id.
- ``GET /api/jobs/{id}/events``: server-sent events, ``frame`` (points of one frame and the overlay, drawn at
  the preview size, as a JPEG data URL) then ``done`` (with a summary of visibility), ``cancelled`` or
  ``failed``.
- ``POST /api/jobs/{id}/cancel``: stops a job (the frames tracked so far stay on the page).
- ``GET /api/jobs/{id}/tracks.json`` / ``tracks.csv`` / ``overlay.mp4``: the tracks and the full-size
  overlay video once the job is done (409 before).
- ``GET /api/info``: the model, its device, the limits, the point palette (shared with the overlays: point
  ``i`` has colour ``palette[i]`` everywhere) and whether the weight-free fallback runs.

Ids are random hex made by the server and checked against that shape, so no client text becomes a path.
Old uploads and jobs are deleted when newer ones arrive (``max_videos``, ``max_jobs``).

Other web sites cannot use it through a visitor's browser (``Guard``):

- DNS rebinding: a request is answered only when its ``Host`` is a loopback name (``localhost``, 127.x.y.z,
  ``[::1]``, any port), the address the server is bound to, or one of ``allowed_hosts`` (400 otherwise).
- CSRF: a POST must carry a ``Content-Type`` that a cross-site form cannot send without a CORS preflight
  (which this server never grants): uploads ``application/octet-stream`` or ``video/*``, jobs
  ``application/json`` (415 otherwise), and an ``Origin``, when sent, must be the server's own (403).
- The points body is read up to ``points_body_limit(max_points)`` bytes and refused past it (413) before it
  is parsed; numbers too large for a float, NaN/Infinity and deep nesting are a 400, never a 500.
"""

import argparse
import asyncio
import base64
import contextlib
import ipaddress
import json
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from tracker.errors import TrackerError

ID = re.compile(r"^[0-9a-f]{32}$")
MB = 1 << 20

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


# --------------------------------------------------------------------------- who may talk to the server

_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_HOST = re.compile(r"^(?P<name>\[[0-9a-fA-F:.]+\]|[^\[\]:]+)(:(?P<port>[0-9]{1,5}))?$")
# A cross-site form (or a "simple" fetch) may POST these without a CORS preflight.
FORM_TYPES = ("", "text/plain", "multipart/form-data", "application/x-www-form-urlencoded")


def split_host(value: str) -> tuple[str, int | None] | None:
    """A ``Host`` header (``name``, ``name:port``, ``[v6]``, ``[v6]:port``) as ``(name, port)``, or None.

    Names are lower-cased; IP addresses are written the standard way (IPv6 without brackets).
    """
    m = _HOST.match(value.strip())
    if m is None:
        return None
    name, port = m["name"].lower(), m["port"]
    if port is not None and not 0 < int(port) < 65536:
        return None
    try:
        name = str(ipaddress.ip_address(name[1:-1] if name.startswith("[") else name))
    except ValueError:
        if name.startswith("[") or not _NAME.match(name) or len(name) > 253:
            return None
    return name, None if port is None else int(port)


def is_loopback(name: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class HostPolicy:
    """The ``Host`` values the server answers (the DNS rebinding guard).

    Loopback names are always served; so are the address the server is bound to (unless it is a wildcard
    such as 0.0.0.0, which no client addresses) and the ``allowed`` names (``name`` or ``name:port``).

    Args:
        bind_host: the address or name the server listens on.
        allowed: further names, as given to ``--allowed-host``.

    Raises:
        ValueError: an allowed entry is not a host name or address.
    """

    def __init__(self, bind_host: str, allowed: tuple[str, ...] = ()):
        self.allowed: set[tuple[str, int | None]] = set()
        for entry in allowed:
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"{entry!r} is not a host name or address (name, name:port, 1.2.3.4, [::1]:8000)")
            self.allowed.add(parsed)
        bound = split_host(f"[{bind_host}]" if ":" in bind_host else bind_host)
        if bound is not None and bound[0] not in ("0.0.0.0", "::"):
            self.allowed.add((bound[0], None))

    def allows(self, host: str) -> bool:
        parsed = split_host(host)
        if parsed is None:
            return False
        name, port = parsed
        return is_loopback(name) or (name, None) in self.allowed or (name, port) in self.allowed


def media_type(content_type: str | None) -> str:
    """The essence of a ``Content-Type`` (``type/subtype``, lower case, no parameters); "" when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


class Guard:
    """ASGI middleware: refuses foreign ``Host`` names (400), form-like POSTs (415) and foreign ``Origin``s (403).

    Every answer, refused or not, carries ``X-Content-Type-Options: nosniff``. Errors are one-line JSON.

    Args:
        app: the ASGI app guarded.
        policy: the ``Host`` values served.
    """

    SAFE = ("GET", "HEAD", "OPTIONS")

    def __init__(self, app, policy: HostPolicy):
        self.app, self.policy = app, policy

    def refusal(self, method: str, headers) -> tuple[int, str] | None:
        """``(status, message)`` when the request must be refused, else None."""
        hosts = headers.getlist("host")
        host = hosts[0] if len(hosts) == 1 else ""
        if not self.policy.allows(host):
            shown = json.dumps(host[:80]) if len(hosts) < 2 else "given twice"
            return 400, (
                f"host {shown} is not served here (a guard against DNS rebinding); open the address "
                "track serve printed, or start it with --allowed-host NAME"
            )
        if method in self.SAFE:
            return None
        kind = media_type(headers.get("content-type"))
        if kind in FORM_TYPES:
            return 415, (
                f"refused: Content-Type {kind or 'none'} can be sent by any web page's form; send uploads as "
                "application/octet-stream or video/*, jobs as application/json"
            )
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            return 403, f"refused: a request from origin {json.dumps(origin[:80])}; only this server's pages may post"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers
        from starlette.responses import JSONResponse

        async def send_nosniff(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (b"x-content-type-options", b"nosniff")]
            await send(message)

        refused = self.refusal(scope["method"], Headers(scope=scope))
        if refused is not None:
            await JSONResponse({"error": refused[1]}, status_code=refused[0])(scope, receive, send_nosniff)
            return
        await self.app(scope, receive, send_nosniff)


def _same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` header names this server as reached through ``host`` (the ``Host`` header)."""
    scheme, sep, netloc = origin.partition("://")
    return sep == "://" and scheme.lower() in ("http", "https") and netloc.lower() == host.strip().lower()


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


@dataclass(frozen=True)
class ServeConfig:
    """Settings of the web demo.

    Attributes:
        model: a concrete model name (``sift``, ``distilldift``, ...).
        weights, size, keep_aspect, device, backend, precision: as for ``track``.
        max_upload_mb: uploads larger than this are refused.
        max_frames: frames tracked at most per job (the rest of a longer video is not tracked).
        max_points: query points at most per job.
        max_videos, max_jobs: uploads and finished jobs kept; older ones are deleted.
        max_pending: jobs queued or running at most; more are refused (503) until one finishes.
        max_pixels: largest frame (width x height) accepted (default 3840 x 2160).
        preview_width: overlay frames streamed back are drawn at most this wide (about the page's size, so
            markers stay sharp; the overlay video is drawn at the full size).
        workdir: folder for uploads and results (None: a new temporary folder, removed on shutdown).
        host: the address the server is bound to; requests are answered for it and for loopback names.
        allowed_hosts: further ``Host`` names (``name`` or ``name:port``) answered, as ``--allowed-host``.
    """

    model: str = "sift"
    weights: str | None = None
    size: str | None = None
    keep_aspect: bool = False
    device: str = "cpu"
    backend: str = "auto"
    precision: str | None = None
    max_upload_mb: float = 64.0
    max_frames: int = 900
    max_points: int = 256
    max_videos: int = 16
    max_jobs: int = 32
    max_pending: int = 4
    max_pixels: int = 3840 * 2160
    preview_width: int = 960
    workdir: Path | None = None
    host: str = "127.0.0.1"
    allowed_hosts: tuple[str, ...] = ()


@dataclass
class Video:
    """An accepted upload.

    Attributes:
        id: server-made hex id.
        path: where it is stored (``<workdir>/videos/<id>.video``).
        width, height: frame size in pixels.
        fps: frames per second (25 when the container does not say).
        num_frames: frames decoded (at most ``max_frames + 1``; ``truncated`` when there were more).
        container: what its first bytes said.
    """

    id: str
    path: Path
    width: int
    height: int
    fps: float
    num_frames: int
    truncated: bool
    container: str

    def public(self) -> dict:
        return {
            "video": self.id,
            "width": self.width,
            "height": self.height,
            "fps": round(self.fps, 3),
            "num_frames": self.num_frames,
            "truncated": self.truncated,
            "container": self.container,
            "first_frame": f"/api/videos/{self.id}/first.jpg",
        }


@dataclass
class Job:
    """Tracking of one video's query points, run in the worker thread; readers poll ``messages``.

    Attributes:
        points: ``[N, 3]`` pixel x, y and query frame of each point.
        messages: ``(kind, payload)`` in order: ``frame`` per frame, then ``done``, ``cancelled`` or ``failed``.
            Overlay images are kept for the last ``images`` frames only, points for all (memory stays small).
        status: ``queued``, ``running``, ``done``, ``failed`` or ``cancelled``.
    """

    id: str
    video: Video
    points: np.ndarray
    folder: Path
    status: str = "queued"
    messages: list = field(default_factory=list)
    images: deque = field(default_factory=lambda: deque(maxlen=48))
    cancel: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def push(self, kind: str, payload: dict, image: str | None = None) -> None:
        with self.lock:
            index = len(self.messages)
            self.messages.append((kind, payload))
            if image is not None:
                self.images.append((index, image))

    def read(self, start: int) -> list[tuple[int, str, dict, str | None]]:
        """Messages from ``start`` on, each with its overlay image when still kept."""
        with self.lock:
            images = dict(self.images)
            return [(i, *self.messages[i], images.get(i)) for i in range(start, len(self.messages))]


class Busy(TrackerError):
    """Too many jobs waiting; the client should try again later."""


class TrackingService:
    """Uploads, jobs and the worker thread behind the web app (no HTTP in here).

    Args:
        config: the demo's settings.
    """

    def __init__(self, config: ServeConfig):
        from tracker.featurizers import default_match_config

        self.config = config
        self._tmp = None
        if config.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="tracker-serve-")
            root = Path(self._tmp.name)
        else:
            root = Path(config.workdir)
        self.videos_dir, self.jobs_dir = root / "videos", root / "jobs"
        self.videos_dir.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.match = default_match_config(config.model)
        self.videos: OrderedDict[str, Video] = OrderedDict()
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._featurizers: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="track-job")

    # ----------------------------------------------------------------- uploads

    def new_upload_path(self) -> tuple[str, Path]:
        video_id = secrets.token_hex(16)
        return video_id, self.videos_dir / f"{video_id}.video"

    def accept(self, video_id: str, path: Path) -> Video:
        """Check an uploaded file by its first bytes and by decoding it; keep it, or delete it and raise.

        Raises:
            TrackerError: not a video container, not decodable, or fewer than 2 frames.
        """
        try:
            with path.open("rb") as f:
                head = f.read(512)
            container = sniff_container(head)
            if container is None:
                raise TrackerError(f"not a video (it looks like {describe_content(head)}); supported: {CONTAINERS}")
            video = self._probe(video_id, path, container)
        except BaseException:
            path.unlink(missing_ok=True)
            shutil.rmtree(path.with_suffix(""), ignore_errors=True)
            raise
        with self._lock:
            self.videos[video_id] = video
            while len(self.videos) > self.config.max_videos:
                _, old = self.videos.popitem(last=False)
                old.path.unlink(missing_ok=True)
                old.path.with_suffix(".jpg").unlink(missing_ok=True)
                shutil.rmtree(old.path.with_suffix(""), ignore_errors=True)
        return video

    def _probe(self, video_id: str, path: Path, container: str) -> Video:
        from tracker.io.video import open_video

        try:
            source = open_video(path)
        except TrackerError:
            raise TrackerError(f"cannot decode the video ({container} container, but no frame decodes)") from None
        w, h = source.info.width, source.info.height
        if w * h > self.config.max_pixels:
            source.close()
            raise TrackerError(f"the frames are {w}x{h}, over the limit of {self.config.max_pixels / 1e6:g} megapixels")
        count, first = 0, None
        frames_dir = self.videos_dir / video_id
        frames_dir.mkdir(exist_ok=True)
        scale = min(1.0, self.config.preview_width / w)
        preview = (max(1, round(w * scale)), max(1, round(h * scale)))
        try:
            for frame in source:
                if first is None:
                    first = frame
                count += 1
                if count > self.config.max_frames:
                    break
                small = cv2.resize(frame, preview, interpolation=cv2.INTER_AREA) if scale < 1.0 else frame
                ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
                if ok:
                    (frames_dir / f"{count - 1}.jpg").write_bytes(jpeg.tobytes())
        except TrackerError:
            if count == 0:
                raise TrackerError("cannot decode the video: its first frame is corrupt") from None
        finally:
            source.close()
        if count < 2:
            raise TrackerError(f"the video has {count} frame{'s' * (count != 1)}; tracking needs at least 2")
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(first, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        if ok:
            (self.videos_dir / f"{video_id}.jpg").write_bytes(jpeg.tobytes())
        fps = source.info.fps if 1.0 <= source.info.fps <= 240.0 else 25.0  # recorded webm reports odd rates
        truncated = count > self.config.max_frames
        return Video(
            video_id,
            path,
            first.shape[1],
            first.shape[0],
            float(fps),
            min(count, self.config.max_frames),
            truncated,
            container,
        )

    def first_frame(self, video_id: str) -> Path | None:
        with self._lock:
            video = self.videos.get(video_id)
        path = self.videos_dir / f"{video_id}.jpg"
        return path if video is not None and path.is_file() else None

    def frame_image(self, video_id: str, index: int) -> Path | None:
        """Frame ``index`` of an upload at the preview size (JPEG), or None."""
        with self._lock:
            video = self.videos.get(video_id)
        path = self.videos_dir / video_id / f"{index}.jpg"
        return path if video is not None and 0 <= index < video.num_frames and path.is_file() else None

    def demo(self) -> tuple[Video, list[list[float]]]:
        """Generate the demo clip (textured objects moving over a background) and accept it as an upload.

        Returns:
            The video and suggested points (inside its objects on frame 0).
        """
        from tracker.synthetic import moving_objects, write_video

        clip = moving_objects(num_frames=min(48, self.config.max_frames), size=(240, 320), num_objects=2, seed=0)
        video_id, path = self.new_upload_path()
        mp4 = path.with_suffix(".mp4")
        write_video(str(mp4), clip.frames, fps=25)
        mp4.rename(path)
        video = self.accept(video_id, path)
        points = []
        for x0, y0, x1, y1 in clip.object_boxes:
            for fx, fy in ((0.3, 0.35), (0.7, 0.35), (0.5, 0.7)):
                points.append([round(float(x0 + fx * (x1 - x0)), 1), round(float(y0 + fy * (y1 - y0)), 1)])
        return video, points

    # ----------------------------------------------------------------- jobs

    def start(self, video_id: str, points: list) -> Job:
        """Queue tracking of ``points`` (``[[x, y], ...]`` pixels of the first frame) through a video.

        Raises:
            TrackerError: no points, too many, a point that is not two finite numbers, or one outside the frame.
            Busy: ``max_pending`` jobs are already queued or running.
            KeyError: no such video.
        """
        with self._lock:
            video = self.videos.get(video_id)
        if video is None:
            raise KeyError(video_id)
        xy = check_points(points, self.config.max_points)
        late = xy[:, 2] >= video.num_frames
        if late.any():
            i = int(np.argmax(late))
            raise TrackerError(f"points[{i}] is on frame {int(xy[i, 2])}, but the video has {video.num_frames} frames")
        outside = (xy[:, 0] < -0.5) | (xy[:, 0] > video.width - 0.5)
        outside |= (xy[:, 1] < -0.5) | (xy[:, 1] > video.height - 0.5)
        if outside.any():
            x, y = xy[int(np.argmax(outside)), :2]
            raise TrackerError(f"point ({x:g}, {y:g}) is outside the {video.width}x{video.height} frame")
        job_id = secrets.token_hex(16)
        folder = self.jobs_dir / job_id
        job = Job(job_id, video, xy, folder)
        with self._lock:
            pending = sum(j.status in ("queued", "running") for j in self.jobs.values())
            if pending >= self.config.max_pending:
                raise Busy(f"busy: {pending} jobs are queued or running; try again when one has finished")
            folder.mkdir()
            self.jobs[job_id] = job
            finished = [j for j in self.jobs.values() if j.status in ("done", "failed", "cancelled")]
            for old in finished[: max(0, len(self.jobs) - self.config.max_jobs)]:
                self.jobs.pop(old.id, None)
                shutil.rmtree(old.folder, ignore_errors=True)
        self._executor.submit(self._run, job)
        return job

    def job(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop (it ends with a ``cancelled`` event after the frame it is on); None: no such job."""
        job = self.job(job_id)
        if job is not None:
            job.cancel.set()
        return job

    def featurizer(self, frame_hw: tuple[int, int]):
        """The featurizer for frames of ``frame_hw`` (the last two sizes are kept)."""
        from tracker.backends import BackendOptions, build_featurizer

        if frame_hw not in self._featurizers:
            c = self.config
            self._featurizers[frame_hw], _ = build_featurizer(
                c.model,
                frame_hw,
                BackendOptions(backend=c.backend, precision=c.precision),
                size=c.size,
                keep_aspect=c.keep_aspect,
                weights=c.weights,
                device=c.device,
            )
            while len(self._featurizers) > 2:
                self._featurizers.popitem(last=False)
        return self._featurizers[frame_hw]

    def _run(self, job: Job) -> None:
        """The worker thread: track, stream each frame (drawn at the preview size), write tracks and overlay."""
        import torch

        from tracker.io.drawing import TrackOverlay
        from tracker.io.formats import TrackLog, write_tracks
        from tracker.io.video import AtomicVideoWriter, open_video
        from tracker.tracking import PointTracker, Queries

        if job.cancel.is_set():
            job.status = "cancelled"
            job.push("cancelled", {"frames": 0})
            return
        job.status = "running"
        video = job.video
        start = time.perf_counter()
        writer = None
        try:
            featurizer = self.featurizer((video.height, video.width))
            tracker = PointTracker(featurizer, self.match)
            queries = Queries.create(job.points[:, :2], job.points[:, 2].astype(np.int64))
            log = TrackLog(queries)
            full, small = TrackOverlay(), TrackOverlay()
            scale = min(1.0, self.config.preview_width / video.width)
            preview = (max(1, round(video.width * scale)), max(1, round(video.height * scale)))  # as _probe
            writer = AtomicVideoWriter(job.folder / "overlay.mp4", video.fps, (video.width, video.height))
            source = open_video(video.path)
            try:
                with torch.inference_mode():
                    state = None
                    for index, frame in enumerate(source):
                        if job.cancel.is_set() or index >= video.num_frames:
                            break
                        if state is None:
                            state = tracker.init(frame, queries)
                            result = state.latest
                        else:
                            result, state = tracker.step(state, frame)
                        log.append(result)
                        writer.write(full.draw(frame, result))
                        shown = cv2.resize(frame, preview, interpolation=cv2.INTER_AREA) if scale < 1.0 else frame
                        drawn = small.draw(shown, result, scale)
                        ok, jpeg = cv2.imencode(
                            ".jpg", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88]
                        )
                        image = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode() if ok else None
                        job.push("frame", _frame_message(result, video.num_frames), image)
            finally:
                source.close()
            if job.cancel.is_set():
                writer.discard()
                job.status = "cancelled"
                job.push("cancelled", {"frames": len(log)})
                return
            writer.close()
            meta = {
                "video": "upload",
                "width": video.width,
                "height": video.height,
                "fps": video.fps,
                "model": self.config.model,
                "weights": self.config.weights or ("none" if self.config.model == "sift" else "table"),
                "input_size": list(featurizer.input_hw[::-1]),
                "grid_size": list(featurizer.grid_hw[::-1]),
                "device": self.config.device,
                "match": vars(self.match),
                "coordinates": "pixels of the original frame, centre of the top-left pixel at (0, 0)",
                "status": "done",
            }
            write_tracks(job.folder / "tracks.json", log, meta)
            write_tracks(job.folder / "tracks.csv", log, meta)
            seconds = time.perf_counter() - start
            job.status = "done"
            job.push(
                "done",
                {
                    "frames": len(log),
                    "points": len(queries),
                    "seconds": round(seconds, 3),
                    "fps": round(len(log) / seconds, 2) if seconds > 0 else None,
                    "model": self.config.model,
                    "device": self.config.device,
                    **visibility_summary(log.arrays()["visible"], queries.frame.numpy()),
                    "tracks_json": f"/api/jobs/{job.id}/tracks.json",
                    "tracks_csv": f"/api/jobs/{job.id}/tracks.csv",
                    "overlay_mp4": f"/api/jobs/{job.id}/overlay.mp4",
                },
            )
        except TrackerError as exc:
            job.status = "failed"
            job.push("failed", {"error": str(exc)})
        except Exception as exc:  # a bug: the job fails with a line, the server keeps serving
            job.status = "failed"
            job.push("failed", {"error": f"internal error: {type(exc).__name__}: {exc}"})
        finally:
            if writer is not None and job.status != "done":
                with contextlib.suppress(Exception):
                    writer.discard()

    def close(self) -> None:
        """Cancel the jobs, stop the worker, remove the temporary folder."""
        with self._lock:
            for job in self.jobs.values():
                job.cancel.set()
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self._tmp is not None:
            self._tmp.cleanup()


def visibility_summary(visible: np.ndarray, query_frames: np.ndarray) -> dict:
    """How visible the points were: the share of (point, frame) pairs from each point's query frame on, and the
    first frame each point was lost on (``[[point, frame], ...]``, points numbered from 1, as on the page).

    Args:
        visible: ``[T, N]`` bool.
        query_frames: ``[N]`` the frame each point is given on.
    """
    t, n = visible.shape
    started = np.arange(t)[:, None] >= query_frames[None, :]
    share = float(visible[started].mean()) if started.any() else 0.0
    lost = []
    for i in np.nonzero((started & ~visible).any(0))[0]:
        lost.append([int(i) + 1, int(np.argmax(started[:, i] & ~visible[:, i]))])
    return {"visible_share": round(share, 4), "lost": lost}


def _frame_message(result, num_frames: int) -> dict:
    xy = result.xy.numpy()
    return {
        "frame": result.frame_index,
        "num_frames": num_frames,
        "xy": [None if not np.isfinite(p).all() else [round(float(p[0]), 3), round(float(p[1]), 3)] for p in xy],
        "visible": [bool(v) for v in result.visible.numpy()],
        "score": [None if not np.isfinite(s) else round(float(s), 4) for s in result.score.numpy()],
    }


# --------------------------------------------------------------------------- the web app


def create_app(config: ServeConfig):
    """The FastAPI app of the web demo (its service is ``app.state.service``, closed on shutdown)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    service = TrackingService(config)
    web = resources.files("tracker.apps").joinpath("web")
    page = web.joinpath("index.html").read_text()
    script = web.joinpath("app.js").read_text()
    limit = int(config.max_upload_mb * MB)
    points_limit = points_body_limit(config.max_points)
    policy = HostPolicy(config.host, config.allowed_hosts)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(title="semantic-tracker web demo", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def _http_error(_request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail))

    app.add_middleware(Guard, policy=policy)

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return HTMLResponse(page)

    @app.get("/app.js")
    async def app_js():
        return Response(script, media_type="text/javascript")

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    @app.get("/api/info")
    async def info():
        from tracker.apps.cli import FALLBACK
        from tracker.io.drawing import palette_hex

        return {
            "model": config.model,
            "device": config.device,
            "max_upload_mb": config.max_upload_mb,
            "max_frames": config.max_frames,
            "max_points": config.max_points,
            "containers": CONTAINERS,
            "palette": palette_hex(config.max_points),
            "fallback": f"{config.model} is the {FALLBACK}" if config.model == "sift" else None,
        }

    @app.post("/api/demo")
    async def demo():
        try:
            video, points = await run_in_threadpool(service.demo)
        except TrackerError as exc:
            return error(500, f"cannot make the demo clip: {exc}")
        return {**video.public(), "suggested_points": points, "name": "the demo clip"}

    @app.post("/api/videos")
    async def upload(request: Request):
        kind = media_type(request.headers.get("content-type"))
        if kind != "application/octet-stream" and not kind.startswith("video/"):
            return error(415, f"send the video as application/octet-stream or video/*, not {kind}")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return error(413, f"the upload is {int(declared) / MB:.1f} MB; the limit is {config.max_upload_mb:g} MB")
        video_id, path = service.new_upload_path()
        size = 0
        try:
            with path.open("wb") as out:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        break
                    await run_in_threadpool(out.write, chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        if size > limit:
            path.unlink(missing_ok=True)
            return error(413, f"the upload is larger than the {config.max_upload_mb:g} MB limit")
        if size == 0:
            path.unlink(missing_ok=True)
            return error(400, "the upload is empty: send the video file as the request body")
        try:
            video = await run_in_threadpool(service.accept, video_id, path)
        except TrackerError as exc:
            return error(415, str(exc))
        return video.public()

    @app.get("/api/videos/{video_id}/first.jpg")
    async def first_frame(video_id: str):
        path = service.first_frame(video_id) if ID.match(video_id) else None
        if path is None:
            return error(404, "no such video (uploads are kept for a while only; upload it again)")
        return FileResponse(path, media_type="image/jpeg")

    @app.get("/api/videos/{video_id}/frames/{index}.jpg")
    async def frame_image(video_id: str, index: str):
        path = service.frame_image(video_id, int(index)) if ID.match(video_id) and index.isdigit() else None
        if path is None:
            return error(404, "no such video or frame")
        return FileResponse(path, media_type="image/jpeg")

    @app.post("/api/videos/{video_id}/jobs")
    async def start_job(video_id: str, request: Request):
        if not ID.match(video_id):
            return error(404, "no such video")
        kind = media_type(request.headers.get("content-type"))
        if kind != "application/json":
            return error(415, f'send the points as application/json, not {kind}: {{"points": [[x, y], ...]}}')
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > points_limit:
            return error(413, f"the points body is over {points_limit} bytes")
        raw = bytearray()
        async for chunk in request.stream():  # read up to the cap, never the whole of a huge body
            raw += chunk
            if len(raw) > points_limit:
                return error(413, f"the points body is over {points_limit} bytes")
        try:
            job = service.start(video_id, parse_points_body(bytes(raw)))
        except KeyError:
            return error(404, "no such video (uploads are kept for a while only; upload it again)")
        except Busy as exc:
            return error(503, str(exc))
        except TrackerError as exc:
            return error(400, str(exc))
        return {"job": job.id, "events": f"/api/jobs/{job.id}/events", "num_frames": job.video.num_frames}

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: str, request: Request):
        job = service.job(job_id) if ID.match(job_id) else None
        if job is None:
            return error(404, "no such job")

        async def stream():
            cursor = 0
            yield ": tracking\n\n"
            while True:
                batch = job.read(cursor)
                for index, kind, payload, image in batch:
                    data = {**payload, "image": image} if image is not None else payload
                    yield f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
                    cursor = index + 1
                    if kind in ("done", "failed", "cancelled"):
                        return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.02)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.post("/api/jobs/{job_id}/cancel")
    async def cancel(job_id: str):
        job = service.cancel(job_id) if ID.match(job_id) else None
        if job is None:
            return error(404, "no such job")
        return {"job": job.id, "status": job.status}

    @app.get("/api/jobs/{job_id}/{name}")
    async def results(job_id: str, name: str):
        job = service.job(job_id) if ID.match(job_id) else None
        media = {"tracks.json": "application/json", "tracks.csv": "text/csv", "overlay.mp4": "video/mp4"}
        if job is None or name not in media:
            return error(404, "no such job or file (tracks.json, tracks.csv, overlay.mp4)")
        if job.status != "done":
            return error(409, f"the job is {job.status}; its files are ready when it is done")
        return FileResponse(job.folder / name, media_type=media[name], filename=name)

    return app


# --------------------------------------------------------------------------- command line


def main(argv: list[str]) -> int:
    """``track serve ...``: serve until Ctrl-C."""
    from tracker.apps.parsers import serve_parser

    return run_command(serve_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """``track serve`` with parsed options: serve until Ctrl-C."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise TrackerError("track serve needs FastAPI and uvicorn: pip install '.[web]'") from None

    from tracker.backends import BackendOptions, pick_device
    from tracker.featurizers import resolve_model

    if not 0 <= args.port <= 65535:
        raise TrackerError(f"--port must be in 0..65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_frames < 2:
        raise TrackerError("--max-upload-mb must be > 0 and --max-frames at least 2")
    try:
        policy = HostPolicy(args.host, tuple(args.allowed_host))
    except ValueError as exc:
        raise TrackerError(f"--allowed-host: {exc}") from None
    device = pick_device(args.device)
    BackendOptions(backend=args.backend, precision=args.precision)  # validates both in one line
    if args.backend == "onnx":
        raise TrackerError("track serve runs --backend torch, tensorrt or auto")
    model, warning = resolve_model(args.model, args.weights)
    if warning:
        print(f"track serve: warning: {warning}", file=sys.stderr)
    config = ServeConfig(
        model=model,
        weights=args.weights,
        size=args.size,
        keep_aspect=args.keep_aspect,
        device=device,
        backend=args.backend,
        precision=args.precision,
        max_upload_mb=args.max_upload_mb,
        max_frames=args.max_frames,
        host=args.host,
        allowed_hosts=tuple(args.allowed_host),
    )
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        sock.close()
        raise TrackerError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    app = None
    try:
        app = create_app(config)
        app.state.service.featurizer((240, 320))  # bad weights or size: fail now, not on the first job
        host, port = sock.getsockname()[:2]
        if not is_loopback(args.host.lower()):
            shown = sorted((f"[{n}]" if ":" in n else n) + (f":{p}" if p else "") for n, p in policy.allowed)
            names = ", ".join(["loopback names", *shown])
            print(
                f"track serve: warning: on {args.host} anyone who can reach it can upload; "
                f"Host names served: {names} (more with --allowed-host)",
                file=sys.stderr,
            )
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        print(f"track serve: {model} on {device}; open http://{shown}:{port}/ (Ctrl-C stops)", file=sys.stderr)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
        server.run(sockets=[sock])  # the app's shutdown closes its service
    except BaseException:
        if app is not None:
            app.state.service.close()
        raise
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    from tracker.apps.cli import main as track_main

    sys.exit(track_main(["serve", *sys.argv[1:]]))
