"""Featurizer backends besides torch: ONNX Runtime (CUDA or TensorRT execution providers when present, CPU
otherwise) running a graph written by ``export/onnx.py``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from tracker.errors import TrackerError
from tracker.featurizers import Featurizer


class OnnxFeaturizer(Featurizer):
    """A featurizer running an exported ONNX graph in ONNX Runtime.

    Frames are resized to the graph's input size with torch (the same antialiased bilinear resize as the
    torch backend) and fed as float NHWC; the graph normalises and returns unit features.

    Args:
        path: ``.onnx`` file written by ``export.onnx.export_onnx`` (its metadata gives model, size, stride).
        providers: ONNX Runtime execution providers in order of preference; default: TensorRT, CUDA, CPU,
            whichever are available.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise TrackerError("the onnx backend needs onnxruntime: pip install '.[export]'") from None
        path = Path(path)
        if not path.is_file():
            raise TrackerError(f"ONNX file not found: {path}")
        available = ort.get_available_providers()
        wanted = providers or ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=[p for p in wanted if p in available])
        except Exception as exc:
            raise TrackerError(f"cannot load {path} in ONNX Runtime: {type(exc).__name__}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "input_hw" not in meta:
            raise TrackerError(f"{path} was not written by `track export onnx` (no input size in its metadata)")
        self.name = meta.get("model", "onnx")
        self.input_hw = tuple(json.loads(meta["input_hw"]))
        self.stride = int(meta["stride"])

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @torch.inference_mode()
    def forward(self, frames: Tensor) -> Tensor:
        x = frames.permute(0, 3, 1, 2).float()
        if tuple(x.shape[-2:]) != self.input_hw:
            x = F.interpolate(x, size=self.input_hw, mode="bilinear", align_corners=False, antialias=True)
        out = self.session.run(None, {"frames": x.permute(0, 2, 3, 1).contiguous().numpy()})[0]
        return torch.from_numpy(out)
