"""Video sources (file, DAVIS-style folder of frames) streamed frame by frame, and an atomic video writer.

Frames are ``[H, W, 3]`` uint8 RGB numpy arrays (torch CUDA tensors from torchcodec's NVDEC decoder when
asked for ``device="cuda"``). Readers (``--reader``, :data:`READERS`):

- ``opencv``: OpenCV's FFmpeg, sequential; needs nothing beyond the core dependencies (on 720p H.264 it decoded
  267 frames/s against decord's 154 on the 2-core CI machine).
- ``torchcodec``: PyTorch's maintained decoder (``pip install torchcodec``; it loads the system's FFmpeg 4-7
  libraries), in chunks; on a GPU it can decode with NVDEC straight into CUDA tensors.
- ``decord``: optional and unmaintained (last release 2021, its GPU build breaks on new FFmpeg), kept while it
  installs and passes the reader tests (``pip install '.[decord]'``).
- ``auto`` (default): torchcodec when it is installed and opens the file, else OpenCV, else decord where installed
  (files OpenCV cannot open).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# FFmpeg inside OpenCV prints every complaint about a damaged stream to fd 2, from its decoding threads too;
# OpenCV reads this once, when it first opens a video (a user's own setting wins).
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # AV_LOG_QUIET

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from tracker.errors import TrackerError
from tracker.io.atomic import clean_stale_temps, publish, temp_path

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
READERS = ("auto", "opencv", "torchcodec", "decord")


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video before reading it.

    Attributes:
        source: path as given.
        width, height: frame size in pixels.
        fps: frames per second (25 for folders of frames).
        num_frames: number of frames (from the container header for files).
    """

    source: str
    width: int
    height: int
    fps: float
    num_frames: int


class VideoSource:
    """A video opened for streaming; iterate for frames.

    Attributes:
        info: what the header says.
        warnings: one-line notes on problems that did not stop reading (a gap in a folder's numbering, fewer
            frames decoded than the header promised); grows while iterating.
    """

    info: VideoInfo
    warnings: list[str]

    def __iter__(self) -> Iterator[np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release the decoder."""

    def __enter__(self) -> VideoSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FolderVideo(VideoSource):
    """A DAVIS-style folder of frames (``00000.jpg``, ``00001.jpg`` ...), sorted by name."""

    def __init__(self, folder: Path):
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not self.paths:
            raise TrackerError(f"{folder} holds no .jpg or .png frames")
        self.warnings = [w for w in [_numbering_gap(folder, self.paths)] if w]
        first = self._read(self.paths[0])
        self.info = VideoInfo(str(folder), first.shape[1], first.shape[0], 25.0, len(self.paths))

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        with _quiet_stderr():  # libjpeg / libpng warnings
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise TrackerError(f"cannot read frame {path}")
        _check_complete(path)  # a truncated JPEG decodes as a half-grey frame
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self.paths:
            frame = self._read(path)
            if frame.shape[:2] != (self.info.height, self.info.width):
                raise TrackerError(f"{path} is {frame.shape[1]}x{frame.shape[0]}, unlike the first frame")
            yield frame


def _numbering_gap(folder: Path, paths: list[Path]) -> str | None:
    """A warning when numbered frame files skip numbers (frames are numbered by position, so later ones shift)."""
    found = [re.fullmatch(r"(.*?)(\d+)", p.stem) for p in paths]
    if not all(found) or len({m.group(1) for m in found}) != 1:
        return None
    numbers = [int(m.group(2)) for m in found]
    missing = [(prev, cur) for prev, cur in zip(numbers[:-1], numbers[1:], strict=True) if cur != prev + 1]
    if not missing:
        return None
    prev, cur = missing[0]
    gap = paths[numbers.index(prev)]
    digits = len(found[0].group(2))
    name = f"{found[0].group(1)}{prev + 1:0{digits}d}{gap.suffix}"
    total = sum(cur - prev - 1 for prev, cur in missing)
    return (
        f"{folder}: no {name} ({total} numbers missing in {len(missing)} gaps); frames are counted by position, "
        f"so {paths[numbers.index(cur)].name} is frame {numbers.index(cur)}"
    )


def _check_complete(path: Path) -> None:
    """Refuse a JPEG or PNG cut short (its end marker missing and the decoder finding it truncated)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16))
            tail = f.read()
    except OSError as exc:
        raise TrackerError(f"cannot read frame {path}: {exc.strerror}") from None
    is_png = path.suffix.lower() == ".png"
    if (b"IEND" in tail) if is_png else tail.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        return
    from PIL import Image  # no end marker: data after it (allowed) or a cut file? let the decoder say

    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError):
        raise TrackerError(f"frame {path} is truncated or corrupt") from None


