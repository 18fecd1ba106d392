"""``track --model hedlin --points``: a short clip end to end on a tiny random UNet of SD-1.x's layout (through
``--weights random``, the real path with the architecture's widths shrunk), the points-only rule, the embedding
cache across runs, and the missing extra."""

import json
import sys

import cv2
import numpy as np
import pytest

from tracker import diffusion_features as D
from tracker import hedlin_tracker as HT
from tracker.hedlin import HedlinConfig, HedlinMatcher
from tracker.io.formats import read_tracks
from tracker.synthetic import moving_objects, write_video

pytest.importorskip("diffusers")

# SD's layout (4 levels, 2 resnets per down block, cross-attention in the first three down / last three up blocks)
# with tiny widths: the kept cross-attention maps are listed as for SD, so the paper's layers 5..8 exist.
TINY_UNET = dict(
    sample_size=8, block_out_channels=(8, 8, 16, 16), attention_head_dim=2, cross_attention_dim=16, norm_num_groups=4
)
TINY_VAE = dict(block_out_channels=(4, 4, 4, 4), layers_per_block=1, norm_num_groups=2)
CHEAP = HedlinConfig(steps=2, restarts=1, crops=4)  # the paper's layers, timesteps and crops; fewer passes


def use_tiny_sd(monkeypatch, tmp_path) -> None:
    """SD-1.5's architecture at the tiny widths above, the cheap config, a fresh cache under ``tmp_path``."""
    unet, vae = D.ARCHITECTURES["sd-1.5"]
    monkeypatch.setitem(D.ARCHITECTURES, "sd-1.5", ({**unet, **TINY_UNET}, {**vae, **TINY_VAE}))
    monkeypatch.setattr(HT, "CONFIG", CHEAP)
    monkeypatch.setenv("TRACKER_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    use_tiny_sd(monkeypatch, tmp_path)
    calls = []
    optimise = HedlinMatcher.optimise
    monkeypatch.setattr(HedlinMatcher, "optimise", lambda self, *a: calls.append(a[1]) or optimise(self, *a))
    return calls


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    write_video(str(folder / "clip.mp4"), moving_objects(num_frames=4, size=(96, 128), seed=0).frames)
    (folder / "points.json").write_text(json.dumps([[40.0, 50.0], [70.0, 60.0]]))
    return folder


def _track(clip, out, *extra):
    from tracker.apps import cli

    argv = [str(clip / "clip.mp4"), "--model", "hedlin", "--weights", "random", "--size", "64", "--out-tracks",
            str(out), "--no-video", "--no-progress", "--device", "cpu", *extra]  # fmt: skip
    return cli.main(argv)


def test_hedlin_end_to_end_through_track_and_the_cache_is_reused(tiny, clip, tmp_path, capsys):
    out = tmp_path / "t.npz"
    assert _track(clip, out, "--points", str(clip / "points.json")) == 0, capsys.readouterr().err
    tracks = read_tracks(out)
    assert tracks["x"].shape == (4, 2) and np.isfinite(tracks["x"]).all() and np.isfinite(tracks["y"]).all()
    assert np.allclose(tracks["x"][0], [40.0, 70.0]) and np.allclose(tracks["y"][0], [50.0, 60.0])
    assert tracks["visible"][0].all() and np.allclose(tracks["score"][0], 1.0)
    assert ((tracks["x"] >= -0.5) & (tracks["x"] <= 127.5) & (tracks["y"] >= -0.5) & (tracks["y"] <= 95.5)).all()
    with np.load(out) as data:
        meta = json.loads(str(data["meta"]))
    assert meta["model"] == "hedlin" and meta["input_size"] == [64, 64] and meta["grid_size"] == [4, 4]
    assert meta["match"]["steps"] == CHEAP.steps
    assert len(tiny) == 2  # one optimisation per point
    assert len(list((tmp_path / "cache" / "hedlin").glob("*.safetensors"))) == 2

    again = tmp_path / "again.npz"
    assert _track(clip, again, "--points", str(clip / "points.json")) == 0, capsys.readouterr().err
    assert len(tiny) == 2  # the second run read both embeddings from the cache
    second = read_tracks(again)
    assert np.array_equal(second["x"], tracks["x"]) and np.array_equal(second["y"], tracks["y"])


def test_a_later_query_frame_starts_there(tiny, clip, tmp_path, capsys):
    points = tmp_path / "late.json"
    points.write_text(json.dumps([{"x": 20.0, "y": 30.0, "frame": 2}]))
    assert _track(clip, tmp_path / "t.json", "--points", str(points)) == 0, capsys.readouterr().err
    tracks = read_tracks(tmp_path / "t.json")
    assert np.isnan(tracks["x"][:2]).all() and not tracks["visible"][:2].any()
    assert np.allclose(tracks["x"][2], 20.0) and np.isfinite(tracks["x"][3]).all()


@pytest.mark.parametrize("mode", ["--mask", "--colormap", "--edit", "--grid"])
def test_dense_modes_are_refused_in_one_line(mode, clip, tmp_path, capsys):
    value = {"--mask": "m.png", "--colormap": "coords", "--edit": "e.png", "--grid": "4"}[mode]
    assert _track(clip, tmp_path / "t.json", mode, value) == 2
    err = capsys.readouterr().err
    assert err == "track: error: hedlin tracks points only; use --points\n"


def test_missing_extra_bad_size_and_dense_use_are_one_line(monkeypatch, clip, tmp_path, capsys):
    from tracker import create_featurizer
    from tracker.errors import TrackerError

    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the `train` extra were not installed
    assert _track(clip, tmp_path / "t.json", "--points", str(clip / "points.json")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[train]'" in err
    monkeypatch.delitem(sys.modules, "diffusers")
    assert _track(clip, tmp_path / "t.json", "--points", str(clip / "points.json"), "--size", "96x64") == 2
    assert "square and a multiple of 64" in capsys.readouterr().err
    image = tmp_path / "ref.png"
    cv2.imwrite(str(image), np.zeros((96, 128, 3), np.uint8))
    assert _track(clip, tmp_path / "t.json", "--points", str(clip / "points.json"), "--reference", str(image)) == 2
    assert (
        capsys.readouterr().err
        == "track: error: hedlin does not take --reference: its points are given on a frame of the video\n"
    )
    with pytest.raises(TrackerError, match="not a dense featurizer"):
        create_featurizer("hedlin", (96, 128), weights="random")


def test_a_missing_weights_folder_with_a_slash_is_one_line_without_a_hub_probe(clip, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(D, "_hub_reachable", lambda *a: pytest.fail("probed the hub for a local folder"))
    for name in ("missing/", "missing"):
        assert _track(clip, tmp_path / "t.json", "--points", str(clip / "points.json"), "--weights", name) == 2
        err = capsys.readouterr().err
        assert err == f"track: error: --weights: folder not found: {name} (a diffusers folder with unet/, vae/)\n"


def test_building_the_tracker_logs_nothing_and_keeps_diffusers_verbosity(tiny):
    import logging

    from diffusers.utils import logging as dlog

    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("diffusers")
    logger.addHandler(handler)
    before = dlog.get_verbosity()
    try:
        HT.create_hedlin_tracker((96, 128), size="64", weights="random", precision="fp32")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
    assert dlog.get_verbosity() == before


def test_the_backend_names_the_precision_as_given(tiny, clip, tmp_path, capsys):
    out = tmp_path / "t.json"
    assert _track(clip, out, "--points", str(clip / "points.json"), "--precision", "bf16") == 0
    assert "torch bf16" in capsys.readouterr().err
    assert json.loads(out.read_text())["backend"] == "torch bf16"


def test_weights_that_are_not_a_diffusers_folder_say_what_hedlin_takes(clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(HT, "_load_unet_vae", lambda *a: pytest.fail("tried to load"))
    (tmp_path / "empty").mkdir()
    takes = "hedlin's --weights takes one diffusers folder with unet/ and vae/ (Stable Diffusion v1-4's) or 'random'"
    for weights, message in (
        (
            str(clip / "points.json"),
            f"--weights {clip / 'points.json'} is a file; {takes} (query points go in --points)",
        ),
        (str(tmp_path / "empty"), f"--weights {tmp_path / 'empty'} has no unet/ or vae/; {takes}"),
        ("a,b", f"--weights a,b: {takes}"),
    ):
        assert _track(clip, tmp_path / "t.json", "--points", str(clip / "points.json"), "--weights", weights) == 2
        assert capsys.readouterr().err == f"track: error: {message}\n"
