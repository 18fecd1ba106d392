"""Helpers shared by test modules (not tests themselves; pytest puts this folder on ``sys.path``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def _restore_sigint() -> None:
    """Python only turns SIGINT into KeyboardInterrupt when it is not inherited as ignored (nohup, `&`)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _drain(fd: int, into: list[bytes]) -> None:
    """Collect a pipe's bytes as they come (tqdm writes its progress with \\r, no newlines)."""
    while chunk := os.read(fd, 4096):
        into.append(chunk)


def signal_after_progress(
    argv: Sequence[str],
    cwd: Path,
    env: dict[str, str],
    frames: int,
    sig: int = signal.SIGINT,
    after: int = 1,
    timeout: float = 180,
) -> tuple[int, str]:
    """Run a ``track`` command with its progress bar on stderr, send it ``sig`` once the bar shows ``after`` of
    its ``frames`` frames done, and wait for it to end.

    Returns:
        ``(exit code, all of stderr)``.

    Raises:
        AssertionError: the command ended before the signal, or did not reach ``after`` frames in ``timeout``.
    """
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_restore_sigint,
    )
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(proc.stderr.fileno(), chunks))
    reader.start()
    try:
        deadline, done = time.monotonic() + timeout, 0
        while proc.poll() is None and time.monotonic() < deadline:
            counts = re.findall(rb"(\d+)/%d \[" % frames, b"".join(list(chunks)))
            done = int(counts[-1]) if counts else 0
            if done >= after:
                break
            time.sleep(0.02)
        progress = b"".join(chunks).decode(errors="replace")
        assert proc.poll() is None, f"finished before the signal; make the clip longer\n{progress}"
        assert done >= after, f"{done} of {after} frames tracked in time\n{progress}"
        proc.send_signal(sig)
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join()
        proc.stderr.close()
    return code, b"".join(chunks).decode(errors="replace")
