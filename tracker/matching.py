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

    def __post_init__(self) -> None:
        if self.window_radius < 0 or self.temperature <= 0 or self.fb_tolerance <= 0:
            raise ValueError("--window-radius must be >= 0, --temperature and --fb-tolerance > 0")
        if self.search_radius is not None and self.search_radius < 1:
            raise ValueError("--search-radius must be at least 1 (cell)")
        if not 0 <= self.update <= 1:
            raise ValueError("--update must be in [0, 1]")


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
    patches = features.reshape(c, h * w)[:, index]  # [C, N, K*K]
    sim = torch.einsum("nc,cnk->nk", descriptors, patches).view(-1, 2 * p + 1, 2 * p + 1)
    sim = sim.masked_fill(~inside, float("-inf"))
    d2 = (uu - prior_uv[:, 0, None, None]) ** 2 + (vv - prior_uv[:, 1, None, None]) ** 2
    local_uv, peak = window_soft_argmax(
        sim, config.window_radius, config.temperature, eligible=inside & (d2 <= config.search_radius**2)
    )
    return Match(uv=local_uv + (centre - p).to(local_uv.dtype), score=peak)


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
