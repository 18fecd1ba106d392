"""The batch ring (tracker.io.ring): frames copied into reused slots, a slot never written while its batch is in
use; through ``track`` and ``propagate``: the same storage every other batch and bit-identical results to the
list + ``np.stack`` batching it replaced."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tracker import PointTracker, Queries, create_featurizer, default_match_config, propagation
from tracker.geometry import frames_to_tensor
from tracker.io.ring import BatchRing
from tracker.propagation import CorrespondenceField, MaskPropagator, default_propagation_config
from tracker.synthetic import moving_objects

SIZE = (96, 128)


@pytest.fixture(scope="module")
def clip():
    return moving_objects(num_frames=11, size=SIZE, num_objects=2, seed=4)


def _frames(n: int, shape=(4, 6, 3)) -> list[np.ndarray]:
    return [np.full(shape, i, np.uint8) + np.arange(shape[1], dtype=np.uint8)[None, :, None] for i in range(n)]


# --------------------------------------------------------------------------- the ring


def test_batches_are_the_frames_in_two_slots_allocated_once():
    frames = _frames(7)
    ring = BatchRing(3)
    batches = []
    for frame in frames:
        batch = ring.add(frame)
        if batch is not None:
            batches.append((batch.data_ptr(), batch.clone()))
    assert ring.pending == 1
    tail = ring.flush()
    batches.append((tail.data_ptr(), tail.clone()))
    assert ring.flush() is None and ring.pending == 0
    assert [b.shape[0] for _, b in batches] == [3, 3, 1]  # the tail keeps its true length
    assert torch.equal(torch.cat([b for _, b in batches]), torch.from_numpy(np.stack(frames)))
    pointers = [buffer.data_ptr() for buffer in ring.buffers]
    assert len(ring.buffers) == 2 and pointers[0] != pointers[1]
    assert [p for p, _ in batches] == [pointers[0], pointers[1], pointers[0]]  # slot 0 again two batches later
    assert all(buffer.dtype == torch.uint8 and buffer.shape == (3, 4, 6, 3) for buffer in ring.buffers)
    assert not any(buffer.is_pinned() for buffer in ring.buffers)  # no CUDA device asked for


@pytest.mark.parametrize("slots", [2, 3])
def test_a_batch_is_not_written_while_the_next_slots_minus_one_batches_fill(slots):
    frames = _frames(4 * (slots + 1))
    ring = BatchRing(2, slots=slots)
    held: list[tuple[torch.Tensor, np.ndarray]] = []  # (batch as handed out, its frames)
    for i, frame in enumerate(frames):
        batch = ring.add(frame)
        if batch is not None:
            assert all(batch.data_ptr() != kept.data_ptr() for kept, _ in held[-(slots - 1) :])
            held.append((batch, np.stack(frames[i - 1 : i + 1])))
        # intact: the last slots - 1 batches while the next fills; the last slots when one was just handed out
        # (the oldest one's slot is the next to be written, not yet touched)
        for kept, want in held[-(slots if batch is not None else slots - 1) :]:
            assert np.array_equal(kept.numpy(), want)
    # and the slot is then written again: the batch handed out `slots` batches before the last holds newer frames
    assert held[-slots - 1][0].data_ptr() == held[-1][0].data_ptr()
    assert not np.array_equal(held[-slots - 1][0].numpy(), held[-slots - 1][1])


def test_strided_frames_tensors_and_wrong_input():
    frame = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    ring = BatchRing(2)
    assert ring.add(frame[..., ::-1]) is None  # a BGR -> RGB view (negative strides)
    batch = ring.add(torch.from_numpy(frame.copy()))
    assert np.array_equal(batch[0].numpy(), frame[..., ::-1]) and np.array_equal(batch[1].numpy(), frame)
    with pytest.raises(ValueError, match=r"\(5, 6, 3\)"):
        ring.add(np.zeros((5, 6, 3), np.uint8))
    for bad in ({"batch_size": 0}, {"batch_size": 2, "slots": 1}):
        with pytest.raises(ValueError):
            BatchRing(**bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_cuda_slots_are_pinned_and_copied_without_a_second_host_copy():
    ring = BatchRing(2, device="cuda")
    ring.add(_frames(1)[0])
    batch = ring.add(_frames(2)[1])
    assert batch.is_pinned() and batch.pin_memory().data_ptr() == batch.data_ptr()
    assert torch.equal(batch.to("cuda", non_blocking=True).cpu(), batch)


# --------------------------------------------------------------------------- through track and propagate


class Recording:
    """A featurizer that records each input batch's storage and pixels, then runs ``inner``."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list[tuple[int, np.ndarray]] = []

    def __getattr__(self, name):  # device, geometry, grid_hw ... of the featurizer
        return getattr(self.__dict__["inner"], name)

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        self.calls.append((frames.data_ptr(), frames.numpy().copy()))
        return self.inner(frames)


