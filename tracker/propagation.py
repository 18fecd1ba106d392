"""Object masks carried through a video from a first frame (and frames where new objects are given).

Masks follow the label-propagation protocol of DINO and DIFT on DAVIS: each cell of a new frame takes the
labels of its top-k most similar cells among the reference frames (the first frame, frames where new objects
are given, and optionally the last N predictions), weighted by a softmax of the similarities, within a
spatial radius (the kernel: :mod:`tracker.label_propagation`). Label probabilities (not features) are
upsampled to the frame, so predictions are at the original resolution. With ``refine="flow"`` optical flow
(:mod:`tracker.optical_flow`) carries the previous frame's labels and the feature estimate corrects them.

This module holds the settings, the state carried between frames and :class:`MaskPropagator`'s decisions
(which references a frame uses, where given objects join, what is kept as context). Colormaps and edits
use the dense correspondence fields of :mod:`tracker.correspondence`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tracker.errors import TrackerError
from tracker.featurizers import Featurizer
from tracker.geometry import GridGeometry, frames_to_tensor
from tracker.io.ring import Batches, batches_of
from tracker.label_propagation import (
    Reference,
    _pad_channels,
    _pool_grid,
    grid_to_labels,
    labels_to_grid,
    prepare_reference,
    propagate_labels,
)
from tracker.optical_flow import REFINE_MODES, FlowEstimator, FlowState, _hwc_to_labels, unsure_tiles


@dataclass(frozen=True)
class PropagationConfig:
    """Label propagation settings (DINO's DAVIS protocol uses context 7, top-k 5, radius 12, 0.1).

    Attributes:
        context: number of last predicted frames used as extra references (0: first frame alone).
        topk: neighbours per cell.
        radius: spatial radius in grid cells around a cell's own position; None searches whole frames.
        temperature: softmax temperature over the top-k cosine similarities.
        pool: propagate on a grid average-pooled by this factor (``radius`` in pooled cells); label
            probabilities are upsampled to the frame as always.
        refine: one of :data:`REFINE_MODES`.
        flow_weight: ``refine="flow"``: weight in [0, 1] of the flow-warped probabilities where the flow is
            consistent (the feature estimate gets the rest; where the flow is inconsistent, everything).
        flow_size: ``refine="flow"``: flow is computed on grey frames resized to this short side in pixels
            (never enlarged; 240 is dense SIFT's input, where 480p frames take 5 ms with DIS "fast").
        flow_tolerance: ``refine="flow"``: forward-backward error in pixels of the original frame at which
            the flow's weight has fallen to ``exp(-1)`` of ``flow_weight`` (Gaussian in the error).
        band: ``refine="flow"`` with a ``radius``: the feature estimate is computed only on the tiles within
            this many cells of where the flow is unsure (:func:`unsure_tiles`); elsewhere the flow-warped
            probabilities stand in for it. None: everywhere.
        keep_area: ``refine="flow"``: an object whose mask would fall below this share of its area on the
            previous frame takes back the background pixels where its probability is highest (down to
            ``keep_floor``) until it has that share. The argmax of propagated probabilities erodes a mask a
            little on every frame (its boundary cells mix object and background, and the context frames carry
            the erosion on), so masks shrank (a mean of 62% of the true area kept on the shared DAVIS-2016
            sequences); an object that truly leaves or is hidden loses its probability and still goes. None: off.
        keep_floor: ``refine="flow"``: the lowest object probability a pixel taken back may have.
    """

    context: int = 0
    topk: int = 5
    radius: float | None = None
    temperature: float = 0.1
    pool: int = 1
    refine: str = REFINE_MODES[0]
    flow_weight: float = 0.6
    flow_size: int = 240
    flow_tolerance: float = 2.0
    band: int | None = None
    keep_area: float | None = 0.98
    keep_floor: float = 0.3

    def __post_init__(self) -> None:
        if self.pool < 1:
            raise ValueError("--pool must be >= 1")
        radius_ok = self.radius is None or 0 < self.radius < math.inf
        if not (self.context >= 0 and self.topk >= 1 and 0 < self.temperature < math.inf and radius_ok):  # NaN too
            raise ValueError("--context >= 0, --topk >= 1, --prop-temperature > 0 and --radius > 0 required")
        if self.refine not in REFINE_MODES:
            raise ValueError(f"--refine must be one of {', '.join(REFINE_MODES)}, not {self.refine!r}")
        if not (0.0 <= self.flow_weight <= 1.0 and self.flow_size >= 16 and self.flow_tolerance > 0):
            raise ValueError("flow_weight in [0, 1], flow_size >= 16 and flow_tolerance > 0 required")
        if self.band is not None and self.band < 0:
            raise ValueError("band >= 0 required")
        if not ((self.keep_area is None or 0 < self.keep_area <= 1) and 0 <= self.keep_floor <= 1):
            raise ValueError("keep_area in (0, 1] (or None) and keep_floor in [0, 1] required")


def default_propagation_config(name: str, **overrides) -> PropagationConfig:
    """Label propagation defaults per model; ``overrides`` that are not None replace them.

    ViT grids (31x31 at 434) are small enough to compare every cell with every cell of the first frame
    (this design's default: semantic features need no motion prior). Dense SIFT (stride 4) is local and not
    semantic, so it follows DINO's DAVIS protocol: radius 12 cells and a context of the last 7 predictions.
    Measured with sift (J&F): radius 12 from the first frame alone 0.383 / 0.206 / 0.178 on DAVIS dog /
    scooter-black / motocross-jump, with context 7: 0.507 / 0.688 / 0.231 (OpenCV DIS: 0.523 / 0.482 / 0.391);
    on the synthetic two-object clip radius 12 gave IoU 0.81 against 0.56 for whole frames. ``pool=2`` (radius
    6) is 12x faster but scored 0.237 / 0.416 / 0.133 on the same DAVIS sequences, so it is not the default.

    ``refine="flow"`` (sift, context 7, radius 12), measured on the 8 shared DAVIS-2016 sequences together
    (benchmarks/results/cpu-2core/davis_refine_sweep.md): flow weight 0.85 gave mean J&F 0.443 (the flow
    leaks into the background where it is smooth across boundaries: blackswan 0.71, car-shadow 0.69), 0.6
    gives mean J&F 0.493 (pure matching 0.478, DIS 0.439), dog 0.58 (0.51, 0.52). With context 2 and pool 2
    (the speed target's budget) every weight tried (0.5 .. 1.0) fell below pure matching (mean J&F <= 0.33):
    the pooled feature estimate is biased to the background and the fusion shrinks the masks (kept 0.4).

    ``band=2`` (sift): the feature estimate only on tiles within 2 cells of where the flow is unsure. On DAVIS
    dog (20 frames) its masks equal those computed everywhere, pixel for pixel, at 345 against 626 CPU ms per
    frame (2907 before the window bias and per-reference top-k). Cheaper settings lost accuracy on the shared
    sequences (davis_refine_sweep.md): context 3 (car-shadow 0.72 against 0.80), features projected on the
    first frame's 64 or 32 principal directions (dog 0.57 / 0.53 against 0.58; lower on every sequence).

    ``keep_area=0.98, keep_floor=0.3`` (every model's default; measured with sift on the 8 shared DAVIS-2016
    sequences together, davis_refine_sweep.md): mean J&F 0.555 against 0.493 without, the object area kept
    0.82 against 0.62; libby 0.46 (0.20), horsejump-high 0.51 (0.38), car-shadow 0.71 (0.80: the mask takes in
    the car's shadow). Keep 0.97 and 0.99 (0.531-0.547) and floors 0.25-0.4 (0.532-0.557) were tried beside it;
    a class prior on the object probabilities (x1.5) grew the masks that kept their size (car-shadow 0.54).
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    base = {"radius": 12.0, "context": 7, "band": 2} if name == "sift" else {}
    base.update(overrides)
    return PropagationConfig(**base)


@dataclass(frozen=True)
class MaskResult:
    """Predicted labels for one frame.

    Attributes:
        frame_index: index of the frame.
        labels: ``[H, W]`` uint8 object ids of the original frame (0 background).
        kept: object pixels predicted (all objects) relative to the object pixels of the masks they were given
            in (1.0: the mask kept its size; a mask that shrinks or vanishes falls towards 0).
    """

    frame_index: int
    labels: np.ndarray
    kept: float = float("nan")


@dataclass(frozen=True)
class MaskState:
    """What the propagator carries between frames.

    Attributes:
        next_frame: index of the next frame.
        geometry: cell <-> pixel mapping.
        ids: object ids, channel ``i + 1`` of the label tensors is ``ids[i]`` (channel 0 background).
        references: permanent ``(Reference, new ids)``: frame 0 and each frame where objects are given;
            ``new ids`` are the objects that frame introduced.
        recent: the last ``context`` predictions as :class:`Reference` s.
        latest: the result for frame ``next_frame - 1``.
        flow: ``refine="flow"``: the previous frame and its label probabilities at the flow resolution.
        areas: object pixels of each id (as ``ids``) in the mask it was given in (for ``MaskResult.kept``).
    """

    next_frame: int
    geometry: GridGeometry
    ids: tuple[int, ...]
    references: tuple[tuple[Reference, tuple[int, ...]], ...] = ()
    recent: tuple[Reference, ...] = ()
    latest: MaskResult | None = field(default=None)
    flow: FlowState | None = None
    areas: tuple[int, ...] = ()


class MaskPropagator:
    """Carries object masks from the first frame (and frames where new objects are given) through a video.

    Args:
        featurizer: any featurizer.
        config: propagation settings.
    """

    def __init__(self, featurizer: Featurizer, config: PropagationConfig | None = None):
        self.featurizer = featurizer
        self.config = config or PropagationConfig()
        self.flow = FlowEstimator(self.config.flow_size) if self.config.refine == "flow" else None

    def _pool(self, grid: Tensor) -> Tensor:
        return _pool_grid(grid, self.config.pool)

    def empty_state(self, height: int, width: int) -> MaskState:
        return MaskState(next_frame=0, geometry=self.featurizer.geometry(height, width), ids=())

    def init(self, frame: np.ndarray, labels: np.ndarray) -> MaskState:
        """Start on frame 0 with its ``[H, W]`` object ids."""
        state = self.empty_state(*frame.shape[:2])
        return self.advance(state, self.featurizer(frames_to_tensor([frame]))[0], labels, frame)

    def step(
        self, state: MaskState, frame: np.ndarray, given: np.ndarray | None = None
    ) -> tuple[MaskResult, MaskState]:
        """Predict the next frame; objects first given in ``given`` join (their mask overrides the prediction).

        Ids already known are predicted as usual; a given frame that introduces objects becomes a reference.
        """
        state = self.advance(state, self.featurizer(frames_to_tensor([frame]))[0], given, frame)
        return state.latest, state

    def propagate(
        self, frames: Iterable[np.ndarray] | Batches, given: dict[int, np.ndarray], batch_size: int = 8
    ) -> Iterator[MaskResult]:
        """Yield a :class:`MaskResult` per frame; ``given`` maps frame index -> ``[H, W]`` ids (frame 0 at least).

        Pre-batched ``frames`` (a :class:`~tracker.io.ring.Batches`, e.g. a
        :class:`~tracker.io.pipeline.BatchPrefetcher`) are used as they come (``batch_size`` is theirs)."""
        if 0 not in given:
            raise TrackerError("a mask for the first frame is needed")
        if batch_size < 1:
            raise TrackerError("batch size must be at least 1")
        state: MaskState | None = None
        for batch in _chunked(frames, batch_size, self.featurizer.device):
            if state is None:
                state = self.empty_state(*batch.shape[1:3])
            results = []
            for grid, frame in zip(self.featurizer(batch), batch.numpy(), strict=True):
                state = self.advance(state, grid, given.get(state.next_frame), frame)
                results.append(state.latest)
            yield from results

    def advance(
        self, state: MaskState, features: Tensor, given: np.ndarray | None = None, frame: np.ndarray | None = None
    ) -> MaskState:
        """Process the next frame from its ``[C, h, w]`` unit features and optional given ids.

        Args:
            state: the state after the previous frame.
            features: ``[C, h, w]`` unit features of this frame.
            given: ``[H, W]`` ids given on this frame (objects that join), or None.
            frame: ``[H, W, 3]`` uint8 RGB frame, needed by ``refine="flow"``; without it this frame is
                propagated by feature matching alone (and the flow restarts from the next frame given).
        """
        g = state.geometry
        full_hw = tuple(features.shape[1:])
        features = F.normalize(self._pool(features), dim=0)
        frame_hw = (g.frame_h, g.frame_w)
        ids = state.ids
        areas = state.areas
        if given is not None:
            if given.shape != frame_hw:
                raise TrackerError(f"mask is {given.shape[1]}x{given.shape[0]}, the video {g.frame_w}x{g.frame_h}")
            new = tuple(int(i) for i in np.unique(given) if i != 0 and int(i) not in ids)
            ids = ids + new
            areas = areas + tuple(int((given == i).sum()) for i in new)
        channels = len(ids) + 1
        references = [(ref._replace(labels=_pad_channels(ref.labels, channels)), new) for ref, new in state.references]
        recent = [ref._replace(labels=_pad_channels(ref.labels, channels)) for ref in state.recent]
        gray = self.flow.gray(frame) if self.flow is not None and frame is not None else None
        fused = None
        if references:
            warp = tiles = fill = None
            if gray is not None and state.flow is not None:
                warp = self.flow.warp(state.flow, gray, channels, self.config)
                if self.config.band is not None and self.config.radius is not None:
                    tiles, fill = unsure_tiles(warp, tuple(features.shape[1:]), self.config.band)
            # frame 0 (with the recent predictions) labels everything; a later reference cannot be outvoted
            # for the objects it introduced, which earlier references saw as background
            first, *later = references
            probs = propagate_labels(features, [first[0], *recent], self.config, tiles, fill)
            for ref, new in later:
                own = propagate_labels(features, [ref], self.config)
                joined = torch.tensor([ids.index(i) + 1 for i in new], device=own.device)
                wins = torch.isin(own.argmax(0), joined)
                probs[:, wins] = own[:, wins]
            if self.config.pool > 1:  # back to the full grid (exact cell centres), then to the frame
                probs = F.interpolate(probs[None], scale_factor=self.config.pool, mode="bilinear")[0]
                probs = probs[:, : full_hw[0], : full_hw[1]]
            if warp is not None:
                fused = self.flow.fuse(warp, probs, self.config)
                keep = self.config.keep_area
                last = state.latest.labels if keep is not None and state.latest is not None else None
                before = () if last is None else tuple(int(np.count_nonzero(last == i)) for i in state.ids)
                labels = _hwc_to_labels(fused, ids, frame_hw, before, keep, self.config.keep_floor)
            else:
                labels = grid_to_labels(probs, ids, frame_hw)
        else:
            labels = np.zeros(frame_hw, np.uint8)
        if given is not None:  # given objects override; a frame with new objects becomes a reference
            new_ids = [i for i in ids if i not in state.ids] if state.references else list(ids)
            for i in new_ids:
                labels[given == i] = i
            if not state.references:
                labels = given.astype(np.uint8)
        grid_labels = self._pool(labels_to_grid(labels, ids, full_hw).to(features.device))
        if given is not None:
            reference = prepare_reference(features, grid_labels, self.config)
            references.append((reference, tuple(i for i in ids if i not in state.ids)))
        elif self.config.context:
            recent = (recent + [prepare_reference(features, grid_labels, self.config)])[-self.config.context :]
        flow = None
        if gray is not None:  # the flow carries soft probabilities; a given mask resets them
            if fused is None or given is not None:
                fused = labels_to_grid(labels, ids, gray.shape).permute(1, 2, 0).numpy()
            flow = FlowState(gray, np.ascontiguousarray(fused, np.float32))
        total = sum(areas)
        kept = float(np.count_nonzero(labels)) / total if total else float("nan")
        result = MaskResult(frame_index=state.next_frame, labels=labels, kept=kept)
        return replace(
            state,
            next_frame=state.next_frame + 1,
            ids=ids,
            references=tuple(references),
            recent=tuple(recent),
            latest=result,
            flow=flow,
            areas=areas,
        )


def _chunked(frames: Iterable[np.ndarray] | Batches, size: int, device: torch.device | None = None) -> Iterator[Tensor]:
    """``frames`` in ``[B, H, W, 3]`` batches (the last may be shorter): pre-batched input (a
    :class:`~tracker.io.ring.Batches`, e.g. a :class:`~tracker.io.pipeline.BatchPrefetcher`) as it comes, else
    slots of a :class:`~tracker.io.ring.BatchRing` (pinned for a CUDA ``device``) written again once the
    next-but-one is requested."""
    return batches_of(frames, size, device)
