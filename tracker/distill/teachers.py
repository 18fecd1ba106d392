"""Teachers: DINOv2-with-registers ViT-B/14 and a diffusers UNet (SDXL-Turbo by default), and their disk cache.

DINOv2 teacher: final normed patch tokens of ``vit_base_patch14_reg4_dinov2`` at 434x434 (a 31x31 grid), the
same backbone the student starts from; its normed class token is the image's global embedding (retrieval).

Diffusion teacher (DistillDIFT's ``ensemble_ts`` teacher): the image at 980x980 in [-1, 1] is encoded by the VAE
(latent mean times the VAE's scaling factor), noised to each timestep of {51, 101, 151, 201} with the
scheduler's ``alphas_cumprod`` (``sqrt(a) z + sqrt(1 - a) eps``, a fixed noise per image and timestep), and
the UNet is run once per timestep with the prompt embeddings (empty prompt, or ``"a photo of a {category}"``).
SDXL UNets also get their ``added_cond_kwargs``: the pooled prompt embedding and the size/crop ``time_ids``
``(980, 980, 0, 0, 980, 980)``. (DistillDIFT's own UNet forward skipped SDXL's added conditioning.)

Which feature: DistillDIFT numbers the UNet's decoder layers as 0 = mid block, then for every up-block each
(resnet + cross-attention) layer and its upsampler in order, and takes layer 1: the first layer of the first
up-block. For SDXL at 980x980 the VAE gives a 122x122 latent (3 stride-2 convolutions with asymmetric padding:
980 -> 490 -> 245 -> 122), the UNet down-samples twice (122 -> 61 -> 31), so the first up-block runs at 31x31
with 1280 channels: layer 1 is ``unet.up_blocks[0].attentions[0]``'s output, ``[B, 1280, 31, 31]`` - exactly
the student's grid. The output of ``unet.up_blocks[0]`` as a whole is *not* that feature: its upsampler
already took it to 61x61. We hook the layer module and stop the UNet right after it (nothing later is run).
SD 1.5 / 2.1 down-sample three times, so at 980 their layer 1 is 16x16 and layer 4 (up-block 0's upsampler)
is the first at 31x31; any grid other than the student's is resized (bilinear, antialiased) to it, and
the cache records the native grid (``TeacherCache.diffusion_grid``), and the adapter card says so.

The teacher descriptor of a cell is ``[dino / |dino|, diffusion / |diffusion|]`` (both unit length, then
concatenated). Features are stored per image in a cache folder keyed by the image's content and the teachers'
settings, so each image goes through the teachers once.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tracker.distill.data import ImageEntry, decode_image, resize_image
from tracker.errors import TrackerError
from tracker.featurizers import IMAGENET_MEAN, IMAGENET_STD
from tracker.io.atomic import atomic_write

SDXL_TURBO = "stabilityai/sdxl-turbo"
HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion teacher.

    Attributes:
        source: a diffusers pipeline on the Hugging Face hub (``stabilityai/sdxl-turbo``,
            ``stable-diffusion-v1-5/stable-diffusion-v1-5``, ``stabilityai/stable-diffusion-2-1``), a local folder
            in the diffusers layout (``unet/``, ``vae/``, ``scheduler/``, text encoders), ``"random"`` (a tiny
            SDXL-like UNet and VAE with random weights and random prompt embeddings: the toolchain without
            downloads), or ``"none"`` (DINOv2 teacher only).
        input_size: square input side in pixels (the VAE floors odd sizes: 980 gives a 122x122 latent).
        timesteps: noise levels, one UNet run each; features averaged.
        layer: decoder layer in DistillDIFT's numbering (see the module docstring).
        prompt: prompt template; ``{category}`` is replaced by the image's sub-folder name.
    """

    source: str = SDXL_TURBO
    input_size: int = 980
    timesteps: tuple[int, ...] = (51, 101, 151, 201)
    layer: int = 1
    prompt: str = ""


