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
        status["onnx"] = "onnxruntime is not installed (pip install onnxruntime, or '.[ort-gpu]' on a GPU; not both)"
    else:
        import onnxruntime as ort

        providers = ort.get_available_providers()
        status["onnx"] = "" if not cuda or "CUDAExecutionProvider" in providers else "onnxruntime has no CUDA provider"
    if not cuda:
        status["tensorrt"] = "TensorRT needs a CUDA GPU"
    elif not torch.cuda.is_available():
        status["tensorrt"] = "no CUDA GPU is available to torch"
    elif importlib.util.find_spec("tensorrt") is None:
        from export.tensorrt import tensorrt_package

        status["tensorrt"] = f"tensorrt is not installed (pip install {tensorrt_package()})"
    elif importlib.util.find_spec("onnx") is None:
        status["tensorrt"] = "onnx is not installed (engines are built from an ONNX export: pip install '.[export]')"
    else:
        from export.tensorrt import tensorrt_mismatch

        status["tensorrt"] = tensorrt_mismatch()
    return status


def one_line(exc: BaseException) -> str:
    """An exception as one line: a :class:`TrackerError`'s message, else its type and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, TrackerError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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
        try:
            reason = available_backends(device)["tensorrt"]
        except Exception as exc:  # noqa: BLE001 - a broken install is a reason, not a crash
            reason = one_line(exc)
        if not reason:
            torch_featurizer = create_featurizer(  # weights and sizes: the user's errors, raised as they are
                model, frame_hw, size=size, keep_aspect=keep_aspect, weights=weights, **overrides
            )
            try:
                from export.tensorrt import engine_for

                featurizer, where = engine_for(
                    torch_featurizer, precision=precision, device=device, max_batch=max(options.batch_sizes)
                )
                return featurizer, f"tensorrt {precision} ({where})"
            except Exception as exc:  # noqa: BLE001 - any failure of the faster backend: say why, fall back
                reason = one_line(exc)
        if backend == "tensorrt":
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

    On a GPU the providers get the device's index (``cuda:N``), the TensorRT provider an engine and timing cache
    (``cache_dir``, default ``<engine cache>/ort``) and a profile of the batch shapes used (min 1, opt 8, max 32),
    so it neither rebuilds per shape nor per run; and the session's providers are checked after it is created:
    ONNX Runtime silently drops to the CPU when the CUDA libraries fail to load, after which binding CUDA memory
    fails far from the cause.

    Args:
        path: ``.onnx`` file written by ``export.onnx.export_onnx`` (its metadata gives model, size, stride).
        providers: ONNX Runtime execution providers in order of preference; default: TensorRT, CUDA, CPU,
            whichever are available (only CPU when ``device`` is the CPU).
        device: where frames are resized and features are returned.
        cache_dir: the TensorRT provider's engine and timing cache folder.
        batch_sizes: the batch shapes the TensorRT provider's profile covers (min, most used, max).
    """

    def __init__(
        self,
        path: str | Path,
        providers: list[str] | None = None,
        device: str | torch.device = "cpu",
        cache_dir: str | Path | None = None,
        batch_sizes: tuple[int, ...] = BATCH_SIZES,
    ):
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise TrackerError(
                "the onnx backend needs onnxruntime: pip install onnxruntime, or '.[ort-gpu]' on a GPU"
            ) from None
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
        cuda = self._device.type == "cuda"
        if cuda and "CUDAExecutionProvider" not in chosen:
            raise TrackerError("the onnx backend on CUDA needs onnxruntime-gpu (its CUDA provider is missing)")
        options = (
            provider_options(chosen, self._device, _graph_input_hw(path), cache_dir, batch_sizes) if cuda else None
        )
        try:
            self.session = ort.InferenceSession(str(path), providers=chosen, provider_options=options)
        except Exception as exc:
            raise TrackerError(f"cannot load {path} in ONNX Runtime: {one_line(exc)}") from None
        running = self.session.get_providers()
        if cuda and "CUDAExecutionProvider" not in running and "TensorrtExecutionProvider" not in running:
            raise TrackerError(
                f"ONNX Runtime fell back to {', '.join(running)} on {self._device}: its CUDA libraries did not load "
                "(onnxruntime-gpu needs the CUDA and cuDNN versions it was built for)"
            )
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


def provider_options(
    providers: list[str],
    device: torch.device,
    input_hw: tuple[int, int] | None,
    cache_dir: str | Path | None = None,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> list[dict[str, str]]:
    """ONNX Runtime provider options, one dict per provider: the GPU's index for the CUDA and TensorRT
    providers; for TensorRT an engine and timing cache and a profile of the batch shapes (when the graph's input
    size is known), so it builds once, for the shapes that run."""
    index = str(device.index or 0)
    out = []
    for name in providers:
        if name == "CUDAExecutionProvider":
            out.append({"device_id": index})
        elif name == "TensorrtExecutionProvider":
            from tracker import weights as W

            folder = Path(cache_dir) if cache_dir else W.cache_dir() / "engines" / "ort"
            folder.mkdir(parents=True, exist_ok=True)
            options = {
                "device_id": index,
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(folder),
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": str(folder),
            }
            if input_hw:
                h, w = input_hw
                sizes = sorted(batch_sizes)
                opt = 8 if 8 in sizes else sizes[len(sizes) // 2]
                for key, b in (("min", sizes[0]), ("opt", opt), ("max", sizes[-1])):
                    options[f"trt_profile_{key}_shapes"] = f"frames:{b}x{h}x{w}x3"
            out.append(options)
        else:
            out.append({})
    return out


def _graph_input_hw(path: Path) -> tuple[int, int] | None:
    """The input size recorded in an exported graph's metadata (read without its weights), or None."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        return tuple(json.loads(meta["input_hw"])) if "input_hw" in meta else None
    except Exception:  # noqa: BLE001 - no onnx, or not a graph: the session says what is wrong
        return None
