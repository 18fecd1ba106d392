"""Weights: strict loading of timm/Meta formats, DistillDIFT LoRA merge, the weights table and `auto`."""

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from tracker import weight_loading as WL
from tracker import weights as W
from tracker.errors import TrackerError, WeightsUnavailable
from tracker.featurizers import ViTFeaturizer, create_featurizer, resolve_model

TINY = dict(embed_dim=32, depth=2, num_heads=2)  # the real class (vit_*_patch14_reg4_dinov2), tiny sizes
HW = (56, 70)  # a 4x5 grid


def tiny_vit(seed: int = 0, hw=HW) -> nn.Module:
    torch.manual_seed(seed)
    model = WL.create_vit("vit_base_patch14_reg4_dinov2", hw, **TINY)
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
    ckpt = WL.parse_distilldift(lora_state(), depth=2)
    WL.merge_lora_qv(model, ckpt.lora)
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
    ckpt = WL.parse_distilldift(lora_state(), depth=2)
    on_the_fly = copy.deepcopy(base)
    for i, block in enumerate(on_the_fly.blocks):
        block.attn.qkv = OnTheFlyLoRA(block.attn.qkv, *ckpt.lora[i])
    merged = copy.deepcopy(base)
    WL.merge_lora_qv(merged, ckpt.lora)
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
    WL.load_base_into(model, state)
    assert torch.equal(model.reg_token, state["register_tokens"])
    assert torch.allclose(model.cls_token, state["cls_token"] + state["pos_embed"][:, 0])
    assert torch.equal(model.pos_embed, state["pos_embed"][:, 1:])
    assert torch.equal(model.blocks[1].ls2.gamma, state["blocks.1.ls2.gamma"])
    # resampled once when built at another size (4x5 grid)
    small = tiny_vit(hw=HW)
    WL.load_base_into(small, state)
    assert small.pos_embed.shape == (1, 20, 32)
    with pytest.raises(TrackerError, match="Unexpected|unexpected"):
        WL.load_base_into(tiny_vit(hw=(84, 84)), {**state, "blocks.0.attn.extra": torch.zeros(1)})
    missing = dict(state)
    del missing["blocks.1.mlp.fc2.bias"]
    with pytest.raises(TrackerError, match="Missing|missing"):
        WL.load_base_into(tiny_vit(hw=(84, 84)), missing)


def test_distilldift_checkpoint_strict_parsing():
    with pytest.raises(TrackerError, match="all 2 blocks"):
        partial = lora_state()
        del partial["model.blocks.1.attn.qkv.linear_b_v.weight"]
        WL.parse_distilldift(partial, depth=2)
    with pytest.raises(TrackerError, match="unexpected key"):
        WL.parse_distilldift({**lora_state(), "optimizer.lr": torch.zeros(1)}, depth=2)
    # a whole-student checkpoint carries the backbone (Meta format, base qkv wrapped at attn.qkv.qkv)
    full = lora_state() | {"model." + k.replace(".attn.qkv.", ".attn.qkv.qkv."): v for k, v in meta_state().items()}
    parsed = WL.parse_distilldift(full, depth=2)
    assert parsed.base is not None and "blocks.0.attn.qkv.weight" in parsed.base


