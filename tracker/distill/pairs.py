"""Image pairs without labels: retrieval by DINOv2 global embeddings, or plain random pairs.

The pairs of a training step depend only on ``(seed, step)``, so a resumed run sees the same pairs as an
uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from tracker.errors import TrackerError

PAIR_MODES = ("retrieval", "random")


def retrieval_neighbours(embeddings: Tensor, k: int = 10) -> Tensor:
    """The ``k`` most similar other images of each image by cosine similarity of global embeddings.

    Args:
        embeddings: ``[N, C]`` one global embedding per image (DINOv2's normed class token).
        k: neighbours per image; capped at ``N - 1``.

    Returns:
        ``[N, min(k, N - 1)]`` int64 image indices, most similar first; an image is never its own neighbour.
    """
    n = embeddings.shape[0]
    if n < 2:
        raise TrackerError(f"pairs need at least 2 images, got {n}")
    e = F.normalize(embeddings.float(), dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(min(k, n - 1), dim=1).indices


class PairSampler:
    """Source/target image index pairs for each training step.

    Args:
        n: number of images.
        mode: ``"retrieval"`` (target drawn uniformly among the source's top-k neighbours) or ``"random"``
            (target drawn uniformly among the other images).
        neighbours: ``[N, k]`` from :func:`retrieval_neighbours` (retrieval mode only).
        seed: base seed; step ``s`` uses a generator seeded with ``(seed, s)``.
    """

    def __init__(self, n: int, mode: str = "retrieval", neighbours: Tensor | None = None, seed: int = 0):
        if mode not in PAIR_MODES:
            raise TrackerError(f"--pairs must be one of {', '.join(PAIR_MODES)}, got {mode!r}")
        if n < 2:
            raise TrackerError(f"pairs need at least 2 images, got {n}")
        if mode == "retrieval" and (neighbours is None or neighbours.shape[0] != n):
            raise ValueError("retrieval pairs need one row of neighbours per image")
        self.n, self.mode, self.seed = n, mode, seed
        self.neighbours = None if neighbours is None else neighbours.cpu().numpy()

    def pairs(self, step: int, batch: int) -> list[tuple[int, int]]:
        """``batch`` pairs ``(source, target)`` of step ``step`` (different images, deterministic)."""
        rng = np.random.default_rng([self.seed, step])
        out = []
        for _ in range(batch):
            i = int(rng.integers(self.n))
            if self.mode == "retrieval":
                j = int(self.neighbours[i, rng.integers(self.neighbours.shape[1])])
            else:
                j = int(rng.integers(self.n - 1))
                j += j >= i
            out.append((i, j))
        return out
