"""Atomic file output: write beside the target, then rename, so a reader never sees half a file.

Temporary files are hidden beside the target and named ``.<name>.<pid>.<random>.tmp`` (videos:
``...tmp.mp4``, the encoder picks the container by suffix). A process killed outright (SIGKILL, power loss)
leaves one behind; :func:`clean_stale_temps` removes those of a target whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from pathlib import Path

STALE_AGE_S = 24 * 3600  # a temporary file not modified for this long is stale even if its pid is alive (reused)


def default_file_mode() -> int:
    """Permissions of a newly created file under the current umask (``mkstemp`` itself makes 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_path(path: str | Path, suffix: str = ".tmp") -> Path:
    """Create an empty hidden temporary file beside ``path`` (named after it and this process) and return it.

    Raises:
        OSError: the folder is missing or a file cannot be created in it.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=suffix)
    os.close(fd)
    return Path(tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep the file
    return True


def clean_stale_temps(path: str | Path) -> list[Path]:
    """Remove temporary files that writers of ``path`` left behind when they were killed.

    Only files named as :func:`temp_path` names them for this very target are considered, and only those whose
    process no longer runs (or untouched for ``STALE_AGE_S``); anything else in the folder is left alone.

    Returns:
        The files removed.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[A-Za-z0-9_]+\.tmp(\.[A-Za-z0-9]+)?")
    removed = []
    try:
        entries = list(os.scandir(path.parent if str(path.parent) else "."))
    except OSError:
        return removed
    for entry in entries:
        found = pattern.fullmatch(entry.name)
        if found is None or int(found.group(1)) == os.getpid():
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            old = time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AGE_S
            if old or not _pid_alive(int(found.group(1))):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some filesystems cannot fsync a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, give it the usual permissions and rename it onto ``path`` (then fsync the folder)."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, default_file_mode())
    os.replace(tmp, path)
    fsync_dir(path.parent if str(path.parent) else ".")


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably (temporary file beside it, fsync, ``os.replace``).

    Raises:
        OSError: cannot create or write the file (disk full, read-only, ...); no temporary file is left.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent if str(path.parent) else ".")
