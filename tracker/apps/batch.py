"""``track batch``: track a folder, glob or manifest of videos, on this machine or on a Ray cluster.

Each video goes through the very code ``track`` runs (:func:`tracker.apps.track_video.track_command` /
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
import json
import os
import re
import sys
import time
from pathlib import Path

from tracker.apps.batch_inputs import (  # noqa: F401 - the inputs' API, re-exported for the command's users
    OWN_OPTIONS,
    VIDEO_SUFFIXES,
    Entry,
    Job,
    attach_queries,
    discover,
    is_url,
    make_jobs,
    manifest_schema,
    read_manifest,
    track_args,
)
from tracker.errors import TrackerError

FORMATS = ("json", "csv", "npz")
RESULTS = "manifest.jsonl"
EXIT_FAILED = 1  # some video failed (2 stays "bad command line"; 130/143 interrupted)


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
    from tracker.apps.track_video import check_writable

    if out.exists() and not out.is_dir():
        raise TrackerError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackerError(f"--out {out}: cannot create the folder ({exc.strerror or exc})") from None
    check_writable(out / RESULTS, "--out")
    return out / RESULTS


def _manifest_of(args: argparse.Namespace) -> Path | None:
    """The manifest given as the inputs (a .jsonl / .csv path, not a glob), else None."""
    manifest = Path(args.inputs)
    if manifest.suffix.lower() in (".jsonl", ".csv") and not any(c in args.inputs for c in "*?["):
        return manifest
    return None


def refuse_inputs_as_outputs(jobs: list[Job], out: Path, manifest: Path | None) -> None:
    """Refuse, in one line and before anything is written, an ``--out`` that is or is in an input frame folder,
    an output that would be written into one (``--out`` the folder holding them), and an output file that is an
    input file by any name (a video, points file, mask or the manifest; a mask ``NNNNN.png`` in a ``masks/``
    folder that is written)."""
    from tracker.apps.track_video import refuse_overwriting

    local = [(job, what, given) for job in jobs for what, given in _inputs_of(job) if not is_url(given)]
    folders = {os.path.realpath(given): job for job, what, given in local if what == "video" and os.path.isdir(given)}
    files: dict[object, tuple[str, str]] = {}  # real path, and (device, inode) of those that exist -> input
    in_masks: dict[str, tuple[str, str]] = {}  # the folder of an NNNNN.png input -> input
    for job, what, given in local:
        if os.path.isdir(given):
            continue
        named = (f"the {what} of {job.name}", given)
        files.setdefault(os.path.realpath(given), named)
        with contextlib.suppress(OSError):
            st = os.stat(given)
            files.setdefault((st.st_dev, st.st_ino), named)
        if re.fullmatch(r"\d{5}\.png", Path(given).name):
            in_masks.setdefault(os.path.realpath(Path(given).parent), named)
    if manifest is not None:
        files.setdefault(os.path.realpath(manifest), ("the input manifest", str(manifest)))

    def frame_folder_holding(path: Path) -> Job | None:
        real = Path(os.path.realpath(path))
        return next((folders[str(p)] for p in (real, *real.parents) if str(p) in folders), None)

    held = frame_folder_holding(out)
    if held is not None:
        where = "is" if os.path.realpath(out) == os.path.realpath(held.video) else "is in"
        raise TrackerError(
            f"--out {out} {where} the frame folder {held.video} of video {held.name}; the outputs would be written "
            "into the input: choose another folder"
        )
    base = os.path.abspath(out)
    outputs = [("the results manifest", out / RESULTS)]
    outputs += [
        (f"the {kind} of {job.name}", out / os.path.relpath(p, base))
        for job in jobs
        for kind, p in job.outputs().items()
    ]
    for what, path in outputs:
        held = frame_folder_holding(path)
        if held is not None:
            raise TrackerError(
                f"--out {out}: {what} {path} would be written into the frame folder {held.video} of video "
                f"{held.name}: choose another folder"
            )
        if what.startswith("the masks of"):
            given = in_masks.get(os.path.realpath(path))
            if given is not None:
                raise TrackerError(
                    f"--out {out}: {what} {path} holds {given[0]} {given[1]}; writing the masks would overwrite it: "
                    "choose another folder"
                )
            continue
        same = files.get(os.path.realpath(path))
        with contextlib.suppress(OSError):
            st = os.stat(path)
            same = same or files.get((st.st_dev, st.st_ino))
        if same is not None:
            refuse_overwriting({f"{what} (from --out {out})": path}, {same[0]: same[1]})


def _inputs_of(job: Job) -> list[tuple[str, str]]:
    return [
        (what, given)
        for what, given in (("video", job.video), ("points file", job.points), ("mask", job.mask))
        if given
    ]


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
    manifest = _manifest_of(args)
    if manifest is not None:
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
    refuse_inputs_as_outputs(jobs, out, _manifest_of(args))
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
