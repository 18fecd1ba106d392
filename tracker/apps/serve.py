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

Other web sites cannot use it through a visitor's browser: the DNS rebinding and CSRF guards are
:mod:`tracker.apps.serve_guard`. The points body is read up to ``points_body_limit(max_points)`` bytes and
refused past it (413) before it is parsed; numbers too large for a float, NaN/Infinity and deep nesting are
a 400, never a 500 (:mod:`tracker.apps.serve_inputs`). Uploads and jobs are kept by the service of
:mod:`tracker.apps.serve_service`; this module is the HTTP interface over it and ``track serve``'s command line.
"""

import argparse
import asyncio
import contextlib
import json
import re
import socket
import sys
from importlib import resources

from tracker.apps.serve_guard import Guard, HostPolicy, is_loopback, media_type
from tracker.apps.serve_inputs import CONTAINERS, parse_points_body, points_body_limit
from tracker.apps.serve_service import Busy, ServeConfig, TrackingService
from tracker.errors import TrackerError

ID = re.compile(r"^[0-9a-f]{32}$")
MB = 1 << 20


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
        from tracker.apps.track_video import FALLBACK
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