@dataclass(frozen=True)
class TeacherConfig:
    """Both teachers and the grid their features are stored at (the student's).

    Attributes:
        arch: timm architecture of the DINOv2 teacher.
        dino_weights: None (weights table), a local file, or ``"random"``.
        dino_size: DINOv2 input side (multiple of 14).
        grid: ``(h, w)`` of the stored features (the student's grid).
        diffusion: the diffusion teacher.
        seed: seed of random teachers and of the noise.
        arch_overrides: timm overrides of the DINOv2 architecture (tiny models in tests).
    """

    arch: str = "vit_base_patch14_reg4_dinov2"
    dino_weights: str | None = None
    dino_size: int = 434
    grid: tuple[int, int] = (31, 31)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    seed: int = 0
    arch_overrides: tuple[tuple[str, int], ...] = ()

    def fingerprint(self) -> dict:
        """What the cached features depend on (JSON); a weights file counts by its content."""
        from tracker.distill.data import file_digest

        out = asdict(self)
        weights = self.dino_weights
        if weights not in (None, "random"):
            out["dino_weights"] = ",".join(f"sha256:{file_digest(Path(p.strip()))}" for p in weights.split(","))
        out["diffusion"]["timesteps"] = list(self.diffusion.timesteps)
        out["grid"] = list(self.grid)
        out["arch_overrides"] = [list(kv) for kv in self.arch_overrides]
        out["version"] = 1
        return out


class PromptEmbedding(NamedTuple):
    """Prompt conditioning of a UNet: ``hidden [1, L, D]`` (cross-attention) and, for SDXL, ``pooled [1, P]``."""

    hidden: Tensor
    pooled: Tensor | None


class TeacherFeatures(NamedTuple):
    """Teacher outputs for a batch, each unit length per cell, on the student's grid.

    Attributes:
        dino: ``[B, C1, h, w]`` float32.
        diffusion: ``[B, C2, h, w]`` float32, or None without a diffusion teacher.
        embedding: ``[B, C1]`` float32 unit global embedding (DINOv2 class token).
        diffusion_grid: the diffusion layer's own grid before resizing to ``(h, w)``, or None.
    """

    dino: Tensor
    diffusion: Tensor | None
    embedding: Tensor
    diffusion_grid: tuple[int, int] | None = None


def descriptor(dino: Tensor, diffusion: Tensor | None) -> Tensor:
    """``[.., C1 (+ C2), h, w]``: the L2-normalised DINOv2 and diffusion features, concatenated."""
    parts = [F.normalize(dino.float(), dim=-3)]
    if diffusion is not None:
        parts.append(F.normalize(diffusion.float(), dim=-3))
    return torch.cat(parts, dim=-3)


def to_grid(features: Tensor, grid: tuple[int, int]) -> Tensor:
    """Resize ``[B, C, h, w]`` to ``grid`` (bilinear, antialiased when shrinking); unchanged when it fits."""
    if tuple(features.shape[-2:]) == tuple(grid):
        return features
    return F.interpolate(features.float(), size=grid, mode="bilinear", align_corners=False, antialias=True)


# --------------------------------------------------------------------------- DINOv2


class DinoTeacher(nn.Module):
    """DINOv2 ViT: final normed patch tokens and the normed class token.

    Args:
        model: timm DINOv2 ``VisionTransformer`` built at ``input_hw``.
        input_hw: ``(height, width)``, multiples of 14.
    """

    def __init__(self, model: nn.Module, input_hw: tuple[int, int]):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.input_hw = input_hw
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    @torch.no_grad()
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, h, w]`` float 0..255 at ``input_hw`` -> ``([B, C, h/14, w/14], [B, C])`` both unit length."""
        x = (x.to(self.mean.device) - self.mean) / self.std
        tokens = self.model.forward_features(x)
        patches = tokens[:, self.model.num_prefix_tokens :]
        b, _, c = patches.shape
        h, w = (s // int(self.model.patch_embed.patch_size[0]) for s in self.input_hw)
        grid = patches.transpose(1, 2).reshape(b, c, h, w)
        return F.normalize(grid.float(), dim=1), F.normalize(tokens[:, 0].float(), dim=1)


# --------------------------------------------------------------------------- diffusion


class _Stop(Exception):
    """Raised by the feature hook to end the UNet's forward pass after the wanted layer."""


