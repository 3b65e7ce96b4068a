"""Reading a run directory (``run.json``, ``pairs.parquet``/``pairs.csv``, the dataset manifest)
into plain tables for the report. Nothing here renders; missing optional pieces become notes."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from framesim.timecode import format_duration, format_timestamp  # noqa: F401 (re-exported)

PAIRS_COLUMNS = ("backbone", "example", "frame_id", "video", "frame_index", "timestamp_s", "score", "rank")


class RunError(ValueError):
    """The run directory cannot be reported on (no pairs table, or one that breaks the contract)."""


@dataclass
class RunData:
    """Everything the report needs from one run, already normalised.

    ``pairs`` has the contract's columns (plus ``correct`` when ground truth is present) and a
    ``frame_key`` column (``str(frame_id)``), ordered by backbone (run order), example, rank.
    ``frame_files`` maps frame_key -> (image path, width, height) for the frames in ``pairs``
    that the dataset manifest knows.
    """

    run_dir: Path
    info: dict[str, Any]
    pairs: pd.DataFrame
    backbones: list[str]
    examples: list[str]
    failed_examples: list[dict[str, str]]
    frame_files: dict[str, tuple[Path, int | None, int | None]]
    notes: list[str] = field(default_factory=list)

    @property
    def has_ground_truth(self) -> bool:
        return "correct" in self.pairs.columns and bool(self.pairs["correct"].notna().any())

    @property
    def backbone_info(self) -> dict[str, dict[str, Any]]:
        return {str(b.get("name")): b for b in self.info.get("backbones") or [] if isinstance(b, dict)}

    def example_path(self, example: str) -> Path:
        root = self.info.get("examples_root")
        return Path(root) / example if root else Path(example)


def _read_info(run_dir: Path, notes: list[str]) -> dict[str, Any]:
    path = run_dir / "run.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append("run.json is missing: run details are unknown.")
        return {}
    except (OSError, ValueError) as exc:
        notes.append(f"run.json is unreadable ({exc}): run details are unknown.")
        return {}
    if not isinstance(info, dict):
        notes.append("run.json is not a JSON object: run details are unknown.")
        return {}
    # Fields the report iterates or joins to paths: the wrong JSON type is dropped with a note, not a crash.
    expected: dict[str, type | tuple[type, ...]] = {
        "backbones": list, "examples": list, "failed_examples": list, "dataset": str, "examples_root": str,
        "ground_truth": (dict, type(None)), "evaluation": (dict, type(None))}
    for key, kind in expected.items():
        if key in info and not isinstance(info[key], kind):
            notes.append(f"run.json: {key} has an unexpected type and is ignored.")
            del info[key]
    return info


def _read_pairs(run_dir: Path) -> pd.DataFrame:
    """The run's pairs as ``matching.read_pairs`` gives them: an interrupted write finished or undone,
    checked against run.json's checksum and the pairs contract; RunError naming the file if not usable."""
    from framesim.matching import read_pairs

    try:
        return read_pairs(run_dir)
    except ValueError as exc:  # DataFileError, RunFilesError: one line that names the file
        raise RunError(str(exc)) from exc


def _as_correct(values: pd.Series) -> pd.Series:
    """The ``correct`` column as nullable booleans; anything that is not a clear yes/no is unknown (NA)."""
    table = {True: True, False: False, "true": True, "false": False, "1": True, "0": False}  # (1 == True)

    def one(v: object) -> object:
        key = v.strip().lower() if isinstance(v, str) else v
        try:
            return table.get(key, pd.NA)  # type: ignore[arg-type]
        except TypeError:  # unhashable
            return pd.NA

    return pd.Series([one(v) for v in values.tolist()], index=values.index, dtype="boolean")


