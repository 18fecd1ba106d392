"""Generate the demo clip: a textured object moving on a known sub-pixel path (no downloads).

Usage: python demos/make_clip.py OUT_DIR  ->  OUT_DIR/clip.mp4, points.json, ground_truth.npz
"""

import json
import sys
from pathlib import Path

import numpy as np

from tracker.synthetic import moving_objects, write_video


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    video = moving_objects(num_frames=60, size=(360, 480), num_objects=2, seed=7)
    write_video(str(out / "clip.mp4"), video.frames, fps=25)
    points, truth = [], []
    for k, (x0, y0, x1, y1) in enumerate(video.object_boxes):
        for fx in (0.3, 0.5, 0.7):
            for fy in (0.3, 0.7):
                xy = np.array([x0 + fx * (x1 - x0), y0 + fy * (y1 - y0)])
                points.append({"x": round(float(xy[0]), 2), "y": round(float(xy[1]), 2), "label": f"object{k}"})
                truth.append(video.ground_truth(xy[None], obj=k)[:, 0])
    (out / "points.json").write_text(json.dumps({"points": points}, indent=1))
    np.savez(out / "ground_truth.npz", xy=np.stack(truth, 1))  # [T, N, 2]
    print(f"wrote {out / 'clip.mp4'} ({len(video.frames)} frames) and {len(points)} query points")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out"))
