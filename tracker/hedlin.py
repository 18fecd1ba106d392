"""Hedlin et al. (NeurIPS 2023), prompt-optimised correspondence with a Stable Diffusion UNet: the library part.

For one query point on one image, text embeddings are optimised so that the UNet's cross-attention map of one
token peaks at the point; on another image, the argmax of the same embeddings' attention map is the match. Written
from the authors' code (ubc-vision/LDM_correspondences ``utils/optimize_token.py``, ``utils/optimize.py``, the
defaults of ``eval/eval.py``; see docs/featurizers.md for the details and what differs):

- maps: cross-attention probabilities of every ``attn2`` with at most ``(latent / 2)^2`` queries (32x32 at 512),
  listed in execution order (down, mid, up); ``layers`` picks from that list; the last half of the heads (what
  Prompt-to-Prompt's store keeps with guidance off), token 1; bilinear to the input size, mean over heads.
- optimisation: a random ``[1, 77, D]`` embedding, Adam, ``steps`` steps; each a random crop (``crop_percent``,
  keeping the point ``margin`` inside) resized to the input, VAE mean latent noised with uniform noise to
  ``t_optimise``, one UNet pass; MSE against a Gaussian (``sigma`` px at 512) at the point, over the layers.
  ``restarts`` independent embeddings.
- matching: per embedding ``crops`` crops (4 at the corners, then around the running argmax) noised to
  ``t_match``; maps accumulated over the image; averaged over embeddings, softmax over pixels per layer, mean over
  layers, argmax.

``track --model hedlin --points`` runs it through :mod:`tracker.hedlin_tracker` (points only).
Optimised embeddings are cached per (image, point, settings, UNet) so a re-run does not optimise again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tracker.diffusion_features import sd_alphas_cumprod


@dataclass(frozen=True)
class HedlinConfig:
    """The authors' evaluation defaults (``eval/eval.py``); timesteps of SD's 1000 (DDIM 50 steps: 980 .. 0)."""

    layers: tuple[int, ...] = (5, 6, 7, 8)
    steps: int = 129
    lr: float = 0.0023755632081200314
    sigma: float = 27.97853316316864  # pixels at a 512 input
    crop_percent: float = 93.16549294381423
    margin: float = 0.15
    restarts: int = 5
    crops: int = 20
    t_optimise: int = 140  # timesteps[-8]
    t_match: int = 40  # timesteps[-3]
    token: int = 1
    seed: int = 0


class _Store:
    def __init__(self):
        self.maps: list[Tensor] = []


class _RecordingCrossAttention:
    """A diffusers attention processor for ``attn2``: plain softmax attention that also records the
    probabilities ``[B * heads, queries, tokens]`` (with gradients)."""

    def __init__(self, store: _Store):
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        assert hidden_states.ndim == 3 and attn.spatial_norm is None and attn.group_norm is None
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, None)
        self.store.maps.append(probs)
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class HedlinMatcher(nn.Module):
    """Optimise embeddings for query points and find them on other images.

    Args:
        unet, vae: diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` (SD-1.x in the paper).
        input_size: the square side images are resized to (512 in the paper; multiple of 64 for SD).
        config: settings.
    """

    def __init__(self, unet: nn.Module, vae: nn.Module, input_size: int = 512, config: HedlinConfig = HedlinConfig()):
        super().__init__()
        self.unet = unet.eval().requires_grad_(False)
        self.vae = vae.eval().requires_grad_(False)
        self.size = input_size
        self.config = config
        self.store = _Store()
        for name, module in unet.named_modules():
            if name.endswith("attn2"):
                module.set_processor(_RecordingCrossAttention(self.store))
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod().float(), persistent=False)
        self._weights_digest: str | None = None
        self.vae_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return self.alphas_cumprod.device

    # ------------------------------------------------------------------ pieces

    def _latent(self, image: Tensor) -> Tensor:
        """``[1, 3, S, S]`` in [-1, 1] -> VAE mean latent (scaled)."""
        with torch.no_grad():
            latent = self.vae.encode(image.to(_dtype(self.vae))).latent_dist.mean
        return latent.float() * self.vae.config.scaling_factor

    def _crop(self, image: Tensor, xy: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor, int, int, int]:
        """A random crop keeping pixel ``xy`` ``margin`` inside, resized to ``S``: ``(crop, xy in crop / side,
        y0, x0, side)``."""
        s = self.size
        side = int(s * self.config.crop_percent / 100)
        safe = int(side * self.config.margin)
        x, y = float(xy[0]), float(xy[1])
        starts = []
        for c in (x, y):
            lo = min(max(0, c - side + safe), s - side)
            hi = min(max(0, c - safe), s - side)
            starts.append(int(torch.randint(int(lo), int(hi) + 1, (1,), generator=gen)))
        x0, y0 = starts
        crop = image[:, :, y0 : y0 + side, x0 : x0 + side]
        crop = F.interpolate(crop, size=(s, s), mode="bilinear", align_corners=False)
        return crop, torch.tensor([x - x0, y - y0]) / side, y0, x0, side

    def _maps(self, latent: Tensor, context: Tensor, t: int, gen: torch.Generator, out_size: int) -> Tensor:
        """One UNet pass on the noised latent; ``[L, heads / 2, out_size, out_size]`` maps of the token."""
        a = self.alphas_cumprod[t]
        noise = torch.rand(latent.shape, generator=gen).to(latent)
        noisy = a.sqrt() * latent + (1 - a).sqrt() * noise
        self.store.maps.clear()
        dtype = _dtype(self.unet)  # a half-precision UNet (fp16 on CUDA) gets its inputs in its type
        self.unet(noisy.to(dtype), torch.tensor([t], device=self.device), encoder_hidden_states=context.to(dtype))
        limit = (latent.shape[-1] // 2) ** 2
        kept = [m for m in self.store.maps if m.shape[1] <= limit]
        self.store.maps.clear()
        if max(self.config.layers) >= len(kept):
            raise ValueError(f"layers {self.config.layers}: this UNet has {len(kept)} cross-attention maps kept")
        out = []
        for i in self.config.layers:
            m = kept[i]
            heads = m.shape[0]
            side = int(round(m.shape[1] ** 0.5))
            m = m[heads // 2 :, :, self.config.token].float().reshape(1, heads - heads // 2, side, side)
            out.append(F.interpolate(m, size=(out_size, out_size), mode="bilinear", align_corners=False))
        return torch.cat(out)

    def gaussian(self, xy01: Tensor) -> Tensor:
        """Target ``[S, S]``: ``exp(-d^2 / 2 sigma^2)`` around ``xy01 * S`` (sigma scaled from 512)."""
        s = self.size
        sigma = self.config.sigma * s / 512
        yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
        pos = xy01 * s
        return torch.exp(-((xx - pos[0]) ** 2 + (yy - pos[1]) ** 2) / (2 * sigma**2)).to(self.device)

    def prepare(self, image: Tensor) -> Tensor:
        """``[H, W, 3]`` uint8 -> ``[1, 3, S, S]`` in [-1, 1] (resized, the aspect not kept, as the paper's 512)."""
        x = image.permute(2, 0, 1)[None].float().to(self.device)
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return x / 127.5 - 1

    # ------------------------------------------------------------------ the method

    def optimise(self, image: Tensor, xy: tuple[float, float]) -> Tensor:
        """Embeddings ``[restarts, 77, D]`` whose token map peaks at pixel ``xy`` (of the ``S x S`` input)."""
        c = self.config
        gen = torch.Generator().manual_seed(c.seed)
        dim = self.unet.config.cross_attention_dim
        point = torch.tensor(xy, dtype=torch.float32)
        found = []
        for _ in range(c.restarts):
            context = torch.randn(1, 77, dim, generator=gen).to(self.device).requires_grad_(True)
            opt = torch.optim.Adam([context], lr=c.lr)
            for _ in range(c.steps):
                crop, xy01, *_ = self._crop(image, point, gen)
                with torch.enable_grad():
                    maps = self._maps(self._latent(crop), context, c.t_optimise, gen, self.size).mean(1)
                    target = self.gaussian(xy01).expand_as(maps)
                    loss = F.mse_loss(maps, target)
                    loss.backward()
                opt.step()
                opt.zero_grad()
            found.append(context.detach()[0])
        return torch.stack(found)

    @torch.no_grad()
    def attention(self, image: Tensor, embeddings: Tensor) -> Tensor:
        """The combined map ``[S, S]`` of ``embeddings`` on ``image`` (crops, embeddings, layers)."""
        c = self.config
        s = self.size
        gen = torch.Generator().manual_seed(c.seed + 1)
        per_embedding = []
        for context in embeddings:
            total = torch.zeros(len(c.layers), s, s, device=self.device)
            count = torch.zeros(1, s, s, device=self.device)
            corners = torch.tensor([[0.0, 0.0], [0.0, s], [s, 0.0], [s, s]])
            for i in range(c.crops):
                if i < 4:
                    anchor = corners[i]
                else:
                    running = (total / count.clamp(min=1)).mean(0)
                    anchor = _argmax_xy(running).float() + 0.5
                crop, _, y0, x0, side = self._crop(image, anchor, gen)
                maps = self._maps(self._latent(crop), context[None], c.t_match, gen, side).mean(1)
                total[:, y0 : y0 + side, x0 : x0 + side] += maps
                count[:, y0 : y0 + side, x0 : x0 + side] += 1
            per_embedding.append(total / count.clamp(min=1))
        maps = torch.stack(per_embedding).mean(0)  # [L, S, S]
        maps = torch.softmax(maps.reshape(len(c.layers), -1), dim=-1).reshape(len(c.layers), s, s)
        return maps.mean(0)

    def match(self, image: Tensor, embeddings: Tensor) -> tuple[float, float]:
        """Pixel ``(x, y)`` (pixel centres at integers) of the ``S x S`` input where the map peaks."""
        x, y = _argmax_xy(self.attention(image, embeddings)).tolist()
        return float(x), float(y)


def _dtype(module: nn.Module) -> torch.dtype:
    return next(module.parameters()).dtype


def _argmax_xy(m: Tensor) -> Tensor:
    idx = int(torch.argmax(m))
    return torch.tensor([idx % m.shape[1], idx // m.shape[1]])


def weights_digest(matcher: HedlinMatcher) -> str:
    """sha256 of the UNet's and the VAE's weights (both shape the maps), hashed once per matcher: SD's 3.4 GB are
    not read again for every query point."""
    if matcher._weights_digest is None:
        h = hashlib.sha256()
        for part in ("unet", "vae"):
            for name, p in getattr(matcher, part).state_dict().items():
                h.update(f"{part}.{name}".encode())
                h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        matcher._weights_digest = h.hexdigest()
    return matcher._weights_digest


def cache_key(image: Tensor, xy: tuple[float, float], matcher: HedlinMatcher) -> str:
    """sha256 of the image bytes, the point, the settings, the input size and the UNet's and VAE's weights."""
    h = hashlib.sha256()
    h.update(image.contiguous().cpu().numpy().tobytes())
    h.update(json.dumps({"xy": list(xy), "size": matcher.size, **asdict(matcher.config)}).encode())
    h.update(weights_digest(matcher).encode())
    return h.hexdigest()


def cached_embeddings(matcher: HedlinMatcher, image: Tensor, xy: tuple[float, float], folder: Path) -> Tensor:
    """:meth:`HedlinMatcher.optimise` once per (image, point, settings, UNet); later calls read the file."""
    from safetensors.torch import load_file, save

    from tracker.io.atomic import atomic_write

    path = Path(folder) / f"{cache_key(image, xy, matcher)}.safetensors"
    if path.is_file():
        return load_file(str(path))["embeddings"].to(matcher.device)
    found = matcher.optimise(matcher.prepare(image), xy)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, save({"embeddings": found.cpu().contiguous()}))
    return found
