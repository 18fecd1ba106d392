"""ONNX export of a ViT featurizer (LoRA already merged), checked before it is written.

The graph takes ``frames``: ``[B, H_in, W_in, 3]`` float32 RGB in 0..255 at the featurizer's input size
(resizing stays in the backend, on its device) and returns ``features``: ``[B, C, h, w]`` float32, unit
L2 norm along C. Batch is dynamic, the spatial size static (the position embedding is resampled once, when
the model is built). Opset >= 17 keeps LayerNorm one node. In the fp16 and bf16 variants LayerNorm and the
final L2 normalisation run in fp32 (casts around LayerNorm: :func:`keep_fp32`; the featurizer casts its grid to
fp32 before normalising), so a strongly typed TensorRT build keeps them there too. Attention's softmax stays in
the half type: a cast around it splits MatMul-Softmax-MatMul and a strongly typed TensorRT build then cannot
fuse the attention kernel (one export of a similar ViT reported no fused attention nodes and 4.3x slower
attention); TensorRT's fused kernel accumulates the softmax in fp32 itself. Every export passes
``onnx.checker`` and is compared with torch in ONNX Runtime on check frames before it is moved into place
(bf16, which ONNX Runtime cannot run, is checked by the TensorRT build instead); the file's metadata names
the model, input size, stride and precision.

:func:`export_step_onnx` writes the whole per-frame step as one graph: frames and N query descriptors in,
features, grid and pixel positions and scores out (similarity, argmax, window soft-argmax).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from tracker.errors import TrackerError
from tracker.featurizers import ViTFeaturizer
from tracker.matching import MatchConfig, similarity, window_soft_argmax

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP32_OPS = ("LayerNormalization",)  # not Softmax: see the module docstring


class _Graph(nn.Module):
    """The exported function: float NHWC frames at input size -> unit feature grid."""

    def __init__(self, featurizer: ViTFeaturizer):
        super().__init__()
        self.featurizer = featurizer

    def forward(self, frames: Tensor) -> Tensor:
        f = self.featurizer
        x = (frames.permute(0, 3, 1, 2) - f.mean) / f.std
        return f.features(x)  # in the featurizer's precision; normalised in fp32


class _StepGraph(nn.Module):
    """One frame in, points out: features, similarity to N descriptors, argmax, window soft-argmax."""

    def __init__(self, featurizer: ViTFeaturizer, config: MatchConfig):
        super().__init__()
        self.graph = _Graph(featurizer)
        self.config = config
        h, w = featurizer.grid_hw
        self.register_buffer("grid_wh", torch.tensor([float(w), float(h)]), persistent=False)

    def forward(self, frames: Tensor, descriptors: Tensor, frame_wh: Tensor):
        features = self.graph(frames)
        uv, score = window_soft_argmax(
            similarity(descriptors, features[0]), self.config.window_radius, self.config.temperature
        )
        xy = (uv + 0.5) * frame_wh / self.grid_wh - 0.5
        return features, uv, xy, score


@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how it compared with torch.

    Attributes:
        path: the written ``.onnx`` file.
        min_cosine: lowest per-cell cosine similarity between ONNX Runtime and torch fp32 features.
        provider: the ONNX Runtime execution provider used for the check.
    """

    path: Path
    min_cosine: float
    provider: str


