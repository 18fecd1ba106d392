"""``track VIDEO``: points (``--points``, ``--grid``), masks, colormaps and edits through a video, with the
overlay video and the tracks files; the output checks every command shares (:func:`check_writable`,
:func:`refuse_overwriting`). Its parser is :func:`tracker.apps.cli.build_parser`.

Bad input gives one line on stderr and exit code 2; outputs are written atomically, and an interrupted
run (Ctrl-C: exit 130; SIGTERM: exit 143) still writes the tracks of the frames it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path

from tracker.apps.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated
from tracker.errors import TrackerError


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


def contradiction(args: argparse.Namespace, mode: str) -> str | None:
    """The one-line reason an output or setting given would be silently ignored by ``mode`` (None: none is).

    ``mode`` is the option that says what is carried (``--points``, ``--grid``, ``--mask``, ``--davis-root``,
    ``--colormap``, ``--edit``); ``track batch`` asks it of each video with that video's mode.
    """
    from tracker.choices import DENSE_OPTIONS, MATCH_OPTIONS, POINT_MATCH_OPTIONS, option_flag

    points = mode in ("--points", "--grid")
    masks = mode in ("--mask", "--davis-root")

    def given(dests: tuple[str, ...]) -> str | None:
        return next((option_flag(d) for d in dests if getattr(args, d, None) is not None), None)

    rules = (
        (args.out_video and args.no_video, "give --out-video or --no-video, not both"),
        (args.sequence and mode != "--davis-root", "--sequence goes with --davis-root"),
        (args.video and mode == "--davis-root", "give the VIDEO argument or --davis-root, not both"),
        (args.out_masks and not masks, f"--out-masks goes with --mask or --davis-root, not {mode}"),
        (args.out_tracks and not points, f"--out-tracks goes with --points or --grid; {mode} writes no tracks"),
        (args.legend and not points, f"--legend goes with --points or --grid (it labels the tracks), not {mode}"),
    )
    for broken, message in rules:
        if broken:
            return message
    flag = None if masks else given(DENSE_OPTIONS)
    if flag:
        return f"{flag} goes with --mask or --davis-root (the masks' propagation); {mode} does not use it"
    flag = given(MATCH_OPTIONS + POINT_MATCH_OPTIONS) if masks and not getattr(args, "reference", None) else None
    if flag:
        return (
            f"{flag} sets the matcher of points, colormaps, edits and --reference; {mode} masks are propagated by "
            f"{', '.join(map(option_flag, DENSE_OPTIONS))}"
        )
    flag = None if points or masks else given(POINT_MATCH_OPTIONS)
    if flag:
        return f"{flag} goes with --points or --grid (the point tracker); {mode} does not use it"
    flag = given(MATCH_OPTIONS + POINT_MATCH_OPTIONS) if getattr(args, "model", None) == "hedlin" else None
    if flag:
        return f"{flag} is our matcher's setting, not hedlin's: hedlin runs the paper's own matching"
    return None


def _refuse_contradictions(args: argparse.Namespace, mode: str) -> None:
    """Refuse, in one line, an output or setting that the chosen mode would silently ignore."""
    message = contradiction(args, mode)
    if message:
        raise TrackerError(message)


def track_command(args: argparse.Namespace) -> int:

    import torch

    from tracker.choices import check_model_name
    from tracker.io.drawing import TrackOverlay
    from tracker.io.formats import TRACK_SUFFIXES, TrackLog, grid_points, points_argument, write_tracks
    from tracker.io.pipeline import BatchPrefetcher, Prefetcher, Sink
    from tracker.io.video import AtomicVideoWriter, open_video
    from tracker.tracking import PointTracker

    if args.batch < 1:
        raise TrackerError("--batch must be at least 1")
    check_model_name(args.model)
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
    _refuse_contradictions(args, modes[0])  # after the checks of what the mode is, which say more
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
        # on a CPU the producer also runs the featurizer, beside the tracker's step on the batch before
        # (benchmarks/results/cpu-2core/track_fps_sift_profile.md); the reference search featurizes its own
        ahead = featurizer if device == "cpu" and search is None else None
        source = BatchPrefetcher(frames, args.batch, device=featurizer.device, featurizer=ahead)
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
    from tracker.choices import check_file_model
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
        check_file_model(args.model, options.onnx or options.engine, model)
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
    if out_masks is not None:  # the NNNNN.png it writes must not be an input kept in that folder
        for option, given in (("--mask", args.mask), ("--reference", args.reference), ("--edit", args.edit)):
            inside = given and re.fullmatch(r"\d{5}\.png", Path(given).name)
            if inside and os.path.realpath(Path(given).parent) == os.path.realpath(out_masks):
                raise TrackerError(
                    f"--out-masks {out_masks} holds the {option} file {given}; writing the masks would overwrite it: "
                    "choose another folder"
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
        while True:  # a second Ctrl-C / SIGTERM while the decode thread finishes its batch: still close, keep frames
            try:
                video.close()
                break
            except KeyboardInterrupt as exc:
                if status == "done":
                    status = "terminated" if isinstance(exc, Terminated) else "interrupted"
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
