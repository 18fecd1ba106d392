"""Hand-computed checks of tracker.eval.metrics (DAVIS J/F, PCK, TAP-Vid)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tracker.eval.metrics import (
    _disk,
    _seg2bmap,
    boundary_f,
    jaccard_and_f,
    pck,
    reacquired_share,
    region_jaccard,
    tapvid_metrics,
    visible_error,
)


def _square(r0: int, r1: int, c0: int, c1: int, shape=(20, 20)) -> np.ndarray:
    """Bool mask with rows r0..r1 and cols c0..c1 (inclusive) set."""
    m = np.zeros(shape, bool)
    m[r0 : r1 + 1, c0 : c1 + 1] = True
    return m


def _ring(r0: int, r1: int, c0: int, c1: int, shape=(20, 20)) -> np.ndarray:
    """Bool outline (1 px) of the box rows r0..r1, cols c0..c1."""
    m = _square(r0, r1, c0, c1, shape)
    m[r0 + 1 : r1, c0 + 1 : c1] = False
    return m


# --------------------------------------------------------------------------------------------- J


def test_region_jaccard_overlapping_rectangles():
    # pred rows 0-3 x cols 0-3 (16 px), truth rows 2-5 x cols 2-5 (16 px)
    # intersection rows 2-3 x cols 2-3 = 4 px, union = 16 + 16 - 4 = 28  ->  J = 4/28 = 1/7
    pred = _square(0, 3, 0, 3, (10, 10))
    truth = _square(2, 5, 2, 5, (10, 10))
    assert region_jaccard(pred, truth) == pytest.approx(1 / 7)
    # 4x4 inside a 4x6 rectangle: 16 / 24
    assert region_jaccard(_square(0, 3, 0, 3), _square(0, 3, 0, 5)) == pytest.approx(16 / 24)


def test_region_jaccard_empty_cases():
    empty = np.zeros((5, 5), bool)
    assert region_jaccard(empty, empty) == 1.0  # DAVIS: both empty -> 1
    assert region_jaccard(empty, _square(1, 2, 1, 2, (5, 5))) == 0.0
    assert region_jaccard(_square(1, 2, 1, 2, (5, 5)), empty) == 0.0


# --------------------------------------------------------------------------------------------- F


def test_seg2bmap_square_and_border_rule():
    # 3x3 square rows/cols 1..3 in 5x5. A pixel is boundary if it differs from E, S or SE:
    #   row 0, cols 0-3 (S or SE neighbour is inside); rows 1-2, cols 0 and 3; row 3, cols 0-3;
    #   -> the outline of the box rows 0..3 x cols 0..3 (offset half a pixel to the origin), 12 px.
    seg = _square(1, 3, 1, 3, (5, 5))
    expected = _ring(0, 3, 0, 3, (5, 5))
    assert _seg2bmap(seg).sum() == 12
    np.testing.assert_array_equal(_seg2bmap(seg), expected)
    # all-ones mask: interior pixels equal their neighbours; last row compares only E (equal), last col
    # only S (equal), and the corner is forced to 0 -> no boundary at all.
    assert not _seg2bmap(np.ones((3, 3), bool)).any()


def test_disk_matches_skimage_disk():
    # skimage.morphology.disk(2): x^2 + y^2 <= 4 (13 px); cv2.MORPH_ELLIPSE 5x5 would have full middle rows
    expected = np.array(
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
        np.uint8,
    )
    np.testing.assert_array_equal(_disk(2), expected)
    cross = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)  # disk(1): x^2 + y^2 <= 1
    np.testing.assert_array_equal(_disk(1), cross)


def test_disk_non_integer_radius_matches_skimage():
    # skimage samples np.arange(-r, r + 1): r = 1.5 -> offsets -1.5, -0.5, 0.5, 1.5 (4x4); inside
    # x^2 + y^2 <= 2.25 only (+-0.5, +-0.5) -> the 2x2 centre block (checked against scikit-image 0.26)
    d15 = np.zeros((4, 4), np.uint8)
    d15[1:3, 1:3] = 1
    np.testing.assert_array_equal(_disk(1.5), d15)
    # r = 2.5: offsets -2.5..2.5 (6x6); (1.5, 1.5) -> 4.5 <= 6.25 in, (2.5, 0.5) -> 6.5 out: the 4x4 centre block
    d25 = np.zeros((6, 6), np.uint8)
    d25[1:5, 1:5] = 1
    np.testing.assert_array_equal(_disk(2.5), d25)
    # r = 3.5 (8x8): (2.5, 2.5) -> 12.5 <= 12.25 no, (2.5, 1.5) -> 8.5 in, (3.5, 0.5) -> 12.5 no: 6x6 minus corners
    d35 = np.zeros((8, 8), np.uint8)
    d35[1:7, 1:7] = 1
    d35[[1, 1, 6, 6], [1, 6, 1, 6]] = 0
    np.testing.assert_array_equal(_disk(3.5), d35)
    assert _disk(0).tolist() == [[1]] and _disk(8.0).shape == (17, 17)


def test_boundary_f_non_integer_tolerance_as_the_toolkit():
    # truth: columns >= 10 of 20x20 -> boundary column 9 (all rows); prediction shifted by s columns.
    # bound_th 2.5: the 6x6 disk's 4x4 block anchored at (3, 3) (cv2.dilate) dilates column c to c-1..c+2:
    # s = -1: pred column 8 within 8..11 (P = 1), truth column 9 within 7..10 (R = 1) -> F = 1
    # s = -2: pred column 7 outside 8..11 (P = 0) -> F = 0; s = +2: truth column 9 outside 10..13 (R = 0) -> F = 0
    # (an integer disk of radius 2 would give F = 1 for both)
    def half(c):
        m = np.zeros((20, 20), bool)
        m[:, c:] = True
        return m

    truth = half(10)
    assert [boundary_f(half(10 + s), truth, 2.5) for s in (-2, -1, 0, 1, 2)] == [0.0, 1.0, 1.0, 1.0, 0.0]
    # bound_th 1.5: the 2x2 block dilates column c to c..c+1: only the exact boundary matches both ways
    assert [boundary_f(half(10 + s), truth, 1.5) for s in (-1, 0, 1)] == [0.0, 1.0, 0.0]


def test_boundary_f_shifted_square_tolerance_1():
    # truth: 5x5 square rows/cols 5..9 -> boundary G = outline of rows 4..9 x cols 4..9 (20 px)
    # pred : same square shifted right by 2 (cols 7..11) -> boundary P = outline rows 4..9 x cols 6..11
    #        (20 px)
    # bound_th=1 -> radius 1, disk(1) = the cross (self + 4-neighbours).
    # precision, P pixels with a G pixel within the cross:
    #   top row r=4, c=6..11: c=6..9 on G, c=10 next to (4,9), c=11 no          -> 5
    #   bottom row r=9: same                                                      -> 5
    #   left col c=6, r=5..8: r=5 touches (4,6), r=8 touches (9,6); r=6,7 no      -> 2
    #   right col c=11, r=5..8: nothing of G within 1                             -> 0
    #   precision = 12/20 = 0.6; recall is the mirror image -> 12/20 = 0.6; F = 0.6
    truth = _square(5, 9, 5, 9)
    pred = _square(5, 9, 7, 11)
    assert boundary_f(pred, truth, bound_th=1) == pytest.approx(0.6)
    assert boundary_f(truth, pred, bound_th=1) == pytest.approx(0.6)


def test_boundary_f_shifted_square_tolerance_2():
    # as above but shifted right by 3 (square cols 8..12, P = outline rows 4..9 x cols 7..12), radius 2:
    #   top row r=4, c=7..12: c=7..9 on G, c=10 (dist 1), c=11 (dist 2) to (4,9), c=12 (dist 3) no -> 5
    #   bottom row: 5; left col c=7, r=5..8: (r,9) of G is 2 to the right -> 4;
    #   right col c=12, r=5..8: G col 9 is 3 away, (4,9)/(9,9) are >= sqrt(1+9) away -> 0
    #   precision = 14/20 = 0.7, recall (mirror) = 0.7, F = 0.7
    truth = _square(5, 9, 5, 9)
    pred = _square(5, 9, 8, 12)
    assert boundary_f(pred, truth, bound_th=2) == pytest.approx(0.7)
    # with radius 1 the same pair: top c=7,8,9 on G, c=10 -> 4 (x2 rows); left col c=7: r=5 touches (4,7),
    # r=8 touches (9,7) -> 2; right col 0 -> 10/20 = 0.5 = recall -> F 0.5
    assert boundary_f(pred, truth, bound_th=1) == pytest.approx(0.5)


def test_boundary_f_inner_square_precision_differs_from_recall():
    # truth 5x5 rows/cols 5..9 -> G = outline 4..9 (20 px)
    # pred 3x3 rows/cols 6..8 -> P = outline 5..8 (12 px)
    # radius 1 (cross). Every P pixel has a G pixel right next to it (outward)  -> precision = 12/12 = 1
    # recall: G side pixels r=4 c=5..8, r=9 c=5..8, c=4 r=5..8, c=9 r=5..8 touch P (16); the 4 corners
    # (4,4), (4,9), (9,4), (9,9) only touch G -> recall = 16/20 = 0.8
    # F = 2 * 1 * 0.8 / 1.8 = 8/9
    truth = _square(5, 9, 5, 9)
    pred = _square(6, 8, 6, 8)
    assert boundary_f(pred, truth, bound_th=1) == pytest.approx(8 / 9)
    # swapping roles swaps precision/recall: F unchanged
    assert boundary_f(truth, pred, bound_th=1) == pytest.approx(8 / 9)
    # default bound_th=0.008 on 20x20: ceil(0.008 * sqrt(800) = 0.226) = 1 px -> same radius, same F
    assert boundary_f(pred, truth) == pytest.approx(8 / 9)
    # a loose tolerance (radius 3) matches everything -> F = 1
    assert boundary_f(pred, truth, bound_th=3) == pytest.approx(1.0)


def test_boundary_f_edge_cases():
    empty = np.zeros((20, 20), bool)
    square = _square(5, 9, 5, 9)
    assert boundary_f(empty, empty) == 1.0  # both boundaries empty -> P = R = 1
    assert boundary_f(empty, square) == 0.0  # P = 1, R = 0
    assert boundary_f(square, empty) == 0.0  # P = 0, R = 1
    full = np.ones((20, 20), bool)
    assert boundary_f(full, full) == 1.0  # a full mask has no boundary (see seg2bmap rule) -> both empty


# --------------------------------------------------------------------------------------------- J&F


def _sequence():
    """3 frames of 20x20 label maps with objects 1 (A: rows/cols 5..9) and 2 (B: rows/cols 12..15)."""
    a, b = _square(5, 9, 5, 9), _square(12, 15, 12, 15)
    t0 = np.zeros((20, 20), np.uint8)
    t0[a], t0[b] = 1, 2
    t1 = t0.copy()
    t1[0, :3] = 255  # void label: background, never an object
    t2 = np.zeros((20, 20), np.uint8)
    t2[a] = 1  # object 2 has left the scene
    p0 = np.zeros((20, 20), np.uint8)  # garbage on the given frame: must not be scored
    p1 = np.zeros((20, 20), np.uint8)
    p1[a] = 1  # object 1 exact, object 2 missed
    p2 = np.zeros((20, 20), np.uint8)
    p2[_square(6, 8, 6, 8)] = 1  # object 1 shrunk to the inner 3x3, object 2 correctly absent
    return [p0, p1, p2], [t0, t1, t2]


def test_jaccard_and_f_excludes_first_frame_two_objects():
    preds, truths = _sequence()
    res = jaccard_and_f(preds, truths, exclude_last=False)
    # object 1: frame 1 J=1 F=1; frame 2 J = 9/25, F = 8/9 (inner-square case, 20x20 -> 1 px tolerance)
    #   J1 = (1 + 9/25)/2 = 0.68,  F1 = (1 + 8/9)/2 = 17/18
    # object 2: frame 1 missed: J=0, F=0 (pred boundary empty, truth not); frame 2 both empty: J=1, F=1
    #   J2 = 0.5, F2 = 0.5
    # J = (0.68 + 0.5)/2 = 0.59, F = (17/18 + 9/18)/2 = 13/18, J&F = (0.59 + 13/18)/2
    assert set(res["per_object"]) == {1, 2}
    assert res["per_object"][1]["J"] == pytest.approx(0.68)
    assert res["per_object"][1]["F"] == pytest.approx(17 / 18)
    assert res["per_object"][2]["J"] == pytest.approx(0.5)
    assert res["per_object"][2]["F"] == pytest.approx(0.5)
    assert res["J"] == pytest.approx(0.59)
    assert res["F"] == pytest.approx(13 / 18)
    assert res["J&F"] == pytest.approx((0.59 + 13 / 18) / 2)


def test_jaccard_and_f_options_and_missing_truth():
    preds, truths = _sequence()
    # only object 1: J = 0.68, F = 17/18
    only1 = jaccard_and_f(preds, truths, objects=[1], exclude_last=False)
    assert set(only1["per_object"]) == {1}
    assert only1["J"] == pytest.approx(0.68)
    # the default is the toolkit's [1:-1]: only frame 1 -> obj 1 (1, 1), obj 2 (0, 0) -> J = F = J&F = 0.5
    for toolkit in (jaccard_and_f(preds, truths), jaccard_and_f(preds, truths, exclude_last=True)):
        assert toolkit["J"] == pytest.approx(0.5) and toolkit["F"] == pytest.approx(0.5)
        assert toolkit["J&F"] == pytest.approx(0.5)
    # an unannotated frame (truth None) is skipped whatever the prediction is
    full_pred = np.full((20, 20), 1, np.uint8)
    skipped = jaccard_and_f([*preds, full_pred], [*truths, None], exclude_last=False)
    assert skipped["J"] == pytest.approx(0.59)
    assert skipped["F"] == pytest.approx(13 / 18)
    # a missing prediction on an annotated frame is an error, not a silent zero
    with pytest.raises(ValueError):
        jaccard_and_f([preds[0], None, preds[2]], truths, exclude_last=False)


# --------------------------------------------------------------------------------------------- PCK


def test_pck_nan_and_invisible():
    truth = np.array([[[10, 10], [20, 20], [30, 30]], [[0, 0], [5, 5], [9, 9]]], float)
    pred = np.array(
        [[[13, 14], [np.nan, np.nan], [30, 31]], [[6, 8], [5, 5], [100, 100]]],
        float,
    )
    visible = np.array([[True, True, False], [True, False, True]])
    # distances: frame 0: 5, NaN, (1, invisible); frame 1: 10, (0, invisible), ~130
    # correct means strictly below the threshold (PIPs' BADJA PCK, TAP-Vid's pts_within)
    # per-frame thresholds [5, 9]: frame 0: 5 < 5 no, NaN wrong; frame 1: 10 > 9 wrong, 130 wrong -> 0/4
    assert pck(pred, truth, visible, np.array([5.0, 9.0])) == 0.0
    # [5.01, 9]: 5 < 5.01 ok -> 1/4
    assert pck(pred, truth, visible, np.array([5.01, 9.0])) == pytest.approx(0.25)
    # scalar 10: frame 0: 5 ok, NaN wrong; frame 1: 10 < 10 no, 130 wrong -> 1/4
    assert pck(pred, truth, visible, 10.0) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        pck(pred, truth, np.zeros((2, 3), bool), 10.0)


# --------------------------------------------------------------------------------------------- TAP-Vid


def _tapvid_case():
    """2 points x 4 frames. A queried at t=0, B at t=1 (query_mode 'first')."""
    query_points = np.array([[0.0, 10.0, 10.0], [1.0, 50.0, 50.0]])  # (t, y, x)
    gt_occluded = np.array([[False, False, True, False], [True, False, False, False]])
    gt_tracks = np.array([[[10, 10]] * 4, [[50, 50]] * 4], float)  # (x, y)
    pred_tracks = np.array(
        [
            [[200, 200], [10.5, 10], [10, 10], [13, 14]],  # A: f0 not scored, f1 d=0.5, f2 d=0, f3 d=5
            [[0, 0], [100, 100], [50, 52], [60, 50]],  # B: f0, f1 not scored, f2 d=2, f3 d=10
        ],
        float,
    )
    pred_occluded = np.array([[True, False, False, False], [False, True, True, False]])
    return query_points, gt_occluded, gt_tracks, pred_occluded, pred_tracks


def test_tapvid_metrics_first_mode_by_hand():
    m = tapvid_metrics(*_tapvid_case(), query_mode="first")
    # scored entries (after the query frame): A1, A2, A3, B2, B3 (5)
    # occlusion: A1 ok, A2 wrong (gt occ, pred vis), A3 ok, B2 wrong (gt vis, pred occ), B3 ok -> 3/5
    assert m["occlusion_accuracy"] == pytest.approx(0.6)
    # gt-visible scored entries: A1 (d .5), A3 (d 5), B2 (d 2), B3 (d 10) -> 4; "within" is d < thr
    #   thr 1: A1 -> 1/4;  thr 2: A1 (B2 d=2 is not < 2) -> 1/4;  thr 4: A1, B2 -> 2/4
    #   thr 8: A1, A3, B2 -> 3/4;  thr 16: all -> 4/4;  average = (.25 + .25 + .5 + .75 + 1)/5 = 0.55
    expected_within = {1: 0.25, 2: 0.25, 4: 0.5, 8: 0.75, 16: 1.0}
    for thr, value in expected_within.items():
        assert m[f"pts_within_{thr}"] == pytest.approx(value), thr
    assert m["average_pts_within_thresh"] == pytest.approx(0.55)
    # jaccard = TP / (gt visible (4) + FP)
    # predicted-visible scored entries: A1, A2, A3, B3 (B2 is predicted occluded)
    #   thr 1: TP A1; FP A2 (gt occ), A3, B3 (too far) -> 1/(4+3) = 1/7;  thr 2, 4: same -> 1/7
    #   thr 8: TP A1, A3; FP A2, B3 -> 2/6;  thr 16: TP A1, A3, B3; FP A2 -> 3/5
    expected_jac = {1: 1 / 7, 2: 1 / 7, 4: 1 / 7, 8: 1 / 3, 16: 3 / 5}
    for thr, value in expected_jac.items():
        assert m[f"jaccard_{thr}"] == pytest.approx(value), thr
    # average = (3/7 + 1/3 + 3/5)/5 = (45 + 35 + 63)/105/5 = 143/525
    assert m["average_jaccard"] == pytest.approx(143 / 525)
    assert all(type(v) is float for v in m.values())


def test_tapvid_metrics_strided_mode_scores_frames_before_query():
    m = tapvid_metrics(*_tapvid_case(), query_mode="strided")
    # strided also scores B0 (gt occluded, predicted visible): occlusion 3/6; visible set unchanged so
    # pts_within is the same; B0 is one more FP: jaccard_16 = 3/(4+2) = 0.5, jaccard_1 = 1/(4+4) = 1/8
    assert m["occlusion_accuracy"] == pytest.approx(0.5)
    assert m["pts_within_16"] == pytest.approx(1.0)
    assert m["jaccard_16"] == pytest.approx(0.5)
    assert m["jaccard_1"] == pytest.approx(1 / 8)
    with pytest.raises(ValueError):
        tapvid_metrics(*_tapvid_case(), query_mode="bogus")


def test_tapvid_metrics_nan_prediction_is_never_within():
    q, go, gt, po, pt = _tapvid_case()
    pt = pt.copy()
    pt[0, 1] = np.nan  # A1 was the only point within 1 px
    m = tapvid_metrics(q, go, gt, po, pt)
    # thr 1: no point within -> 0/4; jaccard_1: TP 0 -> 0
    assert m["pts_within_1"] == 0.0
    assert m["jaccard_1"] == 0.0
    assert math.isfinite(m["average_jaccard"])


def test_reacquired_share_by_hand():
    # 3 points x 8 frames. Point 0 hidden on frames 2-3, back on 4; point 1 hidden on 3, back on 4, hidden on 6,
    # back on 7 (only 1 frame left: not scored with a 3-frame window); point 2 never hidden.
    gt_visible = np.ones((3, 8), bool)
    gt_visible[0, 2:4] = False
    gt_visible[1, [3, 6]] = False
    reappear = np.zeros((3, 8), bool)
    reappear[0, 4] = reappear[1, 4] = reappear[1, 7] = True
    gt = np.zeros((3, 8, 2))
    pred = np.zeros((3, 8, 2))
    pred_visible = np.ones((3, 8), bool)
    # point 0: predicted hidden on 4, 5, visible and 7.9 px off on 6 -> found on the third frame
    pred_visible[0, 4:6] = False
    pred[0, 6] = [7.9, 0]
    # point 1: visible but exactly 8 px off on 4, 5, 6 (not strictly below 8; frame 6 is hidden in the truth)
    pred[1, 4:7] = [0, 8.0]
    events = 2  # (0, 4) and (1, 4); (1, 7) has no 3-frame window
    assert reacquired_share(reappear, gt, gt_visible, pred, pred_visible) == pytest.approx(1 / events)
    # a 2-frame window misses point 0 (found on its third frame); (1, 7) still has no window
    assert reacquired_share(reappear, gt, gt_visible, pred, pred_visible, frames=2) == 0.0
    # with a 1-frame window (1, 7) counts; point 1 is 8 px off there too unless moved: put it on the truth
    pred[1, 7] = 0
    assert reacquired_share(reappear, gt, gt_visible, pred, pred_visible, frames=1) == pytest.approx(1 / 3)
    # a larger threshold finds point 1 on frame 4
    assert reacquired_share(reappear, gt, gt_visible, pred, pred_visible, threshold=8.5) == 1.0
    # NaN predictions are never found; no reappearance -> NaN
    pred[0, 6] = np.nan
    assert reacquired_share(reappear, gt, gt_visible, pred, pred_visible) == 0.0
    assert math.isnan(reacquired_share(np.zeros((3, 8), bool), gt, gt_visible, pred, pred_visible))


def test_visible_error_by_hand():
    # 2 points x 4 frames, queried on frames 0 and 1: the query frames and the frames either side calls hidden
    # are left out
    query = np.array([0, 1])
    gt = np.zeros((2, 4, 2))
    pred = np.zeros((2, 4, 2))
    gt_visible = np.ones((2, 4), bool)
    pred_visible = np.ones((2, 4), bool)
    pred[0, 0] = [100.0, 0]  # point 0's query frame: not scored
    pred[0, 1] = [3.0, 4.0]  # 5 px
    pred[0, 2] = [1.0, 0]  # 1 px
    pred[0, 3] = [50.0, 0]
    pred_visible[0, 3] = False  # judged hidden: not scored
    pred[1, 0:2] = [70.0, 0]  # before and on point 1's query frame: not scored
    pred[1, 2] = [0, 6.0]  # 6 px
    pred[1, 3] = [9.0, 0]
    gt_visible[1, 3] = False  # truly hidden: not scored
    assert visible_error(query, gt, gt_visible, pred, pred_visible) == pytest.approx((5 + 1 + 6) / 3)
    assert math.isnan(visible_error(query, gt, gt_visible, pred, np.zeros((2, 4), bool)))
