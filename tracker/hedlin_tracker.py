"""``track VIDEO --model hedlin --points P``: Hedlin et al.'s prompt-optimised correspondence as a point tracker.

Hedlin et al. (NeurIPS 2023) is not a dense featurizer: there is no feature grid to match, only one optimised
text embedding per query point whose cross-attention map peaks at the point (:mod:`tracker.hedlin`). So it gets
its own small tracker that yields the same :class:`tracker.tracking.TrackResult` per frame as the
:class:`tracker.tracking.PointTracker`, and the command line's writers (JSON / CSV / NPZ, overlay) take it as they
are:

- on a point's query frame its embeddings are optimised there (:func:`tracker.hedlin.cached_embeddings`: read
  from ``$TRACKER_CACHE/hedlin/`` when the same frame, point, settings and weights were optimised before);
  the result is the query position itself (score 1, visible);
- on every frame the match is the argmax of the embeddings' combined attention map
  (:meth:`tracker.hedlin.HedlinMatcher.attention`), each frame on its own (no motion prior, no template update).

Visibility, a simple rule on the peak's strength: ``strength = log(S^2 * max M)`` of the combined map ``M``
(``S x S`` pixels, summing to 1), i.e. how far the peak stands above a flat map (0 for a flat map; for one layer
it is the peak's attention probability minus the map's log-mean-exp). ``score`` is the frame's strength over
the query frame's (1 on the query frame) and a point is visible when ``score >= VISIBLE_RATIO`` (0.5). No
forward-backward check: going back would mean optimising new embeddings at the match on every frame (the
optimisation's ``restarts x steps`` UNet passes with gradients per point per frame), far from cheap.

Weights: Stable Diffusion v1-4 (``CompVis/stable-diffusion-v1-4``, the authors' model) from the Hugging Face
cache or hub, ``--weights FOLDER`` (a local diffusers folder with ``unet/`` and ``vae/``), or ``--weights random``
(SD-1.x's real architecture, the ``sd-1.5`` entry of :data:`tracker.diffusion_features.ARCHITECTURES`, which v1-4
shares, with random weights). Memory is flat in video length: frames are streamed, only the embeddings
(``restarts x 77 x 768`` floats per point) and one strength per point are kept.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tracker.errors import TrackerError, WeightsUnavailable
from tracker.hedlin import HedlinConfig, HedlinMatcher, cached_embeddings
from tracker.tracking import Queries, TrackResult

CONFIG = HedlinConfig()  # the authors' evaluation settings (tests put a cheap one here)
PIPELINE = "CompVis/stable-diffusion-v1-4"  # the authors' eval/eval.py model
DEFAULT_SIZE = 512  # the paper's square input
VISIBLE_RATIO = 0.5  # visible when the peak is at least half as strong as on the query frame


@dataclass(frozen=True)
class HedlinState:
    """The points a run tracks: ``frame_hw`` of the video and the validated queries (pixel xy of the frame)."""

    frame_hw: tuple[int, int]
    queries: Queries


def _load_unet_vae(source: str):
    """UNet and VAE from a diffusers folder or hub id (the text encoder is not needed: embeddings are learnt)."""
    from tracker import diffusion_features as D

    diffusers = D._import("diffusers")
    local = Path(source).expanduser()
    offline = not local.exists() and not D._hub_reachable()
    kwargs = {"local_files_only": local.exists() or offline}
    where = str(local) if local.exists() else source
    try:
        import diffusers.utils.logging as dlog

        dlog.disable_progress_bar()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unet = diffusers.UNet2DConditionModel.from_pretrained(where, subfolder="unet", **kwargs)
            vae = diffusers.AutoencoderKL.from_pretrained(where, subfolder="vae", **kwargs)
    except Exception as exc:
        why = "not in the Hugging Face cache and huggingface.co is unreachable" if offline else "load failed"
        if local.exists():
            why = "not a diffusers folder with unet/ and vae/"
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise WeightsUnavailable(
            f"cannot load the Stable Diffusion UNet/VAE {source!r}: {why} ({type(exc).__name__}: {first}); get it "
            f"with `hf download {PIPELINE}` on a machine with internet, or pass --weights FOLDER or --weights random"
        ) from None
    return unet, vae


def weights_source(weights: str | None) -> str | None:
    """``--weights`` for hedlin -> the diffusers folder or hub id to load (``None`` for ``random``; the authors'
    ``CompVis/stable-diffusion-v1-4`` when not given). Checked without loading anything or probing the hub.

    Raises:
        TrackerError: one line saying what hedlin's ``--weights`` takes: a missing local folder, a file (a points
            file, a ``.pt``), a folder without ``unet/`` and ``vae/``, or more than one path.
    """
    from tracker import diffusion_features as D

    if weights == "random":
        return None
    parts = [p.strip() for p in (weights or "").split(",") if p.strip()]
    takes = "hedlin's --weights takes one diffusers folder with unet/ and vae/ (Stable Diffusion v1-4's) or 'random'"
    if len(parts) > 1:
        raise TrackerError(f"--weights {weights}: {takes}")
    if not parts:
        return PIPELINE
    given = parts[0]
    path = Path(given).expanduser()
    local = D._looks_local(given) or given.endswith("/")  # "name/": a folder, not org/name
    if local and not path.exists():
        raise TrackerError(f"--weights: folder not found: {given} (a diffusers folder with unet/, vae/)")
    if path.is_file():
        points = " (query points go in --points)" if path.suffix.lower() in (".json", ".csv", ".npz") else ""
        raise TrackerError(f"--weights {given} is a file; {takes}{points}")
    if path.is_dir():
        missing = [part for part in ("unet", "vae") if not (path / part).is_dir()]
        if missing:
            raise TrackerError(f"--weights {given} has no {' or '.join(f'{m}/' for m in missing)}; {takes}")
    return given


def pipeline_cached(source: str = PIPELINE) -> bool:
    """Whether the hub pipeline ``source``'s UNet and VAE configs are in the Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return all(isinstance(try_to_load_from_cache(source, f"{part}/config.json"), str) for part in ("unet", "vae"))


