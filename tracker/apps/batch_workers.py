"""``track batch``'s workers and engines: one video at a time through ``track``'s own code.

:class:`VideoWorker` tracks one video to its outputs by running :func:`tracker.apps.track_video.track_command` (masks:
``dense_command``) on the options ``track`` would get, so a batch writes exactly what ``track`` writes; its
featurizers are built once per worker (per model and frame size) and reused for every video. Each worker reads
its video itself: only paths and small result records travel between the driver and the workers.

Engines run workers and yield one result record per video as videos finish:

- :class:`LocalEngine`: a pool of spawned processes on this machine, one GPU each when there are GPUs.
- :class:`RayEngine`: the same workers as Ray actors (``num_gpus`` per worker where the cluster has GPUs),
  restarted by Ray when their process dies (``max_restarts`` / ``max_task_retries``); a video whose actor is
  lost for good (``ray.kill``, a node gone) is given to a new actor, up to ``--retries`` times.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator

from tracker.apps.batch import Job, default_workers, failed_record, is_url
from tracker.errors import TrackerError

# track's one-line summary: "track: done: 3 points through 24 frames[, kept ...] in 1.2 s (20.1 frames/s, ...) -> ..."
_SUMMARY = re.compile(r"^track: \w+: .*? through (\d+) frames.*? in ([\d.]+) s \(([\d.]+|inf) frames/s", re.M)
_WARNING = "track: warning: "


def _first_line(text: str) -> str:
    return next((line for line in str(text).splitlines() if line.strip()), "").strip()


class VideoWorker:
    """Tracks videos one at a time, keeping its featurizers between videos.

    Args:
        threads: torch intra-op threads (None: torch's default).
    """

    def __init__(self, threads: int | None = None):
        from tracker.allocator import keep_memory_flat

        keep_memory_flat()
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.featurizers: dict = {}
        gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.name = f"{socket.gethostname()}:{os.getpid()}" + (f":gpu{gpu}" if gpu else "")

    def ready(self) -> str:
        return self.name

    def run(self, job: Job) -> dict:
        """Track ``job``'s video to its outputs; never raises (a failure is the record's one-line error)."""
        from tracker.apps import cli, track_video

        record = failed_record(job, "")
        record.update(worker=self.name, attempts=1)
        start = time.perf_counter()
        err = io.StringIO()
        with tempfile.TemporaryDirectory(prefix="track-batch-") as tmp:
            try:
                video, points, mask = (_local_copy(p, tmp) if p else None for p in (job.video, job.points, job.mask))
                argv = [video, *(["--points", points] if points else ["--mask", mask]), *job.argv, "--no-progress"]
                argv += ["--out-tracks", job.tracks] if job.tracks else []
                argv += ["--out-masks", job.masks] if job.masks else []
                argv += ["--out-video", job.overlay] if job.overlay else ["--no-video"]
                args = cli.build_parser().parse_args(argv)
                args.featurizer_cache = self.featurizers
                for folder in {os.path.dirname(p) for p in job.outputs().values()}:
                    os.makedirs(folder, exist_ok=True)
                with contextlib.redirect_stderr(err):
                    code = track_video.track_command(args)
                record["status"] = {0: "ok", cli.EXIT_INTERRUPTED: "interrupted"}.get(code, "failed")
                record["error"] = None if code == 0 else f"exit code {code}"
            except TrackerError as exc:
                record["error"] = _first_line(str(exc))
            except KeyboardInterrupt:
                record.update(status="interrupted", error="interrupted")
            except Exception as exc:  # a bug or an unexpected library error: this video fails, the others go on
                record["error"] = f"{type(exc).__name__}: {_first_line(str(exc))}"
        if record["status"] != "ok":
            for folder in {os.path.dirname(p) for p in job.outputs().values()}:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)  # only if empty: a failure before any output leaves no folder behind
        log = err.getvalue()
        found = _SUMMARY.search(log)
        elapsed = time.perf_counter() - start
        record["duration_s"] = round(elapsed, 3)
        record["warnings"] = [line[len(_WARNING) :] for line in log.splitlines() if line.startswith(_WARNING)]
        if found:
            record["frames"] = int(found.group(1))
            record["fps"] = float(found.group(3)) if found.group(3) != "inf" else None
        elif record["status"] == "ok":  # the summary's wording changed: count what was written
            record["frames"] = _frames_written(job)
        if record["status"] == "ok":
            record["outputs"] = job.outputs()
            record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        return record


def _frames_written(job: Job) -> int | None:
    """Frames in ``job``'s outputs: mask PNGs, or the tracks file's rows."""
    try:
        if job.masks:
            return sum(1 for p in os.listdir(job.masks) if p.endswith(".png"))
        from tracker.io.formats import read_tracks

        return len(read_tracks(job.tracks)["frame"])
    except (OSError, ValueError, KeyError):
        return None


def _local_copy(path: str, folder: str) -> str:
    """A local path for ``path``: itself, or a URL's object copied into ``folder`` (fsspec)."""
    if not is_url(path):
        return path[len("file://") :] if path.startswith("file://") else path
    try:
        import fsspec
    except ImportError:
        raise TrackerError(f"{path}: reading URLs needs fsspec (pip install fsspec s3fs / gcsfs ...)") from None
    target = os.path.join(folder, path.rstrip("/").rsplit("/", 1)[-1])
    try:
        fs, _, (remote,) = fsspec.get_fs_token_paths(path)
        fs.get(remote, target, recursive=fs.isdir(remote))
    except (ImportError, ValueError, OSError) as exc:
        raise TrackerError(f"cannot read {path}: {_first_line(str(exc)) or type(exc).__name__}") from None
    return target


