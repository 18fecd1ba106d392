"""Bad input through the real command line, as a user runs it.

Every case is ``python -m tracker.apps.cli`` in a subprocess and must end with exit code 2 and exactly one line
on stderr, ``track: error: ...``, naming the file or option at fault, and write nothing. Each case differs
from a valid run (the positive control, exit 0) in one thing. Ctrl-C (SIGINT) during tracking must exit
130 and keep the tracks of the frames already finished.

The subprocesses of the error cases run a few at a time (each pays torch's import, about 2.5 s).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from _helpers import signal_after_progress

from tracker.synthetic import moving_objects, write_video

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tracker.apps.cli"]
NUM_FRAMES, SIZE = 6, (64, 96)  # (height, width)
GOOD_POINTS = {"points": [{"x": 30.0, "y": 25.0, "label": "corner"}, {"x": 60.5, "y": 40.0, "frame": 2}]}
TIMEOUT = 180
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAS_CUDA = torch.cuda.is_available()
# Lines that decoders (FFmpeg inside OpenCV, decord) print straight to fd 2; see the corrupt-video case.


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["TRACKER_CACHE"] = str(cache)  # never touch the user's weights cache
    env["HF_HUB_OFFLINE"] = "1"  # nothing here may download; fail rather than hang if it tries
    return env


# --------------------------------------------------------------------------- cases


def _corrupt(d: Path) -> None:
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))


def _empty(d: Path) -> None:
    (d / "empty.mp4").write_bytes(b"")


def _empty_folder(d: Path) -> None:
    (d / "frames").mkdir()


def _subfolder(d: Path) -> None:
    (d / "sub").mkdir()


def _grey_mask(d: Path) -> None:  # 200 distinct grey values: an anti-aliased or JPEG "mask", not object ids
    values = np.arange(1, 201, dtype=np.uint8)
    cv2.imwrite(str(d / "grey.png"), np.resize(values, SIZE))


def _mask_in_out_folder(d: Path) -> None:
    (d / "m").mkdir()
    cv2.imwrite(str(d / "m" / "00000.png"), _box_mask())


def _box_mask() -> np.ndarray:
    mask = np.zeros(SIZE, np.uint8)
    mask[10:40, 20:60] = 255
    return mask


def _box_png(d: Path) -> None:
    cv2.imwrite(str(d / "box.png"), _box_mask())


def _davis_root(d: Path) -> None:  # a DAVIS-layout dataset root with two sequences
    frame = np.full((*SIZE, 3), 128, np.uint8)
    for name in ("bear", "dog"):
        (d / "ds" / "JPEGImages" / "480p" / name).mkdir(parents=True)
        (d / "ds" / "Annotations" / "480p" / name).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(d / "ds" / "JPEGImages" / "480p" / name / f"{i:05d}.jpg"), frame)
        cv2.imwrite(str(d / "ds" / "Annotations" / "480p" / name / "00000.png"), _box_mask())


def _locked(d: Path) -> None:
    shutil.copy(d / "clip.mp4", d / "locked.mp4")
    (d / "locked.mp4").chmod(0)


@dataclass(frozen=True)
class Case:
    """One bad invocation: ``track VIDEO --points points.json --model MODEL --no-progress EXTRA``.

    Attributes:
        expect: substrings the error line must contain (what is at fault).
        video: the VIDEO argument.
        points: contents of points.json: JSON-able, a str written verbatim, or None for no file.
        model: the --model value.
        extra: further arguments.
        setup: makes the bad input in the case's folder (which already holds clip.mp4).
        skip: why the case cannot run here, or None.
    """

    expect: tuple[str, ...]
    video: str | None = "clip.mp4"
    points: object = field(default_factory=lambda: GOOD_POINTS)
    model: str = "sift"
    extra: tuple[str, ...] = ()
    setup: Callable[[Path], None] | None = None
    skip: str | None = None
    points_arg: bool = True

    def argv(self) -> list[str]:
        return [
            *CLI,
            *((self.video,) if self.video else ()),
            *(("--points", "points.json") if self.points_arg else ()),
            "--model",
            self.model,
            "--no-progress",
            *self.extra,
        ]


def _no_points(expect: tuple[str, ...], *extra: str) -> Case:
    """A case without ``--points``: ``extra`` gives the mode (``box.png`` made for the one that names it)."""
    return Case(expect, extra=extra, setup=_box_png if "box.png" in extra else None, points_arg=False)


CASES: dict[str, Case] = {
    # videos
    "missing-video": Case(("missing.mp4", "not found"), video="missing.mp4"),
    "unreadable-video": Case(
        ("locked.mp4",),
        video="locked.mp4",
        setup=_locked,
        skip="running as root, which can read a chmod 000 file" if IS_ROOT else None,
    ),
    "corrupt-video": Case(("corrupt.mp4",), video="corrupt.mp4", setup=_corrupt),
    "empty-video": Case(("empty.mp4", "empty"), video="empty.mp4", setup=_empty),
    "empty-folder": Case(("frames",), video="frames", setup=_empty_folder),
    # points files
    "points-not-json": Case(("points.json", "JSON"), points="not json {"),
    "points-not-schema": Case(("points.json", "schema"), points={"points": [{"x": "a"}]}),
    "points-empty-list": Case(("points.json", "no points"), points=[]),
    "points-empty-object": Case(("points.json", "no points"), points={"points": []}),
    "points-missing": Case(("points.json", "not found"), points=None),
    "points-int-too-large-for-float": Case(("points.json", "401 digits"), points="[[1" + "0" * 400 + ", 5]]"),
    "points-5000-digit-int": Case(("points.json", "5000 digits"), points="[[" + "9" * 5000 + ", 5]]"),
    "points-deep-nesting": Case(("points.json", "nested too deeply"), points="[" * 100_000 + "]" * 100_000),
    "points-too-many": Case(("points.json", "10001 points", "at most 10000"), points=[[1.0, 1.0]] * 10_001),
    # points that do not fit the video
    "point-outside-frame": Case(("500", "outside"), points=[[500, 10]]),
    "point-past-last-frame": Case(
        (f"frame {NUM_FRAMES}", "clip.mp4"),
        points={"points": [{"x": 10, "y": 10}, {"x": 10, "y": 10, "frame": NUM_FRAMES}]},
    ),
    # options
    "unknown-model": Case(("nope",), model="nope"),
    "cuda-unavailable": Case(
        ("--device", "cuda"), extra=("--device", "cuda"), skip="a CUDA GPU is available" if HAS_CUDA else None
    ),
    "out-tracks-no-folder": Case(("--out-tracks", "missing"), extra=("--out-tracks", "missing/tracks.json")),
    "out-tracks-bad-suffix": Case(("--out-tracks", "tracks.txt"), extra=("--out-tracks", "tracks.txt")),
    "out-video-is-input": Case(("--out-video", "input video"), extra=("--out-video", "clip.mp4")),
    "out-video-is-input-by-another-path": Case(
        ("--out-video", "input video"), extra=("--out-video", "sub/../clip.mp4"), setup=_subfolder
    ),
    "out-tracks-is-points-file": Case(("--out-tracks", "points file"), extra=("--out-tracks", "points.json")),
    "out-tracks-cannot-create": Case(
        ("/proc/t.json", "cannot create"),
        extra=("--out-tracks", "/proc/t.json"),
        skip=None if Path("/proc/self").is_dir() else "no /proc here",
    ),
    "size-not-multiple-of-14": Case(("--size", "14"), model="dinov2-s", extra=("--weights", "random", "--size", "100")),
    # inline points and --grid (the last --points given wins over the case's points.json)
    "points-neither-file-nor-inline": Case(
        ("points file 1,2;3 not found", 'inline points "x,y;x,y"', "495,405;560,430", "--grid N"),
        extra=("--points", "1,2;3"),
    ),
    "inline-point-outside-frame": Case(("500", "outside"), extra=("--points", "30,25;500,10")),
    "grid-zero": Case(("--grid", ">= 1"), extra=("--grid", "0"), points_arg=False),
    "grid-and-points": Case(("exactly one of", "--points, --grid"), extra=("--grid", "3")),
    # masks
    "mask-with-200-values": Case(
        ("grey.png", "200 distinct", "more than 100 objects"),
        extra=("--mask", "grey.png", "--out-masks", "om", "--no-video"),
        setup=_grey_mask,
        points_arg=False,
    ),
    "out-masks-holds-the-mask": Case(
        ("--out-masks m", "--mask file m/00000.png", "overwrite"),
        extra=("--mask", "m/00000.png", "--out-masks", "m", "--no-video"),
        setup=_mask_in_out_folder,
        points_arg=False,
    ),
    # options the chosen mode would silently ignore, and values no setting can take
    "no-video-and-out-video": Case(("--out-video", "--no-video"), extra=("--no-video", "--out-video", "o.mp4")),
    "sequence-without-davis-root": Case(("--sequence", "--davis-root"), extra=("--sequence", "dog")),
    "out-masks-with-points": Case(("--out-masks", "--points"), extra=("--out-masks", "om")),
    "out-masks-with-colormap": Case(
        ("--out-masks goes with --mask or --davis-root, not --colormap",),
        extra=("--colormap", "--out-masks", "om"),
        points_arg=False,
    ),
    "out-tracks-with-mask": Case(
        ("--out-tracks", "--mask"),
        extra=("--mask", "box.png", "--out-tracks", "t.json"),
        setup=_box_png,
        points_arg=False,
    ),
    "davis-root-and-video": Case(
        ("VIDEO", "--davis-root"),
        extra=("--davis-root", "ds", "--sequence", "dog", "--out-masks", "om", "--no-video"),
        setup=_davis_root,
        points_arg=False,
    ),
    "davis-root-without-sequence": Case(
        ("ds holds several sequences", "--sequence", "bear, dog"),
        video=None,
        extra=("--davis-root", "ds", "--out-masks", "om", "--no-video"),
        setup=_davis_root,
        points_arg=False,
    ),
    "legend-with-mask": _no_points(
        ("--legend goes with --points or --grid", "not --mask"), "--mask", "box.png", "--legend"
    ),
    "context-with-points": Case(("--context goes with --mask or --davis-root", "--points"), extra=("--context", "3")),
    "pool-with-edit": _no_points(
        ("--pool goes with --mask", "--edit does not use it"), "--edit", "box.png", "--pool", "2"
    ),
    "min-score-with-mask": _no_points(
        ("--min-score sets the matcher", "--mask masks are propagated by --context"),
        "--mask",
        "box.png",
        "--min-score",
        "0.3",
    ),
    "update-with-colormap": _no_points(
        ("--update goes with --points or --grid", "--colormap does not use it"), "--colormap", "--update", "0.5"
    ),
    "hedlin-with-temperature": Case(
        ("--temperature is our matcher's setting, not hedlin's",), model="hedlin", extra=("--temperature", "0.1")
    ),
    "min-score-nan": Case(("--min-score", "nan"), extra=("--min-score", "nan")),
    "min-score-above-1": Case(("--min-score", "[-1, 1]"), extra=("--min-score", "5")),
    "temperature-nan": Case(("--temperature",), extra=("--temperature", "nan")),
    "prop-temperature-nan": Case(
        ("--prop-temperature",),
        extra=("--mask", "box.png", "--out-masks", "om", "--no-video", "--prop-temperature", "nan"),
        setup=_box_png,
        points_arg=False,
    ),
}
VALID = Case(())  # the positive control: the error cases each change one thing of it


def _prepare(root: Path, name: str, case: Case) -> Path:
    d = root / name
    d.mkdir()
    shutil.copy(root / "clip.mp4", d / "clip.mp4")
    if isinstance(case.points, str):
        (d / "points.json").write_text(case.points)
    elif case.points is not None:
        (d / "points.json").write_text(json.dumps(case.points))
    if case.setup is not None:
        case.setup(d)
    return d


@dataclass
class Run:
    folder: Path
    returncode: int
    stdout: str
    stderr: str
    before: set[str]
    after: set[str]

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}"


def _run(folder: Path, case: Case, cache: Path) -> Run:
    before = {p.name for p in folder.iterdir()}
    proc = subprocess.run(case.argv(), cwd=folder, env=_env(cache), capture_output=True, text=True, timeout=TIMEOUT)
    after = {p.name for p in folder.iterdir()}
    return Run(folder, proc.returncode, proc.stdout, proc.stderr, before, after)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder holding clip.mp4: 6 frames of 64x96."""
    root = tmp_path_factory.mktemp("cli")
    write_video(str(root / "clip.mp4"), moving_objects(num_frames=NUM_FRAMES, size=SIZE).frames)
    return root