class OpenCVVideo(VideoSource):
    """A video file decoded sequentially by OpenCV (FFmpeg's messages on stderr silenced)."""

    def __init__(self, path: Path):
        self.path = path
        self.warnings = []
        self.cap = cv2.VideoCapture(str(path))
        ok, first = self.cap.read() if self.cap.isOpened() else (False, None)
        if not ok:
            self.cap.release()
            raise _Unreadable
        count = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = self.cap.get(cv2.CAP_PROP_FPS) or 25.0
        self._first = first
        self.info = VideoInfo(str(path), first.shape[1], first.shape[0], float(fps), max(count, 1))

    def __iter__(self) -> Iterator[np.ndarray]:
        frame, self._first = self._first, None
        if frame is None:
            raise TrackerError(f"{self.path} can be iterated once")
        decoded = 0
        while frame is not None:
            decoded += 1
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            ok, frame = self.cap.read()
            frame = frame if ok else None
        if decoded < self.info.num_frames:
            self.warnings.append(
                f"{self.path}: decoded {decoded} of the {self.info.num_frames} frames its header promises "
                "(the file is cut short or damaged)"
            )

    def close(self) -> None:
        self.cap.release()


class DecordVideo(VideoSource):
    """A video file decoded by decord, in chunks."""

    def __init__(self, path: Path, chunk: int = 16):
        import decord

        try:
            self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0))
            count = len(self.reader)
            first = self.reader[0].asnumpy() if count else None
        except Exception:
            raise _Unreadable from None
        if first is None:
            raise _Unreadable
        self.chunk = chunk
        self.warnings = []
        self.info = VideoInfo(str(path), first.shape[1], first.shape[0], float(self.reader.get_avg_fps()), count)

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, self.info.num_frames, self.chunk):
            indices = list(range(start, min(start + self.chunk, self.info.num_frames)))
            try:
                batch = self.reader.get_batch(indices).asnumpy()
            except Exception:
                raise TrackerError(f"{self.info.source}: cannot decode frame {start} (corrupt video?)") from None
            yield from batch

    def close(self) -> None:
        self.reader = None  # decord frees its demuxer with the reader


