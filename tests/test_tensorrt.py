"""TensorRT engines on a real GPU (skipped without tensorrt or CUDA): parity, cache, refusal, tracking."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("tensorrt")
pytest.importorskip("onnxruntime")
if not torch.cuda.is_available():
    pytest.skip("TensorRT tests need a CUDA GPU", allow_module_level=True)

from export.onnx import cosine_per_cell  # noqa: E402
from export.tensorrt import TensorRTFeaturizer, engine_for  # noqa: E402
from tracker import PointTracker, Queries, TrackerError, create_featurizer, default_match_config  # noqa: E402
from tracker.synthetic import moving_objects  # noqa: E402

TINY = dict(embed_dim=48, depth=2, num_heads=2)


@pytest.fixture(scope="module")
def featurizer():
    torch.manual_seed(0)
    return create_featurizer("distilldift", (240, 320), size="126x98", weights="random", **TINY)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_engine_matches_torch_and_is_cached(featurizer, precision, tmp_path):
    engine, where = engine_for(featurizer, precision=precision, max_batch=8, cache=tmp_path)
    assert where.startswith("built") and engine.meta.min_cosine >= 0.999
    frames = torch.from_numpy(moving_objects(num_frames=11, size=(240, 320)).frames)  # 8 + 3: two batch sizes
    got = engine(frames).cpu().numpy()
    want = featurizer.cpu()(frames).numpy()
    assert got.shape == want.shape and cosine_per_cell(got, want).min() >= 0.999
    again, where = engine_for(featurizer, precision=precision, max_batch=8, cache=tmp_path)
    assert where.startswith("cached")
    assert np.allclose(again(frames).cpu().numpy(), got, atol=1e-3)  # CUDA-graph replays give the same result


def test_tracking_through_tensorrt_matches_torch(featurizer, tmp_path):
    engine, _ = engine_for(featurizer, precision="fp16", max_batch=8, cache=tmp_path)
    video = moving_objects(num_frames=8, size=(240, 320))
    x0, y0, x1, y1 = video.object_boxes[0]
    rng = np.random.default_rng(0)
    queries = Queries.create(np.stack([rng.uniform(x0, x1, 16), rng.uniform(y0, y1, 16)], 1))
    config = default_match_config("distilldift")
    a = torch.stack([r.xy.cpu() for r in PointTracker(featurizer.cpu(), config).track(video.frames, queries)])
    b = torch.stack([r.xy.cpu() for r in PointTracker(engine, config).track(video.frames, queries)])
    assert (a - b).abs().median() < 0.5


def test_engine_for_another_platform_is_refused(featurizer, tmp_path):
    engine, _ = engine_for(featurizer, precision="fp16", max_batch=2, cache=tmp_path)
    path = next(tmp_path.glob("*.engine"))
    sidecar = path.with_name(path.name + ".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "tensorrt": "0.0.1"}))
    with pytest.raises(TrackerError, match="rebuild it with `track export tensorrt`"):
        TensorRTFeaturizer.load(path)


def test_export_and_track_through_the_command_line(tmp_path):
    from safetensors.torch import save_file

    from tracker.apps.cli import main
    from tracker.io.formats import read_tracks
    from tracker.synthetic import write_video
    from tracker.weight_loading import create_vit

    torch.manual_seed(1)
    model = create_vit("vit_small_patch14_reg4_dinov2", (56, 56))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    write_video(str(tmp_path / "clip.mp4"), moving_objects(num_frames=6, size=(64, 96)).frames)
    (tmp_path / "p.json").write_text(json.dumps([[30.0, 30.0], [50.5, 20.25]]))
    common = [str(tmp_path / "clip.mp4"), "--points", str(tmp_path / "p.json"), "--no-video", "--no-progress"]
    weights = ["--model", "dinov2-s", "--weights", str(tmp_path / "w.safetensors"), "--size", "56"]
    engine = str(tmp_path / "s.engine")
    assert main(["export", "tensorrt", *weights, "--max-batch", "8", "--out", engine]) == 0
    t, e = str(tmp_path / "t.npz"), str(tmp_path / "e.npz")
    assert main([*common, *weights, "--backend", "torch", "--precision", "fp32", "--out-tracks", t]) == 0
    assert main([*common, "--backend", "tensorrt", "--engine", engine, "--out-tracks", e]) == 0
    a, b = read_tracks(t), read_tracks(e)
    assert np.median(np.abs(a["x"] - b["x"])) < 0.5 and np.median(np.abs(a["y"] - b["y"])) < 0.5


def test_cuda_graphs_replay_the_right_shape_after_a_tail_batch(featurizer, tmp_path):
    """Batches 8, 3, 8: each shape its own context and graph; graphs give what eager TensorRT gives."""
    engine, _ = engine_for(featurizer, precision="fp32", max_batch=8, cache=tmp_path)
    path = next(tmp_path.glob("*.engine"))
    eager = TensorRTFeaturizer.load(path, cuda_graphs=False)
    assert engine.sizes == (1, 8) and engine.engine.num_optimization_profiles == 2
    frames = torch.from_numpy(moving_objects(num_frames=8, size=(240, 320)).frames)
    batches = [frames, frames[2:5], frames.flip(0)]
    got = [engine(b).cpu() for b in batches]
    want = [eager(b).cpu() for b in batches]
    assert engine.graph_error is None and set(engine._graphs) == {8}  # the 3 ran padded to 8: no new capture
    assert len(engine._contexts) == 1 and engine.shared_memory is not None
    for a, b in zip(got, want, strict=True):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(got[1], got[0][2:5], atol=1e-4) and torch.allclose(got[2], got[0].flip(0), atol=1e-4)
    one = engine(frames[:1]).cpu()
    assert set(engine._graphs) == {1, 8} and len(engine._contexts) == 2
    assert torch.allclose(one, want[0][:1], atol=1e-4) and torch.allclose(engine(frames).cpu(), want[0], atol=1e-4)
