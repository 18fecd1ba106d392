"""Measuring for ``track bench``: timings, peak memory, the machine, FLOP counts and peak throughput tables.

Timing follows the usual GPU rules: warm-up first, then every timed call between CUDA events recorded on
the current stream with the device synchronised before and after (so a call is timed from launch to result),
and medians and tails (p50 / p90 / p99) rather than means. On the CPU calls are timed with
``time.perf_counter``. Memory is polled in a background thread: GPU memory through NVML (so allocations
outside torch's allocator, such as TensorRT's, count too) and the process's resident set size through psutil.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import psutil
import torch
from torch import nn

MIB = 2**20


# --------------------------------------------------------------------------- timing


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call over ``n`` timed calls (after warm-up).

    Attributes:
        p50, p90, p99: percentiles, ms.
        mean, min: ms.
        n: timed calls.
        clock: ``cuda-events`` (GPU time between events on the current stream, device synchronised around each
            call), ``wall`` (``perf_counter``; CPU, or GPU work outside the current stream).
    """

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    n: int
    clock: str

    @classmethod
    def of(cls, ms: Sequence[float], clock: str) -> Timing:
        a = np.asarray(ms, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return cls(float(p50), float(p90), float(p99), float(a.mean()), float(a.min()), len(a), clock)


def time_calls(
    fn: Callable[[], object],
    device: torch.device,
    *,
    warmup: int,
    iters: int,
    min_iters: int = 1,
    max_seconds: float = float("inf"),
) -> Timing:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``iters`` timed ones (fewer past ``max_seconds``,
    but at least ``min_iters``).

    On CUDA each call is bracketed by CUDA events and device-wide synchronisation; when the synchronised wall
    clock exceeds the event time by more than half (the work ran on another stream, as ONNX Runtime's may),
    the wall clock is reported instead.
    """
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    events, wall = [], []
    started = time.perf_counter()
    for i in range(max(iters, min_iters)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            wall.append(1000 * (time.perf_counter() - t0))
            events.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            wall.append(1000 * (time.perf_counter() - t0))
        if i + 1 >= min_iters and time.perf_counter() - started > max_seconds:
            break
    if cuda:
        on_events = Timing.of(events, "cuda-events")
        on_wall = Timing.of(wall, "wall")
        return on_wall if on_wall.p50 > 1.5 * on_events.p50 + 0.05 else on_events
    return Timing.of(wall, "wall")


# --------------------------------------------------------------------------- NVML


class Nvml:
    """NVML handle of one CUDA device (found by UUID, so ``CUDA_VISIBLE_DEVICES`` is respected), or nothing.

    Create it before torch touches the GPU: :attr:`baseline_mib` is the device's used memory before this
    process created its CUDA context, so ``used - baseline`` is what this process holds.
    """

    def __init__(self) -> None:
        self.handles: list = []
        self.handle = None
        self.baselines: list[float] = []
        self.baseline_mib = 0.0
        self.error = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            count = pynvml.nvmlDeviceGetCount()
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.baselines = [pynvml.nvmlDeviceGetMemoryInfo(h).used / MIB for h in self.handles]
        except Exception as exc:  # no driver, no library: GPU memory is then unknown
            self.error = f"NVML unavailable ({type(exc).__name__}: {exc})"

    def select(self, device: torch.device) -> None:
        """Pick the handle of torch's ``device``."""
        if not self.handles or device.type != "cuda":
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        chosen = None
        try:
            uuid = str(torch.cuda.get_device_properties(index).uuid)
            for i, h in enumerate(self.handles):
                nv = self.nvml.nvmlDeviceGetUUID(h)
                nv = nv.decode() if isinstance(nv, bytes) else nv
                if nv.removeprefix("GPU-") == uuid.removeprefix("GPU-"):
                    chosen = i
        except Exception:
            chosen = None
        if chosen is None:
            chosen = index if index < len(self.handles) else 0
        self.handle = self.handles[chosen]
        self.baseline_mib = self.baselines[chosen]

    def used_mib(self) -> float | None:
        """Device-wide used memory now, MiB."""
        if self.handle is None:
            return None
        return self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / MIB

    def process_mib(self) -> float | None:
        """This process's GPU memory as NVML sees it (None where NVML cannot see our pid, as in containers)."""
        if self.handle is None:
            return None
        try:
            for p in self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handle):
                if p.pid == os.getpid() and p.usedGpuMemory is not None:
                    return p.usedGpuMemory / MIB
        except Exception:
            return None
        return None

    def sm_clock_mhz(self) -> float | None:
        if self.handle is None:
            return None
        try:
            return float(self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM))
        except Exception:
            return None

    def describe(self) -> dict:
        """Name, driver, CUDA driver version, memory, clocks, power limit of the selected device."""
        if self.handle is None:
            return {"nvml": self.error or "no GPU selected"}
        n, h = self.nvml, self.handle

        def get(fn, *a):
            try:
                value = fn(*a)
                return value.decode() if isinstance(value, bytes) else value
            except Exception:
                return None

        cuda_driver = get(n.nvmlSystemGetCudaDriverVersion_v2) or get(n.nvmlSystemGetCudaDriverVersion)
        power = get(n.nvmlDeviceGetPowerManagementLimit, h)
        return {
            "gpu": get(n.nvmlDeviceGetName, h),
            "driver": get(n.nvmlSystemGetDriverVersion),
            "cuda_driver": f"{cuda_driver // 1000}.{cuda_driver % 1000 // 10}" if cuda_driver else None,
            "gpu_memory_mib": round(n.nvmlDeviceGetMemoryInfo(h).total / MIB),
            "sm_clock_mhz": get(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_SM),
            "sm_clock_max_mhz": get(n.nvmlDeviceGetMaxClockInfo, h, n.NVML_CLOCK_SM),
            "memory_clock_mhz": get(n.nvmlDeviceGetClockInfo, h, n.NVML_CLOCK_MEM),
            "memory_clock_max_mhz": get(n.nvmlDeviceGetMaxClockInfo, h, n.NVML_CLOCK_MEM),
            "power_limit_w": power / 1000 if power else None,
            "persistence_mode": get(n.nvmlDeviceGetPersistenceMode, h),
            "gpu_memory_used_by_others_mib": round(self.baseline_mib),
        }


