"""``track batch``: track a folder, glob or manifest of videos, on this machine or on a Ray cluster.

Each video goes through the very code ``track`` runs (:func:`tracker.apps.cli.track_command` /
``dense_command``, see :mod:`tracker.apps.batch_workers`), in workers that build their featurizer once. The
driver here finds the videos and their points or masks, skips those already done with the same inputs and
settings (a digest of both), hands the rest to an engine (a local process pool or Ray actors) and writes
``OUT/manifest.jsonl`` atomically after every video: one line per video with its status (ok / failed /
skipped / interrupted), frames, frames/s, worker, duration, outputs and the one-line error.

This module imports nothing heavy at the top: ``track batch --help`` and usage errors never load torch.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import glob
import hashlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracker.errors import TrackerError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
FORMATS = ("json", "csv", "npz")
RESULTS = "manifest.jsonl"
EXIT_FAILED = 1  # some video failed (2 stays "bad command line"; 130/143 interrupted)
# `track` options a batch sets itself, per video: refused among the passed-through options.
OWN_OPTIONS = {
    "video": None,
    "points": "--points",
    "mask": "--mask",
    "davis_root": "--davis-root",
    "sequence": "--sequence",
    "colormap": "--colormap",
    "edit": "--edit",
    "out_masks": "--out-masks",
    "out_tracks": "--out-tracks",
    "out_video": "--out-video",
    "no_video": "--no-video",
    "no_progress": "--no-progress",
}
DIGEST_VERSION = 1


def batch_parser() -> argparse.ArgumentParser:
    """``track batch``'s own options; any other option is a ``track`` option applied to every video."""
    from tracker.apps.cli import Parser

    p = Parser(
        prog="track batch",
        allow_abbrev=False,  # `--mask` must not pass for --mask-dir: every other option goes to `track`
        description="Track every video of a folder, glob or manifest, with the outputs `track` writes, on this "
        "machine (a process pool) or on a Ray cluster. Any `track` option (--model, --refine, --size, --batch, "
        "--min-score, ...: see `track --help`) is passed to every video.",
        epilog="Rerunning the same command skips the videos already done with the same inputs and settings. "
        "Exit code: 0 all ok, 1 some video failed, 2 bad command line or manifest, 130 interrupted.",
    )
    p.add_argument(
        "inputs",
        help="a folder of videos or of DAVIS-style frame folders, a glob ('videos/*.mp4', 's3://b/*.mp4'), "
        "or a manifest .jsonl / .csv (schema: tracker/schemas/manifest.schema.json)",
    )
    p.add_argument("--out", required=True, help="output folder: OUT/<name>/tracks.json ..., OUT/manifest.jsonl")
    what = p.add_argument_group("what to track in each video (else the manifest's points / mask)")
    what.add_argument("--points", dest="batch_points", metavar="P", help="one points file for every video")
    what.add_argument("--points-dir", help="folder of points files by video name: <name>.json")
    what.add_argument("--mask-dir", help="folder of first-frame masks by name: <name>.png or <name>/00000.png")
    o = p.add_argument_group("outputs")
    o.add_argument("--format", choices=FORMATS, default="json", help="tracks file format (default json)")
    o.add_argument("--overlay", action="store_true", help="also write each video's overlay .mp4")
    o.add_argument("--force", action="store_true", help="redo every video, even those already done")
    e = p.add_argument_group("engine")
    e.add_argument(
        "--engine",
        dest="batch_engine",
        choices=("local", "ray"),
        default="local",
        help="local (default): worker processes on this machine; ray: Ray actors, on --address or a local Ray "
        "(track's --engine FILE is not available here: use --backend tensorrt)",
    )
    e.add_argument(
        "--workers",
        type=int,
        help="workers, each with its own model (default: one per GPU; on CPU, one per 2 cores)",
    )
    e.add_argument(
        "--threads",
        type=int,
        help="torch threads per worker on CPU (default: local, cores / (2 x workers); ray, --cpus-per-worker)",
    )
    e.add_argument("--address", help="ray: cluster address ('auto', 'ray://head:10001'); default a local Ray")
    e.add_argument("--gpus-per-worker", type=float, help="ray: GPUs per worker (default 1 where GPUs exist, else 0)")
    e.add_argument("--cpus-per-worker", type=float, help="ray: CPUs per worker (default 1)")
    e.add_argument(
        "--retries",
        type=int,
        default=2,
        help="times a video is retried when its worker is lost (killed, out of memory, node gone; default 2)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar: one line per video (for logs)")
    return p


