"""Where weights come from: a table from model name to its sources, a cache directory, checked downloads.

:data:`MODELS` names each ViT model's timm architecture, its base weights and, for the DistillDIFT students, the
checkpoint with the LoRA (and head); :data:`DIFFUSION_PIPELINES` and :data:`DHF_AGGREGATION` name the diffusion
featurizers' files. Base DINOv2-with-registers weights come from the Hugging Face hub in timm format
(``timm/vit_base_patch14_reg4_dinov2.lvd142m``) or from Meta's ``dinov2_vitb14_reg4_pretrain.pth``; the students
from every public location, in order (docs/distilldift.md). Files are cached under ``$TRACKER_CACHE``
(:func:`cache_dir`); :func:`fetch` downloads what is missing atomically and checks it against its published
sha256 or git blob id. Imports no torch: reading the files and loading them into a model is
:mod:`tracker.weight_loading`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tracker.errors import TrackerError, WeightsUnavailable


@dataclass(frozen=True)
class Location:
    """One place a weights file can be downloaded from.

    Attributes:
        url: direct download URL.
        filename: the name it is cached under (``$TRACKER_CACHE/files/<filename>``).
        where: who publishes it, for messages and ``track weights list``.
        git_blob: the file's git blob id (SHA-1 of ``"blob <size>\\0" + bytes``) where it lives in a public git
            repository: checked after download (no sha256 is published).
    """

    url: str
    filename: str
    where: str = ""
    git_blob: str | None = None


@dataclass(frozen=True)
class Source:
    """Where one weights file comes from: the hub, then each location in order.

    Attributes:
        hub_id: Hugging Face hub repository (timm key format), or None.
        locations: direct downloads, tried in order after the hub; empty when only a local ``--weights`` file
            can provide it.
        filename: file name inside the hub repository (and a name a user may put into the cache by hand).
        sha256: expected digest where published, else None.
    """

    hub_id: str | None
    locations: tuple[Location, ...]
    filename: str
    sha256: str | None = None

    @property
    def url(self) -> str | None:
        """All download URLs in the order they are tried, ``" | "``-separated (None when there are none)."""
        return " | ".join(loc.url for loc in self.locations) or None


@dataclass(frozen=True)
class ModelSpec:
    """A model of the table: timm architecture, base weights and an optional DistillDIFT checkpoint."""

    name: str
    arch: str
    base: Source
    lora: Source | None
    description: str


def _meta(size: str) -> tuple[Location, ...]:
    name = f"dinov2_vit{size}14_reg4_pretrain.pth"
    return (Location(f"https://dl.fbaipublicfiles.com/dinov2/dinov2_vit{size}14/{name}", name, "Meta (DINOv2)"),)


_DINOV2_B = Source("timm/vit_base_patch14_reg4_dinov2.lvd142m", _meta("b"), "model.safetensors")
_DINOV2_S = Source("timm/vit_small_patch14_reg4_dinov2.lvd142m", _meta("s"), "model.safetensors")

# The DistillDIFT students, every public source in the order tried (docs/distilldift.md says where each is
# written down). 1. the release repository CompVis/distilldift, pinned to commit e21076e ("upload checkpoint
# weights", 2025-01-28; plain git blobs, no Git LFS: the repository has no .gitattributes), each file checked
# against its git blob id; 2. the same blobs in its mirror joh-schb/distilldift (commit 8bee88e);
# 3. the whole students (348, 348, 357 MB) on the University of Ulm's Nextcloud, linked from the development
# repository FrankFundel/DistillDIFT's README (a public share's file comes from <share>/download); 4. for the
# unsupervised student, the URL of the release README's first version (commit 05924d3).
_RELEASE = "https://raw.githubusercontent.com/CompVis/distilldift/e21076e8d6f032f6ec461ce0540b496caf5a4aec"
_MIRROR = "https://raw.githubusercontent.com/joh-schb/distilldift/8bee88e14e9ccc1e9da80ef6041b3775ca8aa341"
_BLOBS = {
    "us": "43d0aec53448859fd86fbc4b3474b42861af9293",
    "ws": "7a9e50c9f09af2d912d2ab743d3b3e702691a877",
    "s": "1dfef101c69eb40ccc01a1d8e16e07fbcf47097b",
}
_ULM = {"us": "nDxtsL8k52wWFTY", "ws": "MN7Joo9XcLtXcYs", "s": "S8oTst4StDRrqz2"}


def _student(variant: str) -> Source:
    name = f"distilled_{variant}.ckpt"
    path = f"eval/checkpoints/{name}"
    locations = [
        Location(f"{_RELEASE}/{path}", name, "release repository CompVis/distilldift", _BLOBS[variant]),
        Location(f"{_MIRROR}/{path}", name, "mirror joh-schb/distilldift", _BLOBS[variant]),
        Location(
            f"https://cloudstore.uni-ulm.de/s/{_ULM[variant]}/download",
            f"distilldift_{variant}_ulm.bin",
            "Uni Ulm cloud store (FrankFundel/DistillDIFT README)",
        ),
    ]
    if variant == "us":
        locations.append(
            Location(
                "https://ommer-lab.com/files/distilldift/distilldift_us.ckpt",
                "distilldift_us.ckpt",
                "ommer-lab.com (first release README)",
            )
        )
    return Source(None, tuple(locations), name)


_STUDENT_ARCH = "vit_base_patch14_reg4_dinov2"
MODELS: dict[str, ModelSpec] = {
    "distilldift": ModelSpec(
        "distilldift",
        _STUDENT_ARCH,
        _DINOV2_B,
        _student("us"),
        "DistillDIFT student, unsupervised distillation (DINOv2 ViT-B/14-reg4 + LoRA r8 on q,v)",
    ),
    "distilldift-ws": ModelSpec(
        "distilldift-ws",
        _STUDENT_ARCH,
        _DINOV2_B,
        _student("ws"),
        "DistillDIFT student, weakly supervised distillation (DINOv2 ViT-B/14-reg4 + LoRA r8 on q,v)",
    ),
    "distilldift-s": ModelSpec(
        "distilldift-s",
        _STUDENT_ARCH,
        _DINOV2_B,
        _student("s"),
        "DistillDIFT student, supervised (DINOv2 ViT-B/14-reg4 + LoRA r8 on q,v; the 357 MB file adds a 2-layer head)",
    ),
    "dinov2-b": ModelSpec(
        "dinov2-b", "vit_base_patch14_reg4_dinov2", _DINOV2_B, None, "DINOv2 ViT-B/14 with 4 registers"
    ),
    "dinov2-s": ModelSpec(
        "dinov2-s", "vit_small_patch14_reg4_dinov2", _DINOV2_S, None, "DINOv2 ViT-S/14 with 4 registers"
    ),
    # DINOv3 (Meta, 2025): gated under Meta's DINOv3 licence on the hub (accept it there and log in); Meta's own
    # files come by e-mailed links only, so no public location: a local Meta- or timm-format file via --weights.
    # Loaded by tracker.dinov3.load_dinov3 (timm's Eva with RoPE; Meta keys converted by timm's filter).
    "dinov3-s": ModelSpec(
        "dinov3-s",
        "vit_small_patch16_dinov3",
        Source("timm/vit_small_patch16_dinov3.lvd1689m", (), "model.safetensors"),
        None,
        "DINOv3 ViT-S/16 with 4 registers, LVD-1689M (gated: Meta DINOv3 licence)",
    ),
    "dinov3-b": ModelSpec(
        "dinov3-b",
        "vit_base_patch16_dinov3",
        Source("timm/vit_base_patch16_dinov3.lvd1689m", (), "model.safetensors"),
        None,
        "DINOv3 ViT-B/16 with 4 registers, LVD-1689M (gated: Meta DINOv3 licence)",
    ),
}

# The diffusion featurizers (tracker.diffusion_features): diffusers pipeline hub ids per base model (the UNet, VAE,
# text encoder and tokenizer are read from it; the Hugging Face cache), and DHF's released aggregation networks
# (g-luo/diffusion-hyperfeatures, the files of the authors' download_weights.sh). runwayml/stable-diffusion-v1-5
# was taken down; stable-diffusion-v1-5/stable-diffusion-v1-5 is the mirror the DHF authors' code itself maps it to.
# sd-2.1-base (512 px, epsilon) is the SDv2-1 model_id of the DHF authors' configs/train.yaml (dhf-sd21).
DIFFUSION_PIPELINES = {
    "sd-2.1": "stabilityai/stable-diffusion-2-1",
    "sd-2.1-base": "stabilityai/stable-diffusion-2-1-base",
    "sd-1.5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
}
DHF_AGGREGATION = {
    "dhf": Source("g-luo/diffusion-hyperfeatures", (), "weights/aggregation_network.pt"),
    "dhf-one-step": Source("g-luo/diffusion-hyperfeatures", (), "weights/aggregation_network_one-step.pt"),
    "dhf-sd21": Source("g-luo/diffusion-hyperfeatures", (), "weights/aggregation_network_sdv2-1.pt"),
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
    """The local file of a source when it is in the cache, else None (never touches the network).

    Looks in the hub cache, then for each location's cache name in order, then for ``source.filename``.
    """
    if source.hub_id and (found := _hub_cached(source)):
        return found
    for name in dict.fromkeys([*(loc.filename for loc in source.locations), source.filename]):
        local = cache_dir() / "files" / name
        if local.is_file():
            return local
    return None


def sha256sum(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_id(path: Path) -> str:
    """The git blob id of a file: SHA-1 of ``b"blob <size>\\0"`` followed by its bytes."""
    path = Path(path)
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download_url(url: str, dest: Path, sha256: str | None, timeout: float, git_blob: str | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically (a ``.part`` file renamed once complete and checked).

    Raises:
        TrackerError: the file does not match ``sha256`` or ``git_blob`` (nothing is written).
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            Path(tmp.name).unlink(missing_ok=True)
            raise
    checks = [(sha256, sha256sum, "sha256"), (git_blob, git_blob_id, "git blob id")]
    for want, digest, what in checks:
        if want and (got := digest(Path(tmp.name))) != want:
            Path(tmp.name).unlink(missing_ok=True)
            raise TrackerError(f"{what} {got} does not match the published {want}")
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

    Tries the hub, then every location in order, and returns the first file that arrives and passes its
    checks (a digest mismatch moves on to the next location).

    Raises:
        WeightsUnavailable: not cached and every source failed; the one-line message names each source tried
            and why it failed (offline, blocked, not found, digest mismatch, no location known).
    """
    if found := cached_path(source):
        return found
    errors = []
    if source.hub_id and not _reachable("https://huggingface.co"):
        errors.append(f"hub {source.hub_id}: huggingface.co unreachable")
    elif source.hub_id:
        try:
            from huggingface_hub import hf_hub_download

            return Path(hf_hub_download(source.hub_id, source.filename, cache_dir=cache_dir() / "hub"))
        except Exception as exc:  # network, auth, missing file: all mean "not available here"
            errors.append(f"hub {source.hub_id}: {type(exc).__name__}")
    for loc in source.locations:
        host = loc.url.split("/")[2]
        if not _reachable(loc.url):
            errors.append(f"{loc.url}: {host} unreachable")
            continue
        try:
            return _download_url(loc.url, cache_dir() / "files" / loc.filename, source.sha256, timeout, loc.git_blob)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, TrackerError) else f"{type(exc).__name__}: {exc}"
            errors.append(f"{loc.url}: {' '.join(reason.split())[:160]}")
    if not errors:
        errors.append("no public download location is known")
    tried = f"tried {len(errors)} source{'s' if len(errors) > 1 else ''}: "
    raise WeightsUnavailable(f"cannot get {source.filename} ({tried}{'; '.join(errors)})")


def weights_status(spec: ModelSpec) -> dict[str, Path | None]:
    """Cached files of a model (None where missing), without touching the network."""
    status = {"base": cached_path(spec.base)}
    if spec.lora is not None:
        status["lora"] = cached_path(spec.lora)
    return status


def how_to_get(spec: ModelSpec) -> str:
    """One sentence telling a user how to make a model's weights available."""
    parts = [f"run `track weights download {spec.name}` on a machine with internet"]
    if spec.lora is not None and spec.lora.locations:
        urls = " or ".join(loc.url for loc in spec.lora.locations)
        parts.append(f"or download {urls} by hand and pass --weights PATH")
    elif spec.lora is not None:
        parts.append(f"or pass --weights PATH to {spec.lora.filename}")
    else:
        parts.append("or pass --weights PATH")
    parts.append(f"(cache: {cache_dir()})")
    return " ".join(parts)
