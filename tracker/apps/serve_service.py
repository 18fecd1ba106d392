"""The service behind ``track serve``'s web app: uploads, jobs and the worker thread that tracks (no HTTP in here).

:class:`TrackingService` accepts uploads (checked by their first bytes and by decoding them, with preview
frames written beside them), queues jobs of query points (:class:`Job`, tracked one at a time in a worker
thread, never on the event loop) whose messages the web app streams, writes each job's tracks and overlay
video, and deletes old uploads and jobs when newer ones arrive (``max_videos``, ``max_jobs``). Ids are random
hex made here. :class:`ServeConfig` holds the demo's settings.
"""

import base64
import contextlib
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tracker.apps.serve_inputs import CONTAINERS, check_points, describe_content, sniff_container
from tracker.errors import TrackerError


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
