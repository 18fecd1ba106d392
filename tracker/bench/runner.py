"""``track bench``: how fast the tracker is on this machine, and where the time goes.

Three parts, all in one run and one result file:

- **Model only**: the featurizer alone on frames already on the device at its input size: batch-1 latency
  (p50 / p90 / p99) and throughput at larger batches for every backend and precision available, for ViT-S
  and ViT-B at several input sizes; GFLOP per frame (counted analytically, 2 FLOPs per multiply-add),
  achieved TFLOP/s and the fraction of the card's peak.
- **End to end** on a real video, as ``track`` runs it: frames/s for several point counts and for mask
  propagation, with and without writing the overlay video, and the time per stage (decode, upload,
  pre-process, featurizer, matching, drawing, encoding) naming the bottleneck.
- **The naive baseline** on the same frames (:class:`~tracker.bench.e2e.NaivePointTracker`: one frame at a
  time, fp32 eager, the feature map upsampled to the frame and an argmax per point), so every figure also
  appears as a ratio. Peak GPU memory (NVML) and host memory are recorded for every measurement.

:func:`run_bench` is the library entry point (it reports progress through a callback and returns the result
dictionary); :func:`main` is ``track bench``. Speed does not depend on weight values, so ``--weights random``
(the real architecture with random weights) is a legitimate speed measurement; the result records it.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from tracker.errors import TrackerError

SCHEMA = "semantic-tracker/bench/1"
DEFAULT_VIDEO = Path(__file__).resolve().parents[3] / "shared" / "data" / "videos" / "01_dog.mp4"
TINY = {"embed_dim": 48, "depth": 2, "num_heads": 2}  # --tiny: the real architecture, tiny widths (tests, CI)
VIT_B_FAMILY = ("distilldift", "distilldift-ws", "distilldift-s", "dinov2-b")
ARCH_LABEL = {"dinov2-s": "ViT-S/14-reg4", **{m: "ViT-B/14-reg4" for m in VIT_B_FAMILY}}


@dataclass(frozen=True)
class Variant:
    """How a featurizer runs: backend, precision and (torch only) ``torch.compile``."""

    backend: str
    precision: str
    compile: bool = False

    @property
    def name(self) -> str:
        return f"{self.backend}{'+compile' if self.compile else ''} {self.precision}"

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``torch``, ``torch:fp16``, ``torch+compile:bf16``, ``onnx:fp32``, ``tensorrt:fp16``."""
        backend, _, precision = text.partition(":")
        compiled = backend.endswith("+compile")
        return cls(backend.removesuffix("+compile"), precision or "", compiled)


@dataclass(frozen=True)
class BenchConfig:
    """Everything a benchmark run does; see ``track bench --help`` for the meaning of each field."""

    model: str = "distilldift"
    weights: str | None = None
    device: str = "cpu"
    backends: tuple[str, ...] = ("torch",)
    precisions: tuple[str, ...] = ("fp32",)
    compile: bool = False
    model_only_models: tuple[str, ...] = ("dinov2-s", "distilldift")
    sizes: tuple[int, ...] = (224, 434, 518)
    batches: tuple[int, ...] = (1, 8, 32)
    video: str | None = None
    size: int = 434
    batch: int = 8
    points: tuple[int, ...] = (16, 256, 1024)
    frames: int | None = None
    naive_frames: int = 4
    mask: str | None = None
    e2e_backend: str = "best"
    warmup: int = 10
    iters: int = 50
    max_seconds: float = 10.0
    sections: tuple[str, ...] = ("model", "e2e")
    tiny: bool = False
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def overrides(self) -> dict:
        return dict(TINY) if self.tiny else {}


Log = Callable[[str], None]


# --------------------------------------------------------------------------- building featurizers