def test_load_model_from_local_files_in_real_formats(tmp_path):
    spec = W.get_spec("distilldift")
    base_path, lora_path = tmp_path / "dinov2_vitb14_reg4_pretrain.pth", tmp_path / "distilldift_us.ckpt"
    torch.save(meta_state(), base_path)
    torch.save(lora_state(), lora_path)
    model = WL.load_model(spec, HW, f"{base_path},{lora_path}", **TINY)
    reference = tiny_vit(hw=HW)
    WL.load_base_into(reference, meta_state())
    c = 32
    assert torch.equal(model.blocks[0].attn.qkv.weight[c : 2 * c], reference.blocks[0].attn.qkv.weight[c : 2 * c])
    assert not torch.equal(model.blocks[0].attn.qkv.weight[:c], reference.blocks[0].attn.qkv.weight[:c])
    # a timm-format safetensors base loads too, and a LoRA for a plain DINOv2 model is refused
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, tmp_path / "model.safetensors")
    plain = WL.load_model(W.get_spec("dinov2-b"), HW, str(tmp_path / "model.safetensors"), **TINY)
    assert torch.equal(plain.blocks[1].mlp.fc1.weight, reference.blocks[1].mlp.fc1.weight)
    with pytest.raises(TrackerError, match="takes no LoRA"):
        WL.load_model(W.get_spec("dinov2-b"), HW, str(lora_path), **TINY)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(TrackerError, match="cannot read"):
        WL.load_model(spec, HW, str(tmp_path / "junk.pth"), **TINY)


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
    WL.merge_lora_qv(reference, WL.parse_distilldift(lora_state(), depth=2).lora)
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    merged = tmp_path / "merged.safetensors"
    save_file(state, merged, metadata={WL.KIND_METADATA: "merged"})
    assert WL.classify(merged)[0] == "merged"
    model = WL.load_model(spec, HW, str(merged), **TINY)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    # the same tensors without the mark are a base, which distilldift completes with its (unavailable) LoRA
    plain = tmp_path / "plain.safetensors"
    save_file(state, plain)
    assert WL.classify(plain)[0] == "base"
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: False)
    with pytest.raises(WeightsUnavailable):
        WL.load_model(spec, HW, str(plain), **TINY)
    lora_path = tmp_path / "distilldift_us.ckpt"
    torch.save(lora_state(), lora_path)
    with pytest.raises(TrackerError, match="already hold their LoRA"):
        WL.load_model(spec, HW, f"{merged},{lora_path}", **TINY)
    with pytest.raises(TrackerError, match="already hold their LoRA"):
        WL.load_model(spec, HW, f"{plain},{merged}", **TINY)
    with pytest.raises(TrackerError, match="two merged weights"):
        WL.load_model(spec, HW, f"{merged},{merged}", **TINY)


# --------------------------------------------------------------------------- every published layout and source

C = TINY["embed_dim"]


def wrapped(meta: dict[str, torch.Tensor], keys=None) -> dict[str, torch.Tensor]:
    """Backbone tensors as the authors' DistilledModel saves them: under ``model.``, base qkv at attn.qkv.qkv."""
    keys = meta if keys is None else keys
    return {"model." + k.replace(".attn.qkv.", ".attn.qkv.qkv."): meta[k] for k in keys}


def head_state(seed: int = 3, hidden: int = 64, out: int = C) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "head.0.weight": torch.randn(hidden, C, generator=g) * 0.2,
        "head.0.bias": torch.randn(hidden, generator=g) * 0.1,
        "head.2.weight": torch.randn(out, hidden, generator=g) * 0.2,
        "head.2.bias": torch.randn(out, generator=g) * 0.1 + 0.1,
    }


def student_file(tmp_path, layout: str, *, head: bool = False) -> str:
    """A DistillDIFT checkpoint in one of the layouts the published files can have."""
    trained = meta_state(seed=2)
    qkv = [k for k in trained if ".attn.qkv." in k]  # what the release code trains besides the LoRA
    state = lora_state()
    if layout in ("whole", "module-whole"):
        state |= wrapped(trained)
    elif layout == "partial":
        state |= wrapped(trained, qkv)
    if head:
        state |= head_state()
    if layout.startswith("module"):
        state = {"module." + k: v for k, v in state.items()}  # accelerate's multi-GPU save_state
    elif layout == "bare":
        state = {k.removeprefix("model."): v for k, v in state.items()}
    path = tmp_path / f"{layout}{'_head' if head else ''}.ckpt"
    torch.save(state, path)
    return str(path)


