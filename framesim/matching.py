"""Examples x frames -> scored pairs: embed both with each backbone, index the frames, search.

The result is one table for all backbones (``PAIRS_COLUMNS``), written with a ``run.json`` that
describes the run; the report is built from these two files alone (plus the images they point to).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from framesim._io import write_json, write_table
from framesim.backbones.base import Backbone, get_backbone
from framesim.dataset import FrameDataset
from framesim.embeddings import EmbeddingCache, EmbedStats, embed_missing
from framesim.images import ImageError, find_images, load_image, pixel_sha256
from framesim.index import auto_factory, make_index

PAIRS_COLUMNS = ["backbone", "example", "frame_id", "video", "frame_index", "timestamp_s", "score", "rank"]
DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_TOP_K = 10
RUN_FORMAT = "framesim-run"
RUN_VERSION = 1


@dataclass(frozen=True)
class Example:
    """An example image: its name in the pairs table, its file and its pixel hash."""

    name: str
    path: Path
    sha256: str


@dataclass
class MatchResult:
    pairs: pd.DataFrame
    run: dict[str, Any]
    out_dir: Path | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def examples_root(inputs: Sequence[str | os.PathLike[str]]) -> Path:
    """The folder example names are relative to: the folder given, or the common parent of the files."""
    paths = [Path(p).resolve() for p in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        return paths[0]
    return Path(os.path.commonpath([p if p.is_dir() else p.parent for p in paths]))


def load_examples(
    inputs: Sequence[str | os.PathLike[str]], on_error: Callable[[str], None] | None = None
) -> tuple[list[Example], Path, list[dict[str, str]]]:
    """Find example images, decode each once to hash its pixels; return (examples, root, failures)."""
    root = examples_root(inputs)
    examples, failures = [], []
    for path in find_images(inputs):
        name = path.resolve().relative_to(root).as_posix()
        try:
            sha = pixel_sha256(load_image(path))
        except ImageError as exc:
            failures.append({"example": name, "reason": str(exc)})
            if on_error:
                on_error(str(exc))
            continue
        examples.append(Example(name, path, sha))
    return examples, root, failures


def search_pairs(
    frame_vectors: Sequence[np.ndarray] | np.ndarray,
    example_vectors: np.ndarray,
    *,
    top_k: int | None,
    min_score: float | None,
    index: str | None = None,
    n_frames: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index frame vectors (an array or chunks of one) and search every example.

    Returns flat arrays (example_row, frame_row, score), best first within each example. With
    ``top_k`` the best k frames per example are kept, with ``min_score`` only scores >= it; both
    may be combined; ``top_k=None`` with a ``min_score`` returns every pair above the threshold.
    """
    if top_k is None and min_score is None:
        raise ValueError("give top_k, min_score or both")
    chunks = [frame_vectors] if isinstance(frame_vectors, np.ndarray) else frame_vectors
    dim = example_vectors.shape[1]
    idx = None
    for chunk in chunks:
        if idx is None:
            idx = make_index(dim, index, n_frames if n_frames is not None else len(chunk))
        idx.add(chunk)
    if idx is None or len(idx) == 0 or len(example_vectors) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    ex_rows, fr_rows, scores = [], [], []
    if top_k is not None:
        s, ids = idx.search(example_vectors, top_k)
        for q in range(len(example_vectors)):
            keep = ids[q] >= 0
            if min_score is not None:
                keep &= s[q] >= min_score
            ex_rows.append(np.full(int(keep.sum()), q))
            fr_rows.append(ids[q][keep])
            scores.append(s[q][keep])
    else:
        assert min_score is not None
        for q, (s, ids) in enumerate(idx.range_search(example_vectors, min_score)):
            ex_rows.append(np.full(len(ids), q))
            fr_rows.append(ids)
            scores.append(s)
    return (np.concatenate(ex_rows).astype(np.int64), np.concatenate(fr_rows).astype(np.int64),
            np.concatenate(scores).astype(np.float32))


def _frame_loader(dataset: FrameDataset, manifest: pd.DataFrame) -> Callable[[str], np.ndarray]:
    path_of = dict(zip(manifest["sha256"], manifest["path"], strict=True))
    return lambda key: load_image(dataset.frame_path(path_of[key]))


def _example_loader(examples: Sequence[Example]) -> Callable[[str], np.ndarray]:
    path_of = {ex.sha256: ex.path for ex in examples}
    return lambda key: load_image(path_of[key])


