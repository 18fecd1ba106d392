"""Matching: bilinear query descriptors, cosine similarity, argmax and window soft-argmax refinement.

All functions work in grid coordinates (cell centres at integers, see :mod:`tracker.geometry`) and never
upsample whole similarity maps: refinement reads a ``(2r+1)^2`` window around each argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class MatchConfig:
    """Settings of the matcher.

    Attributes:
        window_radius: soft-argmax window radius in grid cells. 2 (a 5x5 window) covers the peak of a
            14-pixel ViT cell and its neighbours, where the similarity of smooth features still carries
            sub-cell information, while staying clear of secondary peaks on repeated parts (legs, eyes).
        temperature: softmax temperature on cosine similarity inside the window. Neighbouring cells of a
            true match differ by a few hundredths in cosine, far cells of the window by more than 0.1; 0.05
            lets the neighbours interpolate between cells while far cells (weight < e^-2) barely pull the
            estimate to the window centre. On the synthetic sub-pixel video with dense SIFT, the mean error
            of visible points was 0.94 px at 0.05 against 1.21 px at 0.02 and 1.04 px at 0.1.
        search_radius: when set, each point is searched only within this many grid cells of its previous
            estimate (a motion prior for non-semantic features); None searches the whole frame.
        update: descriptor update rate: after each confident match (score >= ``min_score``) the descriptor becomes
            ``normalize((1 - update) * query descriptor + update * matched descriptor)``; 0 keeps the query's.
        min_score: cosine similarity below which a point is judged invisible.
        fb_tolerance: forward-backward check: matching the found location back into the query frame must
            land within this many grid cells of the query point, else the point is judged invisible.
    """

    window_radius: int = 2
    temperature: float = 0.05
    search_radius: float | None = None
    update: float = 0.0
    min_score: float = 0.5
    fb_tolerance: float = 1.5

    def __post_init__(self) -> None:  # written as `not (ok)`, so that NaN is refused too
        if not (self.window_radius >= 0 and 0 < self.temperature < math.inf and 0 < self.fb_tolerance < math.inf):
            raise ValueError("--window-radius must be >= 0, --temperature and --fb-tolerance finite and > 0")
        if self.search_radius is not None and not 1 <= self.search_radius < math.inf:
            raise ValueError("--search-radius must be at least 1 (cell)")
        if not 0 <= self.update <= 1:
            raise ValueError("--update must be in [0, 1]")
        if not -1 <= self.min_score <= 1:
            raise ValueError(f"--min-score is a cosine similarity, in [-1, 1], not {self.min_score}")


def sample_descriptors(features: Tensor, uv: Tensor) -> Tensor:
    """Bilinearly sample unit descriptors at grid positions.

    Args:
        features: ``[C, h, w]`` feature grid.
        uv: ``[N, 2]`` grid coordinates (u = column, v = row).

    Returns:
        ``[N, C]`` descriptors, re-normalised to unit length.
    """
    _, h, w = features.shape
    size = uv.new_tensor([w, h])
    grid = (2.0 * (uv + 0.5) / size - 1.0).view(1, 1, -1, 2).to(features.dtype)
    sampled = F.grid_sample(features[None], grid, mode="bilinear", padding_mode="border", align_corners=False)
    return F.normalize(sampled[0, :, 0].T, dim=1)


def similarity(descriptors: Tensor, features: Tensor) -> Tensor:
    """Cosine similarity ``[N, h, w]`` of unit descriptors ``[N, C]`` against a unit grid ``[C, h, w]``."""
    c, h, w = features.shape
    return (descriptors @ features.reshape(c, h * w)).view(-1, h, w)


def window_soft_argmax(
    sim: Tensor, radius: int, temperature: float, eligible: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Argmax of each similarity map refined by a soft-argmax over the window around it.

    Args:
        sim: ``[N, h, w]`` similarity maps (``-inf`` where there is no cell).
        radius: window radius in cells; 0 returns the plain argmax.
        temperature: softmax temperature.
        eligible: optional ``[N, h, w]`` bool, where the argmax may lie (the window may reach beyond).

    Returns:
        ``uv``: ``[N, 2]`` refined grid coordinates; ``peak``: ``[N]`` similarity at the argmax.
    """
    n, h, w = sim.shape
    flat = sim.reshape(n, h * w)
    peak, index = (flat if eligible is None else flat.masked_fill(~eligible.reshape(n, h * w), float("-inf"))).max(1)
    v0 = torch.div(index, w, rounding_mode="floor")
    u0 = index - v0 * w
    if radius == 0 or n == 0:
        return torch.stack([u0, v0], 1).to(sim.dtype), peak
    offsets = torch.arange(-radius, radius + 1, device=sim.device)
    dv, du = torch.meshgrid(offsets, offsets, indexing="ij")
    du, dv = du.reshape(1, -1), dv.reshape(1, -1)  # [1, K]
    uu, vv = u0[:, None] + du, v0[:, None] + dv  # [N, K]
    inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)
    gathered = flat.gather(1, (vv.clamp(0, h - 1) * w + uu.clamp(0, w - 1)))
    logits = ((gathered - peak[:, None]) / temperature).masked_fill(~inside, float("-inf"))
    weights = torch.softmax(logits, dim=1)
    u = u0.to(sim.dtype) + (weights * du.to(sim.dtype)).sum(1)
    v = v0.to(sim.dtype) + (weights * dv.to(sim.dtype)).sum(1)
    return torch.stack([u, v], 1), peak


