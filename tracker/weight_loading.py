"""Weight files into the models: reading them, converting their key formats, strict loading, LoRA merging.

A file is read with safetensors or ``torch.load(weights_only=True)`` and loaded strictly into the timm ViT
(:func:`create_vit`): timm or Meta (``dinov2_vitb14_reg4_pretrain.pth``) key format for the base weights.
DistillDIFT checkpoints are torch state dicts of the authors' ``DistilledModel``: the DINOv2 backbone under
``model.`` in Meta key format, the base projection of each block wrapped at ``model.blocks.{i}.attn.qkv.qkv.{weight,
bias}`` and the LoRA beside it at ``model.blocks.{i}.attn.qkv.linear_{a,b}_{q,v}.weight`` (rank 8, no scaling, no
bias; the LoRA adds to the q and v slices of the fused qkv output only). Every layout such a file can have loads
(see docs/distilldift.md): LoRA only, a partial backbone (some tensors, laid over the base; never strict-loaded
as the base), the whole student (then no base is needed); keys with accelerate's ``module.`` prefix, with
``model.``, or bare ``blocks.``; and the supervised student's head ``head.{0,2}.{weight,bias}`` (Linear
768->1536, ReLU, Linear 1536->768, ReLU on the normed patch tokens), which is kept and applied. The LoRA is merged
into the qkv weights at load time, so inference needs neither peft nor the wrapper.

``track distill`` writes adapters in the same LoRA key layout (safetensors) and merged weights: a timm state
dict whose safetensors metadata says ``tracker_kind: merged``; those load as they are, with no LoRA added.
Where a file comes from when ``--weights`` does not name it (the table, the cache, downloads) is
:mod:`tracker.weights`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tracker.errors import TrackerError, WeightsUnavailable
from tracker.weights import ModelSpec, Source, cached_path, fetch

LORA_KEY = re.compile(r"^model\.blocks\.(\d+)\.attn\.qkv\.linear_([ab])_([qv])\.weight$")  # the saved layout
_LORA = re.compile(r"^blocks\.(\d+)\.attn\.qkv\.linear_([ab])_([qv])\.weight$")  # after prefixes are removed
_HEAD = re.compile(r"^head\.([02])\.(weight|bias)$")
# Top-level names of Meta's DINOv2 backbone: what a bare (un-prefixed) checkpoint key starts with.
_BACKBONE_ROOTS = ("blocks.", "patch_embed.", "norm.", "cls_token", "pos_embed", "register_tokens", "mask_token")
KIND_METADATA = "tracker_kind"  # safetensors metadata key: "lora" (adapter) or "merged" (LoRA already merged)
HEAD_PREFIX = "patch_head."  # the supervised student's head, attached to the timm model under this name


# --------------------------------------------------------------------------- reading and converting


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file or a torch checkpoint (``weights_only=True``); unwraps ``state_dict``."""
    path = Path(path)
    if not path.is_file():
        raise TrackerError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise TrackerError(f"cannot read weights file {path}: {type(exc).__name__}") from None
    for wrapper in ("state_dict", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise TrackerError(f"{path} is not a state dict of tensors")
    return state


def meta_to_timm(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Meta DINOv2(-reg) key format -> timm ``VisionTransformer`` (``no_embed_class=True``) key format.

    Meta adds ``pos_embed[:, 0]`` to the cls token and has no position embedding for registers; timm's
    no-embed-class model keeps only the patch positions, so the cls position is folded into ``cls_token``.
    """
    out = {k: v for k, v in state.items() if k not in ("mask_token", "register_tokens", "cls_token", "pos_embed")}
    if "register_tokens" in state:
        out["reg_token"] = state["register_tokens"]
    if "cls_token" in state and "pos_embed" in state:
        out["cls_token"] = state["cls_token"] + state["pos_embed"][:, 0]
        out["pos_embed"] = state["pos_embed"][:, 1:]
    for key in list(out):  # SwiGLU checkpoints (ViT-g) name the MLP w12/w3
        if ".mlp.w12." in key or ".mlp.w3." in key:
            out[key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")] = out.pop(key)
    return out


def is_meta_format(state: dict[str, Tensor]) -> bool:
    return "register_tokens" in state or "mask_token" in state


def _fit_pos_embed(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Resample a timm-format ``pos_embed`` in ``state`` (in place) to the model's grid, once."""
    from timm.layers import resample_abs_pos_embed

    pos = state.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos is not None and target is not None and pos.shape != target.shape:
        old = int(round(pos.shape[1] ** 0.5))
        if old * old != pos.shape[1]:
            raise TrackerError(f"position embedding of {pos.shape[1]} tokens is not a square grid")
        state["pos_embed"] = resample_abs_pos_embed(
            pos.float(), new_size=list(model.patch_embed.grid_size), old_size=[old, old], num_prefix_tokens=0
        ).to(pos.dtype)


def load_base_into(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Strictly load timm- or Meta-format backbone weights, resampling the position embedding once.

    Raises:
        TrackerError: missing or unexpected keys, or shapes that do not fit the architecture.
    """
    if is_meta_format(state):
        state = meta_to_timm(state)
    state = dict(state)
    _fit_pos_embed(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:300]
        raise TrackerError(f"weights do not fit {type(model).__name__}: {detail}") from None


def _backbone_to_timm(partial: dict[str, Tensor]) -> dict[str, Tensor]:
    """Meta-format backbone tensors, possibly only some of them -> timm names (``mask_token`` dropped)."""
    if ("cls_token" in partial) != ("pos_embed" in partial):
        raise TrackerError("checkpoint has only one of cls_token / pos_embed (Meta format needs both to convert)")
    state = meta_to_timm(partial)
    state.pop("mask_token", None)
    return state


def is_whole_backbone(model: nn.Module, backbone: dict[str, Tensor]) -> bool:
    """Whether Meta-format ``backbone`` tensors cover every tensor of ``model`` (a whole student)."""
    have = set(_backbone_to_timm(backbone))
    return not [k for k in model.state_dict() if k not in have and not k.startswith(HEAD_PREFIX)]


@torch.no_grad()
def overlay_backbone(model: nn.Module, backbone: dict[str, Tensor]) -> int:
    """Lay a checkpoint's backbone tensors (Meta format, some or all) over already loaded base weights.

    The authors' loaders put a checkpoint over the hub's DINOv2 non-strictly; here every tensor must still
    name a tensor of the model with its shape (only the position embedding is resampled), so nothing is
    silently dropped, and what the checkpoint lacks keeps the base's values.

    Returns:
        How many tensors were replaced.

    Raises:
        TrackerError: a tensor the model does not have, or of another shape.
    """
    state = _backbone_to_timm(backbone)
    _fit_pos_embed(model, state)
    own = model.state_dict()
    for key, value in state.items():
        if key not in own:
            raise TrackerError(f"checkpoint tensor {key!r} is not part of {type(model).__name__}")
        if own[key].shape != value.shape:
            raise TrackerError(f"checkpoint tensor {key!r} has shape {tuple(value.shape)}, not {tuple(own[key].shape)}")
    for key, value in state.items():
        own[key].copy_(value.to(own[key].dtype))
    return len(state)


@dataclass(frozen=True)
class DistillDiftCheckpoint:
    """A parsed DistillDIFT checkpoint.

    Attributes:
        lora: per block ``(a_q [r, C], b_q [C, r], a_v [r, C], b_v [C, r])``.
        base: backbone tensors in Meta key format (qkv unwrapped) when the checkpoint carries any (the whole
            backbone or part of it), else None.
        head: the supervised student's head ``{"0.weight" [H, C], "0.bias" [H], "2.weight" [C, H], "2.bias" [C]}``
            when present, else None.
        prefix: the key prefix the file used (``"module.model."``, ``"model."`` or ``""``), for messages.
    """

    lora: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]
    base: dict[str, Tensor] | None
    head: dict[str, Tensor] | None = None
    prefix: str = "model."


def _strip_prefix(key: str) -> tuple[str, str]:
    """``(prefix, rest)``: accelerate's ``module.`` (any number of times), then the student's ``model.``."""
    rest = key
    while rest.startswith("module."):
        rest = rest[len("module.") :]
    if rest.startswith("model."):
        rest = rest[len("model.") :]
    return key[: len(key) - len(rest)], rest


def is_distilldift(state: dict[str, Tensor]) -> bool:
    """Whether a state dict is a DistillDIFT checkpoint in any of its layouts (LoRA, head, wrapped qkv or a
    ``module.``/``model.`` prefix) rather than a plain timm/Meta backbone."""
    for key in state:
        prefix, rest = _strip_prefix(key)
        if prefix or _LORA.match(rest) or _HEAD.match(rest) or ".attn.qkv.qkv." in rest:
            return True
    return False


def lora_depth(state: dict[str, Tensor]) -> int:
    """One more than the highest block index with LoRA factors in any layout (0 when there are none)."""
    blocks = [int(m[1]) for k in state if (m := _LORA.match(_strip_prefix(k)[1]))]
    return max(blocks) + 1 if blocks else 0


def parse_distilldift(state: dict[str, Tensor], depth: int = 12) -> DistillDiftCheckpoint:
    """Split a DistillDIFT state dict into LoRA factors, backbone tensors and head, strictly.

    Keys may carry accelerate's ``module.`` prefix, the student's ``model.`` or neither (bare ``blocks.``);
    the head sits outside the backbone (``head.*`` or ``module.head.*``).

    Raises:
        TrackerError: LoRA factors missing for a block, inconsistent ranks, an incomplete head, keys of no
            known kind, or two keys that mean the same tensor.
    """
    parts: dict[int, dict[str, Tensor]] = {}
    base: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    prefixes = set()
    for key, value in state.items():
        prefix, rest = _strip_prefix(key)
        if m := _LORA.match(rest):
            target, name = parts.setdefault(int(m[1]), {}), m[2] + m[3]
        elif (m := _HEAD.match(rest)) and not prefix.endswith("model."):
            target, name = head, f"{m[1]}.{m[2]}"
        elif rest.startswith(_BACKBONE_ROOTS):
            target, name = base, rest.replace(".attn.qkv.qkv.", ".attn.qkv.")
        else:
            raise TrackerError(f"unexpected key {key!r} in DistillDIFT checkpoint")
        if name in target:
            raise TrackerError(f"DistillDIFT checkpoint holds {key!r} twice (with and without a prefix)")
        target[name] = value
        if target is not head:
            prefixes.add(prefix)
    if sorted(parts) != list(range(depth)) or any(len(p) != 4 for p in parts.values()):
        raise TrackerError(f"DistillDIFT checkpoint must hold linear_{{a,b}}_{{q,v}} for all {depth} blocks")
    lora = {i: (p["aq"], p["bq"], p["av"], p["bv"]) for i, p in parts.items()}
    for i, (a_q, b_q, a_v, b_v) in lora.items():
        if (
            a_q.shape[0] != b_q.shape[1]
            or a_v.shape[0] != b_v.shape[1]
            or a_q.shape[1] != b_q.shape[0]
            or a_v.shape[1] != b_v.shape[0]
            or a_q.shape[1] != a_v.shape[1]
        ):
            raise TrackerError(f"block {i}: LoRA factor shapes {tuple(a_q.shape)} / {tuple(b_q.shape)} do not chain")
    if head:
        _check_head(head, width=lora[0][0].shape[1])
    return DistillDiftCheckpoint(
        lora=lora, base=base or None, head=head or None, prefix="/".join(sorted(p or "(bare)" for p in prefixes))
    )


def _check_head(head: dict[str, Tensor], width: int) -> None:
    """The supervised student's head: ``Linear(C, H), ReLU, Linear(H, C), ReLU`` with ``C`` the ViT width."""
    names = ("0.weight", "0.bias", "2.weight", "2.bias")
    if sorted(head) != sorted(names):
        raise TrackerError(f"DistillDIFT head must hold head.{{0,2}}.{{weight,bias}}, got head.{', head.'.join(head)}")
    w0, b0, w2, b2 = (head[n] for n in names)
    hidden = w0.shape[0]
    if w0.shape != (hidden, width) or b0.shape != (hidden,) or w2.shape[1:] != (hidden,) or b2.shape != w2.shape[:1]:
        raise TrackerError(
            f"DistillDIFT head shapes {tuple(w0.shape)} / {tuple(w2.shape)} do not chain from width {width}"
        )
    if w2.shape[0] != width:
        raise TrackerError(
            f"DistillDIFT head maps {width} to {w2.shape[0]} channels; only {width} -> {width} heads load"
        )


def build_head(head: dict[str, Tensor]) -> nn.Sequential:
    """The supervised student's head as a module: ``Linear, ReLU, Linear, ReLU`` (``head.0`` and ``head.2``)."""
    w0, w2 = head["0.weight"], head["2.weight"]
    module = nn.Sequential(
        nn.Linear(w0.shape[1], w0.shape[0]), nn.ReLU(), nn.Linear(w2.shape[1], w2.shape[0]), nn.ReLU()
    )
    module.load_state_dict({k: v.float() for k, v in head.items()}, strict=True)
    return module.eval()


def attach_head(model: nn.Module, head: dict[str, Tensor]) -> None:
    """Attach the head as ``model.patch_head``: :class:`tracker.featurizers.ViTFeaturizer` applies it to the
    normed patch tokens (before the L2 normalisation), as the authors' ``DistilledModel.get_features`` does."""
    _check_head(head, width=int(model.embed_dim))
    model.add_module(HEAD_PREFIX.rstrip("."), build_head(head))


@torch.no_grad()
def merge_lora_qv(model: nn.Module, lora: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]) -> None:
    """Merge LoRA into each block's fused qkv weight: ``W_q += B_q A_q``, ``W_v += B_v A_v``; k untouched."""
    blocks = model.blocks
    if len(lora) != len(blocks):
        raise TrackerError(f"LoRA has {len(lora)} blocks, the model {len(blocks)}")
    for i, (a_q, b_q, a_v, b_v) in lora.items():
        weight = blocks[i].attn.qkv.weight  # [3C, C]: q rows, then k, then v
        dim = weight.shape[1]
        if b_q.shape[0] != dim or a_q.shape[1] != dim or b_v.shape[0] != dim or a_v.shape[1] != dim:
            raise TrackerError(f"block {i}: LoRA width {b_q.shape[0]} does not match the model's {dim}")
        weight[:dim] += (b_q.float() @ a_q.float()).to(weight.dtype)
        weight[2 * dim :] += (b_v.float() @ a_v.float()).to(weight.dtype)


# --------------------------------------------------------------------------- building


def create_vit(arch: str, input_hw: tuple[int, int], **overrides) -> nn.Module:
    """The timm architecture built at ``input_hw`` with random weights (position embedding sized once)."""
    import timm

    return timm.create_model(arch, pretrained=False, img_size=input_hw, num_classes=0, **overrides)


def read_metadata(path: Path) -> dict[str, str]:
    """The string metadata of a safetensors file ({} for other files or none)."""
    if Path(path).suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:
        return {}


def classify(path: Path) -> tuple[str, dict[str, Tensor]]:
    """Read a weights file and say what it holds: ``"lora"`` (a DistillDIFT checkpoint in any layout, or an
    adapter), ``"merged"`` (a timm base with the LoRA already merged, as ``track distill`` writes it) or
    ``"base"`` (timm/Meta)."""
    state = read_state_dict(path)
    if is_distilldift(state):
        return "lora", state
    return ("merged" if read_metadata(path).get(KIND_METADATA) == "merged" else "base"), state


def load_model(
    spec: ModelSpec,
    input_hw: tuple[int, int],
    weights: str | None = None,
    *,
    download: bool = True,
    **overrides,
) -> nn.Module:
    """Build ``spec``'s ViT at ``input_hw`` and load its weights strictly (LoRA merged, head attached).

    The base is loaded strictly (every tensor, nothing extra). A DistillDIFT checkpoint's backbone tensors are
    then laid over it (:func:`overlay_backbone`); a checkpoint with the whole backbone needs no base file.

    Args:
        spec: model of the table.
        input_hw: ``(height, width)`` input size, multiples of 14.
        weights: None for the table's sources; ``"random"`` for random weights (explicit only); or a comma-
            separated list of local files: a base (timm or Meta format) and/or a DistillDIFT checkpoint or
            adapter; or one merged file (``track distill``'s ``merged.safetensors``, nothing added to it).
            What is not given comes from the cache or a download.
        download: allow downloads for what is not cached.
        **overrides: timm architecture overrides (tests build tiny models of the same architecture).

    Raises:
        WeightsUnavailable: a needed file is neither given, cached nor downloadable.
        TrackerError: a file is unreadable or does not fit the architecture strictly.
    """
    model = create_vit(spec.arch, input_hw, **overrides)
    if weights == "random":
        return model.eval()
    base_state = ckpt = None
    seen: set[str] = set()
    for item in filter(None, (part.strip() for part in (weights or "").split(","))):
        kind, state = classify(Path(item))
        if kind in seen:
            what = {"lora": "LoRA checkpoints", "merged": "merged weights"}.get(kind, "base weights")
            raise TrackerError(f"--weights names two {what}")
        if seen and "merged" in seen | {kind}:
            raise TrackerError("--weights: merged weights already hold their LoRA; pass the merged file alone")
        seen.add(kind)
        if kind == "merged":
            base_state = state
        elif kind == "lora":
            if spec.lora is None:
                raise TrackerError(f"{item} is a DistillDIFT LoRA checkpoint but {spec.name} takes no LoRA")
            ckpt = parse_distilldift(state, depth=len(model.blocks))
        else:
            base_state = state
    if spec.lora is not None and ckpt is None and "merged" not in seen:
        ckpt = parse_distilldift(read_state_dict(_get(spec.lora, download)), depth=len(model.blocks))
    whole = ckpt is not None and ckpt.base is not None and is_whole_backbone(model, ckpt.base)
    if base_state is None and whole:
        load_base_into(model, ckpt.base)  # the whole student: no base file needed
    else:
        if base_state is None:
            base_state = read_state_dict(_get(spec.base, download))
        load_base_into(model, base_state)
        if ckpt is not None and ckpt.base is not None:
            overlay_backbone(model, ckpt.base)  # some or all backbone tensors of the checkpoint win
    if ckpt is not None:
        merge_lora_qv(model, ckpt.lora)
        if ckpt.head is not None:
            attach_head(model, ckpt.head)
    return model.eval()


def _get(source: Source, download: bool) -> Path:
    if found := cached_path(source):
        return found
    if not download:
        raise WeightsUnavailable(f"{source.filename} is not cached")
    return fetch(source)