def match(
    examples: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    dataset: str | os.PathLike[str],
    backbones: Sequence[str | Backbone] = (DEFAULT_BACKBONE,),
    *,
    top_k: int | None = DEFAULT_TOP_K,
    min_score: float | None = None,
    index: str | None = None,
    weights: Mapping[str, str | None] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    progress: bool = True,
    on_error: Callable[[str], None] | None = None,
    ground_truth: str | os.PathLike[str] | None = None,
    exclude_videos: Collection[str] = (),
) -> MatchResult:
    """Rank every example against every frame of ``dataset`` with each backbone.

    ``weights`` maps a backbone name to its weights (``"imagenet"``, a file, or ``None`` for random).
    With ``ground_truth`` (a CSV, see ``read_ground_truth``) the pairs get a ``correct`` column.
    Frames of ``exclude_videos`` (values of the manifest's ``video`` or ``video_id``) are left out of
    the index: evaluation holds videos out to make distractors that come from no indexed video.
    With ``out_dir`` the pairs (CSV + Parquet) and ``run.json`` are written there, atomically.
    """
    started = time.perf_counter()
    inputs = [examples] if isinstance(examples, str | os.PathLike) else list(examples)
    ds = FrameDataset(dataset)
    failures: list[str] = []

    def fail(msg: str) -> None:
        failures.append(msg)
        if on_error:
            on_error(msg)

    with ds.lock():
        manifest = ds.manifest()
        if exclude_videos:
            held_out = manifest["video"].isin(exclude_videos)
            if "video_id" in manifest:
                held_out |= manifest["video_id"].isin(exclude_videos)
            manifest = manifest[~held_out].reset_index(drop=True)
        if manifest.empty:
            raise ValueError(f"{ds.root}: the dataset has no frames; run `framesim extract` first")
        example_list, root, failed_examples = load_examples(inputs, on_error=None)
        for f in failed_examples:
            fail(f["reason"])
        frames_by_key = manifest.drop_duplicates("sha256")
        tables, backbone_runs = [], []
        for spec in backbones:
            backbone = spec if isinstance(spec, Backbone) else get_backbone(
                spec, **({"weights": weights[spec]} if weights and spec in weights else {}))
            cache = EmbeddingCache(ds.root / "embeddings", backbone)
            frame_stats = embed_missing(backbone, cache, list(frames_by_key["sha256"]),
                                        _frame_loader(ds, frames_by_key), batch_size=batch_size,
                                        progress=progress, desc="frames")
            example_stats = embed_missing(backbone, cache, [e.sha256 for e in example_list],
                                          _example_loader(example_list), batch_size=batch_size,
                                          progress=progress, desc="examples")
            for msg in frame_stats.failures + example_stats.failures:
                fail(msg)
            # Frames whose image could not be read are left out of the index, not fatal.
            usable = manifest[manifest["sha256"].map(cache.__contains__)].reset_index(drop=True)
            usable_examples = [e for e in example_list if e.sha256 in cache]
            t0 = time.perf_counter()
            ex_rows, fr_rows, scores = search_pairs(
                cache.iter_chunks(list(usable["sha256"])), cache.get([e.sha256 for e in usable_examples]),
                top_k=top_k, min_score=min_score, index=index, n_frames=len(usable))
            search_seconds = time.perf_counter() - t0
            tables.append(_pairs_table(backbone.name, usable_examples, usable, ex_rows, fr_rows, scores))
            backbone_runs.append(_backbone_summary(backbone, frame_stats, example_stats, search_seconds))

    pairs = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=PAIRS_COLUMNS)
    truth_info = None
    if ground_truth is not None:
        truth = read_ground_truth(ground_truth)
        pairs = label_pairs(pairs, truth)
        truth_info = _truth_summary(pairs, truth, ground_truth)
    run = {
        "format": RUN_FORMAT, "version": RUN_VERSION,
        "run": Path(out_dir).name if out_dir else None,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "dataset": str(ds.root.resolve()), "examples_root": str(root),
        "examples": [e.name for e in example_list], "failed_examples": failed_examples,
        "n_videos": int(manifest["video"].nunique()), "n_frames": len(manifest),
        "n_examples": len(example_list), "top_k": top_k, "min_score": min_score,
        "index": auto_factory(len(manifest)) if index in (None, "auto") else index,
        "seconds": round(time.perf_counter() - started, 3), "backbones": backbone_runs, "ground_truth": truth_info,
    }
    result = MatchResult(pairs=pairs, run=run, failures=failures)
    if out_dir is not None:
        result.out_dir = write_run(out_dir, pairs, run)
    return result


