"""Faults in the inputs and outputs of ``track``: bad points JSON, cut or odd-sized videos, broken frame folders,
full disks, unfinished encodes, SIGTERM, stale temporary files, fsync.

Command-line cases run ``python -m tracker.apps.cli`` in a subprocess as a user would (see test_cli_errors.py for
the plain bad-input cases); the faults that cannot be produced from outside (an encoder that fails, ``ENOSPC``
in one write) are injected in-process.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tracker.errors import TrackerError
from tracker.io import atomic, video
from tracker.io.formats import MAX_POINTS, points_from_json_text
from tracker.synthetic import moving_objects, write_video

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tracker.apps.cli"]
SIZE = (64, 96)  # (height, width)
TIMEOUT = 180
POINTS = [[30.0, 25.0], [60.0, 40.0]]


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TRACKER_CACHE"] = str(cache)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _track(folder: Path, *args: str) -> subprocess.CompletedProcess:
    (folder / "points.json").write_text(json.dumps(POINTS))
    argv = [*CLI, *args, "--points", "points.json", "--model", "sift", "--no-progress"]
    return subprocess.run(
        argv, cwd=folder, env=_env(folder / ".cache"), capture_output=True, text=True, timeout=TIMEOUT
    )


def _describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stderr\n{proc.stderr}"


def _lines(stderr: str) -> list[str]:
    """stderr's lines less the informational ``track: note:`` lines (e.g. that sift is the weight-free fallback)."""
    return [line for line in stderr.splitlines() if not line.startswith("track: note: ")]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name != ".cache")


# --------------------------------------------------------------------------- points JSON (what serve can call too)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("[[1" + "0" * 400 + ", 5]]", "401 digits"),  # 1e400 as an integer: too large for a float
        ("[[" + "9" * 5000 + ", 5]]", "5000 digits"),  # past Python's int-to-str digit limit
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # json's recursion limit
        ("[" * 30 + "]" * 30, "nested too deeply"),  # parses, but deeper than any points file
        ('{"points": [{"x": 1, "y": 2, "frame": ' + "1" * 30 + "}]}", "30 digits"),
        ("[[1e400, 5]]", "not a finite number"),
        ("[[NaN, 5]]", "not a finite number"),
        (json.dumps([[1.0, 1.0]] * (MAX_POINTS + 1)), f"at most {MAX_POINTS}"),
        (b"\xff\xfe[[1, 2]]", "UTF-8"),
    ],
)
def test_bad_points_json_is_one_tracker_error(text, needle: str) -> None:
    with pytest.raises(TrackerError) as info:
        points_from_json_text(text, "request body")
    message = str(info.value)
    assert needle in message and message.startswith("request body") and "\n" not in message, message


def test_points_json_at_the_maximum_parses() -> None:
    queries = points_from_json_text(json.dumps({"points": [{"x": 3, "y": 4.5, "frame": 2}] + [[1, 2]] * 9_999}))
    assert len(queries) == MAX_POINTS == 10_000
    assert queries.xy[0].tolist() == [3.0, 4.5] and int(queries.frame[0]) == 2


# --------------------------------------------------------------------------- videos


def _faststart(src: Path, dst: Path) -> None:
    """Rewrite an mp4 with its index (moov) before the media data, as ``ffmpeg -movflags +faststart`` does."""
    data = src.read_bytes()
    boxes, offset = [], 0
    while offset < len(data):
        size, kind = struct.unpack(">I4s", data[offset : offset + 8])
        boxes.append((kind, data[offset : offset + size]))
        offset += size
    moov = bytearray(next(body for kind, body in boxes if kind == b"moov"))
    shift = len(moov)

    def walk(start: int, end: int) -> None:
        while start < end:
            size, kind = struct.unpack(">I4s", moov[start : start + 8])
            if kind in (b"trak", b"mdia", b"minf", b"stbl"):
                walk(start + 8, start + size)
            elif kind == b"stco":  # chunk offsets move by the index's size
                for i in range(struct.unpack(">I", moov[start + 12 : start + 16])[0]):
                    at = start + 16 + 4 * i
                    struct.pack_into(">I", moov, at, struct.unpack(">I", moov[at : at + 4])[0] + shift)
            elif kind == b"co64":
                raise AssertionError("64-bit chunk offsets: not expected from OpenCV at this size")
            start += size

    walk(8, len(moov))
    head = [body for kind, body in boxes if kind == b"ftyp"]
    rest = [body for kind, body in boxes if kind not in (b"ftyp", b"moov")]
    dst.write_bytes(b"".join([*head, bytes(moov), *rest]))


