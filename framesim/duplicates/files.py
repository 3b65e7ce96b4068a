"""The output folder of ``framesim duplicates``: written as one set, read back checked.

Files (columns are a contract; see README "Duplicates"):

* ``frame_pairs.parquet`` + ``.csv``: near-duplicate frame pairs;
* ``groups.parquet`` + ``.csv``: connected components of them, with each group's representative;
* ``segments.parquet`` + ``.csv``: copied segments between (or within) videos;
* ``duplicates.json``: what was run, counts, timings, and the row count and sha256 of every table file.

Each file is written atomically (temp + rename) and ``duplicates.json`` last: it names the checksums of
the tables it belongs to, so a reader can tell a folder whose writing was interrupted (old tables beside
new ones) and says "run it again" instead of mixing two runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from framesim._io import sha256_file, write_json, write_table
from framesim.dataset import DataFileError

FORMAT = "framesim-duplicates"
VERSION = 1
INFO_FILE = "duplicates.json"
TABLES = ("frame_pairs", "groups", "segments")

FRAME_PAIR_COLUMNS = ["frame_id_a", "video_a", "frame_index_a", "timestamp_a",
                      "frame_id_b", "video_b", "frame_index_b", "timestamp_b", "score"]
GROUP_COLUMNS = ["group", "frame_id", "video", "timestamp_s", "representative", "size"]
SEGMENT_COLUMNS = ["video_a", "start_a", "end_a", "video_b", "start_b", "end_b", "score", "n_frames", "offset_s"]
SEGMENT_EXTRA_COLUMNS = ["segment", "inliers"]


class DuplicatesFilesError(DataFileError):
    """A duplicates folder that cannot be read: missing, damaged, or from an interrupted write."""


def write_duplicates(out_dir: str | os.PathLike[str], tables: dict[str, pd.DataFrame], info: dict[str, Any]) -> Path:
    """Write the three tables (Parquet + CSV each) then ``duplicates.json`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for name in TABLES:
        df = tables[name]
        write_table(df, parquet=out / f"{name}.parquet", csv=out / f"{name}.csv")
        files[name] = {"rows": len(df), "sha256": sha256_file(out / f"{name}.parquet")}
    write_json(out / INFO_FILE, {"format": FORMAT, "version": VERSION, **info, "files": files})
    return out


def read_info(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``duplicates.json`` of a duplicates folder, checked to be one."""
    path = Path(out_dir) / INFO_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DuplicatesFilesError(f"{path}: missing: not a `framesim duplicates` folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DuplicatesFilesError(f"{path}: damaged ({exc.__class__.__name__}): run `framesim duplicates` "
                                   "again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DuplicatesFilesError(f"{path}: not a framesim duplicates file")
    if info.get("version") != VERSION:
        raise DuplicatesFilesError(f"{path}: format version {info.get('version')!r}, this framesim reads {VERSION}")
    return info


def read_duplicates(out_dir: str | os.PathLike[str], verify: bool = True) -> tuple[dict[str, pd.DataFrame],
                                                                                dict[str, Any]]:
    """The tables and info of a duplicates folder; with ``verify`` each table's checksum must be the one
    ``duplicates.json`` recorded (else the folder holds files of two runs)."""
    out = Path(out_dir)
    info = read_info(out)
    tables = {}
    for name in TABLES:
        path = out / f"{name}.parquet"
        if not path.is_file():
            raise DuplicatesFilesError(f"{path}: missing: run `framesim duplicates` again")
        expected = (info.get("files") or {}).get(name, {})
        if verify and expected.get("sha256") != sha256_file(path):
            raise DuplicatesFilesError(f"{path}: not the file {INFO_FILE} describes (an interrupted or concurrent "
                                       "write): run `framesim duplicates` again")
        try:
            tables[name] = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise DuplicatesFilesError(f"{path}: damaged ({exc.__class__.__name__})") from None
    return tables, info
