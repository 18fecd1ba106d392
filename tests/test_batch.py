"""``track batch``: a folder of 5 generated clips (one corrupt) through the local engine and a local Ray.

The good clips' tracks must equal those of ``track`` run on each clip alone; the corrupt one fails with its
reason and the others go on; a rerun skips the finished clips, a changed setting redoes them; a Ray actor
killed mid-run (``ray.kill``) still ends with every good clip done; a manifest with a missing file and a bad
line is refused with one error per line. Clips are tiny (8 frames of 64x80, sift at 64 px) for speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tracker.apps import batch
from tracker.apps.cli import main as track_main
from tracker.errors import TrackerError
from tracker.io.formats import read_tracks
from tracker.synthetic import moving_objects, write_video

REPO = Path(__file__).resolve().parents[1]
GOOD = ["clip0", "clip1", "clip2", "clip3"]
OPTIONS = ["--model", "sift", "--size", "64", "--batch", "4"]
FIELDS = ("x", "y", "visible", "score")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """``videos/`` (4 clips and a corrupt one), ``points/`` by name, and ``reference/``: ``track`` on each alone."""
    root = tmp_path_factory.mktemp("batch")
    (root / "videos").mkdir()
    (root / "points").mkdir()
    (root / "reference").mkdir()
    for i, name in enumerate(GOOD):
        clip = moving_objects(num_frames=8, size=(64, 80), seed=i)
        write_video(str(root / "videos" / f"{name}.mp4"), clip.frames)
        (root / "points" / f"{name}.json").write_text(json.dumps({"points": [[24, 22], [30, 30], [60 - i, 50]]}))
    (root / "videos" / "broken.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    (root / "points" / "broken.json").write_text("[[10, 10]]")
    for name in GOOD:
        out = root / "reference" / f"{name}.json"
        argv = [str(root / "videos" / f"{name}.mp4"), "--points", str(root / "points" / f"{name}.json")]
        assert track_main([*argv, *OPTIONS, "--out-tracks", str(out), "--no-video", "--no-progress"]) == 0
    return root


def run_batch(clips: Path, out: Path, *extra: str, inputs: str = "videos") -> tuple[int, dict[str, dict]]:
    argv = ["batch", str(clips / inputs), "--points-dir", str(clips / "points"), "--out", str(out), "--quiet"]
    code = track_main([*argv, *OPTIONS, *extra])
    lines = (out / "manifest.jsonl").read_text().splitlines()
    return code, {r["name"]: r for r in map(json.loads, lines)}


def assert_good_tracks(clips: Path, records: dict[str, dict]) -> None:
    for name in GOOD:
        record = records[name]
        assert record["status"] == "ok" and record["frames"] == 8 and record["error"] is None, record
        ours, theirs = read_tracks(record["outputs"]["tracks"]), read_tracks(clips / "reference" / f"{name}.json")
        for key in FIELDS:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{name} {key}")
    broken = records["broken"]
    assert broken["status"] == "failed" and "cannot decode" in broken["error"] and "broken.mp4" in broken["error"]
    assert "\n" not in broken["error"] and broken["outputs"] == {}


def test_local_engine_tracks_as_track_does_skips_on_rerun_and_redoes_changed_settings(clips, tmp_path):
    out = tmp_path / "results"
    code, records = run_batch(clips, out, "--workers", "2")
    assert code == batch.EXIT_FAILED  # one video failed
    assert list(records) == ["broken", *GOOD]  # input order
    assert_good_tracks(clips, records)
    assert all(r["fps"] > 0 and r["duration_s"] > 0 and r["attempts"] == 1 for n, r in records.items() if n in GOOD)
    stamps = {n: os.stat(records[n]["outputs"]["tracks"]).st_mtime_ns for n in GOOD}

    # The good clips again (a glob this time, so no worker starts: the corrupt one would be tried again).
    code, again = run_batch(clips, out, "--workers", "1", inputs="videos/clip*.mp4")  # --workers: not a setting
    assert code == 0 and [again[n]["status"] for n in GOOD] == ["skipped"] * 4
    assert again["broken"] == records["broken"]  # an earlier run's line is kept
    assert {n: os.stat(again[n]["outputs"]["tracks"]).st_mtime_ns for n in GOOD} == stamps

    # A changed setting redoes them (two clips, one worker: enough to show it, and quicker).
    code, changed = run_batch(clips, out, "--workers", "1", "--min-score", "0.9", inputs="videos/clip[01].mp4")
    assert code == 0 and [changed[n]["status"] for n in GOOD] == ["ok", "ok", "skipped", "skipped"]
    assert all(changed[n]["digest"] != records[n]["digest"] for n in GOOD[:2])
    assert all(os.stat(changed[n]["outputs"]["tracks"]).st_mtime_ns != stamps[n] for n in GOOD[:2])


def test_a_manifest_with_a_missing_file_and_a_bad_line_is_refused_line_by_line(clips, tmp_path, capsys):
    manifest = tmp_path / "list.jsonl"
    videos, points = clips / "videos", clips / "points"
    manifest.write_text(
        "\n".join(
            [
                json.dumps({"video": str(videos / "clip0.mp4"), "points": str(points / "clip0.json")}),
                json.dumps({"video": str(videos / "gone.mp4"), "points": str(points / "clip1.json")}),
                '{"video": "clip2.mp4", "points": ',
                json.dumps({"video": str(videos / "clip3.mp4"), "points": "p.json", "mask": "m.png"}),
                json.dumps({"video": str(videos / "clip3.mp4"), "options": {"min-score": "high"}}),
            ]
        )
        + "\n"
    )
    out = tmp_path / "results"
    code = track_main(["batch", str(manifest), "--points-dir", str(points), "--out", str(out), *OPTIONS])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and not out.exists()  # nothing was tracked, nothing written
    assert err[0] == f"track: error: {manifest} line 2: video not found: {videos / 'gone.mp4'}"
    assert err[1].startswith(f"track: error: {manifest} line 3: line is not valid JSON")
    assert err[2].startswith(f"track: error: {manifest} line 4: ") and "should not be valid" in err[2]
    assert err[3].startswith(f"track: error: {manifest} line 5: argument --min-score: invalid float value")
    assert err[4] == f"track: error: manifest {manifest}: 4 bad line(s); nothing was tracked" and len(err) == 5


def test_a_csv_manifest_gives_names_relative_paths_and_per_video_options(clips, tmp_path):
    manifest = tmp_path / "list.csv"
    for name in ("clip0", "clip1"):
        (tmp_path / f"{name}.mp4").symlink_to(clips / "videos" / f"{name}.mp4")
    points = clips / "points"
    manifest.write_text(
        f"video,points,name,refine\nclip0.mp4,{points}/clip0.json,first,\nclip1.mp4,{points}/clip1.json,,none\n"
    )
    entries, errors = batch.read_manifest(manifest)
    assert errors == []
    assert [(e.name, e.video, e.options) for e in entries] == [
        ("first", str(tmp_path / "clip0.mp4"), []),
        ("clip1", str(tmp_path / "clip1.mp4"), ["--refine", "none"]),
    ]


def test_a_manifest_naming_its_own_points_runs_beside_lines_that_take_the_points_dir(clips, tmp_path):
    """Lines with their own ``points`` (and per-line options) and lines without, in one run (this crashed: the
    lines with points gave no entry to the list of missing queries)."""
    videos, points = clips / "videos", clips / "points"
    manifest = tmp_path / "list.jsonl"
    lines = [
        {"video": str(videos / "clip0.mp4"), "points": str(points / "clip0.json")},
        {"video": str(videos / "clip1.mp4")},
        {"video": str(videos / "clip2.mp4"), "points": str(points / "clip2.json"), "options": {"refine": "none"}},
    ]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    code = track_main(["batch", str(manifest), "--points-dir", str(points), "--out", str(out), "--quiet", *OPTIONS])
    assert code == 0
    records = {r["name"]: r for r in map(json.loads, (out / "manifest.jsonl").read_text().splitlines())}
    assert sorted(records) == ["clip0", "clip1", "clip2"] and all(r["status"] == "ok" for r in records.values())
    for name in ("clip0", "clip1"):  # as `track` on the clip alone (clip2 ran with refine=none)
        ours, theirs = (
            read_tracks(records[name]["outputs"]["tracks"]),
            read_tracks(clips / "reference" / f"{name}.json"),
        )
        for key in FIELDS:
            np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{name} {key}")
    clip2 = read_tracks(records["clip2"]["outputs"]["tracks"])
    assert clip2["x"].shape == read_tracks(clips / "reference" / "clip2.json")["x"].shape


def test_the_manifest_schema_is_valid_and_takes_the_documented_lines():
    import jsonschema

    schema = batch.manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = [
        {"video": "clips/dog.mp4", "points": "points/dog.json"},
        {"video": "s3://bucket/cat.mp4", "mask": "masks/cat.png", "name": "cat", "options": {"refine": "none"}},
        {"video": "frames/", "options": {"min-score": 0.6, "keep_aspect": True}},
    ]
    bad = [
        {"points": "p.json"},  # no video
        {"video": "v.mp4", "points": "p.json", "mask": "m.png"},  # both
        {"video": "v.mp4", "name": "../up"},  # a name must be a folder name
        {"video": "v.mp4", "colour": "red"},  # unknown field
        {"video": "v.mp4", "options": {"min-score": [1]}},
    ]
    assert [validator.is_valid(line) for line in good + bad] == [True] * 3 + [False] * 5


def test_batch_help_and_usage_errors_do_not_import_torch():
    probe = (
        "import json, sys\nfrom tracker.apps.cli import main\n"
        "try:\n    code = main(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print(json.dumps({'code': code, 'torch': 'torch' in sys.modules}))"
    )
    for argv, code, message in (
        (["batch", "--help"], 0, ""),
        (["batch", "videos/", "--out", "r", "--frobnicate"], 2, "unrecognized arguments: --frobnicate"),
        (["batch", "videos/", "--out", "r", "--out-tracks", "t.json"], 2, "--out-tracks is set per video"),
        (["batch", "videos/", "--out", "r", "--engine", "spark"], 2, "invalid choice: 'spark'"),
    ):
        done = subprocess.run([sys.executable, "-c", probe, *argv], cwd=REPO, capture_output=True, text=True)
        assert json.loads(done.stdout.splitlines()[-1]) == {"code": code, "torch": False}, done.stderr
        assert message in done.stderr and done.stderr.count("\n") == (1 if message else 0)


def test_a_killed_local_worker_is_replaced_and_its_videos_still_done(clips, tmp_path):
    import signal

    from tracker.apps.batch_workers import LocalEngine

    argv = [str(clips / "videos"), "--points-dir", str(clips / "points"), "--out", str(tmp_path / "r")]
    args, common = batch.batch_parser().parse_known_args([*argv, *OPTIONS])
    jobs, _ = batch.collect(args, common, tmp_path / "r")
    engine = LocalEngine(workers=1, device="cpu", retries=2, todo=5)
    records, killed = {}, None
    try:
        for record in engine.run(jobs):
            records[record["name"]] = record
            if killed is None:  # SIGKILL the worker between two videos: the pool breaks, a new one takes over
                killed = int(record["worker"].split(":")[1])
                os.kill(killed, signal.SIGKILL)
    finally:
        engine.close()
    assert_good_tracks(clips, records)
    assert {int(records[n]["worker"].split(":")[1]) for n in GOOD} != {killed}  # a new process did the rest


# --------------------------------------------------------------------------- Ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module's Ray tests (starting Ray takes seconds); they skip without Ray."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[dev]' or '.[cluster]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def test_ray_engine_tracks_as_track_does_and_skips_on_rerun(clips, tmp_path, local_ray):
    out = tmp_path / "results"
    code, records = run_batch(clips, out, "--engine", "ray", "--workers", "2")
    assert code == batch.EXIT_FAILED
    assert_good_tracks(clips, records)
    assert len({records[n]["worker"] for n in GOOD}) == 2  # both actors worked
    code, again = run_batch(clips, out, "--engine", "ray", "--workers", "2")
    assert code == batch.EXIT_FAILED and [again[n]["status"] for n in GOOD] == ["skipped"] * 4
    assert again["broken"]["status"] == "failed" and again["broken"]["worker"] != records["broken"]["worker"]


def test_ray_actor_killed_mid_run_still_ends_with_every_good_video_done(clips, tmp_path, local_ray):
    from tracker.apps.batch_workers import RayEngine

    argv = [str(clips / "videos"), "--points-dir", str(clips / "points"), "--out", str(tmp_path / "r")]
    args, common = batch.batch_parser().parse_known_args([*argv, *OPTIONS])
    jobs, unrunnable = batch.collect(args, common, tmp_path / "r")
    assert unrunnable == {} and len(jobs) == 5
    engine = RayEngine(workers=2, address=None, gpus_per_worker=None, cpus_per_worker=None, retries=2, todo=5)
    records, killed = {}, None
    try:
        for record in engine.run(jobs):
            records[record["name"]] = record
            if killed is None:  # after the first video: kill the other actor (busy with its video, or about to be)
                killed = next(a for a, n in zip(engine.actors, engine.names, strict=True) if n != record["worker"])
                local_ray.kill(killed)  # no_restart: the actor is gone for good
    finally:
        engine.close()
    assert engine.lost >= 1 and killed not in engine.actors  # the dead actor was replaced
    assert_good_tracks(clips, records)
    assert any(r["attempts"] == 2 for r in records.values())  # its video was given to the new actor


def test_urls_are_listed_and_read_by_the_worker_with_fsspec(clips, tmp_path):
    """A glob of URLs (fsspec's in-memory filesystem standing in for s3://): listed by the driver, each video
    copied by its worker (here in this process, which shares the memory filesystem) and tracked as `track` does."""
    fsspec = pytest.importorskip("fsspec")
    from tracker.apps.batch_workers import VideoWorker

    memory = fsspec.filesystem("memory")
    for name in ("clip0", "clip1"):
        memory.pipe(f"/bucket/{name}.mp4", (clips / "videos" / f"{name}.mp4").read_bytes())
    args, common = batch.batch_parser().parse_known_args(
        ["memory://bucket/*.mp4", "--points-dir", str(clips / "points"), "--out", str(tmp_path), *OPTIONS]
    )
    jobs, unrunnable = batch.collect(args, common, tmp_path)
    assert [(j.name, j.video) for j in jobs] == [
        ("clip0", "memory:///bucket/clip0.mp4"),
        ("clip1", "memory:///bucket/clip1.mp4"),
    ]
    assert unrunnable == {}
    worker = VideoWorker()
    records = {job.name: worker.run(job) for job in jobs}
    for name in ("clip0", "clip1"):
        assert records[name]["status"] == "ok", records[name]
        ours, theirs = (
            read_tracks(records[name]["outputs"]["tracks"]),
            read_tracks(clips / "reference" / f"{name}.json"),
        )
        for key in FIELDS:
            np.testing.assert_array_equal(ours[key], theirs[key])
    assert len(worker.featurizers) == 1  # one featurizer built, for both videos (same size and settings)
    memory.rm("/bucket", recursive=True)


def test_masks_by_name_are_propagated_as_track_does(clips, tmp_path):
    """``--mask-dir``: DAVIS's ``<name>/00000.png`` layout; the worker (in this process) writes what
    ``track VIDEO --mask M --out-masks`` writes."""
    import cv2

    from tracker.apps.batch_workers import VideoWorker

    masks = tmp_path / "Annotations" / "clip0"
    masks.mkdir(parents=True)
    first = moving_objects(num_frames=1, size=(64, 80), seed=0).masks[0]
    cv2.imwrite(str(masks / "00000.png"), first * 255)
    video = clips / "videos" / "clip0.mp4"
    argv = [str(video), "--mask", str(masks / "00000.png"), *OPTIONS, "--out-masks", str(tmp_path / "ref")]
    assert track_main([*argv, "--no-video", "--no-progress"]) == 0
    args, common = batch.batch_parser().parse_known_args(
        [str(video), "--mask-dir", str(tmp_path / "Annotations"), "--out", str(tmp_path / "r"), *OPTIONS]
    )
    (job,), unrunnable = batch.collect(args, common, tmp_path / "r")
    record = VideoWorker().run(job)
    assert unrunnable == {} and record["status"] == "ok" and record["frames"] == 8, record
    ours = sorted(Path(record["outputs"]["masks"]).iterdir())
    assert [p.name for p in ours] == [f"{i:05d}.png" for i in range(8)]
    for path in ours:
        np.testing.assert_array_equal(cv2.imread(str(path)), cv2.imread(str(tmp_path / "ref" / path.name)))
    # an option masks would ignore (the points' legend) is refused before any video runs, naming the video
    args, common = batch.batch_parser().parse_known_args(
        [str(video), "--mask-dir", str(tmp_path / "Annotations"), "--out", str(tmp_path / "r2"), *OPTIONS, "--legend"]
    )
    with pytest.raises(TrackerError, match=r"^clip0: --legend goes with --points or --grid \(it labels the tracks\)"):
        batch.collect(args, common, tmp_path / "r2")


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (("--model", "nope"), "unknown model 'nope'"),
        (("--device", "tpu"), "--device must be cpu or cuda, got 'tpu'"),
        (("--size", "abc"), "--size"),
        (("--context", "3"), ": --context goes with --mask or --davis-root (the masks' propagation); --points does"),
    ],
)
def test_a_bad_shared_track_option_is_refused_once_before_any_video(clips, tmp_path, capsys, option, said):
    """Every video would fail on it (each marked failed, exit 1, before): one line, exit 2, nothing written."""
    out = tmp_path / "out"
    argv = ["batch", str(clips / "videos"), "--points-dir", str(clips / "points"), "--out", str(out), "--quiet"]
    assert track_main([*argv, "--model", "sift", "--size", "64", *option]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("track: error: ") and said in err[0], err
    assert not (out / "manifest.jsonl").exists()