@dataclass(frozen=True)
class MemoryPeak:
    """Peak memory while a measurement ran.

    Attributes:
        gpu_mib: this process's peak GPU memory (NVML: its own entry where visible, else device used memory
            minus what was used before the process touched the GPU), CUDA context and TensorRT included;
            None on CPU or without NVML.
        gpu_source: ``nvml-process``, ``nvml-device-delta`` or ``none``.
        torch_allocated_mib: torch's ``max_memory_allocated`` (tensors only), None on CPU.
        host_rss_mib: peak resident set size of the process.
        sm_clock_mhz: median SM clock while it ran (NVML), None on CPU.
        others_cpu_share: CPU time other processes used while it ran, as a fraction of all cores' time (how
            disturbed a measurement on a shared machine was; 0.5 on 2 cores: one core's worth).
    """

    gpu_mib: float | None
    gpu_source: str
    torch_allocated_mib: float | None
    host_rss_mib: float
    sm_clock_mhz: float | None = None
    others_cpu_share: float | None = None


def _busy_seconds() -> float:
    """CPU seconds all processes have spent busy since boot (every core)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0)


class MemoryMonitor:
    """Context manager polling GPU memory (NVML), SM clock and host RSS in a background thread; it also notes how
    much CPU other processes took meanwhile.

    Args:
        nvml: the process's :class:`Nvml` (created before any CUDA work).
        device: the device measured.
        interval: seconds between polls (the thread sleeps, releasing the GIL, in between).
    """

    def __init__(self, nvml: Nvml | None, device: torch.device, interval: float = 0.02):
        self.nvml = nvml if nvml is not None and nvml.handle is not None and device.type == "cuda" else None
        self.device = device
        self.interval = interval
        self.process = psutil.Process()
        self._stop = threading.Event()
        self._gpu_process = self._gpu_device = None
        self._rss = 0.0
        self._clocks: list[float] = []
        self.peak: MemoryPeak | None = None

    def _sample(self) -> None:
        self._rss = max(self._rss, self.process.memory_info().rss / MIB)
        if self.nvml is None:
            return
        if (p := self.nvml.process_mib()) is not None:
            self._gpu_process = max(self._gpu_process or 0.0, p)
        if (d := self.nvml.used_mib()) is not None:
            self._gpu_device = max(self._gpu_device or 0.0, d)
        if (c := self.nvml.sm_clock_mhz()) is not None:
            self._clocks.append(c)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> MemoryMonitor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._sample()
        self._cpu = (time.perf_counter(), _busy_seconds(), sum(self.process.cpu_times()[:4]))
        self._thread = threading.Thread(target=self._run, name="bench-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self._stop.set()
        self._thread.join()
        self._sample()
        gpu, source = None, "none"
        if self._gpu_process is not None:
            gpu, source = self._gpu_process, "nvml-process"
        elif self._gpu_device is not None:
            gpu, source = self._gpu_device - self.nvml.baseline_mib, "nvml-device-delta"
        allocated = torch.cuda.max_memory_allocated(self.device) / MIB if self.device.type == "cuda" else None
        clock = float(np.median(self._clocks)) if self._clocks else None
        wall = time.perf_counter() - self._cpu[0]
        ours = sum(self.process.cpu_times()[:4]) - self._cpu[2]
        others = (_busy_seconds() - self._cpu[1] - ours) / (wall * (os.cpu_count() or 1)) if wall > 0 else None
        others = min(max(others, 0.0), 1.0) if others is not None else None
        self.peak = MemoryPeak(gpu, source, allocated, self._rss, clock, others)


def host_peak_rss_mib() -> float:
    """The process's lifetime peak resident set size (``ru_maxrss``), MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the machine


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """``model name`` from /proc/cpuinfo (Linux), else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device, nvml: Nvml | None) -> dict:
    """What ran: CPU, cores, RAM, load, GPU (name, driver, CUDA, clocks) and library versions."""
    import cv2

    vm = psutil.virtual_memory()
    info = {
        "cpu": cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "torch_threads": torch.get_num_threads(),
        "ram_gib": round(vm.total / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "timm": _version("timm"),
        "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "tensorrt": _version("tensorrt") or _version("tensorrt-cu12") or _version("tensorrt_cu12"),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }
    if device.type == "cuda":
        info.update(nvml.describe() if nvml is not None else {})
        info["gpu_torch_name"] = torch.cuda.get_device_name(device)
    info["label"] = machine_label(device, info)
    return info


def machine_label(device: torch.device, info: dict) -> str:
    """Folder name for results: the GPU's name (``nvidia-h200``) or ``cpu-<cores>core``."""
    if device.type == "cuda":
        name = info.get("gpu") or info.get("gpu_torch_name") or "gpu"
        return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"cpu-{info['cpu_cores_logical']}core"


