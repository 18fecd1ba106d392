"""TensorRT engines for ViT featurizers (TensorRT 10 and 11 Python APIs).

An engine is built from the ONNX graph of :mod:`export.onnx` as a *strongly typed* network: the graph's own
types decide the precision (fp16 or bf16 matmuls and attention, with LayerNorm and the L2 normalisation in
fp32 in the graph, see :mod:`export.onnx`), which is also the only mode TensorRT 11 has. Batch is
built for the shapes it runs: one optimisation profile per batch shape of
:func:`tracker.backends.run_sizes` (1, 8, 32 up to ``max_batch``), each tuned for exactly that shape; the spatial
size is static. Every engine carries a sidecar JSON (``<engine>.json``)
naming the GPU, its compute capability, the TensorRT version, the model, input size, batch range and
precision; an engine built elsewhere is refused with one line instead of failing deep inside TensorRT.
Engines are cached under ``$TRACKER_CACHE/engines`` keyed by all of these plus a digest of the weights, and
builds reuse a timing cache (one per GPU and TensorRT version). An engine whose features fall below
:data:`MIN_COSINE` (per precision) against torch fp32 on a check image is refused and not cached.

At run time :class:`TensorRTFeaturizer` resizes frames on the GPU with torch, binds torch CUDA tensors with
``set_tensor_address`` and runs ``execute_async_v3`` on its own stream, ordered with torch's current one.
Every batch runs at one of the engine's profile shapes (:func:`tracker.backends.plan_batches`: a tail batch is
padded, the padding's features dropped), and each shape has its own execution context on its own profile, its
shape and tensor addresses set once; so the CUDA graph captured for a shape always replays on the state it was
captured with (one shared context would replay the batch-8 graph after the tail batch re-set its shape).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor

from tracker.backends import plan_batches, run_sizes
from tracker.errors import TrackerError
from tracker.featurizers import Featurizer, ViTFeaturizer, to_input_size
from tracker.io.atomic import atomic_write

# Lowest per-cell cosine against torch fp32 an engine may have. bf16 keeps 8 mantissa bits against fp16's 11 (8x
# the rounding error per op); a cell whose features carry a relative error e has cosine about 1 - e^2 / 2, so
# the 0.999 that fp16 meets (e ~ 4%) is the edge of what bf16 reaches after 12 blocks: bf16 gets 0.995 (e ~ 10%).
# Random-weight test models are no guide (their bf16 cosine is 0.99999); real weights on a GPU must confirm it.
MIN_COSINE = {"fp32": 0.999, "fp16": 0.999, "bf16": 0.995}
PLATFORM_FIELDS = ("gpu", "compute_capability", "tensorrt")


@dataclass(frozen=True)
class EngineMeta:
    """What an engine was built for (its sidecar JSON).

    Attributes:
        model: model name as in the weights table.
        input_hw: ``(height, width)`` of the engine's input frames.
        stride: input pixels per grid cell.
        channels: feature channels.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        max_batch: the largest batch the engine runs at once (larger batches are split).
        profiles: the batch shape of each optimisation profile, in profile order (empty: an engine from before
            profiles per shape, one profile 1..``max_batch``).
        weights: sha256 over the weights' tensors (the cache key's model part).
        gpu: CUDA device name the engine was built on.
        compute_capability: e.g. ``"9.0"``.
        tensorrt: TensorRT version that built it.
        min_cosine: the engine's lowest per-cell cosine against torch fp32 on the check image.
    """

    model: str
    input_hw: tuple[int, int]
    stride: int
    channels: int
    precision: str
    max_batch: int
    weights: str
    gpu: str
    compute_capability: str
    tensorrt: str
    profiles: tuple[int, ...] = ()
    min_cosine: float = float("nan")

    def key(self) -> str:
        """Cache key: everything but the measured cosine."""
        fields = {k: v for k, v in asdict(self).items() if k != "min_cosine"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]

    @classmethod
    def read(cls, engine: Path) -> EngineMeta:
        sidecar = engine.with_name(engine.name + ".json")
        try:
            raw = json.loads(sidecar.read_text())
            raw["input_hw"] = tuple(raw["input_hw"])
            raw["profiles"] = tuple(raw.get("profiles", ()))
            return cls(**raw)
        except FileNotFoundError:
            raise TrackerError(
                f"{engine}: no {sidecar.name} beside it; write engines with `track export tensorrt`"
            ) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise TrackerError(f"{sidecar}: not an engine description ({type(exc).__name__})") from None

    def write(self, engine: Path) -> None:
        atomic_write(engine.with_name(engine.name + ".json"), json.dumps(asdict(self), indent=1).encode())


def current_platform(device: torch.device | str = "cuda") -> dict[str, str]:
    """The fields an engine must match here: GPU name, compute capability, TensorRT version."""
    import tensorrt as trt

    device = torch.device(device)
    major, minor = torch.cuda.get_device_capability(device)
    return {
        "gpu": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
        "tensorrt": trt.__version__,
    }


def check_platform(meta: EngineMeta, platform: dict[str, str], engine: Path) -> None:
    """Refuse an engine built for another GPU or TensorRT version, in one line.

    Raises:
        TrackerError: naming what the engine was built for, what this machine has, and the fix.
    """
    theirs = {f: getattr(meta, f) for f in PLATFORM_FIELDS}
    if theirs != {f: platform[f] for f in PLATFORM_FIELDS}:
        raise TrackerError(
            f"{engine} was built for {theirs['gpu']} (sm {theirs['compute_capability']}) with TensorRT "
            f"{theirs['tensorrt']}; this machine has {platform['gpu']} (sm {platform['compute_capability']}) "
            f"with TensorRT {platform['tensorrt']}: rebuild it with `track export tensorrt`"
        )


def weights_digest(featurizer: ViTFeaturizer) -> str:
    """sha256 over the model's tensors (names, shapes, fp32 bytes) and its input size."""
    digest = hashlib.sha256(json.dumps([featurizer.name, list(featurizer.input_hw)]).encode())
    for name, tensor in featurizer.model.state_dict().items():
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def tensorrt_package(cuda: str | None = None) -> str:
    """The TensorRT wheel for this torch's CUDA: ``tensorrt-cu12`` for CUDA 12.x, ``tensorrt-cu13`` for 13.x.

    The bare ``tensorrt`` metapackage resolves to the newest CUDA major, which a torch built for another one (and
    an older driver) cannot load next to it.
    """
    cuda = cuda if cuda is not None else torch.version.cuda
    major = (cuda or "").split(".")[0]
    return f"tensorrt-cu{major}" if major.isdigit() else "tensorrt-cu13"


