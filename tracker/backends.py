"""Featurizer backends: torch (eager or compiled, fp32/fp16/bf16), ONNX Runtime and TensorRT.

:func:`build_featurizer` is the one entry point: it turns a model name and :class:`BackendOptions` into a
:class:`~tracker.featurizers.Featurizer` (``[B, H, W, 3]`` uint8 frames -> unit ``[B, C, h, w]`` grid) and a
one-line description of what runs. ``backend="auto"`` takes the fastest backend that works here and says
which, and why the faster ones were passed over.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tracker.errors import TrackerError
from tracker.featurizers import VIT_MODELS, Featurizer, ViTFeaturizer, create_featurizer, to_input_size

BACKENDS = ("auto", "torch", "onnx", "tensorrt")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BATCH_SIZES = (1, 8, 32)  # the batch shapes fixed-shape backends run: `track`'s 1 (init) and 8, the bench's 32


def run_sizes(max_batch: int, sizes: tuple[int, ...] = BATCH_SIZES) -> tuple[int, ...]:
    """The batch shapes a fixed-shape backend allowing up to ``max_batch`` frames runs: ``sizes`` up to it, and it."""
    if max_batch < 1:
        raise TrackerError(f"the largest batch must be at least 1, got {max_batch}")
    return tuple(sorted({b for b in sizes if b <= max_batch} | {max_batch}))


def plan_batches(n: int, sizes: tuple[int, ...]) -> list[tuple[int, int]]:
    """Split ``n`` frames into runs at the shapes ``sizes`` only: ``[(shape, frames), ...]`` in order.

    Full runs of the largest shape first; the rest (a tail batch) runs at the smallest shape that holds it,
    padded. A compiled or captured featurizer then never meets a new shape inside a timed run (no recompile,
    no new CUDA-graph capture), whatever the video's length.
    """
    largest = max(sizes)
    plan = [(largest, largest)] * (n // largest)
    rest = n - largest * len(plan)
    if rest:
        plan.append((min(b for b in sizes if b >= rest), rest))
    return plan


class PaddedBatches:
    """``fn`` (a batch in, a batch out along dim 0) called at the shapes ``sizes`` only.

    Each call's batch is split by :func:`plan_batches`; a short run is padded with copies of its last item and
    the padding's outputs are dropped. Items of a batch are independent (a ViT in eval mode), so the results
    equal ``fn`` on the batch as given. Outputs of several runs are cloned before the next run (a CUDA-graph
    replay reuses its output buffer).

    Attributes:
        shapes: every batch shape ``fn`` was called with (tests read it).
    """

    def __init__(self, fn, sizes: tuple[int, ...] = BATCH_SIZES):
        self.fn = fn
        self.sizes = tuple(sorted(set(sizes)))
        self.shapes: set[int] = set()

    def __call__(self, x: Tensor) -> Tensor:
        plan = plan_batches(x.shape[0], self.sizes)
        outs, start = [], 0
        for size, real in plan:
            chunk = x[start : start + real]
            if real < size:
                chunk = torch.cat([chunk, chunk[-1:].expand(size - real, *chunk.shape[1:])])
            self.shapes.add(size)
            out = self.fn(chunk)[:real]
            outs.append(out.clone() if len(plan) > 1 else out)
            start += real
        return outs[0] if len(outs) == 1 else torch.cat(outs)


@dataclass(frozen=True)
class BackendOptions:
    """How the featurizer runs.

    Attributes:
        backend: ``auto``, ``torch``, ``onnx`` or ``tensorrt``.
        precision: ``fp32``, ``fp16`` or ``bf16``; None: fp16 for ViT models on CUDA, else fp32.
        compile: torch backend only: ``torch.compile`` (CUDA graphs on CUDA).
        onnx: ONNX file written by ``track export onnx`` (the onnx backend's graph).
        engine: TensorRT engine written by ``track export tensorrt``; without it the tensorrt backend builds
            (or takes from the engine cache) an engine for the model.
        batch_sizes: the only batch shapes the compiled torch path runs (others are split and padded to them:
            :class:`PaddedBatches`); a TensorRT engine has one optimisation profile per shape.
    """

    backend: str = "auto"
    precision: str | None = None
    compile: bool = False
    onnx: str | None = None
    engine: str | None = None
    batch_sizes: tuple[int, ...] = BATCH_SIZES

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise TrackerError(f"--backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise TrackerError(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.onnx and self.engine:
            raise TrackerError("give --onnx or --engine, not both")
        if self.onnx and self.backend not in ("auto", "onnx"):
            raise TrackerError(f"--onnx is for --backend onnx, not {self.backend}")
        if self.engine and self.backend not in ("auto", "tensorrt"):
            raise TrackerError(f"--engine is for --backend tensorrt, not {self.backend}")
        if self.compile and self.backend not in ("auto", "torch"):
            raise TrackerError("--compile applies to the torch backend only")


def pick_device(requested: str | None) -> str:
    """``--device``: cuda when available by default; a clear error when the request cannot be met."""
    if requested is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested not in ("cpu", "cuda") and not requested.startswith("cuda:"):
        raise TrackerError(f"--device must be cpu or cuda, got {requested!r}")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise TrackerError("--device cuda: no CUDA GPU is available to torch on this machine")
    return requested


def available_backends(device: str | torch.device) -> dict[str, str]:
    """Which backends can run on ``device``: name -> ``""`` when usable, else the reason it is not."""
    cuda = torch.device(device).type == "cuda"
    status = {"torch": ""}
    if importlib.util.find_spec("onnxruntime") is None:
        status["onnx"] = "onnxruntime is not installed (pip install '.[export]')"
    else:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        status["onnx"] = "" if not cuda or "CUDAExecutionProvider" in providers else "onnxruntime has no CUDA provider"
    if not cuda:
        status["tensorrt"] = "TensorRT needs a CUDA GPU"
    elif not torch.cuda.is_available():
        status["tensorrt"] = "no CUDA GPU is available to torch"
    elif importlib.util.find_spec("tensorrt") is None:
        status["tensorrt"] = "tensorrt is not installed (pip install '.[trt]')"
    else:
        status["tensorrt"] = ""
    return status


def default_precision(model: str, device: str | torch.device) -> str:
    """fp16 for ViT models on CUDA (features within cosine 0.999 of fp32), fp32 otherwise."""
    return "fp16" if model in VIT_MODELS and torch.device(device).type == "cuda" else "fp32"


def build_featurizer(
    model: str,
    frame_hw: tuple[int, int],
    options: BackendOptions = BackendOptions(),
    *,
    size: str | None = None,
    keep_aspect: bool = False,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    **overrides,
) -> tuple[Featurizer, str]:
    """Build the featurizer for ``model`` on the requested backend.

    Args:
        model: a concrete model name (``auto`` resolved by :func:`tracker.featurizers.resolve_model`); with
            ``options.onnx`` / ``options.engine`` the file's own model and size are used.
        frame_hw: ``(height, width)`` of the video.
        options: backend, precision, compile, files.
        size, keep_aspect, weights, device, overrides: as for :func:`tracker.featurizers.create_featurizer`.

    Returns:
        ``(featurizer, description)``, e.g. ``"tensorrt fp16 (engine cache: ...)"`` or
        ``"torch fp32 on cpu (auto: tensorrt: TensorRT needs a CUDA GPU)"``.

    Raises:
        TrackerError: the backend cannot run here, the files do not fit, or precision is unsupported.
    """
    device = torch.device(device)
    backend = options.backend
    if options.onnx or options.engine:
        if size or weights:
            raise TrackerError("--size and --weights come from the ONNX/engine file")
        if options.onnx:
            featurizer = OnnxFeaturizer(options.onnx, device=device)
            return featurizer, f"onnx ({featurizer.provider})"
        from export.tensorrt import TensorRTFeaturizer

        featurizer = TensorRTFeaturizer.load(options.engine, device=device)
        return featurizer, f"tensorrt {featurizer.precision} ({options.engine})"
    precision = options.precision or default_precision(model, device)
    passed_over = []
    if backend in ("auto", "tensorrt") and model in VIT_MODELS:
        reason = available_backends(device)["tensorrt"]
        if not reason:
            from export.tensorrt import engine_for

            torch_featurizer = create_featurizer(
                model, frame_hw, size=size, keep_aspect=keep_aspect, weights=weights, **overrides
            )
            try:
                featurizer, where = engine_for(torch_featurizer, precision=precision, device=device)
                return featurizer, f"tensorrt {precision} ({where})"
            except TrackerError as exc:
                if backend == "tensorrt":
                    raise
                reason = str(exc)
        elif backend == "tensorrt":
            raise TrackerError(f"--backend tensorrt: {reason}")
        passed_over.append(f"tensorrt: {reason}")
    elif backend == "tensorrt":
        raise TrackerError(f"--backend tensorrt runs ViT models ({', '.join(VIT_MODELS)}), not {model!r}")
    if backend == "onnx":
        raise TrackerError("--backend onnx needs --onnx FILE (write one with `track export onnx`)")
    featurizer = create_featurizer(
        model, frame_hw, size=size, keep_aspect=keep_aspect, weights=weights, device=device, **overrides
    )
    if isinstance(featurizer, ViTFeaturizer):
        if precision == "fp16" and device.type == "cpu":
            raise TrackerError("--precision fp16 needs CUDA; on CPU use fp32 or bf16")
        featurizer.set_precision(PRECISIONS[precision])
        if options.compile:
            featurizer.compile()
            featurizer._tokens = PaddedBatches(featurizer._tokens, options.batch_sizes)  # no recompile on a tail
    elif precision != "fp32" or options.compile:
        raise TrackerError(f"{model} runs in fp32 eager only (--precision/--compile apply to ViT models)")
    note = f" (auto: {'; '.join(passed_over)})" if backend == "auto" and passed_over else ""
    compiled = " compiled" if options.compile else ""
    return featurizer, f"torch {precision}{compiled} on {device.type}{note}"


# --------------------------------------------------------------------------- ONNX Runtime


class OnnxFeaturizer(Featurizer):
    """A featurizer running an exported ONNX graph in ONNX Runtime.

    Frames are resized to the graph's input size with torch on ``device`` (the same antialiased bilinear
    resize as the torch backend) and fed as float NHWC; the graph normalises and returns unit features. On
    CUDA, input and output are bound to torch CUDA tensors (IO binding): nothing returns to the host
    between the featurizer and the matcher.

    Args:
        path: ``.onnx`` file written by ``export.onnx.export_onnx`` (its metadata gives model, size, stride).
        providers: ONNX Runtime execution providers in order of preference; default: TensorRT, CUDA, CPU,
            whichever are available (only CPU when ``device`` is the CPU).
        device: where frames are resized and features are returned.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, device: str | torch.device = "cpu"):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise TrackerError("the onnx backend needs onnxruntime: pip install '.[export]'") from None
        path = Path(path)
        if not path.is_file():
            raise TrackerError(f"ONNX file not found: {path}")
        self._device = torch.device(device)
        available = ort.get_available_providers()
        if providers is None:
            providers = ["CPUExecutionProvider"]
            if self._device.type == "cuda":
                providers = ["TensorrtExecutionProvider", "CUDAExecutionProvider", *providers]
        chosen = [p for p in providers if p in available]
        if self._device.type == "cuda" and "CUDAExecutionProvider" not in chosen:
            raise TrackerError("the onnx backend on CUDA needs onnxruntime-gpu (its CUDA provider is missing)")
        try:
            self.session = ort.InferenceSession(str(path), providers=chosen)
        except Exception as exc:
            raise TrackerError(f"cannot load {path} in ONNX Runtime: {type(exc).__name__}") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "input_hw" not in meta:
            raise TrackerError(f"{path} was not written by `track export onnx` (no input size in its metadata)")
        self.name = meta.get("model", "onnx")
        self.input_hw = tuple(json.loads(meta["input_hw"]))
        self.stride = int(meta["stride"])
        self.precision = meta.get("precision", "fp32")
        if "channels" in meta:
            self.channels = int(meta["channels"])
        else:  # graphs exported before the channel count was recorded: ask the graph
            probe = np.zeros((1, *self.input_hw, 3), np.float32)
            self.channels = int(self.session.run(None, {"frames": probe})[0].shape[1])

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    @torch.inference_mode()
    def forward(self, frames: Tensor) -> Tensor:
        x = to_input_size(frames, self._device, self.input_hw).permute(0, 2, 3, 1).contiguous()
        b = x.shape[0]
        h, w = self.grid_hw
        out = torch.empty(b, self.channels, h, w, device=self._device)
        binding = self.session.io_binding()
        kind = "cuda" if self._device.type == "cuda" else "cpu"
        index = (self._device.index or 0) if kind == "cuda" else 0
        binding.bind_input("frames", kind, index, np.float32, list(x.shape), x.data_ptr())
        binding.bind_output("features", kind, index, np.float32, list(out.shape), out.data_ptr())
        if kind == "cuda":
            torch.cuda.current_stream(self._device).synchronize()  # x is written before ORT reads it
        self.session.run_with_iobinding(binding)
        return out
