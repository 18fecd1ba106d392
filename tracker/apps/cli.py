"""The ``track`` command: ``track VIDEO --points P`` and ``track weights list|download|verify``.

Bad input gives one line on stderr and exit code 2; outputs are written atomically, and an interrupted
run (Ctrl-C: exit 130; SIGTERM: exit 143) still writes the tracks of the frames it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

from tracker.errors import TrackerError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: finished frames are kept."""


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """While tracking, SIGTERM raises :class:`Terminated` in the main thread (like SIGINT's KeyboardInterrupt)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return

    def handler(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# Subcommands living in their own modules: each has ``main(argv) -> int`` and raises TrackerError on bad input
# (reported here as one line, exit 2). Their parsers use :class:`Parser`.
SUBCOMMANDS = {
    "bench": "tracker.bench.command",
    "live": "tracker.apps.live",
    "serve": "tracker.apps.serve",
    "distill": "tracker.distill.cli",
    "batch": "tracker.apps.batch",
}
# Of those, the ones whose parser lives in tracker.apps.parsers (light) and whose module has ``run_command(args)``.
APP_PARSERS = {"live": "live_parser", "serve": "serve_parser"}


class Parser(argparse.ArgumentParser):
    """argparse that reports errors as one line and exit code 2 (its own default code too)."""

    def error(self, message: str) -> None:  # noqa: D401
        raise TrackerError(message)


def build_parser() -> argparse.ArgumentParser:
    from tracker.choices import MODEL_NAMES
    from tracker.choices import POINT_REFINE_MODES as REFINE_MODES

    p = Parser(
        prog="track",
        description="Track query points through a video with DistillDIFT (or DINOv2 / dense SIFT) features.",
        epilog="Other commands: `track weights|eval|export|bench|live|serve|distill|batch ...` (each has --help).",
    )
    p.add_argument("video", nargs="?", help="video file, or a DAVIS-style folder of JPEG frames")
    what = p.add_argument_group("what to carry through the video (one of)")
    what.add_argument(
        "--points",
        help='points JSON (schema: tracker/schemas/points.schema.json), or inline "x,y;x,y" (pixels of frame 0, '
        'e.g. "495,405;560,430"; "x,y,frame" for another frame)',
    )
    what.add_argument("--grid", type=int, metavar="N", help="an N x N grid of points over the first frame")
    what.add_argument("--mask", help="first-frame object mask: binary or palette PNG (ids 1..K)")
    what.add_argument(
        "--davis-root",
        help="DAVIS layout root: frames and masks of --sequence (masks of frame 0 "
        "and of frames where new objects appear)",
    )
    what.add_argument("--sequence", help="sequence name under --davis-root")
    what.add_argument(
        "--colormap",
        nargs="?",
        const="coords",
        help="warp the first frame's coordinate colormap (or the given image) into every frame",
    )
    what.add_argument("--edit", help="RGBA PNG painted on the first frame, composited onto every frame")
    from tracker.apps.reference_args import add_reference_options

    add_reference_options(p)
    p.add_argument("--out-masks", help="folder for predicted masks as DAVIS palette PNGs (00000.png ...)")
    p.add_argument("--out-tracks", help="tracks file: .json, .csv or .npz (default: <video>_tracks.json)")
    p.add_argument("--out-video", help="overlay video .mp4 (default: <video>_overlay.mp4)")
    p.add_argument("--no-video", action="store_true", help="do not write the overlay video")
    p.add_argument(
        "--legend", action="store_true", help="overlay: a legend (frame i/N, point numbers or labels, tracked/lost)"
    )
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
    p.add_argument(
        "--reader",
        default="auto",
        help="video decoder: auto (torchcodec when installed, else opencv), opencv, torchcodec or decord",
    )
    b = p.add_argument_group("backend (see `track export`)")
    b.add_argument(
        "--backend",
        default="auto",
        help="torch, onnx (with --onnx FILE), tensorrt, or auto: the fastest that works here, said on stderr",
    )
    b.add_argument("--precision", help="fp32, fp16 or bf16 (default: fp16 for ViT models on CUDA, else fp32)")
    b.add_argument("--compile", action="store_true", help="torch backend: torch.compile (CUDA graphs on CUDA)")
    b.add_argument("--onnx", help="ONNX featurizer written by `track export onnx` (model and size come from it)")
    b.add_argument("--engine", help="TensorRT engine written by `track export tensorrt` (model and size from it)")
    m = p.add_argument_group("matching (defaults per model: see tracker.matching.MatchConfig)")
    m.add_argument("--window-radius", type=int, help="soft-argmax window radius, grid cells (2)")
    m.add_argument("--temperature", type=float, help="soft-argmax temperature (0.05)")
    m.add_argument("--min-score", type=float, help="visibility: minimum cosine similarity (0.5)")
    m.add_argument("--fb-tolerance", type=float, help="visibility: forward-backward tolerance, grid cells (1.5)")
    m.add_argument("--search-radius", type=float, help="search only this many cells around the previous estimate")
    m.add_argument("--update", type=float, help="descriptor update rate in [0, 1] (0: always the query's)")
    m.add_argument(
        "--refine",
        choices=REFINE_MODES,
        default=REFINE_MODES[0],
        help=f"{' or '.join(REFINE_MODES)} (default {REFINE_MODES[0]}): points are refined by Lucas-Kanade, masks, "
        "colormaps and edits carried by DIS optical flow, both corrected by the feature matches; none: pure "
        "per-frame feature matching (the seed's method)",
    )
    d = p.add_argument_group("dense propagation (masks)")
    d.add_argument("--context", type=int, help="also use the last N predicted frames as references (sift: 7; ViT: 0)")
    d.add_argument("--topk", type=int, help="neighbours per cell (5)")
    d.add_argument("--radius", type=float, help="spatial radius in grid cells (sift: 12; ViT: whole frame)")
    d.add_argument("--prop-temperature", type=float, help="softmax temperature over the top-k (0.1)")
    d.add_argument(
        "--pool",
        type=int,
        help="propagate on a grid pooled by this factor (1; 2 is 12x faster for sift, less accurate)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def add_featurizer_options(p: argparse.ArgumentParser, backends: str = "torch, onnx, tensorrt or auto") -> None:
    """The model and backend options ``track live`` and ``track serve`` share with ``track``."""
    from tracker.choices import MODEL_NAMES

    p.add_argument("--model", default="auto", help=f"one of {', '.join(MODEL_NAMES)} (default: auto)")
    p.add_argument("--weights", help="'random' (architecture only) or local weights file(s), comma-separated")
    p.add_argument("--size", help="featurizer input size: N or WxH (defaults as for `track`)")
    p.add_argument("--keep-aspect", action="store_true", help="preserve the frame's aspect ratio")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backend", default="auto", help=f"{backends} (as for `track`)")
    p.add_argument("--precision", help="fp32, fp16 or bf16 (default: fp16 for ViT models on CUDA, else fp32)")


def build_weights_parser() -> argparse.ArgumentParser:
    p = Parser(prog="track weights", description="Model weights: list the table, download, verify the cache.")
    sub = p.add_subparsers(dest="action", required=True, parser_class=Parser)
    sub.add_parser("list", help="models, their sources and what is cached")
    d = sub.add_parser("download", help="download a model's weights into the cache")
    d.add_argument("models", nargs="+")
    v = sub.add_parser("verify", help="check cached files (sha256 where known) and load them strictly")
    v.add_argument("models", nargs="*")
    return p


def main(argv: list[str] | None = None) -> int:
    from tracker.allocator import keep_memory_flat

    keep_memory_flat()  # glibc: per-batch buffers mmapped, so long runs do not fragment the heap
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "weights":
            return weights_command(build_weights_parser().parse_args(argv[1:]))
        if argv and argv[0] == "eval":
            return eval_command(build_eval_parser().parse_args(argv[1:]))
        if argv and argv[0] == "export":
            return export_command(build_export_parser().parse_args(argv[1:]))
        if argv and argv[0] in APP_PARSERS:  # parse before importing the app (torch): fast help and errors
            import importlib

            from tracker.apps import parsers

            args = getattr(parsers, APP_PARSERS[argv[0]])().parse_args(argv[1:])
            return importlib.import_module(SUBCOMMANDS[argv[0]]).run_command(args)
        if argv and argv[0] in SUBCOMMANDS:
            import importlib

            return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
        with _sigterm_as_interrupt():
            return track_command(build_parser().parse_args(argv))
    except TrackerError as exc:
        print(f"track: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"track: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


# --------------------------------------------------------------------------- track VIDEO


def _pick_device(requested: str | None) -> str:
    from tracker.backends import pick_device

    return pick_device(requested)


def check_writable(path: Path, what: str) -> None:
    """Refuse, in one line, an output path whose folder is missing or not writable, or that is a folder.

    Writability is tried for real (a temporary file is created beside the target and removed), so a folder
    that claims to be writable but is not (``/proc``, a read-only mount, a full disk's missing inodes) is
    refused before any work. Temporary files a killed run left for this target are removed.
    """
    from tracker.io.atomic import clean_stale_temps, temp_path

    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise TrackerError(f"{what} {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise TrackerError(f"{what} {path}: not writable")
    if path.is_dir():
        raise TrackerError(f"{what} {path} is a folder")
    clean_stale_temps(path)
    try:
        temp_path(path).unlink()
    except OSError as exc:
        raise TrackerError(f"{what} {path}: cannot create a file in {parent} ({exc.strerror or exc})") from None


def refuse_overwriting(outputs: dict[str, Path | None], inputs: dict[str, str | Path | None]) -> None:
    """Refuse, in one line, an output that is one of the inputs (same path, or the same file by another name)."""
    for option, out in outputs.items():
        if out is None:
            continue
        for what, given in inputs.items():
            if not given:
                continue
            same = os.path.realpath(out) == os.path.realpath(given)
            if not same and out.exists() and Path(given).exists():
                with contextlib.suppress(OSError):
                    same = os.path.samefile(out, given)
            if same:
                raise TrackerError(f"{option} {out} is {what}; it would be overwritten: choose another name")


def track_command(args: argparse.Namespace) -> int:

    import torch

    from tracker.featurizers import MODEL_NAMES
    from tracker.io.drawing import TrackOverlay
    from tracker.io.formats import TRACK_SUFFIXES, TrackLog, grid_points, points_argument, write_tracks
    from tracker.io.pipeline import BatchPrefetcher, Prefetcher, Sink
    from tracker.io.video import AtomicVideoWriter, open_video
    from tracker.tracking import PointTracker

    if args.batch < 1:
        raise TrackerError("--batch must be at least 1")
    if args.model not in MODEL_NAMES:
        raise TrackerError(f"unknown model {args.model!r}; choose from: {', '.join(MODEL_NAMES)}")
    given = {
        "--points": args.points,
        "--grid": args.grid is not None,
        "--mask": args.mask,
        "--davis-root": args.davis_root,
        "--colormap": args.colormap,
        "--edit": args.edit,
    }
    modes = [name for name, value in given.items() if value]
    if len(modes) != 1:
        raise TrackerError(f"give exactly one of {', '.join(given)} (got {', '.join(modes) or 'none'})")
    if args.model == "hedlin" and modes[0] != "--points":
        raise TrackerError("hedlin tracks points only; use --points")
    if args.model == "hedlin" and args.reference:
        raise TrackerError("hedlin does not take --reference: its points are given on a frame of the video")
    if modes[0] != "--davis-root" and not args.video:
        raise TrackerError("the VIDEO argument is required (a video file or a folder of frames)")
    from tracker.apps import reference_args

    reference_args.check_reference_mode(args, modes[0])
    if modes[0] not in ("--points", "--grid"):
        return dense_command(args, modes[0])
    device = _pick_device(args.device)
    queries = points_argument(args.points) if args.points else grid_points(args.grid, 1, 1)  # grid: sized below
    ref_image = None
    if args.reference:  # the points are on this image: found in the video first (tracker.reference)
        ref_image = reference_args.read_reference(args.reference)
        reference_args.check_reference_points(queries, ref_image)
    stem = Path(args.video.rstrip("/")).name.rsplit(".", 1)[0]
    out_tracks = Path(args.out_tracks or f"{stem}_tracks.json")
    out_video = None if args.no_video else Path(args.out_video or f"{stem}_overlay.mp4")
    if out_tracks.suffix.lower() not in TRACK_SUFFIXES:
        raise TrackerError(f"--out-tracks must end in .json, .csv or .npz, got {out_tracks.name}")
    if out_video is not None and out_video.suffix.lower() != ".mp4":
        raise TrackerError(f"--out-video must end in .mp4, got {out_video.name}")
    refuse_overwriting(
        {"--out-tracks": out_tracks, "--out-video": out_video},
        {"the input video": args.video, "the points file": args.points, "the reference image": args.reference},
    )
    check_writable(out_tracks, "--out-tracks")
    if out_video is not None:
        check_writable(out_video, "--out-video")

    video = open_video(args.video, reader=getattr(args, "reader", "auto"))
    _warn(video.warnings)
    info = video.info
    if args.grid is not None:
        queries = grid_points(args.grid, info.height, info.width)
    last_query = int(queries.frame.max())
    if last_query >= info.num_frames:
        raise TrackerError(f"a point is on frame {last_query}, but {args.video} has {info.num_frames} frames")
    if args.model == "hedlin":  # not a dense featurizer: its own point tracker, the same results per frame
        from tracker.hedlin_tracker import check_queries, tracker_for_cli

        check_queries(queries, (info.height, info.width))  # a bad point is one line before SD's UNet is built
        model, featurizer, backend, config = tracker_for_cli(args, (info.height, info.width), device)
        tracker = featurizer
    else:
        model, featurizer, backend, config, _ = _featurizer_for(args, info, device)
        tracker = PointTracker(featurizer, config, refine=args.refine)
    search = None
    if ref_image is not None:
        search = reference_args.point_search(args, tracker, queries, ref_image, (info.height, info.width))
    else:
        state = tracker.add_queries(tracker.empty_state(info.height, info.width), queries)  # validates positions
    _announce(args, backend)

    log = TrackLog(queries)
    overlay = TrackOverlay(legend=args.legend, labels=queries.labels, num_frames=info.num_frames)
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
        "backend": backend,
        "match": vars(config),
        "refine": args.refine,
        "coordinates": "pixels of the original frame, centre of the top-left pixel at (0, 0)",
    }
    # decode ahead in a producer thread, draw and encode behind in a consumer thread (tracker.io.pipeline); on a
    # CPU torch leaves them a core (2 cores: 1 torch thread ran 3x faster than 2, benchmarks/track_fps.py)
    threads = torch.get_num_threads()
    if device == "cpu":
        torch.set_num_threads(max(1, threads - 1))
    batched = isinstance(tracker, PointTracker)  # hedlin takes frames one at a time
    if batched:  # decoded straight into the ring's [B, H, W, 3] slots in the producer thread, tracked as they come
        frames = _tee(video, writer is not None)
        source = BatchPrefetcher(frames, args.batch, device=featurizer.device)
    else:
        source = Prefetcher(video, depth=2 * args.batch)
        frames = _tee(source, writer is not None)
    warned = list(video.warnings)
    sink = None if writer is None else Sink(lambda f, r: writer.write(overlay.draw(f, r)), 2 * args.batch, writer.close)

    def handle(result) -> None:
        log.append(result)
        if sink is not None:
            sink.submit(frames.pop(result.frame_index), result)  # raises the drawing thread's failure

    results = (
        search.track(source, args.batch)
        if search is not None
        else tracker.track(source if batched else frames, queries, batch_size=args.batch, state=state)
    )
    _, status, error, elapsed = _drive(results, handle, source, sink, args.no_progress)
    if sink is not None:  # the frames tracked and queued are drawn too (their tracks are kept)
        start = time.perf_counter()
        try:
            sink.finish()
        except (TrackerError, OSError) as exc:
            status, error = "failed", error or TrackerError(f"cannot write {writer.path} ({exc})")
        elapsed += time.perf_counter() - start
    torch.set_num_threads(threads)
    if len(log) <= last_query and status == "done":
        error, status = (
            TrackerError(f"the video ended after {len(log)} frames, before a point's frame {last_query}"),
            "failed",
        )
    _warn(video.warnings[len(warned) :])
    meta["status"] = status
    meta["warnings"] = list(video.warnings)
    if search is not None:  # the points' x, y in "points" are on the reference image
        meta["reference"] = {"path": str(args.reference), **search.summary()}
    written, failures = [], []
    if len(log):
        try:
            write_tracks(out_tracks, log, meta)
            written.append(str(out_tracks))
        except OSError as exc:
            failures.append(f"cannot write {out_tracks} ({exc.strerror or exc})")
    visible = float(log.arrays()["visible"].mean()) if len(log) else 0.0
    what = f"{len(queries)} points through {len(log)} frames"
    if search is not None:
        what += f" ({int((search.found_frame >= 0).sum())} found from the reference)"
    return _finish(
        status,
        error,
        elapsed,
        len(log),
        writer,
        written,
        what,
        f"{_how(model, device, backend)}, {100 * visible:.0f}% visible",
        failures,
    )


def _how(model: str, device: str, backend: str) -> str:
    """What ran, naming the device once: ``sift, torch fp32 on cpu`` (the backend may already say where)."""
    backend = backend.split(" (auto:")[0]
    return f"{model}, {backend}" if " on " in backend else f"{model} on {device}, {backend}"


# Said once per run when the weight-free model runs (explicitly or because --model auto fell back).
FALLBACK = "weight-free fallback: expect drift; `track weights download distilldift` for the semantic model"


def _warn(warnings: list[str]) -> None:
    for warning in warnings:
        print(f"track: warning: {warning}", file=sys.stderr)


def _settings(args: argparse.Namespace, model: str):
    """Matcher and propagation settings: the model's defaults with the options given on the command line."""
    from tracker.featurizers import default_match_config
    from tracker.propagation import default_propagation_config

    try:
        match = default_match_config(
            model,
            window_radius=args.window_radius,
            temperature=args.temperature,
            min_score=args.min_score,
            fb_tolerance=args.fb_tolerance,
            search_radius=args.search_radius,
            update=args.update,
        )
        prop = default_propagation_config(
            model,
            context=args.context,
            topk=args.topk,
            radius=args.radius,
            temperature=args.prop_temperature,
            pool=args.pool,
            # --refine none: pure matching for masks too; the points' refinement (lk) means flow for masks
            refine="none" if getattr(args, "refine", None) == "none" else None,
        )
    except ValueError as exc:
        raise TrackerError(str(exc)) from None
    return match, prop


def _featurizer_for(args: argparse.Namespace, info, device: str):
    """Resolve ``--model`` (printing auto's one warning line); build the featurizer on its backend and the
    settings; say which backend runs when ``--backend auto`` chose it."""
    from tracker.backends import BackendOptions, build_featurizer
    from tracker.featurizers import resolve_model

    cache = getattr(args, "featurizer_cache", None)  # `track batch`: a worker builds each featurizer once
    key = (args.model, args.weights, args.size, args.keep_aspect, args.backend, args.precision, args.compile)
    key += (args.onnx, args.engine, device, info.height, info.width)
    if cache is not None and key in cache:
        model, featurizer, how = cache[key]
        return (model, featurizer, how, *_settings(args, model))
    options = BackendOptions(
        backend=args.backend, precision=args.precision, compile=args.compile, onnx=args.onnx, engine=args.engine
    )
    from_file = bool(options.onnx or options.engine)  # the file brings its model and size
    model = ""
    if not from_file:
        model, warning = resolve_model(args.model, args.weights)
        match, prop = _settings(args, model)
        if warning:
            print(f"track: warning: {warning}; weight-free fallback: expect drift", file=sys.stderr)
    featurizer, how = build_featurizer(
        model,
        (info.height, info.width),
        options,
        size=args.size,
        keep_aspect=args.keep_aspect,
        weights=args.weights,
        device=device,
    )
    if from_file:
        model = featurizer.name
        match, prop = _settings(args, model)
    if cache is not None:
        cache[key] = (model, featurizer, how)
    return model, featurizer, how, match, prop


def _announce(args: argparse.Namespace, backend: str) -> None:
    """Say which backend ``--backend auto`` chose and that ``--model sift`` is the weight-free fallback (once the
    input has been validated; ``--model auto`` falling back said it in its warning)."""
    if args.model == "sift":
        print(f"track: note: sift is the {FALLBACK}", file=sys.stderr)
    if args.backend == "auto":
        print(f"track: backend {backend}", file=sys.stderr)


def dense_command(args: argparse.Namespace, mode: str) -> int:
    """Masks (``--mask`` / ``--davis-root``), ``--colormap`` or ``--edit`` carried through a video."""

    from tracker.correspondence import CorrespondenceField, composite_edit, coordinate_colormap, render_colormap
    from tracker.eval.evaluation import davis_sequence, given_masks
    from tracker.io.drawing import draw_masks, shade_rejected
    from tracker.io.formats import fit_mask, read_mask, write_mask
    from tracker.io.pipeline import BatchPrefetcher
    from tracker.io.video import AtomicVideoWriter, open_video
    from tracker.propagation import MaskPropagator

    device = _pick_device(args.device)
    if mode == "--davis-root":
        frames_dir, masks_dir = davis_sequence(args.davis_root, args.sequence)
        source, stem = frames_dir, args.sequence or Path(args.davis_root).name
    else:
        source, stem = args.video, Path(args.video.rstrip("/")).name.rsplit(".", 1)[0]
    out_video = None if args.no_video else Path(args.out_video or f"{stem}_{mode.strip('-').split('-')[0]}.mp4")
    out_masks = Path(args.out_masks) if args.out_masks else None
    if mode in ("--colormap", "--edit") and out_masks is not None:
        raise TrackerError("--out-masks goes with --mask or --davis-root")
    if out_video is None and out_masks is None:
        raise TrackerError("nothing to write: give --out-masks or drop --no-video")
    if out_video is not None:
        if out_video.suffix.lower() != ".mp4":
            raise TrackerError(f"--out-video must end in .mp4, got {out_video.name}")
        check_writable(out_video, "--out-video")
    if out_masks is not None:
        if out_masks.exists() and not out_masks.is_dir():
            raise TrackerError(f"--out-masks {out_masks} is a file, not a folder")
        check_writable(out_masks / "00000.png" if out_masks.is_dir() else out_masks, "--out-masks")
    image = args.colormap if args.colormap not in (None, "coords") else None
    refuse_overwriting(
        {"--out-video": out_video, "--out-masks": out_masks},
        {
            "the input video": source,
            "the --mask file": args.mask,
            "the reference image": args.reference,
            "the --edit image": args.edit,
            "the --colormap image": image,
            "the given masks' folder": masks_dir if mode == "--davis-root" else None,
        },
    )

    video = open_video(source, reader=getattr(args, "reader", "auto"))
    _warn(video.warnings)
    warned = list(video.warnings)
    info = video.info
    frame_hw = (info.height, info.width)
    given = {}
    if mode == "--davis-root":
        given = given_masks(masks_dir, frame_hw)
    elif mode == "--mask" and args.reference:  # a mask on the reference image: carried onto frame 0 below
        from tracker.apps import reference_args

        ref_image, ref_labels = reference_args.read_reference(args.reference), read_mask(args.mask)
        if ref_labels.shape != ref_image.shape[:2]:
            raise TrackerError(f"--mask {args.mask} is not the size of the --reference image {args.reference}")
        given = {0: ref_labels}
    elif mode == "--mask":
        given = {0: fit_mask(read_mask(args.mask), frame_hw, args.mask)}
    if mode in ("--mask", "--davis-root") and not given[0].any():
        raise TrackerError("the first frame's mask has no object (all zero)")
    overlay_image = None
    if mode == "--edit":
        overlay_image = _read_rgba(args.edit, frame_hw)
    elif mode == "--colormap":
        overlay_image = (
            coordinate_colormap(*frame_hw) if args.colormap == "coords" else _read_rgb(args.colormap, frame_hw)
        )
    model, featurizer, backend, match_config, prop_config = _featurizer_for(args, info, device)
    _announce(args, backend)
    if mode == "--mask" and args.reference:
        given = {0: reference_args.reference_mask(args, featurizer, match_config, ref_image, given[0], source)}
    if out_masks is not None:
        try:
            out_masks.mkdir(exist_ok=True)
        except OSError as exc:
            raise TrackerError(f"--out-masks {out_masks}: cannot create the folder ({exc.strerror})") from None
    writer = AtomicVideoWriter(out_video, info.fps, (info.width, info.height)) if out_video else None
    frames = _tee(video, True)
    batches = BatchPrefetcher(frames, args.batch, device=featurizer.device)  # decoded ahead into the ring's slots
    kept: list[float] = []  # per frame: object pixels kept (masks), share of the frame composited (colormap, edit)
    if mode in ("--mask", "--davis-root"):
        results = MaskPropagator(featurizer, prop_config).propagate(batches, given, args.batch)

        def handle(result) -> None:
            frame = frames.pop(result.frame_index)
            kept.append(result.kept)
            if out_masks is not None:
                path = out_masks / f"{result.frame_index:05d}.png"
                try:
                    write_mask(path, result.labels)
                except OSError as exc:  # disk full: the masks written so far stay
                    raise TrackerError(f"cannot write mask {path} ({exc.strerror or exc})") from None
            if writer is not None:
                writer.write(draw_masks(frame, result.labels))
    else:
        results = CorrespondenceField(featurizer, match_config, refine=prop_config.refine).fields(batches, args.batch)
        render = composite_edit if mode == "--edit" else render_colormap

        def handle(corr) -> None:
            kept.append(corr.kept)
            drawn = render(frames.pop(corr.frame_index), overlay_image, corr)
            writer.write(shade_rejected(drawn, corr.valid) if mode == "--colormap" else drawn)

    done, status, error, elapsed = _drive(results, handle, batches, writer, args.no_progress)
    _warn(video.warnings[len(warned) :])
    written = [f"{out_masks}/ ({done} PNGs)"] if out_masks is not None and done else []
    return _finish(
        status,
        error,
        elapsed,
        done,
        writer,
        written,
        f"{mode.strip('-')} through {done} frames{_coverage(mode, kept)}",
        _how(model, device, backend),
    )


def _coverage(mode: str, kept: list[float]) -> str:
    """How much the run kept: ``, kept 87% of the object (last frame 80%)`` or the share of the frame composited."""
    import math

    kept = [k for k in kept if math.isfinite(k)]
    if not kept:
        return ""
    mean, last = 100 * sum(kept) / len(kept), 100 * kept[-1]
    if mode in ("--mask", "--davis-root"):
        return f", kept {mean:.0f}% of the object (last frame {last:.0f}%)"
    shaded = "; rejected pixels shaded" if mode == "--colormap" else ""
    return f", composited on {mean:.0f}% of the frame (last frame {last:.0f}%{shaded})"


def _drive(results, handle, video, writer, quiet: bool) -> tuple[int, str, TrackerError | None, float]:
    """Consume a generator of per-frame results with a progress bar.

    Ctrl-C, SIGTERM and a failure half-way (a corrupt frame, a full disk) stop it cleanly, keeping what was
    finished.

    Returns:
        ``(frames done, "done" | "interrupted" | "terminated" | "failed", the failure or None, seconds)``.
    """
    import torch
    from tqdm import tqdm

    done, status, error = 0, "done", None
    start = time.perf_counter()
    bar = tqdm(total=video.info.num_frames, unit="frame", disable=quiet, dynamic_ncols=True, file=sys.stderr)
    try:
        with torch.inference_mode():
            for result in results:
                handle(result)
                done += 1
                bar.update(1)
    except KeyboardInterrupt as exc:
        status = "terminated" if isinstance(exc, Terminated) else "interrupted"
    except TrackerError as exc:
        status, error = "failed", exc
    except OSError as exc:  # reading or writing failed half-way (a removed folder, an I/O error)
        where = f" on {exc.filename}" if exc.filename else ""
        status, error = "failed", TrackerError(f"I/O error{where} ({exc.strerror or exc})")
    except BaseException:  # a bug or out of memory: still keep the finished frames of the video, then raise
        if writer is not None:
            with contextlib.suppress(TrackerError):
                writer.close()
        raise
    finally:
        bar.close()
        video.close()
    return done, status, error, time.perf_counter() - start


def _finish(status, error, elapsed, done, writer, written, what: str, how: str, failures=()) -> int:
    """Move the overlay video into place, then print the one-line summary (or raise the failure).

    Outputs that could not be written (``failures``, and a video the encoder could not finish) are never left
    half-written; the one error line names them and what was kept.
    """
    failures = list(failures)
    if writer is not None:
        try:
            writer.close()
            if writer.frames:
                written.append(str(writer.path))
        except TrackerError as exc:
            failures.append(str(exc))
    outputs = ", ".join(written) or "nothing written"
    if error is not None:
        raise TrackerError(f"{'; '.join([str(error), *failures])} (kept {done} finished frames: {outputs})")
    if failures:
        raise TrackerError(f"{'; '.join(failures)} (tracked {done} frames; kept: {outputs})")
    fps = done / elapsed if elapsed > 0 else float("inf")
    print(f"track: {status}: {what} in {elapsed:.1f} s ({fps:.1f} frames/s, {how}) -> {outputs}", file=sys.stderr)
    return {"interrupted": EXIT_INTERRUPTED, "terminated": EXIT_TERMINATED}.get(status, 0)


def _read_image(path: str, flags: int):
    import cv2

    if not Path(path).is_file():
        raise TrackerError(f"image not found: {path}")
    image = cv2.imread(path, flags)
    if image is None:
        raise TrackerError(f"cannot read image {path}")
    return image


def _read_rgba(path: str, frame_hw: tuple[int, int]):
    import cv2
    import numpy as np

    image = _read_image(path, cv2.IMREAD_UNCHANGED)
    if image.ndim != 3 or image.shape[2] != 4:
        raise TrackerError(f"--edit {path} must be an RGBA PNG (with an alpha channel)")
    if image.shape[:2] != frame_hw:
        raise TrackerError(f"--edit {path} is {image.shape[1]}x{image.shape[0]}, the video {frame_hw[1]}x{frame_hw[0]}")
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA))


