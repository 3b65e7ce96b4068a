"""The frame dataset on disk: its layout, the manifest (schema, reading and checking its parts), the lock.

Layout of a dataset folder::

    DATASET/
      dataset.json                          format marker {"format": "framesim-frames", "version": 1}
      manifest.parquet                      the manifest (MANIFEST_COLUMNS, then video_id)
      manifest.csv                          the same table as CSV
      frames/<stem>-<id8>/<index:08d>.jpg   frame images (.png with image_format="png")
      state/videos/<video_id>.json          per-video record: fingerprint, header, one entry per
                                            sampling spec with status, last frame index, counts
      state/pending/v<pos>-<t>.parquet      manifest rows written since the last consolidation
      .lock                                 flock'ed while a run uses the dataset

Crash safety: every file is written atomically (temp + rename) and fsync'ed before anything refers
to it. The manifest is the consolidated table plus the pending chunks (deduplicated by
``frame_id``), so a run killed at any point leaves a consistent dataset, and the next run folds the
chunks into ``manifest.parquet``/``.csv``. Always read the manifest through
``FrameDataset.manifest()``.

Filling a dataset, ``extract()``, is ``framesim.extraction`` (one video: ``framesim.video_run``;
the threaded image writer: ``framesim.frame_writer``). Their public names (``extract``,
``ExtractSummary``, ``safe_stem``, ``video_fingerprint``, ``CHUNK_ROWS``, ``WRITER_THREADS``, ...)
are re-exported here, looked up on first use (those modules import this one); set such a setting
on the module that defines it, as assigning it here changes nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from framesim import _io

if TYPE_CHECKING:  # the re-exports below, for type checkers
    from framesim.extraction import FINGERPRINT_BYTES as FINGERPRINT_BYTES
    from framesim.extraction import IMAGE_FORMATS as IMAGE_FORMATS
    from framesim.extraction import MAX_PENDING_CHUNKS as MAX_PENDING_CHUNKS
    from framesim.extraction import ExtractSummary as ExtractSummary
    from framesim.extraction import extract as extract
    from framesim.extraction import safe_stem as safe_stem
    from framesim.extraction import video_fingerprint as video_fingerprint
    from framesim.frame_writer import JPEG_QUALITY as JPEG_QUALITY
    from framesim.frame_writer import SYNC_THREADS as SYNC_THREADS
    from framesim.frame_writer import WRITER_BACKLOG as WRITER_BACKLOG
    from framesim.frame_writer import WRITER_BACKLOG_BYTES as WRITER_BACKLOG_BYTES
    from framesim.frame_writer import WRITER_THREADS as WRITER_THREADS
    from framesim.video_run import CHUNK_ROWS as CHUNK_ROWS
    from framesim.video_run import CHUNK_SECONDS as CHUNK_SECONDS

MANIFEST_COLUMNS: list[str] = ["frame_id", "video", "frame_index", "timestamp_s", "width", "height", "path",
                               "sha256"]
#: appended after MANIFEST_COLUMNS: the content id of the video (64 hex)
EXTRA_COLUMNS: list[str] = ["video_id"]
_INT_COLUMNS = ("frame_index", "width", "height")

FORMAT = "framesim-frames"
FORMAT_VERSION = 1
STATE_VERSION = 1


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

    def append(self, rows: pd.DataFrame, prefix: str = "") -> None:
        """Add manifest rows as a new pending chunk (atomic); ``manifest()`` sees them at once.

        Chunks are read in name order: ``prefix`` (extraction gives each video's position in its input
        list) orders the chunks of tasks that run side by side, the time within one prefix."""
        if not len(rows):
            return
        rows = rows[MANIFEST_COLUMNS + EXTRA_COLUMNS]
        name = f"{prefix}{time.time_ns():020d}-{os.getpid()}.parquet"
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


# -- re-exports -------------------------------------------------------------------------------------
# extract() and its settings moved to framesim.extraction, framesim.video_run and
# framesim.frame_writer. They import this module, so they are looked up when first asked for, not
# imported here: any of them can be imported first. Not cached, so a name read here always shows
# the defining module's current value.
_MOVED: dict[str, str] = {
    **dict.fromkeys(("extract", "ExtractSummary", "safe_stem", "video_fingerprint", "MAX_PENDING_CHUNKS",
                     "FINGERPRINT_BYTES", "IMAGE_FORMATS"), "framesim.extraction"),
    **dict.fromkeys(("CHUNK_ROWS", "CHUNK_SECONDS"), "framesim.video_run"),
    **dict.fromkeys(("JPEG_QUALITY", "WRITER_THREADS", "WRITER_BACKLOG", "WRITER_BACKLOG_BYTES", "SYNC_THREADS"),
                    "framesim.frame_writer"),
}


def __getattr__(name: str) -> Any:
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MOVED))
