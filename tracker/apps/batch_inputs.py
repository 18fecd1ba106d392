"""``track batch``'s inputs: the videos of a folder, glob or manifest, their queries, settings and digests.

Everything here is cheap and imports nothing heavy: the driver runs it before any worker starts, and
``track batch --help`` never loads torch. A :class:`Job` carries paths only (each worker reads its video).
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tracker.errors import TrackerError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
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
        if entry.points or entry.mask:  # named in the manifest
            missing.append("")
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
    # what every video would fail on, said once before any is tried (as track says it)
    from tracker.choices import check_model_name
    from tracker.geometry import SizeSpec

    check_model_name(args.model, where)
    from tracker.backends import pick_device

    try:
        pick_device(args.device)  # track's own check (cuda asked for where there is none, too)
    except TrackerError as exc:
        raise TrackerError(f"{where}{exc}") from None
    if args.size is not None:
        try:
            SizeSpec.parse(args.size, keep_aspect=args.keep_aspect)
        except TrackerError as exc:
            raise TrackerError(f"{where}{exc}") from None
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
    from tracker.apps.track_video import contradiction

    jobs = []
    out = Path(os.path.abspath(out))  # workers (Ray's above all) do not share the driver's working folder
    for entry in entries:
        entry.video, entry.points, entry.mask = (
            p if p is None or is_url(p) else os.path.abspath(_strip_file(p))
            for p in (entry.video, entry.points, entry.mask)
        )
        where = f"{entry.source}: " if entry.source else ""
        parsed = track_args([*common, *entry.options], where)
        ignored = contradiction(parsed, "--mask" if entry.mask else "--points")
        if ignored:  # an option this video's mode would ignore: said once, before any video runs
            raise TrackerError(f"{where}{entry.name}: {ignored}")
        settings = settings_of(parsed)
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
