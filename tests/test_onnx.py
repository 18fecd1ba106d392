"""ONNX export of the real ViT architecture (tiny sizes) and tracking through ONNX Runtime."""

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from export.onnx import cosine_per_cell, export_onnx  # noqa: E402
from tracker import PointTracker, Queries, TrackerError, create_featurizer, default_match_config  # noqa: E402
from tracker.backends import OnnxFeaturizer  # noqa: E402
from tracker.synthetic import moving_objects  # noqa: E402

TINY = dict(embed_dim=48, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def featurizer():
    torch.manual_seed(0)
    return create_featurizer("distilldift", (240, 320), size="126x98", weights="random", **TINY)


@pytest.fixture(scope="module")
def exported(featurizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    return export_onnx(featurizer, path)


def test_torch_path_runs_fused_sdpa_attention(featurizer):
    """timm's fused attention (``F.scaled_dot_product_attention``) is what runs, not the unfused matmul-softmax."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.add(func.name())
            return func(*args, **(kwargs or {}))

    assert all(block.attn.fused_attn for block in featurizer.model.blocks)
    with Ops() as ops:
        featurizer(torch.zeros(1, 98, 126, 3, dtype=torch.uint8))
    assert any("scaled_dot_product" in name for name in ops.names), sorted(ops.names)
    assert not any("_softmax" in name for name in ops.names)  # the unfused path's softmax


def test_export_passes_the_checker_and_matches_torch(exported, featurizer):
    assert exported.path.is_file() and exported.min_cosine >= 0.9999
    model = onnx.load(exported.path)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    assert sum(n.op_type == "LayerNormalization" for n in model.graph.node) == 2 * 2 + 1  # 2 per block + final
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["model"] == "distilldift" and meta["input_hw"] == "[98, 126]" and meta["stride"] == "14"
    # dynamic batch, and the backend's features equal torch's on real frames of another size
    backend = OnnxFeaturizer(exported.path)
    frames = torch.from_numpy(moving_objects(num_frames=3, size=(240, 320)).frames)
    got, want = backend(frames).numpy(), featurizer(frames).numpy()
    assert got.shape == want.shape == (3, 48, 7, 9)
    assert cosine_per_cell(got, want).min() >= 0.9999


def test_tracking_through_onnx_matches_torch_within_a_tenth_of_a_pixel(exported, featurizer):
    video = moving_objects(num_frames=8, size=(240, 320))
    x0, y0, x1, y1 = video.object_boxes[0]
    rng = np.random.default_rng(0)
    queries = Queries.create(np.stack([rng.uniform(x0, x1, 16), rng.uniform(y0, y1, 16)], 1))
    config = default_match_config("distilldift")
    torch_xy = torch.stack([r.xy for r in PointTracker(featurizer, config).track(video.frames, queries)])
    onnx_xy = torch.stack(
        [r.xy for r in PointTracker(OnnxFeaturizer(exported.path), config).track(video.frames, queries)]
    )
    assert (torch_xy - onnx_xy).abs().max() < 0.1


def test_fp16_variant_and_refusals(featurizer, tmp_path):
    report = export_onnx(featurizer, tmp_path / "fp16.onnx", precision="fp16")
    assert report.min_cosine >= 0.999
    # LayerNorm and the final L2 norm compute in fp32 inside the fp16 graph (what a strongly typed TensorRT build
    # keeps); attention's softmax stays fp16 between its two fp16 MatMuls, so TensorRT can fuse attention
    model = onnx.shape_inference.infer_shapes(onnx.load(report.path))
    types = {
        v.name: v.type.tensor_type.elem_type for v in (*model.graph.value_info, *model.graph.input, *model.graph.output)
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    norms = [n for n in model.graph.node if n.op_type == "LayerNormalization"]
    assert len(norms) == 2 * 2 + 1 and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in norms)
    softmax = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmax) == 2  # one per block
    producer = {o: n for n in model.graph.node for o in n.output}
    for node in softmax:
        assert types[node.input[0]] == types[node.output[0]] == onnx.TensorProto.FLOAT16
        assert producer[node.input[0]].op_type != "Cast"  # no cast splitting MatMul -> Softmax -> MatMul
        assert any(n.op_type == "MatMul" and node.output[0] in n.input for n in model.graph.node)
    l2 = [n for n in model.graph.node if n.op_type == "ReduceL2"]
    assert len(l2) == 1 and types[l2[0].input[0]] == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)  # the rest is fp16
    assert {p.key: p.value for p in model.metadata_props}["precision"] == "fp16"
    assert next(featurizer.model.parameters()).dtype == torch.float32  # the torch model is left as it was
    with pytest.raises(TrackerError, match="opset"):
        export_onnx(featurizer, tmp_path / "old.onnx", opset=16)
    with pytest.raises(TrackerError, match="min cosine"):
        export_onnx(featurizer, tmp_path / "strict.onnx", precision="fp16", min_cosine=1.01)
    assert not (tmp_path / "strict.onnx").exists() and not list(tmp_path.glob(".*"))  # nothing half-written
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(TrackerError, match="cannot load"):
        OnnxFeaturizer(tmp_path / "junk.onnx")


def test_export_and_track_through_the_command_line(tmp_path, capsys):
    """`track export onnx` then `track --onnx`: the same tracks as the torch backend with the same weights."""
    import json

    from safetensors.torch import save_file

    from tracker.apps.cli import main
    from tracker.io.formats import read_tracks
    from tracker.synthetic import write_video
    from tracker.weight_loading import create_vit

    torch.manual_seed(1)
    model = create_vit("vit_small_patch14_reg4_dinov2", (56, 56))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    video = moving_objects(num_frames=6, size=(64, 96))
    write_video(str(tmp_path / "clip.mp4"), video.frames)
    (tmp_path / "p.json").write_text(json.dumps([[30.0, 30.0], [50.5, 20.25]]))
    common = [str(tmp_path / "clip.mp4"), "--points", str(tmp_path / "p.json"), "--no-video", "--no-progress"]
    weights = ["--model", "dinov2-s", "--weights", str(tmp_path / "w.safetensors"), "--size", "56"]
    out = str(tmp_path / "s.onnx")
    assert main(["export", "onnx", *weights, "--out", out]) == 0
    assert main([*common, *weights, "--backend", "torch", "--out-tracks", str(tmp_path / "t.npz")]) == 0
    assert main([*common, "--backend", "onnx", "--onnx", out, "--out-tracks", str(tmp_path / "o.npz")]) == 0
    a, b = read_tracks(tmp_path / "t.npz"), read_tracks(tmp_path / "o.npz")
    assert np.abs(a["x"] - b["x"]).max() < 0.1 and np.abs(a["y"] - b["y"]).max() < 0.1
    assert main([*common, "--backend", "onnx", "--out-tracks", str(tmp_path / "x.npz")]) == 2  # no --onnx
    capsys.readouterr()
    # --model naming another model than the file's was ignored (and sift's weight-free note printed)
    assert main([*common, "--model", "sift", "--onnx", out, "--out-tracks", str(tmp_path / "y.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"track: error: --model sift, but {out} holds dinov2-s: drop --model (the file brings its model and size)"
    ]
    assert not (tmp_path / "y.npz").exists()
    assert main([*common, "--model", "dinov2-s", "--onnx", out, "--out-tracks", str(tmp_path / "y.npz")]) == 0
    # track live too, where the featurizer is built on the first frame
    live = ["live", "--headless", "--every-frame", "--device", "cpu", "--camera", str(tmp_path / "clip.mp4")]
    capsys.readouterr()
    assert main([*live, "--model", "sift", "--onnx", out]) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert not any("Traceback" in line for line in said), said
    message = f"--model sift, but {out} holds dinov2-s: drop --model (the file brings its model and size)"
    assert said[-1] == f"track: error: {message}"
    assert main([*live, "--onnx", out]) == 0
    assert "dinov2-s" in capsys.readouterr().err
    assert main(["export", "onnx", "--model", "sift", "--out", out]) == 2
    assert main(["export", "onnx", "--model", "dinov2-s", "--weights", "random", "--size", "100", "--out", out]) == 2


def test_whole_step_graph_matches_the_torch_matcher(featurizer, tmp_path):
    """Frames and query descriptors in, points out: the same positions and scores as tracker.matching."""
    import onnxruntime as ort

    from export.onnx import export_step_onnx
    from tracker.matching import MatchConfig, match, sample_descriptors

    config = MatchConfig()
    report = export_step_onnx(featurizer, tmp_path / "step.onnx", config)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    video = moving_objects(num_frames=2, size=(98, 126))
    frames = torch.from_numpy(video.frames)
    with torch.inference_mode():
        query_grid, grid = featurizer(frames)
    rng = np.random.default_rng(1)
    uv0 = torch.tensor(np.stack([rng.uniform(0, 8, 20), rng.uniform(0, 6, 20)], 1), dtype=torch.float32)
    descriptors = sample_descriptors(query_grid, uv0)
    want = match(descriptors, grid, config)
    features, uv, xy, score = session.run(
        None,
        {
            "frames": frames[1:].float().numpy(),
            "descriptors": descriptors.numpy(),
            "frame_wh": np.array([126.0, 98.0], np.float32),
        },
    )
    assert uv.shape == (20, 2) and score.shape == (20,) and features.shape == (1, 48, 7, 9)
    assert np.abs(uv - want.uv.numpy()).max() < 1e-3
    assert np.abs(score - want.score.numpy()).max() < 1e-4
    geometry = featurizer.geometry(98, 126)
    assert np.abs(xy - geometry.grid_to_pixel(want.uv).numpy()).max() < 1e-2
    with pytest.raises(TrackerError, match="global matching"):
        export_step_onnx(featurizer, tmp_path / "local.onnx", MatchConfig(search_radius=3))
