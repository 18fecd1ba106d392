"""The ``track`` command: ``track VIDEO --points P`` and ``track weights list|download|verify``.

Bad input gives one line on stderr and exit code 2; outputs are written atomically, and an interrupted
run (Ctrl-C) still writes the tracks of the frames it finished.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tracker.errors import TrackerError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (its own default code too)."""

    def error(self, message: str) -> None:  # noqa: D401
        raise TrackerError(message)


def build_parser() -> argparse.ArgumentParser:
    from tracker.featurizers import MODEL_NAMES

    p = _Parser(
        prog="track",
        description="Track query points through a video with DistillDIFT (or DINOv2 / dense SIFT) features.",
        epilog="Other commands: `track weights list|download|verify`.",
    )
    p.add_argument("video", help="video file, or a DAVIS-style folder of JPEG frames")
    p.add_argument("--points", required=True, help="points JSON (schema: tracker/schemas/points.schema.json)")
    p.add_argument("--out-tracks", help="tracks file: .json, .csv or .npz (default: <video>_tracks.json)")
    p.add_argument("--out-video", help="overlay video .mp4 (default: <video>_overlay.mp4)")
    p.add_argument("--no-video", action="store_true", help="do not write the overlay video")
    p.add_argument("--model", default="auto", help=f"one of {', '.join(MODEL_NAMES)} (default: auto)")
    p.add_argument(
        "--weights",
        help="'random' (architecture only, no download) or local weights file(s), comma-separated",
    )
    p.add_argument(
        "--size",
        help="input size: N (square; ViT default 434) or WxH; with --keep-aspect N is the short side",
    )
    p.add_argument("--keep-aspect", action="store_true", help="preserve the frame's aspect ratio")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch", type=int, default=8, help="frames per featurizer batch (default 8)")
    m = p.add_argument_group("matching (defaults per model: see tracker.matching.MatchConfig)")
    m.add_argument("--window-radius", type=int, help="soft-argmax window radius, grid cells (2)")
    m.add_argument("--temperature", type=float, help="soft-argmax temperature (0.05)")
    m.add_argument("--min-score", type=float, help="visibility: minimum cosine similarity (0.5)")
    m.add_argument(
        "--fb-tolerance", type=float, help="visibility: forward-backward tolerance, grid cells (1.5)"
    )
    m.add_argument(
        "--search-radius", type=float, help="search only this many cells around the previous estimate"
    )
    m.add_argument("--update", type=float, help="descriptor update rate in [0, 1] (0: always the query's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_weights_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="track weights", description="Model weights: list the table, download, verify the cache."
    )
    sub = p.add_subparsers(dest="action", required=True, parser_class=_Parser)
    sub.add_parser("list", help="models, their sources and what is cached")
    d = sub.add_parser("download", help="download a model's weights into the cache")
    d.add_argument("models", nargs="+")
    v = sub.add_parser("verify", help="check cached files (sha256 where known) and load them strictly")
    v.add_argument("models", nargs="*")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "weights":
            return weights_command(build_weights_parser().parse_args(argv[1:]))
        return track_command(build_parser().parse_args(argv))
    except TrackerError as exc:
        print(f"track: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("track: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --------------------------------------------------------------------------- track VIDEO


def _pick_device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda") and not requested.startswith("cuda:"):
        raise TrackerError(f"--device must be cpu or cuda, got {requested!r}")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise TrackerError("--device cuda: no CUDA GPU is available to torch on this machine")
    return requested


def _check_writable(path: Path, what: str) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise TrackerError(f"{what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TrackerError(f"{what} {path}: not writable")
    if path.is_dir():
        raise TrackerError(f"{what} {path} is a folder")


def track_command(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from tracker.drawing import TrackOverlay
    from tracker.featurizers import MODEL_NAMES, create_featurizer, default_match_config, resolve_model
    from tracker.formats import TRACK_SUFFIXES, TrackLog, read_points, write_tracks
    from tracker.tracking import PointTracker
    from tracker.video import AtomicVideoWriter, open_video

    if args.batch < 1:
        raise TrackerError("--batch must be at least 1")
    if args.model not in MODEL_NAMES:
        raise TrackerError(f"unknown model {args.model!r}; choose from: {', '.join(MODEL_NAMES)}")
    device = _pick_device(args.device)
    queries = read_points(args.points)
    stem = Path(args.video.rstrip("/")).name.rsplit(".", 1)[0]
    out_tracks = Path(args.out_tracks or f"{stem}_tracks.json")
    out_video = None if args.no_video else Path(args.out_video or f"{stem}_overlay.mp4")
    if out_tracks.suffix.lower() not in TRACK_SUFFIXES:
        raise TrackerError(f"--out-tracks must end in .json, .csv or .npz, got {out_tracks.name}")
    if out_video is not None and out_video.suffix.lower() != ".mp4":
        raise TrackerError(f"--out-video must end in .mp4, got {out_video.name}")
    _check_writable(out_tracks, "--out-tracks")
    if out_video is not None:
        _check_writable(out_video, "--out-video")

    video = open_video(args.video)
    info = video.info
    last_query = int(queries.frame.max())
    if last_query >= info.num_frames:
        raise TrackerError(f"a point is on frame {last_query}, but {args.video} has {info.num_frames} frames")
    model, warning = resolve_model(args.model, args.weights)
    try:
        config = default_match_config(
            model,
            window_radius=args.window_radius,
            temperature=args.temperature,
            min_score=args.min_score,
            fb_tolerance=args.fb_tolerance,
            search_radius=args.search_radius,
            update=args.update,
        )
    except ValueError as exc:
        raise TrackerError(str(exc)) from None
    if warning:
        print(f"track: warning: {warning}", file=sys.stderr)
    featurizer = create_featurizer(
        model,
        (info.height, info.width),
        size=args.size,
        keep_aspect=args.keep_aspect,
        weights=args.weights,
        device=device,
    )
    tracker = PointTracker(featurizer, config)
    state = tracker.add_queries(tracker.empty_state(info.height, info.width), queries)  # validates positions

    log = TrackLog(queries)
    overlay = TrackOverlay()
    writer = AtomicVideoWriter(out_video, info.fps, (info.width, info.height)) if out_video else None
    meta = {
        "video": str(args.video),
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "model": model,
        "weights": args.weights or "table",
        "input_size": list(featurizer.input_hw[::-1]),
        "grid_size": list(featurizer.grid_hw[::-1]),
        "device": device,
        "match": vars(config),
        "coordinates": "pixels of the original frame, centre of the top-left pixel at (0, 0)",
    }
    frames = _tee(video, writer is not None)
    status, error = "done", None
    start = time.perf_counter()
    bar = tqdm(
        total=info.num_frames, unit="frame", disable=args.no_progress, dynamic_ncols=True, file=sys.stderr
    )
    try:
        with torch.inference_mode():
            for result in tracker.track(frames, queries, batch_size=args.batch, state=state):
                log.append(result)
                if writer is not None:
                    writer.write(overlay.draw(frames.pop(result.frame_index), result))
                bar.update(1)
    except KeyboardInterrupt:
        status = "interrupted"
    except TrackerError as exc:  # e.g. a video corrupt half-way: keep what was finished
        status, error = "failed", exc
    finally:
        bar.close()
        video.close()
    elapsed = time.perf_counter() - start
    if len(log) <= last_query and status == "done":
        error, status = (
            TrackerError(f"the video ended after {len(log)} frames, before a point's frame {last_query}"),
            "failed",
        )
    meta["status"] = status
    written = []
    if len(log):
        write_tracks(out_tracks, log, meta)
        written.append(str(out_tracks))
    if writer is not None:
        writer.close()
        if writer.frames:
            written.append(str(out_video))
    fps = len(log) / elapsed if elapsed > 0 else float("inf")
    visible = float(torch.tensor(log.arrays()["visible"]).float().mean()) if len(log) else 0.0
    if error is not None:
        raise TrackerError(
            f"{error} (kept {len(log)} finished frames: {', '.join(written) or 'nothing written'})"
        )
    print(
        f"track: {status}: {len(queries)} points through {len(log)} frames in {elapsed:.1f} s "
        f"({fps:.1f} frames/s, {model} on {device}, {100 * visible:.0f}% visible) "
        f"-> {', '.join(written) or 'nothing written'}",
        file=sys.stderr,
    )
    return EXIT_INTERRUPTED if status == "interrupted" else 0


class _tee:
    """Iterates a video's frames and keeps those not yet drawn (at most one featurizer batch)."""

    def __init__(self, video, keep: bool):
        self.video, self.keep, self.kept, self.index = video, keep, {}, 0

    def __iter__(self):
        for frame in self.video:
            if self.keep:
                self.kept[self.index] = frame
            self.index += 1
            yield frame

    def pop(self, index: int):
        return self.kept.pop(index)


# --------------------------------------------------------------------------- track weights


def weights_command(args: argparse.Namespace) -> int:
    from tracker import weights as W

    if args.action == "list":
        print(f"cache: {W.cache_dir()}")
        for spec in W.MODELS.values():
            cached = W.weights_status(spec)
            state = "cached" if all(cached.values()) else "not cached"
            print(f"{spec.name:15s} {state:10s} {spec.description}")
            for role, source in (("base", spec.base), ("lora", spec.lora)):
                if source is not None:
                    where = (
                        " | ".join(filter(None, [source.hub_id and f"hub:{source.hub_id}", source.url]))
                        or "local file only"
                    )
                    print(f"{'':15s} {role}: {where}")
        print(f"{'sift':15s} {'built in':10s} dense RootSIFT (kornia), no weights")
        return 0
    if args.action == "download":
        for name in args.models:
            spec = W.get_spec(name)
            for source in filter(None, (spec.base, spec.lora)):
                path = W.fetch(source)
                print(f"{name}: {path} sha256={W.sha256sum(path)}")
        return 0
    names = args.models or [s.name for s in W.MODELS.values() if all(W.weights_status(s).values())]
    if not names:
        print("no model has all its weights cached; see `track weights list`")
        return 1
    failed = 0
    for name in names:
        spec = W.get_spec(name)
        try:
            for source in filter(None, (spec.base, spec.lora)):
                path = W.cached_path(source)
                if path is None:
                    raise TrackerError(f"{source.filename} is not cached")
                digest = W.sha256sum(path)
                if source.sha256 and digest != source.sha256:
                    raise TrackerError(f"{path}: sha256 {digest} differs from the published {source.sha256}")
            W.load_model(spec, (434, 434), None, download=False)
            print(f"{name}: ok (loaded strictly)")
        except TrackerError as exc:
            failed += 1
            print(f"{name}: FAILED: {exc}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