class Factory:
    """Builds the featurizers to measure on one device, each from seeded random weights unless told otherwise.

    ONNX graphs are exported once per model, size and precision into a temporary folder (``export.onnx``,
    with its parity check) and loaded through :func:`tracker.backends.build_featurizer` like every backend.
    """

    def __init__(self, device: torch.device, overrides: dict, folder: Path):
        self.device = device
        self.overrides = overrides
        self.folder = folder
        self._onnx: dict[tuple, Path] = {}
        self._flops: dict[tuple, object] = {}

    def build(self, model: str, frame_hw: tuple[int, int], size: int, variant: Variant, weights: str | None):
        """``(featurizer, description)``; raises TrackerError when the variant cannot run here."""
        from tracker.backends import BackendOptions, build_featurizer

        torch.manual_seed(0)
        if variant.backend == "onnx":
            path = self.onnx_file(model, size, variant.precision, weights)
            return build_featurizer(model, frame_hw, BackendOptions("onnx", onnx=str(path)), device=self.device)
        options = BackendOptions(variant.backend, variant.precision, variant.compile)
        return build_featurizer(
            model, frame_hw, options, size=str(size), weights=weights, device=self.device, **self.overrides
        )

    def onnx_file(self, model: str, size: int, precision: str, weights: str | None) -> Path:
        key = (model, size, precision, weights)
        if key in self._onnx:
            return self._onnx[key]
        if precision == "bf16":
            raise TrackerError("ONNX Runtime cannot run bf16 graphs")
        try:
            from export.onnx import export_onnx
        except ImportError as exc:
            raise TrackerError(f"the onnx backend needs the export package ({exc})") from None
        from tracker.featurizers import create_featurizer

        torch.manual_seed(0)
        torch_featurizer = create_featurizer(model, (size, size), size=str(size), weights=weights, **self.overrides)
        path = self.folder / f"{model}_{size}_{precision}.onnx"
        export_onnx(torch_featurizer, path, precision=precision)
        self._onnx[key] = path
        return path

    def flops(self, model: str, size: int):
        """Analytic :class:`~tracker.bench.measure.FlopCount` per frame (architecture built on the meta device)."""
        from tracker import weights as W
        from tracker.bench.measure import vit_flops

        key = (model, size)
        if key not in self._flops:
            with torch.device("meta"):
                vit = W.create_vit(W.get_spec(model).arch, (size, size), **self.overrides)
            self._flops[key] = vit_flops(vit, (size, size))
        return self._flops[key]


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- model only


def default_precisions(device: torch.device) -> tuple[str, ...]:
    """fp16, bf16 and fp32 on CUDA; fp32 on the CPU (fp16 does not run there; bf16 only with ``--precisions``)."""
    return ("fp16", "bf16", "fp32") if device.type == "cuda" else ("fp32",)


def variants(config: BenchConfig) -> list[Variant]:
    out = [Variant(b, p) for b in config.backends for p in config.precisions]
    if config.compile and "torch" in config.backends:
        out += [Variant("torch", p, True) for p in config.precisions]
    return out