@dataclass(frozen=True)
class Match:
    """Result of matching N descriptors in one grid.

    Attributes:
        uv: ``[N, 2]`` grid coordinates (cell centres at integers).
        score: ``[N]`` cosine similarity at the argmax.
    """

    uv: Tensor
    score: Tensor


def match(descriptors: Tensor, features: Tensor, config: MatchConfig, prior_uv: Tensor | None = None) -> Match:
    """Find each unit descriptor ``[N, C]`` in a unit grid ``[C, h, w]``.

    Args:
        prior_uv: ``[N, 2]`` previous estimates; with ``config.search_radius`` only cells within that radius
            of them are searched, and only the local windows are scored (no whole similarity maps).
    """
    if prior_uv is not None and config.search_radius is not None:
        return _match_local(descriptors, features, config, prior_uv)
    uv, peak = window_soft_argmax(similarity(descriptors, features), config.window_radius, config.temperature)
    return Match(uv=uv, score=peak)


def _match_local(descriptors: Tensor, features: Tensor, config: MatchConfig, prior_uv: Tensor) -> Match:
    """Score a ``(2P+1)^2`` patch around each prior, ``P = ceil(search_radius) + window_radius``."""
    c, h, w = features.shape
    if len(descriptors) == 0:
        return Match(uv=features.new_zeros(0, 2), score=features.new_zeros(0))
    reach = math.ceil(config.search_radius)
    p = reach + config.window_radius
    centre = prior_uv.round().long()
    centre[:, 0].clamp_(0, w - 1)
    centre[:, 1].clamp_(0, h - 1)
    offsets = torch.arange(-p, p + 1, device=features.device)
    uu = centre[:, 0, None, None] + offsets.view(1, 1, -1)  # [N, 1, K]
    vv = centre[:, 1, None, None] + offsets.view(1, -1, 1)  # [N, K, 1]
    inside = (uu >= 0) & (uu < w) & (vv >= 0) & (vv < h)  # [N, K, K]
    index = (vv.clamp(0, h - 1) * w + uu.clamp(0, w - 1)).reshape(len(centre), -1)  # [N, K*K]
    sim = _patch_similarity(descriptors, features, index).view(-1, 2 * p + 1, 2 * p + 1)
    sim = sim.masked_fill(~inside, float("-inf"))
    d2 = (uu - prior_uv[:, 0, None, None]) ** 2 + (vv - prior_uv[:, 1, None, None]) ** 2
    local_uv, peak = window_soft_argmax(
        sim, config.window_radius, config.temperature, eligible=inside & (d2 <= config.search_radius**2)
    )
    return Match(uv=local_uv + (centre - p).to(local_uv.dtype), score=peak)


# the whole-grid product runs ~100x more multiply-adds a second than a gather of the same cells (one CPU thread,
# 128 channels: 256 points x 6420 cells in 2.2 ms, against 4.0 ms for their 11x11 windows), so it is the cheaper
# way up to grids of about this many windows' cells
_FULL_GRID_CELLS_PER_WINDOW_CELL = 128
_FULL_GRID_CHUNK = 1 << 22  # similarities held at once by the whole-grid path (16 MiB in float32)
_GATHER_CHUNK = 1 << 20  # gathered descriptor values at once by the windows' path (a few MiB: stays in cache)


_BAND_ROWS = 8  # the banded whole-grid product groups points by the first grid row of their window, this many rows