def decoder_layers(unet: nn.Module) -> list[nn.Module]:
    """The UNet's decoder layers in DistillDIFT's numbering: 0 = mid block, then per up-block each resnet
    (its cross-attention when the block has one, which runs right after it) and the upsampler."""
    layers = [unet.mid_block]
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            layers.append(attentions[j] if attentions is not None else resnet)
        layers.extend(block.upsamplers or [])
    return layers


class DiffusionTeacher(nn.Module):
    """One-step diffusion features averaged over timesteps.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        vae: a diffusers ``AutoencoderKL`` (only its encoder is used).
        alphas_cumprod: ``[T]`` the scheduler's cumulative alphas.
        prompts: prompt text -> embedding, for every prompt the teacher will be asked for.
        config: settings (input size, timesteps, layer).
    """

    def __init__(
        self,
        unet: nn.Module,
        vae: nn.Module,
        alphas_cumprod: Tensor,
        prompts: dict[str, PromptEmbedding],
        config: DiffusionConfig,
    ):
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        if getattr(self.vae, "decoder", None) is not None:
            self.vae.decoder = None  # never decoded: frees about half of the VAE
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.prompts = prompts
        self.config = config
        layers = decoder_layers(unet)
        if not 0 <= config.layer < len(layers):
            raise TrackerError(f"--unet-layer {config.layer}: this UNet has decoder layers 0..{len(layers) - 1}")
        if any(not 0 <= t < len(alphas_cumprod) for t in config.timesteps):
            raise TrackerError(f"--timesteps must lie in 0..{len(alphas_cumprod) - 1}")
        self.layer = layers[config.layer]
        self.sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    def encode(self, images: Tensor) -> Tensor:
        """``[B, 3, S, S]`` in [-1, 1] -> ``[B, 4, S/8, S/8]`` scaled latents (VAE mean)."""
        vae_dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(images.to(vae_dtype)).latent_dist.mean
        return latents * self.vae.config.scaling_factor

    def _condition(self, prompts: list[str]) -> dict:
        """UNet keyword arguments for one prompt per image."""
        try:
            embeds = [self.prompts[p] for p in prompts]
        except KeyError as exc:
            raise ValueError(f"prompt {exc} was not encoded when the teacher was loaded") from None
        dtype = self.unet.dtype
        cond = {"encoder_hidden_states": torch.cat([e.hidden for e in embeds]).to(self.device, dtype)}
        if self.sdxl:
            s = float(self.config.input_size)
            time_ids = torch.tensor([[s, s, 0.0, 0.0, s, s]] * len(embeds), device=self.device, dtype=dtype)
            pooled = torch.cat([e.pooled for e in embeds]).to(self.device, dtype)
            cond["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
        return cond

    def unet_features(self, latents: Tensor, timestep: int, cond: dict) -> Tensor:
        """Run the UNet on ``latents`` up to the feature layer; ``[B, C, h, w]`` in the UNet's dtype."""
        found: list[Tensor] = []

        def hook(module, inputs, output):
            if isinstance(output, tuple):
                output = output[0]
            found.append(getattr(output, "sample", output))
            raise _Stop

        handle = self.layer.register_forward_hook(hook)
        t = torch.full((latents.shape[0],), timestep, device=latents.device, dtype=torch.long)
        try:
            self.unet(latents.to(self.unet.dtype), t, **cond)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not found:
            raise RuntimeError("the UNet's forward pass never reached the feature layer")
        return found[0]

    @torch.no_grad()
    def forward(self, x: Tensor, prompts: list[str], seeds: list[int]) -> Tensor:
        """Diffusion features averaged over the timesteps.

        Args:
            x: ``[B, 3, S, S]`` float 0..255 at ``config.input_size``.
            prompts: one prompt per image (each encoded at load time).
            seeds: one noise seed per image (the same seed gives the same noise).

        Returns:
            ``[B, C, h, w]`` float32 on the teacher's device, the layer's native grid.
        """
        images = x.to(self.device) / 127.5 - 1.0
        latents = self.encode(images).float()
        cond = self._condition(prompts)
        noise = torch.stack(
            [
                torch.randn(len(self.config.timesteps), *latents.shape[1:], generator=torch.Generator().manual_seed(s))
                for s in seeds
            ],
            dim=1,
        ).to(self.device)  # [T, B, 4, h, w]
        total = None
        for k, t in enumerate(self.config.timesteps):
            a = self.alphas_cumprod[t]
            noisy = a.sqrt() * latents + (1 - a).sqrt() * noise[k]
            feats = self.unet_features(noisy, t, cond).float()
            total = feats if total is None else total + feats
        return total / len(self.config.timesteps)


def _import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise TrackerError(
            "the diffusion teacher needs diffusers and transformers: pip install -e '.[train]'"
        ) from None
    return diffusers


def _hub_reachable(timeout: float = 5.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_diffusion_teacher(
    config: DiffusionConfig, prompts: set[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> DiffusionTeacher:
    """Load a diffusers pipeline's UNet, VAE and scheduler, encode ``prompts`` with its text encoder(s), drop them.

    Args:
        config: teacher settings; ``config.source`` is a hub id or a local diffusers folder (``"random"``: see
            :func:`random_diffusion_teacher`).
        prompts: every prompt the teacher will be asked for.
        device: where the teacher runs.
        dtype: UNet and text encoder dtype (fp16/bf16 on GPU); the VAE stays fp32 when its config asks for it
            (SDXL's VAE overflows in fp16).

    Raises:
        TrackerError: diffusers missing, the checkpoint not found, not downloadable or not a UNet pipeline.
    """
    if config.source == "random":
        return random_diffusion_teacher(config, prompts).to(device)
    diffusers = _import_diffusers()
    local = Path(config.source).expanduser()
    if local.exists():
        source, offline = str(local), True
    elif HUB_ID.match(config.source):
        source, offline = config.source, not _hub_reachable()
    else:
        raise TrackerError(f"--unet {config.source}: no such folder, and not a Hugging Face hub id (org/name)")
    kwargs = {"local_files_only": offline}
    try:
        from diffusers.utils.deprecation_utils import _TORCH_DTYPE_DEPRECATION_MESSAGE  # noqa: F401

        as_dtype = {"dtype": dtype}  # diffusers >= 0.36 renamed torch_dtype
    except ImportError:
        as_dtype = {"torch_dtype": dtype}
    try:
        with _quiet_loading():
            unet = diffusers.UNet2DConditionModel.from_pretrained(source, subfolder="unet", **as_dtype, **kwargs)
            vae = diffusers.AutoencoderKL.from_pretrained(source, subfolder="vae", **kwargs)
            scheduler = diffusers.DDPMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
            pipe = _pipeline(diffusers, source, unet, vae, scheduler, {**as_dtype, **kwargs})
    except Exception as exc:
        where = "not in the Hugging Face cache and huggingface.co is unreachable" if offline else "load failed"
        if local.exists():
            where = "not a diffusers pipeline folder (unet/, vae/, scheduler/, text_encoder/ ...)"
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise TrackerError(
            f"cannot load the diffusion teacher {config.source!r}: {where} ({type(exc).__name__}: {first}); get it "
            f"with `huggingface-cli download {config.source if HUB_ID.match(config.source) else 'ORG/NAME'}` on a "
            "machine with internet, or pass --unet PATH (a local diffusers folder) or --unet random"
        ) from None
    sdxl = getattr(unet.config, "addition_embed_type", None) == "text_time"
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is not None:
            encoder.to(device)
    embeds = {}
    with torch.no_grad():
        for prompt in sorted(prompts):
            if sdxl:
                hidden, _, pooled, _ = pipe.encode_prompt(
                    prompt=prompt, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
                )
            else:
                hidden, _ = pipe.encode_prompt(prompt, device, 1, False)
                pooled = None
            embeds[prompt] = PromptEmbedding(hidden.cpu(), None if pooled is None else pooled.cpu())
    del pipe  # text encoders and tokenizers go; the UNet and VAE stay
    if getattr(vae.config, "force_upcast", False) or dtype == torch.float32:
        vae = vae.float()
    else:
        vae = vae.to(dtype)
    return DiffusionTeacher(unet, vae, scheduler.alphas_cumprod, embeds, config).to(device)


def _pipeline(diffusers, source: str, unet, vae, scheduler, kwargs: dict):
    """The pipeline of ``source`` around already loaded parts (for its text encoders and ``encode_prompt``)."""
    common = dict(unet=unet, vae=vae, scheduler=scheduler, **kwargs)
    if getattr(unet.config, "addition_embed_type", None) == "text_time":
        return diffusers.StableDiffusionXLPipeline.from_pretrained(source, **common)
    return diffusers.StableDiffusionPipeline.from_pretrained(
        source, safety_checker=None, feature_extractor=None, requires_safety_checker=False, **common
    )


class _quiet_loading:
    """Silence diffusers' and transformers' loading progress bars and their deprecation warnings (the library
    prints nothing), then restore them."""

    def __enter__(self):
        import warnings

        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        self.saved = [(m, m.is_progress_bar_enabled()) for m in (dlog, tlog)]
        for module, _ in self.saved:
            module.disable_progress_bar()
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        for module, enabled in self.saved:
            if enabled:
                module.enable_progress_bar()


def random_diffusion_teacher(config: DiffusionConfig, prompts: set[str], seed: int = 0) -> DiffusionTeacher:
    """A tiny SDXL-like UNet (two levels, cross-attention, ``text_time`` added conditioning) and a tiny /8 VAE with
    random weights, SD's scaled-linear noise schedule, and random prompt embeddings of the right widths.

    At an input of 80 pixels: latent 10x10, layer 1 (``up_blocks[0].attentions[0]``) ``[B, 16, 5, 5]``.
    """
    diffusers = _import_diffusers()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = diffusers.UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 16),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=16,
            attention_head_dim=2,
            norm_num_groups=4,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + 6 * 8,
        )
        vae = diffusers.AutoencoderKL(
            block_out_channels=(4, 4, 4, 4),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            norm_num_groups=2,
            layers_per_block=1,
        )
    scheduler = diffusers.DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    embeds = {}
    for prompt in prompts:
        g = torch.Generator().manual_seed(int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16))
        embeds[prompt] = PromptEmbedding(torch.randn(1, 4, 16, generator=g), torch.randn(1, 16, generator=g))
    return DiffusionTeacher(unet, vae, scheduler.alphas_cumprod, embeds, config)


# --------------------------------------------------------------------------- both, and the cache


class Teachers(nn.Module):
    """DINOv2 and (optionally) diffusion teacher: decoded images in, :class:`TeacherFeatures` on the grid out."""

    def __init__(self, dino: DinoTeacher, diffusion: DiffusionTeacher | None, grid: tuple[int, int]):
        super().__init__()
        self.dino = dino
        self.diffusion = diffusion
        self.grid = tuple(grid)

    @torch.no_grad()
    def forward(self, images: list[Tensor], prompts: list[str], seeds: list[int]) -> TeacherFeatures:
        """``images``: ``[H, W, 3]`` uint8 each (any sizes); returns features on CPU."""
        x = torch.stack([resize_image(im, self.dino.input_hw) for im in images])
        dino, embedding = self.dino(x)
        dino = F.normalize(to_grid(dino, self.grid), dim=1)
        if self.diffusion is None:
            return TeacherFeatures(dino.cpu(), None, embedding.cpu())
        s = self.diffusion.config.input_size
        x = torch.stack([resize_image(im, (s, s)) for im in images])
        native = self.diffusion(x, prompts, seeds)
        diffusion = F.normalize(to_grid(native, self.grid), dim=1)
        return TeacherFeatures(dino.cpu(), diffusion.cpu(), embedding.cpu(), tuple(native.shape[-2:]))


def prompt_for(template: str, entry: ImageEntry) -> str:
    return template.replace("{category}", entry.category)


class TeacherCache:
    """Teacher features on disk: one safetensors file per image under ``root/<settings hash>/``.

    Each file holds ``dino`` ``[C1, h, w]`` and ``diffusion`` ``[C2, h, w]`` (float16, unit length per cell) and
    ``embedding`` ``[C1]`` (float32). ``teachers.json`` beside them records the settings.
    """

    def __init__(self, root: str | Path, fingerprint: dict):
        text = json.dumps(fingerprint, sort_keys=True)
        self.folder = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:16]
        self.fingerprint = fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)
        card = self.folder / "teachers.json"
        if not card.is_file():
            atomic_write(card, json.dumps(fingerprint, indent=1, sort_keys=True).encode())

    def name(self, entry: ImageEntry) -> str:
        prompt = prompt_for(self.fingerprint["diffusion"]["prompt"], entry)
        return hashlib.sha256(f"{entry.key}\0{prompt}".encode()).hexdigest()[:40]

    def path(self, entry: ImageEntry) -> Path:
        return self.folder / f"{self.name(entry)}.safetensors"

    def has(self, entry: ImageEntry) -> bool:
        return self.path(entry).is_file()

    def save(
        self,
        entry: ImageEntry,
        dino: Tensor,
        diffusion: Tensor | None,
        embedding: Tensor,
        diffusion_grid: tuple[int, int] | None = None,
    ) -> None:
        from safetensors.torch import save

        tensors = {"dino": dino.half().contiguous(), "embedding": embedding.float().contiguous()}
        metadata = {}
        if diffusion is not None:
            tensors["diffusion"] = diffusion.half().contiguous()
            metadata["diffusion_grid"] = "x".join(map(str, diffusion_grid or diffusion.shape[-2:]))
        atomic_write(self.path(entry), save(tensors, metadata=metadata))

    def diffusion_grid(self, entry: ImageEntry) -> tuple[int, int] | None:
        """The diffusion layer's own grid (before resizing to the stored grid), as recorded with the features."""
        from safetensors import safe_open

        with safe_open(str(self.path(entry)), "pt") as f:
            text = (f.metadata() or {}).get("diffusion_grid")
        return tuple(int(v) for v in text.split("x")) if text else None

    def load(self, entry: ImageEntry) -> dict[str, Tensor]:
        from safetensors.torch import load_file

        try:
            return load_file(str(self.path(entry)))
        except Exception as exc:
            raise TrackerError(
                f"teacher cache file {self.path(entry)} is unreadable ({type(exc).__name__}); delete it to recompute"
            ) from None

    def descriptor(self, entry: ImageEntry) -> Tensor:
        """``[C1 + C2, h, w]`` float32: the teacher descriptor of one image."""
        t = self.load(entry)
        return descriptor(t["dino"], t.get("diffusion"))

    def embedding(self, entry: ImageEntry) -> Tensor:
        return self.load(entry)["embedding"]