class TorchcodecVideo(VideoSource):
    """A video file decoded by torchcodec in chunks of ``chunk`` frames (NVDEC into CUDA with ``device="cuda"``).

    Raises:
        ImportError: torchcodec, or the FFmpeg libraries it loads, is missing.
        _Unreadable: the file is not a video it can decode.
    """

    def __init__(self, path: Path, chunk: int = 16, device: str = "cpu"):
        try:
            from torchcodec.decoders import VideoDecoder
        except ModuleNotFoundError:
            raise
        except Exception as exc:  # noqa: BLE001 - torchcodec raises RuntimeError when FFmpeg's libraries are missing
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ImportError(f"torchcodec cannot load FFmpeg: {line}") from None
        try:
            self.decoder = VideoDecoder(str(path), dimension_order="NHWC", device=device, num_ffmpeg_threads=0)
            meta = self.decoder.metadata
            count = len(self.decoder)
        except Exception:  # noqa: BLE001 - torchcodec's errors for a file it cannot open are plain RuntimeErrors
            raise _Unreadable from None
        if not count or not meta.width or not meta.height:
            raise _Unreadable
        self.path = path
        self.chunk = chunk
        self.device = device
        self.warnings = []
        fps = float(meta.average_fps or 25.0)
        self.info = VideoInfo(str(path), int(meta.width), int(meta.height), fps, int(count))

    def __iter__(self) -> Iterator[np.ndarray]:
        decoded = 0
        for start in range(0, self.info.num_frames, self.chunk):
            try:
                batch = self.decoder.get_frames_in_range(start, min(start + self.chunk, self.info.num_frames)).data
            except Exception:  # noqa: BLE001 - a damaged stream: stop like OpenCV does, with a warning
                break
            decoded += len(batch)
            yield from (batch if self.device != "cpu" else batch.numpy())
        if decoded < self.info.num_frames:
            self.warnings.append(
                f"{self.path}: decoded {decoded} of the {self.info.num_frames} frames its header promises "
                "(the file is cut short or damaged)"
            )

    def close(self) -> None:
        self.decoder = None  # the file, and on a GPU the NVDEC session, are freed with the decoder


class _Unreadable(Exception):
    pass


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence native decoders (FFmpeg, decord) that print to file descriptor 2 while probing a file."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def open_video(path: str | Path, reader: str = "auto", device: str = "cpu") -> VideoSource:
    """Open a video file or a folder of frames for streaming.

    Args:
        path: a video file or a folder of frames (folders are read with OpenCV whatever ``reader`` says).
        reader: one of :data:`READERS` (see the module docstring).
        device: torchcodec only: ``cuda`` decodes with NVDEC into CUDA tensors.

    Raises:
        TrackerError: missing, unreadable, corrupt or empty; an unknown reader, or one that is not installed.
    """
    if reader not in READERS:
        raise TrackerError(f"--reader must be one of {', '.join(READERS)}, got {reader!r}")
    path = Path(path)
    if not path.exists():
        raise TrackerError(f"video not found: {path}")
    if path.is_dir():
        return FolderVideo(path)
    if not os.access(path, os.R_OK):
        raise TrackerError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise TrackerError(f"{path} is empty")
    if reader != "auto":
        return _open_with(reader, path, device)
    with _quiet_stderr():
        for name in ("torchcodec", "opencv", "decord"):
            try:
                return (
                    _READER_CLASSES[name](path, device=device) if name == "torchcodec" else _READER_CLASSES[name](path)
                )
            except (_Unreadable, ImportError):
                pass
    raise TrackerError(f"cannot decode {path}: not a video, or corrupt, or no frames")


_READER_CLASSES = {"opencv": OpenCVVideo, "torchcodec": TorchcodecVideo, "decord": DecordVideo}
_INSTALL = {
    "torchcodec": "pip install torchcodec (it needs FFmpeg's shared libraries)",
    "decord": "pip install '.[decord]'",
}


def _open_with(reader: str, path: Path, device: str) -> VideoSource:
    """Open ``path`` with one named reader, or say in one line why it cannot."""
    with _quiet_stderr():
        try:
            if reader == "torchcodec":
                return TorchcodecVideo(path, device=device)
            return _READER_CLASSES[reader](path)
        except ImportError as exc:
            problem = str(exc) if str(exc).startswith("torchcodec cannot") else "not installed"
            raise TrackerError(f"--reader {reader}: {problem} ({_INSTALL[reader]})") from None
        except _Unreadable:
            raise TrackerError(f"cannot decode {path} with {reader}: not a video, or corrupt, or no frames") from None


