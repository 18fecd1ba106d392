"""Distillation (`track distill`): teachers and their cache, the loss, training, resume, adapter and merged outputs.

Everything runs on CPU with tiny randomly initialised models of the real architectures: a 32-wide 2-block
``vit_base_patch14_reg4_dinov2`` and a two-level SDXL-like diffusers ``UNet2DConditionModel`` with a /8 VAE.
The real SDXL and SD 1.5 UNets are built on the meta device (shapes only) to check which layer gives which grid.
"""

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tracker import create_featurizer
from tracker import weight_loading as WL
from tracker import weights as W
from tracker.apps.cli import main as track_main
from tracker.distill import adapter as A
from tracker.distill import student as S
from tracker.distill import teachers as T
from tracker.distill import train as TR
from tracker.distill.cli import build_parser, config_from_args
from tracker.distill.data import describe_images, list_images
from tracker.distill.loss import dense_distillation_loss
from tracker.distill.pairs import PairSampler, retrieval_neighbours
from tracker.errors import TrackerError

pytest.importorskip("peft")
pytest.importorskip("diffusers")

TINY = dict(embed_dim=32, depth=2, num_heads=2)
ARCH = "vit_base_patch14_reg4_dinov2"
HW = (70, 70)  # 5x5 grid


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_images(folder: Path, n_per_class: int = 3, seed: int = 0) -> Path:
    """Smooth random images in two category folders (cats/, dogs/), JPEG and PNG, varied sizes."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(("cats", "dogs")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            small = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((80 + 10 * i, 60 + 6 * c), Image.BILINEAR)
            image.save(folder / name / f"{i}.{'jpg' if i % 2 else 'png'}")
    return folder


def tiny_student(seed: int = 0, spec: S.LoraSpec | None = None) -> S.Student:
    return S.build_student(ARCH, HW, "random", spec or S.LoraSpec(), seed, **TINY)


def randomise_lora(student: S.Student, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in student.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def frames(n: int = 2, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 96, 120, 3), dtype=torch.uint8, generator=g)


def student_features(student: S.Student, x: torch.Tensor) -> torch.Tensor:
    """Student features of uint8 frames, pre-processed exactly as the tracker's featurizer does."""
    from tracker.distill.data import resize_image

    student.eval()
    with torch.no_grad():
        return student(torch.stack([resize_image(f, HW) for f in x]))


# --------------------------------------------------------------------------- teachers and cache