# --------------------------------------------------------------------------- peak throughput

# Dense peak TFLOP/s at boost clock (figures "with sparsity" halved), keyed by a pattern of the device name.
# fp16/bf16/tf32: tensor cores (FP32 accumulate where the sheet distinguishes); fp32: CUDA cores.
PEAK_TFLOPS: tuple[tuple[str, dict[str, float], str], ...] = (
    (
        r"H200 NVL",
        {"fp16": 835.5, "bf16": 835.5, "tf32": 417.5, "fp32": 60.0},
        "NVIDIA H200 NVL datasheet (sparsity figures halved)",
    ),
    (
        r"H200",
        {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
        "NVIDIA H200 SXM datasheet (same compute as H100 SXM; sparsity figures halved)",
    ),
    (
        r"H100 PCIe",
        {"fp16": 756.5, "bf16": 756.5, "tf32": 378.0, "fp32": 51.2},
        "NVIDIA H100 datasheet, PCIe (sparsity figures halved)",
    ),
    (
        r"H100",
        {"fp16": 989.4, "bf16": 989.4, "tf32": 494.7, "fp32": 66.9},
        "NVIDIA H100 datasheet, SXM5 (sparsity figures halved)",
    ),
    (r"A100", {"fp16": 312.0, "bf16": 312.0, "tf32": 156.0, "fp32": 19.5}, "NVIDIA A100 datasheet"),
    (
        r"L40S",
        {"fp16": 366.0, "bf16": 366.0, "tf32": 183.0, "fp32": 91.6},
        "NVIDIA L40S datasheet (sparsity figures halved)",
    ),
    (
        r"\bL4\b",
        {"fp16": 121.0, "bf16": 121.0, "tf32": 60.0, "fp32": 30.3},
        "NVIDIA L4 datasheet (sparsity figures halved)",
    ),
    (
        r"\bA10\b",
        {"fp16": 125.0, "bf16": 125.0, "tf32": 62.5, "fp32": 31.2},
        "NVIDIA A10 datasheet (sparsity figures halved)",
    ),
    (r"\bT4\b", {"fp16": 65.0, "fp32": 8.1}, "NVIDIA T4 datasheet (FP16 tensor, mixed precision)"),
    (
        r"RTX 4090",
        {"fp16": 165.2, "bf16": 165.2, "tf32": 82.6, "fp32": 82.6},
        "NVIDIA Ada Lovelace architecture whitepaper (tensor FP16/BF16 with FP32 accumulate, dense)",
    ),
    (
        r"RTX 3090",
        {"fp16": 71.0, "bf16": 71.0, "tf32": 35.6, "fp32": 35.6},
        "NVIDIA Ampere GA102 whitepaper (tensor FP16 with FP32 accumulate, dense)",
    ),
)


def peak_tflops(device_name: str | None) -> tuple[dict[str, float], str] | None:
    """``(peaks by precision, source)`` for a device name such as ``"NVIDIA H200"``; None when not listed."""
    if not device_name:
        return None
    for pattern, peaks, source in PEAK_TFLOPS:
        if re.search(pattern, device_name):
            return peaks, source
    return None


# --------------------------------------------------------------------------- FLOPs


@dataclass(frozen=True)
class FlopCount:
    """Floating-point operations of one frame through a ViT, counted analytically.

    Convention: 2 FLOPs per multiply-add. Counted: the patch embedding (a ``p x p`` convolution), per block
    the qkv, output projection and two MLP matmuls over all N tokens, and attention's ``Q K^T`` and
    ``A V`` (``N^2 D`` multiply-adds each). Not counted: LayerNorm, softmax, GELU, biases, residual adds and
    layer scale (elementwise, under 1% here) -- the same set ``torch.utils.flop_counter`` counts.

    Attributes:
        total: FLOPs per frame.
        tokens: N, patches plus prefix tokens (1 class token + 4 registers for DINOv2-reg4).
        parts: FLOPs per kind (``patch_embed``, ``qkv``, ``attention``, ``proj``, ``mlp``), all blocks.
    """

    total: int
    tokens: int
    parts: dict[str, int]

    @property
    def gflop(self) -> float:
        return self.total / 1e9


def vit_flops(model: nn.Module, input_hw: tuple[int, int]) -> FlopCount:
    """FLOPs per frame of a timm ``VisionTransformer``'s ``forward_features`` at ``input_hw``."""
    patch = int(model.patch_embed.patch_size[0])
    patches = (input_hw[0] // patch) * (input_hw[1] // patch)
    n = patches + int(model.num_prefix_tokens)
    d = int(model.embed_dim)
    depth = len(model.blocks)
    hidden = int(model.blocks[0].mlp.fc1.out_features)
    in_chans = int(model.patch_embed.proj.in_channels)
    parts = {
        "patch_embed": 2 * patches * in_chans * patch * patch * d,
        "qkv": depth * 2 * n * d * 3 * d,
        "attention": depth * 2 * 2 * n * n * d,
        "proj": depth * 2 * n * d * d,
        "mlp": depth * 2 * 2 * n * d * hidden,
    }
    return FlopCount(total=sum(parts.values()), tokens=n, parts=parts)


# --------------------------------------------------------------------------- video readers


def measure_readers(video: str, frames: int, device: torch.device) -> dict[str, dict]:
    """Decode frames/s of each reader of :mod:`tracker.io.video` on the first ``frames`` frames of ``video``
    (OpenCV, torchcodec on the CPU and, on a GPU, with NVDEC into CUDA tensors, decord); a reader that is not
    installed or cannot open the file gets its one-line reason instead."""
    from tracker.io.video import open_video

    tries = [("opencv", "cpu"), ("torchcodec", "cpu"), ("decord", "cpu")]
    if device.type == "cuda":
        tries.insert(2, ("torchcodec", "cuda"))
    out = {}
    for reader, where in tries:
        key = reader if where == "cpu" else f"{reader}-nvdec"
        try:
            t0 = time.perf_counter()
            count = 0
            with open_video(video, reader=reader, device=where) as source:
                for _ in zip(range(frames), source, strict=False):
                    count += 1
            if where == "cuda":
                torch.cuda.synchronize(device)
            out[key] = {"fps": count / (time.perf_counter() - t0), "frames": count}
        except Exception as exc:  # noqa: BLE001 - a reader that cannot run here is a result, not a failure
            text = str(exc).strip()
            out[key] = {"unavailable": text.splitlines()[0] if text else type(exc).__name__}
    return out