class CacheProgress(NamedTuple):
    """Where the caching pass stands: images with features (cached before or now), of ``total``;
    ``computed`` of them ran through the teachers in this pass; ``failed`` could not be decoded."""

    done: int
    total: int
    computed: int
    failed: list[tuple[Path, str]]


def cache_teacher_features(
    entries: list[ImageEntry],
    cache: TeacherCache,
    make_teachers: Callable[[], Teachers],
    batch: int = 4,
    seed: int = 0,
) -> Iterator[CacheProgress]:
    """Run every image that is not in the cache through the teachers (built only if some image needs them).

    Yields:
        :class:`CacheProgress` after the cache check and after every batch.
    """
    missing = [e for e in entries if not cache.has(e)]
    failed: list[tuple[Path, str]] = []
    done = len(entries) - len(missing)
    computed = 0
    yield CacheProgress(done, len(entries), computed, failed)
    if not missing:
        return
    teachers = make_teachers()
    template = cache.fingerprint["diffusion"]["prompt"]
    for start in range(0, len(missing), batch):
        chunk, images = [], []
        for entry in missing[start : start + batch]:
            try:
                images.append(decode_image(entry.path))
                chunk.append(entry)
            except TrackerError as exc:
                failed.append((entry.path, str(exc)))
        if chunk:
            prompts = [prompt_for(template, e) for e in chunk]
            seeds = [(int(cache.name(e)[:8], 16) + seed) % (1 << 63) for e in chunk]
            out = teachers(images, prompts, seeds)
            for k, entry in enumerate(chunk):
                diffusion = None if out.diffusion is None else out.diffusion[k]
                cache.save(entry, out.dino[k], diffusion, out.embedding[k], out.diffusion_grid)
        done += len(chunk)
        computed += len(chunk)
        yield CacheProgress(done, len(entries), computed, failed)