def _pairs_table(backbone: str, examples: Sequence[Example], frames: pd.DataFrame, ex_rows: np.ndarray,
                 fr_rows: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    picked = frames.iloc[fr_rows]
    table = pd.DataFrame({
        "backbone": backbone,
        "example": np.array([e.name for e in examples], dtype=object)[ex_rows] if len(examples) else [],
        "frame_id": picked["frame_id"].to_numpy(),
        "video": picked["video"].to_numpy(),
        "frame_index": picked["frame_index"].to_numpy(np.int64),
        "timestamp_s": picked["timestamp_s"].to_numpy(np.float64),
        "score": scores.astype(np.float64).round(6),
    })
    # Ties keep the index order (stable); rank 1 = best frame for this example and backbone.
    table = table.sort_values(["example", "score"], ascending=[True, False], kind="stable")
    table["rank"] = table.groupby("example", sort=False).cumcount().astype(np.int64) + 1
    return table[PAIRS_COLUMNS].reset_index(drop=True)


def _backbone_summary(backbone: Backbone, frames: EmbedStats, examples: EmbedStats,
                      search_seconds: float) -> dict[str, Any]:
    embedded = frames.embedded + examples.embedded
    seconds = frames.seconds + examples.seconds
    return {
        "name": backbone.name, "dim": backbone.dim, "input_size": backbone.input_size,
        "weights": backbone.weights, "frames_embedded": frames.embedded, "frames_cached": frames.cached,
        "examples_embedded": examples.embedded, "embed_seconds": round(seconds, 3),
        "images_per_s": round(embedded / seconds, 2) if embedded and seconds > 0 else None,
        "search_seconds": round(search_seconds, 4),
    }


def read_ground_truth(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A ground-truth CSV: ``example, video, timestamp_s``; an empty video marks an example from no video."""
    truth = pd.read_csv(path, dtype={"example": str, "video": str}, keep_default_na=False)
    missing = {"example", "video", "timestamp_s"} - set(truth.columns)
    if missing:
        raise ValueError(f"{path}: ground truth needs columns example, video, timestamp_s; missing {sorted(missing)}")
    truth["timestamp_s"] = pd.to_numeric(truth["timestamp_s"], errors="coerce")
    return truth


def _same_video(pair_video: str, truth_video: str) -> bool:
    # The truth names a video as the user knows it ("bikes.mp4", "cam1/day2.mp4"); the pairs hold the
    # path given to extract. They match when one is a path suffix of the other.
    a, b = Path(pair_video).as_posix(), Path(truth_video).as_posix()
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
        return bool(video) and _same_video(row.video, video) and abs(row.timestamp_s - t) <= tolerance_s

    out = pairs.copy()
    out["correct"] = pd.array([correct(r) for r in pairs.itertuples(index=False)], dtype="boolean")
    return out


def _truth_summary(pairs: pd.DataFrame, truth: pd.DataFrame, path: str | os.PathLike[str]) -> dict[str, Any]:
    """How many examples with a known source each backbone puts a correct frame first for."""
    sourced = set(truth.loc[truth["video"] != "", "example"]) & set(pairs["example"])
    top1 = pairs[(pairs["rank"] == 1) & pairs["example"].isin(sourced)]
    return {
        "file": str(Path(path).resolve()), "tolerance_s": 1.0,
        "n_examples_with_source": len(sourced),
        "n_distractors": int(((truth["video"] == "") & truth["example"].isin(pairs["example"])).sum()),
        "top1_correct": {b: int(g["correct"].sum()) for b, g in top1.groupby("backbone", sort=False)},
    }


def default_run_dir(reports: str | os.PathLike[str] = "reports") -> Path:
    """``reports/<YYYYmmdd-HHMMSS>``, with a suffix if that exists already."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(reports) / stamp
    n = 1
    while out.exists():
        n += 1
        out = Path(reports) / f"{stamp}-{n}"
    return out


def write_run(out_dir: str | os.PathLike[str], pairs: pd.DataFrame, run: dict[str, Any]) -> Path:
    """Write pairs.parquet, pairs.csv and run.json into ``out_dir`` (each atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = {**run, "run": out.name}
    write_table(pairs, parquet=out / "pairs.parquet", csv=out / "pairs.csv")
    write_json(out / "run.json", run)
    return out


def read_pairs(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """The pairs of a run, from Parquet (CSV if Parquet is missing)."""
    run_dir = Path(run_dir)
    parquet = run_dir / "pairs.parquet"
    if parquet.exists():
        return pd.read_parquet(parquet)
    return pd.read_csv(run_dir / "pairs.csv")
