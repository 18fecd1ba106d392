"""The TAP-Vid-style occlusion video: exact tracks, honest occlusion flags, exits and re-entries."""

from __future__ import annotations

import numpy as np
import pytest

from tracker.synthetic import occlusion_video


@pytest.fixture(scope="module")
def clip():
    return occlusion_video(seed=0)


def _bilinear(frame: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """``[N, 3]`` float colours of ``frame`` at pixel xy ``[N, 2]`` (inside the frame)."""
    x, y = xy[:, 0], xy[:, 1]
    x0 = np.clip(np.floor(x).astype(int), 0, frame.shape[1] - 2)
    y0 = np.clip(np.floor(y).astype(int), 0, frame.shape[0] - 2)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    f = frame.astype(np.float64)
    return (
        f[y0, x0] * (1 - fx) * (1 - fy)
        + f[y0, x0 + 1] * fx * (1 - fy)
        + f[y0 + 1, x0] * (1 - fx) * fy
        + f[y0 + 1, x0 + 1] * fx * fy
    )


def test_shapes_and_query_frames(clip):
    t, h, w, _ = clip.frames.shape
    n = len(clip.tracks)
    assert (t, h, w) == (48, 256, 256) and clip.frames.dtype == np.uint8
    assert clip.tracks.shape == (n, t, 2) and clip.tracks.dtype == np.float32
    assert clip.visible.shape == clip.reappear.shape == (n, t) and n > 60
    assert clip.masks.shape == (t, h, w)
    # query frame = first visible frame; some points start later (they enter or come out from behind)
    assert all(clip.visible[i, q] and not clip.visible[i, :q].any() for i, q in enumerate(clip.query_frame))
    assert (clip.query_frame > 0).sum() >= 5
    np.testing.assert_array_equal(clip.occluded, ~clip.visible)
    np.testing.assert_array_equal(clip.query_xy, clip.tracks[np.arange(n), clip.query_frame])


def test_same_seed_same_clip_other_seed_other_clip():
    a, b, c = occlusion_video(3, frames=6, size=96), occlusion_video(3, frames=6, size=96), occlusion_video(4, 6, 96)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.tracks, b.tracks)
    assert not np.array_equal(a.frames, c.frames)


def test_tracks_are_exact_where_visible(clip):
    # a visible point shows the same texture colour on every frame where it is visible: the frame sampled at
    # the true position matches its query-frame colour; the same points displaced by 3 px do not
    n, t = clip.visible.shape
    errs, shifted = [], []
    for i in range(t):
        sel = clip.visible[:, i] & (np.arange(t)[i] > clip.query_frame)
        sel &= (clip.tracks[:, i] > 1).all(1) & (clip.tracks[:, i] < 254).all(1)
        if not sel.any():
            continue
        ids = np.flatnonzero(sel)
        ref = np.stack([_bilinear(clip.frames[clip.query_frame[j]], clip.query_xy[j][None])[0] for j in ids])
        errs.append(np.abs(_bilinear(clip.frames[i], clip.tracks[sel, i]) - ref).mean(1))
        moved = np.clip(clip.tracks[sel, i] + [3.0, 0.0], 0, 254)
        shifted.append(np.abs(_bilinear(clip.frames[i], moved) - ref).mean(1))
    errs, shifted = np.concatenate(errs), np.concatenate(shifted)
    assert len(errs) > 1000
    print(f"colour error at the true track {np.median(errs):.2f}, 3 px off {np.median(shifted):.2f} (median, 0-255)")
    assert np.median(errs) < 4.0 and np.median(shifted) > 3 * np.median(errs)


def test_occlusion_flags_agree_with_the_rendered_masks(clip):
    # object k's visible points lie on pixels where object k is on top; hidden ones inside the frame do not
    n, t = clip.visible.shape
    on_object = clip.point_object > 0
    agree_vis, agree_hid = [], []
    for i in range(t):
        xy = np.round(clip.tracks[:, i]).astype(int)
        inside = (xy >= 0).all(1) & (xy < 256).all(1)
        sel = on_object & inside
        top = np.zeros(n, int)
        top[sel] = clip.masks[i][xy[sel, 1], xy[sel, 0]]
        agree_vis.append(top[sel & clip.visible[:, i]] == clip.point_object[sel & clip.visible[:, i]])
        agree_hid.append(top[sel & ~clip.visible[:, i]] != clip.point_object[sel & ~clip.visible[:, i]])
    agree_vis, agree_hid = np.concatenate(agree_vis), np.concatenate(agree_hid)
    assert len(agree_hid) > 100 and agree_vis.mean() > 0.97 and agree_hid.mean() > 0.95


def test_points_leave_the_frame_and_reappear(clip):
    x, y = clip.tracks[..., 0], clip.tracks[..., 1]
    outside = (x < -0.5) | (x > 255.5) | (y < -0.5) | (y > 255.5)
    assert not (outside & clip.visible).any()
    # some points leave the frame after their query frame and are visible again later
    after = np.arange(48)[None] > clip.query_frame[:, None]
    left = outside & after
    back = [i for i in np.flatnonzero(left.any(1)) if clip.visible[i, np.argmax(left[i]) :].any()]
    assert len(back) >= 3
    # reappear marks exactly the frames visible after a hidden frame, after the query frame
    expected = np.zeros_like(clip.visible)
    expected[:, 1:] = clip.visible[:, 1:] & ~clip.visible[:, :-1]
    np.testing.assert_array_equal(clip.reappear, expected & after)
    assert clip.reappear.any(1).sum() >= 20