def input_side(size: str | None, keep_aspect: bool) -> int:
    """The square input side ``--size`` asks for (default 512): a multiple of 64; ``--keep-aspect`` refused."""
    if keep_aspect:
        raise TrackerError("hedlin: --keep-aspect does not apply (the paper's input is square)")
    text = (size or str(DEFAULT_SIZE)).lower()
    w, _, h = text.partition("x")
    try:
        side, other = int(w), int(h or w)
    except ValueError:
        raise TrackerError(f"hedlin: --size {size!r} is not N or NxN") from None
    if side != other or side < 64 or side % 64:
        raise TrackerError(f"hedlin: --size must be square and a multiple of 64 (default {DEFAULT_SIZE}), got {size}")
    return side


def check_queries(queries: Queries, frame_hw: tuple[int, int]) -> None:
    """Refuse points outside the ``(H, W)`` frame or on a negative frame index, in one line; needs no model, so
    ``track`` checks the points before it builds one (building SD's UNet takes tens of seconds)."""
    h, w = frame_hw
    x, y = queries.xy[:, 0], queries.xy[:, 1]
    outside = (x < -0.5) | (y < -0.5) | (x > w - 0.5) | (y > h - 0.5) | ~torch.isfinite(queries.xy).all(1)
    if outside.any():
        i = int(outside.nonzero()[0])
        raise TrackerError(f"point ({float(x[i]):g}, {float(y[i]):g}) is outside the {w}x{h} frame")
    if (queries.frame < 0).any():
        raise TrackerError("a point's frame index is negative")


