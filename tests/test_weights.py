"""Weights: strict loading of timm/Meta formats, DistillDIFT LoRA merge, the weights table and `auto`."""

import copy

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tracker import weights as W
from tracker.errors import TrackerError, WeightsUnavailable
from tracker.featurizers import ViTFeaturizer, create_featurizer, resolve_model

TINY = dict(embed_dim=32, depth=2, num_heads=2)  # the real class (vit_*_patch14_reg4_dinov2), tiny sizes
HW = (56, 70)  # a 4x5 grid


def tiny_vit(seed: int = 0, hw=HW) -> nn.Module:
    torch.manual_seed(seed)
    model = W.create_vit("vit_base_patch14_reg4_dinov2", hw, **TINY)
    with torch.no_grad():  # random non-trivial LayerScale, so the layers matter
        for block in model.blocks:
            block.ls1.gamma.uniform_(0.5, 1.0)
            block.ls2.gamma.uniform_(0.5, 1.0)
    return model.eval()


def meta_state(seed: int = 0, grid: int = 6, c: int = 32, depth: int = 2) -> dict[str, torch.Tensor]:
    """A checkpoint in Meta's dinov2_vitb14_reg4_pretrain.pth key format (pos_embed with a cls slot)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    state = {
        "cls_token": r(1, 1, c),
        "pos_embed": r(1, 1 + grid * grid, c),
        "register_tokens": r(1, 4, c),
        "mask_token": r(1, c),
        "patch_embed.proj.weight": r(c, 3, 14, 14),
        "patch_embed.proj.bias": r(c),
        "norm.weight": 1 + r(c),
        "norm.bias": r(c),
    }
    for i in range(depth):
        p = f"blocks.{i}."
        state |= {
            p + "norm1.weight": 1 + r(c),
            p + "norm1.bias": r(c),
            p + "attn.qkv.weight": r(3 * c, c),
            p + "attn.qkv.bias": r(3 * c),
            p + "attn.proj.weight": r(c, c),
            p + "attn.proj.bias": r(c),
            p + "ls1.gamma": r(c).abs(),
            p + "norm2.weight": 1 + r(c),
            p + "norm2.bias": r(c),
            p + "mlp.fc1.weight": r(4 * c, c),
            p + "mlp.fc1.bias": r(4 * c),
            p + "mlp.fc2.weight": r(c, 4 * c),
            p + "mlp.fc2.bias": r(c),
            p + "ls2.gamma": r(c).abs(),
        }
    return state


def lora_state(seed: int = 1, c: int = 32, depth: int = 2, rank: int = 8) -> dict[str, torch.Tensor]:
    """LoRA factors in the published DistillDIFT key format."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(depth):
        for t in "qv":
            state[f"model.blocks.{i}.attn.qkv.linear_a_{t}.weight"] = torch.randn(rank, c, generator=g) * 0.1
            state[f"model.blocks.{i}.attn.qkv.linear_b_{t}.weight"] = torch.randn(c, rank, generator=g) * 0.1
    return state


class OnTheFlyLoRA(nn.Module):
    """DistillDIFT's LoRA wrapper: qkv(x) plus B_q A_q x on the q slice and B_v A_v x on the v slice."""

    def __init__(self, qkv: nn.Linear, a_q, b_q, a_v, b_v):
        super().__init__()
        self.qkv, self.a_q, self.b_q, self.a_v, self.b_v = qkv, a_q, b_q, a_v, b_v
        self.dim = qkv.in_features

    def forward(self, x):
        out = self.qkv(x)
        out[..., : self.dim] += x @ self.a_q.T @ self.b_q.T
        out[..., -self.dim :] += x @ self.a_v.T @ self.b_v.T
        return out


def test_merge_equals_formula_q_and_v_changed_k_untouched():
    model = tiny_vit()
    before = {i: b.attn.qkv.weight.detach().clone() for i, b in enumerate(model.blocks)}
    ckpt = W.parse_distilldift(lora_state(), depth=2)
    W.merge_lora_qv(model, ckpt.lora)
    c = 32
    for i, block in enumerate(model.blocks):
        a_q, b_q, a_v, b_v = ckpt.lora[i]
        w = block.attn.qkv.weight.detach()
        assert torch.allclose(w[:c], before[i][:c] + b_q @ a_q, atol=1e-6)
        assert torch.equal(w[c : 2 * c], before[i][c : 2 * c])
        assert torch.allclose(w[2 * c :], before[i][2 * c :] + b_v @ a_v, atol=1e-6)
        assert not torch.allclose(w[:c], before[i][:c])