def test_teacher_features_have_the_promised_shapes_and_are_cached_and_reused(tmp_path):
    images = write_images(tmp_path / "images")
    entries, failed = describe_images(list_images(images), images)
    assert len(entries) == 6 and not failed and {e.category for e in entries} == {"cats", "dogs"}
    config = TR.tiny_config(
        str(images), str(tmp_path / "out"), diffusion=T.DiffusionConfig("random", 80, prompt="a {category}")
    )
    run = TR.DistillRun(config)
    calls = {"build": 0, "images": 0}
    real_make = run.make_teachers

    def counting_make():
        calls["build"] += 1
        teachers = real_make()
        forward = teachers.forward

        def counted(images, prompts, seeds):
            calls["images"] += len(images)
            return forward(images, prompts, seeds)

        teachers.forward = counted
        return teachers

    run.make_teachers = counting_make
    progress = list(run.cache_teachers())
    assert calls == {"build": 1, "images": 6}
    assert progress[-1].done == 6 and progress[-1].computed == 6
    stored = run.cache.load(run.usable[0])
    assert stored["dino"].shape == (32, 5, 5) and stored["dino"].dtype == torch.float16
    assert stored["diffusion"].shape == (16, 5, 5)  # up_blocks[0].attentions[0] of the tiny UNet at 80 px
    assert stored["embedding"].shape == (32,)
    assert run.cache.diffusion_grid(run.usable[0]) == (5, 5)
    d = run.cache.descriptor(run.usable[0])
    assert d.shape == (48, 5, 5)
    assert torch.allclose(d[:32].norm(dim=0), torch.ones(5, 5), atol=2e-3)
    assert torch.allclose(d[32:].norm(dim=0), torch.ones(5, 5), atol=2e-3)

    # a second run over the same images never builds or runs the teachers
    again = TR.DistillRun(config)
    again.make_teachers = counting_make
    progress = list(again.cache_teachers())
    assert calls == {"build": 1, "images": 6} and progress[-1].computed == 0 and len(again.usable) == 6
    # a new image is the only one computed; an undecodable one is skipped and reported
    write_images(tmp_path / "more", n_per_class=1, seed=9)
    (images / "dogs" / "new.png").write_bytes((tmp_path / "more" / "dogs" / "0.png").read_bytes())
    (images / "cats" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    third = TR.DistillRun(config)
    third.make_teachers = counting_make
    progress = list(third.cache_teachers())
    assert calls == {"build": 2, "images": 7} and progress[-1].computed == 1
    assert len(third.usable) == 7 and [p.name for p, _ in third.failed] == ["broken.jpg"]


def test_noise_is_fixed_per_image_and_prompts_matter(tmp_path):
    teacher = T.random_diffusion_teacher(T.DiffusionConfig("random", 80), {"", "a photo of a dog"})
    x = torch.rand(2, 3, 80, 80) * 255
    a = teacher(x, ["", ""], [1, 2])
    assert a.shape == (2, 16, 5, 5)
    assert torch.equal(a, teacher(x, ["", ""], [1, 2]))
    assert not torch.allclose(a, teacher(x, ["", ""], [1, 3]))
    assert not torch.allclose(a[:1], teacher(x[:1], ["a photo of a dog"], [1]))


SDXL_UNET = dict(  # stabilityai/sdxl-turbo unet/config.json (architecture fields)
    act_fn="silu",
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280],
    cross_attention_dim=2048,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    in_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    out_channels=4,
    projection_class_embeddings_input_dim=2816,
    transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    use_linear_projection=True,
)
SDXL_VAE = dict(  # its vae/config.json
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
)
SD15_UNET = dict(
    block_out_channels=[320, 640, 1280, 1280],
    cross_attention_dim=768,
    attention_head_dim=8,
    layers_per_block=2,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)


def meta_grid(unet, layer: int, latents, cond) -> tuple:
    teacher = T.DiffusionTeacher(unet, unet, torch.ones(1000), {}, T.DiffusionConfig(layer=layer))
    return tuple(teacher.unet_features(latents, 101, cond).shape)


def test_real_sdxl_and_sd15_layer_grids_at_980_on_the_meta_device():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET)
        vae = AutoencoderKL(**SDXL_VAE)
        image = torch.empty(1, 3, 980, 980)
        sdxl_cond = {
            "encoder_hidden_states": torch.empty(1, 77, 2048),
            "added_cond_kwargs": {"text_embeds": torch.empty(1, 1280), "time_ids": torch.empty(1, 6)},
        }
        sd15 = UNet2DConditionModel(**SD15_UNET)
    teacher = T.DiffusionTeacher(unet, vae, torch.ones(1000), {}, T.DiffusionConfig())
    latents = teacher.encode(image)
    assert latents.shape == (1, 4, 122, 122)
    assert teacher.layer is unet.up_blocks[0].attentions[0]
    # layer 1 (DistillDIFT's SDXL-Turbo teacher) is 1280 x 31x31: the student's grid, no resizing
    assert meta_grid(unet, 1, latents, sdxl_cond) == (1, 1280, 31, 31)
    # the up-block as a whole ends in its upsampler: 61x61, not the promised grid
    assert meta_grid(unet, 4, latents, sdxl_cond) == (1, 1280, 61, 61)
    # SD 1.5 / 2.1 down-sample once more: layer 1 is 16x16 (resized to 31x31), layer 4 is 31x31
    sd_cond = {"encoder_hidden_states": torch.empty(1, 77, 768, device="meta")}
    assert meta_grid(sd15, 1, latents, sd_cond) == (1, 1280, 16, 16)
    assert meta_grid(sd15, 4, latents, sd_cond) == (1, 1280, 31, 31)
    with pytest.raises(TrackerError, match=r"decoder layers 0\.\.11"):
        T.DiffusionTeacher(unet, vae, torch.ones(1000), {}, T.DiffusionConfig(layer=12))


