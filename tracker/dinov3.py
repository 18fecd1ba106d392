"""DINOv3 (Meta, 2025) ViT-S/16 and ViT-B/16 with 4 registers, through timm, as featurizers.

timm builds them as ``Eva`` models with rotary position embeddings (no absolute position table, so any input
size that is a multiple of 16 works without resampling anything); the features are the final normed patch
tokens, as for DINOv2 (:class:`tracker.featurizers.ViTFeaturizer`), on a grid of ``input / 16`` cells.

Weights: the hub's timm-format files (``timm/vit_{small,base}_patch16_dinov3.lvd1689m``) are gated under Meta's
DINOv3 licence; a refused or impossible download is one line saying what to do. A local ``--weights`` file may be
timm format or Meta's own (``dinov3_vits16_pretrain_lvd1689m-*.pth``: ``storage_tokens``, ``ls1.gamma``, fused
``qkv.bias`` with its mask), which timm's converter turns into timm keys; both load strictly.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from torch import Tensor, nn

from tracker.errors import TrackerError, WeightsUnavailable

PATCH = 16
LICENCE = "Meta's DINOv3 licence"


def is_meta_dinov3(state: dict[str, Tensor]) -> bool:
    """Whether a state dict is in Meta's DINOv3 key format (``storage_tokens``) rather than timm's."""
    return "storage_tokens" in state


def meta_to_timm(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Meta DINOv3 keys -> timm ``Eva`` keys with timm's own converter (which prints a line for each bias it
    drops; that output is swallowed: the library prints nothing)."""
    from timm.models.eva import checkpoint_filter_fn

    with contextlib.redirect_stdout(io.StringIO()):
        return checkpoint_filter_fn(dict(state), model)


def gated_message(name: str, hub_id: str, reason: str) -> str:
    """The one line for DINOv3 weights that could not be fetched (gated, offline, not cached)."""
    return (
        f"{name}: the weights ({hub_id}) are gated under {LICENCE} and could not be fetched ({reason}); accept the "
        f"licence at https://huggingface.co/{hub_id}, log in (`hf auth login`) and rerun, or pass --weights PATH "
        "(a timm- or Meta-format file), or --weights random"
    )


def load_dinov3(name: str, input_hw: tuple[int, int], weights: str | None, download: bool = True, **overrides):
    """The timm DINOv3 model of ``name`` at ``input_hw``, weights loaded strictly.

    Args:
        name: ``dinov3-s`` or ``dinov3-b`` (an entry of :data:`tracker.weights.MODELS`).
        input_hw: ``(height, width)``, multiples of 16.
        weights: None (the hub, gated), ``"random"``, or one local file (timm or Meta format).
        download: allow a download when nothing is cached.
        **overrides: timm architecture overrides (tests build tiny models of the same class).

    Raises:
        WeightsUnavailable: not cached and the download was refused or impossible (one line, what to do).
        TrackerError: a file that is unreadable or does not fit strictly; more than one file.
    """
    from tracker import weight_loading as WL
    from tracker import weights as W

    spec = W.get_spec(name)
    model = WL.create_vit(spec.arch, input_hw, **overrides)
    if weights == "random":
        return model.eval()
    files = [part.strip() for part in (weights or "").split(",") if part.strip()]
    if len(files) > 1:
        raise TrackerError(f"--weights: {name} takes one file (timm or Meta format), got {len(files)}")
    if files:
        path = Path(files[0])
    else:
        path = W.cached_path(spec.base)
        if path is None:
            if not download:
                raise WeightsUnavailable(gated_message(name, spec.base.hub_id, "not cached"))
            try:
                path = W.fetch(spec.base)
            except WeightsUnavailable as exc:
                gated = "GatedRepoError" in str(exc)
                reason = "the hub refused: licence not accepted or not logged in" if gated else str(exc)
                raise WeightsUnavailable(gated_message(name, spec.base.hub_id, reason)) from None
    state = WL.read_state_dict(path)
    if is_meta_dinov3(state):
        state = meta_to_timm(state, model)
    WL.load_base_into(model, state)
    return model.eval()