def test_merged_model_gives_the_same_features_as_lora_on_the_fly():
    base = tiny_vit()
    ckpt = W.parse_distilldift(lora_state(), depth=2)
    on_the_fly = copy.deepcopy(base)
    for i, block in enumerate(on_the_fly.blocks):
        block.attn.qkv = OnTheFlyLoRA(block.attn.qkv, *ckpt.lora[i])
    merged = copy.deepcopy(base)
    W.merge_lora_qv(merged, ckpt.lora)
    frames = torch.randint(0, 256, (2, 100, 130, 3), dtype=torch.uint8)
    f_merged = ViTFeaturizer(merged, "t", HW)(frames)
    f_fly = ViTFeaturizer(on_the_fly, "t", HW)(frames)
    f_base = ViTFeaturizer(base, "t", HW)(frames)
    assert f_merged.shape == (2, 32, 4, 5)
    assert torch.allclose(f_merged.norm(dim=1), torch.ones(2, 4, 5), atol=1e-5)
    assert torch.allclose(f_merged, f_fly, atol=1e-5)
    assert not torch.allclose(f_merged, f_base, atol=1e-3)  # the LoRA matters


def test_meta_format_loads_strictly_into_timm():
    model = tiny_vit(hw=(84, 84))  # 6x6 grid, same as the checkpoint: no resampling
    state = meta_state()
    W.load_base_into(model, state)
    assert torch.equal(model.reg_token, state["register_tokens"])
    assert torch.allclose(model.cls_token, state["cls_token"] + state["pos_embed"][:, 0])
    assert torch.equal(model.pos_embed, state["pos_embed"][:, 1:])
    assert torch.equal(model.blocks[1].ls2.gamma, state["blocks.1.ls2.gamma"])
    # resampled once when built at another size (4x5 grid)
    small = tiny_vit(hw=HW)
    W.load_base_into(small, state)
    assert small.pos_embed.shape == (1, 20, 32)
    with pytest.raises(TrackerError, match="Unexpected|unexpected"):
        W.load_base_into(tiny_vit(hw=(84, 84)), {**state, "blocks.0.attn.extra": torch.zeros(1)})
    missing = dict(state)
    del missing["blocks.1.mlp.fc2.bias"]
    with pytest.raises(TrackerError, match="Missing|missing"):
        W.load_base_into(tiny_vit(hw=(84, 84)), missing)


def test_distilldift_checkpoint_strict_parsing():
    with pytest.raises(TrackerError, match="all 2 blocks"):
        partial = lora_state()
        del partial["model.blocks.1.attn.qkv.linear_b_v.weight"]
        W.parse_distilldift(partial, depth=2)
    with pytest.raises(TrackerError, match="unexpected key"):
        W.parse_distilldift({**lora_state(), "optimizer.lr": torch.zeros(1)}, depth=2)
    # a whole-student checkpoint carries the backbone (Meta format, base qkv wrapped at attn.qkv.qkv)
    full = lora_state() | {"model." + k.replace(".attn.qkv.", ".attn.qkv.qkv."): v for k, v in meta_state().items()}
    parsed = W.parse_distilldift(full, depth=2)
    assert parsed.base is not None and "blocks.0.attn.qkv.weight" in parsed.base


def test_load_model_from_local_files_in_real_formats(tmp_path):
    spec = W.get_spec("distilldift")
    base_path, lora_path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth", tmp_path / "distilldift_us.ckpt"
    torch.save(meta_state(), base_path)
    torch.save(lora_state(), lora_path)
    model = W.load_model(spec, HW, f"{base_path},{lora_path}", **TINY)
    reference = tiny_vit(hw=HW)
    W.load_base_into(reference, meta_state())
    c = 32
    assert torch.equal(model.blocks[0].attn.qkv.weight[c : 2 * c], reference.blocks[0].attn.qkv.weight[c : 2 * c])
    assert not torch.equal(model.blocks[0].attn.qkv.weight[:c], reference.blocks[0].attn.qkv.weight[:c])
    # a timm-format safetensors base loads too, and a LoRA for a plain DINOv2 model is refused
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "model.safetensors")
    plain = W.load_model(W.get_spec("dinov2-b"), HW, str(tmp_path / "model.safetensors"), **TINY)
    assert torch.equal(plain.blocks[1].mlp.fc1.weight, reference.blocks[1].mlp.fc1.weight)
    with pytest.raises(TrackerError, match="takes no LoRA"):
        W.load_model(W.get_spec("dinov2-b"), HW, str(lora_path), **TINY)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TrackerError, match="cannot read"):
        W.load_model(spec, HW, str(tmp_path / "junk.pth"), **TINY)


