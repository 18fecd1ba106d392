"""``track batch`` throughput: videos per minute with 1 and 2 workers, local engine and Ray, and the
scheduling overhead per video; beside it, the shell loop users run today (one ``track`` process per video).

Generates ``--videos`` clips (tracker.synthetic.moving_objects, ``--frames`` frames of ``--size``, 16 query
points each), then runs, one after the other in this same script, the real command line:

    track batch CLIPS/ --points-dir POINTS/ --out OUT --model sift --quiet --engine local|ray --workers 1|2
    for each clip: track CLIP --points P --model sift --no-video --no-progress      (the baseline loop)

Per run: the wall time of the whole command (worker start-up included) and, from ``OUT/manifest.jsonl``, each
video's ``duration_s`` (inside the worker: opening, tracking, writing) and ``turnaround_s`` (from handing the
video to a worker to its result in the driver). Reported:

- videos/min: ``videos / wall``, start-up included (what a user waits for this many videos);
- steady videos/min: ``workers / mean turnaround`` over the videos after the first ``workers`` (those wait for
  their worker's start-up): the rate a long batch approaches;
- overhead per video: median ``turnaround_s - duration_s`` over those videos: the time the engine adds to
  each video (hand-over, result, bookkeeping), the scheduling overhead;
- start-up: ``wall - videos * mean turnaround / workers``.

Usage:
    python benchmarks/batch_throughput.py [--videos 12] [--frames 24] [--size 160x120] [--loop 4] [--rounds 2]
        [--out benchmarks/results/cpu-2core]

Writes ``batch_throughput.json`` and ``.md`` to ``--out``. The machine is shared: compare the rows of one
run with each other (they ran minutes apart in one script), not with other files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRACK = [sys.executable, "-m", "tracker.apps.cli"]


def make_clips(folder: Path, videos: int, frames: int, size: tuple[int, int]) -> tuple[Path, Path]:
    import numpy as np

    from tracker.synthetic import moving_objects, write_video

    clips, points = folder / "clips", folder / "points"
    clips.mkdir()
    points.mkdir()
    w, h = size
    rng = np.random.default_rng(0)
    for i in range(videos):
        clip = moving_objects(num_frames=frames, size=(h, w), num_objects=2, seed=i)
        write_video(str(clips / f"clip{i:03d}.mp4"), clip.frames)
        xy = np.stack([rng.uniform(8, w - 9, 16), rng.uniform(8, h - 9, 16)], 1).round(1)
        (points / f"clip{i:03d}.json").write_text(json.dumps(xy.tolist()))
    return clips, points


def run_batch(clips: Path, points: Path, out: Path, engine: str, workers: int) -> dict:
    argv = [*TRACK, "batch", str(clips), "--points-dir", str(points), "--out", str(out), "--model", "sift"]
    argv += ["--quiet", "--engine", engine, "--workers", str(workers)]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"track batch failed ({done.returncode}): {done.stderr[-2000:]}")
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert all(r["status"] == "ok" for r in records), records
    later = records[workers:]  # the first videos handed out wait for their worker's start-up
    turnaround = statistics.fmean(r["turnaround_s"] for r in later)
    overhead = [r["turnaround_s"] - r["duration_s"] for r in later]
    n = len(records)
    return {
        "engine": engine,
        "workers": workers,
        "videos": n,
        "wall_s": round(wall, 2),
        "videos_per_min": round(60 * n / wall, 1),
        "steady_videos_per_min": round(60 * workers / turnaround, 1),
        "mean_duration_s": round(statistics.fmean(r["duration_s"] for r in later), 3),
        "mean_turnaround_s": round(turnaround, 3),
        "overhead_per_video_ms": round(1000 * statistics.median(overhead), 1),
        "overhead_max_ms": round(1000 * max(overhead), 1),
        "startup_s": round(wall - n * turnaround / workers, 2),
        "workers_seen": len({r["worker"] for r in records}),
        "command": " ".join(["track", *argv[len(TRACK) :]]),
    }


def run_loop(clips: Path, points: Path, out: Path, count: int) -> dict:
    names = sorted(p.stem for p in clips.glob("*.mp4"))[:count]
    start = time.perf_counter()
    for name in names:
        argv = [*TRACK, str(clips / f"{name}.mp4"), "--points", str(points / f"{name}.json"), "--model", "sift"]
        argv += ["--out-tracks", str(out / f"{name}.json"), "--no-video", "--no-progress"]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"track failed: {done.stderr[-2000:]}")
    wall = time.perf_counter() - start
    return {
        "engine": "shell loop of `track`",
        "workers": 1,
        "videos": len(names),
        "wall_s": round(wall, 2),
        "videos_per_min": round(60 * len(names) / wall, 1),
        "command": "for v in clips/*.mp4; do track $v --points points/$(basename $v .mp4).json --model sift "
        "--no-video; done",
    }


def medians(runs: list[dict]) -> list[dict]:
    """Per engine and workers, the median of each figure over the rounds."""
    keys = ("wall_s", "videos_per_min", "steady_videos_per_min", "mean_duration_s", "overhead_per_video_ms")
    keys += ("startup_s",)
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        if "steady_videos_per_min" in run:
            groups.setdefault((run["engine"], run["workers"]), []).append(run)
    return [
        {
            "engine": e,
            "workers": w,
            "rounds": len(rs),
            **{k: round(statistics.median(r[k] for r in rs), 3) for k in keys},
        }
        for (e, w), rs in groups.items()
    ]


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "## track batch throughput (sift)",
        "",
        f"{s['videos']} generated clips of {s['frames']} frames, {s['size']}, 16 points each; `--model sift`, "
        f"defaults otherwise; {report['machine']['cpus']} CPU cores, shared. Command: `{report['command']}`.",
        "",
        "| round | engine | workers | videos | wall s | videos/min | steady videos/min | s per video in the worker | "
        "overhead per video (median, max) ms | start-up s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        if "steady_videos_per_min" in r:
            lines.append(
                f"| {r['round']} | {r['engine']} | {r['workers']} | {r['videos']} | {r['wall_s']} | "
                f"{r['videos_per_min']} | {r['steady_videos_per_min']} | {r['mean_duration_s']} | "
                f"{r['overhead_per_video_ms']}, "
                f"{r['overhead_max_ms']} | {r['startup_s']} |"
            )
        else:
            lines.append(
                f"| {r['engine']} | {r['workers']} | {r['videos']} | {r['wall_s']} | {r['videos_per_min']} | | | | |"
            )
    lines += [
        "",
        f"Medians over {report['medians'][0]['rounds'] if report['medians'] else 0} round(s):",
        "",
        "| engine | workers | videos/min | steady videos/min | s per video in the worker | overhead per video ms "
        "| start-up s |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in report["medians"]:
        lines.append(
            f"| {m['engine']} | {m['workers']} | {m['videos_per_min']} | {m['steady_videos_per_min']} | "
            f"{m['mean_duration_s']} | {m['overhead_per_video_ms']} | {m['startup_s']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=12)
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--size", default="160x120", help="WxH of the generated clips")
    p.add_argument("--loop", type=int, default=4, help="clips for the shell-loop baseline (0: none)")
    p.add_argument("--engines", nargs="+", default=["local", "ray"])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=1, help="rounds; every other round runs the configs in reverse")
    p.add_argument("--out", default=None, help="folder for batch_throughput.json and .md")
    args = p.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    runs = []
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp:
        folder = Path(tmp)
        clips, points = make_clips(folder, args.videos, args.frames, size)
        configs = [(engine, workers) for engine in args.engines for workers in args.workers]
        for round_ in range(args.rounds):  # alternate the order: a shared machine's load drifts
            for engine, workers in configs if round_ % 2 == 0 else configs[::-1]:
                run = run_batch(clips, points, folder / f"out-{engine}-{workers}-{round_}", engine, workers)
                run["round"] = round_
                print(json.dumps(run), flush=True)
                runs.append(run)
        if args.loop:
            (folder / "loop").mkdir()
            run = run_loop(clips, points, folder / "loop", args.loop)
            print(json.dumps(run), flush=True)
            runs.append(run)
    report = {
        "command": "python benchmarks/batch_throughput.py " + " ".join(sys.argv[1:]),
        "settings": {"videos": args.videos, "frames": args.frames, "size": args.size, "model": "sift"},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average_after": list(os.getloadavg()),
        "runs": runs,
        "medians": medians(runs),
    }
    text = markdown(report)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "batch_throughput.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "batch_throughput.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
