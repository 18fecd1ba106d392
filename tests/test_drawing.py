"""Overlay drawing: one palette indexed by point, trails through occlusion as dashes, lost points, legend."""

from __future__ import annotations

import numpy as np
import torch

from tracker.io.drawing import LOST_GREY, TrackOverlay, palette_hex, point_colours, shade_rejected
from tracker.tracking import TrackResult

H, W = 240, 320
GREY = 90  # the background of the test frames


def result(frame: int, xy, visible) -> TrackResult:
    xy = torch.tensor(np.asarray(xy, np.float32).reshape(-1, 2))
    visible = torch.tensor(np.asarray(visible, bool).reshape(-1))
    return TrackResult(frame, xy, visible, torch.ones(len(visible)))


def background() -> np.ndarray:
    return np.full((H, W, 3), GREY, np.uint8)


def near(pixel, colour, tol: int = 40) -> bool:
    return bool(np.abs(pixel.astype(int) - np.asarray(colour, int)).max() <= tol)


def test_a_points_colour_does_not_depend_on_how_many_points_there_are():
    many = point_colours(300)
    for n in (1, 2, 5, 8, 18, 19, 40):
        assert np.array_equal(point_colours(n), many[:n])
    assert len({tuple(c) for c in many[:18]}) == 18  # the first ones are all distinct
    assert palette_hex(3) == ["#e6194b", "#3cb44b", "#ffe119"]


def test_markers_keep_their_colour_when_points_are_added():
    """Point 0 drawn alone and drawn beside 9 others is the same colour (the old palette spread hues over n)."""
    one = TrackOverlay().draw(background(), result(0, [[100, 100]], [True]))
    xy = [[100, 100]] + [[20 + 25 * i, 200] for i in range(9)]
    ten = TrackOverlay().draw(background(), result(0, xy, [True] * 10))
    assert np.array_equal(one[100, 100], ten[100, 100]) and near(one[100, 100], point_colours(1)[0], 2)


def test_trail_runs_through_occlusion_as_dashes_and_the_lost_point_is_distinct():
    """A point moves right 6 px a frame, visible on frames 0-5 and lost on 6-15: the trail is solid, then dashed."""
    overlay = TrackOverlay(trail=24)
    colour = point_colours(2)[0]
    for t in range(16):
        xy = [[40 + 6 * t, 120], [250, 60]]
        out = overlay.draw(background(), result(t, xy, [t <= 5, True]))
        if t == 8:
            lost_early = out
    row = out[120]
    solid = row[48:66]  # between frames 1 and 4: visible at both ends
    assert all(near(p, colour, 90) for p in solid), solid
    dashed = row[84:120]  # frames 7..13: lost, so dashed
    on = [near(p, colour, 90) for p in dashed]
    off = [near(p, (GREY,) * 3, 12) for p in dashed]
    assert sum(on) >= 8 and sum(off) >= 8, (on, off)  # both dashes and gaps along the occluded stretch
    # the lost point (lost for 3 frames, at x = 88): a grey cross at its centre, not a filled disc in its colour
    assert near(lost_early[120, 88], LOST_GREY, 40) and not near(lost_early[120, 88], colour, 60)
    assert not near(out[120, 130], colour, 60)  # lost for 10 frames: still not a tracked dot
    # the visible one: filled in its colour
    assert near(out[60, 250], point_colours(2)[1], 2)


def test_a_lost_marker_fades_the_longer_the_point_stays_lost():
    overlay = TrackOverlay(fade=8)
    frames = [overlay.draw(background(), result(t, [[160, 120]], [t == 0])) for t in range(14)]
    contrast = [np.abs(f.astype(int) - GREY).sum() for f in frames[1:]]
    assert contrast[0] > contrast[-1] * 1.5


def test_points_not_yet_given_are_not_drawn_and_history_can_be_popped():
    overlay = TrackOverlay()
    out = overlay.draw(background(), result(0, [[float("nan"), float("nan")]], [False]))
    assert (out == GREY).all()
    overlay.history.pop()  # track live replaces the newest entry when it redraws a frame
    assert len(overlay.history) == 0


