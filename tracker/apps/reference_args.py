"""``track VIDEO --reference IMAGE --points P | --mask M``: the command line's side of :mod:`tracker.reference`.

Validation (one line, exit 2 through :class:`~tracker.errors.TrackerError`) happens before any model is built;
the search and the mask transfer themselves are the library's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tracker.errors import TrackerError


def add_reference_options(p: argparse.ArgumentParser) -> None:
    """The ``--reference`` option group of ``track``."""
    r = p.add_argument_group("queries from a reference image (semantic correspondence, tracker.reference)")
    r.add_argument(
        "--reference",
        metavar="IMAGE",
        help="--points or --mask are given on this image (not a frame of the video): each point (or the mask) is "
        "found in the video by the features' correspondence, forward-backward checked against the image, then "
        "tracked from there",
    )
    r.add_argument(
        "--reference-flip",
        action="store_true",
        help="also try the left-right mirrored reference; keep the better per point (or for the mask)",
    )
    r.add_argument(
        "--reference-frames",
        type=int,
        default=None,
        metavar="N",
        help="search the first N frames for the points; a point not found by then stays invisible (0: the whole "
        "video; default 8)",
    )


def check_reference_mode(args: argparse.Namespace, mode: str) -> None:
    """Refuse ``--reference`` combinations that are not supported, in one line."""
    if args.reference is None:
        if args.reference_flip:
            raise TrackerError("--reference-flip goes with --reference IMAGE")
        if args.reference_frames is not None:  # else silently ignored
            raise TrackerError("--reference-frames goes with --reference IMAGE")
        return
    if mode not in ("--points", "--mask"):
        raise TrackerError(f"--reference goes with --points or --mask, not {mode}")
    if getattr(args, "model", None) == "hedlin":
        raise TrackerError("--reference needs a dense featurizer; hedlin optimises prompts on a frame of the video")
    if args.reference_frames is not None and args.reference_frames < 0:
        raise TrackerError(f"--reference-frames must be 0 (the whole video) or more, got {args.reference_frames}")


def read_reference(path: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of the reference image, or a one-line error."""
    import cv2

    if not Path(path).is_file():
        raise TrackerError(f"--reference: image not found: {path}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise TrackerError(f"--reference: cannot read image {path}")
    return np.ascontiguousarray(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))


def check_reference_points(queries, image: np.ndarray) -> None:
    """The points must lie on the reference image and carry no frame numbers (they are on the image)."""
    from tracker.reference import check_reference_points as inside

    if bool((queries.frame != 0).any()):
        raise TrackerError("--reference: the points are on the reference image; drop their frame numbers")
    inside(queries.xy.numpy(), image.shape[:2])


def reference_config(args: argparse.Namespace):
    from tracker.reference import ReferenceConfig

    frames = ReferenceConfig.search_frames if args.reference_frames is None else args.reference_frames or None
    return ReferenceConfig(search_frames=frames, flip=args.reference_flip)


def point_search(args: argparse.Namespace, tracker, queries, image: np.ndarray, frame_hw: tuple[int, int]):
    """The :class:`~tracker.reference.ReferenceSearch` of ``queries`` (on ``image``) for ``tracker``."""
    import torch

    from tracker.reference import ReferenceSearch, featurize_reference

    with torch.inference_mode():
        views = featurize_reference(tracker.featurizer, image, frame_hw, flip=args.reference_flip)
    config = reference_config(args)
    return ReferenceSearch(tracker, views, queries.xy.numpy(), queries.labels, config)


def reference_mask(args, featurizer, match_config, image: np.ndarray, labels: np.ndarray, source) -> np.ndarray:
    """Frame 0's mask carried from the reference mask (``labels`` on ``image``); a one-line note on stderr."""
    import torch

    from tracker.geometry import frames_to_tensor
    from tracker.io.video import open_video
    from tracker.reference import featurize_reference, transfer_mask

    with open_video(source, reader=getattr(args, "reader", "auto")) as video:
        first = next(iter(video), None)
    if first is None:
        raise TrackerError(f"{source} has no frames")
    frame_hw = first.shape[:2]
    with torch.inference_mode():
        views = featurize_reference(featurizer, image, frame_hw, flip=args.reference_flip)
        grid = featurizer(frames_to_tensor([first]))[0]
        config = reference_config(args)
        done = transfer_mask(views, labels, grid, frame_hw, match_config.min_score, config.mask_radius)
    if not done.labels.any():
        raise TrackerError(
            f"--reference {args.reference}: no cell of frame 0 matched the reference mask (similar enough and "
            "forward-backward consistent); try --reference-flip or another reference"
        )
    flipped = ", mirrored reference" if done.flipped else ""
    print(
        f"track: reference: mask carried onto frame 0 ({done.cells} cells, mean similarity {done.score:.3f}{flipped})",
        file=sys.stderr,
    )
    return done.labels