@pytest.fixture(scope="module")
def runs(request, clips: Path, tmp_path_factory) -> dict[str, Run]:
    """Runs the selected cases (and the positive control), a few at a time; each in its own folder."""
    selected = {
        item.callspec.params["name"]
        for item in request.session.items
        if item.module is request.module and "name" in getattr(getattr(item, "callspec", None), "params", {})
    }
    todo = {name: CASES[name] for name in sorted(selected) if CASES[name].skip is None}
    todo["valid"] = VALID
    folders = {name: _prepare(clips, name, case) for name, case in todo.items()}
    cache = tmp_path_factory.mktemp("cache")
    workers = max(2, min(8, 2 * (os.cpu_count() or 1)))
    try:
        with ThreadPoolExecutor(workers) as pool:
            futures = {name: pool.submit(_run, folders[name], case, cache) for name, case in todo.items()}
            return {name: future.result() for name, future in futures.items()}
    finally:
        for folder in folders.values():  # let tmp_path clean-up remove the chmod 000 file
            for path in folder.iterdir():
                path.chmod(0o755 if path.is_dir() else 0o644)


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.skip(reason=c.skip)) if c.skip else n for n, c in CASES.items()],
)
def test_bad_input_is_one_error_line_and_exit_2(name: str, runs: dict[str, Run]) -> None:
    case, run = CASES[name], runs[name]
    assert run.returncode == 2, run.describe()
    assert "Traceback" not in run.stderr, run.describe()
    lines = run.stderr.splitlines()
    assert lines and lines[-1].startswith("track: error: "), run.describe()
    message = lines[-1]
    assert len(message) > len("track: error: ") + 5, run.describe()
    for needle in case.expect:
        assert needle in message, f"{needle!r} not in the error line\n{run.describe()}"
    assert run.after == run.before, f"bad input wrote {sorted(run.after - run.before)}"
    assert len(lines) == 1, f"stderr must be exactly one line\n{run.describe()}"


