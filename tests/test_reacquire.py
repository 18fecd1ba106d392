"""Re-acquisition of lost points from their neighbours' motion (tracker.reacquire)."""

from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch

from tracker import PointTracker, Queries, create_featurizer, default_match_config
from tracker.reacquire import (
    ReacquireConfig,
    Sightings,
    drifted,
    fit_similarity,
    from_query,
    patch_side,
    reacquire,
    record,
)
from tracker.refine import REDETECT
from tracker.synthetic import natural_texture

H, W = 160, 240


def rotating_behind_bar(num_frames: int = 30, seed: int = 0):
    """A textured disc turning 2 deg and moving 3 px right per frame over a static texture, behind a static bar
    (columns 110-130). Returns frames ``[T, H, W, 3]``, the points' truth ``[T, N, 2]`` and visibility ``[T, N]``."""
    rng = np.random.default_rng(seed)
    background = natural_texture(H, W, rng)
    side = 90
    disc = natural_texture(side, side, rng)
    alpha = np.zeros((side, side), np.float32)
    cv2.circle(alpha, (side // 2, side // 2), side // 2 - 2, 1.0, -1)
    bar = natural_texture(H, 20, rng)
    c = (side - 1) / 2
    ys, xs = np.mgrid[15:76:10, 15:76:10]
    local = np.stack([xs.ravel(), ys.ravel()], 1).astype(np.float64)
    local = local[np.hypot(local[:, 0] - c, local[:, 1] - c) < side / 2 - 8]
    frames, truth = [], []
    for t in range(num_frames):
        angle, cx, cy = np.deg2rad(2.0 * t), 50.0 + 3.0 * t, 80.0
        a, b = np.cos(angle), np.sin(angle)
        m = np.array([[a, -b, cx - a * c + b * c], [b, a, cy - b * c - a * c]])
        warped = cv2.warpAffine(disc, m, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        cover = cv2.warpAffine(alpha, m, (W, H), flags=cv2.INTER_LINEAR)[..., None]
        frame = background * (1 - cover) + warped * cover
        frame[:, 110:130] = bar
        frames.append(np.clip(frame + 0.5, 0, 255).astype(np.uint8))
        truth.append(local @ m[:, :2].T + m[:, 2])
    truth = np.stack(truth).astype(np.float32)
    visible = ~((truth[..., 0] >= 110 - 0.5) & (truth[..., 0] <= 130 - 0.5))
    return np.stack(frames), truth, visible


def run(tracker, frames, xy0):
    results = list(tracker.track(frames, Queries.create(xy0), batch_size=4))
    xy = torch.stack([r.xy for r in results]).numpy()
    return xy, torch.stack([r.visible for r in results]).numpy(), torch.stack([r.decision for r in results]).numpy()


def reacquired_within(xy, visible, truth, truth_visible, frames: int = 3, px: float = 2.0) -> tuple[int, int]:
    """(re-acquired, reappearances): reappearances after the bar found visible within ``px`` in ``frames``."""
    back = truth_visible[1:] & ~truth_visible[:-1]
    hits = total = 0
    for t, i in zip(*np.nonzero(back), strict=True):
        t += 1
        total += 1
        window = slice(t, t + frames)
        error = np.linalg.norm(xy[window, i] - truth[window, i], axis=-1)
        hits += bool((visible[window, i] & (error < px)).any())
    return hits, total


def test_fit_similarity_recovers_a_rotation_and_scale_despite_outliers():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (1, 40, 2))
    angle, scale = np.deg2rad(12.0), 1.1
    m = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ m.T + np.array([5.0, -3.0])
    dst[0, :8] += rng.uniform(20, 40, (8, 2))  # a fifth of the points moved otherwise
    fit, b, support = fit_similarity(src, dst, np.ones((1, 40)), robust_px=2.0, iterations=6)
    assert np.abs(fit[0] - m).max() < 0.01 and np.abs(b[0] - [5.0, -3.0]).max() < 0.5
    assert 30 < float(support[0]) < 33  # the 32 inliers keep their weight, the outliers lose theirs


def _turned(gray0: np.ndarray, angle_deg: float, shift: float, pts: np.ndarray):
    """``gray0`` turned by ``angle_deg`` about its centre and shifted by ``shift`` px (x and y), and where ``pts``
    go."""
    centre = (np.array(gray0.shape[::-1], np.float64) - 1) / 2
    a = np.deg2rad(angle_deg)
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    affine = np.hstack([m, (centre + shift - m @ centre)[:, None]])
    image = cv2.warpAffine(gray0, affine, gray0.shape[::-1], flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return image, ((pts - centre) @ m.T + centre + shift).astype(np.float32)


POINTS = np.array([[45.0, 50.0], [75.0, 48.0], [60.0, 78.0], [62.0, 60.0], [40.0, 70.0]], np.float32)


def _gray(seed: int = 1) -> np.ndarray:
    return cv2.cvtColor(natural_texture(120, 120, np.random.default_rng(seed)), cv2.COLOR_RGB2GRAY)


def test_lost_point_found_again_from_how_it_looked_before():
    """Frames 0-2: the texture turns 5 deg a frame; point 3 is seen on frames 0 and 1 and lost on 2. Its kept
    appearance (frame 0: the fresh one is refreshed every frame here, and the one before it is kept), warped by
    its neighbours' similarity since frame 0, is found where that similarity carries it on frame 2."""
    gray0 = _gray()
    config = ReacquireConfig(sigma=0.5)
    p = patch_side(9, config)
    s = record(Sightings.empty(5, p, 8), 0, gray0, np.ones(5, bool), POINTS, refresh=1)
    gray1, at1 = _turned(gray0, 5.0, 2.0, POINTS)
    s = record(s, 1, gray1, np.ones(5, bool), at1, refresh=1)
    assert s.frame.tolist() == [0] * 5 and s.fresh_frame.tolist() == [1] * 5
    gray2, at2 = _turned(gray0, 10.0, 4.0, POINTS)
    others = np.array([0, 1, 2, 4])
    xy, predicted, peak = reacquire(s, 2, gray2, np.array([3]), others, at2[others], 9, config)
    assert predicted[0] and peak[0] >= config.min_ncc and np.linalg.norm(xy[0] - at2[3]) < 0.5
    # with a wrong appearance there is no peak: the point stays at the prediction
    stripes = np.full_like(s.patch, 128) + (np.indices(s.patch.shape[1:])[1] % 4 < 2).astype(np.uint8) * 60
    xy, predicted, peak = reacquire(replace(s, patch=stripes), 2, gray2, np.array([3]), others, at2[others], 9, config)
    assert predicted[0] and peak[0] < config.min_ncc and np.linalg.norm(xy[0] - at2[3]) < 1.0


def test_lost_point_found_again_from_its_query():
    """The same from the query frame: the query patch, warped by the similarity of the points queried on the same
    frame, is found turned by 20 deg; points of another query frame do not count."""
    gray0 = _gray(2)
    gray, now = _turned(gray0, 20.0, 3.0, POINTS)
    config = ReacquireConfig(sigma=0.5)
    rest = (np.array([0, 1, 2, 4]), now[[0, 1, 2, 4]], 9, config)
    xy, predicted, peak = from_query(gray, np.array([3]), POINTS, np.zeros(5, np.int64), {0: gray0}, *rest)
    assert predicted[0] and peak[0] >= config.min_ncc and np.linalg.norm(xy[0] - now[3]) < 0.5
    three = np.array([0, 0, 0, 0, 5])  # neighbours 0-2 only ...
    assert from_query(gray, np.array([3]), POINTS, three, {0: gray0}, *rest)[1][0]
    alone = np.array([5, 5, 0, 0, 5])  # ... one neighbour of its query frame: no prediction
    assert not from_query(gray, np.array([3]), POINTS, alone, {0: gray0}, *rest)[1][0]


def test_a_point_that_stops_while_its_object_moves_has_drifted():
    """Ten points queried on frame 0 turn 10 deg and move; point 4 stayed where it was (stuck on an occluder's
    edge), point 7 moved with them: only point 4 is judged drifted; points of another query frame are not used."""
    rng = np.random.default_rng(3)
    query = rng.uniform(40, 80, (10, 2)).astype(np.float32)
    _, now = _turned(np.zeros((120, 120), np.uint8), 10.0, 6.0, query)
    now[4] = query[4]
    config = ReacquireConfig(sigma=0.5)
    flags = drifted(np.arange(10), now, query, np.zeros(10, np.int64), 120.0, config)
    assert flags.tolist() == [i == 4 for i in range(10)]
    alone = np.array([0, 1, 1, 1, 0, 1, 1, 1, 1, 1])  # point 4's only mate on its query frame: no support
    assert not drifted(np.arange(10), now, query, alone, 120.0, config)[4]


@pytest.mark.parametrize("seed", [0, 1])
def test_points_behind_a_bar_on_a_turning_object_come_back(seed):
    frames, truth, truth_visible = rotating_behind_bar(seed=seed)
    xy0 = truth[0]
    featurizer = create_featurizer("sift", (H, W), size="240x160")
    # a rigid object: its points' neighbourhood can be wider than the default (0.05 of the frame), which is set
    # by BADJA's articulated animals (tracker.reacquire.ReacquireConfig)
    config = ReacquireConfig(sigma=0.15)
    with_it = PointTracker(featurizer, default_match_config("sift"), reacquire_config=config)
    without = PointTracker(featurizer, default_match_config("sift"), reacquire=False)
    xy, visible, decision = run(with_it, frames, xy0)
    hits, total = reacquired_within(xy, visible, truth, truth_visible)
    base_hits, _ = reacquired_within(*run(without, frames, xy0)[:2], truth, truth_visible)
    hidden = ~truth_visible & (np.arange(len(frames))[:, None] > 0)
    print(
        f"seed {seed}: re-acquired within 3 frames {hits}/{total} (without: {base_hits}/{total}); "
        f"hidden judged visible {visible[hidden].mean():.3f}"
    )
    # measured (seeds 0, 1): 23/28 re-acquired both, 0/28 without; hidden judged visible 0.11 and 0.07 (0.12 and
    # 0.09 without: points followed onto the bar's static edge as they enter it, which tracker.reacquire.drifted
    # now mostly catches)
    assert total >= 20 and base_hits <= 0.1 * total
    assert hits >= 0.75 * total
    assert visible[hidden].mean() < 0.15
    assert (decision[:, (truth_visible[1:] & ~truth_visible[:-1]).any(0)] == REDETECT).any()
