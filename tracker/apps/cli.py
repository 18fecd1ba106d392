"""The ``track`` command's entry point: its parsers and :func:`main`, which runs ``track VIDEO``
(:mod:`tracker.apps.track_video`), ``track eval`` (:mod:`tracker.apps.eval_command`), ``track export`` and ``track
weights`` (:mod:`tracker.apps.export_command`), and the subcommands in :data:`SUBCOMMANDS`.

Bad input gives one line on stderr and exit code 2; outputs are written atomically, and an interrupted
run (Ctrl-C: exit 130; SIGTERM: exit 143) still writes the tracks of the frames it finished.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

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
    # OpenCV's own "[ WARN:0@3.2] ... can't open camera by index" lines would precede our one-line error; its
    # errors still show. OPENCV_LOG_LEVEL=WARNING (or INFO) brings them back. Read when cv2 is first imported.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "weights":
            from tracker.apps.export_command import weights_command

            return weights_command(build_weights_parser().parse_args(argv[1:]))
        if argv and argv[0] == "eval":
            from tracker.apps.eval_command import build_eval_parser, eval_command

            return eval_command(build_eval_parser().parse_args(argv[1:]))
        if argv and argv[0] == "export":
            from tracker.apps.export_command import build_export_parser, export_command

            return export_command(build_export_parser().parse_args(argv[1:]))
        if argv and argv[0] in APP_PARSERS:  # parse before importing the app (torch): fast help and errors
            import importlib

            from tracker.apps import parsers

            args = getattr(parsers, APP_PARSERS[argv[0]])().parse_args(argv[1:])
            return importlib.import_module(SUBCOMMANDS[argv[0]]).run_command(args)
        if argv and argv[0] in SUBCOMMANDS:
            import importlib

            return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])
        from tracker.apps.track_video import track_command

        with _sigterm_as_interrupt():
            return track_command(build_parser().parse_args(argv))
    except TrackerError as exc:
        print(f"track: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"track: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return EXIT_TERMINATED if terminated else EXIT_INTERRUPTED


if __name__ == "__main__":  # run the imported module's main: its Terminated is the one track_video checks
    from tracker.apps.cli import main as _main

    sys.exit(_main())
