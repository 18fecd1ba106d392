"""Shared pieces of the benchmark scripts: the common options, random queries, the machine, saving results."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from tracker import Queries
from tracker.io.atomic import atomic_write

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "shared/data/videos/01_dog.mp4"


def timed_items(iterable: Iterable, seconds: dict[str, float], key: str) -> Iterator:
    """Yield ``iterable``'s items, adding the time each ``next`` took to ``seconds[key]``."""
    it = iter(iterable)
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            seconds[key] += time.perf_counter() - start
        yield item


def parser(description: str, frames: int) -> argparse.ArgumentParser:
    """Options every benchmark takes: video, model, weights, points, frames, batch, out."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--video", default=str(DEFAULT_VIDEO))
    p.add_argument("--model", default="sift")
    p.add_argument("--weights", default=None)
    p.add_argument("--points", type=int, default=256)
    p.add_argument("--frames", type=int, default=frames)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default=None, help="folder for the JSON result")
    return p


def random_queries(n: int, height: int, width: int, seed: int = 0) -> Queries:
    rng = np.random.default_rng(seed)
    return Queries.create(np.stack([rng.uniform(0, width - 1, n), rng.uniform(0, height - 1, n)], 1))


def describe(args, featurizer, frame_hw: tuple[int, int], frames: int) -> dict:
    """The fields every benchmark result starts with: what ran on what."""
    h, w = frame_hw
    return {
        "video": args.video,
        "frame_size": [w, h],
        "model": args.model,
        "weights": args.weights or ("none" if args.model == "sift" else "table"),
        "input_size": list(featurizer.input_hw[::-1]),
        "frames": frames,
        "points": args.points,
    }


def machine() -> dict:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def save(out: str | None, name: str, result: dict) -> None:
    """Write ``result`` (with the machine description) to ``out/name.json`` when ``out`` is given."""
    if out:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**result, "machine": machine()}, indent=1)
        atomic_write(folder / f"{name}.json", text.encode())  # a killed run never leaves half a file
