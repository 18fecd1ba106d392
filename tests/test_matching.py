import math

import pytest
import torch

from tracker import matching
from tracker.errors import TrackerError
from tracker.geometry import GridGeometry, SizeSpec
from tracker.matching import MatchConfig, match, sample_descriptors, similarity, window_soft_argmax


def quadratic_peak(h: int, w: int, u0: float, v0: float, curvature: float = 0.05) -> torch.Tensor:
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return (1 - curvature * ((u - u0) ** 2 + (v - v0) ** 2))[None]


@pytest.mark.parametrize("u0,v0", [(7.3, 4.6), (10.0, 3.0), (5.75, 8.2)])
def test_window_soft_argmax_recovers_subpixel_peak(u0, v0):
    uv, peak = window_soft_argmax(quadratic_peak(12, 16, u0, v0), radius=2, temperature=0.05)
    assert torch.allclose(uv[0], torch.tensor([u0, v0], dtype=torch.float64), atol=0.03)
    assert peak[0] == pytest.approx(float(quadratic_peak(12, 16, u0, v0).max()))


def test_window_soft_argmax_radius_zero_is_argmax_and_border_stays_inside():
    sim = quadratic_peak(6, 6, 0.2, 5.1)
    uv, _ = window_soft_argmax(sim, radius=0, temperature=0.05)
    assert uv[0].tolist() == [0.0, 5.0]
    uv, _ = window_soft_argmax(sim, radius=2, temperature=0.05)
    assert 0 <= uv[0, 0] <= 0.5 and 4.5 <= uv[0, 1] <= 5.0


def test_sample_and_match_find_the_sampled_cell():
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(32, 9, 11), dim=0)
    uv = torch.tensor([[3.0, 4.0], [10.0, 0.0], [0.0, 8.0]])
    descriptors = sample_descriptors(features, uv)
    assert torch.allclose(descriptors, features[:, [4, 0, 8], [3, 10, 0]].T, atol=1e-6)
    found = match(descriptors, features, MatchConfig(window_radius=0))
    assert torch.equal(found.uv, uv) and torch.allclose(found.score, torch.ones(3), atol=1e-6)


def test_search_radius_restricts_to_the_prior():
    torch.manual_seed(1)
    features = torch.nn.functional.normalize(torch.randn(16, 10, 10), dim=0)
    features[:, 8, 8] = features[:, 1, 1]  # the same descriptor twice
    d = features[:, 1, 1][None]
    near_far = match(d, features, MatchConfig(window_radius=0, search_radius=2), prior_uv=torch.tensor([[7.0, 7.0]]))
    assert near_far.uv[0].tolist() == [8.0, 8.0]


def test_geometry_round_trip_and_cell_centres():
    g = GridGeometry(frame_h=480, frame_w=854, grid_h=31, grid_w=31)
    xy = torch.tensor([[0.0, 0.0], [853.0, 479.0], [100.25, 200.5]])
    assert torch.allclose(g.grid_to_pixel(g.pixel_to_grid(xy)), xy, atol=1e-4)
    # the frame's outer edges map to the grid's outer edges
    assert torch.allclose(g.pixel_to_grid(torch.tensor([[-0.5, -0.5]])), torch.tensor([[-0.5, -0.5]]))
    # cell 0 centre = centre of the first 854/31 pixels
    assert g.grid_to_pixel(torch.tensor([[0.0, 0.0]]))[0, 0] == pytest.approx(854 / 31 / 2 - 0.5)


def test_size_spec():
    assert SizeSpec.parse("434").resolve(480, 854, 14) == (434, 434)
    assert SizeSpec.parse("448x252").resolve(480, 854, 14) == (252, 448)
    assert SizeSpec.parse("434", keep_aspect=True).resolve(480, 854, 14) == (434, 770)
    assert SizeSpec.parse("434", keep_aspect=True).resolve(854, 480, 14) == (770, 434)
    with pytest.raises(TrackerError, match="multiples of 14"):
        SizeSpec.parse("100").resolve(480, 854, 14)
    with pytest.raises(TrackerError):
        SizeSpec.parse("big")


def test_local_search_equals_whole_map_search_restricted_to_the_disk():
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(16, 12, 17), dim=0)
    descriptors = torch.nn.functional.normalize(torch.randn(40, 16), dim=1)
    prior = torch.rand(40, 2) * torch.tensor([16.0, 11.0])
    prior[:3] = torch.tensor([[0.0, 0.0], [16.0, 11.0], [-0.4, 5.0]])  # corners and edges
    v = torch.arange(12.0).view(1, 12, 1)
    u = torch.arange(17.0).view(1, 1, 17)
    disk = (u - prior[:, 0, None, None]) ** 2 + (v - prior[:, 1, None, None]) ** 2 <= 2.5**2
    ref_uv, ref_peak = window_soft_argmax(similarity(descriptors, features), 2, 0.05, eligible=disk)
    found = match(descriptors, features, MatchConfig(search_radius=2.5), prior_uv=prior)
    assert torch.allclose(found.uv, ref_uv, atol=1e-4) and torch.allclose(found.score, ref_peak, atol=1e-5)


