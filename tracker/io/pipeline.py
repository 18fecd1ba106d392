"""Overlapped video I/O: frames decoded ahead in a producer thread, results drawn and encoded behind in a consumer
thread, so the featurizer and the tracker step never wait for either.

OpenCV's decoding, colour conversion, drawing and encoding release the GIL, so on a CPU the three stages run on
different cores; on a GPU the host work hides behind the device's. Both queues are bounded (memory stays flat in
video length), an exception in either thread comes out in the caller's thread, at the place in the stream where
it happened, and closing stops and joins the threads so what was finished is kept.

:class:`BatchPrefetcher` is the decode thread of ``track``: it copies each decoded frame straight into a slot of a
reused ring of ``[B, H, W, 3]`` buffers (pinned on CUDA, :class:`~tracker.io.ring.BatchRing`) and hands over whole
batches, which ``PointTracker.track`` and ``MaskPropagator.propagate`` use without copying again.

Typical use (the shape of ``track``'s frame loop)::

    frames = Prefetcher(video, depth=16)           # iterates decoded frames; .info, .close() like the video
    sink = Sink(lambda frame, result: writer.write(draw(frame, result)), depth=16, on_close=writer.close)
    for result in tracker.track(frames, queries):
        sink.submit(frame_of(result), result)      # raises the consumer's failure, if it had one
    sink.finish()                                  # draw what is queued, join; raises the consumer's failure
    frames.close()
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from tracker.io.ring import Batches, BatchRing

_POLL_S = 0.05  # how often a blocked thread looks at the stop flag


class _DecodeThread:
    """What :class:`Prefetcher` and :class:`BatchPrefetcher` share: a producer thread (``_thread``, stopped by
    ``_stop``) filling ``_queue`` from ``source`` through ``_iterator``."""

    def __getattr__(self, name: str) -> Any:  # info, warnings, path ... of the source
        if name in ("info", "warnings", "path"):
            return getattr(self.source, name)
        raise AttributeError(name)

    def _begin(self) -> None:
        """Start the producer on the first iteration; refuse a second one, and one after :meth:`close` (its
        producer would stop at once and never say so: the consumer would wait for ever)."""
        kind = type(self).__name__
        if self._stop.is_set():
            raise RuntimeError(f"this {kind} is closed")
        if self._started:
            raise RuntimeError(f"a {kind} can be iterated once")
        self._started = True
        self._thread.start()

    def _run(self) -> None:
        try:
            self._produce()
        finally:
            self._ended.set()

    def close(self) -> None:
        """Stop and join the producer, drop what it decoded ahead, close the source; idempotent. A Ctrl-C or
        SIGTERM while it waits (the producer finishing a featurizer batch) is raised once the producer ended: an
        interrupted ``Thread.join`` marks a running thread stopped (CPython bpo-45274), and the interpreter would
        exit under it."""
        self._stop.set()
        pending = None
        while self._thread.ident is not None and not self._ended.is_set():
            try:
                self._ended.wait()
            except KeyboardInterrupt as exc:
                pending = exc
        if self._thread.ident is not None:
            self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()  # a suspended generator: its cleanup runs here, in this thread
        self._iterator = None
        if hasattr(self.source, "close"):
            self.source.close()
        if pending is not None:
            raise pending


class Prefetcher(_DecodeThread):
    """Iterates ``source`` with its items produced ahead by a daemon thread (at most ``depth`` waiting).

    The producer starts on the first ``iter()``. When ``source`` raises, the items produced before come out first,
    then the same exception. ``close()`` stops the producer (it finishes the item it is reading), joins it, then
    closes ``source`` when it has a ``close`` method. ``info`` and ``warnings`` are ``source``'s, so a prefetched
    video stands in for the video.

    Args:
        source: any iterable (a video, a generator of frames or batches).
        depth: items decoded ahead, at most.
        name: the thread's name.
    """

    def __init__(self, source: Iterable, depth: int = 16, name: str = "decode"):
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.source = source
        self.depth = depth
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._ended = threading.Event()  # set by the producer when it returns
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._iterator: Iterator | None = None
        self._started = False

    def __iter__(self) -> Iterator:
        self._begin()
        while True:
            kind, payload = self._queue.get()
            if kind == "item":
                yield payload
            elif kind == "error":
                raise payload
            else:
                return

    def _produce(self) -> None:
        try:
            self._iterator = iter(self.source)
            for item in self._iterator:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put(("error", exc))

    def _put(self, message: tuple) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False


class Sink:
    """Calls ``fn(*args)`` for each :meth:`submit` in order, in a daemon consumer thread (at most ``depth`` queued).

    A failure of ``fn`` stops the consumer (later items are dropped) and is raised by the next :meth:`submit` or
    by :meth:`finish`, in the caller's thread.

    Args:
        fn: what to do with each item (draw and encode a frame).
        depth: items queued, at most; :meth:`submit` waits when the queue is full.
        on_close: called by :meth:`close` after the consumer stopped (closing the writer it feeds).
        name: the thread's name.
    """

    def __init__(
        self, fn: Callable[..., None], depth: int = 16, on_close: Callable[[], None] | None = None, name: str = "draw"
    ):
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self.fn = fn
        self.on_close = on_close
        self.done = 0
        self.error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._consume, name=name, daemon=True)
        self._thread.start()

    def _consume(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            if item is None or self._stop.is_set():
                return
            if self.error is None:
                try:
                    self.fn(*item)
                    self.done += 1
                except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
                    self.error = exc
                    return

    def _raise(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            self._stop.set()
            raise error

    def submit(self, *args: Any) -> None:
        """Queue one item; raises the consumer's failure (once), and refuses after :meth:`finish`."""
        self._raise()
        if not self._thread.is_alive():
            raise RuntimeError("the sink is finished")
        while True:
            try:
                self._queue.put(args, timeout=_POLL_S)
                return
            except queue.Full:
                self._raise()

    def finish(self) -> None:
        """Process everything queued, then join; raises the consumer's failure. A Ctrl-C while waiting stops
        after the item in hand (the rest is dropped, as a second Ctrl-C asks)."""
        if self._thread.is_alive():
            try:
                while self._thread.is_alive():
                    try:
                        self._queue.put(None, timeout=_POLL_S)
                        break
                    except queue.Full:
                        continue
                self._thread.join()
            except KeyboardInterrupt:
                self._stop.set()
                self._thread.join()
        self._raise()

    def close(self) -> None:
        """Stop after the item in hand (dropping what is queued), join, then ``on_close``; idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close()


class _Stopped(Exception):
    """Raised in the producer when :meth:`BatchPrefetcher.close` asked it to stop while it waited for a slot."""


class BatchPrefetcher(_DecodeThread, Batches):
    """Iterates ``source``'s frames as ``[n, H, W, 3]`` batches decoded ahead by a daemon thread straight into a
    ring of ``slots`` reused ``[batch_size, H, W, 3]`` buffers (``n == batch_size`` but for the last batch).

    Reuse rule: a batch handed out stays intact until the consumer asks for the next one (the next ``next()``
    on the iterator); its slot is then free for the producer. So the consumer holds one slot, the producer
    fills one, and the other ``slots - 2`` are full batches waiting (slots = queue depth + 2: with the default 3
    the producer runs one whole batch ahead while it fills the next). A free-slot semaphore, not timing, enforces
    it: the producer waits for a free slot rather than write one the consumer holds. On CUDA the slots are pinned
    and, when the consumer asks for the next batch, an event is recorded on its current stream (after the
    featurizer's non-blocking copy from the slot); the producer waits for that event before writing the slot.

    With ``featurizer`` the producer also runs each full batch through it, after the batch's last frame is
    decoded, and :meth:`featurized` hands out ``(batch, grids)`` pairs: on a CPU the featurizer then runs on the
    decode thread's core, beside the consumer's work on the previous batch (``PointTracker.track`` takes such a
    prefetcher's grids when the featurizer is its own). Plain iteration hands out the batches alone.

    The producer starts on the first ``iter()``. When ``source`` fails half way, the batches read before come
    out first (the frames of the unfinished batch as a last short one), then the same exception. ``close()``
    stops the producer (it finishes the frame it is reading), joins it, then closes ``source`` when it has a
    ``close`` method. ``info``, ``warnings`` and ``path`` are ``source``'s, so a prefetched video stands in for the
    video.

    Args:
        source: an iterable of ``[H, W, 3]`` uint8 frames (arrays or CPU tensors; a video).
        batch_size: frames per batch (``B``).
        slots: buffers in the ring, at least 2 (2: the producer fills the next batch while the consumer uses
            one, but never gets a whole batch ahead).
        device: the device the batches go to (the featurizer's): a CUDA device pins the buffers.
        name: the thread's name.
        featurizer: optional ``[n, H, W, 3] -> [n, C, h, w]`` callable run on each batch in the producer thread
            (a CPU featurizer: on CUDA the consumer's stream would not order its work).

    Raises:
        ValueError: ``batch_size < 1`` or ``slots < 2``.
    """

    def __init__(
        self,
        source: Iterable,
        batch_size: int,
        slots: int = 3,
        device: torch.device | str | None = None,
        name: str = "decode",
        featurizer: Callable[[Tensor], Tensor] | None = None,
    ):
        self.ring = BatchRing(batch_size, slots=slots, device=device, on_slot=self._claim)
        self.featurizer = featurizer
        self.source = source
        self.batch_size = batch_size
        self.slots = slots
        self._free = threading.Semaphore(slots)  # slots neither held by the consumer, queued, nor being filled
        self._events: list[torch.cuda.Event | None] = [None] * slots  # the consumer's device work on each slot
        self._queue: queue.Queue = queue.Queue()  # bounded by the slots: at most slots - 1 batches wait
        self._stop = threading.Event()
        self._ended = threading.Event()  # set by the producer when it returns
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._iterator: Iterator | None = None
        self._started = False

    def __iter__(self) -> Iterator[Tensor]:
        for batch, _ in self.featurized():
            yield batch

    def featurized(self) -> Iterator[tuple[Tensor, Tensor | None]]:
        """``(batch, grids)`` pairs: ``grids`` the ``featurizer``'s output for the batch (None without one). The
        batch follows the reuse rule above; the grids are the consumer's to keep."""
        self._begin()
        held: int | None = None
        try:
            while True:
                if held is not None:  # asking for the next batch frees the one handed out last
                    self._release(held)
                    held = None
                kind, slot, payload = self._queue.get()
                if kind == "batch":
                    held = slot
                    yield payload
                elif kind == "error":
                    raise payload
                else:
                    return
        finally:
            if held is not None:
                self._release(held)

    def _release(self, slot: int) -> None:
        if self.ring.pin:
            event = torch.cuda.Event()
            event.record(torch.cuda.current_stream(self.ring.device))
            self._events[slot] = event
        self._free.release()

    def _claim(self, slot: int) -> None:
        """In the producer, before the first frame of a batch goes into ``slot``: wait until a slot is free (the
        slots are freed in the order they were handed out, so it is this one), then for the device work on it."""
        while not self._free.acquire(timeout=_POLL_S):
            if self._stop.is_set():
                raise _Stopped
        event, self._events[slot] = self._events[slot], None
        if event is not None:
            event.synchronize()

    def _produce(self) -> None:
        ring = self.ring
        try:
            self._iterator = iter(self.source)
            for frame in self._iterator:
                if self._stop.is_set():
                    return
                slot = ring.slot
                batch = ring.add(frame)
                if batch is not None:
                    self._queue.put(("batch", slot, self._with_grids(batch)))
            self._flush()
            self._queue.put(("end", None, None))
        except _Stopped:
            return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            try:
                self._flush()
            except BaseException:  # noqa: BLE001 - the featurizer failed on the last frames too: the first is raised
                pass
            self._queue.put(("error", None, exc))

    def _with_grids(self, batch: Tensor) -> tuple[Tensor, Tensor | None]:
        return batch, None if self.featurizer is None else self.featurizer(batch)

    def _flush(self) -> None:
        slot = self.ring.slot
        tail = self.ring.flush()
        if tail is not None:
            self._queue.put(("batch", slot, self._with_grids(tail)))
