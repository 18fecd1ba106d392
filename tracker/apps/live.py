"""Live tracking: ``track live --camera 0``, clicks add points and drags paint masks on the frame shown.

The logic lives in :class:`~tracker.apps.live_session.LiveSession`, fed frames and events (click, paint,
keys) and free of any I/O but the tracks it is asked to save; the OpenCV window and capture around it are a
thin shell (:func:`run`, here, with the command line ``track live``). Frame sources
(:mod:`tracker.apps.live_sources`):

- :class:`~tracker.apps.live_sources.LatestFrame`: a capture thread that keeps only the newest frame, so the
  tracker always works on the latest one; frames it never took are dropped (counted), never queued. A camera,
  or a video file played at its own frame rate, standing in for one.
- :func:`~tracker.apps.live_sources.every_frame`: every frame of a file in order, for deterministic headless
  runs (tests).

Headless runs take scripted events (``--script events.json``), frame-indexed::

    {"events": [{"frame": 0, "click": [120, 80]}, {"frame": 0, "paint": [[90, 60], [150, 60], [150, 110]]},
                {"frame": 12, "key": "s"}, {"frame": 20, "key": "q"}]}

An event applies once its frame (the source's frame index) has been processed, before the next one, as
if the user clicked on that frame. While paused no frames advance, so the following events apply to the
paused frame in order.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from tracker.apps.live_session import Event, Key, LiveSession, MouseGesture, ScriptEvent, _count, read_script
from tracker.apps.live_sources import LatestFrame, camera_frames, every_frame
from tracker.apps.parsers import LIVE_KEYS
from tracker.errors import TrackerError
from tracker.io.formats import TRACK_SUFFIXES

# --------------------------------------------------------------------------- the shell


@dataclass
class RunOptions:
    """What the shell does around a session.

    Attributes:
        window: show an OpenCV window and take mouse and key events from it.
        script: frame-indexed events (headless runs).
        save: where ``s`` writes the tracks; also written at the end when ``save_on_exit``. None where the run
            cannot save (``track live --headless`` with no ``s`` in its script and no ``--save``).
        record: an ``.mp4`` of the rendered overlay, one frame per processed frame (written at 25 frames/s).
        snapshot: a PNG of the last rendered overlay, written at the end.
        max_frames: stop after this many processed frames.
        first_frame_timeout: seconds to wait for the source's first frame.
    """

    window: bool = False
    script: list[ScriptEvent] = field(default_factory=list)
    save: Path | None = Path("live_tracks.json")
    save_on_exit: bool = False
    record: Path | None = None
    snapshot: Path | None = None
    max_frames: int | None = None
    first_frame_timeout: float = 10.0


WINDOW = "track live"


def run(
    make_session: Callable[[np.ndarray], LiveSession],
    source: LatestFrame | Iterator[tuple[int, np.ndarray]],
    options: RunOptions,
    say: Callable[[str], None] = lambda line: None,
) -> tuple[LiveSession, str]:
    """Drive a session from a frame source, the window (or the script) and the keys, until quit or the end.

    Ctrl-C and a source failing half-way end the run like a quit: the snapshot and the tracks are still
    written (the failure is raised afterwards, naming what was kept).

    Args:
        make_session: builds the session from the first frame (its size decides the featurizer's).
        source: :class:`LatestFrame` (drops frames while busy) or an iterator of ``(index, frame)``.
        options: window, script and outputs.
        say: where one-line messages go (the command prints them; the library does not).

    Returns:
        ``(session, why it ended)``: ``quit``, ``ended`` (the source), ``max-frames``, ``paused`` (headless,
        paused with no scripted events left), ``window closed`` or ``interrupted``.
    """

    def take() -> tuple[int, np.ndarray] | None:
        if isinstance(source, LatestFrame):
            return source.next(timeout=options.first_frame_timeout if session is None else None)
        return next(source, None)

    session: LiveSession | None = None
    first = take()
    if first is None:
        raise TrackerError("the video source gave no frame")
    session = make_session(first[1])
    gesture = MouseGesture(brush=max(4.0, min(first[1].shape[:2]) / 40))
    pending: list[Event] = []
    script = list(options.script)
    writer = None
    failure: TrackerError | None = None
    if options.window:
        _open_window(gesture, pending)
    try:
        item: tuple[int, np.ndarray] | None = first
        while True:
            if item is not None:
                session.feed(item[1], item[0])
                if isinstance(source, LatestFrame):
                    session.stats.dropped = source.dropped
            while script and (script[0].frame <= session.frame.source_index or session.paused):
                _apply(session, script.pop(0).event, options, say)
            if options.window or options.record or options.snapshot:
                image = session.render(gesture.stroke if options.window else None)
                if options.record and item is not None:
                    if writer is None:
                        from tracker.io.video import AtomicVideoWriter

                        writer = AtomicVideoWriter(options.record, 25.0, (image.shape[1], image.shape[0]))
                    writer.write(image)
            if options.window:
                cv2.imshow(WINDOW, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                code = cv2.waitKey(15 if session.paused else 1) & 0xFF  # mouse callbacks run in here
                if code != 0xFF and Key(chr(code)).action is not None:
                    pending.append(Key(chr(code)))
                for event in pending:  # the frame they were given on is still the one shown
                    _apply(session, event, options, say)
                pending.clear()
                if cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                    status = "window closed"
                    break
            if session.stopped:
                status = "quit"
                break
            if options.max_frames is not None and session.stats.processed >= options.max_frames:
                status = "max-frames"
                break
            if session.paused:
                if not options.window and not script:
                    status = "paused"
                    break
                item = None
                continue
            try:
                item = take()
            except TrackerError as exc:
                status, failure = "failed", exc
                break
            if item is None:
                status = "ended"
                break
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        if options.window:
            cv2.destroyAllWindows()
        if writer is not None:
            writer.close()
    if options.snapshot is not None and session.frame is not None:
        from tracker.io.atomic import atomic_write

        ok, png = cv2.imencode(".png", cv2.cvtColor(session.render(), cv2.COLOR_RGB2BGR))
        if ok:
            atomic_write(options.snapshot, png.tobytes())
    if options.save_on_exit:
        say(session.save(options.save))
    if failure is not None:
        kept = f"tracks of {session.stats.processed} frames saved to {options.save}" if options.save_on_exit else ""
        raise TrackerError(f"{failure}{f' ({kept})' if kept else ''}")
    return session, status


def _apply(session: LiveSession, event: Event, options: RunOptions, say: Callable[[str], None]) -> None:
    """Apply one event; a bad one (a click outside the frame) is reported, not fatal."""
    try:
        say(session.handle(event, options.save))
    except TrackerError as exc:
        session.note(str(exc))
        say(f"ignored: {exc}")


def _pip() -> str:
    """The pip of the Python running this (the venv's, not whatever ``pip`` the shell finds first)."""
    import shlex

    return f"{shlex.quote(sys.executable)} -m pip"


NO_GUI = (
    "this OpenCV has no window support (opencv-python-headless); run with --headless, or replace it: "
    f"{_pip()} uninstall -y opencv-python-headless && {_pip()} install opencv-python"
)


def has_gui() -> bool:
    """Whether this OpenCV build can open windows (the headless wheels say ``GUI: NONE``)."""
    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    return match is None or match.group(1).upper() != "NONE"


def _open_window(gesture: MouseGesture, pending: list[Event]) -> None:
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
    except cv2.error:
        raise TrackerError(NO_GUI) from None

    def on_mouse(kind: int, x: int, y: int, flags: int, _param) -> None:
        if kind == cv2.EVENT_LBUTTONDOWN:
            gesture.down(x, y)
        elif kind == cv2.EVENT_MOUSEMOVE and flags & cv2.EVENT_FLAG_LBUTTON:
            gesture.move(x, y)
        elif kind == cv2.EVENT_LBUTTONUP:
            event = gesture.up(x, y)
            if event is not None:
                pending.append(event)

    cv2.setMouseCallback(WINDOW, on_mouse)


# --------------------------------------------------------------------------- command line

# Masks live: sift's offline setting (radius 12, context 7) costs 640 ms a frame on one core at 320x240;
# radius 8 with the last prediction as context costs about 100 ms (IoU after 48 frames of the synthetic
# two-object clip 0.26 / 0.43 against 0.38 / 0.53 offline). ViT grids keep the offline default.
LIVE_SIFT_PROPAGATION = {"radius": 8.0, "context": 1}


def _check_output(path: Path, option: str, suffixes: tuple[str, ...]) -> Path:
    if path.suffix.lower() not in suffixes:
        names = " or ".join(filter(None, [", ".join(suffixes[:-1]), suffixes[-1]]))
        raise TrackerError(f"{option} must end in {names}, got {path.name}")
    from tracker.apps.track_video import check_writable

    check_writable(path, option)
    return path


def _refuse_overwriting_inputs(args: argparse.Namespace, options: RunOptions) -> None:
    """Refuse, in one line and before anything runs, an output (``--save``, ``--record``, ``--snapshot``) that is
    an input (the video given as ``--camera``, ``--script``, ``--weights``, ``--onnx``, ``--engine``) or another
    output."""
    from tracker.apps.track_video import refuse_overwriting

    save = "--save" if args.save else "the default --save"
    outputs = {save: options.save, "--record": options.record, "--snapshot": options.snapshot}
    weights = [w for w in (args.weights or "").split(",") if w.strip() and w.strip() != "random"]
    inputs = {
        "the --camera video": None if args.camera.isdigit() else args.camera,
        "the --script events file": args.script,
        "the --onnx file": args.onnx,
        "the --engine file": args.engine,
        **{f"the --weights file {w.strip()}": w.strip() for w in weights},
    }
    refuse_overwriting(outputs, inputs)
    names = list(outputs)
    for i, option in enumerate(names):  # one output over another: the later write would replace the earlier
        later = {f"the {other} output": outputs[other] for other in names[i + 1 :]}
        refuse_overwriting({option: outputs[option]}, later)


def _could_save(args: argparse.Namespace, script: list[ScriptEvent]) -> bool:
    """Whether the run can write ``--save`` (or its default): given (written at the end), a window (key ``s``
    can be pressed), or an ``s`` key event in the script. Only then is the path checked (writable, not an input)."""
    keys = (e.event for e in script if isinstance(e.event, Key))
    return args.save is not None or not args.headless or any(key.action == "save" for key in keys)


def main(argv: list[str]) -> int:
    """``track live ...``; returns the exit code (bad input raises TrackerError)."""
    from tracker.apps.parsers import live_parser

    return run_command(live_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """``track live`` with parsed options; returns the exit code (bad input raises TrackerError)."""
    from tracker.choices import check_file_model, check_model_name
    from tracker.featurizers import default_match_config, resolve_model
    from tracker.io.video import open_video
    from tracker.propagation import default_propagation_config

    say = lambda line: print(f"track live: {line}", file=sys.stderr)  # noqa: E731
    from tracker.backends import pick_device

    device = pick_device(args.device)
    if args.max_frames is not None and args.max_frames < 1:
        raise TrackerError("--max-frames must be at least 1")
    script = read_script(args.script) if args.script else []
    save = Path(args.save or "live_tracks.json")
    options = RunOptions(
        window=not args.headless,
        script=script,
        save=_check_output(save, "--save", TRACK_SUFFIXES) if _could_save(args, script) else None,
        save_on_exit=args.save is not None,
        record=_check_output(Path(args.record), "--record", (".mp4",)) if args.record else None,
        snapshot=_check_output(Path(args.snapshot), "--snapshot", (".png",)) if args.snapshot else None,
        max_frames=args.max_frames,
    )
    _refuse_overwriting_inputs(args, options)
    if options.window and not has_gui():
        raise TrackerError(NO_GUI)
    check_model_name(args.model)
    camera = args.camera
    video = None
    if camera.isdigit():
        if args.every_frame:
            raise TrackerError("--every-frame applies to a video file given as --camera, not a camera")
        camera_size = _parse_size(args.camera_size) if args.camera_size else None
        kind = f"camera {camera}"
    else:
        video = open_video(camera)  # a clear error now for a missing or broken file
        kind = f"file {camera}" + (" (every frame)" if args.every_frame else f" (at {video.info.fps:g} frames/s)")
    from tracker.backends import BackendOptions, build_featurizer

    backend = BackendOptions(backend=args.backend, precision=args.precision, onnx=args.onnx, engine=args.engine)
    try:
        # an exported file brings its own (ViT) model; every ViT model has the same matcher settings
        model, warning = ("distilldift", None) if args.onnx or args.engine else resolve_model(args.model, args.weights)
        if warning:
            say(f"warning: {warning}")
        try:
            match = default_match_config(model)
            live_defaults = LIVE_SIFT_PROPAGATION if model == "sift" else {}
            overrides = {"context": args.context, "radius": args.radius, "pool": args.pool}
            propagation = default_propagation_config(
                model, **{**live_defaults, **{k: v for k, v in overrides.items() if v is not None}}
            )
        except ValueError as exc:
            raise TrackerError(str(exc)) from None
    except BaseException:
        if video is not None:
            video.close()
        raise

    release: Callable[[], None]
    if video is None:
        frames, release = camera_frames(int(camera), camera_size)
        source: LatestFrame | Iterator[tuple[int, np.ndarray]] = LatestFrame(frames)
    else:
        release = video.close
        source = every_frame(iter(video)) if args.every_frame else LatestFrame(iter(video), fps=video.info.fps)

    def make_session(first: np.ndarray) -> LiveSession:
        featurizer, how = build_featurizer(
            model,
            first.shape[:2],
            backend,
            size=args.size,
            keep_aspect=args.keep_aspect,
            weights=args.weights,
            device=device,
        )
        if args.onnx or args.engine:
            check_file_model(args.model, args.onnx or args.engine, featurizer.name)
        how = how.split(" (auto:")[0]
        description = f"{featurizer.name} | {how} | input {featurizer.input_hw[1]}x{featurizer.input_hw[0]}"
        meta = {
            "source": kind,
            "width": first.shape[1],
            "height": first.shape[0],
            "model": featurizer.name,
            "backend": how,
            "device": device,
            "weights": args.weights or ("none" if model == "sift" else "table"),
            "input_size": list(featurizer.input_hw[::-1]),
            "grid_size": list(featurizer.grid_hw[::-1]),
            "match": vars(match),
        }
        return LiveSession(featurizer, match, propagation, description, meta)

    say(f"{kind}; {'headless' if args.headless else LIVE_KEYS}")
    try:
        session, status = run(make_session, source, options, say)
    finally:
        if isinstance(source, LatestFrame):
            source.close()
        release()
    s = session.stats
    say(
        f"{status}: {s.processed} frames processed ({s.dropped} dropped) at {s.mean_fps:.1f} frames/s, "
        f"{session.description}; {_count(session.num_points, 'point')}, {_count(session.num_masks, 'mask')}"
    )
    return 130 if status == "interrupted" else 0


def _parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise TrackerError(f"--camera-size must be WxH, got {text!r}") from None
    if w < 1 or h < 1:
        raise TrackerError(f"--camera-size must be positive, got {text!r}")
    return w, h


if __name__ == "__main__":
    from tracker.apps.cli import main as track_main

    sys.exit(track_main(["live", *sys.argv[1:]]))
