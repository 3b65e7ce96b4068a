"""The frame dataset on disk, and ``extract()``: videos in, frame images + manifest out.

Layout of a dataset folder::

    DATASET/
      dataset.json                          format marker {"format": "framesim-frames", "version": 1}
      manifest.parquet                      the manifest (MANIFEST_COLUMNS, then video_id)
      manifest.csv                          the same table as CSV
      frames/<stem>-<id8>/<index:08d>.jpg   frame images (.png with image_format="png")
      state/videos/<video_id>.json          per-video record: fingerprint, header, one entry per
                                            sampling spec with status, last frame index, counts
      state/pending/<seq>.parquet           manifest rows written since the last consolidation
      .lock                                 flock'ed while a run uses the dataset

Crash safety: every file is written atomically (temp + rename) and fsync'ed before anything refers
to it. Kept frames are encoded, hashed and written by background threads (``_FrameWriter``) while
decoding goes on. Extraction appends rows in chunks (every 100 kept frames or 10 s): first it
waits for the chunk's images and fsyncs them all at once, then writes the chunk of rows as a new
file under ``state/pending/``, then the video's state record; so the manifest never names an image
that is not durably on disk. The manifest is the consolidated table plus the pending chunks
(deduplicated by ``frame_id``), so a run killed at any point leaves a consistent dataset, and the
next run folds the chunks into ``manifest.parquet``/``.csv``. Always read the manifest through
``FrameDataset.manifest()``.

Identity: a video is identified by its content (size + sha256 of its first and last MiB), a frame
by (video, 0-based decoded frame index); so the same file under another path, a rerun, or a rerun
with another sampling spec never adds a frame twice.

Resume: a video whose record says "done" for the same spec (sampler + start/end/max_frames) is not
opened again. Otherwise it is decoded from its first frame again, with ``grab()`` only (frame
indices and repaired timestamps depend on every earlier frame, and seeking is not frame-exact),
and only frames not yet in the dataset are converted and written. The scene sampler, whose
decisions need pixels, restores its saved state instead of replaying up to the last checkpoint.
A video that breaks off (see ``VideoReader.incomplete_reason``) keeps its frames, gets status
"error" and is tried again by the next run.

Keyframe mode (``keyframes=True``) reads videos with ``framesim.keyframes.KeyframeReader``
(PyAV), which decodes only keyframes; its frames get the index, timestamp and pixels full
decoding gives them, so both modes can fill one dataset without duplicates. Its runs are recorded
under their own sampling spec (``keyframes`` or ``keyframes,fps=F``) and resume the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import math
import os
import re
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from framesim import _io
from framesim.images import ImageError, pixel_sha256
from framesim.sampling import TIME_EPS, Sampler, make_sampler
from framesim.video import VideoError, VideoReader, find_videos

if TYPE_CHECKING:
    from framesim.keyframes import KeyframeReader

MANIFEST_COLUMNS: list[str] = ["frame_id", "video", "frame_index", "timestamp_s", "width", "height", "path",
                               "sha256"]
#: appended after MANIFEST_COLUMNS: the content id of the video (64 hex)
EXTRA_COLUMNS: list[str] = ["video_id"]
_INT_COLUMNS = ("frame_index", "width", "height")

FORMAT = "framesim-frames"
FORMAT_VERSION = 1
STATE_VERSION = 1

#: flush kept frames to the manifest after this many rows ...
CHUNK_ROWS = 100
#: ... or after this many seconds, whichever comes first
CHUNK_SECONDS = 10.0
#: fold pending chunks into manifest.parquet mid-run once there are this many
MAX_PENDING_CHUNKS = 200
#: bytes read from each end of a video file to identify it
FINGERPRINT_BYTES = 1 << 20
IMAGE_FORMATS = {"jpg": "jpg", "jpeg": "jpg", "png": "png"}
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
#: run at a known point)
_test_hook: Callable[[str], None] | None = None


class DatasetLockedError(RuntimeError):
    """Another run (process or thread) is using the dataset."""


class DataFileError(ValueError):
    """A file framesim reads (manifest, pairs, ground truth) is unreadable or breaks its contract.

    The message is one line and starts with the file's path; the CLI prints it and exits 2."""


