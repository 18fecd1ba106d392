"""Stable Diffusion UNet features as featurizers: DIFT and Diffusion Hyperfeatures (the systems DistillDIFT distils).

- ``dift`` (Tang et al., NeurIPS 2023; github Tsingularity/dift ``src/models/dift_sd.py``): the SD-2.1 image is
  VAE-encoded (a latent *sample*, not the mean), noised once to ``t = 261`` with DDIM's ``add_noise``, and the UNet
  runs with the empty prompt's embedding up to the output of ``up_blocks[1]`` (1280 channels, input / 16: a
  48x48 grid at the authors' 768x768). This is repeated for an ensemble of 8 noise draws (latent sample and added
  noise) and the maps are averaged. The draws are fixed (a seeded generator), so the same frame gives the same
  features; the authors draw fresh noise per call.
- ``dhf`` / ``dhf-one-step`` / ``dhf-sd21`` (Luo et al., NeurIPS 2023; github
  diffusion-hyperfeatures/diffusion_hyperfeatures ``archs/``): the SD-1.5 latent (SD-2.1-base's for ``dhf-sd21``,
  a sample) is DDIM-inverted with the empty prompt and no guidance (50 steps, or 1 for one-step; a checkpoint's
  config decides); at each saved step index (``{49, 45, 40, ..., 5, 0}``, or ``{0}``) the residual branch of every
  up-block resnet (``conv2``'s output, before the skip is added: 12 maps for SD, 1280 x6, 640 x3, 320 x3 channels)
  is resized bilinearly to the latent grid (64x64 at 512) and fed to the released aggregation network: per layer a
  detectron2 bottleneck block (GroupNorm 32) to 384 channels, shared over timesteps, mixed with
  ``softmax(mixing_weights)`` (one weight per timestep and layer, timestep-major). The network is applied to each
  map as it is produced, which is the same sum as the authors' one pass over the concatenation, without holding
  all maps (2 GB per 512 image in fp32). Note the authors' inversion calls the UNet at ``t = -1`` on its first step
  (index 49, and the only one of one-step); that is kept.

Both grids are L2-normalised along channels, as every featurizer's. Heavy parts (diffusers, transformers) are in
the ``train`` extra and imported lazily. On CUDA the UNet and VAE run in fp16, on the CPU in fp32.

Weights: ``--weights random`` builds the real architectures (``ARCHITECTURES``, the fields of the released
``unet/config.json`` and ``vae/config.json``) with random weights and a random prompt embedding (no download);
``--weights PATH`` takes a local diffusers pipeline folder (``unet/``, ``vae/``, ``text_encoder/``,
``tokenizer/``) and, for DHF, an aggregation-network checkpoint (``.pt``), comma-separated; without
``--weights`` the hub ids of :data:`tracker.weights.DIFFUSION_PIPELINES` / :data:`tracker.weights.DHF_AGGREGATION`.
"""

from __future__ import annotations

import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tracker.choices import DIFFUSION_MODELS  # noqa: F401 - re-exported
from tracker.errors import TrackerError, WeightsUnavailable
from tracker.featurizers import Featurizer, to_input_size

# The architecture fields of the released configs (diffusers names); SD-2.1 = stabilityai/stable-diffusion-2-1
# (768 px, v-prediction), SD-2.1-base = stabilityai/stable-diffusion-2-1-base (512 px, epsilon-prediction: the same
# UNet layout, sample size 64, attention not upcast), SD-1.5 = stable-diffusion-v1-5/stable-diffusion-v1-5. The VAE
# is the same for all.
_SD_VAE = dict(
    block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    scaling_factor=0.18215,
)
_SD_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
_SD_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
_SD21_UNET = dict(
    sample_size=96,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=_SD_DOWN,
    up_block_types=_SD_UP,
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    upcast_attention=True,
)
ARCHITECTURES: dict[str, tuple[dict, dict]] = {
    "sd-2.1": (_SD21_UNET, _SD_VAE),
    "sd-2.1-base": ({**_SD21_UNET, "sample_size": 64, "upcast_attention": False}, _SD_VAE),
    "sd-1.5": (
        dict(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=_SD_DOWN,
            up_block_types=_SD_UP,
            layers_per_block=2,
            attention_head_dim=8,
            cross_attention_dim=768,
        ),
        _SD_VAE,
    ),
}