def _reference_local(descriptors, features, config, prior_uv):
    """The local search as first written (a channels-first gather of each window), to hold the faster one to."""
    c, h, w = features.shape
    p = math.ceil(config.search_radius) + config.window_radius
    centre = prior_uv.round().long()
    centre[:, 0].clamp_(0, w - 1)
    centre[:, 1].clamp_(0, h - 1)
    offsets = torch.arange(-p, p + 1)
    uu, vv = centre[:, 0, None, None] + offsets.view(1, 1, -1), centre[:, 1, None, None] + offsets.view(1, -1, 1)
    inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
    patches = features.reshape(c, h * w)[:, (vv.clamp(0, h - 1) * w + uu.clamp(0, w - 1)).reshape(len(centre), -1)]
    sim = torch.einsum("nc,cnk->nk", descriptors, patches).view(-1, 2 * p + 1, 2 * p + 1)
    d2 = (uu - prior_uv[:, 0, None, None]) ** 2 + (vv - prior_uv[:, 1, None, None]) ** 2
    uv, peak = window_soft_argmax(
        sim.masked_fill(~inside, float("-inf")),
        config.window_radius,
        config.temperature,
        eligible=inside & (d2 <= config.search_radius**2),
    )
    return uv + (centre - p).to(uv.dtype), peak


@pytest.mark.parametrize("path", ["whole grid", "windows"])
@pytest.mark.parametrize("search_radius,window_radius", [(1, 0), (3, 2), (4.5, 2), (12, 2), (2.5, 3)])
def test_local_search_equals_the_first_algorithm(monkeypatch, path, search_radius, window_radius):
    # both ways of scoring the windows, each cut into several chunks of points
    monkeypatch.setattr(matching, "_FULL_GRID_CELLS_PER_WINDOW_CELL", 10**9 if path == "whole grid" else 0)
    monkeypatch.setattr(matching, "_FULL_GRID_CHUNK", 7 * 60 * 107)
    monkeypatch.setattr(matching, "_GATHER_CHUNK", 5 * 128 * (2 * (math.ceil(search_radius) + window_radius) + 1) ** 2)
    torch.manual_seed(3)
    features = torch.nn.functional.normalize(torch.randn(128, 60, 107), dim=0)
    descriptors = torch.nn.functional.normalize(torch.randn(64, 128), dim=1)
    prior = torch.rand(64, 2) * torch.tensor([108.0, 61.0]) - 0.5
    prior[:8] = torch.tensor([[0, 0], [106, 59], [-0.5, 30], [106.4, 2], [1.2, 58.7], [50, -0.4], [3, 3], [104, 57]])
    cells = torch.tensor([[0, 1], [105, 59], [0, 30], [106, 2], [1, 58], [50, 0], [4, 3], [104, 58]])
    descriptors[:8] = features[:, cells[:, 1], cells[:, 0]].T  # true matches, within 1 cell of their prior
    config = MatchConfig(window_radius=window_radius, search_radius=search_radius)
    found = match(descriptors, features, config, prior_uv=prior)
    ref_uv, ref_score = _reference_local(descriptors, features, config, prior)
    assert (found.uv - ref_uv).abs().max() <= 1e-5 and (found.score - ref_score).abs().max() <= 1e-5
    assert torch.allclose(found.score[:8], torch.ones(8), atol=1e-5)
    assert ((found.uv[:8] - cells).abs() < 0.5).all()


@pytest.mark.parametrize("n", [65, 64, 2])
def test_banded_local_search_gives_the_whole_grid_products_floats(monkeypatch, n):
    # the banded product (rows of the grid the windows reach) against the whole-grid product, bit for bit: with a
    # point alone in its band, and (n = 65 with chunks of 64) one alone in the whole product's last chunk
    monkeypatch.setattr(matching, "_FULL_GRID_CHUNK", 64 * 60 * 107)
    torch.manual_seed(4)
    features = torch.nn.functional.normalize(torch.rand(128, 60, 107) ** 4, dim=0)
    descriptors = torch.nn.functional.normalize(torch.rand(n, 128) ** 4, dim=1)
    prior = torch.rand(n, 2) * torch.tensor([108.0, 40.0]) - 0.5
    prior[-1] = torch.tensor([30.0, 58.0])  # the only point in the last band
    config = MatchConfig(window_radius=2, search_radius=3)
    calls = []
    monkeypatch.setattr(matching, "_banded_similarity", _spy(matching._banded_similarity, calls))
    banded = match(descriptors, features, config, prior_uv=prior)
    assert len(calls) == 1
    monkeypatch.setattr(matching, "_BAND_ROWS", 60)  # no band fits: the whole grid
    whole = match(descriptors, features, config, prior_uv=prior)
    assert len(calls) == 1
    assert torch.equal(banded.uv, whole.uv) and torch.equal(banded.score, whole.score)


def _spy(fn, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return wrapper
