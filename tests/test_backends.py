"""Backend choice, the fast torch path's precisions, and the TensorRT engine bookkeeping that runs without a GPU."""

import json

import numpy as np
import pytest
import torch

from export.onnx import cosine_per_cell
from tracker import TrackerError
from tracker.backends import BackendOptions, available_backends, build_featurizer
from tracker.synthetic import moving_objects

TINY = dict(embed_dim=48, depth=2, num_heads=2)


def frames():
    return torch.from_numpy(moving_objects(num_frames=2, size=(98, 126)).frames)


def test_auto_on_cpu_runs_torch_fp32_and_says_why_tensorrt_was_passed_over():
    featurizer, how = build_featurizer("distilldift", (98, 126), size="126x98", weights="random", **TINY)
    assert how.startswith("torch fp32 on cpu") and "tensorrt: TensorRT needs a CUDA GPU" in how
    assert available_backends("cpu")["torch"] == "" and available_backends("cpu")["tensorrt"]
    sift, how = build_featurizer("sift", (98, 126))
    assert how == "torch fp32 on cpu" and sift.name == "sift"  # tensorrt is for ViT models only, no note


def test_bf16_torch_path_stays_close_to_fp32():
    torch.manual_seed(0)
    fp32, _ = build_featurizer("dinov2-s", (98, 126), BackendOptions(backend="torch"), size="126x98", weights="random")
    torch.manual_seed(0)
    bf16, how = build_featurizer(
        "dinov2-s", (98, 126), BackendOptions(backend="torch", precision="bf16"), size="126x98", weights="random"
    )
    assert how == "torch bf16 on cpu" and next(bf16.model.parameters()).dtype == torch.bfloat16
    a, b = fp32(frames()), bf16(frames())
    assert b.dtype == torch.float32 and torch.allclose(b.norm(dim=1), torch.ones(()), atol=1e-5)  # fp32 norm
    assert cosine_per_cell(a.numpy(), b.numpy()).mean() > 0.99


@pytest.mark.parametrize(
    "kwargs, options, message",
    [
        ({}, BackendOptions(backend="torch", precision="fp16"), "fp16 needs CUDA"),
        ({}, BackendOptions(backend="onnx"), "needs --onnx FILE"),
        ({}, BackendOptions(backend="tensorrt"), "TensorRT needs a CUDA GPU"),
        ({"model": "sift"}, BackendOptions(backend="torch", precision="bf16"), "fp32 eager only"),
        ({"model": "sift"}, BackendOptions(backend="tensorrt"), "runs ViT models"),
    ],
)
def test_backends_that_cannot_run_say_so(kwargs, options, message):
    model = kwargs.get("model", "distilldift")
    extra = {} if model == "sift" else dict(size="126x98", weights="random", **TINY)
    with pytest.raises(TrackerError, match=message):
        build_featurizer(model, (98, 126), options, **extra)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(backend="cuda"), "--backend must be one of"),
        (dict(precision="fp8"), "--precision must be one of"),
        (dict(onnx="a.onnx", engine="b.engine"), "not both"),
        (dict(backend="torch", onnx="a.onnx"), "--onnx is for --backend onnx"),
        (dict(backend="onnx", compile=True), "--compile applies to the torch backend"),
    ],
)
def test_backend_options_are_validated(kwargs, message):
    with pytest.raises(TrackerError, match=message):
        BackendOptions(**kwargs)


def test_onnx_backend_is_chosen_by_auto_when_a_graph_is_given(tmp_path):
    pytest.importorskip("onnxruntime")
    from export.onnx import export_onnx
    from tracker import create_featurizer

    torch.manual_seed(0)
    featurizer = create_featurizer("distilldift", (98, 126), size="126x98", weights="random", **TINY)
    export_onnx(featurizer, tmp_path / "f.onnx")
    onnx_featurizer, how = build_featurizer("", (98, 126), BackendOptions(onnx=str(tmp_path / "f.onnx")))
    assert how == "onnx (CPUExecutionProvider)"
    assert cosine_per_cell(onnx_featurizer(frames()).numpy(), featurizer(frames()).numpy()).min() >= 0.9999
    with pytest.raises(TrackerError, match="come from the ONNX/engine file"):
        build_featurizer("", (98, 126), BackendOptions(onnx=str(tmp_path / "f.onnx")), size="434")


