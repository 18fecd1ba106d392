"""The option parsers of ``track live`` and ``track serve``, apart from the applications themselves.

They import nothing heavy, so ``--help`` and usage errors answer without loading torch or OpenCV: the command
line parses with them first and imports :mod:`tracker.apps.live` / :mod:`tracker.apps.serve` only to run.
"""

from __future__ import annotations

import argparse

LIVE_KEYS = "click: point  drag: mask  c: clear  p/space: pause  s: save  q/esc: quit"


def live_parser() -> argparse.ArgumentParser:
    """``track live``'s options."""
    from tracker.apps.cli import Parser, add_featurizer_options

    p = Parser(
        prog="track live",
        description="Live tracking from a camera (or a video file standing in for one): click to add points, "
        f"drag to paint a mask. Keys: {LIVE_KEYS}.",
    )
    p.add_argument("--camera", default="0", help="camera index (default 0) or a video file standing in for one")
    p.add_argument("--camera-size", help="ask the camera for WxH (e.g. 640x480)")
    p.add_argument(
        "--every-frame",
        action="store_true",
        help="with a file: process every frame in order (deterministic) instead of playing it at its frame rate "
        "and dropping frames while the tracker is busy",
    )
    p.add_argument("--headless", action="store_true", help="no window (events from --script)")
    p.add_argument("--script", help="events JSON: [{'frame': F, 'click': [x, y] | 'paint': [[x, y], ...] | 'key': K}]")
    p.add_argument(
        "--save",
        help="tracks file (.json, .csv, .npz) written by key s and at the end (default: live_tracks.json on s only)",
    )
    p.add_argument("--record", help="write the rendered overlay as an .mp4")
    p.add_argument("--snapshot", help="write the last rendered overlay as a .png")
    p.add_argument("--max-frames", type=int, help="stop after this many processed frames")
    add_featurizer_options(p)
    p.add_argument("--onnx", help="ONNX featurizer written by `track export onnx`")
    p.add_argument("--engine", help="TensorRT engine written by `track export tensorrt`")
    p.add_argument("--context", type=int, help="masks: last N predictions as references (live sift: 1)")
    p.add_argument("--radius", type=float, help="masks: spatial radius in grid cells (live sift: 8)")
    p.add_argument("--pool", type=int, help="masks: propagate on a grid pooled by this factor (1)")
    return p


def serve_parser() -> argparse.ArgumentParser:
    """``track serve``'s options."""
    from tracker.apps.cli import Parser, add_featurizer_options

    p = Parser(
        prog="track serve",
        description="Web demo: upload a video or use the browser's camera, click points, watch them tracked.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    p.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a further Host name (or name:port) the server answers, besides loopback names and --host "
        "(repeatable; needed for --host 0.0.0.0: the names or addresses clients open)",
    )
    add_featurizer_options(p, "torch, tensorrt or auto")
    p.add_argument("--max-upload-mb", type=float, default=64.0, help="largest upload accepted (default 64)")
    p.add_argument("--max-frames", type=int, default=900, help="frames tracked at most per video (default 900)")
    return p