# --------------------------------------------------------------------------- this machine: a process pool

_WORKER: VideoWorker | None = None


def _init_local(gpus, threads: int | None) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's: it stops the pool
    if gpus is not None:
        with contextlib.suppress(Exception):
            os.environ["CUDA_VISIBLE_DEVICES"] = str(gpus.get(timeout=5))
    global _WORKER
    _WORKER = VideoWorker(threads)


def _run_local(job: Job) -> dict:
    return _WORKER.run(job)


def visible_gpus() -> list[str]:
    """GPU ids this process may use (``CUDA_VISIBLE_DEVICES``, else NVML's count), without importing torch."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [g for g in given.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return []


class LocalEngine:
    """Worker processes on this machine (spawned), each with its own model; GPUs assigned one per worker.

    A worker that dies (killed, out of memory) breaks the pool: the videos it and the others were tracking are
    given to a fresh pool, each at most ``retries`` more times.
    """

    def __init__(self, workers: int | None, device: str | None, retries: int, todo: int, threads: int | None = None):
        self.gpus = [] if device == "cpu" else visible_gpus()
        self.workers = max(1, min(workers or default_workers(len(self.gpus)), todo))
        cores = os.cpu_count() or 1
        # Half the cores for torch, the rest for each worker's decoding, matching and writing threads: on the
        # loaded 2-core machine one worker ran 4x slower with 2 torch threads than with 1 (oversubscribed).
        self.threads = threads or (None if self.gpus else max(1, cores // (2 * self.workers)))
        self.retries = retries
        self.pool = None

    def describe(self) -> str:
        where = f"GPUs {','.join(self.gpus)}" if self.gpus else f"CPU, {self.threads} thread(s) each"
        return f"local engine: {self.workers} worker(s) ({where})"

    def _start(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        queue = None
        if self.gpus:
            queue = context.Queue()
            for i in range(self.workers):
                queue.put(self.gpus[i % len(self.gpus)])
        return ProcessPoolExecutor(
            self.workers, mp_context=context, initializer=_init_local, initargs=(queue, self.threads)
        )

    def run(self, jobs: list[Job]) -> Iterator[dict]:
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        pending = collections.deque(jobs)
        attempts: collections.Counter = collections.Counter()
        running: dict = {}
        sent: dict[str, float] = {}  # when each video was handed to a worker
        fruitless = 0  # pools broken in a row without a video finishing
        while pending or running:
            if self.pool is None:
                self.pool = self._start()
            broken = False
            while pending and len(running) < self.workers:  # at most one video per worker in flight
                job = pending.popleft()
                attempts[job.name] += 1
                try:
                    running[self.pool.submit(_run_local, job)] = job
                except BrokenProcessPool:  # a worker died between videos
                    pending.appendleft(job)
                    broken = True
                    break
                sent[job.name] = time.perf_counter()
            done = wait(running, return_when=FIRST_COMPLETED)[0] if running and not broken else set()
            for future in done:
                job = running.pop(future)
                try:
                    record = future.result()
                except BrokenProcessPool:
                    broken = True
                    pending.appendleft(job)
                    continue
                fruitless = 0
                record["attempts"] = attempts[job.name]
                record["turnaround_s"] = round(time.perf_counter() - sent[job.name], 3)
                yield record
            if broken:
                pending.extendleft(running.values())  # the pool is gone: its other videos too
                running.clear()
                with contextlib.suppress(Exception):
                    self.pool.shutdown(wait=True, cancel_futures=True)
                self.pool = None
                fruitless += 1
                lost = [job for job in pending if attempts[job.name] > self.retries]
                if fruitless > self.retries:  # workers die before finishing anything: they cannot work here
                    lost = list(pending)
                for job in lost:
                    pending.remove(job)
                    yield failed_record(job, f"worker lost {attempts[job.name]} time(s) (killed or out of memory)")
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            self.pool = None

    def close(self) -> None:
        if self.pool is not None:
            processes = list(getattr(self.pool, "_processes", {}).values())
            for process in processes:  # an interrupted batch: stop the videos in flight (SIGTERM keeps nothing
                with contextlib.suppress(Exception):  # half-written: outputs are atomic, and not marked ok)
                    process.terminate()
            for process in processes:
                with contextlib.suppress(Exception):
                    process.join(timeout=10)
            with contextlib.suppress(Exception):
                self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


# --------------------------------------------------------------------------- Ray


class RayEngine:
    """The same workers as Ray actors; frames never travel through the object store (each actor reads its
    video by path or URL: a cluster needs the inputs and ``--out`` on storage every node sees).

    Args:
        workers: actors (default: one per GPU of the cluster, else one per 2 x ``cpus_per_worker`` CPUs).
        address: an existing cluster (``auto``, ``ray://host:10001``); None starts a local Ray.
        gpus_per_worker: ``num_gpus`` of each actor (default 1 where the cluster has GPUs, else 0).
        cpus_per_worker: ``num_cpus`` of each actor (default 1).
        retries: Ray's ``max_restarts`` / ``max_task_retries``, and how often a video is given to a new actor.
        threads: torch threads per actor (default: ``cpus_per_worker``).
    """

    def __init__(
        self,
        workers: int | None,
        address: str | None,
        gpus_per_worker: float | None,
        cpus_per_worker: float | None,
        retries: int,
        todo: int,
        quiet: bool = False,
        threads: int | None = None,
    ):
        try:
            import ray
        except ImportError:
            raise TrackerError("--engine ray needs Ray: pip install 'semantic-tracker[cluster]'") from None
        import logging

        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            try:
                ray.init(
                    address=address,
                    include_dashboard=False if address is None else None,
                    logging_level=logging.WARNING if quiet else logging.INFO,
                    log_to_driver=False,
                )
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise TrackerError(f"--address {address}: cannot connect to Ray ({_first_line(str(exc))})") from None
            self.started = True
        resources = ray.cluster_resources()
        gpus = float(resources.get("GPU", 0))
        self.num_gpus = gpus_per_worker if gpus_per_worker is not None else (1.0 if gpus else 0.0)
        self.num_cpus = cpus_per_worker if cpus_per_worker is not None else 1.0
        if self.num_gpus > gpus:
            raise TrackerError(f"--gpus-per-worker {self.num_gpus:g}: the cluster has {gpus:g} GPU(s)")
        cpus = float(resources.get("CPU", 1))
        fit = int(gpus // self.num_gpus) if self.num_gpus else max(1, int(cpus // self.num_cpus) // 2)
        self.workers = max(1, min(workers or fit, todo))
        self.threads = threads or (None if self.num_gpus else max(1, int(self.num_cpus)))
        self.retries = retries
        self.actor_class = ray.remote(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_restarts=retries, max_task_retries=retries
        )(VideoWorker)
        self.actors = [self._new_actor() for _ in range(self.workers)]
        try:  # started (and able to import the tracker: a cluster's nodes need it installed) before any video
            self.names = ray.get([actor.ready.remote() for actor in self.actors])
        except Exception as exc:
            self.close()
            raise TrackerError(f"Ray workers cannot start: {_first_line(str(exc))}") from None
        self.lost = 0

    def _new_actor(self):
        return self.actor_class.remote(self.threads)

    def describe(self) -> str:
        where = f"{self.num_gpus:g} GPU" if self.num_gpus else f"{self.num_cpus:g} CPU"
        return f"ray engine: {self.workers} actor(s) ({where} each; cluster {self.ray.cluster_resources()})"

    def run(self, jobs: list[Job]) -> Iterator[dict]:
        from ray.exceptions import RayError, RayTaskError

        pending = collections.deque(jobs)
        attempts: collections.Counter = collections.Counter()
        idle = list(range(len(self.actors)))
        running: dict = {}
        sent: dict[str, float] = {}
        while pending or running:
            while pending and idle:
                slot = idle.pop(0)
                job = pending.popleft()
                attempts[job.name] += 1
                running[self.actors[slot].run.remote(job)] = (slot, job)
                sent[job.name] = time.perf_counter()
            ready, _ = self.ray.wait(list(running), num_returns=1)
            slot, job = running.pop(ready[0])
            try:
                record = self.ray.get(ready[0])
            except RayTaskError as exc:  # VideoWorker.run never raises; this is Ray failing around it
                record = failed_record(job, f"ray: {_first_line(str(exc))}")
            except RayError:  # the actor or its worker is gone (ray.kill, a crash past its restarts, node lost)
                self.lost += 1
                with contextlib.suppress(Exception):  # one that is only unreachable (restarting) must not linger
                    self.ray.kill(self.actors[slot])
                self.actors[slot] = self._new_actor()
                self.names[slot] = None
                if attempts[job.name] > self.retries:
                    record = failed_record(job, f"worker lost {attempts[job.name]} times (killed, or its node gone)")
                else:
                    pending.appendleft(job)
                    idle.append(slot)
                    continue
            idle.append(slot)
            record["attempts"] = attempts[job.name]
            record["turnaround_s"] = round(time.perf_counter() - sent[job.name], 3)
            yield record

    def close(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(actor)
        self.actors = []
        if self.started:
            self.ray.shutdown()


def make_engine(args, todo: int, device: str | None = None, quiet: bool = False):
    """The engine ``track batch``'s options ask for (``device``: the ``--device`` passed to ``track``)."""
    if args.batch_engine == "ray":
        return RayEngine(
            args.workers,
            args.address,
            args.gpus_per_worker,
            args.cpus_per_worker,
            args.retries,
            todo,
            quiet,
            args.threads,
        )
    return LocalEngine(args.workers, device, args.retries, todo, args.threads)