def _normalise_pairs(df: pd.DataFrame, backbone_order: list[str]) -> pd.DataFrame:
    """``df`` as read_pairs returns it (contract dtypes, text columns with "" for missing values)."""
    cols = list(PAIRS_COLUMNS) + (["correct"] if "correct" in df.columns else [])
    out = pd.DataFrame({
        "backbone": df["backbone"].to_numpy(dtype=object),
        "example": df["example"].to_numpy(dtype=object),
        "frame_id": df["frame_id"].to_numpy(),
        "video": df["video"].to_numpy(dtype=object),
        "frame_index": pd.to_numeric(df["frame_index"], errors="coerce").to_numpy(dtype=np.float64),
        "timestamp_s": pd.to_numeric(df["timestamp_s"], errors="coerce").to_numpy(dtype=np.float64),
        "score": pd.to_numeric(df["score"], errors="coerce").to_numpy(dtype=np.float64),
        "rank": df["rank"].to_numpy(dtype=np.int64),
    })
    if "correct" in cols:
        out["correct"] = _as_correct(df["correct"]).to_numpy()
    out["frame_key"] = [str(f) for f in out["frame_id"]]
    out = out[np.isfinite(out["score"].to_numpy())]
    order = {name: i for i, name in enumerate(backbone_order)}
    out["_bb"] = out["backbone"].map(order)
    return out.sort_values(["_bb", "example", "rank"], kind="stable").drop(columns="_bb").reset_index(drop=True)


def _frame_files(info: dict[str, Any], pairs: pd.DataFrame,
                 notes: list[str]) -> dict[str, tuple[Path, int | None, int | None]]:
    dataset = info.get("dataset")
    if not dataset or pairs.empty:
        if not dataset:
            notes.append("The run does not name its dataset: frame thumbnails are unavailable.")
        return {}
    manifest = Path(dataset) / "manifest.parquet"
    try:
        man = pd.read_parquet(manifest, columns=["frame_id", "path", "width", "height"])
    except FileNotFoundError:
        notes.append(f"Dataset manifest not found ({manifest}): frame thumbnails are unavailable.")
        return {}
    except Exception as exc:  # any unreadable manifest only costs thumbnails
        notes.append(f"Dataset manifest unreadable ({manifest}: {exc}): frame thumbnails are unavailable.")
        return {}
    try:
        return _manifest_files(Path(dataset), man, set(pairs["frame_key"]))
    except Exception as exc:  # pyarrow decodes lazily: a damaged column fails only here; it costs thumbnails
        notes.append(f"Dataset manifest damaged ({manifest}: {type(exc).__name__}): frame thumbnails are unavailable.")
        return {}


def _manifest_files(dataset: Path, man: pd.DataFrame,
                    wanted: set[str]) -> dict[str, tuple[Path, int | None, int | None]]:
    from framesim.dataset import FrameDataset

    ds = FrameDataset(dataset)
    keys = [str(f) for f in man["frame_id"]]
    files: dict[str, tuple[Path, int | None, int | None]] = {}
    widths = pd.to_numeric(man["width"], errors="coerce").astype("float64").to_numpy()
    heights = pd.to_numeric(man["height"], errors="coerce").astype("float64").to_numpy()
    for key, rel, w, h in zip(keys, man["path"], widths, heights, strict=True):
        if key in wanted and isinstance(rel, str):
            try:
                path = ds.frame_path(rel)  # a manifest path never leads the report out of the dataset
            except ValueError:
                continue
            ok_w, ok_h = np.isfinite(w) and 0 < w < 2**31, np.isfinite(h) and 0 < h < 2**31
            files[key] = (path, int(w) if ok_w else None, int(h) if ok_h else None)
    return files


def load_run(run_dir: str | os.PathLike[str]) -> RunData:
    """Read a run directory. Raises RunError when there is no usable pairs table."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    info = _read_info(run_dir, notes)
    raw = _read_pairs(run_dir)
    order = [str(b.get("name")) for b in info.get("backbones") or [] if isinstance(b, dict)]
    # (read_pairs has decoded and checked every value: nothing below meets a damaged column)
    backbones = order + sorted(set(raw["backbone"]) - set(order))
    pairs = _normalise_pairs(raw, backbones)
    examples = [str(e) for e in info.get("examples") or []]
    seen = set(examples)
    for e in pd.unique(pairs["example"]):
        if e not in seen:
            examples.append(e)
            seen.add(e)
    failed = [{"example": str(f.get("example", "")), "reason": str(f.get("reason", ""))}
              for f in info.get("failed_examples") or [] if isinstance(f, dict)]
    frame_files = _frame_files(info, pairs, notes)
    return RunData(run_dir=run_dir, info=info, pairs=pairs, backbones=backbones, examples=examples,
                   failed_examples=failed, frame_files=frame_files, notes=notes)