# --------------------------------------------------------------------------- TensorRT bookkeeping (no GPU needed)


def engine_meta(**changes):
    from export.tensorrt import EngineMeta

    fields = dict(
        model="distilldift",
        input_hw=(434, 434),
        stride=14,
        channels=768,
        precision="fp16",
        max_batch=32,
        weights="ab" * 32,
        gpu="NVIDIA H200",
        compute_capability="9.0",
        tensorrt="10.13.0",
    )
    return EngineMeta(**{**fields, **changes})


def test_engine_sidecar_round_trips_and_keys_change_with_what_matters(tmp_path):
    from export.tensorrt import EngineMeta

    meta = engine_meta(min_cosine=0.9995)
    engine = tmp_path / "m.engine"
    meta.write(engine)
    assert EngineMeta.read(engine) == meta
    assert json.loads((tmp_path / "m.engine.json").read_text())["gpu"] == "NVIDIA H200"
    assert engine_meta().key() == engine_meta(min_cosine=0.5).key()  # the measured cosine is not part of the key
    keys = {
        engine_meta(**c).key()
        for c in ({}, {"gpu": "NVIDIA L4"}, {"tensorrt": "11.0.0"}, {"precision": "bf16"}, {"input_hw": (518, 518)})
    }
    assert len(keys) == 5
    with pytest.raises(TrackerError, match="no other.engine.json beside it"):
        EngineMeta.read(tmp_path / "other.engine")
    (tmp_path / "bad.engine.json").write_text("{}")
    with pytest.raises(TrackerError, match="not an engine description"):
        EngineMeta.read(tmp_path / "bad.engine")


def test_an_engine_built_for_another_gpu_or_tensorrt_is_refused_in_one_line(tmp_path):
    from export.tensorrt import check_platform

    here = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.13.0"}
    check_platform(engine_meta(), here, tmp_path / "m.engine")  # same platform: accepted
    for other in ({"gpu": "NVIDIA L4", "compute_capability": "8.9"}, {"tensorrt": "11.0.0"}):
        with pytest.raises(TrackerError, match="rebuild it with `track export tensorrt`") as info:
            check_platform(engine_meta(**other), here, tmp_path / "m.engine")
        assert "\n" not in str(info.value) and "NVIDIA H200" in str(info.value)


def test_weights_digest_follows_the_weights():
    from export.tensorrt import weights_digest
    from tracker import create_featurizer

    torch.manual_seed(0)
    a = create_featurizer("distilldift", (98, 126), size="126x98", weights="random", **TINY)
    torch.manual_seed(0)
    b = create_featurizer("distilldift", (98, 126), size="126x98", weights="random", **TINY)
    assert weights_digest(a) == weights_digest(b)
    with torch.no_grad():
        b.model.blocks[0].attn.qkv.weight[0, 0] += 1e-3
    assert weights_digest(a) != weights_digest(b)