def test_a_mask_in_the_out_masks_folder_is_left_as_it_was(runs: dict[str, Run]) -> None:
    """Frame 0's prediction would have been written as m/00000.png over the given mask (a binary PNG)."""
    run = runs["out-masks-holds-the-mask"]
    assert run.returncode == 2, run.describe()
    np.testing.assert_array_equal(cv2.imread(str(run.folder / "m" / "00000.png"), cv2.IMREAD_UNCHANGED), _box_mask())
    assert sorted(p.name for p in (run.folder / "m").iterdir()) == ["00000.png"]


def test_valid_input_tracks(runs: dict[str, Run]) -> None:
    run = runs["valid"]
    assert run.returncode == 0, run.describe()
    assert "Traceback" not in run.stderr and "error" not in run.stderr, run.describe()
    assert run.after - run.before == {"clip_tracks.json", "clip_overlay.mp4"}, run.describe()
    doc = json.loads((run.folder / "clip_tracks.json").read_text())
    assert doc["status"] == "done"
    assert doc["num_frames_tracked"] == NUM_FRAMES
    assert doc["frame"] == list(range(NUM_FRAMES))
    assert np.asarray(doc["visible"]).shape == (NUM_FRAMES, len(GOOD_POINTS["points"]))
    # point 1 is given on frame 2: no position before it, its own position on it
    assert doc["x"][0][1] is None and doc["x"][2][1] == pytest.approx(60.5, abs=1e-3)


