"""`track bench` on the CPU with a tiny model of the real architecture: well-formed results, not speed."""

import contextlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from tracker.apps.cli import main
from tracker.bench import command, runner
from tracker.bench.e2e import NaivePointTracker
from tracker.bench.measure import Timing, peak_tflops, time_calls, vit_flops
from tracker.synthetic import moving_objects, write_video
from tracker.tracking import Queries
from tracker.weight_loading import create_vit

TINY = dict(embed_dim=48, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(str(path), moving_objects(num_frames=10, size=(120, 160)).frames)
    return path


# the op kinds of a ViT's forward as torch.utils.flop_counter counts them, and the analytic parts they stand for
KIND_OF_OP = {"convolution": "patch_embed", "addmm": "linear", "mm": "linear", "bmm": "attention"}
ANALYTIC_KIND = {"patch_embed": "patch_embed", "qkv": "linear", "proj": "linear", "mlp": "linear"}


class _FusedAttentionKernels(TorchDispatchMode):
    """Records the fused scaled-dot-product attention kernels a forward runs (aten ops, not their decompositions)."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if "scaled_dot_product" in name and "backward" not in name:
            self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)  # torch's definition: QK^T and AV, 2 per mul-add


def torch_flops_by_kind(model, hw) -> dict[str, int]:
    """``forward_features`` FLOPs as torch's FlopCounterMode counts them by definition (2 per multiply-add of
    every matmul and convolution), by kind: convolution, linear layers (mm / addmm), attention.

    The attention runs as bmm's (math kernel) or as a fused kernel. Fused kernels are counted with torch's own
    sdpa formula: releases differ in which of them their counter registers (2.14 leaves out the CPU's
    ``_scaled_dot_product_flash_attention_for_cpu``), not in what an attention costs.
    """
    x = torch.randn(1, 3, *hw)
    with torch.no_grad(), _FusedAttentionKernels() as fused:
        model.forward_features(x)
    mapping = {op: _sdpa_flops for op in fused.ops}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model.forward_features(x)
    kinds = {"patch_embed": 0, "linear": 0, "attention": 0}
    for op, flops in counter.get_flop_counts()["Global"].items():
        kinds["attention" if op in fused.ops else KIND_OF_OP[op.__name__]] += flops  # op: aten OpOverloadPacket
    return kinds


@pytest.mark.parametrize("attention", ["default", "math"])
@pytest.mark.parametrize(
    "arch,hw", [("vit_small_patch14_reg4_dinov2", (56, 70)), ("vit_base_patch14_reg4_dinov2", (28, 28))]
)
def test_analytic_flops_equal_torch_flop_counter(arch, hw, attention):
    """Our count per frame against torch's count of the same operations, part by part, through the fused
    attention kernel this machine picks and through the math kernel (plain bmm's)."""
    model = create_vit(arch, hw, **TINY).eval()
    counted = vit_flops(model, hw)
    expected = {"patch_embed": 0, "linear": 0, "attention": counted.parts["attention"]}
    for part, kind in ANALYTIC_KIND.items():
        expected[kind] += counted.parts[part]
    with sdpa_kernel(SDPBackend.MATH) if attention == "math" else contextlib.nullcontext():
        assert torch_flops_by_kind(model, hw) == expected
    assert counted.total == sum(expected.values())
    assert counted.tokens == (hw[0] // 14) * (hw[1] // 14) + 5  # class token + 4 registers


def test_vit_b_434_gflop_per_frame():
    with torch.device("meta"):
        model = create_vit("vit_base_patch14_reg4_dinov2", (434, 434))
    count = vit_flops(model, (434, 434))
    assert count.tokens == 31 * 31 + 5
    assert count.gflop == pytest.approx(199.36, abs=0.01)


def test_peak_table_matches_device_names():
    assert peak_tflops("NVIDIA H200")[0]["fp16"] == 989.4
    assert peak_tflops("NVIDIA H100 80GB HBM3")[0]["tf32"] == 494.7
    assert peak_tflops("NVIDIA A100-SXM4-80GB")[0]["bf16"] == 312.0
    assert peak_tflops("NVIDIA A10")[0]["fp16"] == 125.0
    assert peak_tflops("NVIDIA A10G") is None and peak_tflops("AMD EPYC") is None and peak_tflops(None) is None


def test_time_calls_on_cpu():
    t = time_calls(lambda: sum(range(1000)), torch.device("cpu"), warmup=1, iters=20)
    assert isinstance(t, Timing) and t.n == 20 and t.clock == "wall"
    assert 0 < t.min <= t.p50 <= t.p90 <= t.p99


def test_naive_baseline_finds_the_query_pixel_on_the_query_frame():
    from tracker import create_featurizer

    video = moving_objects(num_frames=2, size=(96, 128))
    featurizer = create_featurizer("sift", (96, 128), size="64")
    queries = Queries.create([[40.0, 30.0], [100.0, 70.0]])
    first = next(NaivePointTracker(featurizer).track(video.frames, queries))
    assert first.xy.shape == (2, 2) and torch.allclose(first.xy, queries.xy)
    assert first.visible.all()


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0 and np.isfinite(x)


def test_bench_writes_well_formed_results(tiny_video, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "results"
    code = main(
        ["bench", "--tiny", "--quick", "--model", "distilldift", "--model-only-models", "dinov2-s,distilldift",
         "--weights", "random", "--device", "cpu", "--sizes", "56", "--size", "56",
         "--batches", "1,8", "--points", "16,256", "--video", str(tiny_video), "--json", str(out), "--no-progress"]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "bench.json").read_text())
    assert (out / "bench.md").read_text().startswith("# `track bench` on cpu-")
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "speedup_vs_naive" in capsys.readouterr().out

    assert _positive(report["speedup_vs_naive"])
    machine = report["machine"]
    for key in ("cpu", "cpu_cores_logical", "ram_gib", "torch", "timm", "onnxruntime", "label"):
        assert machine[key]
    assert report["settings"]["weights"] == "random" and report["settings"]["tiny"]

    records = report["model_only"]
    assert {(r["model"], r["backend"]) for r in records} >= {("dinov2-s", "torch"), ("distilldift", "onnx")}
    for r in records:
        assert r["status"] == "ok", r["status"]
        assert _positive(r["gflop_per_frame"]) and r["tokens"] == 4 * 4 + 5
        assert all(_positive(r["latency_ms"][k]) for k in ("p50", "p90", "p99"))
        assert set(r["batches"]) == {"1", "8"}
        for b in r["batches"].values():
            assert _positive(b["fps"]) and _positive(b["achieved_tflops"])
            assert b["peak_fraction"] is None  # CPU: peak unknown
        assert _positive(r["vs_naive"]["latency"]) and _positive(r["memory"]["host_rss_mib"])
        assert 0 <= r["memory"]["others_cpu_share"] <= 1

    e2e = report["end_to_end"]
    assert e2e["frame_size"] == [160, 120] and e2e["input_size"] == [56, 56]  # [width, height] of the featurizer
    names = [r["name"] for r in e2e["runs"]]
    assert names == ["points-16", "points-256", "points-256+video", "mask"]
    for r in e2e["runs"]:
        assert _positive(r["fps"]) and _positive(r["speedup_vs_naive"]) and _positive(r["naive"]["fps"])
        assert r["bottleneck"] in r["stages_ms_per_frame"]
        assert _positive(r["stages_ms_per_frame"]["featurizer"]) and _positive(r["stages_ms_per_frame"]["decode"])
    assert [r["loop"] for r in e2e["runs"]] == ["overlapped (track's)"] * 3 + ["serial"]
    assert all(_positive(r["fps_stage_run"]) for r in e2e["runs"][:3])  # the serial loop that gave the stages
    overlay = e2e["overlay"]  # what writing the overlay adds, from the same two runs the table shows
    assert overlay["points"] == 256 and overlay["fps_with"] == e2e["runs"][2]["fps"]
    assert overlay["added_share"] == pytest.approx(e2e["runs"][2]["ms_per_frame"] / e2e["runs"][1]["ms_per_frame"] - 1)
    video_run = e2e["runs"][2]
    assert all(_positive(video_run["stages_ms_per_frame"][k]) for k in ("drawing", "encoding"))
    assert _positive(e2e["runs"][1]["rest_over_featurizer"])
    assert report["speedup_vs_naive"] == e2e["runs"][1]["speedup_vs_naive"]
    assert _positive(report["memory"]["host_rss_peak_mib_process"])
    readers = e2e["readers"]  # every reader measured on the same video, or the one-line reason it cannot run
    assert _positive(readers["opencv"]["fps"]) and readers["opencv"]["frames"] > 0
    assert all(("fps" in r) != ("unavailable" in r) for r in readers.values()) and {"torchcodec", "decord"} <= set(
        readers
    )

    targets = {t["id"]: t for t in report["targets"]}
    assert targets["cpu_speedup_vs_naive"]["measured"] == report["speedup_vs_naive"]
    assert targets["cpu_speedup_vs_naive"]["met"] in (True, False)
    assert targets["gpu_e2e_256_fps"]["met"] is None  # a GPU target cannot be judged on the CPU


def test_overlapped_run_is_tracks_loop_and_writes_the_overlay(tiny_video, monkeypatch):
    """The frames/s run goes through tracker.io.pipeline (decode ahead into the ring's batch slots, draw and encode
    behind) as `track` does, every frame drawn and encoded, and torch's thread count comes back."""
    from tracker.backends import BackendOptions, build_featurizer
    from tracker.bench import e2e
    from tracker.featurizers import default_match_config
    from tracker.io import pipeline

    featurizer, _ = build_featurizer("sift", (120, 160), BackendOptions("torch", "fp32"), device=torch.device("cpu"))
    made = []
    monkeypatch.setattr(
        pipeline.BatchPrefetcher, "__init__", _spy(pipeline.BatchPrefetcher.__init__, made, "prefetcher")
    )
    monkeypatch.setattr(pipeline.Prefetcher, "__init__", _spy(pipeline.Prefetcher.__init__, made, "frame prefetcher"))
    monkeypatch.setattr(pipeline.Sink, "__init__", _spy(pipeline.Sink.__init__, made, "sink"))
    drawn = []
    monkeypatch.setattr(pipeline.Sink, "submit", _spy(pipeline.Sink.submit, drawn, "frame"))
    threads = torch.get_num_threads()
    match = default_match_config("sift")
    timing = e2e.run_points_overlapped(featurizer, match, str(tiny_video), 8, 7, 2, write=True)
    assert timing.frames == 7 and timing.seconds > 0 and timing.stages == {}
    assert made == ["prefetcher", "sink"] and len(drawn) == 7
    assert torch.get_num_threads() == threads
    made.clear()
    assert e2e.run_points_overlapped(featurizer, match, str(tiny_video), 8, None, 4).frames == 10
    assert made == ["prefetcher"]  # no overlay: no drawing thread


def test_quick_is_vit_s_and_its_estimate_follows_the_work(tmp_path, monkeypatch):
    monkeypatch.setattr(command, "DEFAULT_VIDEO", tmp_path / "absent.mp4")
    parse = command.build_parser().parse_args
    quick = command.config_from_args(parse(["--quick", "--device", "cpu"]))
    assert quick.model == "dinov2-s" and quick.size == 224 and quick.points == (256,)
    assert quick.weights in (None, "random")  # random only when dinov2-s is not cached
    full = command.config_from_args(parse(["--device", "cpu", "--weights", "random"]))
    assert full.model == "distilldift" and full.size == 434
    estimate = command.expected_seconds(quick)
    assert command.FIXED_S < estimate < command.expected_seconds(full)
    assert command.expected_seconds(replace(quick, frames=64)) > estimate  # more frames, longer
    assert command.expected_seconds(replace(quick, sections=("model",))) < estimate


def _spy(fn, calls: list, name: str):
    def wrapped(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)

    return wrapped


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sizes", "abc"], "--sizes"),
        (["--sizes", "100"], "multiples of 14"),
        (["--device", "tpu"], "--device"),
        (["--backends", "tensorrt", "--device", "cpu"], "TensorRT needs a CUDA GPU"),
        (["--model", "distilldift", "--device", "cpu"], "--weights random"),
        (["--weights", "random", "--device", "cpu", "--video", "missing.mp4"], "video not found"),
        (["--frobnicate"], "unrecognized arguments"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(command, "DEFAULT_VIDEO", tmp_path / "absent.mp4")  # as in a user's clone: no ../shared
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("track: error:") and message in err


def test_bench_without_a_video_runs_on_a_generated_clip(tmp_path, monkeypatch, capsys):
    """A user's clone has no ../shared: the end-to-end runs use a generated 1280x720 clip, said in one line
    and recorded in the results."""
    for module in (command, runner):  # the options (command), the clip's line and the notes (runner)
        monkeypatch.setattr(module, "DEFAULT_VIDEO", tmp_path / "absent.mp4")
    out = tmp_path / "results"
    code = main(
        ["bench", "--tiny", "--only", "e2e", "--weights", "random", "--device", "cpu", "--size", "28",
         "--points", "16", "--frames", "2", "--naive-frames", "1", "--batch", "1", "--json", str(out),
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "absent.mp4 is absent" in err and "generated 1280x720 clip" in err
    report = json.loads((out / "bench.json").read_text())
    e2e = report["end_to_end"]
    assert e2e["video_generated"] is True and e2e["video"].startswith("generated: tracker.synthetic")
    assert e2e["frame_size"] == [1280, 720] and e2e["video_frames"] == 2
    assert [r["frames"] for r in e2e["runs"]] == [2, 2, 2]
    assert any("generated 1280x720 clip" in note for note in report["notes"])
    assert "Video `generated: tracker.synthetic" in (out / "bench.md").read_text()


def test_bench_prefers_the_default_video_when_it_is_there(tmp_path, tiny_video, monkeypatch):
    monkeypatch.setattr(command, "DEFAULT_VIDEO", tiny_video)
    args = command.build_parser().parse_args(["--weights", "random", "--device", "cpu"])
    assert command.config_from_args(args).video == str(tiny_video)
    monkeypatch.setattr(command, "DEFAULT_VIDEO", tmp_path / "absent.mp4")
    assert command.config_from_args(args).video is None  # run_bench generates the clip


def _gpu_check_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_sh_runs_the_check_with_out_and_the_repo_on_the_path(tmp_path):
    """benchmarks/gpu_check.sh: $PYTHON (here a stub that records its arguments) runs benchmarks/gpu_check.py with
    --out $OUT (else benchmarks/results) and the arguments given, the repository on PYTHONPATH."""
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    stub = tmp_path / "python"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$RECORD"; echo "$PYTHONPATH" >> "$RECORD"\n')
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    for out, want in ((str(tmp_path / "out"), str(tmp_path / "out")), (None, "benchmarks/results")):
        record = tmp_path / "args.txt"
        run_env = {**env, "PYTHON": str(stub), "RECORD": str(record), **({"OUT": out} if out else {})}
        done = subprocess.run(
            ["bash", str(repo / "benchmarks" / "gpu_check.sh"), "--dry-run"], env=run_env, capture_output=True
        )
        assert done.returncode == 0, done.stderr
        *args, pythonpath = record.read_text().splitlines()
        assert args == ["benchmarks/gpu_check.py", "--out", want, "--dry-run"]
        assert str(repo) in pythonpath.split(":")


def test_gpu_check_dry_run_writes_its_results_under_out(tmp_path, monkeypatch):
    """benchmarks/gpu_check.py --dry-run on the CPU with tiny models: every section runs, one JSON and markdown
    (in this process: the imports are the suite's; the shell wrapper is checked above)."""
    gpu_check = _gpu_check_module()
    monkeypatch.setenv("OUT", str(tmp_path))
    threads = torch.get_num_threads()
    try:
        with torch.random.fork_rng(devices=[]):
            assert gpu_check.main(["--dry-run"]) == 0
    finally:
        torch.set_num_threads(threads)  # the dry run sets its own
    report = json.loads((tmp_path / "gpu_check_dry_run.json").read_text())
    assert report["schema"] == "semantic-tracker/gpu-check/1" and report["dry_run"] is True
    sections = report["sections"]
    assert set(sections) == {"environment", "model", "model_compiled", "tail", "step", "readers", "end_to_end"}
    assert all(s["status"] == "ok" for s in sections.values()), {k: s.get("error") for k, s in sections.items()}
    eager = next(r for r in sections["model"]["records"] if r["mode"] == "eager" and r["precision"] == "fp32")
    assert eager["batches"]["8"]["fps"] > 0 and eager["batches"]["1"]["ms"]["p99"] >= eager["batches"]["1"]["ms"]["p50"]
    assert sections["tail"]["shapes_run"] == [8] and min(sections["tail"]["cosine_min_vs_eager"]) > 0.9999
    assert sections["step"]["equal_to_per_frame"] is True
    assert sections["readers"]["readers"]["opencv"]["frames"] == 12
    assert {"points-16", "points-16+video", "mask"} <= set(sections["end_to_end"]["runs"])
    assert report["targets"]["e2e_fps_no_render"]["measured"] > 0  # measured, not judged on a CPU
    assert report["targets"]["batch1_p50_ms"]["met"] == "unmeasured"  # no compiled CUDA-graph run on a CPU
    assert "unmeasured" in (tmp_path / "gpu_check_dry_run.md").read_text()
