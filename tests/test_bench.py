"""`track bench` on the CPU with a tiny model of the real architecture: well-formed results, not speed."""

import json

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tracker.apps.cli import main
from tracker.bench.e2e import NaivePointTracker
from tracker.bench.measure import Timing, peak_tflops, time_calls, vit_flops
from tracker.synthetic import moving_objects, write_video
from tracker.tracking import Queries
from tracker.weights import create_vit

TINY = dict(embed_dim=48, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def tiny_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(str(path), moving_objects(num_frames=10, size=(120, 160)).frames)
    return path


@pytest.mark.parametrize(
    "arch,hw", [("vit_small_patch14_reg4_dinov2", (56, 70)), ("vit_base_patch14_reg4_dinov2", (28, 28))]
)
def test_analytic_flops_equal_torch_flop_counter(arch, hw):
    model = create_vit(arch, hw, **TINY).eval()
    counted = vit_flops(model, hw)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.forward_features(torch.randn(1, 3, *hw))
    assert counted.total == counter.get_total_flops()
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
        ["bench", "--tiny", "--quick", "--weights", "random", "--device", "cpu", "--sizes", "56", "--size", "56",
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
    assert e2e["frame_size"] == [160, 120]
    names = [r["name"] for r in e2e["runs"]]
    assert names == ["points-16", "points-256", "points-256+video", "mask"]
    for r in e2e["runs"]:
        assert _positive(r["fps"]) and _positive(r["speedup_vs_naive"]) and _positive(r["naive"]["fps"])
        assert r["bottleneck"] in r["stages_ms_per_frame"]
        assert _positive(r["stages_ms_per_frame"]["featurizer"]) and _positive(r["stages_ms_per_frame"]["decode"])
    video_run = e2e["runs"][2]
    assert all(_positive(video_run["stages_ms_per_frame"][k]) for k in ("drawing", "encoding"))
    assert _positive(e2e["runs"][1]["rest_over_featurizer"])
    assert report["speedup_vs_naive"] == e2e["runs"][1]["speedup_vs_naive"]
    assert _positive(report["memory"]["host_rss_peak_mib_process"])

    targets = {t["id"]: t for t in report["targets"]}
    assert targets["cpu_speedup_vs_naive"]["measured"] == report["speedup_vs_naive"]
    assert targets["cpu_speedup_vs_naive"]["met"] in (True, False)
    assert targets["gpu_e2e_256_fps"]["met"] is None  # a GPU target cannot be judged on the CPU


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
def test_bad_options_give_one_line_and_exit_2(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("track: error:") and message in err