@dataclass(frozen=True)
class Job:
    """One video to track and where its outputs go. Paths only: each worker reads its video itself.

    Attributes:
        name: the video's name (its output folder under ``--out``).
        video: a video file, a frame folder, or a URL fsspec can read.
        points, mask: the queries (exactly one is set).
        argv: the ``track`` options for this video (without inputs and outputs).
        tracks, overlay, masks: output paths (``overlay`` / ``masks`` may be None).
        digest: sha256 of the inputs and settings.
        source: where the video came from, for messages (``manifest.jsonl line 4``).
    """

    name: str
    video: str
    points: str | None
    mask: str | None
    argv: tuple[str, ...]
    tracks: str | None
    overlay: str | None
    masks: str | None
    digest: str
    source: str = ""

    def outputs(self) -> dict[str, str]:
        return {k: v for k, v in (("tracks", self.tracks), ("overlay", self.overlay), ("masks", self.masks)) if v}


@dataclass
class Entry:
    """A video found in the inputs, before its outputs and digest are known."""

    name: str
    video: str
    points: str | None = None
    mask: str | None = None
    options: list[str] = field(default_factory=list)
    source: str = ""


# --------------------------------------------------------------------------- inputs


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _strip_file(path: str) -> str:
    return path[len("file://") :] if path.startswith("file://") else path


