"""One weights path: a table from model name to sources, a cache directory, strict loading, LoRA merging.

Base DINOv2-with-registers weights come from the Hugging Face hub in timm format
(``timm/vit_base_patch14_reg4_dinov2.lvd142m``) or from a local file in timm or Meta
(``dinov2_vitb14_reg4_pretrain.pth``) key format. DistillDIFT checkpoints are flat torch state dicts with
keys ``model.blocks.{i}.attn.qkv.linear_{a,b}_{q,v}.weight`` (rank 8, no scaling, no bias; the LoRA adds to
the q and v slices of the fused qkv output only) and, when the whole student was saved, the backbone in
Meta format with the wrapped base projection at ``model.blocks.{i}.attn.qkv.qkv.{weight,bias}``.
The LoRA is merged into the qkv weights at load time, so inference needs neither peft nor the wrapper.
Anything downloaded is read with safetensors or ``torch.load(weights_only=True)``.

``track distill`` writes adapters in the same LoRA key layout (safetensors) and merged weights: a timm state
dict whose safetensors metadata says ``tracker_kind: merged``; those load as they are, with no LoRA added.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from tracker.errors import TrackerError, WeightsUnavailable

LORA_KEY = re.compile(r"^model\.blocks\.(\d+)\.attn\.qkv\.linear_([ab])_([qv])\.weight$")
KIND_METADATA = "tracker_kind"  # safetensors metadata key: "lora" (adapter) or "merged" (LoRA already merged)


@dataclass(frozen=True)
class Source:
    """Where one weights file comes from.

    Attributes:
        hub_id: Hugging Face hub repository (timm key format), or None.
        url: direct download URL, or None (then only a local ``--weights`` file can provide it).
        filename: file name inside the hub repository or the cache.
        sha256: expected digest where published, else None.
    """

    hub_id: str | None
    url: str | None
    filename: str
    sha256: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model of the table: timm architecture, base weights and an optional DistillDIFT LoRA."""

    name: str
    arch: str
    base: Source
    lora: Source | None
    description: str


_DINOV2_B = Source(
    hub_id="timm/vit_base_patch14_reg4_dinov2.lvd142m",
    url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_reg4_pretrain.pth",
    filename="model.safetensors",
)
_DINOV2_S = Source(
    hub_id="timm/vit_small_patch14_reg4_dinov2.lvd142m",
    url="https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
    filename="model.safetensors",
)

# Only the unsupervised student has a published URL (DistillDIFT README); no digests are published, so
# `track weights download` prints the sha256 it computed. The weakly supervised and supervised students use
# the same key format and load with --weights PATH.
MODELS: dict[str, ModelSpec] = {
    "distilldift": ModelSpec(
        "distilldift",
        "vit_base_patch14_reg4_dinov2",
        _DINOV2_B,
        Source(None, "https://ommer-lab.com/files/distilldift/distilldift_us.ckpt", "distilldift_us.ckpt"),
        "DistillDIFT student, unsupervised distillation (DINOv2 ViT-B/14-reg4 + LoRA r8 on q,v)",
    ),
    "distilldift-ws": ModelSpec(
        "distilldift-ws",
        "vit_base_patch14_reg4_dinov2",
        _DINOV2_B,
        Source(None, None, "distilldift_ws.ckpt"),
        "DistillDIFT student, weakly supervised (no public URL known: pass --weights PATH)",
    ),
    "distilldift-s": ModelSpec(
        "distilldift-s",
        "vit_base_patch14_reg4_dinov2",
        _DINOV2_B,
        Source(None, None, "distilldift_s.ckpt"),
        "DistillDIFT student, supervised (no public URL known: pass --weights PATH)",
    ),
    "dinov2-b": ModelSpec(
        "dinov2-b", "vit_base_patch14_reg4_dinov2", _DINOV2_B, None, "DINOv2 ViT-B/14 with 4 registers"
    ),
    "dinov2-s": ModelSpec(
        "dinov2-s", "vit_small_patch14_reg4_dinov2", _DINOV2_S, None, "DINOv2 ViT-S/14 with 4 registers"
    ),
}


def cache_dir() -> Path:
    """``$TRACKER_CACHE`` or ``~/.cache/semantic-tracker``."""
    return Path(os.environ.get("TRACKER_CACHE", Path.home() / ".cache" / "semantic-tracker"))


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise TrackerError(f"unknown model {name!r}; choose from: {', '.join([*MODELS, 'sift', 'auto'])}")
    return MODELS[name]


# --------------------------------------------------------------------------- fetching


def _hub_cached(source: Source) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(source.hub_id, source.filename, cache_dir=cache_dir() / "hub")
    return Path(found) if isinstance(found, str) else None


def cached_path(source: Source) -> Path | None:
    """The local file of a source when it is in the cache, else None (never touches the network)."""
    if source.hub_id and (found := _hub_cached(source)):
        return found
    local = cache_dir() / "files" / source.filename
    if source.url and source.url.endswith(".pth"):
        local = cache_dir() / "files" / Path(source.url).name
    return local if local.is_file() else None


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_url(url: str, dest: Path, sha256: str | None, timeout: float) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    if sha256 and (got := sha256sum(Path(tmp.name))) != sha256:
        Path(tmp.name).unlink(missing_ok=True)
        raise TrackerError(f"{url}: sha256 {got} does not match the expected {sha256}")
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, dest)
    return dest


