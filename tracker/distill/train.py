"""Distillation runs: teacher caching, the training loop with resumable checkpoints, and the outputs.

A run lives in one output folder::

    out/
      teacher_cache/<settings hash>/*.safetensors   teacher features, one file per image (unless --cache)
      checkpoint.pt                                 LoRA, optimiser, schedule, RNG and step (atomic)
      adapter.safetensors, adapter.json             the LoRA (DistillDIFT layout) and its card
      merged.safetensors                            base + LoRA merged, for the tracker

Nothing here prints: :meth:`DistillRun.cache_teachers` and :meth:`DistillRun.train` yield progress reports and
the command line shows them.
"""

from __future__ import annotations

import datetime
import io
import json
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

import torch

from tracker.distill.adapter import ADAPTER_FORMAT, save_adapter, save_merged
from tracker.distill.data import ImageEntry, decode_image, describe_images, list_images, resize_image
from tracker.distill.loss import dense_distillation_loss
from tracker.distill.pairs import PairSampler, retrieval_neighbours
from tracker.distill.student import LoraSpec, Student, build_student, lora_factors, merged_state_dict
from tracker.distill.teachers import (
    CacheProgress,
    DiffusionConfig,
    DinoTeacher,
    TeacherCache,
    TeacherConfig,
    Teachers,
    cache_teacher_features,
    load_diffusion_teacher,
    prompt_for,
)
from tracker.errors import TrackerError
from tracker.io.atomic import atomic_write

