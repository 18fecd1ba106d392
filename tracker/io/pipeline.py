"""Overlapped video I/O: frames decoded ahead in a producer thread, results drawn and encoded behind in a consumer
thread, so the featurizer and the tracker step never wait for either.

OpenCV's decoding, colour conversion, drawing and encoding release the GIL, so on a CPU the three stages run on
different cores; on a GPU the host work hides behind the device's. Both queues are bounded (memory stays flat in
video length), an exception in either thread comes out in the caller's thread, at the place in the stream where
it happened, and closing stops and joins the threads so what was finished is kept.

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

_POLL_S = 0.05  # how often a blocked thread looks at the stop flag


class Prefetcher:
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
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._iterator: Iterator | None = None
        self._started = False

    def __getattr__(self, name: str) -> Any:  # info, warnings, path ... of the source
        if name in ("info", "warnings", "path"):
            return getattr(self.source, name)
        raise AttributeError(name)

    def __iter__(self) -> Iterator:
        if self._started:
            raise RuntimeError("a Prefetcher can be iterated once")
        self._started = True
        self._thread.start()
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

    def close(self) -> None:
        """Stop and join the producer, drop what it decoded ahead, close the source; idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        while not self._queue.empty():
            self._queue.get_nowait()
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()  # a suspended generator: its cleanup runs here, in this thread
        self._iterator = None
        if hasattr(self.source, "close"):
            self.source.close()


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