@dataclass(frozen=True)
class DiftConfig:
    """DIFT's semantic-correspondence settings (the authors' defaults): timestep, up block, ensemble, prompt."""

    timestep: int = 261
    up_block: int = 1
    ensemble: int = 8
    seed: int = 0


@dataclass(frozen=True)
class DhfConfig:
    """The released real-image config: DDIM inversion steps and the step indices whose maps are aggregated."""

    num_timesteps: int = 50
    save_timestep: tuple[int, ...] = (49, 45, 40, 35, 30, 25, 20, 15, 10, 5, 0)
    projection_dim: int = 384
    seed: int = 0


# ``dhf-sd21``: the authors' aggregation_network_sdv2-1.pt, trained on SD-2.1-base at 512 (their configs/train.yaml
# names ``stabilityai/stable-diffusion-2-1-base`` as the SDv2-1 model_id); the checkpoint's config gives its steps.
DHF_VARIANTS = {
    "dhf": DhfConfig(),
    "dhf-one-step": DhfConfig(num_timesteps=1, save_timestep=(0,)),
    "dhf-sd21": DhfConfig(),
}
BASE_OF = {"dift": "sd-2.1", "dhf": "sd-1.5", "dhf-one-step": "sd-1.5", "dhf-sd21": "sd-2.1-base"}
DEFAULT_SIZES = {"dift": "768", "dhf": "512", "dhf-one-step": "512", "dhf-sd21": "512"}  # the authors' input sizes
# The ``model_id`` a DHF checkpoint's config may name -> the base it was trained on (runwayml's id is the one the
# authors' train.yaml has; their init_models maps it to the mirror).
TRAINED_ON = {
    "runwayml/stable-diffusion-v1-5": "sd-1.5",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd-1.5",
    "stabilityai/stable-diffusion-2-1-base": "sd-2.1-base",
    "stabilityai/stable-diffusion-2-1": "sd-2.1",
}


def _import(module: str):
    try:
        return __import__(module)
    except ImportError:
        raise TrackerError(
            f"the diffusion featurizers need diffusers and transformers ({module} is missing): "
            "pip install -e '.[train]'"
        ) from None


def sd_alphas_cumprod(steps: int = 1000) -> Tensor:
    """SD's scaled-linear schedule (beta 0.00085 .. 0.012 over 1000 steps), cumulative alphas ``[T]`` float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def unet_stride(unet: nn.Module, vae_factor: int, up_block: int) -> int:
    """Input pixels per cell of ``up_blocks[up_block]``'s output: the latent is ``vae_factor`` smaller, the
    encoder halves it ``len(down_blocks) - 1`` times, and each up block with an upsampler doubles it."""
    n_down = len(unet.down_blocks) - 1
    ups = sum(1 for b in unet.up_blocks[: up_block + 1] if getattr(b, "upsamplers", None))
    return vae_factor * 2 ** (n_down - ups)


class _Stop(Exception):
    """Raised by a hook to end the UNet's forward pass once the wanted block has run."""


# --------------------------------------------------------------------------- the shared UNet part