def _old_track(tracker: PointTracker, frames, queries: Queries, batch_size: int):
    """``track`` as it was before the ring: a list of frames, ``np.stack``-ed per batch."""
    state, pending = None, []
    for frame in frames:
        if state is None:
            state = tracker.add_queries(tracker.empty_state(*frame.shape[:2]), queries)
        pending.append(frame)
        if len(pending) == batch_size:
            results, state = tracker._run_batch(state, frames_to_tensor(pending))
            pending = []
            yield from results
    if pending:
        yield from tracker._run_batch(state, frames_to_tensor(pending))[0]


def _equal(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Bit for bit (NaN where NaN), same dtype."""
    if a is None or b is None:
        return a is b
    if not a.is_floating_point():
        return torch.equal(a, b)
    return a.dtype == b.dtype and torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(), b.nan_to_num())


def _same(a, b) -> bool:
    return a.frame_index == b.frame_index and all(
        _equal(getattr(a, f), getattr(b, f)) for f in ("xy", "visible", "score", "decision")
    )


@pytest.mark.parametrize("refine", ["none", "lk"])
def test_track_is_bit_identical_to_the_stacked_batches_and_reuses_two_slots(clip, refine):
    rng = np.random.default_rng(5)
    xy = np.stack([rng.uniform(4, SIZE[1] - 4, 12), rng.uniform(4, SIZE[0] - 4, 12)], 1)
    queries = Queries.create(xy, [0] * 8 + [4] * 4)  # points that start inside a batch too
    featurizer = Recording(create_featurizer("sift", SIZE))
    tracker = PointTracker(featurizer, default_match_config("sift"), refine=refine)
    originals = [frame.copy() for frame in clip.frames]
    for batch in (1, 3, 8):
        want = list(_old_track(tracker, clip.frames, queries, batch))
        featurizer.calls.clear()
        got = list(tracker.track(clip.frames, queries, batch_size=batch))
        assert len(got) == len(want) == 11
        assert all(_same(a, b) for a, b in zip(want, got, strict=True)), (refine, batch)
        # the featurizer saw the frames, batch after batch, in two storages taken in turn; the tail its true length
        sizes = [batch] * (11 // batch) + ([11 % batch] if 11 % batch else [])
        assert [len(pixels) for _, pixels in featurizer.calls] == sizes
        assert np.array_equal(np.concatenate([pixels for _, pixels in featurizer.calls]), np.stack(originals))
        pointers = [p for p, _ in featurizer.calls]
        assert len(set(pointers)) == min(2, len(sizes))
        assert pointers == [pointers[i % 2] for i in range(len(pointers))]  # slot 0, slot 1, slot 0 ...
    assert all(np.array_equal(a, b) for a, b in zip(originals, clip.frames, strict=True))  # copied, not written


def test_propagate_and_fields_are_bit_identical_to_the_stacked_batches(clip, monkeypatch):
    featurizer = Recording(create_featurizer("sift", SIZE))
    propagator = MaskPropagator(featurizer, default_propagation_config("sift"))
    given = {0: clip.masks[0]}
    # propagate as it was: frames_to_tensor of a list per batch, then advance frame by frame
    state, want = None, []
    for start in range(0, 7, 3):
        chunk = clip.frames[:7][start : start + 3]
        state = state or propagator.empty_state(*SIZE)
        for grid, frame in zip(featurizer(frames_to_tensor(chunk)), chunk, strict=True):
            state = propagator.advance(state, grid, given.get(state.next_frame), frame)
            want.append(state.latest)
    featurizer.calls.clear()
    got = list(propagator.propagate(clip.frames[:7], given, batch_size=3))
    assert all(np.array_equal(a.labels, b.labels) for a, b in zip(want, got, strict=True)) and len(got) == 7
    pointers = [p for p, _ in featurizer.calls]
    assert [len(pixels) for _, pixels in featurizer.calls] == [3, 3, 1] and len(set(pointers)) == 2
    assert pointers[0] == pointers[2] != pointers[1]
    # the correspondence fields batch through the ring too: bit-identical to stacked batches of a list
    field = CorrespondenceField(create_featurizer("sift", SIZE), default_match_config("sift"), refine="none")
    got = list(field.fields(clip.frames[:7], batch_size=3))

    def stacked(frames, size, device=None):
        frames = list(frames)
        return (frames_to_tensor(frames[i : i + size]) for i in range(0, len(frames), size))

    monkeypatch.setattr(propagation, "_chunked", stacked)
    want = list(field.fields(clip.frames[:7], batch_size=3))
    assert [c.frame_index for c in got] == list(range(7))
    for a, b in zip(want, got, strict=True):
        assert np.array_equal(a.map_xy, b.map_xy) and np.array_equal(a.valid, b.valid)