def _patch_similarity(descriptors: Tensor, features: Tensor, index: Tensor) -> Tensor:
    """``[N, K]`` cosine similarity of unit descriptors ``[N, C]`` at flat cell indices ``index [N, K]`` of a
    ``[C, h, w]`` grid: the whole-grid product gathered at the cells while the grid is small against the windows
    (chunked over points; on the CPU banded, :func:`_banded_similarity`, where that scores fewer cells; on a GPU
    it would cost a host sync), else the windows' descriptors gathered from a channels-last copy of the grid."""
    c, h, w = features.shape
    n, k = index.shape
    grid = features.reshape(c, h * w)
    if h * w <= _FULL_GRID_CELLS_PER_WINDOW_CELL * k:
        step = max(1, _FULL_GRID_CHUNK // (h * w))
        side = math.isqrt(k)
        if grid.device.type == "cpu" and n > 1 and step > 1 and side * side == k and _BAND_ROWS + side - 1 < h:
            return _banded_similarity(descriptors, grid, index, w, side, step)
        parts = [(descriptors[s : s + step] @ grid).gather(1, index[s : s + step]) for s in range(0, n, step)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    cells = grid.T.contiguous()  # [h*w, C]: a window's cell is one contiguous row
    step = max(1, _GATHER_CHUNK // (k * c))
    parts = [
        torch.bmm(cells[index[s : s + step].reshape(-1)].view(-1, k, c), descriptors[s : s + step, :, None])[..., 0]
        for s in range(0, n, step)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _banded_similarity(descriptors: Tensor, grid: Tensor, index: Tensor, w: int, side: int, step: int) -> Tensor:
    """The whole-grid product of :func:`_patch_similarity`, computed only on the grid rows each point's window
    reaches: points grouped by the band of :data:`_BAND_ROWS` rows their ``side x side`` window (``index`` ``[N,
    side * side]`` row-major flat cells, clamped into the grid) starts in, each group's descriptors times the
    columns of the rows that band's windows cover (a view: the grid's rows are contiguous columns of ``[C, h *
    w]``). At 720p with sift (60 x 107 grid, 11 x 11 windows) it scores 18 of the 60 rows.

    The same floats as the whole product: every matrix product keeps at least 2 rows and 2 columns (MKL's
    one-row or one-column products take another path, with another summation order), a group of one point is
    multiplied with its row repeated, and a point that was alone in the whole product's last chunk of ``step``
    rows (a one-row product there) is multiplied alone with the whole grid."""
    n, k = index.shape
    cells = grid.shape[1]
    first = torch.div(index[:, 0], w * _BAND_ROWS, rounding_mode="floor")  # band of each window's first row
    order = torch.argsort(first, stable=True)
    counts = torch.bincount(first, minlength=1).tolist()
    out = grid.new_empty(n, k)
    start = 0
    for band, count in enumerate(counts):
        if count == 0:
            continue
        rows = order[start : start + count]
        start += count
        lo = band * _BAND_ROWS * w
        hi = min(cells, lo + (_BAND_ROWS + side - 1) * w)
        d = descriptors[rows] if count > 1 else descriptors[rows.repeat(2)]
        out[rows] = (d @ grid[:, lo:hi]).gather(1, index[rows] - lo)[:count]
    if n > step and n % step == 1:
        out[-1:] = (descriptors[-1:] @ grid).gather(1, index[-1:])
    return out


def forward_backward_ok(
    uv: Tensor, features: Tensor, query_features: Tensor, query_uv: Tensor, config: MatchConfig
) -> Tensor:
    """``[N]`` bool: the descriptor found at ``uv`` in ``features`` matches back near ``query_uv``.

    Args:
        uv: ``[N, 2]`` positions found in the current grid ``features`` ``[C, h, w]``.
        query_features: ``[C, h, w]`` grid of the query frame.
        query_uv: ``[N, 2]`` query positions in that grid.
    """
    back = match(sample_descriptors(features, uv), query_features, config)
    return (back.uv - query_uv).norm(dim=1) <= config.fb_tolerance


# --------------------------------------------------------------------------- a whole batch of frames, on the device


@dataclass(frozen=True)
class BatchMatch:
    """N points matched in each of B frames, all on the features' device.

    Attributes:
        uv: ``[B, N, 2]`` grid coordinates (cell centres at integers) in each frame.
        score: ``[B, N]`` cosine similarity at the match.
        fb_ok: ``[B, N]`` bool: the descriptor found there matches back within ``fb_tolerance`` cells of the
            point's query position in its query frame.
        visible: ``[B, N]`` bool: ``score >= min_score`` and ``fb_ok``.
        descriptors: ``[N, C]`` descriptors after the batch (changed only with ``config.update > 0``).
    """

    uv: Tensor
    score: Tensor
    fb_ok: Tensor
    visible: Tensor
    descriptors: Tensor


def match_batch(
    features: Tensor,
    descriptors: Tensor,
    config: MatchConfig,
    query_features: Tensor,
    query_index: Tensor,
    query_uv: Tensor,
    *,
    prior_uv: Tensor | None = None,
    query_descriptors: Tensor | None = None,
) -> BatchMatch:
    """Match N unit descriptors in a batch of B grids, with the forward-backward check, without a host sync.

    The same results as :func:`match` and :func:`forward_backward_ok` frame after frame, but every operation
    is a device op over the whole batch: no ``.item()``, ``.tolist()``, ``bool()`` of a tensor, no boolean
    indexing (``nonzero``), no tensor built from Python data (``new_tensor``); the caller copies the results to
    the host once per batch. Global matching (``search_radius`` None, or no prior) scores all B frames in one
    matmul; local search and descriptor updates follow the frames in order (each frame's prior or
    descriptors come from the one before), still on the device.

    Args:
        features: ``[B, C, h, w]`` unit grids of consecutive frames.
        descriptors: ``[N, C]`` unit descriptors of the points (all started before the batch).
        config: matcher settings (window, temperature, search radius, update, min score, FB tolerance).
        query_features: ``[Q, C, h, w]`` the grids of the points' query frames.
        query_index: ``[N]`` long, each point's query frame as an index into ``query_features``.
        query_uv: ``[N, 2]`` each point's position in its query grid.
        prior_uv: ``[N, 2]`` estimates in the frame before the batch (the local search's motion prior).
        query_descriptors: ``[N, C]`` the descriptors sampled on the query frames (for ``config.update``;
            default ``descriptors``).

    Returns:
        :class:`BatchMatch` of ``[B, N]`` results. Memory: ``B * N * Q * h * w`` similarities for the
        backward check (Q query frames; one in the usual case).
    """
    b, c, h, w = features.shape
    n = descriptors.shape[0]
    local = prior_uv is not None and config.search_radius is not None
    if local or config.update > 0:
        query_descriptors = descriptors if query_descriptors is None else query_descriptors
        uvs, scores = [], []
        for i in range(b):  # each frame's prior and descriptors come from the frame before
            found = match(descriptors, features[i], config, prior_uv=prior_uv)
            uvs.append(found.uv)
            scores.append(found.score)
            if config.update > 0:
                current = _sample(features[i : i + 1], found.uv[None])[0]
                updated = F.normalize((1 - config.update) * query_descriptors + config.update * current, dim=1)
                descriptors = torch.where((found.score >= config.min_score)[:, None], updated, descriptors)
            prior_uv = found.uv
        uv, score = torch.stack(uvs), torch.stack(scores)
    else:
        sim = torch.einsum("nc,bcp->bnp", descriptors, features.reshape(b, c, h * w)).reshape(b * n, h, w)
        flat_uv, peak = window_soft_argmax(sim, config.window_radius, config.temperature)
        uv, score = flat_uv.view(b, n, 2), peak.view(b, n)
    back = _sample(features, uv)  # [B, N, C] the descriptors found
    q = query_features.shape[0]
    if q == 1:  # the usual case: one matrix product, no gather (a copy of every similarity)
        sim_back = (back.reshape(b * n, c) @ query_features.reshape(c, h * w)).view(b * n, h, w)
    else:
        sim_back = torch.einsum("bnc,qcp->bnqp", back, query_features.reshape(q, c, h * w))
        index = query_index.view(1, n, 1, 1).expand(b, n, 1, h * w)
        sim_back = sim_back.gather(2, index).reshape(b * n, h, w)  # each point against its own query grid
    back_uv, _ = window_soft_argmax(sim_back, config.window_radius, config.temperature)
    fb_ok = (back_uv.view(b, n, 2) - query_uv[None]).norm(dim=2) <= config.fb_tolerance
    return BatchMatch(
        uv=uv, score=score, fb_ok=fb_ok, visible=fb_ok & (score >= config.min_score), descriptors=descriptors
    )


def _sample(features: Tensor, uv: Tensor) -> Tensor:
    """:func:`sample_descriptors` for a batch: ``[B, C, h, w]`` grids at ``[B, N, 2]`` positions -> ``[B, N, C]``
    unit descriptors (the grid scale in Python numbers: no tensor made from host data)."""
    _, _, h, w = features.shape
    grid = torch.stack([(2.0 / w) * (uv[..., 0] + 0.5) - 1.0, (2.0 / h) * (uv[..., 1] + 0.5) - 1.0], -1)
    sampled = F.grid_sample(
        features, grid[:, None].to(features.dtype), mode="bilinear", padding_mode="border", align_corners=False
    )
    return F.normalize(sampled[:, :, 0].transpose(1, 2), dim=2)