def reference_features(layout: str, frames: torch.Tensor, *, head: bool = False) -> torch.Tensor:
    """Features of the student built as the authors build it: base, the checkpoint's tensors over it (load
    non-strict), the LoRA computed on the fly beside qkv, the head on the normed patch tokens."""
    model = tiny_vit(hw=HW)
    WL.load_base_into(model, meta_state())
    trained = meta_state(seed=2)
    if layout in ("whole", "module-whole"):
        WL.load_base_into(model, trained)
    elif layout == "partial":
        with torch.no_grad():
            for i, block in enumerate(model.blocks):
                block.attn.qkv.weight.copy_(trained[f"blocks.{i}.attn.qkv.weight"])
                block.attn.qkv.bias.copy_(trained[f"blocks.{i}.attn.qkv.bias"])
    lora = lora_state()
    for i, block in enumerate(model.blocks):
        p = f"model.blocks.{i}.attn.qkv.linear_"
        block.attn.qkv = OnTheFlyLoRA(block.attn.qkv, lora[p + "a_q.weight"], lora[p + "b_q.weight"],
                                      lora[p + "a_v.weight"], lora[p + "b_v.weight"])  # fmt: skip
    featurizer = ViTFeaturizer(model, "ref", HW)
    if not head:
        return featurizer(frames)
    with torch.inference_mode():
        tokens = model.forward_features(featurizer.preprocess(frames))[:, model.num_prefix_tokens :]
        h = head_state()
        x = torch.relu(tokens @ h["head.0.weight"].T + h["head.0.bias"])
        x = torch.relu(x @ h["head.2.weight"].T + h["head.2.bias"])
        return torch.nn.functional.normalize(x.transpose(1, 2).reshape(frames.shape[0], C, *featurizer.grid_hw), dim=1)


FRAMES = torch.randint(0, 256, (2, 60, 75, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("layout", ["lora", "module", "bare", "partial", "whole", "module-whole"])
def test_every_checkpoint_layout_loads_to_the_authors_features(tmp_path, monkeypatch, layout):
    """LoRA only (model./module./bare keys), LoRA + trained qkv (partial), the whole student (with and without
    accelerate's module. prefix): each gives the features of the authors' wrapper on the same tensors."""
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: pytest.fail("network touched"))
    base = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(meta_state(), base)
    ckpt = student_file(tmp_path, "lora" if layout == "lora" else layout)
    want = reference_features(layout, FRAMES)
    model = WL.load_model(W.get_spec("distilldift-ws"), HW, f"{base},{ckpt}", **TINY)
    got = ViTFeaturizer(model, "t", HW)(FRAMES)
    assert got.shape == (2, C, 4, 5)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    if layout.endswith("whole"):  # the whole student needs no base file: the table's base is never fetched
        alone = WL.load_model(W.get_spec("distilldift-ws"), HW, ckpt, **TINY)
        assert torch.allclose(ViTFeaturizer(alone, "t", HW)(FRAMES), want, atol=1e-5)


def test_partial_backbone_is_laid_over_the_base_never_strict_loaded(tmp_path, monkeypatch):
    """A checkpoint with LoRA and some backbone tensors gets the rest from the table's base (here cached),
    tensor by tensor; a tensor the model lacks, or of another shape, is one clear error."""
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: pytest.fail("network touched"))
    files = W.cache_dir() / "files"
    files.mkdir(parents=True)
    torch.save(meta_state(), files / "dinov2_vitb14_reg4_pretrain.pth")
    ckpt = student_file(tmp_path, "partial")
    model = WL.load_model(W.get_spec("distilldift"), HW, ckpt, **TINY)
    assert torch.allclose(ViTFeaturizer(model, "t", HW)(FRAMES), reference_features("partial", FRAMES), atol=1e-5)
    base_only = meta_state()
    assert torch.equal(model.blocks[1].mlp.fc1.weight, base_only["blocks.1.mlp.fc1.weight"])  # from the base
    state = torch.load(ckpt, weights_only=True)
    torch.save({**state, "model.blocks.0.attn.extra": torch.zeros(3)}, tmp_path / "extra.ckpt")
    with pytest.raises(TrackerError, match="'blocks.0.attn.extra' is not part of"):
        WL.load_model(W.get_spec("distilldift"), HW, str(tmp_path / "extra.ckpt"), **TINY)
    torch.save({**state, "model.blocks.0.attn.qkv.qkv.bias": torch.zeros(5)}, tmp_path / "shape.ckpt")
    with pytest.raises(TrackerError, match=r"has shape \(5,\), not \(96,\)"):
        WL.load_model(W.get_spec("distilldift"), HW, str(tmp_path / "shape.ckpt"), **TINY)


