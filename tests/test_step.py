"""The batched matching step (:func:`tracker.matching.match_batch`): per-frame results, and no host sync inside."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tracker import create_featurizer
from tracker.matching import MatchConfig, forward_backward_ok, match, match_batch, sample_descriptors
from tracker.synthetic import moving_objects

# what .item(), bool(), .tolist(), boolean indexing and torch.unique call: each one waits for the device
SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_dim"}


class Recorder(TorchDispatchMode):
    """Records every aten op and every device a tensor passed in or out of one lives on."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []
        self.devices: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.name())
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                self.devices.add(t.device.type)
        return out


@pytest.fixture(scope="module")
def scene():
    """Dense SIFT grids of 6 frames; 24 points, half given on frame 0 and half on frame 1; frames 2-5 the batch."""
    video = moving_objects(num_frames=6, size=(96, 128))
    featurizer = create_featurizer("sift", (96, 128), size="128x96")
    with torch.inference_mode():
        grids = featurizer(torch.from_numpy(video.frames)).clone()
    rng = np.random.default_rng(0)
    _, _, h, w = grids.shape
    query_uv = torch.tensor(np.stack([rng.uniform(1, w - 2, 24), rng.uniform(1, h - 2, 24)], 1), dtype=torch.float32)
    query_index = torch.tensor([0] * 12 + [1] * 12)
    descriptors = torch.cat([sample_descriptors(grids[0], query_uv[:12]), sample_descriptors(grids[1], query_uv[12:])])
    decoys = torch.nn.functional.normalize(torch.randn(4, grids.shape[1], generator=torch.Generator().manual_seed(0)))
    descriptors[-4:] = decoys  # descriptors found nowhere: low scores, so visibility is decided both ways
    return grids, descriptors, query_uv, query_index


CONFIGS = {
    "global": MatchConfig(),
    "local": MatchConfig(search_radius=3.0),
    "local+update": MatchConfig(search_radius=3.0, update=0.2),
}


def per_frame(grids, descriptors, query_uv, query_index, config):
    """What the per-frame tracker step computes, frame after frame (``match``, ``forward_backward_ok``)."""
    prior, query_descriptors = query_uv.clone(), descriptors
    uvs, scores, oks = [], [], []
    for features in grids[2:]:
        found = match(descriptors, features, config, prior_uv=prior)
        ok = torch.zeros(len(descriptors), dtype=torch.bool)
        for qf in (0, 1):
            sel = query_index == qf
            ok[sel] = forward_backward_ok(found.uv[sel], features, grids[qf], query_uv[sel], config)
        confident = found.score >= config.min_score
        if config.update > 0 and confident.any():
            current = sample_descriptors(features, found.uv[confident])
            descriptors = descriptors.clone()
            descriptors[confident] = torch.nn.functional.normalize(
                (1 - config.update) * query_descriptors[confident] + config.update * current, dim=1
            )
        prior = found.uv
        uvs.append(found.uv), scores.append(found.score), oks.append(ok & confident)
    return torch.stack(uvs), torch.stack(scores), torch.stack(oks), descriptors


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_step_equals_the_per_frame_matcher(scene, name):
    grids, descriptors, query_uv, query_index = scene
    config = CONFIGS[name]
    uv, score, visible, final = per_frame(grids, descriptors, query_uv, query_index, config)
    got = match_batch(grids[2:], descriptors, config, grids[:2], query_index, query_uv, prior_uv=query_uv)
    assert got.uv.shape == (4, 24, 2) and got.score.shape == got.visible.shape == (4, 24)
    assert torch.allclose(got.uv, uv, atol=1e-4) and torch.allclose(got.score, score, atol=1e-5)
    assert torch.equal(got.visible, visible) and torch.allclose(got.descriptors, final, atol=1e-5)
    assert 0 < int(visible.sum()) < visible.numel()  # the check decides both ways here (not vacuous)
    if config.update > 0:
        assert not torch.allclose(final, descriptors)  # the update did change descriptors


@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_step_never_syncs_with_the_host(scene, name):
    """On the meta device (no data: any read of a value to the host fails or shows), record every op."""
    grids, descriptors, query_uv, query_index = (t.to("meta") for t in scene)
    config = CONFIGS[name]
    with Recorder() as rec:
        got = match_batch(grids[2:], descriptors, config, grids[:2], query_index, query_uv, prior_uv=query_uv)
    assert got.uv.device.type == "meta" and got.visible.shape == (4, 24)
    assert rec.ops and not SYNC_OPS & set(rec.ops), sorted(SYNC_OPS & set(rec.ops))
    assert rec.devices == {"meta"}  # no tensor went to (or was made on) the CPU inside the step
    # the recorder sees what the per-frame path does: its boolean indexing and .any() are syncs
    with Recorder() as rec:
        try:
            per_frame(grids, descriptors, query_uv, query_index, config)
        except (RuntimeError, NotImplementedError):
            pass  # a value read on meta raises
    assert SYNC_OPS & set(rec.ops) or "cpu" in rec.devices


@pytest.mark.parametrize("model", ["sift", "dinov2-s"])
def test_tracker_batch_step_has_no_sync_per_frame(model):
    """``PointTracker.advance_batch`` (refine=none) under the recorder: no sync op in a run of frames where no point
    starts, however long the run; the per-frame ``advance`` has some in every frame (what the test would see)."""
    from collections import Counter

    from tracker import PointTracker, Queries, default_match_config

    video = moving_objects(num_frames=12, size=(96, 128), seed=1)
    featurizer = create_featurizer("sift", (96, 128))
    with torch.inference_mode():
        grids = featurizer(torch.from_numpy(video.frames)).clone()
    rng = np.random.default_rng(0)
    xy = np.stack([rng.uniform(2, 125, 24), rng.uniform(2, 93, 24)], 1)
    tracker = PointTracker(featurizer, default_match_config(model), refine="none")
    state = tracker.add_queries(tracker.empty_state(96, 128), Queries.create(xy, [0] * 8 + [1] * 8 + [11] * 8))
    state = tracker.advance_batch(state, grids[:2])[1]  # the query frames 0 and 1 (per frame, by design)
    counts = {}
    for b in (3, 9):
        with Recorder() as rec:
            results, after = tracker.advance_batch(state, grids[2 : 2 + b])
        assert len(results) == b and after.next_frame == 2 + b
        counts[b] = Counter(op for op in rec.ops if op in SYNC_OPS)
        stepped = state
        with Recorder() as rec:
            for grid in grids[2 : 2 + b]:
                stepped = tracker.advance(stepped, grid)
        assert torch.equal(stepped.latest.visible, after.latest.visible)
        assert Counter(rec.ops)["aten::_local_scalar_dense"] >= b  # the per-frame path syncs in every frame
    assert counts[3] == counts[9] == Counter(), counts  # none at all, per frame or per batch