class AtomicVideoWriter:
    """Writes an mp4 to a temporary file beside the target and moves it into place on :meth:`close`.

    A video the encoder could not finish (disk full, encoder failure: no index, a frame count that is not the
    number of frames written) is never moved into place; its temporary file is removed and :meth:`close`
    raises. Odd sides are padded by one replicated pixel for the encoder (4:2:0 needs even sides); for mp4v,
    the coded picture size is then set back to the frame size, so the file decodes at the size given.

    Args:
        path: target ``.mp4`` path.
        fps: frame rate.
        size: ``(width, height)``.

    Raises:
        TrackerError: the encoder cannot be opened for that file.
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.coded = (self.size[0] + self.size[0] % 2, self.size[1] + self.size[1] % 2)
        clean_stale_temps(self.path)
        try:
            self.tmp = temp_path(self.path, suffix=".tmp" + self.path.suffix)
        except OSError as exc:
            raise TrackerError(f"cannot write video {self.path}: {exc.strerror}") from None
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, self.coded)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise TrackerError(f"cannot write video {self.path}")
        self.frames = 0
        self.closed = False

    def write(self, frame_rgb: np.ndarray) -> None:
        """Append one ``[H, W, 3]`` uint8 RGB frame of the writer's size."""
        bgr = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)
        pad_w, pad_h = self.coded[0] - bgr.shape[1], self.coded[1] - bgr.shape[0]
        if pad_w or pad_h:
            bgr = cv2.copyMakeBorder(bgr, 0, pad_h, 0, pad_w, cv2.BORDER_REPLICATE)
        self.writer.write(bgr)
        self.frames += 1

    def discard(self) -> None:
        """Stop and remove the temporary file without publishing anything; idempotent."""
        if not self.closed:
            self.closed = True
            self.writer.release()
        self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        """Finish the file and move it into place (a video of no frames is discarded); idempotent.

        Raises:
            TrackerError: the encoder could not finish the file (it is removed, nothing is published).
        """
        if self.closed:
            return
        self.closed = True
        self.writer.release()
        if not self.frames:
            self.tmp.unlink(missing_ok=True)
            return
        try:
            problem = mp4_problem(self.tmp, self.frames)
            if problem is None and self.coded != self.size:
                set_mp4v_size(self.tmp, *self.size)  # best effort: else the padded size stays
            if problem is None:
                publish(self.tmp, self.path)
        except OSError as exc:
            problem = exc.strerror or str(exc)
        finally:
            self.tmp.unlink(missing_ok=True)
        if problem is not None:
            raise TrackerError(f"cannot finish video {self.path} ({problem}); not written")


def _top_boxes(f) -> Iterator[tuple[bytes, int, int]]:
    """``(type, offset, size)`` of the top-level ISO-BMFF boxes of an open file (headers only are read);
    a box running past the end of the file comes as type ``b""``."""
    end = f.seek(0, os.SEEK_END)
    offset = 0
    while offset + 8 <= end:
        f.seek(offset)
        head = f.read(16)
        size, kind = struct.unpack(">I4s", head[:8])
        if size == 1 and len(head) == 16:
            size = struct.unpack(">Q", head[8:16])[0]
        elif size == 0:
            size = end - offset
        if size < 8 or offset + size > end:
            yield b"", offset, size  # cut short
            return
        yield kind, offset, size
        offset += size


def mp4_problem(path: str | Path, frames: int) -> str | None:
    """Why an mp4 written by OpenCV is not a complete video of ``frames`` frames, or None when it is.

    Checks that the top-level boxes fill the file exactly, that the index (``moov``) is there, and that a
    decoder opens it and counts ``frames`` frames.
    """
    with open(path, "rb") as f:
        kinds = [kind for kind, _, _ in _top_boxes(f)]
    if not kinds:
        return "the encoder wrote nothing"
    if b"" in kinds:
        return "the file is cut short"
    if b"moov" not in kinds:
        return "no moov index: the encoder did not finish, disk full?"
    with _quiet_stderr():
        cap = cv2.VideoCapture(str(path))
        try:
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else -1
        finally:
            cap.release()
    if count != frames:
        return f"it holds {max(count, 0)} of the {frames} frames written"
    return None


