"""``track eval badja|davis|synthetic|tapvid``: ours (each refinement mode), or a model's own point tracker
(hedlin), beside the OpenCV baselines on the same data, the report written as JSON, markdown and a plot."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from tracker.apps.cli import Parser
from tracker.apps.track_video import _pick_device, _settings, check_writable, refuse_overwriting
from tracker.errors import TrackerError


def _seed(text: str) -> int:
    """A clip's seed: a non-negative integer (numpy's generators take no other)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"a seed is a non-negative integer, not {text!r}")
    return value


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
    y.add_argument("--seeds", type=_seed, nargs="+", default=[0, 1], help="clips to generate (default: 0 1)")
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
    _refuse_out_in_inputs(args, out, model)  # before _check_out_folder, which tries a file in the folder
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
    from tracker.choices import DENSE_OPTIONS, MATCH_OPTIONS, POINT_MATCH_OPTIONS, option_flag

    matcher = (*DENSE_OPTIONS, *MATCH_OPTIONS, *POINT_MATCH_OPTIONS)
    given = [option_flag(k) for k in matcher if getattr(args, k, None) is not None]
    if given:
        raise TrackerError(f"{', '.join(given)}: our matcher's settings, not hedlin's (it runs the paper's)")
    if args.max_points is not None and args.max_points < 1:
        raise TrackerError(f"--max-points must be at least 1, got {args.max_points}")
    from tracker.hedlin_tracker import input_side, weights_source

    input_side(args.size, args.keep_aspect)  # --size, --keep-aspect and --weights: one line before any data is read
    weights_source(args.weights)


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


# each benchmark's data roots (option dests) and what is read under each: all of it, or a DAVIS root's two
# folders (a DAVIS root may hold other things, such as results: only the root itself and those two are data)
_INPUT_ROOTS = {
    "davis": (("root", ("JPEGImages", "Annotations")),),
    "badja": (("root", ("",)), ("davis_root", ("JPEGImages", "Annotations"))),
}


def _refuse_out_in_inputs(args: argparse.Namespace, out: Path, model: str) -> None:
    """Refuse, in one line, an ``--out`` that is a data root or is inside a folder the benchmark reads (by any
    name: the real paths are compared), and a report file that is an input file (``--pkl``, ``--weights``)."""
    real = Path(os.path.realpath(out))
    for dest, read in _INPUT_ROOTS.get(args.benchmark, ()):
        option, root = f"--{dest.replace('_', '-')}", getattr(args, dest)
        inside = [sub for sub in read if Path(os.path.realpath(Path(root, sub))) in (real, *real.parents)]
        if real == Path(os.path.realpath(root)):
            where = f"is the {option} data folder {root}"
        elif inside:
            sub = inside[0]
            where = f"is in {f'{Path(root, sub)}, data of ' if sub else ''}the {option} folder {root}"
        else:
            continue
        raise TrackerError(f"--out {out} {where}; the report would be written into the data: choose another folder")
    stem = out / f"{args.benchmark}_{model}"
    weights = [w.strip() for w in (args.weights or "").split(",") if w.strip() and w.strip() != "random"]
    inputs = {"the --pkl file": getattr(args, "pkl", None), **{f"the --weights file {w}": w for w in weights}}
    for suffix in (".json", ".md", ".png"):
        refuse_overwriting({f"the report (from --out {out})": stem.with_suffix(suffix)}, inputs)


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