def _name_of(path: str) -> str:
    base = path.rstrip("/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base and not base.startswith(".") else base


def _is_frame_folder(path: Path) -> bool:
    from tracker.io.video import FRAME_SUFFIXES

    try:
        return path.is_dir() and any(p.suffix.lower() in FRAME_SUFFIXES for p in path.iterdir())
    except OSError:
        return False


def _is_video_path(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in VIDEO_SUFFIXES


def discover(inputs: str) -> list[Entry]:
    """The videos of a folder or a glob (local or a URL), sorted by path.

    Raises:
        TrackerError: nothing found, or the folder is missing.
    """
    if any(c in inputs for c in "*?["):
        if is_url(inputs):
            fs, matches = _remote_glob(inputs)
            return [Entry(_name_of(m), m) for m in matches if m.lower().endswith(VIDEO_SUFFIXES)] or _none(inputs)
        local = _strip_file(inputs)
        found = [Path(m) for m in sorted(glob.glob(local, recursive=True))]
        return [Entry(_name_of(str(m)), str(m)) for m in found if _is_video_path(m) or _is_frame_folder(m)] or _none(
            inputs
        )
    folder = Path(_strip_file(inputs))
    if not folder.exists():
        raise TrackerError(f"inputs not found: {inputs}")
    if _is_video_path(folder):
        return [Entry(_name_of(str(folder)), str(folder))]
    if not folder.is_dir():
        raise TrackerError(f"{inputs} is not a video, a folder, a glob or a manifest (.jsonl / .csv)")
    davis = folder / "JPEGImages" / "480p"  # a DAVIS root: its 480p sequences
    if davis.is_dir():
        folder = davis
    if _is_frame_folder(folder) and not any(p.is_dir() for p in folder.iterdir()):
        return [Entry(folder.name, str(folder))]  # one frame folder
    children = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    return [Entry(_name_of(str(p)), str(p)) for p in children if _is_video_path(p) or _is_frame_folder(p)] or _none(
        inputs
    )


def _none(inputs: str) -> list[Entry]:
    raise TrackerError(f"no videos in {inputs} (files ending {', '.join(VIDEO_SUFFIXES[:4])}, ... or frame folders)")


def _remote_glob(pattern: str):
    try:
        import fsspec
    except ImportError:
        raise TrackerError(f"{pattern}: reading URLs needs fsspec (pip install fsspec s3fs / gcsfs ...)") from None
    try:
        fs, _, _ = fsspec.get_fs_token_paths(pattern)
        return fs, [m if "://" in m else fs.unstrip_protocol(m) for m in sorted(fs.glob(pattern))]
    except (ImportError, ValueError, OSError) as exc:
        raise TrackerError(f"cannot list {pattern}: {str(exc).splitlines()[0] if str(exc) else exc}") from None


def manifest_schema() -> dict:
    """The published JSON Schema of a manifest line."""
    from importlib import resources

    return json.loads(resources.files("tracker").joinpath("schemas/manifest.schema.json").read_text())


def _options_argv(options: dict) -> list[str]:
    argv = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is False or value is None or value == "":
            continue
        else:
            argv += [flag, str(value)]
    return argv


def read_manifest(path: Path) -> tuple[list[Entry], list[str]]:
    """Read a JSONL or CSV manifest: entries, and one message per bad line (``m.jsonl line 3: ...``).

    Relative paths are relative to the manifest's folder. A line whose video, points or mask file is missing
    is a bad line too: the manifest is checked whole before any video is tracked.
    """
    import jsonschema

    from tracker.io.formats import loads_json

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TrackerError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TrackerError(f"cannot read manifest {path}: {getattr(exc, 'strerror', None) or exc}") from None
    rows: list[tuple[int, object]] = []
    errors: list[tuple[int, str]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise TrackerError(f"manifest {path}: the first line must name the columns, one of them 'video'")
        for row in reader:
            line = reader.line_num
            if None in row:
                errors.append((line, f"{path} line {line}: more cells than columns"))
                continue
            cells = {k: v.strip() for k, v in row.items() if v is not None and v.strip()}
            if not cells:
                continue
            record = {k: cells[k] for k in ("video", "points", "mask", "name") if k in cells}
            options = {k: v for k, v in cells.items() if k not in record}
            if options:
                record["options"] = {k: True if v.lower() == "true" else v for k, v in options.items()}
            rows.append((line, record))
    else:
        for line, raw in enumerate(text.splitlines(), 1):
            if not raw.strip() or raw.lstrip().startswith("#"):
                continue
            try:
                rows.append((line, loads_json(raw, "line")))
            except TrackerError as exc:
                errors.append((line, f"{path} line {line}: {exc}"))
    validator = jsonschema.Draft202012Validator(manifest_schema())
    base = path.parent
    entries = []
    for line, record in rows:
        where = f"{path} line {line}"
        problem = next(iter(sorted(validator.iter_errors(record), key=lambda e: list(e.path))), None)
        if problem is not None:
            at = "/".join(str(p) for p in problem.absolute_path)
            errors.append((line, f"{where}: {f'{at}: ' if at else ''}{problem.message}"))
            continue

        def resolve(value: str | None) -> str | None:
            if value is None or is_url(value):
                return value
            value = _strip_file(value)
            return str(base / value) if not os.path.isabs(value) else value

        video, points, mask = resolve(record["video"]), resolve(record.get("points")), resolve(record.get("mask"))
        missing = [
            f"{what} not found: {value}"
            for what, value in (("video", video), ("points file", points), ("mask", mask))
            if value is not None and not is_url(value) and not os.path.exists(value)
        ]
        if missing:
            errors.append((line, f"{where}: {'; '.join(missing)}"))
            continue
        options = _options_argv(record.get("options", {}))
        try:
            track_args(options, f"{where}: ")
        except TrackerError as exc:
            errors.append((line, str(exc)))
            continue
        name = record.get("name") or _name_of(record["video"])
        entries.append(Entry(name, video, points, mask, options, where))
    return entries, [message for _, message in sorted(errors)]


def attach_queries(entries: list[Entry], args: argparse.Namespace) -> list[str]:
    """Give each entry its points or mask from ``--points`` / ``--points-dir`` / ``--mask-dir``.

    Returns:
        One message per entry left without (it is tracked as failed, the others go on).
    """
    missing = []
    for entry in entries:
        if entry.points or entry.mask:
            continue
        if args.batch_points:
            entry.points = args.batch_points
        elif args.points_dir:
            candidate = Path(args.points_dir) / f"{entry.name}.json"
            entry.points = str(candidate) if candidate.is_file() else None
        elif args.mask_dir:
            for candidate in (
                Path(args.mask_dir) / f"{entry.name}.png",
                Path(args.mask_dir) / entry.name / "00000.png",
            ):
                if candidate.is_file():
                    entry.mask = str(candidate)
                    break
        if not (entry.points or entry.mask):
            where = args.points_dir or args.mask_dir
            missing.append(
                f"no points or mask for it in {where} (looked for {entry.name}.json / .png)"
                if where
                else "no points or mask: give --points, --points-dir or --mask-dir, or name them in a manifest"
            )
        else:
            missing.append("")
    return missing


# --------------------------------------------------------------------------- settings and digests


def track_args(argv: list[str], where: str = "") -> argparse.Namespace:
    """Parse and check the ``track`` options given to a batch (or a manifest line), with placeholder inputs."""
    from tracker.apps.cli import build_parser

    try:
        args = build_parser().parse_args(["VIDEO", *argv])
    except TrackerError as exc:
        raise TrackerError(f"{where}{exc}") from None
    for dest, flag in OWN_OPTIONS.items():
        if dest != "video" and getattr(args, dest, None) not in (None, False):
            raise TrackerError(f"{where}{flag} is set per video by track batch (see --points-dir, --mask-dir, --out)")
    if args.batch < 1:
        raise TrackerError(f"{where}--batch must be at least 1")
    return args


def settings_of(args: argparse.Namespace) -> dict:
    """The settings a video's outputs depend on: every ``track`` option but the inputs and outputs."""
    return {k: v for k, v in sorted(vars(args).items()) if k not in OWN_OPTIONS}


def _file_signature(path: str, content: bool) -> object:
    """What identifies an input: its bytes' sha256 (``content``: small files), else size and modification time
    (a video; a frame folder: every frame's), or a remote object's size and ETag / modification time."""
    if is_url(path):
        import fsspec

        fs, _, (target,) = fsspec.get_fs_token_paths(path)
        info = fs.info(target)
        return [path, info.get("size"), str(info.get("ETag") or info.get("mtime") or info.get("LastModified"))]
    p = Path(path)
    try:
        if content and p.is_file():
            return [p.name, hashlib.sha256(p.read_bytes()).hexdigest()]
        if p.is_dir():
            return [str(p.resolve()), [(c.name, c.stat().st_size, c.stat().st_mtime_ns) for c in sorted(p.iterdir())]]
        st = p.stat()
        return [str(p.resolve()), st.st_size, st.st_mtime_ns]
    except OSError:
        return [path, None]


def digest(entry: Entry, settings: dict, outputs: dict) -> str:
    """sha256 of an entry's inputs (signatures) and settings; equal digests mean the same outputs."""
    doc = {
        "version": DIGEST_VERSION,
        "video": _file_signature(entry.video, content=False),
        "points": _file_signature(entry.points, content=True) if entry.points else None,
        "mask": _file_signature(entry.mask, content=True) if entry.mask else None,
        "settings": settings,
        "outputs": sorted(outputs),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def make_jobs(entries: list[Entry], args: argparse.Namespace, common: list[str], out: Path) -> list[Job]:
    """Jobs with their outputs under ``out`` and their digests; each entry's options are checked here."""
    jobs = []
    out = Path(os.path.abspath(out))  # workers (Ray's above all) do not share the driver's working folder
    for entry in entries:
        entry.video, entry.points, entry.mask = (
            p if p is None or is_url(p) else os.path.abspath(_strip_file(p))
            for p in (entry.video, entry.points, entry.mask)
        )
        where = f"{entry.source}: " if entry.source else ""
        settings = settings_of(track_args([*common, *entry.options], where))
        folder = out / entry.name
        tracks = str(folder / f"tracks.{args.format}") if not entry.mask else None
        overlay = str(folder / "overlay.mp4") if args.overlay else None
        masks = str(folder / "masks") if entry.mask else None
        outputs = {"tracks": tracks, "overlay": overlay, "masks": masks}
        jobs.append(
            Job(
                name=entry.name,
                video=entry.video,
                points=entry.points,
                mask=entry.mask,
                argv=tuple([*common, *entry.options]),
                tracks=tracks,
                overlay=overlay,
                masks=masks,
                digest=digest(entry, settings, {k for k, v in outputs.items() if v}),
                source=entry.source,
            )
        )
    return jobs


# --------------------------------------------------------------------------- the results manifest


def read_results(path: Path) -> dict[str, dict]:
    """The previous run's lines by video name (unreadable lines are ignored: those videos are redone)."""
    previous = {}
    with contextlib.suppress(OSError):
        for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                if isinstance(record, dict) and isinstance(record.get("name"), str):
                    previous[record["name"]] = record
    return previous


def is_done(job: Job, record: dict | None) -> bool:
    """Outputs complete, from the same inputs and settings."""
    if not record or record.get("status") not in ("ok", "skipped") or record.get("digest") != job.digest:
        return False
    return all(os.path.exists(p) for p in job.outputs().values())


def write_results(path: Path, order: list[str], records: dict[str, dict]) -> None:
    from tracker.io.atomic import atomic_write

    lines = [json.dumps(records[name], sort_keys=False) for name in order if name in records]
    try:
        atomic_write(path, ("\n".join(lines) + "\n" if lines else "").encode())
    except OSError as exc:  # disk full...: stop; the videos finished so far keep their outputs
        raise TrackerError(f"cannot write {path} ({exc.strerror or exc}); finished videos' outputs kept") from None


def failed_record(job: Job, error: str, status: str = "failed") -> dict:
    return {
        "name": job.name,
        "video": job.video,
        "status": status,
        "frames": 0,
        "fps": None,
        "worker": None,
        "duration_s": 0.0,
        "outputs": {},
        "error": error,
        "warnings": [],
        "attempts": 0,
        "digest": job.digest,
    }


# --------------------------------------------------------------------------- the command


def default_workers(gpus: int) -> int:
    return gpus if gpus else max(1, (os.cpu_count() or 1) // 2)


def _prepare_out(out: Path) -> Path:
    from tracker.apps.cli import check_writable

    if out.exists() and not out.is_dir():
        raise TrackerError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackerError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    check_writable(out / RESULTS, "--out")
    return out / RESULTS


def collect(args: argparse.Namespace, common: list[str], out: Path) -> tuple[list[Job], dict[str, str]]:
    """The jobs, and the one-line reason of those that cannot run (no points found for them)."""
    given = [o for o, v in (("--points", args.batch_points), ("--points-dir", args.points_dir)) if v]
    given += ["--mask-dir"] if args.mask_dir else []
    if len(given) > 1:
        raise TrackerError(f"give at most one of --points, --points-dir, --mask-dir (got {', '.join(given)})")
    for option, value in (
        ("--points", args.batch_points),
        ("--points-dir", args.points_dir),
        ("--mask-dir", args.mask_dir),
    ):
        if value and not os.path.exists(value):
            raise TrackerError(f"{option} not found: {value}")
    manifest = Path(args.inputs)
    if manifest.suffix.lower() in (".jsonl", ".csv") and not any(c in args.inputs for c in "*?["):
        entries, errors = read_manifest(manifest)
        if errors:
            for message in errors[:20]:
                print(f"track: error: {message}", file=sys.stderr)
            more = " (the first 20 shown)" if len(errors) > 20 else ""
            raise TrackerError(f"manifest {manifest}: {len(errors)} bad line(s){more}; nothing was tracked")
        if not entries:
            raise TrackerError(f"manifest {manifest} lists no video")
    else:
        entries = discover(args.inputs)
    names: dict[str, list[str]] = {}
    for entry in entries:
        names.setdefault(entry.name, []).append(entry.video)
    twice = {n: v for n, v in names.items() if len(v) > 1}
    if twice:
        name, videos = next(iter(twice.items()))
        raise TrackerError(
            f"{len(twice)} name(s) given to several videos, e.g. {name!r}: {', '.join(videos[:3])}; "
            "name them in a manifest ('name' field)"
        )
    missing = attach_queries(entries, args)
    jobs = make_jobs(entries, args, common, out)
    return jobs, {job.name: reason for job, reason in zip(jobs, missing, strict=True) if reason}


def run_command(args: argparse.Namespace, common: list[str]) -> int:
    from tqdm import tqdm

    from tracker.apps.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, _sigterm_as_interrupt

    if args.workers is not None and args.workers < 1:
        raise TrackerError("--workers must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise TrackerError("--threads must be at least 1")
    if args.retries < 0:
        raise TrackerError("--retries must be 0 or more")
    if args.batch_engine == "local" and (args.address or args.gpus_per_worker is not None):
        raise TrackerError("--address and --gpus-per-worker go with --engine ray")
    device = track_args(common).device  # the common options, checked once with a clear message
    out = Path(args.out)
    jobs, unrunnable = collect(args, common, out)
    results_path = _prepare_out(out)
    previous = read_results(results_path)
    order = [job.name for job in jobs]
    order += [name for name in previous if name not in set(order)]  # videos of earlier runs keep their lines
    records = {name: previous[name] for name in order if name in previous}
    todo, skipped = [], 0
    for job in jobs:
        if not args.force and is_done(job, previous.get(job.name)):
            records[job.name] = {**previous[job.name], "status": "skipped"}
            skipped += 1
        elif job.name in unrunnable:
            records[job.name] = failed_record(job, unrunnable[job.name])
        else:
            todo.append(job)
    write_results(results_path, order, records)
    refused = [name for name in unrunnable if records[name]["status"] == "failed"]
    for name in refused:
        print(f"track batch: failed: {name}: {unrunnable[name]}", file=sys.stderr)

    from tracker.apps.batch_workers import make_engine

    start = time.perf_counter()
    status, ok, failed, frames = "done", 0, 0, 0
    bar = tqdm(total=len(todo), unit="video", disable=args.quiet or not todo, dynamic_ncols=True, file=sys.stderr)
    say = bar.write if not bar.disable else (lambda line: print(line, file=sys.stderr))
    engine = None
    try:
        with _sigterm_as_interrupt():
            if todo:
                engine = make_engine(args, len(todo), device, quiet=args.quiet)
                say(f"track batch: {len(todo)} to track, {skipped} already done, {engine.describe()}")
                for record in engine.run(todo):
                    records[record["name"]] = record
                    write_results(results_path, order, records)
                    if record["status"] == "ok":
                        ok += 1
                        frames += record["frames"] or 0
                    else:
                        failed += 1
                    say(summary_line(record))
                    bar.update(1)
                    elapsed = time.perf_counter() - start
                    bar.set_postfix_str(f"{frames / elapsed:.1f} frames/s, {failed} failed", refresh=True)
    except KeyboardInterrupt as exc:
        status = "terminated" if isinstance(exc, Terminated) else "interrupted"
    finally:
        bar.close()
        if engine is not None:
            engine.close()
    elapsed = time.perf_counter() - start
    finished = ok + failed
    failed += len(refused)
    rate = f"{60 * finished / elapsed:.1f} videos/min, {frames / elapsed:.1f} frames/s" if elapsed > 0 else ""
    print(
        f"track batch: {status}: {ok} ok, {failed} failed, {skipped} skipped"
        f"{f', {len(todo) - finished} not finished' if status != 'done' else ''} in {elapsed:.1f} s"
        f"{f' ({rate})' if finished else ''} -> {results_path}",
        file=sys.stderr,
    )
    if status != "done":
        return EXIT_TERMINATED if status == "terminated" else EXIT_INTERRUPTED
    return EXIT_FAILED if failed else 0


def summary_line(record: dict) -> str:
    if record["status"] == "ok":
        fps = f", {record['fps']:.1f} frames/s" if record.get("fps") else ""
        return (
            f"track batch: ok: {record['name']}: {record['frames']} frames in {record['duration_s']:.1f} s{fps} "
            f"on {record['worker']}"
        )
    return f"track batch: {record['status']}: {record['name']}: {record['error']}"


def main(argv: list[str]) -> int:
    args, rest = batch_parser().parse_known_args(argv)
    unknown = [a for a in rest if a.startswith("-")]
    if rest and not unknown:
        raise TrackerError(f"unrecognized arguments: {' '.join(rest)}")
    return run_command(args, rest)