class HedlinTracker:
    """Tracks query points with one optimised embedding set per point (see the module docstring).

    Attributes:
        name: ``"hedlin"``.
        matcher: the :class:`tracker.hedlin.HedlinMatcher` (UNet, VAE, settings).
        cache: folder of the optimised embeddings.
        input_hw: ``(S, S)``, the square the frames are resized to.
        grid_hw: ``(S / 16, S / 16)``, the finest cross-attention map (32x32 at 512); maps are upsampled
            bilinearly to ``S x S`` before the argmax.
    """

    name = "hedlin"

    def __init__(self, matcher: HedlinMatcher, cache: Path):
        self.matcher = matcher
        self.cache = Path(cache)
        side = matcher.size
        self.input_hw = (side, side)
        self.grid_hw = (side // (2 * matcher.vae_factor), side // (2 * matcher.vae_factor))

    @property
    def config(self) -> HedlinConfig:
        return self.matcher.config

    def empty_state(self, height: int, width: int) -> HedlinState:
        return HedlinState((height, width), Queries.create(np.zeros((0, 2))))

    def add_queries(self, state: HedlinState, queries: Queries) -> HedlinState:
        """Validate ``queries`` (:func:`check_queries`) and add them to ``state``."""
        check_queries(queries, state.frame_hw)
        return HedlinState(state.frame_hw, state.queries.concat(queries))

    def _to_input(self, xy: Tensor, frame_hw: tuple[int, int]) -> Tensor:
        """Frame pixels -> input pixels (centres at integers in both; the aspect is not kept)."""
        h, w = frame_hw
        scale = torch.tensor([self.matcher.size / w, self.matcher.size / h])
        return ((xy + 0.5) * scale - 0.5).clamp(0, self.matcher.size - 1)

    def _to_frame(self, uv: Tensor, frame_hw: tuple[int, int]) -> Tensor:
        h, w = frame_hw
        scale = torch.tensor([w / self.matcher.size, h / self.matcher.size])
        return (uv + 0.5) * scale - 0.5

    def _peak(self, image: Tensor, embeddings: Tensor) -> tuple[Tensor, float]:
        """``(input-pixel xy of the argmax, strength)`` of the combined map."""
        m = self.matcher.attention(image, embeddings)
        idx = int(torch.argmax(m))
        side = m.shape[1]
        strength = float(torch.log(m.flatten()[idx] * m.numel()))
        return torch.tensor([idx % side, idx // side], dtype=torch.float32), strength

    def track(
        self,
        frames: Iterable[np.ndarray],
        queries: Queries,
        batch_size: int = 1,
        state: HedlinState | None = None,
    ) -> Iterator[TrackResult]:
        """Yield one :class:`TrackResult` per frame (``[H, W, 3]`` uint8 RGB arrays), frame by frame
        (``batch_size`` is accepted for the command line and not used: each point's maps are its own passes)."""
        n = len(queries) if state is None else len(state.queries)
        embeddings: dict[int, Tensor] = {}
        reference: dict[int, float] = {}
        for t, frame in enumerate(frames):
            if state is None:
                state = self.add_queries(self.empty_state(*frame.shape[:2]), queries)
            q = state.queries
            xy = torch.full((n, 2), float("nan"))
            score = torch.full((n,), float("nan"))
            visible = torch.zeros(n, dtype=torch.bool)
            with torch.inference_mode(False):  # the CLI drives this under inference mode; optimising needs autograd
                pixels = torch.from_numpy(np.array(frame, dtype=np.uint8))  # a copy: the frame may be read-only
                image = self.matcher.prepare(pixels)
                for i in (q.frame == t).nonzero().flatten().tolist():
                    where = tuple(float(v) for v in self._to_input(q.xy[i], state.frame_hw))
                    with torch.enable_grad():
                        embeddings[i] = cached_embeddings(self.matcher, pixels, where, self.cache)
            for i in sorted(embeddings):
                uv, strength = self._peak(image, embeddings[i])
                if i not in reference:  # its query frame: the query itself, the strength to compare with
                    reference[i] = strength
                    xy[i], score[i], visible[i] = q.xy[i], 1.0, True
                    continue
                xy[i] = self._to_frame(uv, state.frame_hw)
                score[i] = strength / reference[i] if reference[i] > 0 else 0.0
                visible[i] = bool(score[i] >= VISIBLE_RATIO)
            yield TrackResult(frame_index=t, xy=xy, visible=visible, score=score)


def create_hedlin_tracker(
    frame_hw: tuple[int, int],
    *,
    size: str | None = None,
    keep_aspect: bool = False,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    precision: str | None = None,
    cache: Path | None = None,
    config: HedlinConfig | None = None,
) -> HedlinTracker:
    """Build the tracker: weights (see the module docstring), input side, precision (fp16 on CUDA, else fp32).

    Raises:
        TrackerError / WeightsUnavailable: one line (missing ``train`` extra, weights, size, precision).
    """
    from tracker import diffusion_features as D
    from tracker import weights as W

    side = input_side(size, keep_aspect)
    D._import("diffusers")  # the `train` extra: one line before anything is built
    device = torch.device(device)
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision is not None and precision not in dtypes:
        raise TrackerError(f"--precision must be one of {', '.join(dtypes)}, got {precision}")
    dtype = dtypes[precision] if precision else (torch.float16 if device.type == "cuda" else torch.float32)
    source = weights_source(weights)
    if source is None:
        unet, vae, _ = D.build_random("sd-1.5")
    else:
        unet, vae = _load_unet_vae(source)
    dlog = D._import("diffusers").utils.logging
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # diffusers logs "cast with torch_dtype in from_pretrained instead" on every .to(dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            unet, vae = unet.to(device, dtype), vae.to(device, dtype)
    finally:
        dlog.set_verbosity(level)
    vae.decoder = None  # only encoded, never decoded
    matcher = HedlinMatcher(unet, vae, side, config or CONFIG).to(device)
    return HedlinTracker(matcher, cache or W.cache_dir() / "hedlin")


def tracker_for_cli(args, frame_hw: tuple[int, int], device: str) -> tuple[str, HedlinTracker, str, HedlinConfig]:
    """``track``'s options -> ``(model, tracker, backend description, settings)``; the options that do not
    apply to hedlin (ONNX / TensorRT files and backends, compile) are one error line."""
    files = getattr(args, "onnx", None) or getattr(args, "engine", None)
    if files or getattr(args, "backend", "torch") not in ("torch", "auto"):
        raise TrackerError("hedlin runs on the torch backend only (no ONNX / TensorRT export of the optimisation)")
    if getattr(args, "compile", False):
        raise TrackerError("--compile does not apply to hedlin")
    tracker = create_hedlin_tracker(
        frame_hw,
        size=args.size,
        keep_aspect=args.keep_aspect,
        weights=args.weights,
        device=device,
        precision=args.precision,
    )
    names = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}  # --precision's names
    dtype = names[next(tracker.matcher.unet.parameters()).dtype]
    return "hedlin", tracker, f"torch {dtype}", tracker.config
