"""Featurizers: frames in, an L2-normalised feature grid ``[B, C, h, w]`` out.

Every featurizer is a pure ``frames -> features`` function with a fixed input size per video. Frames are
``[B, H, W, 3]`` uint8 RGB tensors on any device; resize and normalisation happen on the featurizer's device.
``geometry(frame_h, frame_w)`` gives the exact cell <-> pixel mapping (see :mod:`tracker.geometry`).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tracker.choices import DIFFUSION_MODELS, DINOV3_MODELS, MODEL_NAMES, VIT_MODELS, check_model_name  # noqa: F401 - re-exported
from tracker.errors import TrackerError
from tracker.geometry import GridGeometry
from tracker.matching import MatchConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_input_size(frames: Tensor, device: torch.device, input_hw: tuple[int, int]) -> Tensor:
    """``[B, H, W, 3]`` uint8 frames -> ``[B, 3, h_in, w_in]`` float32 0..255 on ``device``.

    uint8 frames go to a GPU as they are (a quarter of the float bytes), through pinned memory so the copy is
    asynchronous; conversion and the antialiased bilinear resize run on ``device``. Every backend uses this.
    """
    if frames.device.type == "cpu" and device.type == "cuda":
        frames = frames.pin_memory()
    x = frames.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
    if tuple(x.shape[-2:]) != tuple(input_hw):
        x = F.interpolate(x, size=input_hw, mode="bilinear", align_corners=False, antialias=True)
    return x


class Featurizer(nn.Module):
    """Interface shared by all featurizers.

    Attributes:
        name: model name as in the weights table (``distilldift``, ``dinov2-s``, ``sift`` ...).
        input_hw: ``(height, width)`` the frames are resized to.
        stride: input pixels per grid cell.
    """

    name: str
    input_hw: tuple[int, int]
    stride: int

    @property
    def grid_hw(self) -> tuple[int, int]:
        """``(h, w)`` of the feature grid."""
        return self.input_hw[0] // self.stride, self.input_hw[1] // self.stride

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def geometry(self, frame_h: int, frame_w: int) -> GridGeometry:
        """The cell <-> pixel mapping for frames of ``frame_h x frame_w`` pixels."""
        h, w = self.grid_hw
        return GridGeometry(frame_h=frame_h, frame_w=frame_w, grid_h=h, grid_w=w)

    def forward(self, frames: Tensor) -> Tensor:  # pragma: no cover - interface
        """``[B, H, W, 3]`` uint8 RGB -> ``[B, C, h, w]`` float32, unit L2 norm along C."""
        raise NotImplementedError


class ViTFeaturizer(Featurizer):
    """DINOv2-with-registers ViT (optionally with DistillDIFT LoRA merged): final normed patch tokens.

    Args:
        model: a timm ``VisionTransformer`` built at ``input_hw`` (position embedding already sized for it).
        name: model name for messages and outputs.
        input_hw: ``(height, width)``, multiples of the patch size.
    """

    def __init__(self, model: nn.Module, name: str, input_hw: tuple[int, int]):
        super().__init__()
        self.model = model.eval()
        self.name = name
        self.input_hw = input_hw
        self.stride = int(model.patch_embed.patch_size[0])
        self.dtype = torch.float32
        self._tokens = self.model.forward_features
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def set_precision(self, dtype: torch.dtype) -> ViTFeaturizer:
        """Run the transformer in ``dtype`` (fp32, fp16 or bf16 weights and activations).

        Pre-processing and the final L2 normalisation stay fp32; torch's LayerNorm and attention softmax
        kernels accumulate in fp32 for half inputs.
        """
        self.model.to(dtype)
        self.dtype = dtype
        return self

    def compile(self, mode: str | None = None) -> ViTFeaturizer:
        """``torch.compile`` the transformer; on CUDA ``reduce-overhead`` (CUDA graphs) by default.

        Each new batch size compiles once more; feed constant batches for steady speed.
        """
        mode = mode or ("reduce-overhead" if self.device.type == "cuda" else "default")
        self._tokens = torch.compile(self.model.forward_features, mode=mode, dynamic=False)
        return self

    def preprocess(self, frames: Tensor) -> Tensor:
        """``[B, H, W, 3]`` uint8 -> ``[B, 3, h_in, w_in]`` ImageNet-normalised float32 on device
        (:func:`to_input_size`, then normalisation on the featurizer's device)."""
        return (to_input_size(frames, self.device, self.input_hw) - self.mean) / self.std

    def features(self, x: Tensor) -> Tensor:
        """Pre-processed ``[B, 3, h_in, w_in]`` -> ``[B, C, h, w]`` L2-normalised (normalisation in fp32)."""
        tokens = self._tokens(x.to(self.dtype))  # final norm applied
        patches = tokens[:, self.model.num_prefix_tokens :]
        head = getattr(self.model, "patch_head", None)  # the supervised DistillDIFT student's head, if loaded
        if head is not None:
            patches = head(patches)  # [B, N, C] -> [B, N, C]: Linear, ReLU, Linear, ReLU
        b, _, c = patches.shape
        h, w = self.grid_hw
        grid = patches.transpose(1, 2).reshape(b, c, h, w)
        return F.normalize(grid.float(), dim=1)

    @torch.inference_mode()
    def forward(self, frames: Tensor) -> Tensor:
        return self.features(self.preprocess(frames))


class SiftFeaturizer(Featurizer):
    """Weight-free dense RootSIFT, batched and on any device.

    One 128-d descriptor (4x4 spatial bins of 4 pixels, 8 orientations, fixed orientation: tracking wants
    translation, not rotation invariance) per ``stride x stride`` block of the resized grey frame. The output is
    that of kornia's ``DenseSIFTDescriptor(num_ang_bins=8, num_spatial_bins=4, spatial_bin_size=4,
    rootsift=True, stride=4, padding=4)`` (the seed's featurizer; equal to it to 1e-6, see
    ``tests/test_featurizers_sift.py``), computed in a way that costs a tenth on a CPU:

    1. central-difference gradients (replicated border), magnitude and orientation, each pixel voting into its
       two nearest of 8 orientation bins (kornia's soft binning);
    2. kornia pools each orientation map with a 4x4 triangular kernel at every pixel, then reads those maps at
       stride 4 only (its pooling conv has dilation 4, stride 4, padding 4). With stride = kernel size every pixel
       feeds exactly one of the read samples, so the votes, weighted by the triangular kernel at their place in
       their 4x4 block, are added straight into a ``[8, h + 3, w + 3]`` map of the samples (one ``index_add_``);
    3. the descriptor of output ``(i, j)`` is the 4x4 window of samples at ``(i..i+3, j..j+3)`` (a strided view,
       copied once into ``[128, h, w]``, channel ``angle * 16 + row * 4 + col`` as kornia's);
    4. L2 normalisation (the norm from a 4x4 box sum of the samples' squared sums), clipping at 0.2, then
       RootSIFT and the final L2 normalisation folded into one ``sqrt(c * q + e)`` per vector (the second L2
       normalisation cancels in RootSIFT's L1 normalisation).

    Output ``j`` is centred at input ``x = j * stride - padding + 5.5``: ``stride * (j + 0.5) - 0.5`` for
    ``stride = padding = 4``, the project's grid convention. (OpenCV's SIFT ``compute`` on a dense keypoint
    grid gave the same kind of descriptor at 40x kornia's cost.)

    On the CPU (uint8 frames) a batch goes through frame by frame, and the luma table a strip of rows at a time:
    every buffer stays a few MB or less, in cache and on the heap (a whole 720p batch's grey copy and descriptor
    maps are 26-30 MB each, above :mod:`tracker.allocator`'s 16 MiB threshold: mapped afresh and faulted in page by
    page every batch). Same floats as the whole batch at once; on 720p batches of 8 (one thread) 16.3 -> 9.3 ms a
    frame (``benchmarks/results/cpu-2core/track_fps_sift_profile.md``).

    Args:
        input_hw: ``(height, width)`` the frame is resized to; multiples of ``stride``.
    """

    stride = 4
    eps = 1e-10  # kornia's guard in the gradient magnitude and RootSIFT
    clip = 0.2
    strip_rows = 32  # rows of a frame through the luma table at a time (720p: 480 KB of floats, in cache)

    def __init__(self, input_hw: tuple[int, int]):
        super().__init__()
        self.name = "sift"
        self.input_hw = input_hw
        luma = torch.tensor([0.299, 0.587, 0.114]) / 255
        self.register_buffer("luma", luma.view(1, 3, 1, 1), persistent=False)
        # uint8 -> weighted channel table: cv2.LUT + a channel sum give the same floats as the torch product sum
        self._luma_lut = (torch.arange(256.0)[:, None] * luma).numpy().reshape(256, 1, 3)
        self._ones = np.ones((1, 3), np.float32)
        self._tables: dict = {}

    @property
    def device(self) -> torch.device:
        return self.luma.device

    def _on_host(self, frames: Tensor) -> bool:
        """The OpenCV path: uint8 frames on the CPU, featurizer on the CPU."""
        return self.device.type == "cpu" and frames.device.type == "cpu" and frames.dtype == torch.uint8

    def _gray_into(self, frame: np.ndarray, out: np.ndarray, strip: np.ndarray) -> None:
        """``[H, W, 3]`` uint8 RGB -> ``out`` ``[H, W]`` float32 luma, ``len(strip)`` rows at a time through the
        ``[rows, W, 3]`` float32 ``strip`` (the table's per-channel floats, then their sum; OpenCV frees the GIL)."""
        rows = len(strip)
        for r in range(0, len(frame), rows):
            n = min(rows, len(frame) - r)
            cv2.transform(cv2.LUT(frame[r : r + n], self._luma_lut, dst=strip[:n]), self._ones, dst=out[r : r + n])

    def _gray(self, frames: Tensor) -> Tensor:
        """``[B, H, W, 3]`` RGB -> ``[B, 1, H, W]`` float32 luma in 0..1 on the featurizer's device, by the torch
        expression (uint8 frames on the CPU take :meth:`_gray_into` in :meth:`_forward_host`: a fifth of its time,
        the same floats)."""
        if frames.device.type == "cpu" and self.device.type == "cuda":
            frames = frames.pin_memory()
        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return (x * self.luma).sum(1, keepdim=True)

    def _layout(self, height: int, width: int) -> tuple[int, int, Tensor, Tensor]:
        """Output grid ``(h, w)``, each input pixel's sample index and triangular weight (cached per size)."""
        key = (height, width, self.device)
        if key not in self._tables:
            h, w = (height - 4) // 4 + 1, (width - 4) // 4 + 1
            tri = torch.tensor([0.5, 1.5, 1.5, 0.5]) / 2  # kornia's 4x4 pooling kernel is its outer product
            # sample m reads pooled row 4m - 4, which sums input rows 4m - 6 .. 4m - 3
            rows, cols = torch.arange(height) + 6, torch.arange(width) + 6
            cell = (rows // 4)[:, None] * (w + 3) + (cols // 4)[None, :]
            weight = tri[rows % 4][:, None] * tri[cols % 4][None, :]
            self._tables[key] = (h, w, cell.flatten().int().to(self.device), weight.to(self.device))
        return self._tables[key]

    def describe(self, gray: Tensor, out: Tensor | None = None) -> Tensor:
        """``[B, 1, H, W]`` float grey -> ``[B, 128, h, w]`` unit RootSIFT descriptors (kornia's values), written
        into ``out`` when given (contiguous, that shape)."""
        b, _, height, width = gray.shape
        h, w, cell, weight = self._layout(height, width)
        eps = self.eps
        p = F.pad(gray, (1, 1, 1, 1), mode="replicate")[:, 0]
        gx = (p[:, 1:-1, 2:] - p[:, 1:-1, :-2]) * 0.5
        gy = (p[:, 2:, 1:-1] - p[:, :-2, 1:-1]) * 0.5
        sq = gx * gx + gy * gy
        nonzero = sq > 0
        mag = torch.where(nonzero, torch.sqrt(sq + eps), torch.zeros_like(sq)) * weight
        ori = torch.where(nonzero, torch.atan2(gy, gx + eps) + 2.0 * math.pi, torch.full_like(sq, 2.0 * math.pi))
        o_big = 8.0 * ori / (2.0 * math.pi)
        bin0 = torch.floor(o_big)
        w1 = o_big - bin0
        w0 = (1.0 - w1) * mag
        w1 = w1 * mag
        bin0 = bin0.int() & 7
        bin1 = (bin0 + 1) & 7
        plane = (h + 3) * (w + 3)
        base = (torch.arange(b, dtype=torch.int32, device=gray.device) * (8 * plane))[:, None] + cell
        samples = sq.new_zeros(b * 8 * plane)
        samples.index_add_(0, (bin0.view(b, -1) * plane + base).flatten(), w0.flatten())
        samples.index_add_(0, (bin1.view(b, -1) * plane + base).flatten(), w1.flatten())
        samples = samples.view(b, 8, h + 3, w + 3)
        norm = F.avg_pool2d((samples * samples).sum(1, keepdim=True), 4, stride=1).mul_(16).sqrt_()  # [B, 1, h, w]
        s = samples.stride()
        windows = samples.as_strided((b, 8, 4, 4, h, w), (s[0], s[1], s[2], 1, s[2], 1)).reshape(b, 128, h, w)
        clipped = (windows / norm.clamp_min_(1e-12)).clamp_(0, self.clip)
        # RootSIFT sqrt(c / max(|c|_1, 1e-12) + eps), then / its L2 norm, whose square is |c|_1 / L + 128 eps
        total = clipped.sum(1, keepdim=True)
        l1 = total.clamp_min(1e-12)
        square = total / l1 + 128 * eps
        return torch.addcmul(eps / square, clipped, 1.0 / (l1 * square), out=out).sqrt_()

    @torch.inference_mode()
    def forward(self, frames: Tensor) -> Tensor:
        if self._on_host(frames):
            return self._forward_host(frames)
        gray = self._gray(frames)
        if tuple(gray.shape[-2:]) != self.input_hw:
            gray = F.interpolate(gray, size=self.input_hw, mode="bilinear", align_corners=False, antialias=True)
        desc = self.describe(gray)
        assert desc.shape[-2:] == self.grid_hw, (desc.shape, self.grid_hw)
        return desc

    def _forward_host(self, frames: Tensor) -> Tensor:
        """:meth:`forward` of uint8 CPU frames, frame by frame (the same floats; see the class docstring)."""
        pixels = frames.contiguous().numpy()
        b, height, width, _ = pixels.shape
        h, w = self.grid_hw
        out = torch.empty(b, 128, h, w)
        gray = np.empty((height, width), np.float32)  # reused by every frame of the batch
        strip = np.empty((min(self.strip_rows, height), width, 3), np.float32)
        luma = torch.from_numpy(gray)[None, None]  # a view: each frame's luma is written into it
        resize = (height, width) != self.input_hw
        for i, frame in enumerate(pixels):
            self._gray_into(frame, gray, strip)
            x = (
                F.interpolate(luma, size=self.input_hw, mode="bilinear", align_corners=False, antialias=True)
                if resize
                else luma
            )
            self.describe(x, out=out[i : i + 1])
        return out


# --------------------------------------------------------------------------- construction

DEFAULT_SIZE = {
    "vit": "434",
    "sift": "240",
    "dinov3": "448",
    "dift": "768",
    "dhf": "512",
}  # ViT: the paper's 434x434 (31x31); SIFT: short side 240, stride 4; DINOv3: 448x448 (28x28, patch 16);
# DIFT: the authors' 768x768 (48x48, stride 16); DHF: their 512x512 (64x64, stride 8)


def default_match_config(name: str, **overrides) -> MatchConfig:
    """Matcher defaults per model; ``overrides`` that are not None replace them.

    Semantic ViT features are matched globally against the query descriptor (DIFT / DistillDIFT protocol).
    Dense SIFT is not semantic: on BADJA (sift, short side 240) global matching scored PCK@0.2 0.04 on dog.
    Searching 3 cells around the previous estimate, the update rate trades drift on rigid motion for
    robustness to deformation (synthetic mean error px / PCK@0.2 dog / horsejump-high):
    update 0: 0.97 / 0.38 / 0.22; 0.2: 1.06 / 0.45 / 0.25; 0.5: 1.67 / 0.53 / 0.27. We take 0.2, which
    keeps the error on rigid motion near that of no update.
    """
    base = {"search_radius": 3.0, "update": 0.2} if name == "sift" else {}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return MatchConfig(**base)


def resolve_model(name: str, weights: str | None) -> tuple[str, str | None]:
    """Turn ``auto`` into a concrete model name without downloading anything big twice.

    ``auto`` is ``distilldift`` when its weights are given, cached or downloadable, else ``sift``.

    Returns:
        ``(model name, warning)``: the warning (one line) says why ``auto`` fell back and how to fix it.
    """
    from tracker import weights as W

    check_model_name(name)
    if name != "auto":
        return name, None
    if weights:
        return "distilldift", None
    spec = W.get_spec("distilldift")
    try:
        for source in (spec.base, spec.lora):
            W.fetch(source)
    except W.WeightsUnavailable as exc:
        return (
            "sift",
            f"--model auto: DistillDIFT weights unavailable ({exc}); using sift. To fix: {W.how_to_get(spec)}",
        )
    return "distilldift", None


def create_featurizer(
    name: str,
    frame_hw: tuple[int, int],
    size: str | None = None,
    keep_aspect: bool = False,
    weights: str | None = None,
    device: str | torch.device = "cpu",
    **overrides,
) -> Featurizer:
    """Build a featurizer for frames of ``frame_hw``.

    Args:
        name: a concrete model name (see :func:`resolve_model` for ``auto``).
        frame_hw: ``(height, width)`` of the video.
        size: ``"N"`` (square, or short side with ``keep_aspect``) or ``"WxH"``; None for the model's default.
        keep_aspect: preserve the frame's aspect ratio.
        weights: None (table sources), ``"random"``, or local file(s); see :func:`tracker.weight_loading.load_model`.
        device: where the featurizer runs.
        **overrides: timm architecture overrides (tiny models in tests).

    Raises:
        TrackerError: unknown model, bad size, weights unavailable or not fitting.
    """
    from tracker import weight_loading as WL
    from tracker import weights as W
    from tracker.geometry import SizeSpec

    if name == "hedlin":  # no feature grid (tracker.hedlin_tracker)
        raise TrackerError(
            "hedlin is not a dense featurizer: it runs as `track VIDEO --model hedlin --points P`, in "
            "`track eval badja|tapvid|synthetic` and in `track bench` (its own point tracker)"
        )
    if name == "sift":
        if weights:
            raise TrackerError("--weights does not apply to sift (it has no weights)")
        spec = SizeSpec.parse(size or DEFAULT_SIZE["sift"], keep_aspect=keep_aspect or size is None)
        return SiftFeaturizer(spec.resolve(*frame_hw, multiple=SiftFeaturizer.stride)).to(device)
    if name in DIFFUSION_MODELS:
        from tracker.diffusion_features import create_diffusion_featurizer

        key = "dift" if name == "dift" else "dhf"
        input_hw = SizeSpec.parse(size or DEFAULT_SIZE[key], keep_aspect=keep_aspect).resolve(*frame_hw, multiple=64)
        return create_diffusion_featurizer(name, input_hw, weights, device, **overrides)
    if name in DINOV3_MODELS:
        from tracker.dinov3 import PATCH, load_dinov3

        input_hw = SizeSpec.parse(size or DEFAULT_SIZE["dinov3"], keep_aspect=keep_aspect).resolve(
            *frame_hw, multiple=PATCH
        )
        return ViTFeaturizer(load_dinov3(name, input_hw, weights, **overrides), name, input_hw).to(device)
    model_spec = W.get_spec(name)
    input_hw = SizeSpec.parse(size or DEFAULT_SIZE["vit"], keep_aspect=keep_aspect).resolve(*frame_hw, multiple=14)
    model = WL.load_model(model_spec, input_hw, weights, **overrides)
    return ViTFeaturizer(model, name, input_hw).to(device)