class _DiffusionBase(Featurizer):
    """VAE encoder + UNet + one prompt embedding, with the fp16-on-CUDA rule and the fixed noise draws."""

    def __init__(self, unet: nn.Module, vae: nn.Module, prompt: Tensor, name: str, input_hw: tuple[int, int]):
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.vae.decoder = None  # only encoded, never decoded
        self.name = name
        self.input_hw = input_hw
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.multiple = self.vae_factor * 2 ** (len(unet.down_blocks) - 1)
        if input_hw[0] % self.multiple or input_hw[1] % self.multiple:
            raise TrackerError(
                f"{name}: input sides must be multiples of {self.multiple}, got {input_hw[1]}x{input_hw[0]}"
            )
        self.register_buffer("prompt", prompt.float(), persistent=False)  # [1, 77, D]
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod().float(), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.device.type == "cuda" else torch.float32

    def _apply(self, fn, *args, **kwargs):  # .to(device) moves and then sets the precision of the device
        out = super()._apply(fn, *args, **kwargs)
        for part in (self.unet, self.vae):
            if next(part.parameters()).dtype != self.dtype:
                part.to(self.dtype)
        return out

    @property
    def latent_hw(self) -> tuple[int, int]:
        return self.input_hw[0] // self.vae_factor, self.input_hw[1] // self.vae_factor

    def _draws(self, n: int, seed: int) -> Tensor:
        """``[n, 4, h, w]`` standard normal draws from a fixed seed (the same for every frame)."""
        g = torch.Generator().manual_seed(seed)
        return torch.randn(n, self.unet.config.in_channels, *self.latent_hw, generator=g).to(self.device, self.dtype)

    def latents(self, frames: Tensor, eps: Tensor) -> Tensor:
        """``[B, H, W, 3]`` uint8 -> ``[B * E, 4, h, w]`` scaled latent samples, ``mean + std * eps[e]``."""
        x = to_input_size(frames, self.device, self.input_hw) / 127.5 - 1.0
        dist = self.vae.encode(x.to(self.dtype)).latent_dist
        e = eps.shape[0]
        mean = dist.mean.repeat_interleave(e, 0)
        std = dist.std.repeat_interleave(e, 0)
        return (mean + std * eps.repeat(x.shape[0], 1, 1, 1)) * self.vae.config.scaling_factor

    def cond(self, n: int) -> Tensor:
        return self.prompt.to(self.dtype).expand(n, -1, -1)


class DiftFeaturizer(_DiffusionBase):
    """DIFT: ``up_blocks[config.up_block]`` output at one timestep, averaged over an ensemble of noise draws.

    Args:
        unet, vae: diffusers ``UNet2DConditionModel`` and ``AutoencoderKL``.
        prompt: ``[1, 77, D]`` the prompt's text-encoder hidden states (the empty prompt).
        input_hw: ``(height, width)``, multiples of 64 for SD (the VAE's 8 times the UNet's 8).
        config: timestep, up block, ensemble size, seed.
    """

    def __init__(self, unet, vae, prompt, input_hw, config: DiftConfig = DiftConfig(), name: str = "dift"):
        super().__init__(unet, vae, prompt, name, input_hw)
        if not 0 <= config.up_block < len(unet.up_blocks):
            raise TrackerError(f"{name}: up block {config.up_block} does not exist ({len(unet.up_blocks)} up blocks)")
        self.config = config
        self.stride = unet_stride(unet, self.vae_factor, config.up_block)

    @torch.inference_mode()
    def forward(self, frames: Tensor) -> Tensor:
        c = self.config
        e = c.ensemble
        eps = self._draws(2 * e, c.seed)  # the latent samples' draws, then the added noise
        latents = self.latents(frames, eps[:e])
        a = self.alphas_cumprod[c.timestep]
        noisy = a.sqrt() * latents + (1 - a).sqrt() * eps[e:].repeat(frames.shape[0], 1, 1, 1)
        found: list[Tensor] = []

        def hook(module, inputs, output):
            found.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = self.unet.up_blocks[c.up_block].register_forward_hook(hook)
        t = torch.full((noisy.shape[0],), c.timestep, device=self.device, dtype=torch.long)
        try:
            self.unet(noisy, t, encoder_hidden_states=self.cond(noisy.shape[0]))
        except _Stop:
            pass
        finally:
            handle.remove()
        feats = found[0].float()
        feats = feats.view(frames.shape[0], e, *feats.shape[1:]).mean(1)
        assert feats.shape[-2:] == self.grid_hw, (feats.shape, self.grid_hw)
        return F.normalize(feats, dim=1)


# --------------------------------------------------------------------------- Diffusion Hyperfeatures