def test_cut_faststart_mp4_warns_once_without_decoder_noise(tmp_path: Path) -> None:
    frames = 60
    write_video(str(tmp_path / "full.mp4"), moving_objects(num_frames=frames, size=SIZE).frames)
    _faststart(tmp_path / "full.mp4", tmp_path / "fast.mp4")
    cap = cv2.VideoCapture(str(tmp_path / "fast.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == frames  # the rewrite is a valid faststart file
    cap.release()
    data = (tmp_path / "fast.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])

    proc = _track(tmp_path, "cut.mp4", "--out-tracks", "t.json", "--no-video", "--backend", "torch")
    assert proc.returncode == 0, _describe(proc)
    noise = [line for line in proc.stderr.splitlines() if not line.startswith("track: ")]
    assert not noise, f"decoder noise on stderr\n{_describe(proc)}"
    lines = _lines(proc.stderr)
    warnings = [line for line in lines if line.startswith("track: warning: ")]
    doc = json.loads((tmp_path / "t.json").read_text())
    done = doc["num_frames_tracked"]
    assert 1 <= done < frames
    assert len(warnings) == 1 and f"decoded {done} of the {frames} frames" in warnings[0], _describe(proc)
    assert "cut.mp4" in warnings[0]
    assert doc["warnings"] == [warnings[0].removeprefix("track: warning: ")]
    assert len(lines) == 2 and lines[-1].startswith("track: done: "), _describe(proc)


@pytest.mark.parametrize("width, height", [(641, 479), (96, 64)])
def test_overlay_video_keeps_the_input_size(tmp_path: Path, width: int, height: int) -> None:
    frames = np.full((4, height, width, 3), 30, np.uint8)
    frames[:, :, -1] = 230  # a bright last column and row (luma: not blurred by 4:2:0 chroma subsampling),
    frames[:, -1, :] = 230  # lost when the encoder's size is the frame's cropped to even sides
    writer = video.AtomicVideoWriter(tmp_path / "o.mp4", 25.0, (width, height))
    for frame in frames:
        writer.write(frame)
    writer.close()
    assert _temps(tmp_path) == []
    with video.open_video(tmp_path / "o.mp4") as source:
        assert (source.info.width, source.info.height) == (width, height)
        back = np.stack(list(source))
    assert back.shape == frames.shape
    assert back[:, 2:-2, -1].mean() > 180 and back[:, -1, 2:-2].mean() > 180  # the bright edges are there
    assert back[:, 2:-2, -3].mean() < 80 and back[:, -3, 2:-2].mean() < 80  # and only there


def test_overlay_of_an_odd_sized_video_through_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "frames").mkdir()
    for i in range(3):  # 97x65 PNG frames: an OpenCV-written mp4 would itself be cropped to even sides
        cv2.imwrite(str(tmp_path / "frames" / f"{i:05d}.png"), np.full((65, 97, 3), 40 + 20 * i, np.uint8))
    proc = _track(tmp_path, "frames", "--out-tracks", "t.json", "--out-video", "o.mp4", "--backend", "torch")
    assert proc.returncode == 0, _describe(proc)
    with video.open_video(tmp_path / "o.mp4") as source:
        assert (source.info.width, source.info.height, source.info.num_frames) == (97, 65, 3)
    assert _temps(tmp_path) == []


def _frames_folder(folder: Path, names: list[str]) -> None:
    folder.mkdir()
    clip = moving_objects(num_frames=len(names), size=SIZE).frames
    for name, frame in zip(names, clip, strict=True):
        cv2.imwrite(str(folder / name), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))


def test_frame_folder_with_a_gap_warns_naming_the_file(tmp_path: Path) -> None:
    _frames_folder(tmp_path / "frames", [f"{i:05d}.jpg" for i in (0, 1, 2, 3, 5, 6)])
    proc = _track(tmp_path, "frames", "--out-tracks", "t.json", "--no-video", "--backend", "torch")
    assert proc.returncode == 0, _describe(proc)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("track: warning: ")]
    assert len(warnings) == 1 and "00004.jpg" in warnings[0] and "00005.jpg is frame 4" in warnings[0], _describe(proc)
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["num_frames_tracked"] == 6 and doc["warnings"] == [warnings[0].removeprefix("track: warning: ")]


def test_contiguous_frame_folder_has_no_warning(tmp_path: Path) -> None:
    _frames_folder(tmp_path / "frames", [f"{i:05d}.jpg" for i in range(4)])
    with video.open_video(tmp_path / "frames") as source:
        assert source.warnings == [] and len(list(source)) == 4


