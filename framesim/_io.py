"""Atomic file writing: every artefact framesim writes goes through a temp file and a rename,
so an interrupted run or a full disk never leaves a half-written file where a good one was."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it over ``path``.

    On any exception the temporary file is removed and ``path`` keeps its previous content.
    ``fsync=False``: the caller makes the file durable later (extract fsyncs a chunk's frames together).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if fsync:
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
        # mkstemp creates 0600 whatever the umask; give the file the mode a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(exc, OSError) and exc.filename in (None, tmp, tmp_path):
            # Name the file the user asked for, not our temp file (which is gone): "<path>: No space
            # left on device" is what the CLI prints. OSError(errno, ...) keeps the subclass (ENOENT ...).
            raise OSError(exc.errno, _strerror(exc), str(path)) from exc
        raise


def _strerror(exc: OSError) -> str:
    """The reason of an OSError without our wrapping: pyarrow says "Error writing bytes to file.
    Detail: [errno 28] No space left on device"; a short write without errno says what it can."""
    text = exc.strerror or str(exc)
    detail = re.search(r"\[errno \d+\] (.+)$", text)
    if detail:
        return detail.group(1)
    if exc.errno is not None and not exc.strerror:
        return os.strerror(exc.errno)
    return text


_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (/proc/self/status, 4.7+).
    Elsewhere reading it means setting it and putting it back, done under a lock so that two of our
    threads cannot interleave and leave it at 0."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0)
        os.umask(mask)
        return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", fsync: bool = True) -> Iterator[BinaryIO]:
    """Open a temporary file for writing that replaces ``path`` only when the block succeeds."""
    with atomic_path(path, fsync) as tmp, open(tmp, mode) as fh:
        yield fh


def write_bytes(path: str | os.PathLike[str], data: bytes | memoryview, fsync: bool = True) -> None:
    with atomic_open(path, "wb", fsync) as fh:
        fh.write(data)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def write_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    # Serialised in memory first: np.save into a file writes with tofile(), whose short write on a
    # full disk is an OSError without errno ("N requested and M written").
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes(path, buf.getbuffer())


def write_table(df: pd.DataFrame, parquet: str | os.PathLike[str] | None = None,
                csv: str | os.PathLike[str] | None = None) -> None:
    """Write a DataFrame as Parquet and/or CSV, each atomically, and both or neither: both temp files
    are complete before either is renamed, so a full disk cannot leave a new Parquet beside an old CSV."""
    with contextlib.ExitStack() as stack:
        if parquet is not None:
            df.to_parquet(stack.enter_context(atomic_path(parquet)), index=False)
        if csv is not None:
            df.to_csv(stack.enter_context(atomic_path(csv)), index=False)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the renames in a folder durable (where the platform allows opening a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
