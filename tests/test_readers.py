"""Video readers: OpenCV (needs nothing), torchcodec and decord where installed (skipped otherwise), `--reader`."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tracker import TrackerError
from tracker.io import video as V
from tracker.synthetic import moving_objects, write_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("readers") / "clip.mp4"
    write_video(str(path), moving_objects(num_frames=20, size=(64, 96)).frames)
    with V.open_video(path, reader="opencv") as source:
        frames = np.stack(list(source))
    return path, frames


def test_opencv_reads_every_frame(clip):
    path, frames = clip
    assert frames.shape == (20, 64, 96, 3) and frames.dtype == np.uint8
    with V.open_video(path, reader="opencv") as source:
        assert isinstance(source, V.OpenCVVideo) and source.info.num_frames == 20


def installed(name: str) -> bool:
    if importlib.util.find_spec(name) is None:
        return False
    try:
        if name == "torchcodec":
            from torchcodec.decoders import VideoDecoder  # noqa: F401 - loads FFmpeg's libraries
        return True
    except Exception:  # noqa: BLE001 - installed but its FFmpeg libraries do not load
        return False


@pytest.mark.parametrize("reader", ["torchcodec", "decord"])
def test_other_readers_decode_what_opencv_decodes(clip, reader):
    if not installed(reader):
        pytest.skip(f"{reader} is not installed (or cannot load)")
    path, frames = clip
    with V.open_video(path, reader=reader) as source:
        assert type(source).__name__.lower().startswith(reader)
        assert (source.info.width, source.info.height) == (96, 64)
        got = np.stack([np.asarray(f) for f in source])
    assert got.shape == frames.shape
    # the same stream through two FFmpeg builds: equal up to the YUV->RGB conversion's rounding
    assert np.abs(got.astype(int) - frames.astype(int)).mean() < 2.0


def _fds_on(path) -> int:
    """Open file descriptors of this process on ``path`` (Linux: /proc/self/fd)."""
    import os

    fd_dir = Path("/proc/self/fd")
    target = os.path.realpath(path)
    return sum(1 for fd in fd_dir.iterdir() if os.path.realpath(fd) == target) if fd_dir.is_dir() else -1


@pytest.mark.parametrize("reader", ["opencv", "torchcodec", "decord"])
def test_close_releases_the_file(clip, reader):
    """A long-lived process (track serve, batch workers) opens many videos: close() lets go of each file."""
    if reader != "opencv" and not installed(reader):
        pytest.skip(f"{reader} is not installed (or cannot load)")
    path, _ = clip
    if _fds_on(path) < 0:
        pytest.skip("no /proc/self/fd here")
    source = V.open_video(path, reader=reader)
    next(iter(source))
    assert _fds_on(path) >= 1  # the decoder holds the file while open
    source.close()
    import gc

    gc.collect()
    assert _fds_on(path) == 0


def test_auto_takes_torchcodec_when_it_works_else_opencv(clip):
    path, _ = clip
    with V.open_video(path) as source:
        want = V.TorchcodecVideo if installed("torchcodec") else V.OpenCVVideo
        assert isinstance(source, want)


def test_a_reader_that_is_missing_or_unknown_is_one_error_line(clip, monkeypatch, tmp_path):
    path, _ = clip
    with pytest.raises(TrackerError, match="--reader must be one of auto, opencv, torchcodec, decord"):
        V.open_video(path, reader="ffmpeg")
    import builtins

    real_import = builtins.__import__

    def no_import(name, *args, **kwargs):
        if name.split(".")[0] in ("torchcodec", "decord"):
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_import)
    for reader, hint in (("torchcodec", "pip install torchcodec"), ("decord", "pip install '.[decord]'")):
        with pytest.raises(TrackerError, match=f"--reader {reader}: not installed") as info:
            V.open_video(path, reader=reader)
        assert hint in str(info.value) and "\n" not in str(info.value)
    with V.open_video(path) as source:  # auto without either: OpenCV
        assert isinstance(source, V.OpenCVVideo)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 100)
    with pytest.raises(TrackerError, match="cannot decode .* with opencv"):
        V.open_video(junk, reader="opencv")


def test_torchcodec_without_ffmpeg_is_a_reason_not_a_crash(clip, monkeypatch):
    """torchcodec installed but FFmpeg's libraries missing raises RuntimeError at import: one line, and auto
    moves on to OpenCV."""
    import builtins
    import sys

    path, _ = clip
    real_import = builtins.__import__

    def broken(name, *args, **kwargs):
        if name.split(".")[0] == "torchcodec":
            raise RuntimeError("Could not load libtorchcodec. Likely causes:\n  1. FFmpeg is not properly installed")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torchcodec.decoders", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(
        TrackerError, match="--reader torchcodec: torchcodec cannot load FFmpeg: Could not load"
    ) as info:
        V.open_video(path, reader="torchcodec")
    assert "\n" not in str(info.value)
    with V.open_video(path) as source:
        assert isinstance(source, V.OpenCVVideo)


def test_decord_is_not_a_core_dependency():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("decord") for d in project["dependencies"])
    assert any(d.startswith("decord") for d in project["optional-dependencies"]["decord"])


def test_reader_option_on_the_command_line(clip, tmp_path, capsys):
    import json

    from tracker.apps.cli import main
    from tracker.io.formats import read_tracks

    path, _ = clip
    (tmp_path / "p.json").write_text(json.dumps([[30.0, 30.0]]))
    argv = [str(path), "--points", str(tmp_path / "p.json"), "--no-video", "--no-progress", "--model", "sift"]
    out = tmp_path / "t.npz"
    assert main([*argv, "--reader", "opencv", "--out-tracks", str(out)]) == 0
    assert read_tracks(out)["x"].shape[0] == 20
    capsys.readouterr()
    assert main([*argv, "--reader", "ffmpeg", "--out-tracks", str(tmp_path / "u.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--reader must be one of" in err and "\n" not in err and not (tmp_path / "u.npz").exists()