def _batch_iters(config: BenchConfig, batch: int) -> tuple[int, int]:
    """``(iters, min_iters)``: batch 1 gets the most calls (its tail percentiles need them)."""
    if batch == 1:
        return config.iters, min(3, config.iters)
    return max(1, config.iters // 4), 1


def measure_model(
    factory: Factory, config: BenchConfig, model: str, size: int, variant: Variant, nvml, batches=None
) -> dict:
    """Latency and throughput of one featurizer variant; ``status`` says why it was skipped if it was."""
    from tracker.bench.measure import MemoryMonitor, time_calls

    device = factory.device
    batches = batches or config.batches
    flops = factory.flops(model, size)
    record = {
        "model": model,
        "arch": ARCH_LABEL.get(model, model) + (" (tiny)" if config.tiny else ""),
        "size": size,
        "backend": variant.backend + ("+compile" if variant.compile else ""),
        "precision": variant.precision,
        "tokens": flops.tokens,
        "gflop_per_frame": flops.gflop,
    }
    featurizer = None
    try:
        featurizer, description = factory.build(model, (size, size), size, variant, "random")
        record["description"] = description
        generator = torch.Generator().manual_seed(0)
        with MemoryMonitor(nvml, device) as monitor:
            timings = {}
            for b in batches:
                frames = torch.randint(0, 256, (b, size, size, 3), dtype=torch.uint8, generator=generator).to(device)
                iters, min_iters = _batch_iters(config, b)
                with torch.inference_mode():
                    timings[b] = time_calls(
                        lambda f=frames: featurizer(f),
                        device,
                        warmup=config.warmup,
                        iters=iters,
                        min_iters=min_iters,
                        max_seconds=config.max_seconds,
                    )
                del frames
    except TrackerError as exc:
        return {**record, "status": f"skipped: {exc}"}
    except torch.OutOfMemoryError:
        return {**record, "status": "skipped: out of GPU memory"}
    except Exception as exc:  # a backend failing here must not lose the rest of a long run; the table shows it
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return {**record, "status": f"failed: {type(exc).__name__}: {first}"}
    finally:
        featurizer = None  # noqa: F841 - released before the next variant is built
        _free(device)
    record["status"] = "ok"
    record["batches"] = {str(b): _batch_record(t, b, flops.gflop) for b, t in timings.items()}
    if 1 in timings:
        record["latency_ms"] = asdict(timings[1])
    record["memory"] = asdict(monitor.peak)
    return record


def _batch_record(timing, batch: int, gflop: float) -> dict:
    fps = 1000 * batch / timing.p50
    return {"ms": asdict(timing), "fps": fps, "achieved_tflops": gflop * fps / 1000}


def add_ratios_and_peaks(records: list[dict], peaks: tuple[dict, str] | None) -> None:
    """Fraction of the card's peak per precision, and ratios against the naive featurizer (torch fp32 eager,
    batch 1) of the same model and size: ``latency`` = naive p50 / p50, ``throughput[b]`` = fps / naive fps."""
    for r in records:
        if r["status"] != "ok":
            continue
        peak = None
        if peaks is not None:
            table, _ = peaks
            peak = table.get(r["precision"])
        r["peak_tflops"] = peak
        r["peak_basis"] = f"{r['precision']} dense peak" if peak else "unknown"
        if peak and r["precision"] == "fp32":
            r["peak_basis"] += " (CUDA cores; TensorRT and ONNX Runtime may use TF32 tensor cores)"
        for b in r["batches"].values():
            b["peak_fraction"] = b["achieved_tflops"] / peak if peak else None
        naive = next(
            (
                n
                for n in records
                if n["status"] == "ok"
                and n["model"] == r["model"]
                and n["size"] == r["size"]
                and n["backend"] == "torch"
                and n["precision"] == "fp32"
                and "1" in n["batches"]
            ),
            None,
        )
        if naive is not None:
            naive_ms = naive["batches"]["1"]["ms"]["p50"]
            r["vs_naive"] = {
                "latency": naive_ms / r["batches"]["1"]["ms"]["p50"] if "1" in r["batches"] else None,
                "throughput": {k: v["fps"] / (1000 / naive_ms) for k, v in r["batches"].items()},
            }


def run_model_only(config: BenchConfig, factory: Factory, nvml, log: Log) -> list[dict]:
    records = []
    for model in config.model_only_models:
        for size in config.sizes:
            for variant in variants(config):
                log(f"model only: {ARCH_LABEL.get(model, model)} {size} {variant.name} ...")
                record = measure_model(factory, config, model, size, variant, nvml)
                log(f"  {_model_line(record)}")
                records.append(record)
            has_naive = any(
                r["model"] == model
                and r["size"] == size
                and r["backend"] == "torch"
                and r["precision"] == "fp32"
                and r["status"] == "ok"
                and "1" in r["batches"]
                for r in records
            )
            if not has_naive:  # the ratios need torch fp32 eager at batch 1
                log(f"model only: {ARCH_LABEL.get(model, model)} {size} naive reference (torch fp32, batch 1) ...")
                record = measure_model(factory, config, model, size, Variant("torch", "fp32"), nvml, batches=(1,))
                record["role"] = "naive reference"
                records.append(record)
    return records


def _model_line(r: dict) -> str:
    if r["status"] != "ok":
        return r["status"]
    parts = []
    if "latency_ms" in r:
        parts.append(f"batch 1 p50 {r['latency_ms']['p50']:.2f} ms")
    parts += [f"batch {b} {v['fps']:.1f} frames/s" for b, v in r["batches"].items() if b != "1"]
    return ", ".join(parts)


def best_variant(records: list[dict], model: str, size: int, batch: int) -> Variant | None:
    """The measured variant with the highest throughput at ``batch`` (or the nearest batch measured)."""
    best, best_fps = None, 0.0
    for r in records:
        if r["status"] != "ok" or r["model"] != model or r["size"] != size or r.get("role"):
            continue
        measured = sorted(int(b) for b in r["batches"])
        b = min(measured, key=lambda m: (abs(m - batch), -m))
        fps = r["batches"][str(b)]["fps"]
        if fps > best_fps:
            backend = r["backend"].removesuffix("+compile")
            best, best_fps = Variant(backend, r["precision"], r["backend"].endswith("+compile")), fps
    return best


# --------------------------------------------------------------------------- end to end


def _stage_record(timing, stages_order) -> dict:
    per_frame = {k: 1000 * timing.stages.get(k, 0.0) / max(timing.frames, 1) for k in stages_order}
    if not timing.stages:
        return {}
    return per_frame


def _run_both(fn, device: torch.device, nvml):
    """On a GPU a plain run (frames/s) and a synchronised stage run; on the CPU one run gives both."""
    from tracker.bench.e2e import StageClock
    from tracker.bench.measure import MemoryMonitor

    with MemoryMonitor(nvml, device) as monitor:
        if device.type == "cuda":
            plain = fn(StageClock(device, sync=False, enabled=False))
            staged = fn(StageClock(device, sync=True))
        else:
            plain = staged = fn(StageClock(device, sync=False))
    return plain, staged, monitor.peak


def _e2e_record(name, mode, points, write, plain, staged, memory, stage_names) -> dict:
    stages = _stage_record(staged, stage_names)
    record = {
        "name": name,
        "mode": mode,
        "points": points,
        "write_video": write,
        "frames": plain.frames,
        "seconds": plain.seconds,
        "fps": plain.frames / plain.seconds,
        "ms_per_frame": 1000 * plain.seconds / plain.frames,
        "stages_ms_per_frame": stages,
        "bottleneck": max(stages, key=stages.get) if stages else None,
        "memory": asdict(memory),
    }
    if staged is not plain:
        record["fps_with_stage_syncs"] = staged.frames / staged.seconds
    if stages:
        record["stages_other_ms_per_frame"] = max(record["ms_per_frame"] - sum(stages.values()), 0.0)
        featurizer = sum(stages.get(k, 0.0) for k in ("upload", "preprocess", "featurizer"))
        rest = stages.get("matching", stages.get("propagation"))
        if rest is not None and featurizer > 0:
            record["rest_over_featurizer"] = rest / featurizer
    return record


def run_end_to_end(config: BenchConfig, factory: Factory, model_records: list[dict], nvml, log: Log) -> dict:
    from tracker.bench.e2e import (
        MASK_STAGES,
        NAIVE_STAGES,
        POINT_STAGES,
        StageClock,
        run_masks,
        run_naive_points,
        run_points,
    )
    from tracker.featurizers import default_match_config
    from tracker.io.formats import fit_mask, read_mask
    from tracker.io.video import open_video

    device = factory.device
    with open_video(config.video) as video:
        info = video.info
    frame_hw = (info.height, info.width)
    mask = fit_mask(read_mask(config.mask), frame_hw, "--mask") if config.mask else None
    vit = config.model != "sift"
    if config.e2e_backend != "best":
        variant, how = Variant.parse(config.e2e_backend), "given with --e2e-backend"
        if not variant.precision:
            variant = replace(variant, precision=config.precisions[0])
    else:
        variant = best_variant(model_records, config.model, config.size, config.batch) if vit else None
        how = f"fastest in the model-only section at batch {config.batch}"
        if variant is None:
            variant = Variant("torch", config.precisions[0] if vit else "fp32")
            how = "torch (no model-only measurement of this model and size)"
    size = config.size if vit else None
    log(f"end to end: building {config.model} ({variant.name}) and the naive baseline's featurizer ...")
    featurizer, description = _build_e2e(factory, config, frame_hw, size, variant)
    naive_variant = Variant("torch", "fp32")
    shared = variant == naive_variant or config.model == "sift"  # the same module serves both (same weights)
    if shared:
        naive_featurizer, naive_description = featurizer, description
    else:
        naive_featurizer, naive_description = _build_e2e(factory, config, frame_hw, size, naive_variant)
        if device.type == "cuda":
            naive_featurizer.to("cpu")
    match = default_match_config(config.model)
    off = StageClock(device, sync=False, enabled=False)
    warm = 2 * config.batch if device.type == "cuda" else 2  # a CPU has no kernels to tune
    run_points(featurizer, match, config.video, max(config.points), warm, config.batch, off)  # warm-up
    with _parked(naive_featurizer, device, shared):
        run_naive_points(naive_featurizer, config.video, 16, 1, off, min_score=match.min_score)  # warm-up
    written_points = 256 if 256 in config.points else config.points[len(config.points) // 2]

    # ours and the naive baseline alternate, so that both figures of a ratio see the same machine
    plan = [(f"points-{n}", "points", n, False) for n in config.points]
    plan += [(f"points-{written_points}+video", "points", written_points, True), ("mask", "mask", None, False)]
    runs = []
    for name, mode, n, write in plan:
        log(f"end to end: {name} ...")
        if mode == "points":
            fn = lambda clock, n=n, write=write: run_points(  # noqa: E731
                featurizer, match, config.video, n, config.frames, config.batch, clock, write=write
            )
            naive_fn = lambda clock, n=n, write=write: run_naive_points(  # noqa: E731
                naive_featurizer, config.video, n, config.naive_frames, clock, write=write, min_score=match.min_score
            )
            stages, naive_stages = POINT_STAGES[: 7 if write else 5], NAIVE_STAGES[: 6 if write else 4]
        else:
            fn = lambda clock: run_masks(  # noqa: E731
                featurizer, config.model, config.video, mask, config.frames, config.batch, clock
            )
            naive_fn = lambda clock: run_masks(  # noqa: E731
                naive_featurizer, config.model, config.video, mask, config.naive_frames, 1, clock
            )
            stages = naive_stages = MASK_STAGES
        run = _e2e_record(name, mode, n, write, *_run_both(fn, device, nvml), stages)
        log(f"  {run['fps']:.2f} frames/s, bottleneck {run['bottleneck']}; naive ...")
        with _parked(naive_featurizer, device, shared):
            run["naive"] = _e2e_record(name, mode, n, write, *_run_both(naive_fn, device, nvml), naive_stages)
        run["speedup_vs_naive"] = run["fps"] / run["naive"]["fps"]
        log(f"  naive {run['naive']['fps']:.3f} frames/s: ours {run['speedup_vs_naive']:.1f}x")
        runs.append(run)
    featurizer = naive_featurizer = None
    _free(device)
    return {
        "video": str(config.video),
        "frame_size": [info.width, info.height],
        "video_frames": info.num_frames,
        "model": config.model,
        "weights": _weights_label(config.weights, config.model),
        "input_size": [config.size, config.size] if vit else None,
        "variant": variant.name,
        "variant_choice": how,
        "featurizer": description,
        "batch": config.batch,
        "frames": config.frames,
        "naive": {
            "featurizer": naive_description,
            "frames": config.naive_frames,
            "definition": "one frame at a time, fp32 eager featurizer, the whole feature map bilinearly upsampled "
            "to the frame ([C, H, W]) and re-normalised, per point the descriptor read at its query pixel, then "
            "the cosine with every pixel and an argmax (points in chunks of 256); masks: the same propagation "
            "as ours with the fp32 eager featurizer one frame at a time (whole-frame label propagation at pixel "
            "level would need H*W x H*W similarities)",
        },
        "mask": config.mask or "centre box (middle third of the frame)",
        "runs": runs,
    }


@contextlib.contextmanager
def _parked(featurizer, device: torch.device, shared: bool):
    """On a GPU the naive baseline's own featurizer waits in host memory, so that it does not count in the GPU
    memory of our runs; it comes to the device for its runs, and its cached buffers are freed after them."""
    move = not shared and device.type == "cuda"
    if move:
        featurizer.to(device)
    try:
        yield
    finally:
        if move:
            featurizer.to("cpu")
            _free(device)


def _build_e2e(factory: Factory, config: BenchConfig, frame_hw, size, variant: Variant):
    if config.model == "sift":
        from tracker.backends import BackendOptions, build_featurizer

        return build_featurizer("sift", frame_hw, BackendOptions("torch", "fp32"), device=factory.device)
    return factory.build(config.model, frame_hw, size, variant, config.weights)


def _weights_label(weights: str | None, model: str) -> str:
    if model == "sift":
        return "none (sift has no weights)"
    if weights == "random":
        return "random (real architecture, random weights: speed only)"
    return weights or "table (cached)"


# --------------------------------------------------------------------------- the whole run


def run_bench(config: BenchConfig, log: Log = lambda line: None, command: str = "") -> dict:
    """Run the benchmark described by ``config``; returns the result dictionary (see ``docs/bench.md``)."""
    from tracker.bench.measure import Nvml, host_peak_rss_mib, machine_info, peak_tflops
    from tracker.bench.report import evaluate_targets

    device = torch.device(config.device)
    nvml = Nvml() if device.type == "cuda" else None  # before any CUDA work: its baseline is memory used by others
    if nvml is not None:
        nvml.select(device)
    machine = machine_info(device, nvml)
    peaks = peak_tflops(machine.get("gpu") or machine.get("gpu_torch_name")) if device.type == "cuda" else None
    started = datetime.datetime.now(datetime.UTC)
    report: dict = {
        "schema": SCHEMA,
        "speedup_vs_naive": None,
        "created": started.isoformat(timespec="seconds"),
        "command": command,
        "machine": machine,
        "settings": {**asdict(config), "model_only_weights": "random (speed does not depend on weight values)"},
        "flop_convention": "2 FLOPs per multiply-add; counted analytically: patch embedding, qkv / projection / "
        "MLP matmuls and attention QK^T and AV over N = patches + 1 class token + 4 registers; norms, "
        "softmax, GELU, biases and residuals (under 1%) not counted",
        "peak_tflops": {"table": peaks[0], "source": peaks[1]} if peaks else "unknown",
        "backends_unavailable": config.unavailable,
    }
    with tempfile.TemporaryDirectory(prefix="track-bench-") as tmp:
        factory = Factory(device, config.overrides, Path(tmp))
        records = run_model_only(config, factory, nvml, log) if "model" in config.sections else []
        add_ratios_and_peaks(records, peaks)
        report["model_only"] = records
        if "e2e" in config.sections:
            report["end_to_end"] = run_end_to_end(config, factory, records, nvml, log)
            main_run = next(
                (r for r in report["end_to_end"]["runs"] if r["name"] == "points-256"),
                None,
            )
            report["speedup_vs_naive"] = main_run["speedup_vs_naive"] if main_run else None
    report["memory"] = _memory_summary(report, host_peak_rss_mib())
    machine["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    report["seconds"] = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    report["targets"] = evaluate_targets(report)
    report["notes"] = _notes(report)
    return report


def _memory_summary(report: dict, lifetime_rss: float) -> dict:
    runs = report.get("end_to_end", {}).get("runs", [])
    main = next((r for r in runs if r["name"] == "points-256"), runs[len(runs) // 2] if runs else None)
    gpu = [r["memory"]["gpu_mib"] for r in runs if r["memory"]["gpu_mib"] is not None]
    gpu += [m["memory"]["gpu_mib"] for m in report["model_only"] if m.get("memory", {}).get("gpu_mib") is not None]
    return {
        "gpu_peak_mib_end_to_end": main["memory"]["gpu_mib"] if main else None,
        "gpu_peak_mib_end_to_end_run": main["name"] if main else None,
        "gpu_peak_mib_any_measurement": max(gpu) if gpu else None,
        "host_rss_peak_mib_end_to_end": main["memory"]["host_rss_mib"] if main else None,
        "host_rss_peak_mib_process": lifetime_rss,
        "how": "GPU: NVML, this process's memory (CUDA context, torch's cache, TensorRT's allocations) at its peak "
        "during each measurement; host: resident set size (psutil), polled every 20 ms",
    }


def _notes(report: dict) -> list[str]:
    machine = report["machine"]
    cores = machine["cpu_cores_logical"] or 1
    notes = []
    start = machine["load_average_at_start"][0]
    shares = [r["memory"].get("others_cpu_share") for r in report.get("model_only", []) if r.get("memory")]
    for run in report.get("end_to_end", {}).get("runs", []):
        shares += [run["memory"].get("others_cpu_share"), run["naive"]["memory"].get("others_cpu_share")]
    shares = [s for s in shares if s is not None]
    busiest = max(shares) if shares else 0.0
    if busiest > 0.1:
        notes.append(
            f"the machine was shared: other processes took up to {100 * busiest:.0f}% of all {cores} cores' time "
            f"during a measurement (the others' CPU column; 1-minute load average {start} at the start); those "
            "timings are disturbed (ours and the naive baseline alternate, so the ratios less so)"
        )
    elif shares:
        notes.append(
            f"other processes took at most {100 * busiest:.0f}% of all {cores} cores' time during any measurement "
            f"(the others' CPU column; 1-minute load average {start} at the start)"
        )
    s = report["settings"]
    if s["device"] == "cpu":
        larger = max(1, s["iters"] // 4)
        notes.append(
            f"CPU settings keep the run to minutes: {s['warmup']} warm-up call(s), up to {s['iters']} timed batch-1 "
            f"calls and {larger} per larger batch (at most {s['max_seconds']:g} s each); end to end "
            f"{s['frames'] or 'all'} frames per run, naive baseline {s['naive_frames']} frames per run"
            + ("; batch 32 not run (pass --batches 1,8,32)" if 32 not in s["batches"] else "")
        )
    if report["settings"]["weights"] == "random" or report["settings"]["model"] == "sift":
        notes.append("random weights of the real architecture: speed only (speed does not depend on weight values)")
    if report["settings"]["tiny"]:
        notes.append("--tiny: tiny widths of the real architecture (embed 48, depth 2, 2 heads): a smoke test")
    return notes


# --------------------------------------------------------------------------- command line


def build_parser():
    from tracker.apps.cli import Parser

    p = Parser(
        prog="track bench",
        description="Speed on this machine: model only (latency, throughput, TFLOP/s), end to end on a video "
        "(frames/s, stages, memory), against the naive baseline.",
    )
    p.add_argument("--model", default="distilldift", help="end-to-end model (default distilldift, ViT-B/14-reg4)")
    p.add_argument(
        "--weights",
        help="'random' (real architecture, random weights: speed does not depend on them) or local file(s); "
        "default: the cached weights of --model",
    )
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--backends", help="comma-separated: torch, onnx, tensorrt (default: all available here)")
    p.add_argument("--precisions", help="fp32, fp16, bf16 (default: fp16,bf16,fp32 on CUDA; fp32 on CPU)")
    p.add_argument("--compile", action="store_true", help="also measure torch.compile variants of the torch backend")
    p.add_argument(
        "--model-only-models", help="model-only architectures (default: dinov2-s and --model: ViT-S and ViT-B)"
    )
    p.add_argument("--sizes", "--model-only-sizes", help="model-only input sizes (default 224,434,518)")
    p.add_argument("--batches", help="model-only batch sizes (default 1,8,32 on CUDA; 1,8 on CPU)")
    p.add_argument("--video", help=f"end-to-end video (default {DEFAULT_VIDEO})")
    p.add_argument("--size", type=int, help="end-to-end input size (default 434)")
    p.add_argument("--batch", type=int, help="end-to-end frames per featurizer batch (default 8, as `track`)")
    p.add_argument("--points", help="end-to-end point counts (default 16,256,1024)")
    p.add_argument("--frames", type=int, help="end-to-end frames per run (default: the whole video on CUDA; 16 on CPU)")
    p.add_argument("--naive-frames", type=int, help="frames per naive-baseline run (default 32 on CUDA; 3 on CPU)")
    p.add_argument("--mask", help="first-frame mask PNG for mask mode (default: a centred box)")
    p.add_argument(
        "--e2e-backend",
        default="best",
        help="end-to-end backend[:precision], e.g. tensorrt:fp16 (default: the fastest model-only variant)",
    )
    p.add_argument("--warmup", type=int, help="untimed calls before timing (default 10 on CUDA, 1 on CPU)")
    p.add_argument("--iters", type=int, help="timed batch-1 calls (larger batches: a quarter; default 100 / 5)")
    p.add_argument("--max-seconds", type=float, help="stop timing one batch size after this long (default 10 / 20)")
    p.add_argument("--only", help="model or e2e (default: both)")
    p.add_argument("--quick", action="store_true", help="small settings for tests and CI (few calls, few frames)")
    p.add_argument("--tiny", action="store_true", help="tiny widths of the real architecture (tests, CI)")
    p.add_argument("--json", help="write the result: a .json file, or a folder (bench.json); .md and .png beside it")
    p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    return p


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise TrackerError(f"{option} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise TrackerError(f"{option} takes positive whole numbers, got {text!r}")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def config_from_args(args) -> BenchConfig:
    """Validate the options and fill the device-dependent defaults."""
    from tracker import weights as W
    from tracker.backends import PRECISIONS, available_backends
    from tracker.featurizers import MODEL_NAMES, VIT_MODELS

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TrackerError(f"--device must be cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrackerError("--device cuda: no CUDA GPU is available to torch on this machine")
    cuda = device.startswith("cuda")
    if args.model not in MODEL_NAMES or args.model == "auto":
        raise TrackerError(f"--model must be one of {', '.join(MODEL_NAMES[1:])}, got {args.model!r}")
    if args.model == "sift" and args.weights:
        raise TrackerError("--weights does not apply to sift (it has no weights)")

    status = available_backends(device)
    unavailable = {name: reason for name, reason in status.items() if reason}
    if args.backends:
        backends = _names(args.backends)
        for b in backends:
            if b not in status:
                raise TrackerError(f"--backends: unknown backend {b!r}; choose from {', '.join(status)}")
            if status[b]:
                raise TrackerError(f"--backends {b}: {status[b]}")
    else:
        backends = tuple(name for name, reason in status.items() if not reason)
    precisions = _names(args.precisions) if args.precisions else default_precisions(torch.device(device))
    for p in precisions:
        if p not in PRECISIONS:
            raise TrackerError(f"--precisions: unknown precision {p!r}; choose from {', '.join(PRECISIONS)}")
    if args.model_only_models:
        model_only = _names(args.model_only_models)
    else:
        model_only = ("dinov2-s", args.model if args.model in VIT_B_FAMILY else "distilldift")
    for m in model_only:
        if m not in VIT_MODELS:
            raise TrackerError(f"--model-only-models takes ViT models ({', '.join(VIT_MODELS)}), got {m!r}")
    sections = ("model", "e2e")
    if args.only:
        if args.only not in sections:
            raise TrackerError(f"--only must be model or e2e, got {args.only!r}")
        sections = (args.only,)

    quick = args.quick
    sizes = _ints(args.sizes, "--sizes") if args.sizes else ((224,) if quick else (224, 434, 518))
    batches = _ints(args.batches, "--batches") if args.batches else ((1, 8, 32) if cuda and not quick else (1, 8))
    size = args.size or 434
    if args.model != "sift" and size % 14:
        raise TrackerError(f"--size {size}: ViT input sides must be multiples of 14")
    for s in sizes:
        if s % 14:
            raise TrackerError(f"--sizes {s}: ViT input sides must be multiples of 14")
    points = _ints(args.points, "--points") if args.points else (16, 256, 1024)
    batch = args.batch or 8
    if batch < 1:
        raise TrackerError("--batch must be at least 1")
    frames = args.frames if args.frames is not None else (8 if quick else (None if cuda else 16))
    naive_frames = args.naive_frames if args.naive_frames is not None else (2 if quick else (32 if cuda else 3))
    if (frames is not None and frames < 1) or naive_frames < 1:
        raise TrackerError("--frames and --naive-frames must be at least 1")
    video = None
    if "e2e" in sections:
        video = args.video or str(DEFAULT_VIDEO)
        if not Path(video).exists():
            hint = "" if args.video else " (the default ../shared/data video is absent: give --video FILE)"
            raise TrackerError(f"video not found: {video}{hint}")
    if args.mask and not Path(args.mask).is_file():
        raise TrackerError(f"--mask {args.mask}: file not found")
    if args.e2e_backend != "best":
        v = Variant.parse(args.e2e_backend)
        if v.backend not in status or status[v.backend]:
            raise TrackerError(f"--e2e-backend {args.e2e_backend}: {status.get(v.backend, 'unknown backend')}")
        if v.precision and v.precision not in PRECISIONS:
            raise TrackerError(f"--e2e-backend {args.e2e_backend}: unknown precision {v.precision!r}")
    warmup = args.warmup if args.warmup is not None else (1 if quick or not cuda else 10)
    iters = args.iters if args.iters is not None else (3 if quick else (100 if cuda else 5))
    max_seconds = args.max_seconds if args.max_seconds is not None else (2.0 if quick else (10.0 if cuda else 20.0))
    if warmup < 0 or iters < 1 or max_seconds <= 0:
        raise TrackerError("--warmup must be >= 0, --iters >= 1 and --max-seconds > 0")
    if args.model in VIT_MODELS and not args.weights and "e2e" in sections:
        spec = W.get_spec(args.model)
        missing = [kind for kind, path in W.weights_status(spec).items() if path is None]
        if missing:
            raise TrackerError(
                f"{args.model} weights are not cached ({', '.join(missing)} missing); speed does not depend on "
                f"weight values, so `--weights random` measures it honestly (and is recorded), or "
                f"{W.how_to_get(spec)}"
            )
    return BenchConfig(
        model=args.model,
        weights=args.weights,
        device=device,
        backends=backends,
        precisions=precisions,
        compile=args.compile,
        model_only_models=model_only,
        sizes=sizes,
        batches=batches,
        video=video,
        size=size,
        batch=batch,
        points=points,
        frames=frames,
        naive_frames=naive_frames,
        mask=args.mask,
        e2e_backend=args.e2e_backend,
        warmup=warmup,
        iters=iters,
        max_seconds=max_seconds,
        sections=sections,
        tiny=args.tiny,
        unavailable=unavailable,
    )


def output_paths(target: str) -> tuple[Path, Path, Path]:
    """``(json, md, png)`` for ``--json``: a ``.json`` file, or a folder that gets ``bench.json``."""
    path = Path(target)
    if path.suffix.lower() != ".json":
        path = path / "bench.json"
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise TrackerError(f"--json {target}: {folder} is not a folder")
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise TrackerError(f"--json {target}: cannot write to {folder}")
    return path, path.with_suffix(".md"), path.with_suffix(".png")


def main(argv: list[str]) -> int:
    from tracker.bench.report import plot_png, summary_lines, to_markdown
    from tracker.io.atomic import atomic_write

    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    paths = output_paths(args.json) if args.json else None

    def log(line: str) -> None:
        if not args.no_progress:
            print(f"bench: {line}", file=sys.stderr, flush=True)

    report = run_bench(config, log, command=" ".join(["track", "bench", *argv]))
    for line in summary_lines(report):
        print(line)
    if paths is not None:
        json_path, md_path, png_path = paths
        atomic_write(json_path, (json.dumps(report, indent=1, default=_jsonable) + "\n").encode())
        atomic_write(md_path, to_markdown(report).encode())
        atomic_write(png_path, plot_png(report))
        print(f"wrote {json_path}, {md_path.name}, {png_path.name}")
    return 0


def _jsonable(value):
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