class Bottleneck(nn.Module):
    """detectron2's ``BottleneckBlock`` with GroupNorm, stride 1, as the DHF authors build it: 1x1 (``in`` ->
    ``out / 4``), 3x3, 1x1 (-> ``out``), each conv without bias and followed by its ``norm``; a 1x1 projection
    shortcut (with norm) when ``in != out``; ReLU after the first two convs and after the sum.

    State-dict keys as detectron2's: ``conv{1,2,3}.weight``, ``conv{1,2,3}.norm.{weight,bias}``,
    ``shortcut.weight``, ``shortcut.norm.{weight,bias}``.
    """

    def __init__(self, cin: int, cout: int, groups: int = 32):
        super().__init__()
        mid = cout // 4

        def conv(a, b, k):
            layer = nn.Conv2d(a, b, k, padding=k // 2, bias=False)
            layer.norm = nn.GroupNorm(groups, b)
            return layer

        self.shortcut = conv(cin, cout, 1) if cin != cout else None
        self.conv1, self.conv2, self.conv3 = conv(cin, mid, 1), conv(mid, mid, 3), conv(mid, cout, 1)

    @staticmethod
    def _run(layer: nn.Conv2d, x: Tensor) -> Tensor:
        return layer.norm(layer(x))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self._run(self.conv1, x))
        out = F.relu(self._run(self.conv2, out))
        out = self._run(self.conv3, out)
        skip = self._run(self.shortcut, x) if self.shortcut is not None else x
        return F.relu(out + skip)


class AggregationNetwork(nn.Module):
    """DHF's aggregation network in the authors' key layout: ``bottleneck_layers.{l}.0.*`` (one
    :class:`Bottleneck` per UNet layer, shared over timesteps) and ``mixing_weights`` ``[T * L]`` (timestep-major:
    index ``t * L + l``).

    Args:
        feature_dims: channels of each UNet layer's map (``L`` entries).
        num_saved: how many timesteps are mixed (``T``).
        projection_dim: output channels (384).
    """

    def __init__(self, feature_dims: list[int], num_saved: int, projection_dim: int = 384, groups: int = 32):
        super().__init__()
        self.feature_dims = list(feature_dims)
        self.bottleneck_layers = nn.ModuleList(
            nn.Sequential(Bottleneck(c, projection_dim, groups)) for c in self.feature_dims
        )
        self.mixing_weights = nn.Parameter(torch.ones(len(self.feature_dims) * num_saved))

    def mix(self, i: int, feats: Tensor) -> Tensor:
        """The ``i``-th term of the sum: ``softmax(mixing_weights)[i] * bottleneck[i % L](feats)``."""
        w = torch.softmax(self.mixing_weights, dim=0)[i]
        return w * self.bottleneck_layers[i % len(self.feature_dims)](feats)

    def forward(self, batch: Tensor) -> Tensor:
        """``[B, T * sum(C_l), H, W]`` (timestep-major concatenation, as the authors feed it) -> ``[B, P, H, W]``."""
        out, start = None, 0
        for i in range(self.mixing_weights.shape[0]):
            end = start + self.feature_dims[i % len(self.feature_dims)]
            term = self.mix(i, batch[:, start:end])
            out = term if out is None else out + term
            start = end
        if start != batch.shape[1]:
            raise ValueError(f"expected {start} channels, got {batch.shape[1]}")
        return out


def up_resnets(unet: nn.Module) -> list[nn.Module]:
    """Every up-block resnet in order, ``(block 0, resnet 0), (0, 1), ...``: the authors' layers 1..12 for SD."""
    return [resnet for block in unet.up_blocks for resnet in block.resnets]


def inversion_steps(num_timesteps: int) -> list[tuple[int, int, int]]:
    """DDIM inversion as the DHF authors run it: ``(saved index, t, t_next)`` per step, in running order.

    DDIM's "leading" spacing gives ``ts = [0, r, 2r, ...]`` with ``r = 1000 // N``; step ``i`` goes from
    ``t = ts[i - 1]`` (``-1``, the clean latent, on the first) to ``ts[i]`` and is saved as index ``N - 1 - i``.
    """
    r = 1000 // num_timesteps
    ts = [k * r for k in range(num_timesteps)]
    return [(num_timesteps - 1 - i, ts[i - 1] if i else -1, ts[i]) for i in range(num_timesteps)]