def _reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the URL's host can be made (a quick offline check, no retries)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def fetch(source: Source, *, timeout: float = 20.0) -> Path:
    """The local file of a source, downloading it into the cache when needed.

    Raises:
        WeightsUnavailable: not cached and the download failed (offline, blocked, no URL known).
    """
    if found := cached_path(source):
        return found
    errors = []
    if source.hub_id and not _reachable("https://huggingface.co"):
        errors.append("huggingface.co unreachable")
    elif source.hub_id:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(source.hub_id, source.filename, cache_dir=cache_dir() / "hub"))
        except Exception as exc:  # network, auth, missing file: all mean "not available here"
            errors.append(f"hub {source.hub_id}: {type(exc).__name__}")
    if source.url and not _reachable(source.url):
        errors.append(f"{source.url.split('/')[2]} unreachable")
    elif source.url:
        try:
            return _download_url(source.url, cache_dir() / "files" / Path(source.url).name, source.sha256, timeout)
        except TrackerError:
            raise
        except Exception as exc:
            errors.append(f"{source.url}: {type(exc).__name__}: {exc}".splitlines()[0][:160])
    if not errors:
        errors.append("no public download location is known")
    raise WeightsUnavailable(f"cannot get {source.filename} ({'; '.join(errors)})")


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


def load_base_into(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Strictly load timm- or Meta-format backbone weights, resampling the position embedding once.

    Raises:
        TrackerError: missing or unexpected keys, or shapes that do not fit the architecture.
    """
    from timm.layers import resample_abs_pos_embed

    if is_meta_format(state):
        state = meta_to_timm(state)
    state = dict(state)
    pos = state.get("pos_embed")
    target = getattr(model, "pos_embed", None)
    if pos is not None and target is not None and pos.shape != target.shape:
        old = int(round(pos.shape[1] ** 0.5))
        if old * old != pos.shape[1]:
            raise TrackerError(f"position embedding of {pos.shape[1]} tokens is not a square grid")
        state["pos_embed"] = resample_abs_pos_embed(
            pos.float(), new_size=list(model.patch_embed.grid_size), old_size=[old, old], num_prefix_tokens=0
        ).to(pos.dtype)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()
        detail = " ".join(line.strip() for line in first[1:3])[:300]
        raise TrackerError(f"weights do not fit {type(model).__name__}: {detail}") from None


@dataclass(frozen=True)
class DistillDiftCheckpoint:
    """A parsed DistillDIFT checkpoint.

    Attributes:
        lora: per block ``(a_q [r, C], b_q [C, r], a_v [r, C], b_v [C, r])``.
        base: the whole backbone in Meta key format when the checkpoint carries it, else None.
    """

    lora: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]]
    base: dict[str, Tensor] | None


def parse_distilldift(state: dict[str, Tensor], depth: int = 12) -> DistillDiftCheckpoint:
    """Split a DistillDIFT state dict into LoRA factors and (optional) backbone, strictly.

    Raises:
        TrackerError: LoRA factors missing for a block, inconsistent ranks, or keys of neither kind.
    """
    parts: dict[int, dict[str, Tensor]] = {}
    base: dict[str, Tensor] = {}
    for key, value in state.items():
        if m := LORA_KEY.match(key):
            parts.setdefault(int(m[1]), {})[m[2] + m[3]] = value
        elif key.startswith("model."):
            base[key[len("model.") :].replace(".attn.qkv.qkv.", ".attn.qkv.")] = value
        else:
            raise TrackerError(f"unexpected key {key!r} in DistillDIFT checkpoint")
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
    return DistillDiftCheckpoint(lora=lora, base=base or None)


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
    """Read a weights file and say what it holds: ``"lora"`` (DistillDIFT layout), ``"merged"`` (a timm base with
    the LoRA already merged, as ``track distill`` writes it) or ``"base"`` (timm/Meta)."""
    state = read_state_dict(path)
    if any(LORA_KEY.match(k) for k in state):
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
    """Build ``spec``'s ViT at ``input_hw`` and load its weights strictly (LoRA merged).

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
    base_state = lora_ckpt = None
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
            lora_ckpt = parse_distilldift(state, depth=len(model.blocks))
        else:
            base_state = state
    if spec.lora is not None and lora_ckpt is None and "merged" not in seen:
        lora_ckpt = parse_distilldift(read_state_dict(_get(spec.lora, download)), depth=len(model.blocks))
    if base_state is None and lora_ckpt is not None and lora_ckpt.base is not None:
        base_state = lora_ckpt.base
    if base_state is None:
        base_state = read_state_dict(_get(spec.base, download))
    load_base_into(model, base_state)
    if lora_ckpt is not None:
        merge_lora_qv(model, lora_ckpt.lora)
    return model.eval()


def _get(source: Source, download: bool) -> Path:
    if found := cached_path(source):
        return found
    if not download:
        raise WeightsUnavailable(f"{source.filename} is not cached")
    return fetch(source)


def weights_status(spec: ModelSpec) -> dict[str, Path | None]:
    """Cached files of a model (None where missing), without touching the network."""
    status = {"base": cached_path(spec.base)}
    if spec.lora is not None:
        status["lora"] = cached_path(spec.lora)
    return status


def how_to_get(spec: ModelSpec) -> str:
    """One sentence telling a user how to make a model's weights available."""
    parts = [f"run `track weights download {spec.name}` on a machine with internet"]
    if spec.lora is not None and spec.lora.url is None:
        parts = [f"download {spec.lora.filename} from the DistillDIFT README"]
    parts.append(f"or pass --weights PATH (cache: {cache_dir()})")
    return " ".join(parts)