def test_command_line_refusals(tmp_path, capsys):
    from tracker.apps.cli import main
    from tracker.synthetic import write_video

    video = moving_objects(num_frames=3, size=(64, 96))
    write_video(str(tmp_path / "clip.mp4"), video.frames)
    (tmp_path / "p.json").write_text(json.dumps([[30.0, 30.0]]))
    track = [str(tmp_path / "clip.mp4"), "--points", str(tmp_path / "p.json"), "--no-video", "--no-progress"]
    cases = [
        ([*track, "--model", "dinov2-s", "--weights", "random", "--backend", "tensorrt"], "--backend tensorrt:"),
        ([*track, "--model", "sift", "--precision", "fp8"], "--precision must be one of"),
        ([*track, "--engine", str(tmp_path / "missing.engine")], "engine file not found"),
        (["export", "tensorrt", "--model", "dinov2-s", "--weights", "random", "--out", "x.engine"], "TensorRT"),
        (["export", "onnx", "--model", "dinov2-s", "--precision", "bf16", "--out", "x.onnx"], "built for TensorRT"),
        (["export", "onnx", "--model", "dinov2-s", "--size", "440", "--out", "x.onnx"], "multiples of 14"),
        (["export", "onnx", "--model", "bogus", "--out", "x.onnx"], "can export only ViT models"),
        (["export", "tensorrt", "--model", "dinov2-s", "--out", "x.onnx"], "must end in .engine"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err and "Traceback" not in err, (argv, err)
    assert not list(tmp_path.glob("*.engine")) and not list(tmp_path.glob("*.onnx"))


def test_auto_backend_is_announced_on_the_command_line(tmp_path, capsys):
    from tracker.apps.cli import main
    from tracker.io.formats import read_tracks
    from tracker.synthetic import write_video

    video = moving_objects(num_frames=3, size=(64, 96))
    write_video(str(tmp_path / "clip.mp4"), video.frames)
    (tmp_path / "p.json").write_text(json.dumps([[30.0, 30.0]]))
    out = tmp_path / "t.json"
    argv = [str(tmp_path / "clip.mp4"), "--points", str(tmp_path / "p.json"), "--no-video", "--no-progress"]
    assert main([*argv, "--model", "sift", "--out-tracks", str(out)]) == 0
    assert "track: backend torch fp32 on cpu" in capsys.readouterr().err
    assert json.loads(out.read_text())["backend"] == "torch fp32 on cpu"
    assert np.isfinite(read_tracks(out)["x"]).all()


@pytest.mark.skipif(not __import__("shutil").which("g++"), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_torch_path_gives_the_eager_features():
    torch.manual_seed(0)
    featurizer, how = build_featurizer(
        "distilldift", (98, 126), BackendOptions(backend="torch", compile=True), size="126x98", weights="random", **TINY
    )
    assert how == "torch fp32 compiled on cpu"
    compiled = featurizer(frames())
    featurizer._tokens = featurizer.model.forward_features  # back to eager
    assert torch.allclose(compiled, featurizer(frames()), atol=1e-5)


# --------------------------------------------------------------------------- fixed batch shapes (tail batch padded)


def test_batches_are_planned_at_the_fixed_shapes_only():
    from tracker.backends import plan_batches, run_sizes

    assert run_sizes(32) == (1, 8, 32) and run_sizes(8) == (1, 8) and run_sizes(2) == (1, 2) and run_sizes(1) == (1,)
    sizes = (1, 8, 32)
    assert plan_batches(8, sizes) == [(8, 8)]
    assert plan_batches(3, sizes) == [(8, 3)]  # the tail batch is padded, not run at a new shape
    assert plan_batches(1, sizes) == [(1, 1)]
    assert plan_batches(40, sizes) == [(32, 32), (8, 8)]
    assert plan_batches(70, sizes) == [(32, 32), (32, 32), (8, 6)]
    assert plan_batches(0, sizes) == []
    for n in range(1, 80):
        plan = plan_batches(n, sizes)
        assert sum(real for _, real in plan) == n and all(size in sizes and real <= size for size, real in plan)
    with pytest.raises(TrackerError, match="at least 1"):
        run_sizes(0)


def test_padded_tail_batches_give_the_unpadded_features_and_tracks():
    """An 11-frame video in batches of 8: the tail batch of 3 runs padded to 8, and nothing changes."""
    from tracker import PointTracker, Queries, create_featurizer, default_match_config
    from tracker.backends import PaddedBatches

    torch.manual_seed(0)
    featurizer = create_featurizer("distilldift", (98, 126), size="126x98", weights="random", **TINY)
    video = moving_objects(num_frames=11, size=(98, 126))
    x = torch.from_numpy(video.frames)
    rng = np.random.default_rng(0)
    queries = Queries.create(np.stack([rng.uniform(5, 120, 12), rng.uniform(5, 90, 12)], 1))
    config = default_match_config("distilldift")
    want_features = featurizer(x)
    want = [r.xy for r in PointTracker(featurizer, config, refine="none").track(video.frames, queries, batch_size=8)]
    padded = PaddedBatches(featurizer.model.forward_features, (1, 8))
    featurizer._tokens = padded
    got_features = featurizer(x)  # 11 frames: 8 + 3 padded to 8
    assert padded.shapes == {8}
    assert torch.allclose(got_features, want_features, atol=1e-5)
    padded.shapes.clear()
    got = [r.xy for r in PointTracker(featurizer, config, refine="none").track(video.frames, queries, batch_size=8)]
    assert padded.shapes == {8}  # the tail batch did not meet the model at a new shape
    assert len(got) == 11 and all(
        torch.allclose(a, b, atol=1e-4, equal_nan=True) for a, b in zip(got, want, strict=True)
    )
    assert featurizer(x[:1]).shape[0] == 1 and padded.shapes == {1, 8}


# --------------------------------------------------------------------------- auto falls back on any failure


@pytest.mark.parametrize(
    "error, reason",
    [
        (ImportError("No module named 'onnx'"), "tensorrt: ImportError: No module named 'onnx'"),
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be ..."), "RuntimeError: CUDA error: out"),
        (TrackerError("TensorRT failed to build an engine"), "tensorrt: TensorRT failed to build an engine"),
        (AttributeError("'NoneType' object has no attribute 'create_execution_context'"), "AttributeError: 'None"),
    ],
)
def test_auto_falls_back_to_torch_with_one_line_on_any_tensorrt_failure(monkeypatch, error, reason):
    import export.tensorrt
    import tracker.backends as B

    monkeypatch.setattr(B, "available_backends", lambda device: {"torch": "", "onnx": "", "tensorrt": ""})

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(export.tensorrt, "engine_for", failing)
    featurizer, how = build_featurizer("distilldift", (98, 126), size="126x98", weights="random", **TINY)
    assert how.startswith("torch fp32 on cpu (auto: ") and reason in how and "\n" not in how
    assert featurizer(frames()).shape == (2, 48, 7, 9)
    with pytest.raises(TrackerError, match="^--backend tensorrt: ") as info:  # explicit: an error line, no crash
        build_featurizer(
            "distilldift", (98, 126), BackendOptions(backend="tensorrt"), size="126x98", weights="random", **TINY
        )
    assert "\n" not in str(info.value)


def test_auto_falls_back_when_probing_tensorrt_itself_fails(monkeypatch):
    import tracker.backends as B

    def broken(device):
        raise OSError("libnvinfer.so.10: cannot open shared object file")

    monkeypatch.setattr(B, "available_backends", broken)
    _, how = build_featurizer("distilldift", (98, 126), size="126x98", weights="random", **TINY)
    assert "tensorrt: OSError: libnvinfer.so.10: cannot open shared object file" in how


def test_tensorrt_needs_onnx_and_names_the_wheel_for_torchs_cuda(monkeypatch):
    import importlib.util

    import tracker.backends as B
    from export.tensorrt import tensorrt_package

    assert tensorrt_package("12.8") == "tensorrt-cu12" and tensorrt_package("13.0") == "tensorrt-cu13"
    assert tensorrt_package(None) == "tensorrt-cu13"  # a CPU build of torch: the current CUDA
    real = importlib.util.find_spec
    monkeypatch.setattr(B.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(B.importlib.util, "find_spec", lambda name: None if name == "tensorrt" else real(name))
    assert "pip install tensorrt-cu" in B.available_backends("cuda")["tensorrt"]
    fake = {"tensorrt": object(), "onnx": None}
    monkeypatch.setattr(B.importlib.util, "find_spec", lambda name: fake[name] if name in fake else real(name))
    assert B.available_backends("cuda")["tensorrt"].startswith("onnx is not installed")


def test_a_tensorrt_wheel_for_another_cuda_is_a_reason(monkeypatch):
    import importlib.metadata

    from export.tensorrt import tensorrt_mismatch

    real = importlib.metadata.version

    def version(name):
        if name == "tensorrt-cu12":
            return "10.13.0"
        if name.startswith("tensorrt-cu"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    assert tensorrt_mismatch("12.8") == ""
    reason = tensorrt_mismatch("13.0")
    assert (
        reason.startswith("tensorrt-cu12 installed, but torch is built for CUDA 13.0")
        and "install tensorrt-cu13" in reason
    )


# --------------------------------------------------------------------------- ONNX Runtime on a GPU (faked)


class FakeSession:
    """Stands in for ``onnxruntime.InferenceSession``: records its arguments and runs a real CPU session, which
    reports the CPU provider only (what ONNX Runtime does when its CUDA libraries fail to load)."""

    made: list = []
    real = None

    def __init__(self, path, providers=None, provider_options=None):
        FakeSession.made.append((providers, provider_options))
        self.session = FakeSession.real(path, providers=["CPUExecutionProvider"])

    def __getattr__(self, name):
        return getattr(self.session, name)


def test_onnx_runtime_on_a_gpu_gets_device_caches_profiles_and_its_fallback_is_caught(monkeypatch, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from export.onnx import export_onnx
    from tracker import create_featurizer
    from tracker.backends import OnnxFeaturizer

    torch.manual_seed(0)
    featurizer = create_featurizer("distilldift", (98, 126), size="126x98", weights="random", **TINY)
    path = tmp_path / "f.onnx"
    export_onnx(featurizer, path)
    providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: providers)
    FakeSession.real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", FakeSession)
    FakeSession.made.clear()
    # the CUDA libraries failed to load: ONNX Runtime runs on the CPU only; we say so instead of binding CUDA memory
    with pytest.raises(TrackerError, match="fell back to CPUExecutionProvider on cuda:1") as info:
        OnnxFeaturizer(path, device="cuda:1", cache_dir=tmp_path / "ort")
    assert "\n" not in str(info.value)
    chosen, options = FakeSession.made[-1]
    assert chosen == providers
    trt, cuda, cpu = options
    assert cuda == {"device_id": "1"} and cpu == {}
    assert trt["device_id"] == "1" and trt["trt_engine_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "ort") and (tmp_path / "ort").is_dir()
    assert trt["trt_profile_min_shapes"] == "frames:1x98x126x3"
    assert trt["trt_profile_opt_shapes"] == "frames:8x98x126x3"
    assert trt["trt_profile_max_shapes"] == "frames:32x98x126x3"
    FakeSession.made.clear()
    cpu_featurizer = OnnxFeaturizer(path, device="cpu")  # the CPU: no GPU options; a CPU session is what was asked
    assert (
        FakeSession.made[-1] == (["CPUExecutionProvider"], None) and cpu_featurizer.provider == "CPUExecutionProvider"
    )


@pytest.mark.parametrize(
    "error", [RuntimeError("operation not permitted when stream is capturing\nCUDA ..."), OSError()]
)
def test_a_cuda_graph_capture_failure_of_any_kind_runs_the_engine_eagerly(monkeypatch, error):
    """TensorRTFeaturizer._capture without a GPU: torch.cuda.graph faked to fail; the engine runs on, eagerly."""
    from export.tensorrt import TensorRTFeaturizer

    featurizer = TensorRTFeaturizer.__new__(TensorRTFeaturizer)
    torch.nn.Module.__init__(featurizer)
    featurizer.cuda_graphs, featurizer._graphs, featurizer.graph_error = True, {}, None
    featurizer._enqueue = lambda batch, stream: None
    synced = []

    class Stream:
        def synchronize(self):
            synced.append(True)

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", failing)
    featurizer._capture(8, Stream())
    assert featurizer.cuda_graphs is False and featurizer._graphs == {} and len(synced) == 2
    assert featurizer.graph_error.startswith(type(error).__name__) and "\n" not in featurizer.graph_error


class FakeContext:
    """Records what TensorRTFeaturizer asks of an execution context."""

    def __init__(self, strategy=None):
        self.strategy, self.calls = strategy, []

    def __getattr__(self, name):
        if name.startswith(("set_", "execute")):
            return lambda *args: self.calls.append((name, args)) or True
        raise AttributeError(name)


class FakeEngine:
    """An engine of one profile per batch shape (min = opt = max), as build_engine writes them."""

    def __init__(self, sizes):
        self.sizes = sizes
        self.num_optimization_profiles = len(sizes)
        self.device_memory_size_v2 = 4096
        self.contexts = []

    def get_tensor_profile_shape(self, name, index):
        assert name == "frames"
        b = self.sizes[index]
        return [(b, 98, 126, 3)] * 3

    def create_execution_context(self, strategy=None):
        self.contexts.append(FakeContext(strategy))
        return self.contexts[-1]


def test_each_batch_shape_gets_its_own_context_on_its_own_profile(monkeypatch):
    """No GPU: the per-shape contexts of TensorRTFeaturizer against a fake engine and a fake tensorrt module."""
    import sys
    import types

    from export.tensorrt import TensorRTFeaturizer, _profile_shapes

    fake_trt = types.SimpleNamespace(ExecutionContextAllocationStrategy=types.SimpleNamespace(USER_MANAGED="user"))
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    engine = FakeEngine([1, 8, 32])
    assert _profile_shapes(engine) == {1: 0, 8: 1, 32: 2}
    featurizer = TensorRTFeaturizer.__new__(TensorRTFeaturizer)
    torch.nn.Module.__init__(featurizer)
    featurizer.engine, featurizer.meta = engine, engine_meta(input_hw=(98, 126), channels=48)
    featurizer.input_hw, featurizer.stride, featurizer._device = (98, 126), 14, torch.device("cpu")
    featurizer._profile, featurizer._contexts, featurizer._buffers = _profile_shapes(engine), {}, {}
    featurizer._scratch, featurizer.shared_memory = None, None
    stream = type("Stream", (), {"cuda_stream": 7})()
    for batch in (8, 1, 8, 32, 8):
        context = featurizer._context(batch, stream)
    assert len(engine.contexts) == 3 and set(featurizer._contexts) == {1, 8, 32}  # one per shape, made once
    for batch, profile in ((1, 0), (8, 1), (32, 2)):
        context = featurizer._contexts[batch]
        names = [name for name, _ in context.calls]
        assert names == [
            "set_device_memory",
            "set_optimization_profile_async",
            "set_input_shape",
            "set_tensor_address",
            "set_tensor_address",
        ]  # everything set once, before any run or capture: a replay always finds the state it was captured with
        assert context.calls[1][1] == (profile, 7) and context.calls[2][1] == ("frames", (batch, 98, 126, 3))
        x, out = featurizer._buffers[batch]
        assert context.calls[3][1] == ("frames", x.data_ptr()) and context.calls[4][1] == ("features", out.data_ptr())
        assert out.shape == (batch, 48, 7, 9) and context.strategy == "user"
        assert context.calls[0][1] == (featurizer._scratch.data_ptr(), 4096)  # one activation buffer shared
    assert featurizer.shared_memory is True