def test_cached_files_are_used_without_network(tmp_path, monkeypatch):
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: pytest.fail("network touched"))
    files = W.cache_dir() / "files"
    files.mkdir(parents=True)
    torch.save(meta_state(), files / "dinov2_vitb14_reg4_pretrain.pth")
    torch.save(lora_state(), files / "distilldift_us.ckpt")
    spec = W.get_spec("distilldift")
    assert all(W.weights_status(spec).values())
    assert resolve_model("auto", None) == ("distilldift", None)
    featurizer = create_featurizer("distilldift", (120, 160), size="70x56", **TINY)
    assert featurizer.grid_hw == (4, 5)


def test_auto_falls_back_to_sift_with_one_warning_when_offline(monkeypatch):
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: False)
    model, warning = resolve_model("auto", None)
    assert model == "sift"
    assert "\n" not in warning and "track weights download distilldift" in warning
    with pytest.raises(WeightsUnavailable):
        create_featurizer("distilldift", (120, 160))  # an explicit model never falls back
    with pytest.raises(TrackerError, match="unknown model"):
        resolve_model("nope", None)


def test_random_weights_are_explicit_and_never_download(monkeypatch):
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: pytest.fail("network touched"))
    featurizer = create_featurizer("dinov2-s", (100, 100), size="56", weights="random")
    assert featurizer(torch.zeros(1, 100, 100, 3, dtype=torch.uint8)).shape == (1, 384, 4, 4)


def test_weights_commands_list_verify_download(monkeypatch, capsys):
    from tracker.apps.cli import main

    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: False)
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "distilldift" in out and "not cached" in out and "ommer-lab.com/files/distilldift/distilldift_us.ckpt" in out
    assert main(["weights", "verify"]) == 1  # nothing cached
    assert main(["weights", "download", "dinov2-s"]) == 2  # offline: one clear line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("track: error: cannot get") and "unreachable" in err[0]
    # a ViT-S checkpoint in Meta's real key format (37x37 positions at 518) verifies and loads strictly
    files = W.cache_dir() / "files"
    files.mkdir(parents=True)
    torch.save(meta_state(grid=37, c=384, depth=12), files / "dinov2_vits14_reg4_pretrain.pth")
    assert main(["weights", "verify", "dinov2-s"]) == 0
    assert "dinov2-s: ok (loaded strictly)" in capsys.readouterr().out
    torch.save(meta_state(grid=37, c=384, depth=11), files / "dinov2_vits14_reg4_pretrain.pth")  # a block short
    assert main(["weights", "verify", "dinov2-s"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_merged_weights_load_alone_and_get_no_lora_from_the_table(tmp_path, monkeypatch):
    """`track distill` writes merged weights marked in the safetensors metadata; the table's LoRA is not added."""
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: pytest.fail("network touched"))
    spec = W.get_spec("distilldift")
    reference = tiny_vit(hw=HW)
    W.merge_lora_qv(reference, W.parse_distilldift(lora_state(), depth=2).lora)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    merged = tmp_path / "merged.safetensors"
    save_file(state, merged, metadata={W.KIND_METADATA: "merged"})
    assert W.classify(merged)[0] == "merged"
    model = W.load_model(spec, HW, str(merged), **TINY)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # the same tensors without the mark are a base, which distilldift completes with its (unavailable) LoRA
    plain = tmp_path / "plain.safetensors"
    save_file(state, plain)
    assert W.classify(plain)[0] == "base"
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: False)
    with pytest.raises(WeightsUnavailable):
        W.load_model(spec, HW, str(plain), **TINY)
    lora_path = tmp_path / "distilldift_us.ckpt"
    torch.save(lora_state(), lora_path)
    with pytest.raises(TrackerError, match="already hold their LoRA"):
        W.load_model(spec, HW, f"{merged},{lora_path}", **TINY)
    with pytest.raises(TrackerError, match="already hold their LoRA"):
        W.load_model(spec, HW, f"{plain},{merged}", **TINY)
    with pytest.raises(TrackerError, match="two merged weights"):
        W.load_model(spec, HW, f"{merged},{merged}", **TINY)
