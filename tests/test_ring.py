"""The batch ring (tracker.io.ring): frames copied into reused slots, a slot never written while its batch is in
use; through ``track`` and ``propagate``: the same storage every other batch and bit-identical results to the
list + ``np.stack`` batching it replaced."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from tracker import PointTracker, Queries, correspondence, create_featurizer, default_match_config
from tracker.correspondence import CorrespondenceField
from tracker.geometry import frames_to_tensor
from tracker.io.pipeline import BatchPrefetcher
from tracker.io.ring import BatchRing
from tracker.propagation import MaskPropagator, default_propagation_config
from tracker.synthetic import moving_objects

SIZE = (96, 128)


@pytest.fixture(scope="module")
def clip():
    return moving_objects(num_frames=11, size=SIZE, num_objects=2, seed=4)


def _frames(n: int, shape=(4, 6, 3)) -> list[np.ndarray]:
    return [np.full(shape, i % 200, np.uint8) + np.arange(shape[1], dtype=np.uint8)[None, :, None] for i in range(n)]


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

    monkeypatch.setattr(correspondence, "batches_of", stacked)
    want = list(field.fields(clip.frames[:7], batch_size=3))
    assert [c.frame_index for c in got] == list(range(7))
    for a, b in zip(want, got, strict=True):
        assert np.array_equal(a.map_xy, b.map_xy) and np.array_equal(a.valid, b.valid)


# --------------------------------------------------------------------------- filled in a decode thread


class Frames:
    """Yields ``frames`` (``fail_at`` raises there, ``delay`` seconds per frame); counts what it produced."""

    def __init__(self, frames, fail_at: int | None = None, delay: float = 0.0):
        self.frames, self.fail_at, self.delay, self.produced, self.closed = frames, fail_at, delay, 0, False
        self.info = "info"

    def __iter__(self):
        for i, frame in enumerate(self.frames):
            if i == self.fail_at:
                raise OSError(5, "Input/output error")
            if self.delay:
                time.sleep(self.delay)
            self.produced += 1
            yield frame

    def close(self):
        self.closed = True


@pytest.mark.parametrize("refine", ["none", "lk"])
def test_track_of_prefetched_batches_is_bit_identical_with_no_second_copy(clip, refine):
    rng = np.random.default_rng(6)
    xy = np.stack([rng.uniform(4, SIZE[1] - 4, 10), rng.uniform(4, SIZE[0] - 4, 10)], 1)
    queries = Queries.create(xy, [0] * 6 + [5] * 4)
    featurizer = Recording(create_featurizer("sift", SIZE))
    tracker = PointTracker(featurizer, default_match_config("sift"), refine=refine)
    for batch in (1, 3, 8):
        want = list(_old_track(tracker, clip.frames, queries, batch))
        featurizer.calls.clear()
        prefetched = BatchPrefetcher(Frames(clip.frames), batch, slots=3)
        got = list(tracker.track(prefetched, queries, batch_size=batch))
        assert len(got) == 11 and all(_same(a, b) for a, b in zip(want, got, strict=True)), (refine, batch)
        # the featurizer read the producer's slots themselves (no copy into a ring of track's own)
        slots = [buffer.data_ptr() for buffer in prefetched.ring.buffers]
        assert [p for p, _ in featurizer.calls] == [slots[i % 3] for i in range(len(featurizer.calls))]
        sizes = [batch] * (11 // batch) + ([11 % batch] if 11 % batch else [])
        assert [len(pixels) for _, pixels in featurizer.calls] == sizes
        prefetched.close()


class Threads(Recording):
    """A featurizer that records the thread of each call, then runs ``inner``."""

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        import threading

        self.calls.append(threading.current_thread().name)
        return self.inner(frames)


@pytest.mark.parametrize("refine", ["none", "lk"])
def test_track_takes_the_grids_its_featurizer_made_in_the_decode_thread(clip, refine):
    rng = np.random.default_rng(7)
    xy = np.stack([rng.uniform(4, SIZE[1] - 4, 10), rng.uniform(4, SIZE[0] - 4, 10)], 1)
    queries = Queries.create(xy, [0] * 6 + [5] * 4)
    featurizer = Threads(create_featurizer("sift", SIZE))
    tracker = PointTracker(featurizer, default_match_config("sift"), refine=refine)
    for batch in (1, 3, 8):
        want = list(tracker.track(clip.frames, queries, batch_size=batch))
        featurizer.calls.clear()
        prefetched = BatchPrefetcher(Frames(clip.frames), batch, featurizer=featurizer)
        got = list(tracker.track(prefetched, queries, batch_size=batch))
        assert len(got) == 11 and all(_same(a, b) for a, b in zip(want, got, strict=True)), (refine, batch)
        assert featurizer.calls == ["decode"] * -(-11 // batch)  # once per batch, none in this thread
        prefetched.close()
    # a prefetcher with another featurizer: its grids are not this tracker's, it featurizes the batches itself
    featurizer.calls.clear()
    other = BatchPrefetcher(Frames(clip.frames), 4, featurizer=create_featurizer("sift", SIZE))
    got = list(tracker.track(other, queries, batch_size=4))
    assert all(_same(a, b) for a, b in zip(list(tracker.track(clip.frames, queries, batch_size=4)), got, strict=True))
    assert featurizer.calls[:3] == ["MainThread"] * 3


def test_propagate_and_fields_of_prefetched_batches_are_bit_identical(clip):
    featurizer = create_featurizer("sift", SIZE)
    propagator = MaskPropagator(featurizer, default_propagation_config("sift"))
    given = {0: clip.masks[0], 4: clip.masks[4]}
    field = CorrespondenceField(featurizer, default_match_config("sift"), refine="none")
    frames = clip.frames[:7]
    for batch in (1, 3, 8):
        want = list(propagator.propagate(frames, given, batch_size=batch))
        got = list(propagator.propagate(BatchPrefetcher(frames, batch), given, batch_size=batch))
        assert len(got) == 7 and all(np.array_equal(a.labels, b.labels) for a, b in zip(want, got, strict=True))
    want = list(field.fields(frames, batch_size=3))
    got = list(field.fields(BatchPrefetcher(frames, 3), batch_size=3))
    assert len(got) == 7
    for a, b in zip(want, got, strict=True):
        assert np.array_equal(a.map_xy, b.map_xy) and np.array_equal(a.valid, b.valid)


def test_a_prefetcher_with_a_featurizer_hands_over_its_grids_made_in_the_decode_thread(clip):
    import threading

    featurizer = create_featurizer("sift", SIZE)
    threads = []

    def featurize(batch: torch.Tensor) -> torch.Tensor:
        threads.append(threading.current_thread().name)
        return featurizer(batch)

    for batch in (3, 4):
        prefetched = BatchPrefetcher(Frames(clip.frames), batch, featurizer=featurize)
        pairs = [(frames.clone(), grids) for frames, grids in prefetched.featurized()]
        assert [len(f) for f, _ in pairs] == [batch] * (11 // batch) + [11 % batch]
        assert torch.equal(torch.cat([f for f, _ in pairs]), torch.from_numpy(np.stack(clip.frames)))
        assert all(torch.equal(grids, featurizer(frames)) for frames, grids in pairs)
        assert set(threads) == {"decode"}
        prefetched.close()
    # plain iteration: the batches alone; without a featurizer the pairs carry None
    assert all(isinstance(b, torch.Tensor) for b in BatchPrefetcher(clip.frames, 4, featurizer=featurize))
    assert [g for _, g in BatchPrefetcher(clip.frames, 4).featurized()] == [None] * 3

    calls = []

    def failing(batch: torch.Tensor) -> torch.Tensor:
        calls.append(len(batch))
        if len(calls) == 3:
            raise RuntimeError("featurizer failed")
        return featurizer(batch)

    got = []
    with pytest.raises(RuntimeError, match="featurizer failed"):  # after the batches before it, in this thread
        for frames, _ in BatchPrefetcher(clip.frames, 3, featurizer=failing).featurized():
            got.append(len(frames))
    assert got == [3, 3]


def test_a_failing_source_delivers_the_finished_batches_then_raises(clip):
    frames = _frames(20)
    prefetched = BatchPrefetcher(Frames(frames, fail_at=7), 3)
    got = []
    with pytest.raises(OSError, match="Input/output error"):
        for batch in prefetched:
            got.append(batch.clone())
    assert [len(b) for b in got] == [3, 3, 1]  # the unfinished batch's frame too
    assert torch.equal(torch.cat(got), torch.from_numpy(np.stack(frames[:7])))
    prefetched.close()
    assert not prefetched._thread.is_alive()
    # through track: the frames read before the failure are tracked, then the failure comes out
    tracker = PointTracker(create_featurizer("sift", SIZE), default_match_config("sift"))
    queries = Queries.create(np.array([[40.0, 30.0], [90.0, 60.0]]))
    want = list(tracker.track(clip.frames[:5], queries, batch_size=4))
    results = []
    with pytest.raises(OSError, match="Input/output error"):
        for result in tracker.track(BatchPrefetcher(Frames(clip.frames, fail_at=5), 4), queries, batch_size=4):
            results.append(result)
    assert len(results) == 5 and all(_same(a, b) for a, b in zip(want, results, strict=True))


@pytest.mark.parametrize("slots", [2, 3, 4])
def test_the_producer_never_writes_a_slot_the_slow_consumer_holds(slots):
    frames = _frames(40)
    source = Frames(frames)
    prefetched = BatchPrefetcher(source, 2, slots=slots)
    consumed, ahead = 0, 0
    for i, batch in enumerate(prefetched):
        want = torch.from_numpy(np.stack(frames[2 * i : 2 * i + 2]))
        assert torch.equal(batch, want)
        time.sleep(0.01)  # a slow consumer: the producer, free to run, fills every free slot meanwhile
        assert torch.equal(batch, want), i  # still intact after it
        consumed += len(batch)
        ahead = max(ahead, source.produced - consumed)
        # bounded: the other slots - 1 slots full, and one frame read for the slot it waits for
        assert source.produced <= consumed + (slots - 1) * 2 + 1
    assert consumed == 40 and ahead >= (slots - 1) * 2 - 1  # it did run ahead, as far as the free slots allow
    prefetched.close()


def test_memory_is_flat_the_same_slots_over_a_long_stream():
    frames = _frames(3, shape=(16, 16, 3))
    prefetched = BatchPrefetcher(Frames([frames[i % 3] for i in range(600)]), 4, slots=3)
    pointers, waiting = set(), 0
    for batch in prefetched:
        pointers.add(batch.data_ptr())
        waiting = max(waiting, prefetched._queue.qsize())
    assert len(pointers) == 3 and len(prefetched.ring.buffers) == 3  # allocated once
    assert {b.data_ptr() for b in prefetched.ring.buffers} == pointers
    assert waiting <= 3  # at most slots - 1 batches (and the end) ever waited
    assert not prefetched._thread.is_alive()


def test_close_stops_the_producer_and_closes_the_source_ctrl_c_keeps_what_was_read():
    source = Frames(_frames(400), delay=0.001)
    prefetched = BatchPrefetcher(source, 4)
    assert prefetched.info == "info"
    got = []
    with pytest.raises(KeyboardInterrupt):
        for batch in prefetched:
            got.append(batch.clone())
            if len(got) == 3:
                raise KeyboardInterrupt  # as Ctrl-C in the consumer
    prefetched.close()
    prefetched.close()  # idempotent
    assert source.closed and not prefetched._thread.is_alive() and source.produced < 400
    assert torch.equal(torch.cat(got), torch.from_numpy(np.stack(source.frames[:12])))
    with pytest.raises(RuntimeError):
        iter(prefetched).__next__()
    for bad in ({"batch_size": 0}, {"batch_size": 2, "slots": 1}):
        with pytest.raises(ValueError):
            BatchPrefetcher([], **bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs CUDA")
def test_cuda_prefetched_slots_are_pinned_and_each_copy_reads_its_own_batch():
    frames = [np.full((64, 64, 3), i, np.uint8) for i in range(48)]
    prefetched = BatchPrefetcher(frames, 4, slots=3, device="cuda")
    copies = []
    for batch in prefetched:
        assert batch.is_pinned()
        copies.append(batch.to("cuda", non_blocking=True).float().mean((1, 2, 3)))  # queued, not awaited
    assert torch.equal(torch.cat(copies).cpu(), torch.arange(48, dtype=torch.float32))