#: the manifest's text columns (``video_id`` may be absent from old datasets: filled with "")
_STR_COLUMNS = ("frame_id", "video", "path", "sha256", "video_id")


# -- locking ----------------------------------------------------------------------------------------
# flock locks belong to an open file description, so a second lock() in the same process would
# conflict with the first. Nested use by the same thread (the CLI locking around extract(), which
# locks too) is allowed by counting; another thread or process gets DatasetLockedError.
_held_locks: dict[str, tuple[int, int, int]] = {}  # lock path -> (fd, owning thread id, depth)
_held_guard = threading.Lock()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FrameDataset:
    """A folder of frame images with a manifest; see the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    # -- paths ----------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def csv_path(self) -> Path:
        return self.root / "manifest.csv"

    @property
    def lock_path(self) -> Path:
        return self.root / ".lock"

    @property
    def _pending_dir(self) -> Path:
        return self.root / "state" / "pending"

    @property
    def _videos_dir(self) -> Path:
        return self.root / "state" / "videos"

    def frame_path(self, rel_path: str) -> Path:
        """Absolute path of a frame image from its manifest ``path`` (refuses paths that leave the root)."""
        rel = PurePosixPath(rel_path)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\\" in rel_path:
            raise ValueError(f"frame path {rel_path!r} is not a relative path inside the dataset")
        return (self.root / Path(*rel.parts)).absolute()

    # -- manifest -------------------------------------------------------------------------------
    @staticmethod
    def empty_manifest() -> pd.DataFrame:
        cols: dict[str, pd.Series] = {}
        for c in MANIFEST_COLUMNS + EXTRA_COLUMNS:
            dtype: Any = "int64" if c in _INT_COLUMNS else "float64" if c == "timestamp_s" else str
            cols[c] = pd.Series([], dtype=dtype)
        return pd.DataFrame(cols)

    def _pending_chunks(self) -> list[Path]:
        if not self._pending_dir.is_dir():
            return []
        return sorted(p for p in self._pending_dir.iterdir() if p.suffix == ".parquet" and not p.name.startswith("."))

    def manifest(self) -> pd.DataFrame:
        """All frames: MANIFEST_COLUMNS then EXTRA_COLUMNS, one row per frame_id, ordered by video
        (first added first) then frame_index. Empty (with the columns) if nothing was extracted.

        Raises DataFileError naming the file if manifest.parquet or a pending chunk is unreadable or
        breaks the contract (missing columns, values of the wrong type).
        """
        files = ([self.manifest_path] if self.manifest_path.exists() else []) + self._pending_chunks()
        parts = [p for p in (_read_manifest_part(f) for f in files) if len(p)]
        if not parts:
            return self.empty_manifest()
        return _normalise(pd.concat(parts, ignore_index=True))

    def append(self, rows: pd.DataFrame) -> None:
        """Add manifest rows as a new pending chunk (atomic); ``manifest()`` sees them at once."""
        if not len(rows):
            return
        rows = rows[MANIFEST_COLUMNS + EXTRA_COLUMNS]
        # time-ordered names keep the rows in the order they were added; one writer holds the lock
        name = f"{time.time_ns():020d}-{os.getpid()}.parquet"
        _io.write_table(rows.reset_index(drop=True), parquet=self._pending_dir / name)

    def consolidate(self) -> None:
        """Fold pending chunks into manifest.parquet and manifest.csv (call under ``lock()``).

        Order matters for crashes: parquet, then CSV, then the chunks are removed; a crash in
        between leaves rows twice, which ``manifest()`` drops by frame_id.
        """
        chunks = self._pending_chunks()
        if not chunks and self.csv_path.exists() and self.manifest_path.exists():
            return
        df = self.manifest()
        _io.write_table(df, parquet=self.manifest_path, csv=self.csv_path)
        for p in chunks:
            p.unlink(missing_ok=True)

    # -- per-video state ------------------------------------------------------------------------
    def video_state(self, video_id: str) -> dict[str, Any] | None:
        """The state record of a video (by content id), or None."""
        path = self._videos_dir / f"{video_id}.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None  # unreadable record: start that video afresh (frames already present are kept)

    def write_video_state(self, video_id: str, record: dict[str, Any]) -> None:
        _io.write_json(self._videos_dir / f"{video_id}.json", record)

    def _remove_stale_temp_files(self, folder: Path) -> None:
        """Delete temp files an atomic write left when its process was killed (call under lock():
        no live writer can own them then)."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for entry in os.scandir(folder):
                if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)

    def _ensure_layout(self) -> None:
        marker = self.root / "dataset.json"
        if marker.exists():
            try:
                info = json.loads(marker.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                info = {}
            if info.get("format") != FORMAT or int(info.get("version", 0)) > FORMAT_VERSION:
                raise RuntimeError(f"{self.root}: not a framesim frame dataset this version can write "
                                   f"(dataset.json says {info!r})")
            return
        _io.write_json(marker, {"format": FORMAT, "version": FORMAT_VERSION,
                                "manifest_columns": MANIFEST_COLUMNS + EXTRA_COLUMNS})

    # -- locking --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the dataset's lock (``fcntl.flock`` on ``<root>/.lock``, non-blocking).

        Raises DatasetLockedError if another process or thread holds it. Re-entrant for the thread
        that holds it. The kernel drops the lock when the holder dies, so a stale lock file is harmless.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.lock_path)
        me = threading.get_ident()
        with _held_guard:
            held = _held_locks.get(key)
            if held is not None:
                fd, owner, depth = held
                if owner != me:
                    raise DatasetLockedError(f"dataset {self.root} is in use by another thread of this process")
                _held_locks[key] = (fd, owner, depth + 1)
            else:
                _held_locks[key] = (self._acquire(key), me, 1)
        try:
            yield
        finally:
            with _held_guard:
                fd, owner, depth = _held_locks[key]
                if depth > 1:
                    _held_locks[key] = (fd, owner, depth - 1)
                else:
                    del _held_locks[key]
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)

    def _acquire(self, key: str) -> int:
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            try:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            except OSError:
                holder = ""
            os.close(fd)
            raise DatasetLockedError(
                f"dataset {self.root} is in use by another framesim run"
                + (f" ({holder})" if holder else "")
                + "; wait for it to finish (the lock is released when that process ends)") from exc
        # who holds it, for the message another run will show (the lock itself is the flock)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {_now()}\n".encode(), 0)
        return fd


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def checked_numbers(values: pd.Series, path: Path, table: str, whole: bool, nonnegative: bool = False) -> np.ndarray:
    """A column of a data file as int64 (``whole``) or float64; DataFileError naming the file, the column and
    how many values are not finite (or not whole numbers int64 holds, or negative with ``nonnegative``)."""
    try:
        floats = pd.to_numeric(values, errors="coerce").astype("float64").to_numpy()
    except (TypeError, ValueError, OverflowError):
        floats = np.full(len(values), np.nan)
    bad = ~np.isfinite(floats)
    if whole:
        bad |= (floats != np.round(floats)) | (np.abs(floats) >= 2.0**63)
        if nonnegative:
            bad |= floats < 0
    if bad.any():
        kind = ("whole numbers" + (" >= 0" if nonnegative else "")) if whole else "finite numbers"
        raise DataFileError(f"{path}: {table} column {values.name} has {int(bad.sum())} value(s) that are not {kind}")
    if not whole:
        return floats
    # exact, not through float64, where the file has integers (frame indices above 2**53)
    return values.to_numpy().astype("int64") if values.dtype.kind in "iu" else floats.astype("int64")


