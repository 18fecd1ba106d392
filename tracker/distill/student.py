"""The student: DINOv2 ViT-B/14-reg (timm) with peft LoRA on the query and value projections of every block.

timm fuses q, k and v into one ``attn.qkv`` Linear ``[3C, C]`` (rows: q, then k, then v). DistillDIFT adds a
LoRA to the q and v slices of its output only, with its own ``A`` and ``B`` for each. We reproduce that exactly
with standard peft: :class:`SplitQKV` replaces each fused Linear by three Linears ``q, k, v`` holding the same
rows (its output is the same concatenation, so timm's attention is unchanged), and peft's LoRA targets
``attn.qkv.q`` and ``attn.qkv.v``. The factors are the published layout's ``linear_{a,b}_{q,v}``, and merging is
``W_q += B_q A_q``, ``W_v += B_v A_v`` into the fused weight (:func:`tracker.weight_loading.merge_lora_qv`), which is
how the tracker loads DistillDIFT checkpoints, without peft.

Scaling: peft multiplies ``B A`` by ``lora_alpha / r``; DistillDIFT has no scaling. The default
``lora_alpha = r = 8`` makes it 1, so the factors mean the same thing in both. Any other alpha is folded into
``B`` when the factors are exported, so an adapter always merges as plain ``W += B A``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tracker.errors import TrackerError
from tracker.featurizers import IMAGENET_MEAN, IMAGENET_STD

LoraFactors = dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]  # block -> (a_q [r,C], b_q [C,r], a_v, b_v)
TARGET_MODULES = r".*blocks\.\d+\.attn\.qkv\.(q|v)"
ADAPTER_NAME = "default"


@dataclass(frozen=True)
class LoraSpec:
    """LoRA settings (DistillDIFT: rank 8, dropout 0.05, alpha = rank, i.e. scaling 1)."""

    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.05

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class SplitQKV(nn.Module):
    """timm's fused ``qkv`` Linear as three Linears with the same rows; output ``cat([q(x), k(x), v(x)], -1)``."""

    def __init__(self, qkv: nn.Linear):
        super().__init__()
        c = qkv.in_features
        if qkv.out_features != 3 * c:
            raise TrackerError(f"qkv projection {qkv.out_features}x{c} is not a fused q,k,v of width {c}")
        bias = qkv.bias is not None
        like = dict(device=qkv.weight.device, dtype=qkv.weight.dtype)
        self.q, self.k, self.v = (nn.Linear(c, c, bias=bias, **like) for _ in range(3))
        with torch.no_grad():
            for i, lin in enumerate((self.q, self.k, self.v)):
                lin.weight.copy_(qkv.weight[i * c : (i + 1) * c])
                if bias:
                    lin.bias.copy_(qkv.bias[i * c : (i + 1) * c])
        self.in_features = c

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.q(x), self.k(x), self.v(x)], dim=-1)


def _peft():
    try:
        import peft
    except ImportError:
        raise TrackerError("distillation needs peft: pip install -e '.[train]'") from None
    return peft


def add_lora(model: nn.Module, spec: LoraSpec = LoraSpec()) -> nn.Module:
    """Split every block's qkv and inject peft LoRA on q and v, in place; everything else is frozen.

    Args:
        model: a timm DINOv2 ``VisionTransformer``.
        spec: rank, alpha and dropout.

    Returns:
        The same model object (still a timm ``VisionTransformer``; peft's LoRA Linears wrap ``qkv.q``, ``qkv.v``).
    """
    peft = _peft()
    for block in model.blocks:
        block.attn.qkv = SplitQKV(block.attn.qkv)
    config = peft.LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=TARGET_MODULES,
        bias="none",
        init_lora_weights=True,  # A Kaiming-uniform, B zero (as DistillDIFT): the student starts as its base
    )
    model = peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    for name, param in model.named_parameters():
        param.requires_grad = ".lora_" in name
    return model


