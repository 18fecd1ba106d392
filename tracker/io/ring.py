"""A ring of reusable batch buffers that frames are copied into, so batching allocates nothing per batch.

``PointTracker.track`` and ``MaskPropagator.propagate`` copy each decoded frame straight into the current slot of a
:class:`BatchRing` (instead of collecting a list and ``np.stack``-ing a fresh ``[B, H, W, 3]`` array per batch); the
featurizer reads the slot. On CUDA the slots are pinned, so the featurizer's ``.to(device, non_blocking=True)`` is
an asynchronous copy with no second host copy (``Tensor.pin_memory()`` of a pinned tensor is the tensor itself).

A ring filled on the consumer's thread is :func:`ring_batches`; one filled ahead in a decode thread is
:class:`tracker.io.pipeline.BatchPrefetcher`. Both are iterators of ``[n, H, W, 3]`` slot tensors, and
:func:`batches_of` gives ``track`` and ``propagate`` one or the other: pre-batched input (a :class:`Batches`) is used
as it comes, with no second copy; plain frames go through a :func:`ring_batches` ring.

Typical use of the ring itself (the shape of :func:`ring_batches`)::

    ring = BatchRing(batch_size, device=featurizer.device)    # pinned slots when that is a CUDA device
    for frame in frames:
        batch = ring.add(frame)                    # copied into the current slot
        if batch is not None:                      # the slot is full: [B, H, W, 3]
            consume(batch)
    tail = ring.flush()                            # the last frames, [n, H, W, 3] (a view of the slot), or None
    if tail is not None:
        consume(tail)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import Tensor


class BatchRing:
    """``slots`` buffers of ``[batch_size, H, W, 3]`` (shape and dtype, uint8 for video, from the first frame),
    allocated once and filled round-robin.

    Reuse rule: a batch returned by :meth:`add` or :meth:`flush` stays valid while the next ``slots - 1`` batches
    fill; its slot is written again when the batch after those starts (with the default 2 slots: a batch is free
    again once the next-but-one batch starts filling). A consumer that is done with each batch before it adds the
    next frame, as ``track`` is, can keep the last ``slots - 1`` batches. On CUDA the device work queued on the
    current stream when the next batch starts filling (the featurizer's non-blocking copy from the slot) is
    awaited before the slot is written again, so an asynchronous copy never reads a slot being overwritten.

    Args:
        batch_size: frames per batch (``B``).
        slots: buffers in the ring, at least 2.
        device: where the batches are copied to (the featurizer's device): a CUDA device makes the buffers
            pinned (page-locked) and guards their reuse with events on its current stream; None or a CPU device:
            plain buffers.
        on_slot: called with a slot's index before the first frame of a batch is written into it, in place of
            the built-in CUDA event guard (a ring filled in another thread than the one using its batches guards
            reuse itself: :class:`tracker.io.pipeline.BatchPrefetcher`).

    Raises:
        ValueError: ``batch_size < 1`` or ``slots < 2``; :meth:`add`: a frame whose shape differs from the first.
    """

    def __init__(
        self,
        batch_size: int,
        slots: int = 2,
        device: torch.device | str | None = None,
        on_slot: Callable[[int], None] | None = None,
    ):
        if batch_size < 1 or slots < 2:
            raise ValueError("batch_size must be at least 1 and slots at least 2")
        self.batch_size = batch_size
        self.slots = slots
        self.device = torch.device(device) if device is not None else None
        self.pin = self.device is not None and self.device.type == "cuda" and torch.cuda.is_available()
        self.on_slot = on_slot
        self.buffers: list[Tensor] = []  # allocated on the first frame
        self._arrays: list[np.ndarray] = []  # numpy views of the buffers (the same memory)
        self._ready: list[torch.cuda.Event | None] = [None] * slots  # device work on the slot queued before this
        self._slot = 0  # the slot being filled
        self._filled = 0  # frames in it
        self._handed: int | None = None  # the slot handed out last, whose device work is not yet marked

    @property
    def pending(self) -> int:
        """Frames in the slot being filled (not yet handed out)."""
        return self._filled

    @property
    def slot(self) -> int:
        """The index of the slot being filled (the next batch handed out is this slot's)."""
        return self._slot

    def _allocate(self, frame: np.ndarray | Tensor) -> None:
        shape = (self.batch_size, *frame.shape)
        dtype = frame.dtype if isinstance(frame, Tensor) else torch.from_numpy(np.empty(0, frame.dtype)).dtype
        self.buffers = [torch.empty(shape, dtype=dtype, pin_memory=self.pin) for _ in range(self.slots)]
        self._arrays = [buffer.numpy() for buffer in self.buffers]

    def _start_slot(self) -> None:
        """Before the first frame of a batch: mark the device work on the batch handed out last, and wait for
        the work marked on this slot (queued a full ring ago: normally finished long since); or ``on_slot``."""
        if self.on_slot is not None:
            self.on_slot(self._slot)
        elif self.pin:
            if self._handed is not None:
                event = torch.cuda.Event()
                event.record(torch.cuda.current_stream(self.device))
                self._ready[self._handed] = event
            waiting = self._ready[self._slot]
            if waiting is not None:
                waiting.synchronize()
                self._ready[self._slot] = None
        self._handed = None

    def add(self, frame: np.ndarray | Tensor) -> Tensor | None:
        """Copy ``frame`` (``[H, W, 3]`` uint8, an array or a tensor) into the current slot.

        Returns:
            The full slot, ``[B, H, W, 3]``, when this frame completed it (the next frame goes into the next
            slot); otherwise None.
        """
        if not isinstance(frame, Tensor):
            frame = np.asarray(frame)
        if not self.buffers:
            self._allocate(frame)
        elif tuple(frame.shape) != tuple(self.buffers[0].shape[1:]):
            want = tuple(self.buffers[0].shape[1:])
            raise ValueError(f"a frame of shape {tuple(frame.shape)} in a video of {want} frames")
        if self._filled == 0:
            self._start_slot()
        if isinstance(frame, Tensor):
            self.buffers[self._slot][self._filled].copy_(frame)
        else:
            self._arrays[self._slot][self._filled] = frame  # any strides (a BGR->RGB view too)
        self._filled += 1
        if self._filled == self.batch_size:
            return self._hand_out()
        return None

    def flush(self) -> Tensor | None:
        """The frames added since the last full batch, ``[n, H, W, 3]`` (a view of the first ``n`` rows of the
        slot), or None when there are none. The next frame goes into the next slot."""
        return self._hand_out() if self._filled else None

    def _hand_out(self) -> Tensor:
        batch = self.buffers[self._slot][: self._filled] if self._filled < self.batch_size else self.buffers[self._slot]
        self._handed = self._slot
        self._slot = (self._slot + 1) % self.slots
        self._filled = 0
        return batch


class Batches:
    """Marks an iterable of pre-batched frames: ``[n, H, W, 3]`` uint8 tensors, ``n == batch_size`` but the last.

    ``PointTracker.track``, ``MaskPropagator.propagate`` and ``CorrespondenceField.fields`` take such input batch
    by batch as it comes (no second copy into a ring of their own). A batch may be reused once the next one is
    asked for: a consumer is done with each before it iterates on.
    """

    batch_size: int

    def __iter__(self) -> Iterator[Tensor]:
        raise NotImplementedError


def ring_batches(
    frames: Iterable[np.ndarray | Tensor], batch_size: int, device: torch.device | str | None = None
) -> Iterator[Tensor]:
    """``frames`` in ``[batch_size, H, W, 3]`` batches (the last may be shorter), slots of a 2-slot
    :class:`BatchRing` filled on the caller's thread (pinned for a CUDA ``device``). A batch is written again once
    the next-but-one is asked for.

    When ``frames`` fails (a corrupt frame), the frames read before it come out as a last short batch, then the
    failure is raised.
    """
    ring = BatchRing(batch_size, device=device)
    source = iter(frames)
    while True:
        try:
            frame = next(source)
        except StopIteration:
            break
        except Exception:  # the source failed: what was read is handed out first
            if ring.pending:
                yield ring.flush()
            raise
        batch = ring.add(frame)
        if batch is not None:
            yield batch
    if ring.pending:
        yield ring.flush()


def batches_of(
    frames: Iterable[np.ndarray | Tensor] | Batches, batch_size: int, device: torch.device | str | None = None
) -> Iterator[Tensor]:
    """The batches of ``frames``: a :class:`Batches` as it comes (``batch_size`` is its own), else
    :func:`ring_batches`."""
    if isinstance(frames, Batches):
        return iter(frames)
    return ring_batches(frames, batch_size, device)