def tensorrt_mismatch(cuda: str | None = None) -> str:
    """Why the installed TensorRT wheels do not fit torch's CUDA (``""`` when they do, or none is installed):
    ``tensorrt-cu12`` beside a torch built for CUDA 13 loads the wrong runtime or none."""
    import importlib.metadata

    want = tensorrt_package(cuda)
    installed = []
    for major in ("11", "12", "13"):
        try:
            importlib.metadata.version(f"tensorrt-cu{major}")
            installed.append(f"tensorrt-cu{major}")
        except importlib.metadata.PackageNotFoundError:
            pass
    if installed and want not in installed:
        return (
            f"{', '.join(installed)} installed, but torch is built for CUDA {cuda or torch.version.cuda}: "
            f"pip uninstall {' '.join(installed)} && pip install {want}"
        )
    return ""


def timing_cache_name(platform: dict[str, str]) -> str:
    """Timing-cache file name for one GPU model, compute capability and TensorRT version (kernel timings of one
    GPU or TensorRT version are noise, or refused, on another)."""
    gpu = "".join(c if c.isalnum() else "-" for c in platform["gpu"]).strip("-").lower()
    return f"timing-{gpu}-sm{platform['compute_capability']}-trt{platform['tensorrt']}.cache"


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise TrackerError(
            f"the tensorrt backend needs TensorRT 10 or 11: pip install {tensorrt_package()} (matching torch's "
            f"CUDA {torch.version.cuda})"
        ) from None
    if not torch.cuda.is_available():
        raise TrackerError("the tensorrt backend needs a CUDA GPU; none is visible to torch")
    return trt