def cosine_per_cell(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of ``[B, C, h, w]`` grids per cell, ``[B, h, w]``."""
    num = (a * b).sum(1)
    return num / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def keep_fp32(model, ops: tuple[str, ...] = FP32_OPS) -> int:
    """Run ``ops`` (LayerNorm by default) of a half-precision graph in fp32: cast their inputs up, outputs back.

    Args:
        model: an ``onnx.ModelProto``, changed in place.
        ops: node types to keep in fp32.

    Returns:
        the number of nodes now computing in fp32.
    """
    import onnx
    from onnx import TensorProto, helper

    half = {TensorProto.FLOAT16, TensorProto.BFLOAT16}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)
    }
    types.update({t.name: t.data_type for t in model.graph.initializer})
    nodes, count = [], 0
    for node in model.graph.node:
        dtype = types.get(node.input[0]) if node.input else None
        if node.op_type not in ops or dtype not in half:
            nodes.append(node)
            continue
        for i, name in enumerate(node.input):
            if name and types.get(name) in half:
                nodes.append(helper.make_node("Cast", [name], [f"{name}/fp32/{node.name}/{i}"], to=TensorProto.FLOAT))
                node.input[i] = f"{name}/fp32/{node.name}/{i}"
        nodes.append(node)
        for j, name in enumerate(node.output):
            if name:
                node.output[j] = f"{name}/fp32"
                nodes.append(helper.make_node("Cast", [f"{name}/fp32"], [name], to=dtype))
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def check_images(input_hw: tuple[int, int]) -> Tensor:
    """Two textured check images at the input size (uint8 ``[2, H, W, 3]``), for parity checks of backends."""
    from tracker.synthetic import texture

    rng = np.random.default_rng(0)
    return torch.from_numpy(np.stack([texture(*input_hw, rng) for _ in range(2)]))


def export_onnx(
    featurizer: ViTFeaturizer,
    path: str | Path,
    *,
    precision: str = "fp32",
    opset: int = 17,
    min_cosine: float | None = None,
    check_frames: Tensor | None = None,
    verify: bool = True,
) -> ExportReport:
    """Export, check and write a featurizer as ONNX.

    Args:
        featurizer: a :class:`~tracker.featurizers.ViTFeaturizer` (weights loaded, LoRA merged).
        path: target ``.onnx`` path (written atomically after the checks pass).
        precision: ``fp32``, ``fp16`` or ``bf16`` weights and compute (LayerNorm and the L2 normalisation
            in fp32, attention's softmax in the half type so TensorRT can fuse attention). bf16 cannot run in
            ONNX Runtime: it is checked by the TensorRT build.
        opset: ONNX opset, at least 17.
        min_cosine: refuse the export below this per-cell cosine against torch fp32 (default 0.9999 for
            fp32, 0.999 otherwise).
        check_frames: ``[B, H_in, W_in, 3]`` float frames to compare on (default: 2 seeded random frames).
        verify: compare with torch in ONNX Runtime; False for a graph that a later stage checks (the TensorRT
            build compares its engine with torch), so TensorRT works without onnxruntime installed.

    Raises:
        TrackerError: opset too low, or the exported graph fails the checker or the comparison.
    """
    h, w = featurizer.input_hw
    if check_frames is None:
        check_frames = torch.rand(2, h, w, 3, generator=torch.Generator().manual_seed(0)) * 255
    check_frames = check_frames.float()
    inputs = {"frames": check_frames}
    with _precision(featurizer, precision):
        graph = _Graph(featurizer).eval()
        spec = _Spec(graph, (check_frames[:1],), ["frames"], ["features"], {"frames": {0: "batch"}})
        return _export(spec, featurizer, path, precision, opset, min_cosine, inputs, verify=verify)


def export_step_onnx(
    featurizer: ViTFeaturizer,
    path: str | Path,
    config: MatchConfig,
    *,
    precision: str = "fp32",
    opset: int = 17,
    min_cosine: float | None = None,
) -> ExportReport:
    """Export the whole per-frame step for global (ViT) matching as one graph.

    Inputs: ``frames`` ``[1, H_in, W_in, 3]`` float 0..255 at the input size, ``descriptors`` ``[N, C]`` unit
    query descriptors (N dynamic), ``frame_wh`` ``[2]`` the original frame's width and height. Outputs:
    ``features`` ``[1, C, h, w]``, ``uv`` ``[N, 2]`` grid positions, ``xy`` ``[N, 2]`` pixel positions in the
    original frame, ``score`` ``[N]`` cosine at the argmax (the matcher of :mod:`tracker.matching` with
    ``config``'s window radius and temperature).

    Raises:
        TrackerError: a search radius is set (local search needs per-point state; export global matching),
            or the export fails its checks.
    """
    if config.search_radius is not None:
        raise TrackerError("the step graph does global matching; export it with search_radius None")
    h, w = featurizer.input_hw
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(1, h, w, 3, generator=g) * 255
    with torch.inference_mode():
        grid = featurizer.features((frames.permute(0, 3, 1, 2) - featurizer.mean) / featurizer.std)[0]
    c, gh, gw = grid.shape
    cells = torch.stack([torch.randint(0, gw, (8,), generator=g), torch.randint(0, gh, (8,), generator=g)], 1)
    descriptors = grid[:, cells[:, 1], cells[:, 0]].T.contiguous()  # points that exist in the check frame
    frame_wh = torch.tensor([640.0, 480.0])
    inputs = {"frames": frames, "descriptors": descriptors, "frame_wh": frame_wh}
    with _precision(featurizer, precision):
        graph = _StepGraph(featurizer, config).eval()
        spec = _Spec(
            graph,
            (frames, descriptors[:3], frame_wh),
            ["frames", "descriptors", "frame_wh"],
            ["features", "uv", "xy", "score"],
            {"descriptors": {0: "points"}, "uv": {0: "points"}, "xy": {0: "points"}, "score": {0: "points"}},
        )
        return _export(spec, featurizer, path, precision, opset, min_cosine, inputs, step=config)


@dataclass
class _Spec:
    module: nn.Module
    example: tuple
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict


class _precision:
    """Context: the featurizer in ``precision`` on the CPU, restored to fp32 afterwards."""

    def __init__(self, featurizer: ViTFeaturizer, precision: str):
        if precision not in PRECISIONS:
            raise TrackerError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.featurizer, self.dtype = featurizer, PRECISIONS[precision]

    def __enter__(self):
        self.device = self.featurizer.device
        self.featurizer.cpu().eval().set_precision(self.dtype)

    def __exit__(self, *exc):
        self.featurizer.set_precision(torch.float32).to(self.device)


def _export(
    spec, featurizer, path, precision, opset, min_cosine, inputs, step: MatchConfig | None = None, verify: bool = True
):
    import onnx

    if opset < 17:
        raise TrackerError("opset must be >= 17 (LayerNormalization as one node)")
    path = Path(path)
    min_cosine = min_cosine if min_cosine is not None else (0.9999 if precision == "fp32" else 0.999)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx")
    os.close(fd)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                spec.module,
                spec.example,
                tmp,
                input_names=spec.input_names,
                output_names=spec.output_names,
                opset_version=opset,
                dynamic_axes=spec.dynamic_axes,
                dynamo=False,
            )
        model = onnx.load(tmp)
        if precision != "fp32":
            keep_fp32(model)
        onnx.checker.check_model(model)
        meta = {
            "model": featurizer.name,
            "input_hw": json.dumps(list(featurizer.input_hw)),
            "stride": str(featurizer.stride),
            "channels": str(featurizer.model.embed_dim),
            "precision": precision,
            "graph": "step" if step else "features",
        }
        if step:
            meta["match"] = json.dumps({"window_radius": step.window_radius, "temperature": step.temperature})
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, tmp)
        if precision == "bf16":
            cosine, provider = float("nan"), "none (bf16: ONNX Runtime cannot run it; the TensorRT build checks it)"
        elif not verify:
            cosine, provider = float("nan"), "none (checked by the TensorRT build)"
        else:
            import onnxruntime as ort

            providers = [
                p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
            ]
            session = ort.InferenceSession(tmp, providers=providers)
            provider = session.get_providers()[0]
            got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
            featurizer.set_precision(torch.float32)  # compare with torch fp32 (the caller's context restores)
            with torch.inference_mode():
                want = [t.float().numpy() for t in _as_tuple(spec.module(*inputs.values()))]
            cosine = float(cosine_per_cell(got[0], want[0]).min())
            if not cosine >= min_cosine:
                raise TrackerError(f"ONNX features differ from torch: min cosine {cosine:.6f} < {min_cosine}")
            if step:
                _check_step(got, want, precision)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return ExportReport(path=path, min_cosine=cosine, provider=provider)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _as_tuple(x) -> tuple:
    return x if isinstance(x, tuple) else (x,)


def _check_step(got: list[np.ndarray], want: list[np.ndarray], precision: str) -> None:
    """The step graph's positions and scores against torch fp32's."""
    tolerance = 1e-3 if precision == "fp32" else 0.05
    uv_err = float(np.abs(got[1] - want[1]).max())
    score_err = float(np.abs(got[3] - want[3]).max())
    if not (uv_err <= tolerance and score_err <= tolerance):
        raise TrackerError(f"ONNX step graph differs from torch: uv by {uv_err:.4g} cells, score by {score_err:.4g}")