def test_legend_shows_frame_count_and_labels():
    xy, vis = [[200, 150], [260, 150]], [True, False]
    plain = TrackOverlay().draw(background(), result(4, xy, vis))
    legend = TrackOverlay(legend=True, num_frames=10, labels=["nose", ""]).draw(background(), result(4, xy, vis))
    corner = legend[4:60, 4:120].astype(int)
    assert (plain[4:60, 4:120] == GREY).all()
    assert (corner < GREY).mean() > 0.5 and (corner > 200).any()  # a dark box with white text
    assert np.array_equal(plain[150, 150:300], legend[150, 150:300])  # the markers themselves are unchanged


def test_preview_drawn_at_its_own_size_puts_markers_where_the_points_are():
    small = np.full((H // 2, W // 2, 3), GREY, np.uint8)
    out = TrackOverlay().draw(small, result(0, [[200.5, 100.5]], [True]), scale=0.5)
    assert near(out[50, 100], point_colours(1)[0], 2)


def test_rejected_pixels_are_shaded():
    image = np.full((40, 60, 3), 200, np.uint8)
    valid = np.ones((40, 60), np.float32)
    valid[:, 30:] = 0.0
    out = shade_rejected(image, valid)
    assert (out[:, :30] == 200).all() and (out[:, 30:] < 150).all()


def test_points_far_outside_the_frame_are_left_out_quietly():
    """A diverged estimate (far outside, or huge) draws nothing and never warns about a cast to integers."""
    import warnings

    overlay = TrackOverlay(legend=True)
    xy = [[1e30, 5.0], [-1e9, 1e9], [5000.0, 120.0], [160.0, 120.0]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in range(3):
            out = overlay.draw(background(), result(t, xy, [t == 0, True, False, True]))
    assert near(out[120, 160], point_colours(4)[3], 2)  # the point inside is still drawn
    assert (out[:, 200:] == GREY).all()  # and nothing of the others reaches the frame


def test_splat_blends_like_the_per_pixel_formula_later_points_on_top():
    from tracker.io.drawing import _Canvas, _disc

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    xy = np.array([[10.2, 12.0], [11.0, 12.4], [58.6, 1.0], [-1.0, 39.0], [30.0, 20.0]], np.float32)  # overlapping
    colours = rng.integers(0, 256, (5, 3), dtype=np.uint8)
    offsets = _disc(3.0)
    for alpha in (np.array([0.3, 0.8, 1.0, 0.5, 0.0], np.float32), np.ones(5, np.float32)):
        canvas = _Canvas(frame, pad=10)
        canvas.splat(xy, offsets, colours, alpha)
        want = frame.astype(np.int64)
        before = want.copy()  # every stencil blends with the frame as it was before this splat
        for (x, y), colour, a in zip(np.rint(xy).astype(int), colours, np.rint(alpha * 256).astype(int), strict=True):
            for dx, dy in offsets:
                if 0 <= y + dy < 40 and 0 <= x + dx < 60:
                    old = before[y + dy, x + dx]
                    want[y + dy, x + dx] = (old * (256 - a) + colour.astype(np.int64) * a) >> 8
        assert np.array_equal(canvas.frame(), want.astype(np.uint8))


def test_the_reused_canvas_leaves_nothing_of_the_frame_before():
    rng = np.random.default_rng(5)
    xy = torch.tensor([[10.0, 10.0], [58.0, 38.0], [-2.0, 20.0]])
    first, second = (rng.integers(0, 256, (40, 60, 3), dtype=np.uint8) for _ in range(2))
    reused = TrackOverlay()
    reused.draw(first, TrackResult(0, xy, torch.tensor([True, False, True]), torch.zeros(3)))
    reused.draw(np.zeros((30, 50, 3), np.uint8), TrackResult(1, xy, torch.tensor([True, True, True]), torch.zeros(3)))
    result = TrackResult(2, xy + 1, torch.tensor([False, True, True]), torch.zeros(3))
    got = reused.draw(second, result)
    fresh = TrackOverlay()
    fresh.history.extend(list(reused.history)[:-1])
    assert np.array_equal(got, fresh.draw(second, result))
