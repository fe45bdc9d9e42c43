"""Generated media: PNG images (pure Python) and H.264 MP4 videos (the bundled ffmpeg), streamed in chunks."""

from __future__ import annotations

import hashlib
import logging
import math
import os
import struct
import subprocess
import tempfile
import threading
import zlib
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

log = logging.getLogger(__name__)

CHUNK_SIZE = 256 * 1024
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Private, ancillary, safe-to-copy chunk type used to pad images to ``media_bytes``.
PAD_CHUNK_TYPE = b"cfPd"
PAD_CHUNK_OVERHEAD = 12
_MAX_CHUNK_DATA = 2**31 - 1
_ZEROS = bytes(1024 * 1024)
_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


class VideoEncoderUnavailable(RuntimeError):
    """The bundled ffmpeg (the ``emulator`` extra) is missing or failed."""


# -- PNG ------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def render_png(width: int, height: int, seed: str) -> bytes:
    """Return a PNG of the given size with a colourful wave pattern derived from ``seed``.

    Rows are built with ``bytes.translate`` so a 512-pixel image takes a few milliseconds.

    :param width: pixels.
    :param height: pixels.
    :param seed: text the pattern is derived from (prompt, index).
    """
    digest = hashlib.sha256(seed.encode("utf-8", "surrogatepass")).digest()
    slopes = [1 + digest[i] % 5 for i in range(3)]
    phases = list(digest[3:6])
    base = bytearray(width * 3)
    for x in range(width):
        for c in range(3):
            base[3 * x + c] = (slopes[c] * 255 * x // max(width, 1) + phases[c]) & 0xFF
    base_row = bytes(base)
    freq = 1 + digest[6] % 3
    bands = 1 + digest[7] % 4
    tables: dict[int, bytes] = {}
    rows = []
    for y in range(height):
        shift = (y * 256 * bands // max(height, 1)) & 0xFF
        table = tables.get(shift)
        if table is None:
            # 16 levels per channel: visible bands that compress to tens of kilobytes.
            table = bytes(
                int(127.5 + 127.0 * math.sin(2 * math.pi * (freq * v + shift) / 256)) & 0xF0
                for v in range(256)
            )
            tables[shift] = table
        rows.append(b"\x00" + base_row.translate(table))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"".join(rows), 6)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _IEND


class PngCache:
    """A small LRU of rendered PNGs, keyed by (seed, width, height).

    :param size: entries kept.
    """

    def __init__(self, size: int = 64) -> None:
        self._size = size
        self._items: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, seed: str, width: int, height: int) -> bytes:
        """Return the PNG, rendering it on a miss.

        :param seed: pattern seed.
        :param width: pixels.
        :param height: pixels.
        """
        key = (seed, width, height)
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                return data
        data = render_png(width, height, seed)
        with self._lock:
            self._items[key] = data
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return data


def padded_size(png: bytes, media_bytes: int | None) -> int:
    """Return the size served for ``png``: ``media_bytes`` when padding can reach it exactly.

    Padding adds at least one 12-byte chunk, so a target below ``len(png) + 12`` serves the image as is.

    :param png: the generated image.
    :param media_bytes: the configured size, or ``None``.
    """
    if media_bytes is None or media_bytes < len(png) + PAD_CHUNK_OVERHEAD:
        return len(png)
    return media_bytes


def stream_png(png: bytes, total: int) -> Iterator[bytes]:
    """Yield ``png`` padded to ``total`` bytes with private ``cfPd`` chunks before ``IEND``.

    The padding is zeros produced while streaming (CRC computed on the fly): memory stays flat
    whatever the size.

    :param png: the generated image (ending with ``IEND``).
    :param total: bytes to produce (``padded_size``).
    """
    if total <= len(png):
        for start in range(0, len(png), CHUNK_SIZE):
            yield png[start : start + CHUNK_SIZE]
        return
    body = png[: -len(_IEND)]
    for start in range(0, len(body), CHUNK_SIZE):
        yield body[start : start + CHUNK_SIZE]
    remaining = total - len(png)
    while remaining > 0:
        # Each chunk carries at most 2**31-1 bytes; never leave a remainder smaller than a chunk header.
        data_len = min(remaining - PAD_CHUNK_OVERHEAD, _MAX_CHUNK_DATA)
        if 0 < remaining - PAD_CHUNK_OVERHEAD - data_len < PAD_CHUNK_OVERHEAD:
            data_len -= PAD_CHUNK_OVERHEAD
        yield struct.pack(">I", data_len) + PAD_CHUNK_TYPE
        crc = zlib.crc32(PAD_CHUNK_TYPE)
        left = data_len
        while left > 0:
            piece = _ZEROS if left >= len(_ZEROS) else _ZEROS[:left]
            crc = zlib.crc32(piece, crc)
            left -= len(piece)
            yield piece
        yield struct.pack(">I", crc)
        remaining -= data_len + PAD_CHUNK_OVERHEAD
    yield _IEND


