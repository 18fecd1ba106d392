"""DINOv3, DIFT and Diffusion Hyperfeatures as featurizers: geometry at two sizes, the authors' key layouts loaded
strictly, DHF's mix against a hand computation, and short clips through ``track`` (tiny random models of the real
classes; the full SD UNets are never built here)."""

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tracker import create_featurizer
from tracker import diffusion_features as D
from tracker import weight_loading as WL
from tracker import weights as W
from tracker.errors import TrackerError, WeightsUnavailable
from tracker.io.formats import read_tracks
from tracker.synthetic import moving_objects, write_video

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

TINY_VIT = dict(embed_dim=48, depth=2, num_heads=2)  # vit_*_patch16_dinov3 (timm Eva, RoPE), tiny sizes
# SD's UNet layout (4 levels, cross-attention in the first three down / last three up blocks), tiny widths.
TINY_UNET = dict(
    sample_size=8, block_out_channels=(8, 8, 16, 16), layers_per_block=1, attention_head_dim=2,
    cross_attention_dim=16, norm_num_groups=4,
)  # fmt: skip
TINY_VAE = dict(block_out_channels=(4, 4, 4, 4), layers_per_block=1, norm_num_groups=2)
FRAMES = torch.randint(0, 256, (2, 90, 120, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def tiny(**extra):
    return dict(unet=dict(TINY_UNET), vae=dict(TINY_VAE), **extra)


# --------------------------------------------------------------------------- DINOv3


@pytest.mark.parametrize(("size", "grid"), [("64x48", (3, 4)), ("112", (7, 7))])
def test_dinov3_geometry_and_shape_at_two_sizes(size, grid):
    f = create_featurizer("dinov3-s", (90, 120), size=size, weights="random", **TINY_VIT)
    assert type(f.model).__name__ == "Eva" and f.model.num_prefix_tokens == 5  # cls + 4 registers
    assert f.stride == 16 and f.grid_hw == grid and f.input_hw == (grid[0] * 16, grid[1] * 16)
    out = f(FRAMES)
    assert out.shape == (2, 48, *grid) and torch.allclose(out.norm(dim=1), torch.ones(()), atol=1e-5)
    g = f.geometry(90, 120)
    assert (g.grid_h, g.grid_w) == grid
    with pytest.raises(TrackerError, match="multiples of 16"):
        create_featurizer("dinov3-s", (90, 120), size="100", weights="random", **TINY_VIT)


def test_dinov3_meta_and_timm_files_load_strictly_to_the_same_model(tmp_path):
    ref = WL.create_vit("vit_small_patch16_dinov3", (64, 64), **TINY_VIT)
    timm_state = ref.state_dict()
    torch.save(timm_state, tmp_path / "timm.pth")
    # Meta's layout: storage_tokens, ls{1,2}.gamma, fused qkv bias (k part zero) with its mask, mask_token
    meta = {}
    for k, v in timm_state.items():
        k = k.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        meta[k] = v
    for i in range(TINY_VIT["depth"]):
        meta[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * 48)
        meta[f"blocks.{i}.attn.qkv.bias_mask"] = torch.ones(3 * 48)
    meta["mask_token"] = torch.zeros(1, 48)
    torch.save(meta, tmp_path / "meta.pth")
    a = create_featurizer("dinov3-s", (64, 64), size="64", weights=str(tmp_path / "timm.pth"), **TINY_VIT)
    b = create_featurizer("dinov3-s", (64, 64), size="64", weights=str(tmp_path / "meta.pth"), **TINY_VIT)
    assert torch.equal(a(FRAMES), b(FRAMES))
    torch.save({**timm_state, "extra.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(TrackerError, match="do not fit"):
        create_featurizer("dinov3-s", (64, 64), size="64", weights=str(tmp_path / "bad.pth"), **TINY_VIT)


def test_dinov3_gated_or_offline_download_is_one_line_saying_what_to_do(monkeypatch):
    def refused(source, **kw):
        raise WeightsUnavailable(f"cannot get {source.filename} (tried 1 source: hub {source.hub_id}: GatedRepoError)")

    monkeypatch.setattr(W, "fetch", refused)
    with pytest.raises(WeightsUnavailable) as err:
        create_featurizer("dinov3-b", (64, 64), size="64", **TINY_VIT)
    msg = str(err.value)
    assert "\n" not in msg and "licence not accepted" in msg and "Meta's DINOv3 licence" in msg
    assert "huggingface.co/timm/vit_base_patch16_dinov3.lvd1689m" in msg and "--weights PATH" in msg
    monkeypatch.setattr(
        W, "fetch", lambda s, **kw: (_ for _ in ()).throw(WeightsUnavailable("huggingface.co unreachable"))
    )
    with pytest.raises(WeightsUnavailable, match="unreachable.*accept the licence"):
        create_featurizer("dinov3-s", (64, 64), size="64", **TINY_VIT)


# --------------------------------------------------------------------------- DIFT


@pytest.mark.parametrize(("size", "grid"), [("64", (4, 4)), ("192x128", (8, 12))])
def test_dift_geometry_and_shape_at_two_sizes(size, grid):
    f = create_featurizer("dift", (90, 120), size=size, weights="random", **tiny())
    assert f.stride == 16 and f.grid_hw == grid  # up_blocks[1]: input / 16, as SD-2.1's 48x48 at 768
    assert f.config == D.DiftConfig(timestep=261, up_block=1, ensemble=8)
    out = f(FRAMES)
    assert out.shape == (2, 16, *grid) and torch.allclose(out.norm(dim=1), torch.ones(()), atol=1e-5)
    assert torch.allclose(
        out[1:], f(FRAMES[1:]), atol=1e-5
    )  # fixed draws: a frame's features do not depend on its batch
    with pytest.raises(TrackerError, match="multiples of 64"):
        create_featurizer("dift", (90, 120), size="96", weights="random", **tiny())


def test_dift_averages_the_ensemble_at_t261_of_up_block_1():
    f = create_featurizer("dift", (90, 120), size="64", weights="random", **tiny())
    frames = FRAMES[:1]
    latents_eps = f._draws(16, 0)  # the featurizer's draws: 8 latent samples, then 8 noises
    x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(64, 64), mode="bilinear", antialias=True)
    dist = f.vae.encode(x / 127.5 - 1).latent_dist
    a = D.sd_alphas_cumprod()[261].float()
    maps = []
    for e in range(8):
        z = (dist.mean + dist.std * latents_eps[e : e + 1]) * 0.18215
        noisy = a.sqrt() * z + (1 - a).sqrt() * latents_eps[8 + e : 9 + e]
        got = []
        h = f.unet.up_blocks[1].register_forward_hook(lambda m, i, o, got=got: got.append(o))
        with torch.no_grad():
            f.unet(noisy, torch.tensor([261]), encoder_hidden_states=f.prompt)
        h.remove()
        maps.append(got[0])
    expected = F.normalize(torch.cat(maps).mean(0, keepdim=True), dim=1)
    assert torch.allclose(f(frames), expected, atol=1e-5)
    assert not torch.allclose(expected, F.normalize(maps[0], dim=1), atol=1e-3)  # the ensemble matters


# --------------------------------------------------------------------------- Diffusion Hyperfeatures


def authors_layout(dims, n_saved, proj=384, seed=0):
    """A checkpoint as the DHF authors' save_model writes it, keys named by hand (detectron2 layout)."""
    g = torch.Generator().manual_seed(seed)
    sd = {"mixing_weights": torch.randn(len(dims) * n_saved, generator=g)}
    for i, c in enumerate(dims):
        p = f"bottleneck_layers.{i}.0."
        shapes = {
            "conv1": (proj // 4, c, 1, 1),
            "conv2": (proj // 4, proj // 4, 3, 3),
            "conv3": (proj, proj // 4, 1, 1),
        }
        if c != proj:
            shapes["shortcut"] = (proj, c, 1, 1)
        for name, shape in shapes.items():
            sd[p + name + ".weight"] = torch.randn(shape, generator=g) * 0.3
            sd[p + name + ".norm.weight"] = 1 + 0.1 * torch.randn(shape[0], generator=g)
            sd[p + name + ".norm.bias"] = 0.1 * torch.randn(shape[0], generator=g)
    return sd


def reference_bottleneck(sd, prefix, x, groups=32):
    """detectron2's BottleneckBlock written out from the state dict (an independent implementation)."""

    def conv_norm(name, h, pad):
        y = F.conv2d(h, sd[f"{prefix}{name}.weight"], padding=pad)
        return F.group_norm(y, groups, sd[f"{prefix}{name}.norm.weight"], sd[f"{prefix}{name}.norm.bias"])

    out = F.relu(conv_norm("conv1", x, 0))
    out = F.relu(conv_norm("conv2", out, 1))
    out = conv_norm("conv3", out, 0)
    skip = conv_norm("shortcut", x, 0) if f"{prefix}shortcut.weight" in sd else x
    return F.relu(out + skip)


def test_aggregation_network_loads_the_authors_layout_strictly_and_mixes_as_computed_by_hand(tmp_path):
    dims, proj = [6, 128], 128  # layer 1 needs the projection shortcut, layer 2 (128 -> 128) has none; GN 32
    sd = authors_layout(dims, 2, proj)
    sd["mixing_weights"] = torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # softmax: 0.1, 0.2, 0.3, 0.4
    ckpt = {"step": 5000, "config": {"save_timestep": [1, 0], "num_timesteps": 2, "projection_dim": proj},
            "aggregation_network": sd, "optimizer_state_dict": {"state": {}, "param_groups": []}}  # fmt: skip
    torch.save(ckpt, tmp_path / "agg.pt")
    state, config = D.read_aggregation(tmp_path / "agg.pt", "dhf")
    assert config == D.DhfConfig(num_timesteps=2, save_timestep=(1, 0), projection_dim=proj)
    net = D.load_aggregation(state, dims, config)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2 * sum(dims), 5, 5, generator=g)  # timestep-major: [t0: l0 (6), l1 (128)], [t1: l0, l1]
    parts = torch.split(x, [6, 128, 6, 128], dim=1)
    b0, b1 = "bottleneck_layers.0.0.", "bottleneck_layers.1.0."
    expected = (
        0.1 * reference_bottleneck(sd, b0, parts[0])
        + 0.2 * reference_bottleneck(sd, b1, parts[1])
        + 0.3 * reference_bottleneck(sd, b0, parts[2])
        + 0.4 * reference_bottleneck(sd, b1, parts[3])
    )
    with torch.no_grad():
        assert torch.allclose(net(x), expected, atol=1e-5)
    for bad in ({**sd, "extra": torch.zeros(1)}, {k: v for k, v in sd.items() if "conv3.norm" not in k}):
        with pytest.raises(TrackerError, match="does not fit"):
            D.load_aggregation(bad, dims, config)
    with pytest.raises(TrackerError, match="does not fit"):
        D.load_aggregation(sd, dims, D.DhfConfig(num_timesteps=3, save_timestep=(2, 1, 0), projection_dim=proj))


def test_inversion_schedule_is_the_authors():
    steps = D.inversion_steps(50)
    assert steps[0] == (49, -1, 0) and steps[1] == (48, 0, 20) and steps[-1] == (0, 960, 980)
    assert D.inversion_steps(1) == [(0, -1, 0)]  # one-step: the UNet at t = -1 on the clean latent


@pytest.mark.parametrize(("size", "grid"), [("64", (8, 8)), ("192x128", (16, 24))])
def test_dhf_geometry_and_shape_at_two_sizes(size, grid):
    f = create_featurizer("dhf-one-step", (90, 120), size=size, weights="random", **tiny())
    assert f.stride == 8 and f.grid_hw == grid  # the latent grid (64x64 at the authors' 512)
    out = f(FRAMES)
    assert out.shape == (2, 384, *grid) and torch.allclose(out.norm(dim=1), torch.ones(()), atol=1e-5)
    assert len(f.aggregation.feature_dims) == 8 and f.aggregation.mixing_weights.shape == (8,)


def test_dhf_one_step_equals_the_aggregation_of_all_maps_at_once():
    """The featurizer mixes each map as it comes; the authors concatenate all and aggregate once."""
    f = create_featurizer("dhf-one-step", (90, 120), size="64", weights="random", **tiny())
    with torch.no_grad():
        f.aggregation.mixing_weights.copy_(torch.randn(8, generator=torch.Generator().manual_seed(3)))
    frames = FRAMES[:1]
    x = F.interpolate(frames.permute(0, 3, 1, 2).float(), size=(64, 64), mode="bilinear", antialias=True)
    dist = f.vae.encode(x / 127.5 - 1).latent_dist
    z = (dist.mean + dist.std * f._draws(1, 0)) * 0.18215
    maps = []
    hooks = [r.conv2.register_forward_hook(lambda m, i, o: maps.append(o)) for r in D.up_resnets(f.unet)]
    with torch.no_grad():
        f.unet(z, torch.tensor([-1]), encoder_hidden_states=f.prompt)
        for h in hooks:
            h.remove()
        batch = torch.cat([F.interpolate(m, size=(8, 8), mode="bilinear") for m in maps], dim=1)
        expected = F.normalize(f.aggregation(batch), dim=1)
    assert torch.allclose(f(frames), expected, atol=1e-5)


def test_dhf_full_variant_mixes_11_timesteps_of_50():
    full = create_featurizer("dhf", (90, 120), size="64", weights="random", **tiny())
    assert full.config.num_timesteps == 50 and len(full.config.save_timestep) == 11
    assert full.aggregation.mixing_weights.shape == (8 * 11,)
    # its 50-step inversion runs end to end in test_diffusion_models_end_to_end_through_track[dhf]


# --------------------------------------------------------------------------- the real loading path


def tiny_sd_folder(folder, base="sd-2.1", text_width=16):
    """A diffusers SD pipeline folder (UNet, VAE, CLIP text encoder and tokenizer, scheduler), tiny widths."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    text = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=text_width,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=len(vocab),
            max_position_embeddings=77,
            bos_token_id=vocab["<|startoftext|>"],
            eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        )  # fmt: skip
    )
    unet_cfg, vae_cfg = D.ARCHITECTURES[base]
    torch.manual_seed(5)
    unet_tiny = {**TINY_UNET, "cross_attention_dim": text_width}
    UNet2DConditionModel(**{**unet_cfg, **unet_tiny}).save_pretrained(folder / "pipe" / "unet")
    AutoencoderKL(**{**vae_cfg, **TINY_VAE}).save_pretrained(folder / "pipe" / "vae")
    tokenizer.save_pretrained(folder / "pipe" / "tokenizer")
    text.save_pretrained(folder / "pipe" / "text_encoder")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").save_pretrained(
        folder / "pipe" / "scheduler"
    )
    return folder / "pipe", text, tokenizer


def test_local_diffusers_folder_and_authors_checkpoint_load(tmp_path, monkeypatch):
    from diffusers import UNet2DConditionModel

    source, text, tokenizer = tiny_sd_folder(tmp_path / "sd")
    dift = create_featurizer("dift", (90, 120), size="64", weights=str(source))
    saved = UNet2DConditionModel.from_pretrained(source, subfolder="unet")
    assert all(
        torch.equal(a, b) for a, b in zip(dift.unet.state_dict().values(), saved.state_dict().values(), strict=True)
    )
    ids = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(dift.prompt, text(ids).last_hidden_state)  # the empty prompt, encoded
    assert dift(FRAMES).shape == (2, 16, 4, 4)
    dims = [r.conv2.out_channels for r in D.up_resnets(dift.unet)]
    ckpt = {"config": {"save_timestep": [0], "num_timesteps": 1}, "aggregation_network": authors_layout(dims, 1, 384)}
    torch.save(ckpt, tmp_path / "aggregation_network_one-step.pt")
    dhf = create_featurizer(
        "dhf-one-step", (90, 120), size="64", weights=f"{source},{tmp_path}/aggregation_network_one-step.pt"
    )
    assert torch.equal(dhf.aggregation.mixing_weights, ckpt["aggregation_network"]["mixing_weights"])
    assert dhf(FRAMES).shape == (2, 384, 8, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsUnavailable, match="not a diffusers pipeline folder"):
        create_featurizer("dift", (90, 120), size="64", weights=str(tmp_path / "empty"))
    monkeypatch.setattr(D, "_hub_reachable", lambda timeout=5.0: False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(WeightsUnavailable, match="unreachable.*--weights random") as err:
        create_featurizer("dift", (90, 120), size="64")
    assert "\n" not in str(err.value) and "stabilityai/stable-diffusion-2-1" in str(err.value)


# --------------------------------------------------------------------------- dhf-sd21: the SD-2.1 network

# The config of the authors' SDv2-1 run as their configs/train.yaml spells it (the all-steps block, SDv2-1 model_id);
# the released file's own config is not available here.
SDV2_1_CONFIG = {
    "model_id": "stabilityai/stable-diffusion-2-1-base", "save_timestep": [49, 45, 40, 35, 30, 25, 20, 15, 10, 5, 0],
    "num_timesteps": 50, "projection_dim": 384, "flip_timesteps": False, "diffusion_mode": "inversion",
    "output_resolution": 64, "load_resolution": 512, "prompt": "", "negative_prompt": "", "guidance_scale": -1,
    "batch_size": 2, "lr": 1e-3, "pck_threshold": 0.1,
}  # fmt: skip


def test_dhf_sd21_builds_sd21_base_at_512_with_the_openclip_width():
    unet = {**TINY_UNET, "cross_attention_dim": 1024}
    f = create_featurizer("dhf-sd21", (90, 120), weights="random", unet=unet, vae=dict(TINY_VAE))
    assert f.input_hw == (512, 512) and f.grid_hw == (64, 64) and f.stride == 8  # the authors' load / output size
    cfg = f.unet.config
    assert cfg.cross_attention_dim == 1024 and f.prompt.shape == (1, 77, 1024)  # SD-2's OpenCLIP-H text width
    assert cfg.use_linear_projection and not cfg.upcast_attention  # 2-1-base's unet/config.json; 2-1 upcasts
    assert D.ARCHITECTURES["sd-2.1-base"][0]["sample_size"] == 64 != D.ARCHITECTURES["sd-2.1"][0]["sample_size"]
    assert f.config == D.DhfConfig() and f.aggregation.mixing_weights.shape == (8 * 11,)


def test_dhf_sd21_default_sources_are_the_sdv2_1_network_and_2_1_base(monkeypatch, tmp_path):
    asked = []

    def fetch(source, **kw):
        asked.append(source)
        path = tmp_path / "agg.pt"
        torch.save({"config": SDV2_1_CONFIG, "aggregation_network": {"mixing_weights": torch.zeros(1)}}, path)
        return path

    def pipeline(source, prompt=""):
        asked.append(source)
        raise WeightsUnavailable(f"cannot load {source}")

    monkeypatch.setattr(W, "fetch", fetch)
    monkeypatch.setattr(D, "load_pipeline", pipeline)
    with pytest.raises(WeightsUnavailable, match="stabilityai/stable-diffusion-2-1-base"):
        create_featurizer("dhf-sd21", (90, 120), size="64")
    hub = asked[0]
    assert (hub.hub_id, hub.filename) == ("g-luo/diffusion-hyperfeatures", "weights/aggregation_network_sdv2-1.pt")
    assert asked[1] == "stabilityai/stable-diffusion-2-1-base"  # the small file first, then the pipeline


def test_dhf_sd21_loads_an_sdv2_1_checkpoint_strictly_and_refuses_the_other_base(tmp_path):
    source, _, _ = tiny_sd_folder(tmp_path / "sd", base="sd-2.1-base", text_width=24)
    dims = [16, 16, 16, 16, 8, 8, 8, 8]  # tiny widths (8, 8, 16, 16), reversed up the decoder, 2 resnets each
    state = authors_layout(dims, 11, 384, seed=2)
    torch.save({"config": SDV2_1_CONFIG, "aggregation_network": state, "step": 5000}, tmp_path / "sdv2-1.pt")
    f = create_featurizer("dhf-sd21", (90, 120), size="64", weights=f"{source},{tmp_path}/sdv2-1.pt")
    assert f.unet.config.cross_attention_dim == 24 and not f.unet.config.upcast_attention
    assert f.config == D.DhfConfig(num_timesteps=50, save_timestep=tuple(SDV2_1_CONFIG["save_timestep"]))
    loaded = f.aggregation.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], v) for k, v in state.items())
    out = f(FRAMES[:1])  # the 50-step inversion on the tiny SD-2.1-base UNet
    assert out.shape == (1, 384, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(TrackerError, match=r"trained on stabilityai/stable-diffusion-2-1-base .*use --model dhf-sd21"):
        create_featurizer("dhf", (90, 120), size="64", weights=f"{source},{tmp_path}/sdv2-1.pt")
    sd15 = {**SDV2_1_CONFIG, "model_id": "runwayml/stable-diffusion-v1-5"}
    torch.save({"config": sd15, "aggregation_network": state}, tmp_path / "sd15.pt")
    with pytest.raises(TrackerError, match="use --model dhf or dhf-one-step") as err:
        create_featurizer("dhf-sd21", (90, 120), size="64", weights=f"{source},{tmp_path}/sd15.pt")
    assert "\n" not in str(err.value)
    with pytest.raises(TrackerError, match="does not fit"):  # a one-step network: 8 mixing weights, not 88
        torch.save({"config": SDV2_1_CONFIG, "aggregation_network": authors_layout(dims, 1)}, tmp_path / "one.pt")
        create_featurizer("dhf-sd21", (90, 120), size="64", weights=f"{source},{tmp_path}/one.pt")


# --------------------------------------------------------------------------- end to end through `track`


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    video = moving_objects(num_frames=4, size=(96, 128), seed=0)
    write_video(str(folder / "clip.mp4"), video.frames)
    (folder / "points.json").write_text(json.dumps([[40.0, 50.0], [70.0, 60.0]]))
    return folder


def _check_tracks(path, model, grid):
    tracks = read_tracks(path)
    assert tracks["x"].shape == (4, 2) and np.isfinite(tracks["x"]).all()
    assert np.allclose(tracks["x"][0], [40.0, 70.0], atol=1e-3)
    with np.load(path) as data:
        meta = json.loads(str(data["meta"]))
    assert meta["model"] == model and meta["grid_size"] == grid


@pytest.mark.parametrize("model", ["dift", "dhf-one-step", "dhf", "dhf-sd21"])
def test_diffusion_models_end_to_end_through_track(model, clip, tmp_path, monkeypatch, capsys):
    from tracker.apps import cli

    for base, (unet, vae) in list(D.ARCHITECTURES.items()):  # the real classes, tiny widths
        monkeypatch.setitem(D.ARCHITECTURES, base, ({**unet, **TINY_UNET}, {**vae, **TINY_VAE}))
    out = tmp_path / "t.npz"
    argv = [str(clip / "clip.mp4"), "--points", str(clip / "points.json"), "--model", model, "--weights", "random",
            "--size", "64", "--out-tracks", str(out), "--no-video", "--no-progress", "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    _check_tracks(out, model, [4, 4] if model == "dift" else [8, 8])


def test_dinov3_end_to_end_through_track(clip, tmp_path, capsys):
    """The real ViT-S/16 DINOv3 architecture (random weights) through `track`."""
    from tracker.apps import cli

    argv = [str(clip / "clip.mp4"), "--points", str(clip / "points.json"), "--model", "dinov3-s", "--weights",
            "random", "--size", "112", "--out-tracks", str(tmp_path / "t.npz"), "--no-video", "--no-progress",
            "--device", "cpu"]  # fmt: skip
    assert cli.main(argv) == 0, capsys.readouterr().err
    _check_tracks(tmp_path / "t.npz", "dinov3-s", [7, 7])


def test_missing_extra_and_missing_aggregation_file_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the `train` extra were not installed
    with pytest.raises(TrackerError, match=r"need diffusers and transformers .*pip install -e '\.\[train\]'"):
        create_featurizer("dift", (90, 120), size="64", weights="random", **tiny())
    monkeypatch.delitem(sys.modules, "diffusers")
    with pytest.raises(TrackerError, match="weights file not found"):
        create_featurizer("dhf", (90, 120), size="64", weights=str(tmp_path / "aggregation_network.pt"))
    with pytest.raises(TrackerError, match="at most one diffusers folder"):
        create_featurizer("dift", (90, 120), size="64", weights=f"{tmp_path},{tmp_path / 'a.pt'}")
    monkeypatch.setattr(D, "_hub_reachable", lambda timeout=5.0: pytest.fail("a missing folder is not a hub id"))
    for missing in (str(tmp_path / "no_such_folder"), "./sd21", "sd21", "missing/"):  # not "org/name": a folder
        with pytest.raises(TrackerError, match="--weights: folder not found: "):
            create_featurizer("dift", (90, 120), size="64", weights=missing)
    assert not D._looks_local("stabilityai/stable-diffusion-2-1")
