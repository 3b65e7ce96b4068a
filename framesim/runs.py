"""Run files: a match run's ``pairs.parquet``, ``pairs.csv`` and ``run.json``, written as one set and
read back checked.

The pairs contract (``PAIRS_COLUMNS``, then ``EXTRA_COLUMNS``) is what users' scripts and the report
rely on; ``write_run`` replaces the three files so that readers see the old set or the new one, never a
mix, and ``read_pairs`` refuses pairs that are not the ones run.json describes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from framesim._io import fsync_dir, sha256_file, write_json, write_table
from framesim.dataset import DataFileError, _one_line, checked_numbers

PAIRS_COLUMNS = ["backbone", "example", "frame_id", "video", "frame_index", "timestamp_s", "score", "rank"]
#: extra columns after the contract ones: the descriptors' cosine, and inliers when verified (-1: not verified)
EXTRA_COLUMNS = ["cosine", "inliers"]
RUN_FORMAT = "framesim-run"
RUN_VERSION = 1


def default_run_dir(reports: str | os.PathLike[str] = "reports") -> Path:
    """``reports/<YYYYmmdd-HHMMSS>``, with a suffix if that exists already."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(reports) / stamp
    n = 1
    while out.exists():
        n += 1
        out = Path(reports) / f"{stamp}-{n}"
    return out


#: the files of a run that belong together; write_run replaces them as one set
RUN_FILES = ("pairs.parquet", "pairs.csv", "run.json")
_STAGED = ".staged-"
_COMMIT = ".commit"

#: test hook: called with "staged <file>", "committed", "replaced <file>" (lets tests kill write_run there)
_test_hook: Callable[[str], None] | None = None


def _hook(event: str) -> None:
    if _test_hook is not None:
        _test_hook(event)


_LOCK = ".lock"


