"""Outputs: the LoRA adapter (safetensors + JSON card), merged weights, and converting published checkpoints.

The adapter uses the published DistillDIFT key layout, ``model.blocks.{i}.attn.qkv.linear_{a,b}_{q,v}.weight``
(``a [r, C]``, ``b [C, r]``, merged as ``W_q += b_q a_q`` and ``W_v += b_v a_v``, no scaling), so the tracker
loads ours and the published ones the same way: ``track VIDEO --model distilldift --weights adapter.safetensors``
(base from the weights table). Merged weights are a plain timm state dict with the LoRA already in ``attn.qkv``,
marked as merged in the safetensors metadata so the tracker does not add the table's LoRA on top:
``track VIDEO --model distilldift --weights merged.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from tracker import weight_loading as WL
from tracker import weights as W
from tracker.distill.student import LoraFactors
from tracker.errors import TrackerError
from tracker.io.atomic import atomic_write

ADAPTER_FORMAT = "distilldift-lora"


def adapter_state(factors: LoraFactors) -> dict[str, Tensor]:
    """Factors in the published DistillDIFT key layout (float32, contiguous)."""
    state = {}
    for i, (a_q, b_q, a_v, b_v) in sorted(factors.items()):
        for name, t in (("a_q", a_q), ("b_q", b_q), ("a_v", a_v), ("b_v", b_v)):
            state[f"model.blocks.{i}.attn.qkv.linear_{name}.weight"] = t.detach().float().contiguous().cpu()
    return state


def card_path(path: str | Path) -> Path:
    """The JSON card beside a weights file: ``adapter.safetensors`` -> ``adapter.json``."""
    return Path(path).with_suffix(".json")


def save_adapter(path: str | Path, factors: LoraFactors, card: dict) -> Path:
    """Write the adapter (safetensors, the card also in its metadata) and its JSON card, both atomically.

    Returns:
        The card's path.
    """
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise TrackerError(f"adapter file must end in .safetensors, got {path.name}")
    text = json.dumps(card, indent=1, sort_keys=False)
    metadata = {WL.KIND_METADATA: "lora", "card": json.dumps(card)}
    atomic_write(path, save(adapter_state(factors), metadata=metadata))
    atomic_write(card_path(path), (text + "\n").encode())
    return card_path(path)


def read_adapter(path: str | Path) -> tuple[LoraFactors, dict | None]:
    """Factors (and the card, when there is one) of an adapter or a published DistillDIFT checkpoint.

    Raises:
        TrackerError: unreadable, or not LoRA factors in the DistillDIFT layout for every block.
    """
    parsed = _parse(path)
    card = None
    if card_path(path).is_file():
        try:
            card = json.loads(card_path(path).read_text())
        except (OSError, ValueError):
            card = None
    return {i: tuple(t.float() for t in f) for i, f in parsed.lora.items()}, card


def _parse(path: str | Path) -> WL.DistillDiftCheckpoint:
    """A DistillDIFT checkpoint or adapter in any key layout (``model.``, accelerate's ``module.``, bare)."""
    state = WL.read_state_dict(Path(path))
    depth = WL.lora_depth(state)
    if not depth:
        raise TrackerError(f"{path} holds no DistillDIFT LoRA factors (model.blocks.N.attn.qkv.linear_a_q.weight ...)")
    return WL.parse_distilldift(state, depth=depth)


def save_merged(path: str | Path, state: dict[str, Tensor], card: dict) -> None:
    """Write a merged timm state dict as safetensors marked ``merged`` (the tracker adds no LoRA to it)."""
    from safetensors.torch import save

    path = Path(path)
    if path.suffix != ".safetensors":
        raise TrackerError(f"merged weights file must end in .safetensors, got {path.name}")
    metadata = {WL.KIND_METADATA: "merged", "card": json.dumps(card)}
    atomic_write(path, save({k: v.contiguous() for k, v in state.items()}, metadata=metadata))


def convert_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    merged: str | Path | None = None,
    base_weights: str | None = None,
    input_size: int = 434,
    **overrides,
) -> dict:
    """Convert a published DistillDIFT checkpoint (``distilldift_us.ckpt`` ...) to an adapter + card.

    Args:
        checkpoint: the published file in any key layout (LoRA only, or with some or all backbone tensors:
            those need ``merged``, where they are laid over the base). A file with the supervised student's
            head is refused.
        out: adapter path (``.safetensors``); the card goes beside it (``.json``).
        merged: also write merged weights here (needs the base: from the checkpoint, ``base_weights`` or the
            weights table).
        base_weights: a local base file (timm or Meta format) for ``merged``.
        input_size: the square input side the merged weights are built at (their position embedding).
        **overrides: timm architecture overrides for the merged model (tests build tiny ones).

    Returns:
        The card.
    """
    from tracker.distill.data import file_digest

    checkpoint = Path(checkpoint)
    parsed = _parse(checkpoint)
    if parsed.head is not None:
        raise TrackerError(
            f"{checkpoint.name} carries the supervised student's head, which neither an adapter nor merged weights"
            f" hold; use the checkpoint itself: --model distilldift-s --weights {checkpoint}"
        )
    tensors = len(parsed.base or {})
    if tensors and merged is None:
        raise TrackerError(
            f"{checkpoint.name} carries {tensors} backbone tensors besides the LoRA, which an adapter cannot hold;"
            " add --merged FILE, or use the checkpoint itself with --weights"
        )
    factors, _ = read_adapter(checkpoint)
    a_q = factors[0][0]
    spec = W.get_spec("distilldift")
    card = {
        "format": ADAPTER_FORMAT,
        "layout": "model.blocks.{i}.attn.qkv.linear_{a,b}_{q,v}.weight; merge W_q += B_q A_q, W_v += B_v A_v",
        "base_model": {"arch": spec.arch, "weights": spec.base.hub_id},
        "lora": {"rank": int(a_q.shape[0]), "alpha": int(a_q.shape[0]), "scaling": 1.0, "targets": "q,v of attn.qkv"},
        "blocks": len(factors),
        "width": int(a_q.shape[1]),
        "teachers": "as published by DistillDIFT (SDXL-Turbo + DINOv2 ViT-B/14-reg)",
        "data": "as published by DistillDIFT",
        "steps": None,
        "converted_from": {"file": checkpoint.name, "sha256": file_digest(checkpoint)},
        "checkpoint_backbone_tensors": tensors,  # laid over the base in the merged weights only
    }
    save_adapter(out, factors, card)
    if merged is not None:
        weights = ",".join(filter(None, [base_weights, str(checkpoint)]))
        model = WL.load_model(spec, (input_size, input_size), weights, **overrides)
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_merged(merged, state, {**card, "input_size": [input_size, input_size]})
    return card


def factors_equal(a: LoraFactors, b: LoraFactors, atol: float = 0.0) -> bool:
    """Whether two sets of factors are the same (to ``atol``)."""
    return sorted(a) == sorted(b) and all(
        torch.allclose(x, y, atol=atol, rtol=0) for i in a for x, y in zip(a[i], b[i], strict=True)
    )
