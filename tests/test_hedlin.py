"""Hedlin et al.'s prompt optimisation (tracker.hedlin) on a tiny random UNet of SD's layout."""

import pytest
import torch

pytest.importorskip("diffusers")

from tracker import hedlin as H  # noqa: E402

SIZE = 128  # latent 16: the kept cross-attention maps are 2x2 .. 8x8; layers 5, 6 are the up blocks' 8x8 maps
CELL = SIZE // 8


def tiny_matcher(**config) -> H.HedlinMatcher:
    import diffusers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = diffusers.UNet2DConditionModel(
            sample_size=8, block_out_channels=(8, 8, 16, 16), layers_per_block=1, attention_head_dim=2,
            cross_attention_dim=16, norm_num_groups=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        )  # fmt: skip
        vae = diffusers.AutoencoderKL(
            block_out_channels=(4, 4, 4, 4), down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, norm_num_groups=2,
        )  # fmt: skip
    # the paper's settings except: the tiny net's 8x8 layers, fewer steps / restarts / crops, and a learning rate
    # for its small random key projections (the paper's 0.0024 is for SD's CLIP-scale embeddings)
    settings = dict(layers=(5, 6), steps=50, restarts=1, crops=8, lr=0.4) | config
    return H.HedlinMatcher(unet, vae, SIZE, H.HedlinConfig(**settings))


IMAGE = torch.randint(0, 256, (SIZE, SIZE, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


def test_optimisation_drives_the_attention_argmax_onto_the_query_cell():
    matcher = tiny_matcher()
    x = matcher.prepare(IMAGE)
    query = (100.0, 20.0)
    cell = (int(query[0] // CELL), int(query[1] // CELL))
    before = matcher.match(x, torch.randn(1, 77, 16, generator=torch.Generator().manual_seed(9)))
    assert (int(before[0] // CELL), int(before[1] // CELL)) != cell  # a random embedding does not peak there
    found = matcher.match(x, matcher.optimise(x, query))
    assert (int(found[0] // CELL), int(found[1] // CELL)) == cell, (found, query)


def test_embeddings_are_cached_per_image_point_and_settings(tmp_path, monkeypatch):
    matcher = tiny_matcher(steps=2)
    first = H.cached_embeddings(matcher, IMAGE, (30.0, 40.0), tmp_path)
    assert first.shape == (1, 77, 16) and len(list(tmp_path.glob("*.safetensors"))) == 1
    monkeypatch.setattr(H.HedlinMatcher, "optimise", lambda *a: pytest.fail("optimised again"))
    assert torch.equal(H.cached_embeddings(matcher, IMAGE, (30.0, 40.0), tmp_path), first)
    monkeypatch.undo()
    H.cached_embeddings(matcher, IMAGE, (31.0, 40.0), tmp_path)  # another point: another file
    H.cached_embeddings(tiny_matcher(steps=3), IMAGE, (30.0, 40.0), tmp_path)  # other settings: another file
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


def test_cache_key_covers_the_vae_and_hashes_the_weights_once(monkeypatch):
    matcher = tiny_matcher(steps=2)
    key = H.cache_key(IMAGE, (30.0, 40.0), matcher)
    monkeypatch.setattr(type(matcher.unet), "state_dict", lambda *a, **k: pytest.fail("UNet weights hashed again"))
    assert H.cache_key(IMAGE, (30.0, 40.0), matcher) == key  # the digest is kept on the matcher
    monkeypatch.undo()
    other = tiny_matcher(steps=2)
    with torch.no_grad():
        next(other.vae.parameters()).add_(1.0)  # same UNet, same settings, another VAE: other latents, other maps
    assert H.cache_key(IMAGE, (30.0, 40.0), other) != key
    assert H.cache_key(IMAGE, (30.0, 40.0), tiny_matcher(steps=2)) == key  # equal weights: the same key


def test_a_half_precision_unet_and_vae_run_and_still_learn():
    """fp16 on CUDA is the rule for the diffusion models; bf16 on the CPU stands in: inputs are cast to the
    networks' type, maps and the loss stay fp32, and gradients still reach the embeddings."""
    import warnings

    def half(**config):
        matcher = tiny_matcher(**config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # diffusers: "cast with torch_dtype in from_pretrained instead"
            matcher.unet.to(torch.bfloat16), matcher.vae.to(torch.bfloat16)
        return matcher

    x = half().prepare(IMAGE)
    untrained = half(steps=0, crops=4).optimise(x, (100.0, 20.0))
    trained = half(steps=2, crops=4)
    found = trained.optimise(x, (100.0, 20.0))
    assert found.dtype == torch.float32 and torch.isfinite(found).all()
    assert not torch.equal(found, untrained)  # the same start, moved by the optimisation
    u, v = trained.match(x, found)
    assert 0 <= u < SIZE and 0 <= v < SIZE