def _read_rgb(path: str, frame_hw: tuple[int, int]):
    import cv2

    image = cv2.cvtColor(_read_image(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return cv2.resize(image, frame_hw[::-1], interpolation=cv2.INTER_AREA) if image.shape[:2] != frame_hw else image


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

    def __getattr__(self, name: str):  # info, warnings, close of the video (a BatchPrefetcher's source)
        return getattr(self.__dict__["video"], name)


# --------------------------------------------------------------------------- track eval


def build_eval_parser() -> argparse.ArgumentParser:
    from tracker.choices import MODEL_NAMES

    p = Parser(prog="track eval", description="Accuracy on standard benchmarks, ours beside OpenCV baselines.")
    sub = p.add_subparsers(dest="benchmark", required=True, parser_class=Parser)
    d = sub.add_parser("davis", help="DAVIS J, F, J&F (masks from the first frame); baseline: OpenCV DIS flow")
    d.add_argument("--root", required=True, help="DAVIS root (JPEGImages/480p/<seq>, Annotations/480p/<seq>)")
    d.add_argument("--sequences", nargs="+", help="sequence names (default: all)")
    b = sub.add_parser("badja", help="BADJA PCK@0.2; baseline: OpenCV pyramidal Lucas-Kanade")
    b.add_argument("--root", required=True, help="folder of BADJA <sequence>.json files")
    b.add_argument("--davis-root", required=True, help="DAVIS root with the sequences' 480p frames and masks")
    t = sub.add_parser("tapvid", help="TAP-Vid-DAVIS first-query metrics; baseline: OpenCV Lucas-Kanade")
    t.add_argument("--pkl", required=True, help="tapvid_davis.pkl")
    y = sub.add_parser("synthetic", help="generated TAP-Vid-style occlusion clips (exact truth), 256x256 metrics")
    y.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="clips to generate (default: 0 1)")
    y.add_argument("--frames", type=int, default=48, help="frames per clip (default: 48)")
    y.add_argument("--no-coarse", action="store_true", help="leave out the 14 px coarse-grid (pooled sift) runs")
    for s in (b, t, y):
        s.add_argument(
            "--max-points",
            type=int,
            metavar="N",
            help="--model hedlin only: track at most N points per sequence, evenly spread over the query list, "
            "the same N for the OpenCV baseline (hedlin optimises prompts per point: minutes to hours each; "
            "default: every point)",
        )
    for s in (d, b, t, y):
        s.add_argument("--model", default="sift", help=f"one of {', '.join(MODEL_NAMES)} (default: sift)")
        s.add_argument("--weights", help="'random' or local weights file(s)")
        s.add_argument("--size", help="featurizer input size (N or WxH)")
        s.add_argument("--keep-aspect", action="store_true")
        s.add_argument("--device", default=None)
        s.add_argument("--batch", type=int, default=8)
        s.add_argument("--out", default="eval_out", help="folder for <benchmark>_<model>.json and .md")
        for name, kind in (
            ("--pool", int),
            ("--context", int),
            ("--topk", int),
            ("--radius", float),
            ("--prop-temperature", float),
            ("--window-radius", int),
            ("--temperature", float),
            ("--min-score", float),
            ("--fb-tolerance", float),
            ("--search-radius", float),
            ("--update", float),
        ):
            s.add_argument(name, type=kind)
    return p


def eval_command(args: argparse.Namespace) -> int:
    from tracker.eval import evaluation as E
    from tracker.featurizers import create_featurizer, resolve_model

    device = _pick_device(args.device)
    model, warning = resolve_model(args.model, args.weights)
    if warning:
        print(f"track: warning: {warning}", file=sys.stderr)
    if model == "hedlin":
        _check_hedlin_eval(args)
    elif getattr(args, "max_points", None) is not None:
        raise TrackerError("--max-points applies to --model hedlin only (the other models track every point)")
    match, prop = _settings(args, model)
    if args.batch < 1:
        raise TrackerError("--batch must be at least 1")
    out = Path(args.out)
    _check_out_folder(out)  # created only when the report is written: a failing run leaves no empty folder
    if model == "hedlin":
        return _write_eval_report(args, out, model, *_eval_hedlin(args, device))
    featurizers: dict = {}

    def make_featurizer(frame_hw):
        if frame_hw not in featurizers:
            featurizers[frame_hw] = create_featurizer(
                model,
                frame_hw,
                size=args.size,
                keep_aspect=args.keep_aspect,
                weights=args.weights,
                device=device,
            )
        return featurizers[frame_hw]

    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        if args.benchmark == "davis":
            report = E.eval_davis(args.root, args.sequences, make_featurizer, prop, args.batch)
        elif args.benchmark == "badja":
            report = E.eval_badja(args.root, args.davis_root, make_featurizer, match, args.batch)
        elif args.benchmark == "synthetic":
            coarse = None if args.no_coarse else 14.0
            seeds = tuple(args.seeds)
            report = E.eval_synthetic(make_featurizer, match, args.batch, seeds, args.frames, coarse_cell=coarse)
        else:
            report = E.eval_tapvid(args.pkl, make_featurizer, match, args.batch)
    settings = {
        "size": args.size or "default",
        "keep_aspect": args.keep_aspect,
        "device": device,
        "match": vars(match),
        "propagation": vars(prop),
    }
    return _write_eval_report(args, out, model, report, settings, time.perf_counter() - start)


def _write_eval_report(args, out: Path, model: str, report: dict, settings: dict, seconds: float) -> int:
    """Write ``<out>/<benchmark>_<model>.json``, ``.md`` and ``.png`` and print the table."""
    import json

    from tracker.eval import evaluation as E

    report["model"] = model
    report["weights"] = args.weights or ("none" if model == "sift" else "table")
    report["settings"] = settings
    report["seconds"] = round(seconds, 1)
    stem = out / f"{args.benchmark}_{model}"
    from tracker.io.atomic import atomic_write

    heading = (
        f"## {args.benchmark}: {model} ({report['weights']}) vs OpenCV\n\n"
        f"Data: `{report['data']}`. Protocol: {report['protocol']}.\n\n"
    )
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(stem.with_suffix(".json"), json.dumps(report, indent=1).encode())
        atomic_write(stem.with_suffix(".md"), (heading + E.markdown_table(report)).encode())
    except OSError as exc:
        raise TrackerError(f"--out {out}: cannot write the report ({exc.strerror or exc})") from None
    from tracker.eval.plots import write_plot

    plot_warning = write_plot(report, stem.with_suffix(".png"))  # after the reports: a failing plot loses neither
    if plot_warning:
        print(f"track: warning: {plot_warning}", file=sys.stderr)
    print(E.markdown_table(report), end="")
    written = f"{stem}.json and {stem}.md" if plot_warning else f"{stem}.json, {stem}.md and {stem}.png"
    print(f"track: wrote {written} ({report['seconds']} s)", file=sys.stderr)
    return 0


def _check_hedlin_eval(args: argparse.Namespace) -> None:
    """``track eval --model hedlin``: points benchmarks only, and none of our matcher's options (one line each)."""
    if args.benchmark == "davis":
        raise TrackerError(
            "track eval davis needs masks, and hedlin tracks points only; use badja, tapvid or synthetic with hedlin"
        )
    given = [f"--{k.replace('_', '-')}" for k in _MATCH_OPTIONS if getattr(args, k, None) is not None]
    if given:
        raise TrackerError(f"{', '.join(given)}: our matcher's settings, not hedlin's (it runs the paper's)")
    if args.max_points is not None and args.max_points < 1:
        raise TrackerError(f"--max-points must be at least 1, got {args.max_points}")
    from tracker.hedlin_tracker import input_side, weights_source

    input_side(args.size, args.keep_aspect)  # --size, --keep-aspect and --weights: one line before any data is read
    weights_source(args.weights)


_MATCH_OPTIONS = (
    "pool",
    "context",
    "topk",
    "radius",
    "prop_temperature",
    "window_radius",
    "temperature",
    "min_score",
    "fb_tolerance",
    "search_radius",
    "update",
)


def _eval_hedlin(args: argparse.Namespace, device: str) -> tuple[dict, dict, float]:
    """Run a points benchmark with hedlin's own point tracker (:mod:`tracker.hedlin_tracker`) in place of ours:
    ``(report, settings, seconds)``. One tracker serves every sequence (its input is a fixed square)."""
    from dataclasses import asdict

    from tracker.eval import own_tracker as own
    from tracker.hedlin_tracker import create_hedlin_tracker

    built: list = []

    def make_tracker(frame_hw):
        if not built:
            built.append(
                create_hedlin_tracker(
                    frame_hw, size=args.size, keep_aspect=args.keep_aspect, weights=args.weights, device=device
                )
            )
        return built[0]

    start = time.perf_counter()
    limit = args.max_points
    if args.benchmark == "badja":
        report = own.eval_badja_own(args.root, args.davis_root, make_tracker, "hedlin", limit)
    elif args.benchmark == "synthetic":
        report = own.eval_synthetic_own(make_tracker, "hedlin", tuple(args.seeds), args.frames, max_points=limit)
    else:
        report = own.eval_tapvid_own(args.pkl, make_tracker, "hedlin", limit)
    tracker = built[0] if built else None
    settings = {
        "size": args.size or "default (512)",
        "device": device,
        "hedlin": asdict(tracker.config) if tracker else None,
        "max_points": limit,
    }
    return report, settings, time.perf_counter() - start


def _check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` folder that cannot be made or written, without creating it."""
    if out.exists():
        if not out.is_dir():
            raise TrackerError(f"--out {out} is a file, not a folder")
        check_writable(out / "report.json", "--out")
        return
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise TrackerError(f"--out {out}: cannot create the folder ({ancestor} is a file)")
    check_writable(ancestor / "report.json", "--out")


# --------------------------------------------------------------------------- track export


def build_export_parser() -> argparse.ArgumentParser:
    p = Parser(prog="track export", description="Export a featurizer (LoRA merged) for real-time backends.")
    sub = p.add_subparsers(dest="format", required=True, parser_class=Parser)
    o = sub.add_parser("onnx", help="ONNX graph: float NHWC frames at the input size -> unit feature grid")
    t = sub.add_parser("tensorrt", help="TensorRT engine (strongly typed) for this GPU, checked against torch")
    for q in (o, t):
        q.add_argument("--model", default="distilldift", help="a ViT model of the weights table (default distilldift)")
        q.add_argument("--weights", help="'random' or local weights file(s), as for tracking")
        q.add_argument("--size", default="434", help="input size N (square) or WxH, multiples of 14 (default 434)")
    o.add_argument("--precision", default="fp32", help="fp32 or fp16 (LayerNorm, softmax, normalisation in fp32)")
    o.add_argument("--fp16", action="store_true", help="same as --precision fp16")
    o.add_argument("--opset", type=int, default=17)
    o.add_argument(
        "--step",
        action="store_true",
        help="the whole per-frame step: frames + N query descriptors in, points and scores out",
    )
    o.add_argument("--window-radius", type=int, default=2, help="--step: soft-argmax window radius (2)")
    o.add_argument("--temperature", type=float, default=0.05, help="--step: soft-argmax temperature (0.05)")
    o.add_argument("--out", required=True, help="the .onnx file to write")
    t.add_argument("--precision", default="fp16", help="fp16 (default), bf16 or fp32")
    t.add_argument("--max-batch", type=int, default=32, help="largest batch the engine takes (default 32)")
    t.add_argument("--device", default="cuda", help="the GPU to build for (default cuda)")
    t.add_argument("--out", required=True, help="the .engine file to write (its .engine.json beside it)")
    return p


def export_command(args: argparse.Namespace) -> int:
    from tracker.featurizers import VIT_MODELS, create_featurizer
    from tracker.geometry import SizeSpec

    if args.model not in VIT_MODELS:
        raise TrackerError(f"can export only ViT models ({', '.join(VIT_MODELS)}), not {args.model!r}")
    out = Path(args.out)
    suffix = ".onnx" if args.format == "onnx" else ".engine"
    if out.suffix.lower() != suffix:
        raise TrackerError(f"--out must end in {suffix}, got {out.name}")
    check_writable(out, "--out")
    spec = SizeSpec.parse(args.size)
    spec.resolve(spec.height or 1, spec.width or 1, multiple=14)  # refuses sides that are not multiples of 14
    if args.format == "tensorrt":
        return _export_tensorrt(args, spec, out)
    precision = "fp16" if args.fp16 else args.precision
    if precision not in ("fp32", "fp16"):
        raise TrackerError(
            f"--precision {precision}: ONNX exports are fp32 or fp16 (bf16 graphs are built for TensorRT by "
            "`track export tensorrt --precision bf16`)"
        )
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise TrackerError("ONNX export needs onnx and onnxruntime: pip install '.[export]'") from None
    from export.onnx import export_onnx, export_step_onnx
    from tracker.matching import MatchConfig

    try:
        match = MatchConfig(window_radius=args.window_radius, temperature=args.temperature)
    except ValueError as exc:
        raise TrackerError(str(exc)) from None
    featurizer = create_featurizer(args.model, (spec.height, spec.width), size=args.size, weights=args.weights)
    if args.step:
        report = export_step_onnx(featurizer, out, match, precision=precision, opset=args.opset)
    else:
        report = export_onnx(featurizer, out, precision=precision, opset=args.opset)
    print(
        f"track: wrote {report.path} ({args.model}, {spec.width}x{spec.height}, {precision}"
        f"{', whole step' if args.step else ''}); ONNX Runtime ({report.provider}) vs torch fp32: "
        f"min cosine {report.min_cosine:.6f}",
        file=sys.stderr,
    )
    return 0


def _export_tensorrt(args: argparse.Namespace, spec, out: Path) -> int:
    from tracker.backends import PRECISIONS, available_backends
    from tracker.featurizers import create_featurizer

    if args.precision not in PRECISIONS:
        raise TrackerError(f"--precision must be one of {', '.join(PRECISIONS)}, got {args.precision!r}")
    if args.max_batch < 1:
        raise TrackerError("--max-batch must be at least 1")
    if not args.device.startswith("cuda"):
        raise TrackerError(f"--device {args.device}: TensorRT engines are built on a CUDA device")
    reason = available_backends(args.device)["tensorrt"]
    if reason:
        raise TrackerError(f"cannot build a TensorRT engine here: {reason}")
    device = _pick_device(args.device)
    from export.tensorrt import engine_for

    featurizer = create_featurizer(args.model, (spec.height, spec.width), size=args.size, weights=args.weights)
    trt_featurizer, where = engine_for(
        featurizer, precision=args.precision, device=device, max_batch=args.max_batch, out=out
    )
    print(
        f"track: wrote {out} ({args.model}, {spec.width}x{spec.height}, {args.precision}, batch 1..{args.max_batch}; "
        f"{where}); TensorRT vs torch fp32 on the check image: min cosine {trt_featurizer.meta.min_cosine:.5f}",
        file=sys.stderr,
    )
    return 0


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