# --------------------------------------------------------------------------- conveniences


def _track(folder: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *argv, "--no-progress"],
        cwd=folder,
        env=_env(folder / "cache"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_inline_points_grid_legend_and_the_lines_said(clips: Path, tmp_path: Path) -> None:
    """Inline points and --grid track; the legend changes the overlay; sift says it is the fallback; the
    end-of-run line names the device once; a mask run says how much of the object it kept."""

    shutil.copy(clips / "clip.mp4", tmp_path / "clip.mp4")
    mask = np.zeros(SIZE, np.uint8)
    mask[10:40, 20:60] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    runs = {
        "inline": (
            "clip.mp4",
            "--points",
            "30,25;60.5,40,2",
            "--model",
            "sift",
            "--out-tracks",
            "i.json",
            "--out-video",
            "i.mp4",
        ),
        "legend": (
            "clip.mp4",
            "--points",
            "30,25;60.5,40,2",
            "--model",
            "sift",
            "--out-tracks",
            "l.json",
            "--out-video",
            "l.mp4",
            "--legend",
        ),
        "grid": ("clip.mp4", "--grid", "3", "--model", "sift", "--out-tracks", "g.json", "--no-video"),
        "mask": ("clip.mp4", "--mask", "mask.png", "--model", "sift", "--out-video", "m.mp4"),
    }
    with ThreadPoolExecutor(4) as pool:
        done = dict(zip(runs, pool.map(lambda a: _track(tmp_path, *a), runs.values()), strict=True))
    for name, proc in done.items():
        assert proc.returncode == 0, (name, proc.stderr)
    inline = json.loads((tmp_path / "i.json").read_text())
    assert [(p["x"], p["y"], p["frame"]) for p in inline["points"]] == [(30.0, 25.0, 0), (60.5, 40.0, 2)]
    assert inline["x"][0][1] is None and inline["x"][2][1] == pytest.approx(60.5, abs=1e-3)
    grid = json.loads((tmp_path / "g.json").read_text())
    xy = sorted((p["x"], p["y"]) for p in grid["points"])
    w, h = SIZE[1], SIZE[0]
    assert (
        len(xy) == 9
        and xy[0] == pytest.approx((w / 6 - 0.5, h / 6 - 0.5))
        and xy[-1] == pytest.approx((5 * w / 6 - 0.5, 5 * h / 6 - 0.5))
    )
    plain, legend = (cv2.VideoCapture(str(tmp_path / f"{k}.mp4")).read()[1] for k in ("i", "l"))
    corner = (slice(0, 14), slice(0, 40))
    assert np.abs(plain[corner].astype(int) - legend[corner].astype(int)).mean() > 10  # the legend's box
    err = done["inline"].stderr
    assert "track: note: sift is the weight-free fallback: expect drift" in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("track: done: 2 points through 6 frames") and last.count(" on cpu") == 1, last
    mask_line = done["mask"].stderr.strip().splitlines()[-1]
    assert re.search(r"mask through 6 frames, kept \d+% of the object \(last frame \d+%\)", mask_line), mask_line


# --------------------------------------------------------------------------- Ctrl-C


_SLOW_FEATURIZER = """
import sys, time
from pathlib import Path
import tracker.featurizers as F
forward, calls = F.SiftFeaturizer.forward, [0]
def slow(self, frames):  # from the third batch on, a heavy model: the decode thread is busy for seconds
    calls[0] += 1
    if calls[0] >= 3:
        Path("busy").touch()
        time.sleep(4)
    return forward(self, frames)
F.SiftFeaturizer.forward = slow
from tracker.apps.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_second_signal_while_the_decode_thread_finishes_its_batch_keeps_finished_frames(tmp_path: Path) -> None:
    # on a CPU the decode thread runs the featurizer: close() waits for its batch. A second signal during that wait
    # must not lose the tracks (an interrupted Thread.join marks the running thread stopped and the run aborted)
    write_video(str(tmp_path / "long.mp4"), moving_objects(num_frames=80, size=SIZE).frames)
    (tmp_path / "points.json").write_text(json.dumps([[30.0, 25.0]]))
    (tmp_path / "slow.py").write_text(_SLOW_FEATURIZER)
    argv = [sys.executable, "slow.py", "long.mp4", "--points", "points.json", "--model", "sift", "--batch", "4"]
    argv += ["--device", "cpu", "--out-tracks", "t.csv", "--no-video", "--no-progress"]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=_env(tmp_path / "cache"), stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):  # the third batch is in the featurizer
            if (tmp_path / "busy").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, f"exit {proc.returncode}\n{stderr}"
    assert "Traceback" not in stderr and "track: terminated" in stderr, stderr
    with (tmp_path / "t.csv").open(newline="") as f:
        rows = list(csv.reader(f))[1:]
    assert 1 <= len(rows) < 80 and [int(r[0]) for r in rows] == list(range(len(rows)))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    "sig,exit_code,said",
    [(signal.SIGINT, 130, "track: interrupted"), (signal.SIGTERM, 143, "track: terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_ctrl_c_and_sigterm_keep_finished_frames(tmp_path: Path, sig, exit_code: int, said: str) -> None:
    frames = 300
    write_video(str(tmp_path / "long.mp4"), moving_objects(num_frames=frames, size=SIZE).frames)
    (tmp_path / "points.json").write_text(json.dumps([[30.0, 25.0]]))
    argv = [
        *CLI,
        "long.mp4",
        "--points",
        "points.json",
        "--model",
        "sift",
        "--batch",
        "1",
        "--out-tracks",
        "t.csv",
        "--no-video",
    ]  # with the progress bar: it tells when frames are done
    code, stderr = signal_after_progress(argv, tmp_path, _env(tmp_path / "cache"), frames, sig, timeout=TIMEOUT)
    assert code == exit_code, f"exit {code}\n{stderr}"
    assert "Traceback" not in stderr, stderr
    assert said in stderr, stderr
    with (tmp_path / "t.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "point", "x", "y", "visible", "score"]
    data = rows[1:]
    assert 1 <= len(data) < frames, f"{len(data)} rows"
    assert [int(r[0]) for r in data] == list(range(len(data)))  # one point: one row per finished frame
    assert all(r[1] == "0" and r[2] and r[3] for r in data)
    hidden = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert hidden == [], f"temporary file left: {hidden}"