class DhfFeaturizer(_DiffusionBase):
    """Diffusion Hyperfeatures: aggregated up-block resnet maps over the DDIM inversion, on the latent grid.

    Args:
        unet, vae, prompt: as for :class:`DiftFeaturizer` (SD-1.5; the empty prompt).
        aggregation: the aggregation network (its ``feature_dims`` those of ``up_resnets(unet)``).
        input_hw: ``(height, width)``, multiples of 64 for SD.
        config: inversion steps and saved indices.
    """

    def __init__(self, unet, vae, prompt, aggregation: AggregationNetwork, input_hw, config: DhfConfig, name="dhf"):
        super().__init__(unet, vae, prompt, name, input_hw)
        dims = [r.conv2.out_channels for r in up_resnets(unet)]
        if aggregation.feature_dims != dims:
            raise TrackerError(
                f"{name}: the aggregation network takes layers of {aggregation.feature_dims} channels, "
                f"the UNet has {dims}"
            )
        if aggregation.mixing_weights.shape[0] != len(dims) * len(config.save_timestep):
            raise TrackerError(
                f"{name}: {aggregation.mixing_weights.shape[0]} mixing weights for {len(dims)} layers x "
                f"{len(config.save_timestep)} timesteps"
            )
        if not all(0 <= s < config.num_timesteps for s in config.save_timestep):
            raise TrackerError(f"{name}: saved timesteps {config.save_timestep} outside 0..{config.num_timesteps - 1}")
        self.aggregation = aggregation.eval().requires_grad_(False)
        self.config = config
        self.stride = self.vae_factor  # maps are resized to the latent grid (64x64 at 512, the authors' output)

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self.aggregation.float()  # the authors aggregate in fp32 (feats.float())
        return out

    @torch.inference_mode()
    def forward(self, frames: Tensor) -> Tensor:
        c = self.config
        x = self.latents(frames, self._draws(1, c.seed))
        a_bar = self.alphas_cumprod.double()
        position = {s: k for k, s in enumerate(c.save_timestep)}
        layers = up_resnets(self.unet)
        out = None
        current: dict[str, int] = {}

        def hook_for(layer):
            def hook(module, inputs, output):
                nonlocal out
                k = current.get("k")
                if k is None:
                    return
                feats = F.interpolate(output.float(), size=self.grid_hw, mode="bilinear", align_corners=False)
                term = self.aggregation.mix(k * len(layers) + layer, feats)
                out = term if out is None else out + term

            return hook

        handles = [r.conv2.register_forward_hook(hook_for(j)) for j, r in enumerate(layers)]
        cond = self.cond(x.shape[0])
        try:
            for saved, t, t_next in inversion_steps(c.num_timesteps):
                current["k"] = position.get(saved)
                at = a_bar[t] if t >= 0 else a_bar.new_tensor(1.0)
                at_next = a_bar[t_next]
                tt = torch.full((x.shape[0],), t, device=self.device, dtype=torch.long)
                eps = self.unet(x.to(self.dtype), tt, encoder_hidden_states=cond).sample.double()
                x0 = (x.double() - (1 - at).sqrt() * eps) / at.sqrt()
                x = (at_next.sqrt() * x0 + (1 - at_next).sqrt() * eps).float()
        finally:
            for h in handles:
                h.remove()
        return F.normalize(out, dim=1)


# --------------------------------------------------------------------------- loading


def random_prompt(dim: int, seed: int = 0) -> Tensor:
    return torch.randn(1, 77, dim, generator=torch.Generator().manual_seed(seed))


