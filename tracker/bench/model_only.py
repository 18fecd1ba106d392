"""``track bench``'s model-only part: each featurizer variant alone on frames already on the device at its input
size, batch-1 latency (p50 / p90 / p99) and throughput at larger batches, GFLOP per frame, achieved TFLOP/s and
the fraction of the card's peak, and ratios against the naive featurizer (torch fp32 eager, batch 1).

torch is imported inside the functions that need it.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from tracker.bench.config import ARCH_LABEL, BenchConfig, Factory, Log, Variant, _free
from tracker.errors import TrackerError

if TYPE_CHECKING:
    import torch


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
    import torch

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
