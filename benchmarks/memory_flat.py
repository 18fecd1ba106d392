"""Memory stays flat in video length: RSS of the real ``track`` command after frame 300 and after frame 3,000.

Generates a 320x240 clip of ``--frames`` frames (tracker.synthetic.moving_objects played forwards and
backwards, so the motion stays continuous and in frame however long the clip is) and the demo's 12 query
points, runs ``python -m tracker.apps.cli CLIP --points P --model sift`` with and without the overlay video,
samples the process's resident set size (psutil) every 50 ms and reads the frame count from the progress bar.

The RSS "after frame n" is the median of the samples taken while frames ``[n - max(16, n/20), n)`` were done
(a median of many samples, not one reading). The run passes when the RSS after the last frame is within
``--tolerance`` (10 %) of the RSS after ``--early`` (300) frames, which is already past the warm-up.

Usage:
    python benchmarks/memory_flat.py [--frames 3000] [--early 300] [--size 320x240] [--overlay both|on|off]
        [--out benchmarks/results/cpu-2core] [-- extra track options]

Prints one line per run, writes ``memory_flat.json`` to ``--out`` and exits 1 when a run is not flat.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import psutil

from tracker.synthetic import moving_objects

REPO = Path(__file__).resolve().parents[1]
PROGRESS = re.compile(rb"\|\s*(\d+)/(\d+)\s*\[")


def make_clip(folder: Path, frames: int, size: tuple[int, int], period: int = 100) -> tuple[Path, Path]:
    """Write ``clip.mp4`` (``frames`` frames of ``size = (width, height)``) and ``points.json`` to ``folder``.

    ``period`` frames of :func:`~tracker.synthetic.moving_objects` are played forwards then backwards
    (objects move about 1.4 px a frame, so 100 frames keep them inside a 320x240 frame).
    """
    w, h = size
    video = moving_objects(num_frames=period, size=(h, w), num_objects=2, seed=7)
    order = np.concatenate([np.arange(period), np.arange(period - 2, 0, -1)])
    path = folder / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (w, h))
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in video.frames]
    for i in range(frames):
        writer.write(bgr[order[i % len(order)]])
    writer.release()
    points = []
    for x0, y0, x1, y1 in video.object_boxes:
        for fx in (0.3, 0.5, 0.7):
            for fy in (0.3, 0.7):
                points.append({"x": float(x0 + fx * (x1 - x0)), "y": float(y0 + fy * (y1 - y0))})
    (folder / "points.json").write_text(json.dumps({"points": points}))
    return path, folder / "points.json"


def run_tracked(command: list[str], interval: float = 0.05, env: dict | None = None) -> dict:
    """Run ``command`` (a ``track`` call with its progress bar on), sampling its RSS every ``interval`` s.

    Returns:
        ``{"samples": [(seconds, frames done, rss bytes)], "returncode", "stderr_tail", "seconds"}``.
    """
    start = time.monotonic()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, cwd=REPO, env=env)
    ps = psutil.Process(proc.pid)
    done = [0]
    samples: list[tuple[float, int, int]] = []

    def sample() -> None:
        while proc.poll() is None:
            try:
                samples.append((time.monotonic() - start, done[0], ps.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pending, other = b"", []
    while chunk := proc.stderr.read1(65536):
        parts = re.split(rb"[\r\n]", pending + chunk)
        pending = parts.pop()
        for part in parts:
            found = PROGRESS.search(part)
            if found:
                done[0] = int(found.group(1))
            elif part.strip():
                other.append(part.decode(errors="replace"))
    proc.wait()
    sampler.join()
    return {
        "samples": samples,
        "returncode": proc.returncode,
        "stderr_tail": other[-5:],
        "seconds": time.monotonic() - start,
    }


def rss_after(samples: list[tuple[float, int, int]], frame: int) -> float:
    """Median RSS (bytes) of the samples taken while frames ``[frame - max(16, frame/20), frame)`` were done
    (the progress bar moves a featurizer batch at a time)."""
    low = frame - max(16, frame // 20)
    window = [rss for _, done, rss in samples if low <= done < frame]
    if not window:
        raise RuntimeError(f"no RSS sample between frames {low} and {frame}: the run was too short or too fast")
    return float(statistics.median(window))


def profile(samples: list[tuple[float, int, int]], step: int) -> dict[int, float]:
    """Median RSS in MiB per ``step`` frames (``{first frame of the block: MiB}``), for the result file."""
    blocks: dict[int, list[int]] = {}
    for _, done, rss in samples:
        blocks.setdefault(done // step * step, []).append(rss)
    return {k: round(statistics.median(v) / 2**20, 1) for k, v in sorted(blocks.items())}


def measure(clip: Path, points: Path, folder: Path, overlay: bool, args: argparse.Namespace, extra: list[str]) -> dict:
    """One ``track`` run: RSS after ``args.early`` and after ``args.frames`` frames, and the verdict."""
    command = [sys.executable, "-m", "tracker.apps.cli", str(clip), "--points", str(points), "--model", "sift"]
    command += ["--out-tracks", str(folder / "tracks.json")]
    command += ["--out-video", str(folder / "overlay.mp4")] if overlay else ["--no-video"]
    command += extra
    run = run_tracked(command)
    if run["returncode"] != 0:
        raise SystemExit(f"track failed ({run['returncode']}): {' '.join(run['stderr_tail'])}")
    early, late = rss_after(run["samples"], args.early), rss_after(run["samples"], args.frames)
    return {
        "overlay": overlay,
        "command": " ".join(["python", *command[1:]]),
        "seconds": round(run["seconds"], 1),
        "rss_early_mib": round(early / 2**20, 1),
        "rss_late_mib": round(late / 2**20, 1),
        "ratio": round(late / early, 4),
        "flat": late <= (1 + args.tolerance) * early,
        "rss_mib_per_block": profile(run["samples"], max(1, args.frames // 30)),
        "track_summary": run["stderr_tail"][-1:],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=3000)
    p.add_argument("--early", type=int, default=300, help="the reference frame, past the warm-up")
    p.add_argument("--size", default="320x240", help="WxH of the generated clip")
    p.add_argument("--overlay", choices=("both", "on", "off"), default="both")
    p.add_argument("--tolerance", type=float, default=0.10, help="allowed growth, a fraction (0.10)")
    p.add_argument("--out", default=None, help="folder for memory_flat.json")
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if not 0 < args.early < args.frames:
        p.error("need 0 < --early < --frames")
    size = tuple(int(v) for v in args.size.lower().split("x"))
    runs = []
    with tempfile.TemporaryDirectory(prefix="memory_flat_") as tmp:
        clip, points = make_clip(Path(tmp), args.frames, size)
        for overlay in {"both": (False, True), "on": (True,), "off": (False,)}[args.overlay]:
            result = measure(clip, points, Path(tmp), overlay, args, extra)
            runs.append(result)
            print(
                f"{'overlay' if overlay else 'no overlay'}: RSS {result['rss_early_mib']:.0f} MiB after frame "
                f"{args.early}, {result['rss_late_mib']:.0f} MiB after frame {args.frames} "
                f"(x{result['ratio']:.3f}, {'flat' if result['flat'] else 'GROWS'}; {result['seconds']:.0f} s)"
            )
    if args.out:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from _common import save

        setup = {"frames": args.frames, "early": args.early, "frame_size": list(size), "tolerance": args.tolerance}
        save(args.out, "memory_flat", {**setup, "extra_options": extra, "runs": runs})
    return 0 if all(r["flat"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