def _lora_layers(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    layers = []
    for i, block in enumerate(model.blocks):
        qkv = block.attn.qkv
        if not isinstance(qkv, SplitQKV) or not hasattr(qkv.q, "lora_A"):
            raise TrackerError(f"block {i} carries no LoRA on q and v (build the student with add_lora)")
        layers.append((qkv.q, qkv.v))
    return layers


@torch.no_grad()
def lora_factors(model: nn.Module) -> LoraFactors:
    """The trained factors per block, float32 on CPU, with peft's scaling folded into ``B`` (merge: ``W += B A``)."""
    out = {}
    for i, (q, v) in enumerate(_lora_layers(model)):
        pair = []
        for layer in (q, v):
            a = layer.lora_A[ADAPTER_NAME].weight.detach().float().cpu().clone()
            b = layer.lora_B[ADAPTER_NAME].weight.detach().float().cpu() * layer.scaling[ADAPTER_NAME]
            pair.append((a, b))
        (a_q, b_q), (a_v, b_v) = pair
        out[i] = (a_q, b_q, a_v, b_v)
    return out


@torch.no_grad()
def load_lora_factors(model: nn.Module, factors: LoraFactors) -> None:
    """Put factors (scaling folded into ``B``) back into a student built with :func:`add_lora`.

    Raises:
        TrackerError: number of blocks, rank or width do not fit.
    """
    layers = _lora_layers(model)
    if sorted(factors) != list(range(len(layers))):
        raise TrackerError(f"adapter has {len(factors)} blocks, the student {len(layers)}")
    for i, (q, v) in enumerate(layers):
        a_q, b_q, a_v, b_v = factors[i]
        for layer, a, b in ((q, a_q, b_q), (v, a_v, b_v)):
            lin_a, lin_b = layer.lora_A[ADAPTER_NAME], layer.lora_B[ADAPTER_NAME]
            if a.shape != lin_a.weight.shape or b.shape != lin_b.weight.shape:
                raise TrackerError(
                    f"block {i}: adapter factors {tuple(a.shape)}/{tuple(b.shape)} do not fit the student's "
                    f"{tuple(lin_a.weight.shape)}/{tuple(lin_b.weight.shape)} (rank or width differ)"
                )
            lin_a.weight.copy_(a)
            lin_b.weight.copy_(b / layer.scaling[ADAPTER_NAME])


def merged_state_dict(
    arch: str, input_hw: tuple[int, int], base_state: dict[str, Tensor], factors: LoraFactors, **overrides
) -> dict[str, Tensor]:
    """A plain timm state dict (fused ``attn.qkv``) of the base with the LoRA merged, as the tracker loads it."""
    from tracker import weight_loading as WL

    model = WL.create_vit(arch, input_hw, **overrides)
    WL.load_base_into(model, base_state)
    WL.merge_lora_qv(model, factors)
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


class Student(nn.Module):
    """The trainable student as a featurizer: images at the input size -> unit feature grid.

    The same computation as :class:`tracker.featurizers.ViTFeaturizer` (ImageNet normalisation, final normed patch
    tokens, L2 normalisation in fp32), with gradients.

    Args:
        model: timm ViT with LoRA (:func:`add_lora`).
        input_hw: ``(height, width)``, multiples of 14.
        arch: timm architecture name (recorded in outputs).
        base_state: the base's timm state dict (CPU), kept for the merged output.
    """

    def __init__(self, model: nn.Module, input_hw: tuple[int, int], arch: str, base_state: dict[str, Tensor]):
        super().__init__()
        self.model = model
        self.input_hw = tuple(input_hw)
        self.arch = arch
        self.base_state = base_state
        self.patch = int(model.patch_embed.patch_size[0])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255, persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255, persistent=False)

    @property
    def device(self) -> torch.device:
        return self.mean.device

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.input_hw[0] // self.patch, self.input_hw[1] // self.patch

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, h, w]`` float 0..255 at the input size -> ``[B, C, h/14, w/14]`` unit features."""
        x = (x.to(self.device) - self.mean) / self.std
        tokens = self.model.forward_features(x)
        patches = tokens[:, self.model.num_prefix_tokens :]
        grid = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *self.grid_hw)
        return F.normalize(grid.float(), dim=1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def build_student(
    arch: str,
    input_hw: tuple[int, int],
    base_weights: str | None,
    spec: LoraSpec = LoraSpec(),
    seed: int = 0,
    **overrides,
) -> Student:
    """Load the DINOv2 base (strictly, from the weights table or a file) and add LoRA.

    Args:
        arch: timm architecture (``vit_base_patch14_reg4_dinov2``).
        input_hw: student input size.
        base_weights: None (the table's ``dinov2-b`` weights), a local file, or ``"random"`` (see
            :func:`load_base_vit`).
        spec: LoRA settings.
        seed: seed of the random base and of the LoRA initialisation.
        **overrides: timm architecture overrides (tiny models in tests).
    """
    base = load_base_vit(arch, input_hw, base_weights, seed, **overrides)
    base_state = {k: v.detach().clone().cpu() for k, v in base.state_dict().items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = add_lora(base, spec)
    return Student(model, input_hw, arch, base_state)


def load_base_vit(arch: str, input_hw: tuple[int, int], weights: str | None, seed: int = 0, **overrides) -> nn.Module:
    """The DINOv2 backbone shared by the student and the DINOv2 teacher, loaded strictly.

    ``weights="random"`` builds the real architecture with random weights from ``seed`` (the same every call,
    so teacher and student share it) and sets every LayerScale to 1: DINOv2 initialises LayerScale at 1e-5,
    which would make a random backbone all but ignore its blocks and its LoRA.
    """
    from tracker import weight_loading as WL
    from tracker import weights as W

    spec = next((s for s in W.MODELS.values() if s.arch == arch and s.lora is None), None)
    if spec is None:
        raise TrackerError(f"no base weights known for architecture {arch!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = WL.load_model(spec, input_hw, weights, **overrides)
        except W.WeightsUnavailable as exc:
            raise W.WeightsUnavailable(
                f"DINOv2 base weights ({spec.name}) unavailable: {exc}; run `track weights download {spec.name}` on "
                f"a machine with internet, or pass --base FILE (timm or Meta format, cache: {W.cache_dir()})"
            ) from None
    if weights == "random":
        with torch.no_grad():
            for block in model.blocks:
                for name in ("ls1", "ls2"):
                    gamma = getattr(getattr(block, name, None), "gamma", None)
                    if gamma is not None:
                        gamma.fill_(1.0)
    return model.eval()