def _logger(trt):
    return trt.Logger(trt.Logger.WARNING)


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    meta: EngineMeta,
    *,
    workspace_gib: float = 4.0,
    timing_cache: str | Path | None = None,
) -> Path:
    """Build a strongly typed engine from an ONNX graph and write it (and its sidecar) atomically.

    Args:
        onnx_path: graph with input ``frames`` ``[B, H, W, 3]`` and output ``features``.
        engine_path: where the engine goes.
        meta: what the engine is (input size, batch shapes, precision, platform...); one optimisation
            profile per ``meta.profiles`` shape (min = opt = max: each tuned for exactly the shape it runs).
        workspace_gib: builder workspace limit.
        timing_cache: file read before and updated after the build (kernel timings reused across builds).

    Raises:
        TrackerError: the parser or the builder fails (their first messages in the line).
    """
    trt = _trt()
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # Strongly typed: required on 10.x for graph-defined precision, accepted (and always on) in 11.x.
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(min(parser.num_errors, 3)))
        raise TrackerError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    h, w = meta.input_hw
    for b in meta.profiles or run_sizes(meta.max_batch):
        profile = builder.create_optimization_profile()
        profile.set_shape("frames", (b, h, w, 3), (b, h, w, 3), (b, h, w, 3))
        config.add_optimization_profile(profile)
    cache_bytes = Path(timing_cache).read_bytes() if timing_cache and Path(timing_cache).is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrackerError(f"TensorRT failed to build an engine from {onnx_path} (see its log above)")
    engine_path = Path(engine_path)
    atomic_write(engine_path, bytes(serialized))
    meta.write(engine_path)
    if timing_cache:
        atomic_write(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    return engine_path


class TensorRTFeaturizer(Featurizer):
    """A featurizer running a TensorRT engine on torch CUDA tensors.

    Args:
        engine: a deserialised ``ICudaEngine``.
        meta: its description.
        device: the CUDA device.
        cuda_graphs: capture each batch shape's ``execute_async_v3`` in a CUDA graph and replay it.

    Attributes:
        sizes: the batch shapes it runs (each profile's); any batch is split and padded to them.
    """

    def __init__(self, engine, meta: EngineMeta, device: torch.device | str = "cuda", cuda_graphs: bool = True):
        super().__init__()
        self.engine = engine
        self.meta = meta
        self.name = meta.model
        self.input_hw = tuple(meta.input_hw)
        self.stride = meta.stride
        self.precision = meta.precision
        self._device = torch.device(device)
        self.cuda_graphs = cuda_graphs
        self._profile = _profile_shapes(engine)  # batch shape -> profile index
        self.sizes = tuple(sorted(self._profile))
        self._contexts: dict[int, object] = {}
        self._buffers: dict[int, tuple[Tensor, Tensor]] = {}
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.graph_error: str | None = None  # why capturing failed (then every shape runs eagerly)
        self._scratch: Tensor | None = None  # activation memory shared by the contexts
        self.shared_memory: bool | None = None
        with torch.cuda.device(self._device):
            self._stream = torch.cuda.Stream(self._device)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cuda", cuda_graphs: bool = True):
        """Load an engine file written by :func:`build_engine`, refusing one built for another platform."""
        path = Path(path)
        if not path.is_file():
            raise TrackerError(f"engine file not found: {path}")
        meta = EngineMeta.read(path)
        trt = _trt()
        device = torch.device(device)
        check_platform(meta, current_platform(device), path)
        with torch.cuda.device(device):  # cuda:N: the engine's memory on that GPU, not on the current one
            runtime = trt.Runtime(_logger(trt))
            engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise TrackerError(f"TensorRT cannot deserialize {path} (corrupt, or built by another version)")
        return cls(engine, meta, device, cuda_graphs)

    @property
    def device(self) -> torch.device:
        return self._device

    def _io(self, batch: int) -> tuple[Tensor, Tensor]:
        if batch not in self._buffers:
            h, w = self.input_hw
            gh, gw = self.grid_hw
            x = torch.zeros(batch, h, w, 3, device=self._device)  # zeros: padding rows are finite
            out = torch.empty(batch, self.meta.channels, gh, gw, device=self._device)
            self._buffers[batch] = (x, out)
        return self._buffers[batch]

    def _context(self, batch: int, stream: torch.cuda.Stream):
        """The execution context of shape ``batch``: on its own profile, shape and addresses set once."""
        if batch not in self._contexts:
            context = self._new_context()
            if context is None:
                raise TrackerError("TensorRT could not create an execution context (GPU memory?)")
            if self.engine.num_optimization_profiles > 1:
                context.set_optimization_profile_async(self._profile[batch], stream.cuda_stream)
            x, out = self._io(batch)
            context.set_input_shape("frames", tuple(x.shape))
            context.set_tensor_address("frames", x.data_ptr())
            context.set_tensor_address("features", out.data_ptr())
            self._contexts[batch] = context
        return self._contexts[batch]

    def _new_context(self):
        """A context on the one activation buffer all contexts share (they run one after another on one
        stream), so contexts per shape cost no more memory than one; TensorRT's own allocation where this
        TensorRT's Python API differs (``shared_memory`` says which)."""
        import tensorrt as trt

        try:
            context = self.engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
            size = int(getattr(self.engine, "device_memory_size_v2", 0) or self.engine.device_memory_size)
            if self._scratch is None:
                self._scratch = torch.empty(max(size, 1), dtype=torch.uint8, device=self._device)
            if hasattr(context, "set_device_memory"):
                context.set_device_memory(self._scratch.data_ptr(), self._scratch.numel())
            else:
                context.device_memory = self._scratch.data_ptr()
            self.shared_memory = True
            return context
        except (AttributeError, TypeError):  # another API generation: one allocation per context
            self.shared_memory = False
            return self.engine.create_execution_context()

    def _enqueue(self, batch: int, stream: torch.cuda.Stream) -> None:
        if not self._context(batch, stream).execute_async_v3(stream.cuda_stream):
            raise TrackerError("TensorRT execute_async_v3 failed")

    @torch.inference_mode()
    def forward(self, frames: Tensor) -> Tensor:
        with torch.cuda.device(self._device):
            y = to_input_size(frames, self._device, self.input_hw).permute(0, 2, 3, 1)
            current = torch.cuda.current_stream(self._device)
            stream = self._stream
            outs, start = [], 0
            for size, real in plan_batches(y.shape[0], self.sizes):
                x, out = self._io(size)
                x[:real].copy_(y[start : start + real])
                stream.wait_stream(current)
                with torch.cuda.stream(stream):
                    if size in self._graphs:
                        self._graphs[size].replay()
                    else:
                        self._enqueue(size, stream)  # first run of this shape: also initialises TensorRT's state
                        if self.cuda_graphs:
                            self._capture(size, stream)
                current.wait_stream(stream)
                outs.append(out[:real].clone())
                start += real
            return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _capture(self, batch: int, stream: torch.cuda.Stream) -> None:
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=stream):
                self._enqueue(batch, stream)
        except Exception as exc:  # noqa: BLE001 - this TensorRT/driver cannot capture the engine: run it eagerly
            self.cuda_graphs = False
            self.graph_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            stream.synchronize()
            return
        self._graphs[batch] = graph


