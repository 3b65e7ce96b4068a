"""``find_duplicates``: a dataset's near-duplicate frame pairs, groups and copied segments, in one pass.

1. **Embed** every frame with the backbone (the dataset's embedding cache: a second run embeds
   nothing; consecutive frames identical up to noise share one vector, as in ``match``). With
   ``center`` (default) the dataset's mean descriptor is subtracted and the vectors re-normalised:
   CNN activations are non-negative, so any two frames share a common component (unrelated frames of
   the shared media have raw cosines up to 0.62, a heavily compressed copy only 0.66-0.75); centred,
   unrelated frames fall to <= 0.27 while that copy keeps 0.37-0.55. Scores are cosines of the
   centred vectors.
2. **Self-join** (``selfjoin.knn_self_join``): each frame's ``k`` nearest frames of *other* videos with
   cosine >= ``candidate_score``; exact up to a few hundred thousand frames, an IVF index beyond, never
   an n x n matrix. Vectors go to a float16 memory map when there are many (bounded memory).
3. **Frame pairs and groups**: the candidate pairs with cosine >= ``min_score`` are the near-duplicate
   frame pairs; their connected components are the groups (``groups.frame_groups``).
4. **Copied segments** (``segments.find_segments``): every candidate pair, also the weaker ones (an
   edited copy's frames are often below ``min_score`` one by one, yet line up in time), aligned per
   pair of videos into runs with a consistent time offset.
5. **Thin evidence checked** (``verify.check_segments``): a segment supported by few frame pairs gets
   a few of them checked with local features (cached like ``match``'s); no geometric match lowers it.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from framesim.backbones.base import get_backbone, weights_for
from framesim.dataset import FrameDataset
from framesim.dedupe import DEFAULT_DEDUPE_THRESHOLD, dataset_runs
from framesim.duplicates.files import (
    FRAME_PAIR_COLUMNS,
    GROUP_COLUMNS,
    SEGMENT_COLUMNS,
    SEGMENT_EXTRA_COLUMNS,
    write_duplicates,
)
from framesim.embed_job import embed_frames
from framesim.embeddings import EmbeddingCache
from framesim.engines import Engine, engine_session

DEFAULT_BACKBONE = "efficientnet-lite0"
#: cosine at which two frames count as near-duplicates (frame pairs, groups)
DEFAULT_MIN_SCORE = 0.85
#: weakest cosine a pair may have to take part in the temporal alignment
DEFAULT_CANDIDATE_SCORE = 0.6
#: neighbours per frame in other videos
DEFAULT_K = 30
DEFAULT_METHOD = "tn"
#: segments scoring less are not reported (see ``segments.segment_score``)
DEFAULT_MIN_SEGMENT_SCORE = 0.3
#: above this many frames, vectors are read into a float16 memory map instead of RAM
MEMMAP_ABOVE = 200_000


@dataclass
class DuplicatesResult:
    """What ``find_duplicates`` found, and where it wrote it."""

    frame_pairs: pd.DataFrame
    groups: pd.DataFrame
    segments: pd.DataFrame
    info: dict[str, Any]
    out_dir: Path | None = None
    failures: list[str] = field(default_factory=list)


def find_duplicates(dataset: str | os.PathLike[str], backbone: str = DEFAULT_BACKBONE, *,
                    out_dir: str | os.PathLike[str] | None = None, min_score: float = DEFAULT_MIN_SCORE,
                    candidate_score: float = DEFAULT_CANDIDATE_SCORE, k: int = DEFAULT_K,
                    within_video_s: float | None = None, method: str = DEFAULT_METHOD, index: str = "auto",
                    center: bool = False, verify: bool = True, min_segment_score: float = DEFAULT_MIN_SEGMENT_SCORE,
                    exclude: Sequence[str] = (),
                    weights: Mapping[str, str | None] | None = None, runtime: str = "auto",
                    dedupe: float = DEFAULT_DEDUPE_THRESHOLD, batch_size: int = 32, workers: int = 2,
                    report: bool = True, progress: bool = True,
                    on_error: Callable[[str], None] | None = None, engine: str | Engine = "local",
                    ray_address: str | None = None) -> DuplicatesResult:
    """Near-duplicate frame pairs, groups and copied segments of ``dataset`` (module docstring).

    ``within_video_s``: also pair frames of one video that lie more than this many seconds apart (a
    shot used twice in one video). ``exclude``: videos (``video`` or ``video_id``) left out. With
    ``out_dir`` the tables, ``duplicates.json`` and (``report``) ``report.html`` are written there.
    ``engine`` (``"local"``, ``"ray"``: ``framesim.engines``) embeds the frames the cache lacks.
    Raises ValueError (one line) when the dataset cannot be compared with itself."""
    from framesim.duplicates.groups import frame_groups, groups_table
    from framesim.duplicates.segments import find_segments
    from framesim.duplicates.selfjoin import knn_self_join
    from framesim.duplicates.verify import check_segments

    if not 0 < min_score <= 1 or not -1 <= candidate_score <= min_score:
        raise ValueError(f"need 0 < min_score <= 1 and candidate_score <= min_score, got {min_score}, "
                         f"{candidate_score}")
    if within_video_s is not None and within_video_s <= 0:
        raise ValueError(f"within_video_s must be > 0 seconds, got {within_video_s}")
    ds = FrameDataset(dataset)
    seconds: dict[str, float] = {}
    failures: list[str] = []

    def fail(msg: str) -> None:
        failures.append(msg)
        if on_error:
            on_error(msg)

    started = time.perf_counter()
    with ds.lock():  # the embedding and feature caches are written under the dataset's lock
        frames = _frames(ds, exclude, within_video_s)
        model = get_backbone(backbone, runtime=runtime, **weights_for(backbone, weights))
        cache = EmbeddingCache(ds.root / "embeddings", model)
        by_key = frames.drop_duplicates("sha256")
        runs = dataset_runs(ds, frames, by_key, dedupe, workers)
        keys = [runs.vector_key[s] for s in frames["sha256"]]
        with engine_session(engine, address=ray_address) as runner:
            stats = embed_frames(model, cache, keys, ds, by_key, engine=runner, batch_size=batch_size,
                                 progress=progress, workers=workers)
        for msg in stats.failures:
            fail(msg)
        readable = np.array([key in cache for key in keys], bool)
        frames = frames[readable].reset_index(drop=True)
        keys = [k for k, ok in zip(keys, readable, strict=True) if ok]
        if frames["video"].nunique() < 2 and within_video_s is None:
            raise ValueError(f"{ds.root}: only one video has readable frames: nothing to compare it with")
        seconds["embed"] = round(time.perf_counter() - started, 3)

        with tempfile.TemporaryDirectory(prefix=".duplicates-", dir=ds.root) as tmp:
            vectors = _vectors(cache, keys, Path(tmp) / "vectors.f16", center)
            t = time.perf_counter()
            codes = pd.factorize(frames["video"])[0]
            pairs = knn_self_join(vectors, codes, frames["timestamp_s"].to_numpy(float), k=k,
                                  min_score=candidate_score, same_video_gap_s=within_video_s, index=index,
                                  progress=progress)
            del vectors
        seconds["self_join"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        near = pairs.score >= min_score
        frame_pairs = _frame_pairs_table(frames, pairs.i[near], pairs.j[near], pairs.score[near])
        labels, representatives = frame_groups(pairs, len(frames), min_score=min_score)
        groups = groups_table(labels, representatives, frames)[GROUP_COLUMNS]
        seconds["groups"] = round(time.perf_counter() - t, 3)

        t = time.perf_counter()
        segments, evidence = find_segments(pairs.i, pairs.j, pairs.score, frames, method=method,
                                           min_score=candidate_score, min_segment_score=min_segment_score)
        seconds["segments"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        segments = check_segments(segments, evidence, frames, ds, enabled=verify, progress=progress,
                                  on_error=fail)
        seconds["verify"] = round(time.perf_counter() - t, 3)
    segments = segments[segments["score"] >= min_segment_score]  # checked ones may have fallen below
    segments = segments.sort_values(["score", "n_frames"], ascending=False, kind="stable").reset_index(drop=True)
    segments["segment"] = np.arange(len(segments))
    segments = segments[SEGMENT_COLUMNS + SEGMENT_EXTRA_COLUMNS]
    seconds["total"] = round(time.perf_counter() - started, 3)

    info: dict[str, Any] = {
        "dataset": str(ds.root.resolve()), "backbone": backbone, "min_score": min_score,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "counts": {"frames": len(frames), "videos": int(frames["video"].nunique()), "candidate_pairs": len(pairs.i),
                   "frame_pairs": len(frame_pairs), "groups": int(groups["group"].nunique()) if len(groups) else 0,
                   "segments": len(segments)},
        "params": {"candidate_score": candidate_score, "k": k, "within_video_s": within_video_s, "method": method,
                   "center": center, "index": index, "verify": verify, "min_segment_score": min_segment_score,
                   "dedupe": dedupe,
                   "excluded": list(exclude)},
        "embedded": stats.embedded, "seconds": seconds, "failures": failures,
    }
    result = DuplicatesResult(frame_pairs, groups, segments, info, failures=failures)
    if out_dir is not None:
        result.out_dir = write_duplicates(out_dir, {"frame_pairs": frame_pairs, "groups": groups,
                                                    "segments": segments}, info)
        if report:
            from framesim.report.duplicates import write_duplicates_report

            write_duplicates_report(result.out_dir)
    return result


def _frames(ds: FrameDataset, exclude: Sequence[str], within_video_s: float | None) -> pd.DataFrame:
    manifest = ds.manifest()
    if manifest.empty:
        raise ValueError(f"{ds.root}: the dataset has no frames; run `framesim extract` first")
    if exclude:
        unknown = sorted(set(exclude) - set(manifest["video"]) - set(manifest["video_id"]))
        if unknown:
            raise ValueError(f"--exclude {unknown[0]}: no such video in {ds.root}")
        manifest = manifest[~(manifest["video"].isin(exclude) | manifest["video_id"].isin(exclude))]
    if manifest["video"].nunique() < 2 and within_video_s is None:
        raise ValueError(f"{ds.root}: the dataset has one video: nothing to compare it with (give "
                         "--within SECONDS to compare its frames with each other)")
    # by video, then time: the self-join excludes a frame's own video as one contiguous range
    return manifest.sort_values(["video", "timestamp_s", "frame_id"], kind="stable").reset_index(drop=True)


def _vectors(cache: EmbeddingCache, keys: Sequence[str], spill: Path, center: bool) -> np.ndarray:
    """All frames' vectors, mean-centred and re-normalised if ``center``: in RAM (float32) when few,
    else a float16 memory map filled chunk by chunk (bounded memory)."""
    mean = None
    if center:
        total = np.zeros(cache.dim, np.float64)
        for chunk in cache.iter_chunks(keys):
            total += chunk.sum(axis=0, dtype=np.float64)
        mean = (total / max(1, len(keys))).astype(np.float32)

    def prepared(x: np.ndarray) -> np.ndarray:
        if mean is None:
            return x
        x = x - mean
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    if len(keys) <= MEMMAP_ABOVE:
        return prepared(cache.get(keys))
    out = np.lib.format.open_memmap(spill, mode="w+", dtype=np.float16, shape=(len(keys), cache.dim))
    start = 0
    for chunk in cache.iter_chunks(keys):
        out[start:start + len(chunk)] = prepared(chunk)
        start += len(chunk)
    out.flush()
    return out


def _frame_pairs_table(frames: pd.DataFrame, i: np.ndarray, j: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    a, b = frames.iloc[i].reset_index(drop=True), frames.iloc[j].reset_index(drop=True)
    out = pd.DataFrame({
        "frame_id_a": a["frame_id"], "video_a": a["video"], "frame_index_a": a["frame_index"],
        "timestamp_a": a["timestamp_s"], "frame_id_b": b["frame_id"], "video_b": b["video"],
        "frame_index_b": b["frame_index"], "timestamp_b": b["timestamp_s"], "score": np.round(score, 6)})
    return out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)[FRAME_PAIR_COLUMNS]


def summary_lines(result: DuplicatesResult, top: int = 10) -> list[str]:
    """A few lines for the terminal: counts, then the best segments."""
    c = result.info["counts"]
    videos = f"{c['videos']} video{'' if c['videos'] == 1 else 's'}"
    lines = [f"{c['frames']} frames of {videos}: {c['frame_pairs']} near-duplicate frame pairs, "
             f"{c['groups']} groups, {c['segments']} copied segment{'' if c['segments'] == 1 else 's'}"]
    for row in result.segments.head(top).itertuples():
        lines.append(f"  {row.score:.3f}  {row.video_a} {row.start_a:.2f}-{row.end_a:.2f} s  <->  {row.video_b} "
                     f"{row.start_b:.2f}-{row.end_b:.2f} s  ({row.n_frames} frame pairs)")
    return lines
