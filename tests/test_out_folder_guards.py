"""Output folders and files that are inputs are refused before any work: ``track eval --out`` in the data it
reads, ``track batch --out`` in an input frame folder or over an input file, and ``track live``'s default
``--save`` path only where it could be written. One line on stderr, exit code 2, nothing changed or written."""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (symbolic links not followed), with the bytes of its files."""
    return {
        str(p.relative_to(root)): p.read_bytes() if p.is_file() and not p.is_symlink() else None
        for p in sorted(root.rglob("*"))
    }


def track(argv: list[str], cwd: Path) -> SimpleNamespace:
    """``track argv`` run in this process from ``cwd`` (the refusals come before any work: a subprocess each would
    spend its time importing torch), with its exit code and what it wrote to stdout and stderr."""
    from tracker.apps.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse's own errors
                code = exc.code
    finally:
        os.chdir(here)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def refused(argv: list[str], cwd: Path, message: str) -> None:
    """``track argv`` exits 2 with one ``track: error:`` line holding ``message``; nothing under ``cwd`` changed."""
    before = tree(cwd)
    res = track(argv, cwd)
    err = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert len(err) == 1 and err[0].startswith("track: error: ") and message in err[0], err
    assert tree(cwd) == before  # the inputs byte-identical, nothing written beside them


def frames_folder(folder: Path, count: int = 3) -> Path:
    """A few small JPEG frames ``00000.jpg ...`` of a square moving right."""
    folder.mkdir(parents=True)
    for i in range(count):
        frame = np.full((48, 64, 3), 40, np.uint8)
        frame[14:30, 10 + 3 * i : 26 + 3 * i] = (200, 120, 60)
        cv2.imwrite(str(folder / f"{i:05d}.jpg"), frame)
    return folder


def first_mask(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((48, 64), np.uint8)
    mask[14:30, 10:26] = 255
    cv2.imwrite(str(path), mask)
    return path


@pytest.fixture
def data(tmp_path) -> Path:
    """``data/davis`` (DAVIS layout, one 3-frame sequence ``seq``, masks of frames 0 and 2) and ``data/badja``
    (``seq.json``: frames 0 and 2 annotated)."""
    davis = tmp_path / "data" / "davis"
    frames_folder(davis / "JPEGImages" / "480p" / "seq")
    for i in (0, 2):
        first_mask(davis / "Annotations" / "480p" / "seq" / f"{i:05d}.png")
    badja = tmp_path / "data" / "badja"
    badja.mkdir()
    joints = [[40.0 + j, 50.0 + j] for j in range(37)]  # [row, col] in 1920x1080: inside the 64x48 frames
    entries = [{"image_path": f"seq/{i:05d}.jpg", "joints": joints, "visibility": [True] * 37} for i in (0, 2)]
    (badja / "seq.json").write_text(json.dumps(entries))
    (tmp_path / "link").symlink_to("data/davis/JPEGImages/480p/seq")
    return tmp_path / "data"


EVAL = ["--model", "sift", "--device", "cpu"]
DAVIS = ["eval", "davis", "--root", "data/davis", *EVAL]
BADJA = ["eval", "badja", "--root", "data/badja", "--davis-root", "data/davis", *EVAL]


@pytest.mark.parametrize(
    "argv, out, message",
    [
        (
            DAVIS,
            "data/davis/JPEGImages/480p/seq",
            "--out data/davis/JPEGImages/480p/seq is in data/davis/JPEGImages, data of the --root folder data/davis; "
            "the report would be written into the data: choose another folder",
        ),
        (DAVIS, "data/davis/Annotations", "is in data/davis/Annotations, data of the --root folder data/davis"),
        (DAVIS, "link", "--out link is in data/davis/JPEGImages"),  # a symbolic link to the frames folder
        (DAVIS, "link/new", "--out link/new is in data/davis/JPEGImages"),  # a new folder in it
        (DAVIS, "data/davis", "--out data/davis is the --root data folder data/davis"),
        (BADJA, "data/badja", "--out data/badja is the --root data folder data/badja"),
        (BADJA, "data/badja/results", "--out data/badja/results is in the --root folder data/badja"),
        (BADJA, "data/davis/Annotations/480p/seq", "is in data/davis/Annotations, data of the --davis-root folder"),
    ],
)
def test_eval_refuses_an_out_folder_in_its_input_data(tmp_path, data, argv, out, message):
    refused([*argv, "--out", out], tmp_path, message=message)


def test_eval_refuses_a_report_file_that_is_the_tapvid_pickle(tmp_path):
    video = np.repeat(np.random.default_rng(0).integers(0, 255, (1, 32, 32, 3), np.uint8), 3, 0)
    item = {"video": video, "points": np.full((1, 3, 2), 0.5), "occluded": np.zeros((1, 3), bool)}
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "tapvid_sift.json").write_bytes(pickle.dumps({"v": item}))  # a pickle by a report's name
    argv = ["eval", "tapvid", "--pkl", "o/tapvid_sift.json", *EVAL, "--out", "o"]
    refused(argv, tmp_path, message="the report (from --out o) o/tapvid_sift.json is the --pkl file")


def test_eval_writes_beside_the_data_of_a_davis_root(tmp_path, data):
    # a DAVIS root's own folders other than JPEGImages/ and Annotations/ are not data: results may go there
    before = tree(data / "davis" / "JPEGImages"), tree(data / "davis" / "Annotations"), tree(data / "badja")
    res = track([*BADJA, "--out", "data/davis/results"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (data / "davis" / "results" / "badja_sift.json").is_file()
    assert (tree(data / "davis" / "JPEGImages"), tree(data / "davis" / "Annotations"), tree(data / "badja")) == before


BATCH = ["--model", "sift", "--device", "cpu", "--workers", "1", "--quiet"]


@pytest.fixture
def frames(tmp_path) -> Path:
    """``frames/seq`` (3 JPEG frames), the symbolic link ``seq_link`` to it, and ``p.json`` (2 points)."""
    frames_folder(tmp_path / "frames" / "seq")
    (tmp_path / "seq_link").symlink_to("frames/seq")
    (tmp_path / "p.json").write_text(json.dumps({"points": [[18, 22], [40, 30]]}))
    return tmp_path / "frames"


@pytest.mark.parametrize(
    "inputs, out, message",
    [
        ("frames/seq", "frames/seq", "--out frames/seq is the frame folder {frames}/seq of video seq"),
        ("frames/seq", "frames/seq/results", "--out frames/seq/results is in the frame folder {frames}/seq"),
        ("frames", "seq_link", "--out seq_link is the frame folder {frames}/seq of video seq"),  # by another name
        # the folder holding the frame folders: each video's outputs would go into its own frames
        ("frames", "frames", "--out frames: the tracks of seq frames/seq/tracks.json would be written into the frame"),
    ],
)
def test_batch_refuses_an_out_folder_in_an_input_frame_folder(tmp_path, frames, inputs, out, message):
    argv = ["batch", inputs, "--points", "p.json", "--out", out, *BATCH]
    refused(argv, tmp_path, message=message.format(frames=frames))


def manifest(path: Path, *lines: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_batch_refuses_an_output_file_that_is_an_input_file(tmp_path, frames):
    (tmp_path / "res" / "a").mkdir(parents=True)
    (tmp_path / "res" / "a" / "tracks.json").write_bytes((tmp_path / "p.json").read_bytes())
    # a video's points file is its own tracks output (the tracks of a run before, as points)
    manifest(tmp_path / "m.jsonl", {"video": "frames/seq", "name": "a", "points": "res/a/tracks.json"})
    message = "the tracks of a (from --out res) res/a/tracks.json is the points file of a; it would be overwritten"
    refused(["batch", "m.jsonl", "--out", "res", *BATCH], tmp_path, message=message)
    # one video's overlay is another's input video (by another name: a symbolic link)
    (tmp_path / "res" / "b").mkdir()
    (tmp_path / "clip.mp4").write_bytes(b"a video")
    (tmp_path / "res" / "b" / "overlay.mp4").symlink_to("../../clip.mp4")
    lines = [{"video": "frames/seq", "name": "b", "points": "p.json"}, {"video": "clip.mp4", "points": "p.json"}]
    manifest(tmp_path / "m2.jsonl", *lines)
    message = "the overlay of b (from --out res) res/b/overlay.mp4 is the video of clip; it would be overwritten"
    refused(["batch", "m2.jsonl", "--out", "res", "--overlay", *BATCH], tmp_path, message=message)


def test_batch_refuses_a_results_manifest_that_is_the_input_manifest(tmp_path, frames):
    manifest(tmp_path / "res" / "manifest.jsonl", {"video": "../frames/seq", "points": "../p.json"})
    message = "the results manifest (from --out res) res/manifest.jsonl is the input manifest"
    refused(["batch", "res/manifest.jsonl", "--out", "res", *BATCH], tmp_path, message=message)


def test_batch_refuses_a_mask_in_the_masks_folder_it_writes(tmp_path, frames):
    mask = first_mask(tmp_path / "res" / "a" / "masks" / "00000.png")
    manifest(tmp_path / "m.jsonl", {"video": "frames/seq", "name": "a", "mask": str(mask)})
    message = f"--out res: the masks of a res/a/masks holds the mask of a {mask}; writing the masks would overwrite it"
    refused(["batch", "m.jsonl", "--out", "res", *BATCH], tmp_path, message=message)


LIVE = ["live", "--headless", "--every-frame", "--model", "sift", "--device", "cpu", "--camera", "clip.mp4"]


@pytest.fixture
def clip(tmp_path) -> Path:
    from tracker.synthetic import moving_objects, write_video

    path = tmp_path / "clip.mp4"
    write_video(str(path), moving_objects(num_frames=6, size=(96, 128), num_objects=1, seed=0).frames, fps=25)
    return path


def test_live_runs_a_script_named_like_the_default_save_that_it_never_writes(tmp_path, clip):
    # headless, no key s in the script, no --save: live_tracks.json (the default --save) is never written
    script = tmp_path / "live_tracks.json"
    script.write_text(json.dumps([{"frame": 0, "click": [40, 40]}, {"frame": 2, "key": "p"}]))
    before = tree(tmp_path)
    res = track([*LIVE, "--script", "live_tracks.json"], tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert tree(tmp_path) == before


def test_live_refuses_a_script_named_like_the_default_save_when_it_saves(tmp_path, clip):
    # key s in the script writes the default --save: over the script itself
    script = tmp_path / "live_tracks.json"
    script.write_text(json.dumps([{"frame": 0, "click": [40, 40]}, {"frame": 2, "key": "s"}]))
    message = "the default --save live_tracks.json is the --script events file; it would be overwritten"
    refused([*LIVE, "--script", "live_tracks.json"], tmp_path, message=message)
