"""Ground truth for match runs: which video and time each example comes from, and labelling pairs with it."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from framesim.dataset import DataFileError, _one_line


def read_ground_truth(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A ground-truth CSV: ``example, video, timestamp_s``; an empty video marks an example from no video."""
    try:
        truth = pd.read_csv(path, dtype={"example": str, "video": str}, keep_default_na=False)
    except Exception as exc:  # the CSV parser, the decoder and the file system each raise their own kinds
        raise DataFileError(f"{path}: not a readable ground-truth CSV ({_one_line(exc)})") from exc
    missing = {"example", "video", "timestamp_s"} - set(truth.columns)
    if missing or not truth.columns.is_unique:
        raise DataFileError(f"{path}: ground truth needs columns example, video, timestamp_s (once each); "
                            f"missing {sorted(missing)}")
    truth["timestamp_s"] = pd.to_numeric(truth["timestamp_s"], errors="coerce").astype("float64")
    return truth


def same_video(pair_video: str, truth_video: str) -> bool:
    """Whether a pair's video is the ground truth's: equal, or one is a path suffix of the other.

    The truth names a video as the user knows it ("bikes.mp4", "cam1/day2.mp4"); the pairs hold the
    path given to extract."""
    if not pair_video or not truth_video:
        return False
    a, b = (PurePosixPath(str(v).replace("\\", "/")).as_posix() for v in (pair_video, truth_video))
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def label_pairs(pairs: pd.DataFrame, truth: pd.DataFrame, tolerance_s: float = 1.0) -> pd.DataFrame:
    """Add ``correct``: the frame is from the example's source video within ``tolerance_s`` of its time.

    Examples absent from the truth get ``correct`` = NA (unknown); examples whose truth has no video
    (distractors) are wrong wherever they match.
    """
    by_example = {r.example: (r.video, r.timestamp_s) for r in truth.itertuples(index=False)}

    def correct(row: Any) -> Any:
        if row.example not in by_example:
            return pd.NA
        video, t = by_example[row.example]
        return bool(video) and same_video(row.video, video) and abs(row.timestamp_s - t) <= tolerance_s

    out = pairs.copy()
    out["correct"] = pd.array([correct(r) for r in pairs.itertuples(index=False)], dtype="boolean")
    return out


def truth_summary(pairs: pd.DataFrame, truth: pd.DataFrame, path: str | os.PathLike[str]) -> dict[str, Any]:
    """How many examples with a known source each backbone puts a correct frame first for."""
    sourced = set(truth.loc[truth["video"] != "", "example"]) & set(pairs["example"])
    top1 = pairs[(pairs["rank"] == 1) & pairs["example"].isin(sourced)]
    return {
        "file": str(Path(path).resolve()), "tolerance_s": 1.0,
        "n_examples_with_source": len(sourced),
        "n_distractors": int(((truth["video"] == "") & truth["example"].isin(pairs["example"])).sum()),
        "top1_correct": {b: int(g["correct"].sum()) for b, g in top1.groupby("backbone", sort=False)},
    }