def _profile_shapes(engine) -> dict[int, int]:
    """``{batch shape: profile index}``: each profile's optimum batch (an engine of one profile 1..N from
    before profiles per shape runs at its optimum shape only; rebuild it for its larger shapes)."""
    shapes: dict[int, int] = {}
    for i in range(engine.num_optimization_profiles):
        _, opt, _ = engine.get_tensor_profile_shape("frames", i)
        shapes.setdefault(int(opt[0]), i)
    return shapes


def engine_for(
    featurizer: ViTFeaturizer,
    *,
    precision: str = "fp16",
    device: torch.device | str = "cuda",
    max_batch: int = 32,
    cache: str | Path | None = None,
    out: str | Path | None = None,
) -> tuple[TensorRTFeaturizer, str]:
    """The engine for ``featurizer`` here: from the cache, or exported, built, checked and cached.

    Args:
        featurizer: torch featurizer (weights loaded, LoRA merged), fp32.
        precision: ``fp32``, ``fp16`` or ``bf16``.
        device: the CUDA device to build for.
        max_batch: the largest batch the engine accepts.
        cache: engine cache folder (default ``$TRACKER_CACHE/engines``).
        out: also copy the engine (and its sidecar) here.

    Returns:
        the running featurizer and where its engine is (``"cached <path>"`` or ``"built <path>"``).

    Raises:
        TrackerError: TensorRT or a GPU missing, the build failing, or the engine's features below
            :data:`MIN_COSINE` against torch fp32 on the check image.
    """
    from export.onnx import check_images, cosine_per_cell, export_onnx

    _trt()
    device = torch.device(device)
    platform = current_platform(device)
    gh, gw = featurizer.grid_hw
    channels = int(featurizer.model.embed_dim)
    meta = EngineMeta(
        model=featurizer.name,
        input_hw=tuple(featurizer.input_hw),
        stride=featurizer.stride,
        channels=channels,
        precision=precision,
        max_batch=max_batch,
        weights=weights_digest(featurizer),
        profiles=run_sizes(max_batch),
        **platform,
    )
    folder = Path(cache) if cache else default_engine_dir()
    folder.mkdir(parents=True, exist_ok=True)
    engine_path = folder / f"{meta.model}-{meta.input_hw[1]}x{meta.input_hw[0]}-{precision}-{meta.key()}.engine"
    where = f"cached {engine_path}"
    if not engine_path.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = Path(tmp) / "features.onnx"
            # without onnxruntime the graph is checked through the engine (below), not in ONNX Runtime
            export_onnx(featurizer, onnx_path, precision=precision, verify=_has("onnxruntime"))
            build_engine(onnx_path, engine_path, meta, timing_cache=folder / timing_cache_name(platform))
        where = f"built {engine_path}"
    trt_featurizer = TensorRTFeaturizer.load(engine_path, device)
    check = check_images(featurizer.input_hw)
    with torch.inference_mode():
        want = featurizer.to(device)(check).float().cpu().numpy()
        got = trt_featurizer(check).float().cpu().numpy()
    featurizer.cpu()  # the torch copy is not needed on the GPU any more
    cosine = float(cosine_per_cell(got, want).min())
    if not cosine >= MIN_COSINE[precision]:
        engine_path.unlink(missing_ok=True)
        engine_path.with_name(engine_path.name + ".json").unlink(missing_ok=True)
        raise TrackerError(
            f"TensorRT {precision} engine refused: features at min cosine {cosine:.5f} < {MIN_COSINE[precision]} "
            "against torch fp32 on the check image; try --precision fp32"
        )
    meta = EngineMeta(**{**asdict(meta), "min_cosine": cosine})
    meta.write(engine_path)
    trt_featurizer.meta = meta
    if out:
        out = Path(out)
        atomic_write(out, engine_path.read_bytes())
        meta.write(out)
    return trt_featurizer, where


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def default_engine_dir() -> Path:
    """``$TRACKER_ENGINES`` or ``<weights cache>/engines``."""
    from tracker import weights as W

    return Path(os.environ.get("TRACKER_ENGINES", W.cache_dir() / "engines"))