def _read_manifest_part(path: Path) -> pd.DataFrame:
    """One manifest file (manifest.parquet or a pending chunk), checked against the contract and with
    the documented dtypes; DataFileError naming the file otherwise (never a bare pyarrow/pandas error)."""
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow and the file system each raise their own kinds
        raise DataFileError(f"{path}: not a readable manifest ({_one_line(exc)}); "
                            "restore it or extract into a new dataset") from exc
    try:
        return _check_manifest_part(df, path)
    except DataFileError:
        raise
    except Exception as exc:  # pyarrow decodes lazily: a damaged string column fails only when used
        raise DataFileError(f"{path}: damaged manifest ({_one_line(exc)}); "
                            "restore it or extract into a new dataset") from exc


def _check_manifest_part(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    if not len(df):
        return df
    if not df.columns.is_unique:
        raise DataFileError(f"{path}: manifest has duplicate column names")
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise DataFileError(f"{path}: manifest lacks column(s) {', '.join(missing)}")
    df = df.copy()
    if "video_id" not in df.columns:
        df["video_id"] = ""
    for c in _STR_COLUMNS:
        # Text columns: strings only (a missing value would become the text "None" or "nan" downstream).
        if not all(isinstance(v, str) for v in df[c].tolist()):
            raise DataFileError(f"{path}: manifest column {c} must hold text in every row")
    for c in (*_INT_COLUMNS, "timestamp_s"):
        # int64 columns must be whole numbers that int64 holds; timestamps finite (the extraction repairs them)
        df[c] = checked_numbers(df[c], path, "manifest", whole=c != "timestamp_s", nonnegative=True)
    return df


def _normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in contract order, one row per frame_id, dtypes fixed, stable order."""
    for c in EXTRA_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    extra = [c for c in df.columns if c not in MANIFEST_COLUMNS + EXTRA_COLUMNS]
    df = df[MANIFEST_COLUMNS + EXTRA_COLUMNS + extra].drop_duplicates("frame_id", keep="first")
    df = df.astype({c: "int64" for c in _INT_COLUMNS} | {"timestamp_s": "float64"})
    order = pd.factorize(df["video_id"])[0]
    df = df.assign(_order=order).sort_values(["_order", "frame_index"], kind="stable").drop(columns="_order")
    return df.reset_index(drop=True)


# -- naming -----------------------------------------------------------------------------------------
def safe_stem(stem: str, max_bytes: int = 100) -> str:
    """A file-system- and shell-friendly version of a video's stem.

    Keeps letters and digits of any script, '.', '-' and '_'; anything else (spaces, '<>&"/\\',
    control characters, undecodable bytes) becomes '_'. No leading '-' or '.', at most ``max_bytes``
    UTF-8 bytes, never empty. Uniqueness comes from the id suffix, not from the stem.
    """
    s = unicodedata.normalize("NFC", stem)
    s = re.sub(r"[^\w.\-]+", "_", s)
    s = re.sub(r"_{2,}", "_", s).strip("._-")
    while len(s.encode("utf-8", "replace")) > max_bytes:
        s = s[:-1]
    return s.rstrip("._-") or "video"


def _display_path(path: Path) -> str:
    """The path as the user gave it, as a string that can be stored (no lone surrogates)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def video_fingerprint(path: str | os.PathLike[str]) -> str:
    """Content id of a video: sha256 over its size and its first and last MiB (64 hex)."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        h = hashlib.sha256(f"framesim-video|{size}|".encode())
        h.update(fh.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            fh.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            h.update(fh.read(FINGERPRINT_BYTES))
    return h.hexdigest()


# -- extraction -------------------------------------------------------------------------------------
@dataclasses.dataclass
class ExtractSummary:
    """What one ``extract()`` call did."""

    frames_added: int = 0
    #: frames the sampling selected that were already in the dataset
    frames_existing: int = 0
    #: videos (as given) that are now complete for this sampling, including ones done before
    videos_done: list[str] = dataclasses.field(default_factory=list)
    #: (video as given, reason) for videos that could not be opened or broke off
    failures: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    frames_decoded: int = 0
    #: (video, remark) for oddities that are not failures (header/frame count mismatch, repaired timestamps)
    notes: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _run_key(sampler: Sampler, start: float | None, end: float | None, max_frames: int | None) -> str:
    return (f"{sampler.spec()};start={'' if start is None else f'{start:.6g}'};"
            f"end={'' if end is None else f'{end:.6g}'};max={'' if max_frames is None else max_frames}")


def extract(inputs: Sequence[str | os.PathLike[str]], dataset: str | os.PathLike[str], *,
            fps: float | None = None, every: int | None = None, scene: float | None = None,
            keyframes: bool = False,
            start: float | None = None, end: float | None = None, max_frames: int | None = None,
            image_format: str = "jpg", progress: bool = True,
            on_error: Callable[[str], None] | None = None) -> ExtractSummary:
    """Decode videos and add the sampled frames to the dataset at ``dataset``.

    ``inputs``: video files and/or folders (searched recursively, see ``find_videos``).
    Sampling (one applies; ``scene`` or ``every`` win over ``fps``, both is a ValueError; with none
    of them, ``fps=1``):

    * ``fps=F``: the first frame at or after each 1/F s tick of the stream clock (from ``start``).
    * ``every=N``: decoded frames 0, N, 2N, ...
    * ``scene=T``: a frame whenever the picture differs from the last kept frame by more than T,
      measured as the mean absolute difference of 32x32 colour thumbnails on a 0..1 scale (0.1 is
      a good default: cuts score ~0.15-0.5, motion within a shot ~0.01-0.05); the first frame in
      range is always kept.
    * ``keyframes=True``: decode only keyframes (PyAV; 720p with a keyframe a second: ~100x real
      time where full decoding manages ~15x; see ``framesim.keyframes``) and keep every one, or
      with ``fps=F`` only those at least 1/F s after the last one kept. Frames come at the
      encoder's keyframe times, not on a grid, and a long-GOP file gives few. ``every`` and
      ``scene`` need every frame: a ValueError. ``start`` does not seek: decoding starts at 0.

    ``start``/``end`` (seconds, stream time) limit sampling to frames with start <= t < end;
    decoding stops at ``end``. ``max_frames`` caps the frames selected per video (counting those
    already present). Images are JPEG (quality 95) or PNG (``image_format="png"``).

    Holds the dataset lock for the whole call (DatasetLockedError if another run holds it). A video
    that cannot be opened or breaks off mid-way is reported through ``on_error("<path>: <reason>")``
    and in ``failures``; the frames it gave are kept and the other videos go on.
    """
    if every is not None and scene is not None:
        raise ValueError("give at most one of every and scene")
    fmt = IMAGE_FORMATS.get(str(image_format).lower().lstrip("."))
    if fmt is None:
        raise ValueError(f"image_format must be one of {sorted(set(IMAGE_FORMATS))}, got {image_format!r}")
    if start is not None and not (math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be a number of seconds >= 0, got {start!r}")
    if end is not None and not (end > (start or 0.0)):
        raise ValueError(f"end must be greater than start, got start={start!r} end={end!r}")
    if max_frames is not None:
        if isinstance(max_frames, bool) or int(max_frames) != max_frames or max_frames < 1:
            raise ValueError(f"max_frames must be a positive integer, got {max_frames!r}")
        max_frames = int(max_frames)
    if isinstance(inputs, (str, os.PathLike)):  # one path, not a sequence of characters
        inputs = [inputs]
    if fps is None and every is None and scene is None and not keyframes:
        fps = 1.0
    sampler = make_sampler(fps, every, scene, origin=start or 0.0, keyframes=keyframes)

    t0 = time.monotonic()
    summary = ExtractSummary()
    ds = FrameDataset(dataset)
    videos = find_videos(inputs)
    with ds.lock():
        ds._ensure_layout()
        for folder in (ds.root, ds._pending_dir, ds._videos_dir):
            ds._remove_stale_temp_files(folder)
        ds.consolidate()
        try:
            with _FrameWriter() as writer:
                job = _Extraction(ds, sampler, start=start, end=end, max_frames=max_frames, ext=fmt,
                                  progress=progress, on_error=on_error, summary=summary, writer=writer,
                                  keyframes=keyframes)
                for path in videos:
                    job.run_video(path)
        finally:
            ds.consolidate()
    summary.seconds = time.monotonic() - t0
    return summary


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


class _Extraction:
    """The state of one extract() call: the dataset's frames by video, the options, the tally."""

    def __init__(self, ds: FrameDataset, sampler: Sampler, *, start: float | None, end: float | None,
                 max_frames: int | None, ext: str, progress: bool,
                 on_error: Callable[[str], None] | None, summary: ExtractSummary,
                 writer: _FrameWriter, keyframes: bool = False) -> None:
        self.ds, self.sampler, self.writer, self.keyframes = ds, sampler, writer, keyframes
        self.start, self.end, self.max_frames, self.ext = start, end, max_frames, ext
        self.progress, self.on_error, self.summary = progress, on_error, summary
        self.key = _run_key(sampler, start, end, max_frames)
        manifest = ds.manifest()
        # video_id -> {frame_index: path} of frames already in the dataset
        self.present: dict[str, dict[int, str]] = {}
        for vid, idx, rel in zip(manifest["video_id"], manifest["frame_index"], manifest["path"], strict=True):
            self.present.setdefault(str(vid), {})[int(idx)] = str(rel)
        self.pending_chunks = len(ds._pending_chunks())

    def fail(self, video: str, reason: str) -> None:
        reason = " ".join(reason.split())
        self.summary.failures.append((video, reason))
        if self.on_error is not None:
            self.on_error(f"{video}: {reason}")

    def _name_for(self, vid: str, path: Path, record: dict[str, Any] | None) -> str:
        """Folder name of a video's frames; once chosen it sticks to the video's content id."""
        if record and record.get("name"):
            return str(record["name"])
        existing = self.present.get(vid)
        if existing:  # state lost but frames present: reuse their folder
            parts = PurePosixPath(next(iter(existing.values()))).parts
            if len(parts) >= 3:
                return parts[1]
        return f"{safe_stem(path.stem)}-{vid[:8]}"

    def run_video(self, path: Path) -> None:
        video = _display_path(path)
        if not path.is_file():  # checked first: opening a FIFO to fingerprint it would block
            self.fail(video, "no such file" if not path.exists() else "not a regular file")
            return
        try:
            vid = video_fingerprint(path)
        except OSError as exc:
            self.fail(video, f"cannot read ({exc.strerror or exc})")
            return
        record = self.ds.video_state(vid) or {}
        run = dict(record.get("runs", {}).get(self.key) or {})
        present = self.present.setdefault(vid, {})
        if run.get("status") == "done" and len(present) >= int(run.get("frames_selected", 0)):
            self.summary.frames_existing += int(run.get("frames_selected", 0))
            self.summary.videos_done.append(video)
            return
        try:
            if self.keyframes:
                from framesim.keyframes import KeyframeReader

                reader: VideoReader | KeyframeReader = KeyframeReader(path)
            else:
                reader = VideoReader(path)
        except VideoError as exc:
            self.fail(video, exc.reason)
            return
        with reader:
            name = self._name_for(vid, path, record)
            self.ds._remove_stale_temp_files(self.ds.root / "frames" / name)
            record = {
                "format": "framesim-video-state", "version": STATE_VERSION, "video_id": vid,
                "name": name, "video": record.get("video", video),
                "size": path.stat().st_size,
                "header": {"fps": reader.fps, "frame_count": reader.frame_count,
                           "width": reader.width, "height": reader.height},
                "runs": dict(record.get("runs", {})),
            }
            _VideoRun(self, reader, video, vid, record, run, present).run()

    def flushed_chunk(self) -> None:
        self.pending_chunks += 1
        if self.pending_chunks >= MAX_PENDING_CHUNKS:
            self.ds.consolidate()
            self.pending_chunks = 0


class _VideoRun:
    """Extraction of one opened video under one sampling spec."""

    def __init__(self, job: _Extraction, reader: VideoReader | KeyframeReader, video: str, vid: str,
                 record: dict[str, Any], run: dict[str, Any], present: dict[int, str]) -> None:
        self.job, self.reader, self.video, self.vid = job, reader, video, vid
        self.record, self.present = record, present
        self.sampler = job.sampler
        # frames handed to the writer since the last flush: (manifest row or None for an image
        # put back under an existing row, its file, future of its sha256, width, height)
        self.pending: list[tuple[dict[str, Any] | None, Path, Future[tuple[str, int, int]]]] = []
        self.folder_made = False
        self.selected = 0
        self.last_index = -1  # last frame decided
        self.last_flush = time.monotonic()
        self.resume_after = -1
        self.sampler.reset()
        # Samplers that look at pixels can't cheaply replay the frames already done, so resume them
        # from their saved state; the others just replay wants(), which costs nothing.
        if (run.get("status") in ("partial", "error") and run.get("sampler_state") is not None
                and self.sampler.needs_pixels and int(run.get("last_index", -1)) >= 0):
            self.sampler.restore(run["sampler_state"])
            self.resume_after = self.last_index = int(run["last_index"])
            self.selected = int(run.get("frames_selected", 0))
            job.summary.frames_existing += self.selected  # selected before the interruption, on disk
        # (last index, frames selected, sampler state) at the last point where all three agree and
        # every frame selected so far is on disk: what a resume may start from
        self.checkpoint: tuple[int, int, dict[str, Any] | None] = (
            self.last_index, self.selected, self.sampler.state() if self.resume_after >= 0 else None)

    def run(self) -> None:
        job, reader, summary = self.job, self.reader, self.job.summary
        decoded_before = reader.frames_decoded
        bar = tqdm(total=reader.frame_count or None, unit="frame", desc=self.record["name"][:40],
                   file=sys.stderr, disable=not job.progress, dynamic_ncols=True)
        try:
            with bar:
                self._loop(bar)
                if reader.ended:  # headers over- or under-declare; end the bar where the stream ended
                    bar.update(reader.frames_read - bar.n)
                    bar.total = reader.frames_read
                    bar.refresh()
            self._written_rows(strict=True, keep=True)  # a failed write ends the run here, as an exception
        except VideoError as exc:
            self._flush("error", exc.reason, consistent=False)
            job.writer.check()  # a failed write is ours, not the video's: it still ends the run
            job.fail(self.video, exc.reason)
            return
        except BaseException:
            # interrupted (Ctrl-C) or failing on our side (disk full): keep what is complete
            with contextlib.suppress(Exception):
                self._flush("partial", consistent=False)
            raise
        finally:
            summary.frames_decoded += reader.frames_decoded - decoded_before
        note = reader.header_note()
        if note:
            summary.notes.append((self.video, note))
        problem = reader.incomplete_reason() if reader.ended else None
        if problem:
            self._flush("error", problem, note)
            job.fail(self.video, problem)
        else:
            self._flush("done", None, note)
            summary.videos_done.append(self.video)

    def _loop(self, bar: Any) -> None:
        job, reader, sampler = self.job, self.reader, self.sampler
        start = job.start if job.start is not None else -math.inf
        end = job.end if job.end is not None else math.inf
        for index, t in reader:
            bar.update(index + 1 - bar.n)  # keyframe mode jumps ahead; the bar counts frames of video
            if index <= self.resume_after or t < start - TIME_EPS:
                continue
            if t >= end - TIME_EPS:
                return
            if sampler.wants(index, t):
                bgr = reader.retrieve_bgr() if sampler.needs_pixels else None
                if bgr is None or sampler.keep(index, t, sampler.thumbnail(bgr)):
                    self._keep(index, t, bgr)
                    if job.max_frames is not None and self.selected >= job.max_frames:
                        self.last_index = index
                        return
            self.last_index = index
            if len(self.pending) >= CHUNK_ROWS or time.monotonic() - self.last_flush >= CHUNK_SECONDS:
                self._flush("partial")
                bar.set_postfix(kept=self.selected, refresh=False)

    def _keep(self, index: int, t: float, bgr: np.ndarray | None) -> None:
        ds, summary = self.job.ds, self.job.summary
        rel = self.present.get(index)
        if rel is not None and ds.frame_path(rel).exists():
            summary.frames_existing += 1
            self.selected += 1
            return
        pixels = self.reader.retrieve_bgr_deferred() if bgr is None else (lambda: bgr)
        nbytes = bgr.nbytes if bgr is not None else self.reader.width * self.reader.height * 3
        writer = self.job.writer
        if rel is not None:  # in the manifest but the image is gone: put it back, same row
            path = ds.frame_path(rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.pending.append((None, path, writer.submit(path, pixels, nbytes)))
            summary.frames_existing += 1
            self.selected += 1
            return
        rel = f"frames/{self.record['name']}/{index:08d}.{self.job.ext}"
        path = ds.root / rel
        if not self.folder_made:  # here, by this thread: writer threads only write files
            path.parent.mkdir(parents=True, exist_ok=True)
            self.folder_made = True
        future = writer.submit(path, pixels, nbytes)
        self.present[index] = rel
        self.pending.append(({  # sha256, width and height come from the writer
            "frame_id": f"{self.record['name']}/{index:08d}", "video": self.video, "frame_index": index,
            "timestamp_s": t, "width": 0, "height": 0, "path": rel, "sha256": "", "video_id": self.vid,
        }, path, future))
        self.selected += 1

    def _written_rows(self, strict: bool, keep: bool = False) -> list[dict[str, Any]]:
        """Wait for the frames handed to the writer, make their images durable; the rows of those
        now on disk, completed.

        ``strict``: if a frame failed, raise the error (the writer's first, else the frame's
        VideoError) and keep ``pending`` for a non-strict call, which drops the failed frames: a
        resumed run decides and writes them again. ``keep``: only wait and check.
        """
        wait_for([future for _, _, future in self.pending])
        if strict:
            self.job.writer.check()
            for _, _, future in self.pending:
                if future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
        if keep:
            return []
        written = [(row, path, future) for row, path, future in self.pending if future.exception() is None]
        self.job.writer.sync([path for _, path, _ in written])
        rows = []
        for row, _, future in written:
            if row is not None:
                row["sha256"], row["width"], row["height"] = future.result()
                rows.append(row)
        self.pending = []
        return rows

    def _flush(self, status: str, error: str | None = None, note: str | None = None, *,
               consistent: bool = True) -> None:
        """Images, then rows, then the state that says they are there: a crash in between only
        repeats work.

        ``consistent``: called between frames (the sampler has seen exactly the frames up to
        last_index). After an exception mid-frame it is not, and the state keeps the previous
        checkpoint: the frames after it are decided again on resume (same answers) and found present.
        """
        job = self.job
        rows = self._written_rows(strict=consistent)
        if rows:
            job.ds.append(pd.DataFrame(rows))
            job.summary.frames_added += len(rows)
            job.flushed_chunk()
        if consistent:
            self.checkpoint = (self.last_index, self.selected, self.sampler.state())
        last_index, selected, sampler_state = self.checkpoint
        self.record["runs"][job.key] = {
            "status": status, "last_index": last_index, "frames_selected": selected,
            "frames_decoded": self.reader.frames_decoded, "sampler": self.sampler.spec(),
            "start": job.start, "end": job.end, "max_frames": job.max_frames,
            "sampler_state": sampler_state, "error": error, "note": note, "updated": _now(),
        }
        job.ds.write_video_state(self.vid, self.record)
        self.last_flush = time.monotonic()
        if _test_hook is not None:
            _test_hook("chunk_flushed")
