"""The threaded frame writer of ``extract()`` (``framesim.extraction``): ``_FrameWriter`` encodes,
hashes and writes kept frames on background threads while decoding goes on, bounds the frames
waiting for it, and makes a chunk's images durable together (``sync``) before their rows are
committed. Also the extraction's test hook, ``_test_hook``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from framesim import _io
from framesim.images import ImageError, pixel_sha256

JPEG_QUALITY = 95
#: threads that encode, hash and write kept frames; cv2.imencode, hashlib and file I/O release the
#: GIL, so this runs beside decoding (which is what limits extraction on a 2-core machine)
WRITER_THREADS = 2
#: kept frames handed to the writer and not yet written, at most (memory: 2.7 MB per 720p frame) ...
WRITER_BACKLOG = 8
#: ... and at most this many bytes of their pixels (8K frames are 100 MB each: two at a time, which
#: keeps both writer threads busy); a single frame larger than this is still taken, alone
WRITER_BACKLOG_BYTES = 256 << 20
#: threads that fsync a chunk's images together (waiting on the disk, not the CPU)
SYNC_THREADS = 8

#: test hook: called with "frame_saved" (on a writer thread) / "chunk_flushed" (lets tests kill a
#: run at a known point); the extraction calls it too ("chunk_flushed"), so set it here
_test_hook: Callable[[str], None] | None = None


class _WriteSkipped(Exception):
    """A kept frame not written because an earlier write failed."""


def _write_frame_file(path: Path, data: bytes) -> None:
    """Write an image atomically but without fsync: ``_FrameWriter.sync`` makes a chunk's images
    durable in one go before its rows are committed."""
    _io.write_bytes(path, data, fsync=False)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _FrameWriter:
    """Encodes, hashes and writes kept frames on background threads while decoding goes on.

    ``submit`` returns a future of the frame's (pixel sha256, width, height), done once the image
    file is in place (temp + rename). ``sync`` then makes a chunk's images durable: all fsyncs at
    once, on several threads (one after another, each costs a device flush, ~4 ms here; issued
    together the file system commits them in a few journal transactions: 60 files in ~45 ms
    instead of ~120-250 ms), then their folders. The extractor commits a chunk's rows only after
    ``sync``, so the manifest never names an image that is not durably on disk.

    After a write fails, queued frames are skipped, and ``check()`` (called by every
    ``submit``) raises the first error in the caller's thread. A frame whose pixels cannot be had
    (``VideoError`` from a deferred conversion) fails only its own future: that is the video's
    problem, not the writer's.
    """

    def __init__(self, threads: int = WRITER_THREADS, backlog: int = WRITER_BACKLOG) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="framesim-writer")
        self._sync_pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="framesim-fsync")
        self._backlog = backlog
        self._queued = [0, 0]  # frames, bytes handed over and not yet written
        self._room = threading.Condition()
        self.error: BaseException | None = None

    def submit(self, path: Path, pixels: Callable[[], np.ndarray], nbytes: int = 0) -> Future[tuple[str, int, int]]:
        """Queue a frame to be written to ``path`` (its folder must exist); ``pixels()`` gives it as
        BGR (called on a writer thread, so a keyframe's conversion runs there too); ``nbytes``: its
        size in memory. Blocks while the backlog is full (WRITER_BACKLOG frames, WRITER_BACKLOG_BYTES)."""
        self.check()
        with self._room:
            self._room.wait_for(lambda: self._queued[0] == 0 or (
                self._queued[0] < self._backlog and self._queued[1] + nbytes <= WRITER_BACKLOG_BYTES))
            self._queued[0] += 1
            self._queued[1] += nbytes
        try:
            future = self._pool.submit(self._write, path, pixels)
        except BaseException:
            self._written(nbytes)
            raise
        future.add_done_callback(lambda _: self._written(nbytes))
        return future

    def _written(self, nbytes: int) -> None:
        with self._room:
            self._queued[0] -= 1
            self._queued[1] -= nbytes
            self._room.notify_all()

    def check(self) -> None:
        """Raise the first error a write met, if any."""
        if self.error is not None:
            raise self.error

    def sync(self, paths: Sequence[Path]) -> None:
        """fsync the files, then their folders and the folders holding those (so the renames, and a
        video's folder made for this chunk, are durable too)."""
        folders = sorted({p.parent for p in paths} | {p.parent.parent for p in paths})
        for batch in (paths, folders):
            for _ in self._sync_pool.map(_fsync_path, batch):  # raises the first error
                pass

    def _write(self, path: Path, pixels: Callable[[], np.ndarray]) -> tuple[str, int, int]:
        if self.error is not None:
            raise _WriteSkipped
        bgr = pixels()  # a VideoError here fails this frame only
        try:
            params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix == ".jpg" else []
            ok, buf = cv2.imencode(path.suffix, bgr, params)  # OpenCV encodes BGR: no conversion
            if not ok:
                raise ImageError(f"{path}: cannot encode as {path.suffix}")
            sha256 = pixel_sha256(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            _write_frame_file(path, buf.tobytes())
            if _test_hook is not None:
                _test_hook("frame_saved")
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise
        return sha256, bgr.shape[1], bgr.shape[0]

    def __enter__(self) -> _FrameWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._pool.shutdown(wait=True)
        self._sync_pool.shutdown(wait=True)