def _bytes_to_unicode() -> dict[int, str]:
    bs = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tiny_sdxl_pipeline(folder: Path) -> Path:
    """A diffusers SDXL pipeline folder (UNet, VAE, scheduler, two CLIP text encoders and tokenizers), tiny."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder.mkdir(parents=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    text = dict(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=len(vocab),
        max_position_embeddings=77,
        projection_dim=16,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,  # the two text encoders' widths, concatenated (as SDXL: 768 + 1280)
        attention_head_dim=2,
        norm_num_groups=4,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
    )
    vae = AutoencoderKL(
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=2,
        layers_per_block=1,
        force_upcast=True,
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=CLIPTextModel(CLIPTextConfig(**text)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text)),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"),
    )
    pipe.save_pretrained(str(folder / "pipe"))
    return folder / "pipe"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' Euler scheduler and numpy 2
def test_real_loading_path_from_a_local_diffusers_sdxl_folder(tmp_path, capsys):
    source = tiny_sdxl_pipeline(tmp_path / "sdxl")
    capsys.readouterr()
    config = T.DiffusionConfig(source=str(source), input_size=80)
    teacher = T.load_diffusion_teacher(config, {"", "a photo of a dog"})
    assert capsys.readouterr().err == ""  # the library prints no loading bars
    assert teacher.sdxl and teacher.vae.decoder is None
    assert teacher.prompts[""].hidden.shape == (1, 77, 32) and teacher.prompts[""].pooled.shape == (1, 16)
    sd_schedule = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    assert torch.allclose(teacher.alphas_cumprod, torch.cumprod(1 - sd_schedule, 0))
    x = torch.rand(2, 3, 80, 80) * 255
    out = teacher(x, ["", "a photo of a dog"], [0, 1])
    assert out.shape == (2, 16, 5, 5) and torch.isfinite(out).all()
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrackerError, match="cannot load the diffusion teacher .*not a diffusers pipeline folder"):
        T.load_diffusion_teacher(replace(config, source=str(tmp_path / "empty")), {""})
    with pytest.raises(TrackerError, match="no such folder, and not a Hugging Face hub id"):
        T.load_diffusion_teacher(replace(config, source="./no/such/folder"), {""})


# --------------------------------------------------------------------------- loss


def test_loss_equals_a_hand_computation():
    tau = 0.5
    # one image pair, 2-d features on a 1x2 grid; the teacher has 3-d features on the same grid
    s_src = torch.tensor([[1.0, 0.0], [0.6, 0.8]]).T.reshape(1, 2, 1, 2)
    s_tgt = torch.tensor([[0.0, 1.0], [0.8, 0.6]]).T.reshape(1, 2, 1, 2)
    t_src = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]).T.reshape(1, 3, 1, 2)
    t_tgt = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).T.reshape(1, 3, 1, 2)
    # student cosines: cell0.(0,1)=0, cell0.(0.8,0.6)=0.8; cell1: 0.8, 0.96; teacher: cell0: 1, 0; cell1: 0, 0
    expected = 0.0
    for s_row, t_row in (((0.0, 0.8), (1.0, 0.0)), ((0.8, 0.96), (0.0, 0.0))):
        zs = sum(math.exp(v / tau) for v in s_row)
        zt = sum(math.exp(v / tau) for v in t_row)
        expected += -sum(
            math.exp(t / tau) / zt * math.log(math.exp(s / tau) / zs) for s, t in zip(s_row, t_row, strict=True)
        )
    expected /= 2
    loss = dense_distillation_loss(s_src, s_tgt, t_src, t_tgt, temperature=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # scale does not matter (features are normalised), and a teacher on another grid is resized to the student's
    assert dense_distillation_loss(3 * s_src, s_tgt, t_src, 2 * t_tgt, tau).item() == pytest.approx(expected, rel=1e-6)
    big = torch.nn.functional.interpolate(t_src, size=(2, 4), mode="nearest")
    big_t = torch.nn.functional.interpolate(t_tgt, size=(2, 4), mode="nearest")
    assert dense_distillation_loss(s_src, s_tgt, big, big_t, tau).item() == pytest.approx(expected, rel=1e-5)
    # the student matching the teacher's maps exactly reaches the teacher's entropy, the minimum
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 8, 3, 3, generator=g), torch.randn(2, 8, 3, 3, generator=g)
    same = dense_distillation_loss(a, b, a, b, 0.01)
    assert same <= dense_distillation_loss(b, a, a, b, 0.01)


# --------------------------------------------------------------------------- student, training, adapter


def test_student_is_frozen_except_lora_on_q_and_v_and_starts_as_its_base():
    student = tiny_student()
    trainable = [n for n, p in student.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * 2 * 2  # 2 blocks x (q, v) x (A, B)
    assert all(".attn.qkv.q.lora_" in n or ".attn.qkv.v.lora_" in n for n in trainable)
    assert student.model.blocks[0].attn.qkv.q.lora_A["default"].weight.shape == (8, 32)
    base = WL.create_vit(ARCH, HW, **TINY)
    WL.load_base_into(base, student.base_state)
    x = frames()
    from tracker.featurizers import ViTFeaturizer

    assert torch.allclose(student_features(student, x), ViTFeaturizer(base, "b", HW)(x), atol=1e-5)  # B = 0


def test_a_few_training_steps_on_a_pair_lower_the_loss():
    student = tiny_student(spec=S.LoraSpec(dropout=0.0))
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, *HW, generator=g) * 255
    teacher = torch.randn(2, 48, 5, 5, generator=g)
    optimizer = torch.optim.AdamW(student.trainable_parameters(), lr=3e-2, weight_decay=0.05)
    losses = []
    for _ in range(8):
        feats = student(images)
        loss = dense_distillation_loss(feats[:1], feats[1:], teacher[:1], teacher[1:], 0.01)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)) and losses[-1] < 0.8 * losses[0], losses


@pytest.mark.parametrize("alpha", [8.0, 32.0])  # scaling 1 (DistillDIFT) and 4 (folded into B on export)
def test_adapter_round_trips_and_merged_weights_give_the_peft_features(tmp_path, alpha):
    student = tiny_student(spec=S.LoraSpec(alpha=alpha))
    randomise_lora(student)
    x = frames()
    peft_features = student_features(student, x)
    factors = S.lora_factors(student.model)
    path = tmp_path / "adapter.safetensors"
    A.save_adapter(path, factors, {"note": "test"})
    loaded, card = A.read_adapter(path)
    assert card == {"note": "test"} and A.factors_equal(factors, loaded)
    assert WL.read_metadata(path)[WL.KIND_METADATA] == "lora"
    fresh = tiny_student(spec=S.LoraSpec(alpha=alpha))
    randomise_lora(fresh, seed=11)
    assert not torch.allclose(student_features(fresh, x), peft_features, atol=1e-3)
    S.load_lora_factors(fresh.model, loaded)
    assert torch.allclose(student_features(fresh, x), peft_features, atol=1e-6)

    merged = tmp_path / "merged.safetensors"
    A.save_merged(merged, S.merged_state_dict(ARCH, HW, student.base_state, factors, **TINY), {"note": "test"})
    tracker_merged = create_featurizer("distilldift", (96, 120), size="70", weights=str(merged), **TINY)
    assert torch.allclose(tracker_merged(x), peft_features, atol=1e-5)
    # the adapter alone on top of a base file loads in the tracker the same way as published checkpoints
    base = tmp_path / "base.safetensors"
    save_file({k: v.contiguous() for k, v in student.base_state.items()}, base)
    tracker_adapter = create_featurizer("distilldift", (96, 120), size="70", weights=f"{base},{path}", **TINY)
    assert torch.allclose(tracker_adapter(x), peft_features, atol=1e-5)
    with pytest.raises(TrackerError, match="rank or width differ"):
        S.load_lora_factors(tiny_student(spec=S.LoraSpec(rank=4, alpha=4)).model, loaded)


def test_published_checkpoint_converts_to_the_same_adapter_format(tmp_path, capsys):
    from test_weights import lora_state, meta_state

    ckpt = tmp_path / "distilldift_us.ckpt"
    torch.save(lora_state(), ckpt)  # the published key layout, 2 tiny blocks
    assert track_main(["distill", "convert", str(ckpt), "--out", str(tmp_path / "us.safetensors")]) == 0
    assert "rank 8, 2 blocks" in capsys.readouterr().out
    card = json.loads((tmp_path / "us.json").read_text())
    assert card["format"] == "distilldift-lora" and card["converted_from"]["file"] == "distilldift_us.ckpt"
    factors, _ = A.read_adapter(tmp_path / "us.safetensors")
    published = WL.parse_distilldift(lora_state(), depth=2).lora
    assert A.factors_equal(factors, published)
    # in the tracker, the converted adapter and the published checkpoint give the same model
    base = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(meta_state(), base)
    x = frames()
    via_ckpt = create_featurizer("distilldift", (96, 120), size="70", weights=f"{base},{ckpt}", **TINY)
    via_adapter = create_featurizer(
        "distilldift", (96, 120), size="70", weights=f"{base},{tmp_path / 'us.safetensors'}", **TINY
    )
    assert torch.equal(via_ckpt(x), via_adapter(x))


# --------------------------------------------------------------------------- runs, resume, command line


def test_pairs_retrieval_top_k_and_random_are_deterministic_and_never_self():
    e = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]])
    nn = retrieval_neighbours(e, k=2)
    assert nn[0].tolist() == [1, 4] and nn[2].tolist() == [3, 4]
    for mode, neighbours in (("retrieval", nn), ("random", None)):
        sampler = PairSampler(5, mode, neighbours, seed=3)
        pairs = [p for s in range(50) for p in sampler.pairs(s, 4)]
        assert all(i != j for i, j in pairs)
        assert sampler.pairs(17, 4) == PairSampler(5, mode, neighbours, seed=3).pairs(17, 4)
        if mode == "retrieval":
            assert all(j in nn[i].tolist() for i, j in pairs)
    with pytest.raises(TrackerError, match="at least 2 images"):
        retrieval_neighbours(e[:1])


def test_interrupted_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(tmp_path):
    images = write_images(tmp_path / "images", n_per_class=2)
    cache = str(tmp_path / "cache")
    config = TR.tiny_config(str(images), str(tmp_path / "a"), cache=cache, steps=6, checkpoint_every=2, lr=1e-3)

    full = TR.DistillRun(config)
    list(full.cache_teachers())
    reports = list(full.train())
    assert [r.step for r in reports] == [1, 2, 3, 4, 5, 6] and [r.checkpoint for r in reports].count(True) == 3

    stopped = TR.DistillRun(replace(config, out=str(tmp_path / "b")))
    list(stopped.cache_teachers())
    steps = stopped.train()
    for report in steps:
        if report.step == 3:
            break  # interrupted after step 3: the last checkpoint holds step 2
    steps.close()
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 2

    resumed = TR.DistillRun(replace(config, out=str(tmp_path / "b")))
    list(resumed.cache_teachers())
    reports = list(resumed.train())
    assert [r.step for r in reports] == [3, 4, 5, 6]
    assert A.factors_equal(S.lora_factors(full.student.model), S.lora_factors(resumed.student.model), atol=1e-6)
    assert reports[-1].lr == pytest.approx(1e-4)  # the step schedule carried over (x0.1 after step 3)

    with pytest.raises(TrackerError, match="belongs to a different run .*lr differ.*--restart"):
        changed = TR.DistillRun(replace(config, out=str(tmp_path / "b"), lr=5e-4))
        list(changed.cache_teachers())
        next(changed.train())
    restarted = TR.DistillRun(replace(config, out=str(tmp_path / "b"), lr=5e-4))
    list(restarted.cache_teachers())
    assert next(restarted.train(restart=True)).step == 1


def test_cli_end_to_end_tiny_writes_adapter_card_and_merged_weights_the_tracker_loads(tmp_path, capsys):
    images = write_images(tmp_path / "images")
    out = tmp_path / "out"
    argv = ["distill", "--images", str(images), "--out", str(out), "--tiny", "--steps", "4", "--no-progress"]
    assert track_main([*argv, "--prompt", "a photo of a {category}"]) == 0
    printed = capsys.readouterr().out
    assert "teacher features: 6 images (6 computed now" in printed and "4 steps" in printed
    for name in ("adapter.safetensors", "adapter.json", "merged.safetensors", "checkpoint.pt"):
        assert (out / name).is_file()
    card = json.loads((out / "adapter.json").read_text())
    assert card["base_model"]["arch"] == ARCH and card["lora"]["rank"] == 8 and card["training"]["steps"] == 4
    assert card["teachers"]["diffusion"]["timesteps"] == [51, 101, 151, 201]
    assert card["teachers"]["diffusion"]["native_grid"] == [5, 5] and card["data"]["used"] == 6
    assert card["training"]["optimizer"] == {"type": "AdamW", "lr": 1e-4, "weight_decay": 0.05}

    # the merged weights load in the tracker and equal the random base plus the adapter
    merged = create_featurizer("distilldift", (96, 120), size="70", weights=str(out / "merged.safetensors"), **TINY)
    base = S.load_base_vit(ARCH, HW, "random", 0, **TINY)
    save_file({k: v.contiguous() for k, v in base.state_dict().items()}, tmp_path / "base.safetensors")
    adapter = create_featurizer(
        "distilldift",
        (96, 120),
        size="70",
        weights=f"{tmp_path / 'base.safetensors'},{out / 'adapter.safetensors'}",
        **TINY,
    )
    x = frames()
    assert torch.allclose(merged(x), adapter(x), atol=1e-5)
    assert not torch.allclose(
        merged(x),
        create_featurizer("dinov2-b", (96, 120), size="70", weights=str(tmp_path / "base.safetensors"), **TINY)(x),
    )
    # running the same command again reuses the cache and the finished checkpoint
    assert track_main([*argv, "--prompt", "a photo of a {category}"]) == 0
    assert "(0 computed now, 6 from" in capsys.readouterr().out


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    def run(*args):
        return track_main(["distill", *args, "--tiny", "--no-progress", "--out", str(tmp_path / "o")])

    (tmp_path / "empty").mkdir()
    assert run("--images", str(tmp_path / "empty")) == 2
    assert "no image files" in one_line_error(capsys)
    assert run("--images", str(tmp_path / "nope")) == 2
    assert "no such folder" in one_line_error(capsys)
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.jpg").write_bytes(b"garbage")
    assert run("--images", str(broken)) == 2
    line = one_line_error(capsys)
    assert "0 readable image(s)" in line and "cannot decode" in line
    images = write_images(tmp_path / "images", n_per_class=1)
    (tmp_path / "not_a_pipeline").mkdir()
    assert run("--images", str(images), "--unet", str(tmp_path / "not_a_pipeline")) == 2
    assert "cannot load the diffusion teacher" in one_line_error(capsys)
    monkeypatch.setattr(T, "_hub_reachable", lambda timeout=5.0: False)  # offline, with an empty hub cache
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert run("--images", str(images), "--unet", "stabilityai/sdxl-turbo") == 2
    line = one_line_error(capsys)
    assert "cannot load the diffusion teacher 'stabilityai/sdxl-turbo'" in line
    assert "huggingface-cli download stabilityai/sdxl-turbo" in line
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: False)
    no_tiny = ["distill", "--images", str(images), "--out", str(tmp_path / "o2"), "--unet", "none", "--no-progress"]
    assert track_main(no_tiny) == 2
    assert "DINOv2 base weights (dinov2-b) unavailable" in one_line_error(capsys)
    assert run("--images", str(images), "--size", "71") == 2
    assert "multiple of 14" in one_line_error(capsys)
    assert run("--images", str(images), "--timesteps", "51,x") == 2
    assert "--timesteps" in one_line_error(capsys)
    monkeypatch.setattr(TR, "free_memory", lambda device: 1 << 20)  # 1 MiB free: nothing fits
    assert run("--images", str(images)) == 2
    line = one_line_error(capsys)
    assert "needs about" in line and "GiB free" in line and "--teacher-batch" in line


def test_the_real_defaults_are_the_papers_and_validate():
    config = TR.DistillConfig(images="x").validate()
    assert (config.input_size, config.grid_hw, config.base_weights) == (434, (31, 31), None)
    assert config.diffusion == T.DiffusionConfig("stabilityai/sdxl-turbo", 980, (51, 101, 151, 201), 1, "")
    assert (config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.scaling) == (8, 8.0, 0.05, 1.0)
    assert (config.lr, config.weight_decay, config.temperature, config.pairs, config.top_k) == (
        1e-4,
        0.05,
        0.01,
        "retrieval",
        10,
    )
    args = build_parser().parse_args(["--images", "x"])
    assert config_from_args(args) == replace(config, device="cuda" if torch.cuda.is_available() else "cpu")


def test_memory_estimate_of_the_real_student_and_the_check(monkeypatch):
    model = WL.create_vit(ARCH, (434, 434))
    one = TR.training_bytes(model, (434, 434), batch=1, act_bytes=2)
    assert 0.5 * TR.GIB < one < 4 * TR.GIB  # ViT-B/14 at 434: 2 images of 966 tokens through 12 blocks
    assert TR.training_bytes(model, (434, 434), batch=8, act_bytes=2) > 7 * one
    monkeypatch.setattr(TR, "free_memory", lambda device: 2 * TR.GIB)
    with pytest.raises(TrackerError, match=r"training at batch 8 needs about .* GiB, 2.0 GiB free on cpu; lower"):
        TR.check_memory(
            TR.training_bytes(model, (434, 434), 8, 2), torch.device("cpu"), "training at batch 8", "lower --batch"
        )


def test_cli_ctrl_c_keeps_the_last_checkpoint_and_the_same_command_resumes(tmp_path, capsys, monkeypatch):
    images = write_images(tmp_path / "images", n_per_class=1)
    out = tmp_path / "out"
    argv = ["distill", "--images", str(images), "--out", str(out), "--tiny", "--steps", "5"]
    argv += ["--checkpoint-every", "2", "--no-progress"]
    calls = {"n": 0}
    loss = TR.dense_distillation_loss

    def interrupted_at_step_3(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return loss(*args, **kwargs)

    monkeypatch.setattr(TR, "dense_distillation_loss", interrupted_at_step_3)
    assert track_main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted after step 2" in err and "rerun the same command to resume" in err
    assert not (out / "adapter.safetensors").exists()
    monkeypatch.setattr(TR, "dense_distillation_loss", loss)
    assert track_main(argv) == 0
    assert "5 steps" in capsys.readouterr().out
    assert json.loads((out / "adapter.json").read_text())["training"]["steps"] == 5