def test_truncated_jpeg_in_a_folder_stops_the_run_naming_it(tmp_path: Path) -> None:
    """It decoded as a half-grey frame and was tracked (exit 0); now the run stops there, keeping frames 0..2."""
    _frames_folder(tmp_path / "frames", [f"{i:05d}.jpg" for i in range(6)])
    data = (tmp_path / "frames" / "00003.jpg").read_bytes()
    (tmp_path / "frames" / "00003.jpg").write_bytes(data[: len(data) // 2])
    proc = _track(tmp_path, "frames", "--out-tracks", "t.json", "--no-video", "--backend", "torch")
    lines = _lines(proc.stderr)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, _describe(proc)
    assert len(lines) == 1 and lines[0].startswith("track: error: "), _describe(proc)
    assert "00003.jpg" in lines[0] and "truncated" in lines[0] and "kept 3 finished frames" in lines[0], _describe(proc)
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["num_frames_tracked"] == 3 and doc["status"] == "failed"


def test_truncated_png_frame_is_refused(tmp_path: Path) -> None:
    _frames_folder(tmp_path / "frames", [f"{i:05d}.png" for i in range(3)])
    data = (tmp_path / "frames" / "00001.png").read_bytes()
    (tmp_path / "frames" / "00001.png").write_bytes(data[: len(data) // 2])
    with video.open_video(tmp_path / "frames") as source, pytest.raises(TrackerError, match="00001.png"):
        list(source)


def test_jpeg_with_data_after_its_end_marker_is_accepted(tmp_path: Path) -> None:
    _frames_folder(tmp_path / "frames", [f"{i:05d}.jpg" for i in range(2)])
    with open(tmp_path / "frames" / "00001.jpg", "ab") as f:
        f.write(b"trailing data some cameras append")
    with video.open_video(tmp_path / "frames") as source:
        assert len(list(source)) == 2


# --------------------------------------------------------------------------- unfinished videos, full disks


class _BrokenEncoder:
    """Stands in for cv2.VideoWriter on a full disk: it opens, takes frames, and leaves media data but no index."""

    def __init__(self, path, *args):
        self.path = path
        Path(path).write_bytes(struct.pack(">I4s", 8, b"mdat"))

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def write(self, frame) -> None:
        with open(self.path, "ab") as f:
            f.write(frame.tobytes()[:64])

    def release(self) -> None:
        pass


def test_unfinished_video_is_never_published(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "o.mp4").write_bytes(b"previous output")
    monkeypatch.setattr(video.cv2, "VideoWriter", _BrokenEncoder)
    writer = video.AtomicVideoWriter(tmp_path / "o.mp4", 25.0, (96, 64))
    writer.write(np.zeros((64, 96, 3), np.uint8))
    with pytest.raises(TrackerError, match="cannot finish video .*o.mp4.*moov"):
        writer.close()
    assert (tmp_path / "o.mp4").read_bytes() == b"previous output"
    assert _temps(tmp_path) == []


def test_atomic_write_fsyncs_before_rename_and_cleans_up_on_enospc(tmp_path: Path, monkeypatch) -> None:
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    atomic.atomic_write(tmp_path / "t.json", b"{}")
    assert (tmp_path / "t.json").read_bytes() == b"{}"
    assert events[:2] == ["fsync", "replace"], events

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        atomic.atomic_write(tmp_path / "t.json", b"new")
    assert (tmp_path / "t.json").read_bytes() == b"{}" and _temps(tmp_path) == []


def test_full_disk_is_one_line_saying_what_was_kept(tmp_path: Path, monkeypatch, capsys) -> None:
    """In-process: writing the tracks fails with ENOSPC and the encoder leaves no index."""
    from tracker.apps import cli
    from tracker.io import formats

    write_video(str(tmp_path / "clip.mp4"), moving_objects(num_frames=4, size=SIZE).frames)
    (tmp_path / "points.json").write_text(json.dumps(POINTS))

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(formats, "atomic_write", full)
    monkeypatch.setattr(video.cv2, "VideoWriter", _BrokenEncoder)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["clip.mp4", "--points", "points.json", "--model", "sift", "--no-progress", "--backend", "torch",
                     "--out-tracks", "t.json", "--out-video", "o.mp4"])  # fmt: skip
    err = capsys.readouterr().err
    lines = _lines(err)
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("track: error: "), err
    assert "t.json" in lines[0] and "No space left" in lines[0] and "o.mp4" in lines[0], err
    assert "nothing written" in lines[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4", "points.json"]


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True,
                       capture_output=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot mount a tmpfs here (needs root and the permission to mount)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tmpfs")
def test_real_full_disk(tmp_path: Path) -> None:
    """A real 64 KiB tmpfs: the overlay video does not fit (then the tracks do not either)."""
    noise = np.random.default_rng(0).integers(0, 255, (10, 128, 192, 3), dtype=np.uint8)  # ~160 KB as mp4v
    write_video(str(tmp_path / "noise.mp4"), noise)
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "64k")
    try:
        # only the video on the full disk: the tracks are kept, no unplayable o.mp4 is moved into place
        proc = _track(tmp_path, "noise.mp4", "--out-tracks", "t.json", "--out-video", "disk/o.mp4")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, _describe(proc)
        last = proc.stderr.splitlines()[-1]
        assert "disk/o.mp4" in last and "kept: t.json" in last, _describe(proc)
        assert json.loads((tmp_path / "t.json").read_text())["num_frames_tracked"] == 10
        assert sorted(p.name for p in disk.iterdir()) == []
        # both outputs there, the disk already full: nothing kept, no temporary file left
        (disk / "filler").write_bytes(b"\0" * 60_000)
        proc = _track(tmp_path, "noise.mp4", "--out-tracks", "disk/t.json", "--out-video", "disk/o.mp4")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, _describe(proc)
        last = proc.stderr.splitlines()[-1]
        assert "disk/t.json" in last and "No space left" in last and "nothing written" in last, _describe(proc)
        assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True, timeout=30)


# ------------------------------------------------------------ stale temporary files (SIGTERM: test_cli_errors.py)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporary_files_are_cleaned_and_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "t.json"
    dead, alive = _dead_pid(), os.getppid()
    stale = [tmp_path / f".t.json.{dead}.ab_c12.tmp", tmp_path / f".o.mp4.{dead}.xyz.tmp.mp4"]
    kept = [
        tmp_path / f".t.json.{alive}.live12.tmp",  # its writer still runs
        tmp_path / ".t.json.k2j3h4.tmp",  # no pid: not ours to judge
        tmp_path / f".other.json.{dead}.abc.tmp",  # another target
        tmp_path / "t.json",
    ]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert atomic.clean_stale_temps(target) == [stale[0]]
    assert atomic.clean_stale_temps(tmp_path / "o.mp4") == [stale[1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in kept)
    old = time.time() - atomic.STALE_AGE_S - 60
    os.utime(kept[0], (old, old))  # untouched for a day: its pid was reused
    assert atomic.clean_stale_temps(target) == [kept[0]]


def test_next_run_removes_a_killed_runs_temporary_file(tmp_path: Path) -> None:
    write_video(str(tmp_path / "clip.mp4"), moving_objects(num_frames=3, size=SIZE).frames)
    dead = _dead_pid()
    left = [tmp_path / f".t.csv.{dead}.k1ll3d.tmp", tmp_path / f".o.mp4.{dead}.k1ll3d.tmp.mp4"]
    for path in left:
        path.write_bytes(b"half a file")
    proc = _track(tmp_path, "clip.mp4", "--out-tracks", "t.csv", "--out-video", "o.mp4")
    assert proc.returncode == 0, _describe(proc)
    assert _temps(tmp_path) == [] and (tmp_path / "t.csv").is_file() and (tmp_path / "o.mp4").is_file()


def test_failing_eval_leaves_no_out_folder(tmp_path: Path, capsys) -> None:
    from tracker.apps import cli

    code = cli.main(["eval", "davis", "--root", str(tmp_path / "no-davis"), "--out", str(tmp_path / "new" / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("track: error: ") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "new").exists()


def test_schema_states_the_maximum_number_of_points() -> None:
    from tracker.io.formats import points_schema

    schema = points_schema()
    assert schema["$defs"]["points"]["maxItems"] == MAX_POINTS
    assert f"At most {MAX_POINTS} points" in schema["description"]
    assert f"{MAX_POINTS:,} points" in (REPO / "README.md").read_text()


def test_full_disk_while_writing_masks_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    from tracker.apps import cli
    from tracker.io import formats

    clip = moving_objects(num_frames=4, size=SIZE)
    write_video(str(tmp_path / "clip.mp4"), clip.frames)
    cv2.imwrite(str(tmp_path / "m.png"), (clip.masks[0] > 0).astype(np.uint8) * 255)
    real, calls = formats.atomic_write, []

    def fills_up(path, data):
        calls.append(path)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(formats, "atomic_write", fills_up)
    monkeypatch.chdir(tmp_path)
    code = cli.main(["clip.mp4", "--mask", "m.png", "--model", "sift", "--out-masks", "masks", "--no-video",
                     "--no-progress", "--backend", "torch"])  # fmt: skip
    err = capsys.readouterr().err
    lines = _lines(err)
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert "cannot write mask masks/00001.png" in lines[0] and "No space left" in lines[0], err
    assert "kept 1 finished frames" in lines[0], err
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == ["00000.png"]