# -- video ----------------------------------------------------------------------------------------


def ffmpeg_exe() -> str:
    """Return the bundled ffmpeg executable, or raise :class:`VideoEncoderUnavailable`."""
    try:
        import imageio_ffmpeg
    except ImportError:
        raise VideoEncoderUnavailable(
            "Video encoding needs the bundled ffmpeg: install airflow-provider-cerebraform[emulator] "
            "(the 'emulator' extra, package imageio-ffmpeg)."
        ) from None
    try:
        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:
        raise VideoEncoderUnavailable(
            f"The bundled ffmpeg of the 'emulator' extra (imageio-ffmpeg) is not usable: {exc}"
        ) from None


def default_media_dir() -> str:
    """Return the default video cache directory (per user, under the system temp dir)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(tempfile.gettempdir(), f"cerebraform-emulator-{uid}", "videos-v1")


class VideoCache:
    """Encodes test-pattern MP4s once per (size, duration, fps) and keeps them on disk.

    :param directory: cache directory (created when needed).
    """

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or default_media_dir()
        self._locks: dict[str, threading.Lock] = {}
        self._pending: set[str] = set()
        self._guard = threading.Lock()

    def path_for(self, width: int, height: int, duration: int, fps: int) -> str:
        """Return the cache path of a video (which may not exist yet).

        :param width: pixels (even).
        :param height: pixels (even).
        :param duration: seconds.
        :param fps: frames per second.
        """
        return os.path.join(self.directory, f"testsrc2-{width}x{height}-{duration}s-{fps}fps.mp4")

    def ensure(self, width: int, height: int, duration: int, fps: int) -> str:
        """Return the path of the video, encoding it first if it is not cached.

        :param width: pixels (even).
        :param height: pixels (even).
        :param duration: seconds.
        :param fps: frames per second.
        """
        path = self.path_for(width, height, duration, fps)
        if os.path.exists(path):
            return path
        with self._guard:
            lock = self._locks.setdefault(path, threading.Lock())
        with lock:
            if not os.path.exists(path):
                self._encode(path, width, height, duration, fps)
        return path

    def _encode(self, path: str, width: int, height: int, duration: int, fps: int) -> None:
        exe = ffmpeg_exe()
        os.makedirs(self.directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".mp4", dir=self.directory)
        os.close(fd)
        command = [
            exe,
            "-hide_banner",
            "-loglevel",
            "error",
            "-nostdin",
            "-y",
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={width}x{height}:rate={fps}",
            "-t",
            str(duration),
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            tmp,
        ]
        log.info("Encoding %dx%d %ds test video with the bundled ffmpeg", width, height, duration)
        try:
            done = subprocess.run(command, capture_output=True, timeout=120, check=False)
            if done.returncode != 0:
                raise VideoEncoderUnavailable(
                    "The bundled ffmpeg failed to encode the emulated video: "
                    + done.stderr.decode("utf-8", "replace").strip()[-500:]
                )
            os.replace(tmp, path)
        except (OSError, subprocess.SubprocessError) as exc:
            raise VideoEncoderUnavailable(f"The bundled ffmpeg could not run: {exc}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def prepare_async(self, width: int, height: int, duration: int, fps: int) -> None:
        """Start encoding in the background so the result is ready sooner; errors surface later.

        :param width: pixels (even).
        :param height: pixels (even).
        :param duration: seconds.
        :param fps: frames per second.
        """
        path = self.path_for(width, height, duration, fps)
        if os.path.exists(path):
            return
        with self._guard:
            if path in self._pending:
                return
            self._pending.add(path)

        def work() -> None:
            try:
                self.ensure(width, height, duration, fps)
            except VideoEncoderUnavailable as exc:
                log.warning("%s", exc)
            finally:
                with self._guard:
                    self._pending.discard(path)

        threading.Thread(target=work, name="cerebraform-video-encode", daemon=True).start()


def stream_file(path: str, limit: int | None = None) -> Iterator[bytes]:
    """Yield a file's bytes in chunks, stopping after ``limit`` bytes when given.

    :param path: the file.
    :param limit: bytes to yield at most.
    """
    left = os.path.getsize(path) if limit is None else limit
    with open(path, "rb") as handle:
        while left > 0:
            piece = handle.read(min(CHUNK_SIZE, left))
            if not piece:
                return
            left -= len(piece)
            yield piece


def mp4_duration_bytes(data: bytes) -> float:
    """Return the duration in seconds from MP4 bytes (``moov/mvhd``).

    :param data: the whole file.
    """
    index = data.find(b"mvhd")
    if index < 4:
        raise ValueError("no mvhd box")
    version = data[index + 4]
    if version == 1:
        timescale, duration = struct.unpack(">IQ", data[index + 24 : index + 36])
    else:
        timescale, duration = struct.unpack(">II", data[index + 16 : index + 24])
    return duration / timescale