class _Bits:
    """Big-endian bit cursor over a bytearray."""

    def __init__(self, data: bytearray, byte: int):
        self.data, self.pos = data, 8 * byte

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def write(self, n: int, value: int) -> None:
        for i in range(n):
            byte, shift = self.pos >> 3, 7 - (self.pos & 7)
            self.data[byte] = (self.data[byte] & ~(1 << shift)) | (((value >> (n - 1 - i)) & 1) << shift)
            self.pos += 1


def _vol_size_bit(data: bytearray, start: int) -> int:
    """Bit position of ``video_object_layer_width`` in the MPEG-4 Part 2 VOL header at byte ``start``
    (ISO/IEC 14496-2, 6.2.3). Raises ValueError when the header is not the rectangular kind expected."""
    bits = _Bits(data, start + 4)
    bits.read(1 + 8)  # random_accessible_vol, video_object_type_indication
    verid = 1
    if bits.read(1):  # is_object_layer_identifier
        verid = bits.read(4)
        bits.read(3)
    if bits.read(4) == 15:  # aspect_ratio_info: extended PAR
        bits.read(16)
    if bits.read(1):  # vol_control_parameters
        bits.read(3)
        if bits.read(1):  # vbv_parameters
            bits.read(15 + 1 + 15 + 1 + 15 + 1 + 3 + 11 + 1 + 15 + 1)
    shape = bits.read(2)
    if shape == 3 and verid != 1:
        bits.read(4)
    if bits.read(1) != 1:
        raise ValueError("marker")
    resolution = bits.read(16)
    if bits.read(1) != 1 or shape != 0:
        raise ValueError("marker or shape")
    if bits.read(1):  # fixed_vop_rate
        bits.read(max(1, (resolution - 1).bit_length()))
    if bits.read(1) != 1:
        raise ValueError("marker")
    return bits.pos


def set_mp4v_size(path: str | Path, width: int, height: int) -> bool:
    """Set the picture size of an mp4v (MPEG-4 Part 2) file written by OpenCV, in place.

    The encoder was given the frame padded to even sides; the padded and the true size have the same
    macroblocks, so a decoder given the true size in the VOL header (and the sample entry and track header)
    decodes the coded pictures cropped back to it. The file's length does not change.

    Returns:
        True when the size was set; False (file untouched) when the layout is not the one expected.
    """
    with open(path, "rb") as f:
        found = [(o, n) for kind, o, n in _top_boxes(f) if kind == b"moov"]
        if not found or found[0][1] > 1 << 26:  # the index of a video OpenCV wrote: kilobytes to megabytes
            return False
        at, length = found[0]
        f.seek(at)
        data = bytearray(f.read(length))  # only the index is read and rewritten, in place
    try:
        vol = data.index(b"\x00\x00\x01\x20")
        pos = _vol_size_bit(data, vol)
        bits = _Bits(data, 0)
        bits.pos = pos
        old_w = bits.read(13)
        bits.read(1)
        old_h = bits.read(13)
        if (old_w + 15) // 16 != (width + 15) // 16 or (old_h + 15) // 16 != (height + 15) // 16:
            return False
        bits.pos = pos
        bits.write(13, width)
        bits.read(1)
        bits.write(13, height)
        entry = data.index(b"mp4v") - 4
        if struct.unpack(">HH", data[entry + 32 : entry + 36]) != (old_w, old_h):
            return False
        struct.pack_into(">HH", data, entry + 32, width, height)
        tkhd = data.index(b"tkhd") - 4
        struct.pack_into(">II", data, tkhd + (84 if data[tkhd + 8] == 0 else 96), width << 16, height << 16)
    except (ValueError, IndexError, struct.error):
        return False
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(data)
    return True
