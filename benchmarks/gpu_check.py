"""One GPU check for issue 14: every torch path measured in one short run, written as one JSON and markdown.

    benchmarks/gpu_check.sh              # on the GPU machine: at most 8 minutes, results under $OUT
    benchmarks/gpu_check.sh --dry-run    # on a CPU, tiny models, seconds (CI; tests/test_bench.py runs it)

Sections, each timed, each recorded even when it fails (one line and the traceback's tail) or when the time
budget left is too short for it (``skipped``); the file is rewritten after every section, so a run cut short
still leaves what it measured:

- ``environment``: torch, CUDA, GPU, driver, the backends available and why the others are not. TensorRT and
  onnxruntime-gpu are not measured here: on the machine this script is prepared for they are not installed and
  their wheels (hundreds of MB) exceed what can be carried to it (64 MiB), so every torch path is measured.
- ``model``: ViT-B/14-reg4 at 434 (random weights: speed does not depend on values), fp16 and bf16, eager, eager
  replayed as a CUDA graph, ``torch.compile`` and ``torch.compile(mode="reduce-overhead")`` (CUDA graphs):
  batch-1 latency p50/p90/p99 (CUDA events), batch 8 and 32 throughput, achieved TFLOP/s and the fraction of
  the card's dense peak, compile time, torch and NVML memory peaks, features' cosine against fp32 eager; and
  which attention kernels ran (the fused SDPA kernels, not a matmul-softmax-matmul).
- ``tail``: the compiled path given 8, then 3, then 8 frames (the tail batch is padded to the shape compiled,
  :class:`tracker.backends.PaddedBatches`): no new graph compiled, features equal to eager.
- ``step``: :func:`tracker.matching.match_batch` (256 points, batch 8, a 31x31 grid of 768 channels) under
  ``torch.cuda.set_sync_debug_mode("error")`` (any host sync raises), against the per-frame matcher's time.
- ``readers``: decode frames/s of each installed reader on the clip (OpenCV, torchcodec on CPU and NVDEC,
  decord).
- ``end_to_end``: ``track bench``'s end-to-end section (:func:`tracker.bench.runner.run_bench`) on the 720p clip
  (``../shared/data/videos/01_dog.mp4``, else a generated 1280x720 clip) with 256 points, with and without
  the overlay video, and masks; frames/s, the stage breakdown, NVML and torch memory peaks.
- ``targets``: the issue's targets against what was measured (``unmeasured`` where a section did not run).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SCHEMA = "semantic-tracker/gpu-check/1"
TINY = {"embed_dim": 48, "depth": 2, "num_heads": 2}
TARGETS = {  # issue 14: H200, ViT-B/14 at 434, torch fp16 compiled with CUDA graphs; end to end 720p, 256 points
    "batch1_p50_ms": ("<=", 1.5),
    "batch32_fps": (">=", 1500.0),
    "e2e_fps_no_render": (">=", 300.0),
    "e2e_fps_overlay": (">=", 100.0),
    "gpu_peak_mib": ("<=", 2048.0),
}
# Seconds a section is expected to need on the GPU (skipped when less budget is left); dry runs ignore them.
EXPECTED_S = {"model": 40, "model_compiled": 90, "tail": 40, "step": 10, "readers": 20, "end_to_end": 150}


class Check:
    """Runs sections against a time budget and writes the results after each one."""

    def __init__(self, out: Path, name: str, budget_s: float, dry_run: bool, command: str):
        self.out, self.name, self.dry_run = out, name, dry_run
        self.deadline = time.monotonic() + budget_s
        self.started = time.monotonic()
        self.report: dict = {
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "command": command,
            "dry_run": dry_run,
            "budget_s": budget_s,
            "sections": {},
        }

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, name: str, fn, *args) -> dict | None:
        expected = 0 if self.dry_run else EXPECTED_S.get(name, 30)
        if self.left() < expected:
            self.report["sections"][name] = {"status": "skipped", "why": f"{self.left():.0f} s of budget left"}
            self.write()
            return None
        t0 = time.monotonic()
        try:
            result = fn(*args)
            entry = {"status": "ok", **result}
        except KeyboardInterrupt:
            self.report["sections"][name] = {"status": "interrupted", "seconds": round(time.monotonic() - t0, 1)}
            self.write()
            raise
        except Exception as exc:  # noqa: BLE001 - one section failing must not lose the others
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            entry = {
                "status": "error",
                "error": f"{type(exc).__name__}: {line}",
                "traceback_tail": traceback.format_exc().strip().splitlines()[-6:],
            }
        entry["seconds"] = round(time.monotonic() - t0, 1)
        self.report["sections"][name] = entry
        self.write()
        return entry if entry["status"] == "ok" else None

    def write(self) -> None:
        from tracker.io.atomic import atomic_write

        self.report["seconds"] = round(time.monotonic() - self.started, 1)
        self.report["targets"] = targets(self.report)
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write(self.out / f"{self.name}.json", (json.dumps(self.report, indent=1, default=str) + "\n").encode())
        atomic_write(self.out / f"{self.name}.md", to_markdown(self.report).encode())


# --------------------------------------------------------------------------- sections


def environment(device) -> dict:
    import torch

    from tracker.backends import available_backends

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "device": str(device),
        "cpu_cores": os.cpu_count(),
        "backends": {k: v or "available" for k, v in available_backends(device).items()},
        "packages": {
            name: _version(name)
            for name in ("timm", "numpy", "opencv-python-headless", "opencv-python", "onnx", "onnxruntime")
            + ("onnxruntime-gpu", "tensorrt", "torchcodec", "decord", "kornia", "psutil", "nvidia-ml-py")
        },
        "not_measured": "TensorRT and onnxruntime-gpu: not installed on the machine this check is prepared for, "
        "and their wheels (hundreds of MB) exceed the 64 MiB that can be carried to it; their targets (batch-1 "
        "<= 1.0 ms, batch 32 >= 2,000 frames/s) stay unmeasured",
    }
    if device.type == "cuda":
        from tracker.bench.measure import Nvml

        props = torch.cuda.get_device_properties(device)
        info.update(
            gpu=props.name,
            gpu_memory_mib=round(props.total_memory / 2**20),
            compute_capability=f"{props.major}.{props.minor}",
            sm_count=props.multi_processor_count,
        )
        nvml = Nvml()
        nvml.select(device)
        info["nvml"] = nvml.describe() if nvml.handle is not None else "unavailable"
    return info


def model_section(ctx: dict, compiled: bool) -> dict:
    """Model-only timings of the torch paths (eager and CUDA graphs; or the two compiled modes)."""
    import torch

    from tracker.bench.measure import MemoryMonitor, peak_tflops, time_calls, vit_flops

    device, dry = ctx["device"], ctx["dry_run"]
    featurizer = ctx["featurizer"].to(device)  # built on the CPU: the end-to-end section's memory is its own
    flops = vit_flops(featurizer.model, featurizer.input_hw)
    peaks = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    precisions = ("fp16", "bf16") if device.type == "cuda" else ("fp32", "bf16")
    if compiled:
        precisions = precisions[:1] if not dry else ()
    modes = ("compile+cudagraphs", "compile") if compiled else ("eager", "cudagraph")  # the target's path first
    h, w = featurizer.input_hw
    gen = torch.Generator(device="cpu").manual_seed(0)
    inputs = {b: torch.randn(b, 3, h, w, generator=gen).to(device) for b in ctx["batches"]}
    reference = _features(featurizer, torch.float32, "eager", inputs[8]) if 8 in inputs else None
    records = []
    for precision in precisions:
        for mode in modes:
            if mode in ("cudagraph", "compile+cudagraphs") and device.type != "cuda":
                records.append({"precision": precision, "mode": mode, "skipped": "needs CUDA"})
                continue
            if compiled and ctx["left"]() < 60:
                records.append({"precision": precision, "mode": mode, "skipped": "time budget"})
                continue
            if compiled:
                torch._dynamo.reset()  # a fresh cache: the other mode's graphs are not reused
            record = {"precision": precision, "mode": mode, "batches": {}}
            dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
            for b, x in inputs.items():
                t0 = time.perf_counter()
                fn = _callable(featurizer, dtype, mode, x)
                fn()
                _sync(device)
                first = time.perf_counter() - t0
                iters = ctx["iters"] if b == 1 else max(3, ctx["iters"] // 4)
                with MemoryMonitor(ctx["nvml"], device) as mem:
                    timing = time_calls(fn, device, warmup=ctx["warmup"], iters=iters, max_seconds=ctx["max_s"])
                tflops = flops.total * b / (timing.p50 / 1000) / 1e12
                peak = peaks[0].get(precision) if peaks else None
                record["batches"][str(b)] = {
                    "ms": {"p50": timing.p50, "p90": timing.p90, "p99": timing.p99, "n": timing.n},
                    "clock": timing.clock,
                    "fps": 1000 * b / timing.p50,
                    "tflops": tflops,
                    "fraction_of_peak": tflops / peak if peak else None,
                    "first_call_s": round(first, 2),  # compile or capture time included
                    "gpu_peak_mib_nvml": mem.peak.gpu_mib,
                    "torch_allocated_peak_mib": mem.peak.torch_allocated_mib,
                }
                if b == 8 and reference is not None:
                    got = fn() if mode != "cudagraph" else (fn(), ctx["graph_out"])[1]
                    record["cosine_vs_fp32_eager_min"] = _cosine_min(got, reference)
                del fn
                _reset(featurizer)
            records.append(record)
    out = {
        "model": f"{featurizer.name} (ViT-B/14-reg4)" if not dry else f"{featurizer.name} tiny {TINY}",
        "input_hw": list(featurizer.input_hw),
        "gflop_per_frame": flops.gflop,
        "peak_tflops": peaks[0] if peaks else None,
        "peak_source": peaks[1] if peaks else None,
        "weights": "random (speed does not depend on weight values; cosines are of random-weight features)",
        "records": records,
    }
    if not compiled:
        out["attention_kernels"] = _attention_kernels(featurizer, inputs[1], device)
    return out


def tail_section(ctx: dict) -> dict:
    """Batches 8, 3, 8 through the compiled path: the tail is padded to 8, so nothing recompiles."""
    import torch

    from tracker.backends import PaddedBatches

    featurizer, device = ctx["featurizer"].to(ctx["device"]), ctx["device"]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    h, w = featurizer.input_hw
    x = torch.randn(8, 3, h, w, generator=torch.Generator().manual_seed(1)).to(device)
    featurizer.set_precision(dtype)
    eager = featurizer.features(x).float()
    eager3 = featurizer.features(x[:3]).float()
    if ctx["dry_run"]:  # compiling on a CPU takes minutes: the padding itself is checked, eagerly
        mode, fn = "eager (dry run)", featurizer.model.forward_features
    else:
        mode = "reduce-overhead"
        fn = torch.compile(featurizer.model.forward_features, mode=mode, dynamic=False)
    padded = PaddedBatches(fn, (1, 8))
    featurizer._tokens = padded
    try:
        import torch._dynamo.utils as dynamo_utils

        counters = dynamo_utils.counters
        outs = [featurizer.features(x).float().clone()]
        graphs_after_first = sum(counters["stats"].values()) if "stats" in counters else None
        outs.append(featurizer.features(x[:3]).float().clone())
        outs.append(featurizer.features(x).float().clone())
        graphs_after = sum(counters["stats"].values()) if "stats" in counters else None
    finally:
        _reset(featurizer)
    return {
        "mode": mode,
        "shapes_run": sorted(padded.shapes),
        "dynamo_stats_after_first_batch": graphs_after_first,
        "dynamo_stats_after_8_3_8": graphs_after,
        "recompiled_for_tail": graphs_after != graphs_after_first if graphs_after is not None else None,
        "cosine_min_vs_eager": [_cosine_min(outs[0], eager), _cosine_min(outs[1], eager3), _cosine_min(outs[2], eager)],
    }


def step_section(ctx: dict) -> dict:
    """The batched matching step: no host sync (CUDA's sync debug mode raises on one), and its speed."""
    import torch
    import torch.nn.functional as F

    from tracker.bench.measure import time_calls
    from tracker.matching import MatchConfig, forward_backward_ok, match, match_batch

    device = ctx["device"]
    b, n, c, h, w = (8, 256, 768, 31, 31) if not ctx["dry_run"] else (4, 32, 48, 9, 9)
    g = torch.Generator().manual_seed(0)
    smooth = F.avg_pool2d(torch.randn(b + 1, c, h + 4, w + 4, generator=g), 5, 1)  # correlated neighbours
    grids = F.normalize(smooth + 0.05 * torch.randn(b + 1, c, h, w, generator=g), dim=1).to(device)
    query_uv = torch.stack([torch.rand(n, generator=g) * (w - 1), torch.rand(n, generator=g) * (h - 1)], 1).to(device)
    from tracker.matching import sample_descriptors

    descriptors = sample_descriptors(grids[0], query_uv)
    query_index = torch.zeros(n, dtype=torch.long, device=device)
    config = MatchConfig()

    def batched():
        return match_batch(grids[1:], descriptors, config, grids[:1], query_index, query_uv)

    def per_frame():
        out = []
        for f in grids[1:]:
            found = match(descriptors, f, config)
            ok = forward_backward_ok(found.uv, f, grids[0], query_uv, config) & (found.score >= config.min_score)
            out.append((found.uv.cpu(), ok.cpu()))  # what the per-frame tracker step copies back each frame
        return out

    result = batched()
    want = per_frame()
    equal = all(
        torch.allclose(result.uv[i].cpu(), want[i][0], atol=1e-3) and torch.equal(result.visible[i].cpu(), want[i][1])
        for i in range(b)
    )
    sync_free = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            batched()
            sync_free = True
        except RuntimeError as exc:
            sync_free = f"no: {str(exc).splitlines()[0]}"
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def batched_to_host():
        r = batched()
        return r.uv.cpu(), r.visible.cpu()  # one copy back per batch

    t_batched = time_calls(batched_to_host, device, warmup=ctx["warmup"], iters=ctx["iters"], max_seconds=ctx["max_s"])
    t_frame = time_calls(per_frame, device, warmup=ctx["warmup"], iters=ctx["iters"], max_seconds=ctx["max_s"])
    return {
        "shape": {"batch": b, "points": n, "channels": c, "grid": [h, w]},
        "equal_to_per_frame": equal,
        "sync_free_under_cuda_sync_debug_mode": sync_free
        if device.type == "cuda"
        else "n/a on CPU (tests/test_step.py)",
        "ms_per_batch": {"batched": t_batched.p50, "per_frame": t_frame.p50},
        "speedup": t_frame.p50 / t_batched.p50,
    }


def readers_section(ctx: dict) -> dict:
    from tracker.bench.measure import measure_readers

    limit = 60 if not ctx["dry_run"] else 12
    return {"video": str(ctx["video"]), "frames": limit, "readers": measure_readers(ctx["video"], limit, ctx["device"])}


def e2e_section(ctx: dict) -> dict:
    from tracker.bench.config import BenchConfig
    from tracker.bench.runner import run_bench

    dry = ctx["dry_run"]
    cuda = ctx["device"].type == "cuda"
    config = BenchConfig(
        model="distilldift",
        weights="random",
        device=str(ctx["device"]),
        backends=("torch",),
        precisions=("fp16",) if cuda else ("fp32",),
        compile=cuda,
        sections=("e2e",),
        video=str(ctx["video"]),
        size=ctx["size"],
        batch=8,
        points=(256,) if not dry else (16,),
        frames=None if not dry else 4,
        naive_frames=8 if not dry else 1,
        e2e_backend="torch+compile:fp16" if cuda else "torch:fp32",
        warmup=10 if not dry else 1,
        iters=20 if not dry else 2,
        max_seconds=5.0 if not dry else 1.0,
        tiny=dry,
    )
    report = run_bench(config, log=lambda line: print(f"gpu_check: e2e: {line}", file=sys.stderr, flush=True))
    e2e = report["end_to_end"]
    runs = {
        r["name"]: {
            "fps": r["fps"],
            "bottleneck": r.get("bottleneck"),
            "stages_ms_per_frame": r.get("stages_ms_per_frame"),
            "memory": r.get("memory"),
            "naive_fps": r["naive"]["fps"],
        }
        for r in e2e["runs"]
    }
    return {
        "video": e2e["video"],
        "frame_size": e2e["frame_size"],
        "featurizer": e2e["featurizer"],
        "runs": runs,
        "memory": report.get("memory"),
    }


# --------------------------------------------------------------------------- helpers


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _has_compiler() -> bool:
    import shutil

    return shutil.which("g++") is not None or shutil.which("c++") is not None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset(featurizer) -> None:
    import torch

    featurizer._tokens = featurizer.model.forward_features
    featurizer.set_precision(torch.float32)


def _features(featurizer, dtype, mode, x):
    featurizer.set_precision(dtype)
    out = featurizer.features(x).float()
    _reset(featurizer)
    return out


def _callable(featurizer, dtype, mode: str, x):
    """A no-argument call of the featurizer on ``x`` in ``mode``."""
    import torch

    featurizer.set_precision(dtype)
    if mode == "eager":
        return lambda: featurizer.features(x)
    if mode == "compile":
        featurizer._tokens = torch.compile(featurizer.model.forward_features, mode="default", dynamic=False)
        return lambda: featurizer.features(x)
    if mode == "compile+cudagraphs":
        featurizer._tokens = torch.compile(featurizer.model.forward_features, mode="reduce-overhead", dynamic=False)

        def call():
            torch.compiler.cudagraph_mark_step_begin()
            return featurizer.features(x)

        return call
    if mode == "cudagraph":  # eager kernels captured once, replayed
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):
                featurizer.features(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            out = featurizer.features(x)
        CTX["graph_out"] = out
        return graph.replay
    raise ValueError(mode)


CTX: dict = {}


def _cosine_min(a, b) -> float:
    import torch.nn.functional as F

    return float(F.cosine_similarity(a.float(), b.float(), dim=1).min())


def _attention_kernels(featurizer, x, device) -> dict:
    """Which attention kernels run (fp16 on a GPU): their names, from the profiler."""
    import torch

    if device.type != "cuda":
        return {"skipped": "needs CUDA (tests/test_onnx.py checks the fused SDPA op runs on the CPU)"}
    featurizer.set_precision(torch.float16)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof, torch.inference_mode():
        featurizer.features(x)
        torch.cuda.synchronize(device)
    _reset(featurizer)
    names = sorted({e.key for e in prof.key_averages()})
    attention = [n for n in names if any(k in n.lower() for k in ("flash", "fmha", "attention", "sdpa", "softmax"))]
    return {"kernels": attention, "fused": any(k in " ".join(attention).lower() for k in ("flash", "fmha"))}


def targets(report: dict) -> dict:
    sections = report["sections"]
    measured: dict[str, float | None] = dict.fromkeys(TARGETS)
    comp = sections.get("model_compiled", {})
    for r in comp.get("records", []) if comp.get("status") == "ok" else []:
        if r.get("precision") == "fp16" and r.get("mode") == "compile+cudagraphs":
            measured["batch1_p50_ms"] = r["batches"].get("1", {}).get("ms", {}).get("p50")
            measured["batch32_fps"] = r["batches"].get("32", {}).get("fps")
    e2e = sections.get("end_to_end", {})
    if e2e.get("status") == "ok":
        runs = e2e["runs"]
        plain = next((v for k, v in runs.items() if k.startswith("points-") and not k.endswith("+video")), None)
        video = next((v for k, v in runs.items() if k.endswith("+video")), None)
        measured["e2e_fps_no_render"] = plain["fps"] if plain else None
        measured["e2e_fps_overlay"] = video["fps"] if video else None
        mem = e2e.get("memory") or {}
        measured["gpu_peak_mib"] = mem.get("gpu_peak_mib_end_to_end")
    out = {}
    for key, (op, goal) in TARGETS.items():
        value = measured[key]
        if value is None:
            out[key] = {"target": f"{op} {goal:g}", "measured": None, "met": "unmeasured"}
        else:
            met = value <= goal if op == "<=" else value >= goal
            if report.get("dry_run"):
                met = "not judged (dry run)"
            out[key] = {"target": f"{op} {goal:g}", "measured": round(value, 3), "met": met}
    if report.get("dry_run"):
        out["note"] = "dry run: tiny models on a CPU; the targets are for an H200 and are not judged here"
    return out


def to_markdown(report: dict) -> str:
    lines = [f"# GPU check ({'dry run, CPU, tiny models' if report['dry_run'] else 'GPU'})", ""]
    lines.append(f"`{report['command']}`, {report['created']}, {report.get('seconds', 0):.0f} s")
    lines.append("")
    env = report["sections"].get("environment", {})
    if env.get("status") == "ok":
        lines.append(
            f"torch {env['torch']} (CUDA {env['torch_cuda']}), {env.get('gpu', env['device'])}, python {env['python']}"
        )
        lines += [f"- backend {k}: {v}" for k, v in env["backends"].items()]
        lines.append(f"- not measured: {env['not_measured']}")
        lines.append("")
    lines += ["## Targets", "", "| target | goal | measured | met |", "| --- | --- | --- | --- |"]
    for key, t in report["targets"].items():
        if key != "note":
            lines.append(f"| {key} | {t['target']} | {t['measured']} | {t['met']} |")
    if "note" in report["targets"]:
        lines += ["", report["targets"]["note"]]
    for name in ("model", "model_compiled"):
        sec = report["sections"].get(name, {})
        if sec.get("status") != "ok":
            continue
        lines += ["", f"## {name} ({sec['model']}, {sec['input_hw'][1]}x{sec['input_hw'][0]})", ""]
        lines += ["| precision | mode | batch | p50 ms | p99 ms | frames/s | TFLOP/s | of peak |", "|" + " --- |" * 8]
        for r in sec["records"]:
            if "skipped" in r:
                lines.append(f"| {r['precision']} | {r['mode']} | skipped: {r['skipped']} | | | | | |")
                continue
            for b, v in r["batches"].items():
                frac = f"{100 * v['fraction_of_peak']:.0f}%" if v["fraction_of_peak"] else "-"
                lines.append(
                    f"| {r['precision']} | {r['mode']} | {b} | {v['ms']['p50']:.3f} | {v['ms']['p99']:.3f} | "
                    f"{v['fps']:.1f} | {v['tflops']:.2f} | {frac} |"
                )
    for name, sec in report["sections"].items():
        if name in ("environment", "model", "model_compiled"):
            continue
        lines += ["", f"## {name}: {sec.get('status')}", ""]
        body = {k: v for k, v in sec.items() if k not in ("status",)}
        lines += ["```json", json.dumps(body, indent=1, default=str)[:4000], "```"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny models, a small clip: seconds (CI)")
    p.add_argument("--out", help="folder for the results (default $OUT, else benchmarks/results)")
    p.add_argument("--budget-s", type=float, help="seconds for the whole check (default 450; dry run 120)")
    p.add_argument("--device", help="default cuda when available (dry run: cpu)")
    p.add_argument("--video", help="end-to-end and reader clip (default ../shared/data/videos/01_dog.mp4)")
    args = p.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or REPO / "benchmarks" / "results")
    name = "gpu_check_dry_run" if args.dry_run else "gpu_check"
    command = " ".join(["benchmarks/gpu_check.py", *(argv if argv is not None else sys.argv[1:])])
    check = Check(out, name, args.budget_s or (120.0 if args.dry_run else 450.0), args.dry_run, command)

    import torch

    from tracker.featurizers import create_featurizer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda: no CUDA GPU is available to torch", file=sys.stderr)
        return 2
    dry = args.dry_run
    if not dry and device.type != "cuda":
        print("gpu_check: no CUDA GPU here; run with --dry-run on a CPU", file=sys.stderr)
        return 2
    if dry:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp, torch.inference_mode():
        video, real = _clip(args.video, Path(tmp), dry)
        size = 56 if dry else 434
        torch.manual_seed(0)
        featurizer = create_featurizer(  # on the CPU until the model sections need it
            "distilldift", (720, 1280), size=str(size), weights="random", **(TINY if dry else {})
        )
        CTX.update(
            device=device,
            dry_run=dry,
            featurizer=featurizer,
            nvml=None,  # made after the end-to-end section (which makes its own before touching the GPU)
            batches=(1, 8, 32) if not dry else (1, 8),
            warmup=10 if not dry else 1,
            iters=100 if not dry else 3,
            max_s=3.0 if not dry else 0.5,
            video=video,
            video_is_real=real,
            size=size,
        )
        CTX["left"] = check.left
        # the end-to-end run first, before anything here creates a CUDA context: its GPU memory peak (the <= 2 GB
        # target) is then its own, also where NVML sees only the device (used minus what was used before); the
        # long compiles last
        check.run("end_to_end", e2e_section, CTX)
        check.run("environment", environment, device)
        if device.type == "cuda":
            from tracker.bench.measure import Nvml

            CTX["nvml"] = Nvml()
            CTX["nvml"].select(device)
        check.run("model", model_section, CTX, False)
        check.run("step", step_section, CTX)
        check.run("readers", readers_section, CTX)
        check.run("model_compiled", model_section, CTX, True)
        check.run("tail", tail_section, CTX)
    print(f"gpu_check: wrote {out / (name + '.json')} and {name}.md ({check.report['seconds']:.0f} s)")
    failed = [k for k, v in check.report["sections"].items() if v["status"] == "error"]
    if failed:
        print(f"gpu_check: sections that failed: {', '.join(failed)} (see the JSON)", file=sys.stderr)
    return 1 if failed else 0


def _clip(given: str | None, tmp: Path, dry: bool) -> tuple[Path, bool]:
    """The clip for the readers and the end-to-end section: given, the shared 720p dog clip, or generated."""
    from tracker.bench.config import DEFAULT_VIDEO

    if given:
        return Path(given), True
    if DEFAULT_VIDEO.exists() and not dry:
        return DEFAULT_VIDEO, True
    from tracker.synthetic import moving_objects, write_video

    size, frames = ((96, 128), 16) if dry else ((720, 1280), 120)
    path = tmp / "clip.mp4"
    write_video(str(path), moving_objects(num_frames=frames, size=size).frames)
    return path, False


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