GIB = 1 << 30
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class DistillConfig:
    """Everything a run depends on (validated by :meth:`validate`).

    Attributes:
        images: folder of unlabeled training images (searched recursively).
        out: output folder (checkpoint, adapter, card, merged weights, teacher cache).
        cache: teacher cache folder (default ``out/teacher_cache``); share it between runs on the same images.
        arch: timm architecture of the student and the DINOv2 teacher.
        base_weights: None (weights table, ``dinov2-b``), a local file, or ``"random"``.
        arch_overrides: timm overrides (``embed_dim``, ``depth``, ``num_heads``: tiny models).
        input_size: student and DINOv2 input side (multiple of 14; 434 gives the 31x31 grid).
        diffusion: the diffusion teacher (``source="none"``: DINOv2 teacher alone).
        lora: rank, alpha, dropout.
        steps: optimiser steps; None: 10 epochs (``ceil(10 * images / batch)``, DistillDIFT's 10 epochs).
        batch: image pairs per step.
        lr, weight_decay: AdamW.
        lr_step, lr_gamma: step schedule: the learning rate is multiplied by ``lr_gamma`` every ``lr_step`` steps
            (None: half the steps, DistillDIFT's step at epoch 5 of 10).
        temperature: softmax temperature of the loss.
        pairs: ``"retrieval"`` (top-``top_k`` by DINOv2 global embedding) or ``"random"``.
        seed: pairs, noise, LoRA initialisation and random weights.
        checkpoint_every: steps between checkpoints (and one at the end).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 autocast on GPUs that have it, else fp16 with loss scaling; fp32 on CPU),
            ``fp32``, ``bf16`` or ``fp16``; teachers run in the same half type on GPU.
        teacher_batch: images per teacher forward pass.
        workers: data loader processes for the training loop (image decoding, cache reads).
    """

    images: str
    out: str = "distill_out"
    cache: str | None = None
    arch: str = "vit_base_patch14_reg4_dinov2"
    base_weights: str | None = None
    arch_overrides: tuple[tuple[str, int], ...] = ()
    input_size: int = 434
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    lora: LoraSpec = field(default_factory=LoraSpec)
    steps: int | None = None
    batch: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.05
    lr_step: int | None = None
    lr_gamma: float = 0.1
    temperature: float = 0.01
    pairs: str = "retrieval"
    top_k: int = 10
    seed: int = 0
    checkpoint_every: int = 100
    device: str = "cpu"
    precision: str = "auto"
    teacher_batch: int = 4
    workers: int = 0

    def validate(self) -> DistillConfig:
        """Raises TrackerError naming the first bad setting; returns self."""
        checks = [
            (
                self.input_size > 0 and self.input_size % 14 == 0,
                f"--size must be a multiple of 14, got {self.input_size}",
            ),
            (self.batch >= 1, "--batch must be at least 1"),
            (self.teacher_batch >= 1, "--teacher-batch must be at least 1"),
            (self.steps is None or self.steps >= 1, "--steps must be at least 1"),
            (self.lr > 0, "--lr must be positive"),
            (self.weight_decay >= 0, "--weight-decay must not be negative"),
            (self.lr_step is None or self.lr_step >= 1, "--lr-step must be at least 1"),
            (0 < self.lr_gamma <= 1, "--lr-gamma must lie in (0, 1]"),
            (self.temperature > 0, "--temperature must be positive"),
            (self.pairs in ("retrieval", "random"), f"--pairs must be retrieval or random, got {self.pairs!r}"),
            (self.top_k >= 1, "--top-k must be at least 1"),
            (self.checkpoint_every >= 1, "--checkpoint-every must be at least 1"),
            (self.lora.rank >= 1, "--rank must be at least 1"),
            (self.lora.alpha > 0, "--alpha must be positive"),
            (0 <= self.lora.dropout < 1, "--dropout must lie in [0, 1)"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.workers >= 0, "--workers must not be negative"),
            (
                self.diffusion.input_size >= 64,
                f"--unet-size must be at least 64 pixels, got {self.diffusion.input_size}",
            ),
            (len(self.diffusion.timesteps) >= 1, "--timesteps needs at least one timestep"),
            (self.diffusion.layer >= 0, "--unet-layer must not be negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrackerError(message)
        return self

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input_size, self.input_size

    @property
    def grid_hw(self) -> tuple[int, int]:
        return self.input_size // 14, self.input_size // 14

    @property
    def overrides(self) -> dict[str, int]:
        return dict(self.arch_overrides)

    def teacher_config(self) -> TeacherConfig:
        return TeacherConfig(
            arch=self.arch,
            dino_weights=self.base_weights,
            dino_size=self.input_size,
            grid=self.grid_hw,
            diffusion=self.diffusion,
            seed=self.seed,
            arch_overrides=self.arch_overrides,
        )

    def resume_fingerprint(self, images: list[ImageEntry], steps: int) -> dict:
        """What a checkpoint must agree with to be resumed (data, teachers, student, optimisation)."""
        keep = asdict(self)
        for name in ("out", "cache", "device", "precision", "teacher_batch", "workers", "checkpoint_every", "images"):
            keep.pop(name)
        keep["steps"] = steps
        keep["arch_overrides"] = [list(kv) for kv in self.arch_overrides]
        keep["diffusion"]["timesteps"] = list(self.diffusion.timesteps)
        keep["images"] = sorted(e.key for e in images)
        return json.loads(json.dumps(keep))


class StepReport(NamedTuple):
    """One optimiser step done.

    Attributes:
        step: steps done (1-based), of ``steps``.
        loss: this step's loss (nats).
        mean_loss: mean loss of the last 50 steps.
        lr: learning rate used for this step.
        seconds: wall time of the step (data waiting included).
        checkpoint: whether a checkpoint was written after it.
    """

    step: int
    steps: int
    loss: float
    mean_loss: float
    lr: float
    seconds: float
    checkpoint: bool


class Outputs(NamedTuple):
    adapter: Path
    card: Path
    merged: Path


def free_memory(device: torch.device) -> int:
    """Bytes free for new tensors on ``device`` (CUDA: the driver's free memory; CPU: available RAM)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    import psutil

    return int(psutil.virtual_memory().available)


def training_bytes(model: torch.nn.Module, input_hw: tuple[int, int], batch: int, act_bytes: int) -> int:
    """Estimated memory of one training step beyond the weights: activations kept for the backward pass of
    ``2 * batch`` images (per block about 20 token-width tensors, plus the attention maps when attention is
    not fused), and the similarity maps of the loss."""
    patch = int(model.patch_embed.patch_size[0])
    cells = (input_hw[0] // patch) * (input_hw[1] // patch)
    tokens = cells + int(getattr(model, "num_prefix_tokens", 1))
    depth, width = len(model.blocks), int(model.embed_dim)
    heads = int(getattr(model.blocks[0].attn, "num_heads", 1))
    per_image = depth * tokens * (20 * width + heads * tokens) * act_bytes
    loss_maps = batch * cells * cells * 4 * 6
    return 2 * batch * per_image + loss_maps


def teacher_bytes(teachers: Teachers, batch: int) -> int:
    """Estimated activation memory of one teacher batch (inference): DINOv2 blocks, the VAE encoder's
    full-resolution stage (about 4 live tensors of its first width) and the UNet's largest attention."""
    model = teachers.dino.model
    h, w = teachers.dino.input_hw
    tokens = (h // 14) * (w // 14) + 5
    heads = int(getattr(model.blocks[0].attn, "num_heads", 1))
    per_image = tokens * (10 * int(model.embed_dim) + heads * tokens) * 4
    if teachers.diffusion is not None:
        d = teachers.diffusion
        s = d.config.input_size
        vae_bytes = next(d.vae.parameters()).element_size()
        per_image += 4 * int(d.vae.config.block_out_channels[0]) * s * s * vae_bytes
        latent_tokens = (s // 16) ** 2  # the first cross-attention level of SD / SDXL
        per_image += 30 * int(d.unet.config.block_out_channels[0]) * (s // 8) ** 2 * d.unet.dtype.itemsize
        per_image += 10 * latent_tokens * latent_tokens * d.unet.dtype.itemsize
    return batch * per_image


def check_memory(need: int, device: torch.device, what: str, advice: str) -> None:
    """Raise TrackerError when ``need`` bytes exceed 90% of what is free on ``device``."""
    free = free_memory(device)
    if need > 0.9 * free:
        raise TrackerError(f"{what} needs about {need / GIB:.1f} GiB, {free / GIB:.1f} GiB free on {device}; {advice}")


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast type of a precision setting (None: fp32, no autocast)."""
    if device.type != "cuda" or precision == "fp32":
        if precision in ("bf16", "fp16") and device.type != "cuda":
            raise TrackerError(f"--precision {precision} needs a CUDA device; use fp32 (or auto) on {device}")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


class PairBatches(torch.utils.data.Dataset):
    """Item ``k`` is training step ``start + k``: ``(step, src [B,3,h,w], tgt, teacher_src [B,C,h',w'],
    teacher_tgt)``; images as float 0..255 at the input size, teacher descriptors from the cache."""

    def __init__(
        self,
        entries: list[ImageEntry],
        cache: TeacherCache,
        sampler: PairSampler,
        start: int,
        steps: int,
        batch: int,
        input_hw: tuple[int, int],
    ):
        self.entries, self.cache, self.sampler = entries, cache, sampler
        self.start, self.steps, self.batch, self.input_hw = start, steps, batch, input_hw

    def __len__(self) -> int:
        return self.steps - self.start

    def __getitem__(self, k: int):
        step = self.start + k
        pairs = self.sampler.pairs(step, self.batch)

        def images(indices):
            return torch.stack([resize_image(decode_image(self.entries[i].path), self.input_hw) for i in indices])

        def teacher(indices):
            return torch.stack([self.cache.descriptor(self.entries[i]) for i in indices])

        src, tgt = [p[0] for p in pairs], [p[1] for p in pairs]
        return step, images(src), images(tgt), teacher(src), teacher(tgt)


class DistillRun:
    """One distillation run: list and cache, then train, then write the outputs.

    Args:
        config: the settings (validated here).

    Raises:
        TrackerError: bad settings, or an empty / unreadable image folder.
    """

    def __init__(self, config: DistillConfig):
        self.config = config.validate()
        self.device = torch.device(config.device)
        self.amp = autocast_dtype(config.precision, self.device)
        self.out = Path(config.out)
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackerError(f"--out {self.out}: cannot create the folder ({exc.strerror})") from None
        paths = list_images(config.images)
        self.entries, self.failed = describe_images(paths, config.images)
        if not self.entries:
            raise TrackerError(f"--images {config.images}: none of the {len(paths)} image files can be read")
        self.cache = TeacherCache(config.cache or self.out / "teacher_cache", config.teacher_config().fingerprint())
        self.usable: list[ImageEntry] | None = None
        self.student: Student | None = None
        self.losses: deque[float] = deque(maxlen=50)
        self.steps_done = 0

    # ------------------------------------------------------------------ teachers

    def make_teachers(self) -> Teachers:
        """Load both teachers on the run's device and check the teacher batch against free memory."""
        from tracker.distill.student import load_base_vit

        c = self.config
        dtype = self.amp or torch.float32
        dino = DinoTeacher(load_base_vit(c.arch, c.input_hw, c.base_weights, c.seed, **c.overrides), c.input_hw)
        diffusion = None
        if c.diffusion.source != "none":
            prompts = {prompt_for(c.diffusion.prompt, e) for e in self.entries}
            diffusion = load_diffusion_teacher(c.diffusion, prompts, self.device, dtype)
        teachers = Teachers(dino, diffusion, c.grid_hw).to(self.device)
        check_memory(
            teacher_bytes(teachers, c.teacher_batch),
            self.device,
            f"the teachers at batch {c.teacher_batch} ({c.input_size}px DINOv2, {c.diffusion.input_size}px UNet)",
            "lower --teacher-batch or --unet-size",
        )
        return teachers

    def cache_teachers(self) -> Iterator[CacheProgress]:
        """Put every image's teacher features in the cache (running the teachers only for new images).

        Raises:
            TrackerError: fewer than 2 images could be decoded; the teachers cannot be loaded or do not fit.
        """
        last = None
        try:
            for last in cache_teacher_features(
                self.entries, self.cache, self.make_teachers, self.config.teacher_batch, self.config.seed
            ):
                yield last
        except torch.cuda.OutOfMemoryError:
            raise TrackerError(
                f"out of GPU memory running the teachers at batch {self.config.teacher_batch}; lower "
                "--teacher-batch (features cached so far are kept)"
            ) from None
        self.failed = self.failed + (last.failed if last else [])
        self.usable = [e for e in self.entries if self.cache.has(e)]
        if len(self.usable) < 2:
            example = f" (e.g. {self.failed[0][0].name}: {self.failed[0][1]})" if self.failed else ""
            raise TrackerError(
                f"--images {self.config.images}: {len(self.usable)} readable image(s), distillation needs at least "
                f"2{example}"
            )

    # ------------------------------------------------------------------ training

    @property
    def total_steps(self) -> int:
        c = self.config
        n = len(self.usable or self.entries)
        return c.steps if c.steps is not None else math.ceil(10 * n / c.batch)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def _sampler(self) -> PairSampler:
        c = self.config
        if c.pairs == "random":
            return PairSampler(len(self.usable), "random", seed=c.seed)
        embeddings = torch.stack([self.cache.embedding(e) for e in self.usable])
        return PairSampler(len(self.usable), "retrieval", retrieval_neighbours(embeddings, c.top_k), seed=c.seed)

    def train(self, restart: bool = False) -> Iterator[StepReport]:
        """Train the LoRA, resuming from ``out/checkpoint.pt`` when it belongs to this run.

        Seeds torch's global RNG with ``config.seed`` (LoRA dropout uses it) or restores it from the checkpoint,
        so a resumed run ends where an uninterrupted one does.

        Args:
            restart: ignore an existing checkpoint and start from step 0.

        Yields:
            A :class:`StepReport` after every step.

        Raises:
            TrackerError: a checkpoint of a different run is in the way, or the step does not fit in memory.
        """
        if self.usable is None:
            raise RuntimeError("call cache_teachers() before train()")
        c = self.config
        steps = self.total_steps
        fingerprint = self.resume_fingerprint = c.resume_fingerprint(self.usable, steps)
        student = build_student(c.arch, c.input_hw, c.base_weights, c.lora, c.seed, **c.overrides).to(self.device)
        self.student = student
        params = student.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
        schedule = torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=c.lr_step or max(1, steps // 2), gamma=c.lr_gamma
        )
        scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        start = 0
        torch.manual_seed(c.seed)  # LoRA dropout draws from torch's global RNG: seeded, and saved in checkpoints
        if self.checkpoint_path.is_file() and not restart:
            start = self._resume(fingerprint, student, optimizer, schedule, scaler)
        self.steps_done = start
        act_bytes = 4 if self.amp is None else 2
        check_memory(
            training_bytes(student.model, c.input_hw, c.batch, act_bytes),
            self.device,
            f"training at batch {c.batch} ({2 * c.batch} images of {c.input_size}x{c.input_size})",
            "lower --batch or --size",
        )
        if start >= steps:
            return
        data = PairBatches(self.usable, self.cache, self._sampler(), start, steps, c.batch, c.input_hw)
        loader = torch.utils.data.DataLoader(  # own generator: the global RNG (LoRA dropout) stays resumable
            data,
            batch_size=None,
            shuffle=False,
            num_workers=c.workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(c.seed),
        )
        student.train()
        tick = time.perf_counter()
        try:
            for step, src, tgt, t_src, t_tgt in loader:
                lr = optimizer.param_groups[0]["lr"]
                with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
                    feats = student(torch.cat([src, tgt]).to(self.device, non_blocking=True))
                b = src.shape[0]
                loss = dense_distillation_loss(
                    feats[:b], feats[b:], t_src.to(self.device), t_tgt.to(self.device), c.temperature
                )
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                schedule.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise TrackerError(
                        f"the loss became {value} at step {int(step) + 1}; lower --lr or use --precision fp32"
                    )
                self.losses.append(value)
                self.steps_done = int(step) + 1
                save = self.steps_done % c.checkpoint_every == 0 or self.steps_done == steps
                if save:
                    self._save_checkpoint(fingerprint, optimizer, schedule, scaler)
                now = time.perf_counter()
                yield StepReport(
                    self.steps_done, steps, value, sum(self.losses) / len(self.losses), lr, now - tick, save
                )
                tick = time.perf_counter()
        except torch.cuda.OutOfMemoryError:
            raise TrackerError(
                f"out of GPU memory training at batch {c.batch}, size {c.input_size}; lower --batch or --size "
                "(rerun to resume from the last checkpoint)"
            ) from None
        finally:
            student.eval()

    def _save_checkpoint(self, fingerprint: dict, optimizer, schedule, scaler) -> None:
        lora = {k: v.detach().cpu() for k, v in self.student.model.state_dict().items() if ".lora_" in k}
        state = {
            "step": self.steps_done,
            "lora": lora,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else torch.zeros(0),
            "losses": list(self.losses),
            "fingerprint": json.dumps(fingerprint, sort_keys=True),
        }
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write(self.checkpoint_path, buffer.getvalue())

    def _resume(self, fingerprint: dict, student: Student, optimizer, schedule, scaler) -> int:
        try:
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
            step = int(state["step"])
            saved = json.loads(state["fingerprint"])
        except Exception as exc:
            raise TrackerError(
                f"checkpoint {self.checkpoint_path} is unreadable ({type(exc).__name__}); delete it or pass --restart"
            ) from None
        if saved != fingerprint:
            differ = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            raise TrackerError(
                f"{self.checkpoint_path} belongs to a different run ({', '.join(differ)} differ); pass --restart "
                "to start over or choose another --out"
            )
        missing, unexpected = student.model.load_state_dict(state["lora"], strict=False)
        if unexpected or any(".lora_" in k for k in missing):
            raise TrackerError(f"checkpoint {self.checkpoint_path} does not fit the student; pass --restart")
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state["cuda_rng"].numel():
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.losses.extend(state["losses"])
        return step

    # ------------------------------------------------------------------ outputs

    def card(self) -> dict:
        """The adapter's JSON card: base model, LoRA, teachers, data, optimisation, steps and loss."""
        c = self.config
        spec_base = c.base_weights or "timm/vit_base_patch14_reg4_dinov2.lvd142m (weights table: dinov2-b)"
        diffusion = None
        if c.diffusion.source != "none":
            native = self.cache.diffusion_grid(self.usable[0]) if self.usable else None
            diffusion = {
                **asdict(c.diffusion),
                "timesteps": list(c.diffusion.timesteps),
                "feature": f"decoder layer {c.diffusion.layer} (DistillDIFT numbering; 1 = up_blocks[0] first layer)",
                "native_grid": list(native) if native else None,
                "resized_to_grid": bool(native) and tuple(native) != c.grid_hw,
            }
        return {
            "format": ADAPTER_FORMAT,
            "layout": "model.blocks.{i}.attn.qkv.linear_{a,b}_{q,v}.weight; merge W_q += B_q A_q, W_v += B_v A_v",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "base_model": {
                "arch": c.arch,
                "weights": spec_base,
                "arch_overrides": c.overrides,
                "input_size": list(c.input_hw),
                "grid": list(c.grid_hw),
            },
            "lora": {
                "rank": c.lora.rank,
                "alpha": c.lora.alpha,
                "dropout": c.lora.dropout,
                "scaling_folded_into_b": c.lora.scaling,
                "targets": "q and v rows of attn.qkv in every block",
                "library": "peft",
            },
            "teachers": {
                "dinov2": {"arch": c.arch, "weights": spec_base, "input_size": c.input_size, "layer": "last (normed)"},
                "diffusion": diffusion,
                "descriptor": "concat(L2(dinov2), L2(diffusion))",
            },
            "loss": {"type": "dense cross-entropy of softmaxed similarity maps", "temperature": c.temperature},
            "data": {
                "images": str(c.images),
                "used": len(self.usable or []),
                "unreadable": len(self.failed),
                "pairs": c.pairs,
                "top_k": c.top_k if c.pairs == "retrieval" else None,
            },
            "training": {
                "steps": self.steps_done,
                "batch": c.batch,
                "optimizer": {"type": "AdamW", "lr": c.lr, "weight_decay": c.weight_decay},
                "schedule": {
                    "type": "step",
                    "step_size": c.lr_step or max(1, self.total_steps // 2),
                    "gamma": c.lr_gamma,
                },
                "precision": str(self.amp or "fp32").replace("torch.", ""),
                "device": str(self.device),
                "seed": c.seed,
                "final_mean_loss": sum(self.losses) / len(self.losses) if self.losses else None,
            },
        }

    def write_outputs(self) -> Outputs:
        """Write ``adapter.safetensors`` + ``adapter.json`` and ``merged.safetensors`` into the output folder."""
        if self.student is None:
            raise RuntimeError("call train() before write_outputs()")
        c = self.config
        factors = lora_factors(self.student.model)
        card = self.card()
        adapter = self.out / "adapter.safetensors"
        card_file = save_adapter(adapter, factors, card)
        merged = self.out / "merged.safetensors"
        state = merged_state_dict(c.arch, c.input_hw, self.student.base_state, factors, **c.overrides)
        save_merged(merged, state, card)
        return Outputs(adapter, card_file, merged)


def tiny_config(images: str, out: str, **changes) -> DistillConfig:
    """The tiny configuration (CPU tests, the toolchain without downloads): a 32-wide, 2-block DINOv2-reg ViT with
    random weights at 70x70 (5x5 grid) and the tiny random SDXL-like UNet at 80x80 (layer 1 at 5x5)."""
    base = DistillConfig(
        images=images,
        out=out,
        base_weights="random",
        arch_overrides=(("embed_dim", 32), ("depth", 2), ("num_heads", 2)),
        input_size=70,
        diffusion=DiffusionConfig(source="random", input_size=80),
        steps=20,
        checkpoint_every=10,
        top_k=3,
    )
    return replace(base, **changes)