def test_supervised_head_is_applied_and_features_stay_unit(tmp_path, monkeypatch):
    """The supervised student's head (head.0, ReLU, head.2, ReLU after the final norm) is applied; the grid
    stays [B, C, h, w] with unit norm; an incomplete or width-changing head is refused in one line."""
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: pytest.fail("network touched"))
    ckpt = student_file(tmp_path, "module-whole", head=True)  # as the Ulm share's 357 MB student would be saved
    model = WL.load_model(W.get_spec("distilldift-s"), HW, ckpt, **TINY)
    got = ViTFeaturizer(model, "t", HW)(FRAMES)
    assert got.shape == (2, C, 4, 5)
    assert torch.allclose(got.norm(dim=1), torch.ones(2, 4, 5), atol=1e-5)
    assert torch.allclose(got, reference_features("module-whole", FRAMES, head=True), atol=1e-5)
    assert not torch.allclose(got, reference_features("module-whole", FRAMES), atol=1e-3)  # the head matters
    state = torch.load(ckpt, weights_only=True)
    del state["module.head.2.bias"]
    torch.save(state, tmp_path / "half_head.ckpt")
    with pytest.raises(TrackerError, match="head must hold") as info:
        WL.load_model(W.get_spec("distilldift-s"), HW, str(tmp_path / "half_head.ckpt"), **TINY)
    assert "\n" not in str(info.value)
    narrow = torch.load(student_file(tmp_path, "lora"), weights_only=True) | head_state(out=16)
    torch.save(narrow, tmp_path / "narrow.ckpt")
    with pytest.raises(TrackerError, match="maps 32 to 16 channels"):
        WL.load_model(W.get_spec("distilldift-s"), HW, str(tmp_path / "narrow.ckpt"), **TINY)


def test_student_with_head_exports_to_onnx(tmp_path, monkeypatch):
    """export_onnx checks the graph against the featurizer (head included) and keeps the channel count."""
    pytest.importorskip("onnxruntime")
    from export.onnx import export_onnx

    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: pytest.fail("network touched"))
    model = WL.load_model(W.get_spec("distilldift-s"), HW, student_file(tmp_path, "whole", head=True), **TINY)
    featurizer = ViTFeaturizer(model, "distilldift-s", HW)
    export_onnx(featurizer, tmp_path / "s.onnx")  # raises when ONNX Runtime disagrees with torch
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"])
    frames = torch.nn.functional.interpolate(FRAMES.permute(0, 3, 1, 2).float(), size=HW, mode="bilinear",
                                             antialias=True).permute(0, 2, 3, 1)  # fmt: skip
    (out,) = session.run(None, {"frames": frames.numpy()})
    assert out.shape == (2, C, 4, 5) and (out >= 0).all()  # the head's final ReLU is in the graph
    assert torch.allclose(torch.from_numpy(out), featurizer(FRAMES), atol=1e-4)


