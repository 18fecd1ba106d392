"""ONNX export of a ViT featurizer (LoRA already merged), checked before it is written.

The graph takes ``frames``: ``[B, H_in, W_in, 3]`` float32 RGB in 0..255 at the featurizer's input size
(resizing stays in the backend, on its device) and returns ``features``: ``[B, C, h, w]`` float32, unit
L2 norm along C (the normalisation in fp32 also in the fp16 variant). Batch is dynamic, the spatial size
static (the position embedding is resampled once, when the model is built). Opset >= 17 keeps LayerNorm
one node. Every export passes ``onnx.checker`` and is compared with torch in ONNX Runtime on check frames
before it is moved into place; the file's metadata names the model, input size and stride.
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


class _Graph(nn.Module):
    """The exported function: float NHWC frames at input size -> unit feature grid."""

    def __init__(self, featurizer: ViTFeaturizer, dtype: torch.dtype):
        super().__init__()
        self.featurizer = featurizer
        self.dtype = dtype

    def forward(self, frames: Tensor) -> Tensor:
        f = self.featurizer
        x = (frames.permute(0, 3, 1, 2) - f.mean) / f.std
        return f.features(x.to(self.dtype))  # features() normalises in fp32


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


def export_onnx(
    featurizer: ViTFeaturizer,
    path: str | Path,
    *,
    fp16: bool = False,
    opset: int = 17,
    min_cosine: float | None = None,
    check_frames: Tensor | None = None,
) -> ExportReport:
    """Export, check and write a featurizer as ONNX.

    Args:
        featurizer: a :class:`~tracker.featurizers.ViTFeaturizer` (weights loaded, LoRA merged).
        path: target ``.onnx`` path (written atomically after the checks pass).
        fp16: export with fp16 weights and compute (the L2 normalisation stays fp32).
        opset: ONNX opset, at least 17.
        min_cosine: refuse the export below this per-cell cosine against torch fp32 (default 0.9999 for
            fp32, 0.999 for fp16).
        check_frames: ``[B, H_in, W_in, 3]`` float frames to compare on (default: 2 seeded random frames).

    Raises:
        TrackerError: opset too low, or the exported graph fails the checker or the comparison.
    """
    import onnx
    import onnxruntime as ort

    if opset < 17:
        raise TrackerError("opset must be >= 17 (LayerNormalization as one node)")
    path = Path(path)
    min_cosine = min_cosine if min_cosine is not None else (0.999 if fp16 else 0.9999)
    h, w = featurizer.input_hw
    if check_frames is None:
        check_frames = torch.rand(2, h, w, 3, generator=torch.Generator().manual_seed(0)) * 255
    featurizer = featurizer.cpu().eval()
    dtype = torch.float16 if fp16 else torch.float32
    graph = _Graph(featurizer, dtype).eval()
    if fp16:
        featurizer.model.half()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".onnx")
    os.close(fd)
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph,
                (check_frames[:1].float(),),
                tmp,
                input_names=["frames"],
                output_names=["features"],
                opset_version=opset,
                dynamic_axes={"frames": {0: "batch"}, "features": {0: "batch"}},
                dynamo=False,
            )
        model = onnx.load(tmp)
        onnx.checker.check_model(model)
        meta = {
            "model": featurizer.name,
            "input_hw": json.dumps(list(featurizer.input_hw)),
            "stride": str(featurizer.stride),
            "precision": "fp16" if fp16 else "fp32",
        }
        for key, value in meta.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, tmp)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        session = ort.InferenceSession(tmp, providers=providers)
        got = session.run(None, {"frames": check_frames.float().numpy()})[0]
        if fp16:
            featurizer.model.float()
        with torch.inference_mode():
            want = _Graph(featurizer, torch.float32)(check_frames.float()).numpy()
        cosine = float(cosine_per_cell(got, want).min())
        if not cosine >= min_cosine:
            raise TrackerError(f"ONNX features differ from torch: min cosine {cosine:.6f} < {min_cosine}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return ExportReport(path=path, min_cosine=cosine, provider=session.get_providers()[0])
    finally:
        Path(tmp).unlink(missing_ok=True)
        if fp16:
            featurizer.model.float()
