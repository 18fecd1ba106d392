"""Label propagation's kernel: a frame's label probabilities from the labels of its reference frames.

Each cell of a frame takes the labels of its top-k most similar cells among the reference frames, weighted
by a softmax of the similarities (the protocol of DINO and DIFT on DAVIS), over whole frames or within a
spatial radius; local propagation runs as batched matrix products over ``TILE x TILE`` tiles of the grid.
Also the conversions between ``[H, W]`` object ids and ``[K+1, h, w]`` soft labels on the feature grid.
Which references a frame uses, and what is done with the result, is :class:`tracker.propagation.MaskPropagator`'s.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from tracker.propagation import PropagationConfig


def labels_to_grid(labels: np.ndarray, ids: tuple[int, ...], grid_hw: tuple[int, int]) -> Tensor:
    """``[H, W]`` object ids -> ``[K+1, h, w]`` soft labels (area-averaged one-hot, channel 0 background)."""
    h, w = grid_hw
    channels = [labels == 0] + [labels == i for i in ids]
    out = [cv2.resize(c.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA) for c in channels]
    return torch.from_numpy(np.stack(out))


def grid_to_labels(probs: Tensor, ids: tuple[int, ...], frame_hw: tuple[int, int]) -> np.ndarray:
    """``[K+1, h, w]`` label probabilities -> ``[H, W]`` uint8 ids at the original resolution."""
    up = F.interpolate(probs[None].float(), size=frame_hw, mode="bilinear", align_corners=False)[0]
    lut = np.array((0, *ids), np.uint8)
    return lut[up.argmax(0).cpu().numpy()]


class Reference(NamedTuple):
    """A reference frame for label propagation.

    Attributes:
        features: ``[C, h, w]`` unit features.
        labels: ``[K+1, h, w]`` soft labels (channel 0 background).
        windows: for local propagation, the features unfolded once into ``[n tiles, C, span^2]`` windows
            (see :func:`prepare_reference`), reused for every later frame; None to unfold on use.
    """

    features: Tensor
    labels: Tensor
    windows: Tensor | None = None


def prepare_reference(features: Tensor, labels: Tensor, config: PropagationConfig) -> Reference:
    """A :class:`Reference` whose feature windows are unfolded once (local propagation)."""
    if config.radius is None:
        return Reference(features, labels)
    return Reference(features, labels, _unfold(features, config))


def propagate_labels(
    features: Tensor,
    references: list,
    config: PropagationConfig,
    tiles: Tensor | None = None,
    fill: Tensor | None = None,
) -> Tensor:
    """Label probabilities ``[K+1, h, w]`` of a frame from its references.

    Args:
        features: ``[C, h, w]`` unit features of the frame.
        references: :class:`Reference` s or ``(features [C, h, w], labels [K+1, h, w])`` pairs, same K.
        tiles: local propagation only: ``[n tiles]`` bool (:func:`tiles_of`), the ``TILE x TILE`` tiles to
            propagate; the others take ``fill``. None: all.
        fill: ``[K+1, h, w]`` label probabilities of the tiles not propagated.
    """
    references = [r if isinstance(r, Reference) else Reference(*r) for r in references]
    c, h, w = features.shape
    if config.radius is None:
        ref_feats = torch.cat([r.features.reshape(c, h * w) for r in references], 1)  # [C, M]
        ref_labels = torch.cat([r.labels.reshape(r.labels.shape[0], h * w) for r in references], 1)  # [K+1, M]
        sim = features.reshape(c, h * w).T @ ref_feats  # [hw, M]
        top, index = sim.topk(min(config.topk, sim.shape[1]), dim=1)
        weights = torch.softmax(top / config.temperature, dim=1)  # [hw, k]
        gathered = ref_labels.T[index]  # [hw, k, K+1]
        return (weights[..., None] * gathered).sum(1).T.reshape(-1, h, w)
    if tiles is not None and fill is None:
        raise ValueError("tiles need a fill")
    return _propagate_local(features, references, config, tiles, fill)


TILE = 8  # query cells per tile side in local propagation


def _tile_windows(grid: Tensor, radius: float) -> Tensor:
    """``[D, h, w]`` -> a ``[th, tw, D, span, span]`` strided view: the ``span = TILE + 2r`` window of the grid
    (zero-padded) around each ``TILE x TILE`` tile (no copy; index or reshape it to materialise)."""
    d, h, w = grid.shape
    r, t = int(np.ceil(radius)), TILE
    span = t + 2 * r
    ph, pw = -h % t, -w % t
    padded = F.pad(grid, (r, r + pw, r, r + ph)).contiguous()
    s = padded.stride()
    th, tw = (h + ph) // t, (w + pw) // t
    return padded.as_strided((th, tw, d, span, span), (t * s[1], t * s[2], s[0], s[1], s[2]))


def _unfold(grid: Tensor, config: PropagationConfig) -> Tensor:
    """``[D, h, w]`` -> ``[n tiles, D, span^2]`` windows around each ``TILE x TILE`` tile (zeros outside the grid)."""
    view = _tile_windows(grid, config.radius)
    th, tw, d, span, _ = view.shape
    return view.reshape(th * tw, d, span * span)


@functools.lru_cache(maxsize=4)
def _local_bias(h: int, w: int, radius: float, device: str) -> Tensor:
    """``[n tiles, TILE^2, span^2]`` float32 added to the similarities: 0 where a window cell lies within
    ``radius`` of the query cell and inside the grid, -inf elsewhere (the same for every reference)."""
    r, t = int(np.ceil(radius)), TILE
    span = t + 2 * r
    offsets = torch.arange(span, device=device) - r  # window position relative to the tile origin
    cell = torch.arange(t, device=device)
    dy = offsets.view(1, span, 1) - cell.view(t, 1, 1)  # [t, span, 1]
    dx = offsets.view(1, 1, span) - cell.view(t, 1, 1)  # [t, 1, span]
    near = (dy[:, None, :, :] ** 2 + dx[None, :, :, :] ** 2) <= radius**2  # [t, t, span, span]
    near = near.reshape(t * t, span * span)
    inside = _tile_windows(torch.ones(1, h, w, device=device), radius).reshape(-1, span * span) > 0.5
    ok = near[None] & inside[:, None, :]  # [n, t*t, span^2]
    return torch.zeros(ok.shape, device=device).masked_fill_(~ok, float("-inf"))


def _to_tiles(grid: Tensor) -> Tensor:
    """``[D, h, w]`` -> ``[n tiles, TILE^2, D]`` (zero-padded to whole tiles)."""
    d, h, w = grid.shape
    t = TILE
    ph, pw = -h % t, -w % t
    th, tw = (h + ph) // t, (w + pw) // t
    return F.pad(grid, (0, pw, 0, ph)).reshape(d, th, t, tw, t).permute(1, 3, 2, 4, 0).reshape(th * tw, t * t, d)


def _from_tiles(tiles: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`_to_tiles`: ``[n tiles, TILE^2, D]`` -> ``[D, h, w]``."""
    t = TILE
    th, tw = -(-h // t), -(-w // t)
    return tiles.view(th, tw, t, t, -1).permute(4, 0, 2, 1, 3).reshape(-1, th * t, tw * t)[:, :h, :w]


def tiles_of(cells: np.ndarray) -> Tensor:
    """``[h, w]`` bool cells -> ``[n tiles]`` bool: the ``TILE x TILE`` tiles holding any of them."""
    h, w = cells.shape
    t = TILE
    padded = np.pad(cells, ((0, -h % t), (0, -w % t)))
    return torch.from_numpy(padded.reshape(padded.shape[0] // t, t, padded.shape[1] // t, t).any((1, 3)).reshape(-1))


def _propagate_local(
    features: Tensor, references: list[Reference], config: PropagationConfig, tiles: Tensor | None, fill: Tensor | None
) -> Tensor:
    """Local label propagation as batched matrix products.

    The grid is cut into ``TILE x TILE`` tiles; each tile's cells are compared with the ``(TILE + 2r)^2``
    reference cells around the tile (a strided window view + ``baddbmm`` with a 0 / -inf bias keeping those
    within ``radius`` of a cell's own position and inside the grid). Each reference's top-k is taken on its
    own, then the top-k of their union (the same set as one top-k over all of them).
    """
    c, h, w = features.shape
    query = _to_tiles(features)  # [n, t*t, C]
    bias = _local_bias(h, w, float(config.radius), str(features.device))
    select = None if tiles is None or bool(tiles.all()) else torch.nonzero(tiles.to(features.device))[:, 0]
    if select is not None:
        query, bias = query.index_select(0, select), bias.index_select(0, select)
    n, tt = query.shape[:2]
    tops, labels = [], []
    for ref in references:
        if ref.windows is not None:
            windows = ref.windows if select is None else ref.windows.index_select(0, select)
        else:
            view = _tile_windows(ref.features, config.radius)
            windows = (
                view.flatten(3).flatten(0, 1)
                if select is None
                else view[select // view.shape[1], select % view.shape[1]].flatten(2)
            )
        ref_labels = _unfold(ref.labels, config)  # [n, K+1, span^2]
        if select is not None:
            ref_labels = ref_labels.index_select(0, select)
        sim = torch.baddbmm(bias, query, windows)  # [n, t*t, span^2]
        top, index = sim.topk(min(config.topk, sim.shape[2]), dim=2)  # [n, t*t, k]
        k1 = ref_labels.shape[1]
        gathered = torch.gather(
            ref_labels.transpose(1, 2)[:, None].expand(-1, tt, -1, -1), 2, index[..., None].expand(-1, -1, -1, k1)
        )  # [n, t*t, k, K+1]
        tops.append(top)
        labels.append(gathered)
    top, label = (tops[0], labels[0]) if len(tops) == 1 else (torch.cat(tops, 2), torch.cat(labels, 2))
    if len(tops) > 1:
        top, index = top.topk(min(config.topk, top.shape[2]), dim=2)
        label = torch.gather(label, 2, index[..., None].expand(-1, -1, -1, label.shape[3]))
    weights = torch.softmax(top / config.temperature, dim=2)
    probs = (weights[..., None] * label).sum(2)  # [n, t*t, K+1]
    if select is not None:
        out = _to_tiles(fill.to(probs))
        out[select] = probs
        probs = out
    return _from_tiles(probs, h, w)


def _pool_grid(x: Tensor, pool: int) -> Tensor:
    """Average ``pool x pool`` blocks of a ``[C, h, w]`` grid (a partial block at the edge: its cells only)."""
    return x if pool == 1 else F.avg_pool2d(x[None], pool, ceil_mode=True)[0]


def _pad_channels(labels: Tensor, channels: int) -> Tensor:
    return labels if labels.shape[0] == channels else F.pad(labels, (0, 0, 0, 0, 0, channels - labels.shape[0]))