def test_all_sources_failing_give_one_line_naming_each(monkeypatch, capsys):
    """Every variant has the release repository, its mirror and the Ulm share; when all fail, one line names
    each source tried and why."""
    from tracker.apps.cli import main

    def refuse(url, dest, sha256, timeout, git_blob=None):
        raise OSError(f"HTTP Error 404: Not Found for\n{url}")

    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: "cloudstore" not in url and "huggingface" not in url)
    monkeypatch.setattr(W, "_download_url", refuse)
    for name, variant in (("distilldift", "us"), ("distilldift-ws", "ws"), ("distilldift-s", "s")):
        urls = [loc.url for loc in W.get_spec(name).lora.locations]
        assert (
            f"CompVis/distilldift/e21076e8d6f032f6ec461ce0540b496caf5a4aec/eval/checkpoints/distilled_{variant}.ckpt"
            in urls[0]
        )
        assert "joh-schb/distilldift" in urls[1] and urls[2].startswith("https://cloudstore.uni-ulm.de/s/")
        with pytest.raises(WeightsUnavailable) as info:
            W.fetch(W.get_spec(name).lora)
        message = str(info.value)
        assert "\n" not in message and f"tried {len(urls)} sources" in message
        assert all(url in message for url in urls)
        assert "HTTP Error 404" in message and "cloudstore.uni-ulm.de unreachable" in message
    files = W.cache_dir() / "files"  # the base is cached: the command gets as far as the student
    files.mkdir(parents=True)
    torch.save(meta_state(), files / "dinov2_vitb14_reg4_pretrain.pth")
    assert main(["weights", "download", "distilldift-ws"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "distilled_ws.ckpt" in err[0] and "MN7Joo9XcLtXcYs" in err[0]


def test_download_checks_git_blob_ids_and_falls_through_to_the_next_source(monkeypatch):
    """A file that does not match its published git blob id is dropped and the next source is tried."""
    import hashlib
    import io

    good, bad = b"the real checkpoint bytes", b"an error page"
    blob = hashlib.sha1(b"blob %d\0" % len(good) + good).hexdigest()
    served = {"https://a.example/x.ckpt": bad, "https://b.example/x.ckpt": good}
    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: True)
    monkeypatch.setattr(W.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(served[url]))
    source = W.Source(None, tuple(W.Location(u, "x.ckpt", "test", blob) for u in served), "x.ckpt")
    path = W.fetch(source)
    assert path.read_bytes() == good and W.git_blob_id(path) == blob
    assert W.cached_path(source) == path
    path.unlink()
    served["https://b.example/x.ckpt"] = bad
    with pytest.raises(WeightsUnavailable, match="git blob id .* does not match the published") as info:
        W.fetch(source)
    assert str(info.value).count("does not match") == 2 and not list(path.parent.glob("*.part"))
    empty = Path(W.cache_dir()) / "empty"
    empty.write_bytes(b"")
    assert W.git_blob_id(empty) == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"  # `git hash-object` of an empty file


def test_converter_reads_every_layout_and_refuses_what_an_adapter_cannot_hold(tmp_path, monkeypatch):
    """`track distill convert` on accelerate's module. keys gives the published factors; a checkpoint with
    backbone tensors needs --merged (which then gives the checkpoint's features); a head is refused."""
    from tracker.distill import adapter as A

    monkeypatch.setattr(W, "_reachable", lambda url, timeout=5.0: pytest.fail("network touched"))
    factors, _ = A.read_adapter(student_file(tmp_path, "module"))
    assert A.factors_equal(factors, WL.parse_distilldift(lora_state(), depth=2).lora)
    base = tmp_path / "dinov2_vitb14_reg4_pretrain.pth"
    torch.save(meta_state(), base)
    partial = student_file(tmp_path, "partial")
    with pytest.raises(TrackerError, match="carries 4 backbone tensors .* add --merged"):
        A.convert_checkpoint(partial, tmp_path / "p.safetensors")
    merged = tmp_path / "p_merged.safetensors"
    A.convert_checkpoint(
        partial, tmp_path / "p.safetensors", merged=merged, base_weights=str(base), input_size=70, **TINY
    )
    model = WL.load_model(W.get_spec("distilldift"), (70, 70), str(merged), **TINY)  # built at 70
    frames = torch.randint(0, 256, (1, 70, 70, 3), dtype=torch.uint8)
    direct = WL.load_model(W.get_spec("distilldift"), (70, 70), f"{base},{partial}", **TINY)
    got, want = (ViTFeaturizer(m, "m", (70, 70))(frames) for m in (model, direct))
    assert torch.allclose(got, want, atol=1e-5)
    with pytest.raises(TrackerError, match="supervised student's head") as info:
        A.convert_checkpoint(student_file(tmp_path, "module-whole", head=True), tmp_path / "s.safetensors")
    assert "\n" not in str(info.value)