@contextlib.contextmanager
def _run_dir_lock(out: Path, wait: bool = True) -> Iterator[bool]:
    """Hold the run folder's lock (flock on ``.lock``): one writer at a time, and no reader tidying up
    staged files a live writer is still writing. Yields False if ``wait`` is False and it is held."""
    import fcntl

    fd = os.open(out / _LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def write_run(out_dir: str | os.PathLike[str], pairs: pd.DataFrame, run: dict[str, Any]) -> Path:
    """Write pairs.parquet, pairs.csv and run.json into ``out_dir``, as one set.

    Readers see the previous set or the new one, never a mix, whatever the interruption (SIGKILL,
    full disk). Why a small journal rather than a temp folder swapped in: the run folder also holds
    files others put there (evaluate's benchmark, the report), and Linux cannot swap two folders
    portably. So the three files are first written complete and durable under ``.staged-<name>``
    (a failure here leaves the previous set untouched and no staged file), then ``.commit`` is
    created (the commit point, one atomic rename), then each staged file is renamed into place and
    ``.commit`` removed. A crash after the commit point is rolled forward by ``recover_run``, which
    ``write_run`` and ``read_pairs`` call first. run.json, renamed last, records the row count and
    sha256 of both pairs files, so a reader can also tell pairs that are not this run's.
    """
    return _write_run(out_dir, pairs, run)[0]


def _write_run(out_dir: str | os.PathLike[str], pairs: pd.DataFrame,
               run: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    """``write_run``, also returning the run as written (with its "run" name and "pairs_files")."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Two runs writing into one folder: the second waits, then replaces the whole set (last one wins).
    with _run_dir_lock(out):
        return _write_run_locked(out, pairs, run)


def _write_run_locked(out: Path, pairs: pd.DataFrame, run: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    _recover_run_locked(out)
    staged = {name: out / f"{_STAGED}{name}" for name in RUN_FILES}
    try:
        write_table(pairs, parquet=staged["pairs.parquet"], csv=staged["pairs.csv"])
        _hook("staged pairs")
        files = {name: {"sha256": sha256_file(staged[name]), "bytes": staged[name].stat().st_size}
                 for name in ("pairs.parquet", "pairs.csv")}
        run = {**run, "run": out.name, "pairs_files": {"rows": len(pairs), **files}}
        write_json(staged["run.json"], run)
        _hook("staged run.json")
        write_json(out / _COMMIT, {"replace": list(RUN_FILES)})
    except BaseException as exc:
        for path in staged.values():
            path.unlink(missing_ok=True)
        staged_name = {str(path): name for name, path in staged.items()}.get(str(getattr(exc, "filename", "")))
        if isinstance(exc, OSError) and staged_name:  # name the file the user knows
            raise OSError(exc.errno, exc.strerror, str(out / staged_name)) from exc
        raise
    _hook("committed")
    _finish_commit(out)
    return out, run


def _finish_commit(out: Path) -> None:
    """Move the staged files into place (those still staged: this may resume an interrupted commit)."""
    fsync_dir(out)  # the staged files' names are durable before any replaces a good file
    for name in RUN_FILES:
        staged = out / f"{_STAGED}{name}"
        if staged.exists():
            os.replace(staged, out / name)
            _hook(f"replaced {name}")
    fsync_dir(out)
    (out / _COMMIT).unlink(missing_ok=True)
    fsync_dir(out)


def recover_run(run_dir: str | os.PathLike[str]) -> None:
    """Finish or undo a ``write_run`` that was interrupted in ``run_dir``.

    After the commit point the staged files are complete: move them into place. Before it they may
    not be: delete them (and temp files of the atomic writes), the previous set being untouched.
    """
    out = Path(run_dir)
    if not any((out / name).exists() for name in (_COMMIT, *(f"{_STAGED}{n}" for n in RUN_FILES))) \
            and not any(entry.name.endswith(".tmp") for entry in _scandir(out)):
        return  # the usual case: nothing to do, and no lock file made in a folder only read
    with _run_dir_lock(out, wait=False) as held:
        if held:  # else a live write_run holds it: its staged files are not leftovers
            _recover_run_locked(out)


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []


def _recover_run_locked(out: Path) -> None:
    if (out / _COMMIT).exists():
        _finish_commit(out)
    for name in RUN_FILES:
        (out / f"{_STAGED}{name}").unlink(missing_ok=True)
    # temp files of atomic writes killed mid-way: ".<name>.<random>.tmp"
    ours = tuple(f".{name}." for name in (*RUN_FILES, *(f"{_STAGED}{n}" for n in RUN_FILES), _COMMIT))
    for entry in _scandir(out):
        if entry.name.startswith(ours) and entry.name.endswith(".tmp") and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


class RunFilesError(DataFileError):
    """A run folder's pairs are not the ones its run.json describes."""


def read_pairs(run_dir: str | os.PathLike[str], verify: bool = True) -> pd.DataFrame:
    """The pairs of a run, from Parquet (CSV if Parquet is missing).

    An interrupted ``write_run`` is finished or undone first (where the folder is writable). With
    ``verify`` the file is checked against the sha256 run.json recorded for it (runs written before
    run.json recorded it are read as they are): RunFilesError if it is not the run's.
    """
    run_dir = Path(run_dir)
    with contextlib.suppress(OSError):  # a read-only copy of a run: read what is there
        recover_run(run_dir)
    parquet = run_dir / "pairs.parquet"
    path = parquet if parquet.exists() else run_dir / "pairs.csv"
    if verify:
        try:
            expected = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))["pairs_files"][path.name]
        except (OSError, ValueError, KeyError, TypeError):
            expected = None
        # (a hand-edited run.json or a missing file: the read below says what is wrong, in one line)
        if isinstance(expected, dict) and path.is_file() and sha256_file(path) != expected.get("sha256"):
            raise RunFilesError(f"{path}: not the pairs run.json describes (changed since, or the run was "
                                "interrupted while writing and cannot be recovered); run `framesim match` again")
    try:
        pairs = pd.read_parquet(path) if path == parquet else pd.read_csv(path)
    except FileNotFoundError as exc:
        raise DataFileError(f"{run_dir}: no pairs.parquet or pairs.csv (not a `framesim match` run folder)") from exc
    except Exception as exc:  # pyarrow, the CSV parser and the file system each raise their own kinds
        raise DataFileError(f"{path}: not a readable pairs table ({_one_line(exc)})") from exc
    try:
        return _check_pairs(pairs, path)
    except DataFileError:
        raise
    except Exception as exc:  # pyarrow decodes lazily: a damaged string column fails only when used
        raise DataFileError(f"{path}: damaged pairs table ({_one_line(exc)})") from exc


def _check_pairs(pairs: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The pairs table with the contract's columns and dtypes, or DataFileError naming ``path``."""
    missing = [c for c in PAIRS_COLUMNS if c not in pairs.columns]
    if missing or not pairs.columns.is_unique:
        raise DataFileError(f"{path}: pairs table lacks column(s) {', '.join(missing) or '(duplicate names)'}")
    pairs = pairs.copy()
    for c in ("backbone", "example", "frame_id", "video"):
        # text by contract; the CSV reader makes numbers of ids like "12" and NaN of empty cells, and
        # tolist() decodes every value now (pyarrow strings decode lazily: a damaged file fails here)
        pairs[c] = pd.Series(["" if pd.isna(v) else str(v) for v in pairs[c].tolist()], index=pairs.index,
                             dtype=str)  # pandas' default text dtype, as match() returns it
    for c in ("frame_index", "timestamp_s", "score", "rank"):
        pairs[c] = checked_numbers(pairs[c], path, "pairs", whole=c in ("frame_index", "rank"))
    return pairs