def build_random(base: str, **overrides) -> tuple[nn.Module, nn.Module, Tensor]:
    """The real architecture of ``base`` (or ``overrides["unet"]`` / ``["vae"]`` replacing its fields, for tiny
    test models) with random weights, and a random prompt embedding of the UNet's cross-attention width."""
    diffusers = _import("diffusers")
    unet_cfg, vae_cfg = ARCHITECTURES[base]
    unet_cfg = {**unet_cfg, **overrides.pop("unet", {})}
    vae_cfg = {**vae_cfg, **overrides.pop("vae", {})}
    if overrides:
        raise TrackerError(f"unknown diffusion overrides: {', '.join(overrides)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(**unet_cfg)
        vae = diffusers.AutoencoderKL(**vae_cfg)
    return unet, vae, random_prompt(unet.config.cross_attention_dim)


def _looks_local(source: str) -> bool:
    """Whether ``--weights`` names a local folder rather than a hub id (``org/name``: one slash, no path prefix)."""
    return source.startswith(("/", ".", "~")) or source.count("/") != 1 or "\\" in source


def _hub_reachable(timeout: float = 5.0) -> bool:
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_parts(diffusers, transformers, where: str, kwargs: dict):
    unet = diffusers.UNet2DConditionModel.from_pretrained(where, subfolder="unet", **kwargs)
    vae = diffusers.AutoencoderKL.from_pretrained(where, subfolder="vae", **kwargs)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(where, subfolder="tokenizer", **kwargs)
    encoder = transformers.CLIPTextModel.from_pretrained(where, subfolder="text_encoder", **kwargs)
    return unet, vae, tokenizer, encoder


def load_pipeline(source: str, prompt: str = "") -> tuple[nn.Module, nn.Module, Tensor]:
    """UNet, VAE and the prompt's text-encoder hidden states ``[1, 77, D]`` from a diffusers folder or hub id.

    Raises:
        WeightsUnavailable: not a folder, not cached and huggingface.co unreachable, or not a SD pipeline.
    """
    diffusers = _import("diffusers")
    transformers = _import("transformers")
    local = Path(source).expanduser()
    offline = not local.exists() and not _hub_reachable()
    kwargs = {"local_files_only": local.exists() or offline}
    where = str(local) if local.exists() else source
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        for module in (dlog, tlog):
            module.disable_progress_bar()
        with warnings.catch_warnings():  # the hub client's deprecation warnings: the library prints nothing
            warnings.simplefilter("ignore")
            unet, vae, tokenizer, encoder = _load_parts(diffusers, transformers, where, kwargs)
    except Exception as exc:
        why = "not in the Hugging Face cache and huggingface.co is unreachable" if offline else "load failed"
        if local.exists():
            why = "not a diffusers pipeline folder (unet/, vae/, text_encoder/, tokenizer/)"
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise WeightsUnavailable(
            f"cannot load the Stable Diffusion pipeline {source!r}: {why} ({type(exc).__name__}: {first}); get it with "
            f"`hf download {source if not local.exists() else 'ORG/NAME'}` on a machine with internet, or pass "
            "--weights PATH (a diffusers folder) or --weights random"
        ) from None
    ids = tokenizer(
        prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = encoder(ids.input_ids).last_hidden_state
    return unet, vae, hidden


def read_aggregation(path: Path, variant: str) -> tuple[dict[str, Tensor], DhfConfig]:
    """An aggregation-network checkpoint: the authors' ``{"config", "aggregation_network", ...}`` file (their
    ``save_model``; read with ``weights_only=True``) or a bare state dict; the config's ``save_timestep``,
    ``num_timesteps``, ``projection_dim`` and ``flip_timesteps`` override the variant's defaults, and a
    ``model_id`` of another Stable Diffusion than the variant's is refused in one line (SD-1.5 and SD-2.1 have
    the same up-block widths, so the strict load alone would not notice)."""
    path = Path(path)
    if not path.is_file():
        raise TrackerError(f"weights file not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrackerError(f"cannot read aggregation network {path}: {type(exc).__name__}") from None
    config = DHF_VARIANTS[variant]
    if isinstance(ckpt, dict) and isinstance(ckpt.get("aggregation_network"), dict):
        meta = ckpt.get("config") or {}
        ckpt = ckpt["aggregation_network"]
        trained = TRAINED_ON.get(str(meta.get("model_id", "")))
        if trained is not None and trained != BASE_OF[variant]:
            fits = [n for n, b in BASE_OF.items() if b == trained and n != "dift"]
            use = f"use --model {' or '.join(fits)}" if fits else "no DHF model here runs that UNet"
            raise TrackerError(
                f"{path.name} was trained on {meta['model_id']} ({trained}), but {variant} runs {BASE_OF[variant]}: "
                f"{use}"
            )
        save = list(meta.get("save_timestep", config.save_timestep))
        if meta.get("flip_timesteps", False):
            save = save[::-1]
        config = DhfConfig(
            num_timesteps=int(meta.get("num_timesteps", config.num_timesteps)),
            save_timestep=tuple(int(s) for s in save),
            projection_dim=int(meta.get("projection_dim", config.projection_dim)),
        )
    if not isinstance(ckpt, dict) or not all(isinstance(v, Tensor) for v in ckpt.values()):
        raise TrackerError(f"{path} is not a DHF aggregation network (no 'aggregation_network' state dict)")
    return ckpt, config


def load_aggregation(state: dict[str, Tensor], dims: list[int], config: DhfConfig) -> AggregationNetwork:
    """Build the network for ``dims`` and ``config`` and load ``state`` strictly (one line on any mismatch)."""
    net = AggregationNetwork(dims, len(config.save_timestep), config.projection_dim)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[1:3])[:300]
        raise TrackerError(
            f"aggregation network does not fit this UNet ({len(dims)} layers x {len(config.save_timestep)} "
            f"timesteps): {detail}"
        ) from None
    return net


def create_diffusion_featurizer(
    name: str,
    input_hw: tuple[int, int],
    weights: str | None = None,
    device: str | torch.device = "cpu",
    **overrides,
) -> Featurizer:
    """Build ``dift``, ``dhf``, ``dhf-one-step`` or ``dhf-sd21`` at ``input_hw`` (the module docstring: ``weights``).

    Raises:
        TrackerError / WeightsUnavailable: one line (missing extra, weights not found or not fitting, bad size).
    """
    from tracker import weights as W

    base = BASE_OF[name]
    parts = [p.strip() for p in (weights or "").split(",") if p.strip()]
    agg_files = [p for p in parts if Path(p).suffix in (".pt", ".pth", ".ckpt", ".bin")]
    folders = [p for p in parts if p not in agg_files]
    aggregation = None
    if weights == "random":
        unet, vae, prompt = build_random(base, **overrides)
    else:
        if overrides:
            raise TrackerError("architecture overrides apply to --weights random only")
        if len(folders) > 1 or len(agg_files) > 1 or (name == "dift" and agg_files):
            what = "one diffusers folder" + (" and one aggregation network .pt" if name != "dift" else "")
            raise TrackerError(f"--weights for {name}: at most {what}")
        local = folders and (_looks_local(folders[0]) or folders[0].endswith("/"))  # "name/": a folder, not org/name
        if local and not Path(folders[0]).expanduser().exists():
            raise TrackerError(f"--weights: folder not found: {folders[0]} (a diffusers pipeline folder)")
        if name != "dift":  # the small file first: no multi-GB pipeline load before a missing file is reported
            path = Path(agg_files[0]) if agg_files else W.fetch(W.DHF_AGGREGATION[name])
            aggregation = read_aggregation(path, name)
        unet, vae, prompt = load_pipeline(folders[0] if folders else W.DIFFUSION_PIPELINES[base])
    if name == "dift":
        return DiftFeaturizer(unet, vae, prompt, input_hw).to(device)
    dims = [r.conv2.out_channels for r in up_resnets(unet)]
    if aggregation is None:  # random
        config = DHF_VARIANTS[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = AggregationNetwork(dims, len(config.save_timestep), config.projection_dim)
    else:
        state, config = aggregation
        net = load_aggregation(state, dims, config)
    return DhfFeaturizer(unet, vae, prompt, net, input_hw, config, name=name).to(device)
