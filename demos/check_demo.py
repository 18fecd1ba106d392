"""Compare the demo's tracks with the clip's known ground truth and list what was written.

Usage: python demos/check_demo.py OUT_DIR
"""

import sys
from pathlib import Path

import numpy as np

from tracker.io.formats import read_tracks


def main(out: Path) -> int:
    tracks = read_tracks(out / "tracks.json")
    truth = np.load(out / "ground_truth.npz")["xy"]
    error = np.hypot(tracks["x"] - truth[..., 0], tracks["y"] - truth[..., 1])
    print(
        f"demo: {error.shape[1]} points x {error.shape[0]} frames, mean error {np.nanmean(error):.2f} px, "
        f"median {np.nanmedian(error):.2f} px, {100 * tracks['visible'].mean():.0f}% judged visible"
    )
    for name in ("tracks.json", "overlay.mp4"):
        path = out / name
        print(f"  {path} ({path.stat().st_size // 1024} KiB)" if path.is_file() else f"  MISSING {path}")
    return 0 if (out / "overlay.mp4").is_file() else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else "demo_out")))
