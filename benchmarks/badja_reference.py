"""BADJA joints found from a separate reference image (``track --reference``, issue 16 item 5), PCK@0.2.

Two cases, both with the reference given as an image that is not a frame of the tracked video, its points the
BADJA joints annotated (and visible) on it:

- ``same-instance``: the first annotated frame of ``dog`` (frame 3) is the reference for the second half of the
  same video (frames 30..59, tracking starts at frame 30); scored on the annotated frames of that stretch.
- ``cross-instance``: the same dog frame and joints are the reference for ``horsejump-high`` (all frames);
  only the BADJA joints annotated and visible on the dog reference are scored, on the horse's annotations
  (the 37-joint catalogue is the same for both: the quadruped parts they share).
- ``control``: dog frame 34, the first annotated frame of the second half, given as a separate image for that
  same stretch: the correspondence is trivial there, so it checks the plumbing (it should score near ``given on
  the video``).

Methods, each scored on the same annotated frames (those after the stretch's first annotated frame):
``reference`` (forward-backward checked, first 8 frames searched), ``reference + flip`` (the mirrored reference
tried too), ``reference, no check`` (the global best match on the first frame, every point accepted), ``copy
reference xy`` (the joints' pixel positions on the reference, constant: what no correspondence scores), and
``given on the video`` (the ordinary BADJA protocol: the true joints given on the stretch's first annotated
frame; the ceiling of what the tracker does once the correspondence is right). A point not found (or reported
invisible) counts as wrong (NaN), as BADJA's PCK does.

Usage:
    python benchmarks/badja_reference.py [--data ../shared/data] [--models sift dinov2-s] [--weights random]
        [--out benchmarks/results/cpu-2core]

Writes ``badja_reference_<model>.json`` and ``.md`` per model into ``--out``; skips (exit 0, one line) when the
BADJA / DAVIS data is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tracker.eval.evaluation import BADJA_JOINTS, MemoFeaturizer, load_badja, pck
from tracker.featurizers import create_featurizer, default_match_config
from tracker.reference import ReferenceConfig, ReferenceSearch, featurize_reference
from tracker.tracking import PointTracker, Queries

DATA = Path(__file__).resolve().parents[2] / "shared/data"
REFERENCE_ANNOTATION = 0  # the reference: dog's first annotated frame (frame 3)
CONTROL_ANNOTATION = 7  # the control's reference: dog frame 34, the first annotated frame of the stretch
SAME_START = 30  # same-instance: the second half of dog (60 frames)
METHODS = ("reference", "reference + flip", "reference, no check", "copy reference xy", "given on the video")


def frames_of(seq, start: int = 0) -> list[np.ndarray]:
    from tracker.io.video import open_video

    with open_video(seq.frames_dir) as video:
        return list(video)[start:]


def run_case(ref_seq, target, start, model, weights, batch, reference=REFERENCE_ANNOTATION) -> dict:
    """One case: the joints of ``ref_seq``'s annotation ``reference`` found and tracked in ``target`` from frame
    ``start``."""
    annotated = np.zeros(ref_seq.visible.shape[1], bool)
    annotated[list(BADJA_JOINTS)] = True
    ids = np.flatnonzero(ref_seq.visible[reference] & annotated)
    ref_frame = int(ref_seq.frame_index[reference])
    ref_image = frames_of(ref_seq)[ref_frame]
    ref_xy = ref_seq.joints[reference, ids]
    frames = frames_of(target, start)
    frame_hw = frames[0].shape[:2]
    rows = np.flatnonzero(target.frame_index >= start)
    first, scored = rows[0], rows[1:]  # the "given" protocol's query frame, then the frames every method is scored on
    truth, visible = target.joints[scored][:, ids], target.visible[scored][:, ids]
    area = target.mask_area[scored]
    t_scored = target.frame_index[scored] - start
    featurizer = MemoFeaturizer(create_featurizer(model, frame_hw, weights=weights))
    match = default_match_config(model)
    out: dict = {
        "reference": f"{ref_seq.name} frame {ref_frame}",
        "video": f"{target.name} frames {start}..{start + len(frames) - 1}",
        "joints": [int(j) for j in ids],
        "scored_frames": [int(f) for f in target.frame_index[scored]],
        "scored_points": int(visible.sum()),
        "methods": {},
    }
    configs = {
        "reference": ReferenceConfig(),
        "reference + flip": ReferenceConfig(flip=True),
        "reference, no check": ReferenceConfig(search_frames=1, min_score=-2.0, fb_radius=1e9),
    }
    with torch.inference_mode():
        for method, config in configs.items():
            start_s = time.perf_counter()
            tracker = PointTracker(featurizer, match)
            views = featurize_reference(featurizer, ref_image, frame_hw, flip=config.flip)
            search = ReferenceSearch(tracker, views, ref_xy, config=config)
            xy = np.stack([r.xy.numpy() for r in search.track(frames, batch)])  # [T, N, 2]
            found = search.found_frame >= 0
            out["methods"][method] = {
                "PCK@0.2": pck(xy[t_scored], truth, visible, area),
                "found": f"{int(found.sum())}/{len(ids)}",
                "found_frame_median": float(np.median(search.found_frame[found])) if found.any() else None,
                "flipped": int(search.flipped.sum()),
                "mean_match_score": float(np.nanmean(search.score)) if found.any() else None,
                "seconds": round(time.perf_counter() - start_s, 1),
            }
        copied = np.broadcast_to(ref_xy, truth.shape)
        out["methods"]["copy reference xy"] = {"PCK@0.2": pck(copied, truth, visible, area)}
        tracker = PointTracker(featurizer, match)
        given = target.visible[first, ids]
        query_t = int(target.frame_index[first]) - start
        queries = Queries.create(target.joints[first, ids][given], query_t)
        res = np.stack([r.xy.numpy() for r in tracker.track(frames, queries, batch)])
        pred = np.full((len(frames), len(ids), 2), np.nan)
        pred[:, given] = res
        out["methods"]["given on the video"] = {
            "PCK@0.2": pck(pred[t_scored], truth, visible, area),
            "given": f"{int(given.sum())}/{len(ids)} (visible on frame {int(target.frame_index[first])})",
        }
    return out


def code_version() -> str:
    """The commit of the tracker that ran (``+dirty`` when it is a work tree with changes under tracker/)."""
    import subprocess

    import tracker

    root = Path(tracker.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "tracker"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return (root / "COMMIT").read_text().strip() if (root / "COMMIT").is_file() else "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def markdown(report: dict) -> str:
    lines = [
        f"## BADJA from a reference image: {report['model']} ({report['weights']})",
        "",
        f"Command: `{report['command']}` (tracker at {report['code']}, {report['seconds']} s)",
        "",
        "| case | method | PCK@0.2 | found | median found frame | flipped | mean match score |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, r in report["cases"].items():
        for m in METHODS:
            row = r["methods"][m]

            def cell(key, fmt="{}", row=row):
                value = row.get(key)
                return "-" if value is None else fmt.format(value)

            found = cell("found") if "found" in row else cell("given")
            lines.append(
                f"| {case} | {m} | {row['PCK@0.2']:.3f} | {found} | {cell('found_frame_median', '{:g}')} | "
                f"{cell('flipped')} | {cell('mean_match_score', '{:.3f}')} |"
            )
    lines.append("")
    for case, r in report["cases"].items():
        lines.append(
            f"- {case}: reference {r['reference']}, video {r['video']}, BADJA joints {r['joints']}, scored on "
            f"frames {r['scored_frames']} ({r['scored_points']} visible joint annotations)"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(DATA), help="the shared data folder (badja/, davis2016/)")
    p.add_argument("--models", nargs="+", default=["sift"])
    p.add_argument("--weights", default=None, help="for the ViT models: 'random' or local files")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.batch < 1:
        p.error("--batch must be at least 1")
    data = Path(args.data)
    badja, davis = data / "badja", data / "davis2016"
    if not (badja / "dog.json").is_file() or not (badja / "horsejump-high.json").is_file() or not davis.is_dir():
        print(f"badja_reference: skipped: no BADJA dog/horsejump-high and DAVIS data under {data}", file=sys.stderr)
        return 0
    dog, horse = load_badja(badja / "dog.json", davis), load_badja(badja / "horsejump-high.json", davis)
    command = "python benchmarks/badja_reference.py " + " ".join(sys.argv[1:])
    for model in args.models:
        weights = None if model == "sift" else args.weights
        start = time.perf_counter()
        report = {
            "benchmark": "badja-reference",
            "model": model,
            "weights": weights or ("none" if model == "sift" else "table"),
            "command": command,
            "protocol": "PCK@0.2 (0.2*sqrt(DAVIS mask area), strictly within; NaN = wrong) on the annotated frames "
            "after the tracked stretch's first annotated frame; reference = dog's first annotated frame",
            "cases": {
                "same-instance": run_case(dog, dog, SAME_START, model, weights, args.batch),
                "cross-instance": run_case(dog, horse, 0, model, weights, args.batch),
                "control": run_case(dog, dog, SAME_START, model, weights, args.batch, CONTROL_ANNOTATION),
            },
            "code": code_version(),
            "threads": torch.get_num_threads(),
            "load_before": os.getloadavg()[0],
        }
        report["seconds"] = round(time.perf_counter() - start, 1)
        md = markdown(report)
        print(md)
        if args.out:
            from tracker.io.atomic import atomic_write

            Path(args.out).mkdir(parents=True, exist_ok=True)
            stem = Path(args.out) / f"badja_reference_{model}"
            atomic_write(stem.with_suffix(".json"), json.dumps(report, indent=1).encode())
            atomic_write(stem.with_suffix(".md"), md.encode())
            print(f"wrote {stem}.json and .md", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
