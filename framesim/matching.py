"""Examples x frames -> scored pairs: embed both with each backbone, index the frames, search, re-score.

Per backbone: the frames' descriptors (optionally PCA-whitened, learned on the frames) go into an
index; each example's ``candidates`` most similar frames are re-scored (``score``):

* ``"verified"`` (default): local-feature verification (``verification``) counts the geometrically
  consistent matches of each candidate, and the score is the probability that the frame is the
  example's source among its candidates and "none of them" (``descriptors.MatchPosterior``), the
  evidence being the cosine against a background level (``descriptors.BackgroundSimilarity``) plus
  the inliers. One threshold works across examples; 0.5 means "more likely the source than not".
* ``"normalized"``: the same probability from the cosine and the background only (no verification).
* ``"cosine"``: the cosine similarity itself (the original behaviour).

The result is one table for all backbones (``PAIRS_COLUMNS``, then ``cosine`` and, when verified,
``inliers``), written with a ``run.json`` that describes the run, including ``postprocess`` (every
parameter of the re-scoring); the report is built from these two files alone (plus the images).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from framesim._io import fsync_dir, sha256_file, write_json, write_table
from framesim.backbones.base import Backbone, get_backbone, split_spec
from framesim.dataset import DataFileError, FrameDataset, checked_numbers
from framesim.dedupe import DEFAULT_DEDUPE_THRESHOLD, DedupeResult, frame_thumbnails, near_duplicate_runs
from framesim.descriptors import MAX_FIT_FRAMES, BackgroundSimilarity, MatchPosterior, PCAWhitening, even_sample
from framesim.embeddings import EmbeddingCache, EmbedStats, embed_missing
from framesim.images import ImageError, find_images, load_image, pixel_sha256
from framesim.index import auto_factory, make_index
from framesim.verification import VerifyParams, verify_pairs
from framesim.verification import describe as describe_verification

PAIRS_COLUMNS = ["backbone", "example", "frame_id", "video", "frame_index", "timestamp_s", "score", "rank"]
#: extra columns after the contract ones: the descriptors' cosine, and inliers when verified (-1: not verified)
EXTRA_COLUMNS = ["cosine", "inliers"]
DEFAULT_BACKBONE = "efficientnet-lite0"
DEFAULT_TOP_K = 10
SCORES = ("verified", "normalized", "cosine")
DEFAULT_SCORE = "verified"
#: candidates per example that are re-scored (at least top_k)
DEFAULT_CANDIDATES = 10
DEFAULT_WHITEN = False
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
    train_sample: Callable[[int], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index frame vectors (an array or chunks of one) and search every example.

    ``train_sample(n)`` returns about n frame vectors spread over the whole collection, for indexes that
    need training (IVF): without it they train on the first chunk, i.e. on the first videos only.

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
            if train_sample is not None and getattr(idx, "needs_training", False):
                idx.train(train_sample(idx.training_size))
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


def _frame_loader(dataset: FrameDataset, manifest: pd.DataFrame,
                  min_side: int | None = None) -> Callable[[str], np.ndarray]:
    """``key -> RGB image``; ``min_side``: see ``images.load_image`` (decode JPEGs at reduced scale)."""
    path_of = dict(zip(manifest["sha256"], manifest["path"], strict=True))
    return lambda key: load_image(dataset.frame_path(path_of[key]), min_side)


def _example_loader(examples: Sequence[Example], min_side: int | None = None) -> Callable[[str], np.ndarray]:
    path_of = {ex.sha256: ex.path for ex in examples}
    return lambda key: load_image(path_of[key], min_side)


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
    score: str = DEFAULT_SCORE,
    whiten: bool = DEFAULT_WHITEN,
    candidates: int = DEFAULT_CANDIDATES,
    workers: int = 2,
    runtime: str = "auto",
    dedupe: float = DEFAULT_DEDUPE_THRESHOLD,
) -> MatchResult:
    """Rank every example against every frame of ``dataset`` with each backbone.

    ``backbones`` are specs ``NAME[:DESCRIPTOR]`` (``efficientnet-lite0``, ``efficientnet-lite0:avg``,
    ``resnet50:gem+flip``; see ``framesim.backbones``) or Backbone objects. ``weights`` maps a spec or
    a backbone name to its weights (``"imagenet"``, a file, or ``None`` for random).

    ``score`` says what the pairs' ``score`` is (module docstring): ``"verified"`` (default) and
    ``"normalized"`` are probabilities in [0, 1] computed over each example's ``max(top_k,
    candidates)`` best frames by cosine, so with ``top_k=None`` only those can be returned;
    ``"cosine"`` is the cosine similarity, searched over all frames. Higher is always more similar;
    the cosine stays available in the ``cosine`` column. ``whiten`` PCA-whitens the descriptors,
    learned on the frames being searched. A spec can override ``score`` and ``whiten`` for itself:
    ``efficientnet-lite0:avg@cosine`` is the original pipeline (see ``parse_match_spec``).
    ``dedupe``: consecutive frames of a video whose thumbnails differ by less than this (mean absolute
    difference, 0..1) share one CNN vector (``framesim.dedupe``); 0 embeds every frame.
    ``workers`` threads run the local-feature verification. ``runtime`` picks the inference runtime of
    the CNN backbones (``"auto"``, ``"tensorflow"``, ... see ``framesim.backbones.runtime``).

    With ``ground_truth`` (a CSV, see ``read_ground_truth``) the pairs get a ``correct`` column.
    Frames of ``exclude_videos`` (values of the manifest's ``video`` or ``video_id``) are left out of
    the index: evaluation holds videos out to make distractors that come from no indexed video.
    With ``out_dir`` the pairs (CSV + Parquet) and ``run.json`` are written there, atomically.
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates!r}")
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
        runs = _dedupe(ds, manifest, frames_by_key, dedupe, workers)
        tables, backbone_runs = [], []
        for spec in backbones:
            if isinstance(spec, Backbone):
                backbone, b_score, b_whiten = spec, score, whiten
            else:
                model_spec, b_score, b_whiten, suffix = parse_match_spec(spec, score, whiten)
                backbone = get_backbone(model_spec, runtime=runtime, **_weights_for(spec, weights))
                if suffix:  # the pairs name the variant as asked: "efficientnet-lite0:avg@cosine"
                    backbone.name = f"{backbone.name}@{suffix}"
            cache = EmbeddingCache(ds.root / "embeddings", backbone)
            frame_stats = embed_missing(backbone, cache, runs.representatives,
                                        _frame_loader(ds, frames_by_key, backbone.input_size),
                                        batch_size=batch_size, progress=progress, desc="frames")
            example_stats = embed_missing(backbone, cache, [e.sha256 for e in example_list],
                                          _example_loader(example_list, backbone.input_size),
                                          batch_size=batch_size, progress=progress, desc="examples")
            for msg in frame_stats.failures + example_stats.failures:
                fail(msg)
            # Frames whose image could not be read are left out of the index, not fatal.
            has_vector = [runs.vector_key[k] in cache for k in manifest["sha256"]]
            usable = manifest[has_vector].reset_index(drop=True)
            usable_examples = [e for e in example_list if e.sha256 in cache]
            t0 = time.perf_counter()
            scored = _score_backbone(cache, usable, usable_examples, ds, top_k=top_k, min_score=min_score,
                                     index=index, score=b_score, whiten=b_whiten, candidates=candidates,
                                     workers=workers, fail=fail, vector_key=runs.vector_key)
            search_seconds = time.perf_counter() - t0
            tables.append(_pairs_table(backbone.name, usable_examples, usable, scored))
            backbone_runs.append({**_backbone_summary(backbone, frame_stats, example_stats, search_seconds),
                                  "postprocess": {**postprocess_settings(b_score, b_whiten, candidates),
                                                  **scored.summary}})

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
        # The run's defaults; each backbone's entry has its own (a spec's "@..." overrides them).
        "postprocess": postprocess_settings(score, whiten, candidates),
        "dedupe": runs.summary(),
        "seconds": round(time.perf_counter() - started, 3), "backbones": backbone_runs, "ground_truth": truth_info,
    }
    result = MatchResult(pairs=pairs, run=run, failures=failures)
    if out_dir is not None:
        result.out_dir, result.run = _write_run(out_dir, pairs, run)
    return result


def parse_match_spec(spec: str, score: str = DEFAULT_SCORE, whiten: bool = DEFAULT_WHITEN
                     ) -> tuple[str, str, bool, str]:
    """Split ``NAME[:DESCRIPTOR][@SCORE[+whiten]]`` into (backbone spec, score, whiten, canonical suffix).

    The ``@`` part overrides ``match``'s ``score`` / ``whiten`` for this backbone, so one run can
    compare variants side by side: ``efficientnet-lite0`` against ``efficientnet-lite0:avg@cosine``
    (the original pipeline). Without it the run's settings apply and the suffix is "".
    """
    model_spec, sep, post = spec.partition("@")
    if not sep:
        return spec, score, whiten, ""
    parts = [p for p in post.lower().split("+") if p]
    scores = [p for p in parts if p in SCORES]
    unknown = [p for p in parts if p not in SCORES and p != "whiten"]
    if unknown or len(scores) > 1 or not parts:
        raise ValueError(f"{spec!r}: after '@' give one of {', '.join(SCORES)}, optionally +whiten "
                         f"(e.g. @cosine, @verified+whiten)")
    b_score = scores[0] if scores else score
    b_whiten = "whiten" in parts
    return model_spec, b_score, b_whiten, "+".join([b_score] + (["whiten"] if b_whiten else []))


def _weights_for(spec: str, weights: Mapping[str, str | None] | None) -> dict[str, Any]:
    """``weights=`` for the factory: keyed by the spec as given, without its ``@`` part, or by the name."""
    if not weights:
        return {}
    model_spec = spec.partition("@")[0]
    for key in (spec, model_spec, split_spec(model_spec)[0]):
        if key in weights:
            return {"weights": weights[key]}
    return {}


def postprocess_settings(score: str, whiten: bool, candidates: int) -> dict[str, Any]:
    """Every parameter of the re-scoring, for run.json (per backbone; fitted sizes are added there)."""
    out: dict[str, Any] = {"score": score, "whitening": PCAWhitening().describe() if whiten else None}
    if score != "cosine":
        out["candidates"] = candidates
        out["background"] = BackgroundSimilarity().describe()
        out["posterior"] = MatchPosterior().describe(verified=score == "verified")
        out["score_meaning"] = ("probability that the frame is the example's source among its candidates "
                                "and 'none' (not a cosine; see the cosine column)")
    if score == "verified":
        out["verification"] = describe_verification()
    if out["whitening"] is not None:
        out["whitening"].pop("fit_frames")
    out.get("background", {}).pop("background_frames", None)
    return out


@dataclass
class _Scored:
    """Pairs of one backbone as flat arrays (example row, frame row), best first per example."""

    ex_rows: np.ndarray
    fr_rows: np.ndarray
    scores: np.ndarray
    cosine: np.ndarray
    inliers: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


def _score_backbone(cache: EmbeddingCache, frames: pd.DataFrame, examples: Sequence[Example], ds: FrameDataset,
                    *, top_k: int | None, min_score: float | None, index: str | None, score: str, whiten: bool,
                    candidates: int, workers: int, fail: Callable[[str], None],
                    vector_key: Mapping[str, str] | None = None) -> _Scored:
    keys = list(frames["sha256"])
    # Near-identical frames share their run's vector (framesim.dedupe); all else uses the frame's own key.
    vec_keys = [vector_key.get(k, k) for k in keys] if vector_key else keys
    summary: dict[str, Any] = {}
    whitening = None
    if whiten and len(keys) >= 2:
        t0 = time.perf_counter()
        sample = even_sample(len(keys), MAX_FIT_FRAMES)
        whitening = PCAWhitening().fit(cache.get([vec_keys[i] for i in sample]))
        summary["whitening_fit_frames"] = whitening.n_fit
        summary["whitening_seconds"] = round(time.perf_counter() - t0, 3)

    def post(vectors: np.ndarray) -> np.ndarray:
        return whitening.apply(vectors) if whitening is not None else vectors

    queries = post(cache.get([e.sha256 for e in examples]))
    chunks = (post(c) for c in cache.iter_chunks(vec_keys))

    def train_sample(n: int) -> np.ndarray:
        return post(cache.get([vec_keys[i] for i in even_sample(len(vec_keys), n)]))

    if score == "cosine":
        ex, fr, cos = search_pairs(chunks, queries, top_k=top_k, min_score=min_score, index=index,
                                   n_frames=len(keys), train_sample=train_sample)
        return _Scored(ex, fr, cos, cos, np.full(len(ex), -1, np.int32), summary)

    k = max(top_k or 0, candidates)
    ex, fr, cos = search_pairs(chunks, queries, top_k=k, min_score=None, index=index, n_frames=len(keys),
                               train_sample=train_sample)
    n = len(examples)
    if len(ex) == 0:
        empty = np.zeros(0, np.int64)
        return _Scored(empty, empty, np.zeros(0), np.zeros(0), np.zeros(0, np.int32), summary)
    # Candidates as (n, k) matrices; search_pairs gives each example's best first.
    slot = np.arange(len(ex)) - np.searchsorted(ex, ex)
    valid = np.zeros((n, k), bool)
    cos_m = np.zeros((n, k))
    fr_m = np.zeros((n, k), np.int64)
    valid[ex, slot], cos_m[ex, slot], fr_m[ex, slot] = True, cos, fr

    video_col = "video_id" if "video_id" in frames else "video"
    videos = frames[video_col].astype(str).to_numpy()
    times = frames["timestamp_s"].to_numpy(np.float64)
    sample = even_sample(len(keys), MAX_FIT_FRAMES)
    background = BackgroundSimilarity().fit(post(cache.get([vec_keys[i] for i in sample])), videos[sample],
                                            times[sample])
    best = fr_m[:, 0]
    bg = background(queries, videos[best], times[best])
    summary["background_frames"] = len(sample)
    summary["background_single_video"] = background.single_video

    inl_m = None
    if score == "verified":
        t0 = time.perf_counter()
        pair_keys = [(examples[e].sha256, keys[f]) for e, f in zip(ex, fr, strict=True)]
        counts = verify_pairs(pair_keys, _example_loader(examples), _frame_loader(ds, frames),
                              params=VerifyParams(), workers=workers, on_error=fail)
        inl_m = np.zeros((n, k))
        inl_m[ex, slot] = counts
        summary["verify_seconds"] = round(time.perf_counter() - t0, 3)
        summary["pairs_verified"] = len(pair_keys)

    # Identical pixels stored twice (the same frame in two files) are one hypothesis, not rivals.
    sha = frames["sha256"].to_numpy()
    prob = MatchPosterior()(cos_m, bg, inl_m, valid, groups=np.where(valid, sha[fr_m], ""))
    # Best first by the new score (ties: cosine order), then top_k / min_score.
    order = np.lexsort((np.broadcast_to(np.arange(k), (n, k)), -prob), axis=1)
    rows_e, rows_f, out_s, out_c, out_i = [], [], [], [], []
    for q in range(n):
        kept = [j for j in order[q] if valid[q, j] and (min_score is None or prob[q, j] >= min_score)]
        kept = kept[:top_k] if top_k is not None else kept
        rows_e.append(np.full(len(kept), q))
        rows_f.append(fr_m[q, kept])
        out_s.append(prob[q, kept])
        out_c.append(cos_m[q, kept])
        out_i.append(inl_m[q, kept] if inl_m is not None else np.full(len(kept), -1))
    return _Scored(np.concatenate(rows_e).astype(np.int64), np.concatenate(rows_f).astype(np.int64),
                   np.concatenate(out_s), np.concatenate(out_c), np.concatenate(out_i).astype(np.int32), summary)


def _dedupe(ds: FrameDataset, manifest: pd.DataFrame, frames_by_key: pd.DataFrame, threshold: float,
            workers: int) -> DedupeResult:
    """Which frames share a vector (``framesim.dedupe``); with ``threshold <= 0`` none do."""
    keys = list(manifest["sha256"])
    if threshold <= 0:
        return DedupeResult({k: k for k in keys}, threshold)
    path_of = dict(zip(frames_by_key["sha256"], frames_by_key["path"], strict=True))
    thumbs = frame_thumbnails(ds.root / "embeddings", list(path_of), lambda k: ds.frame_path(path_of[k]),
                              workers=workers)
    video_col = "video_id" if "video_id" in manifest else "video"
    return near_duplicate_runs(keys, list(manifest[video_col]), thumbs, threshold)


def _pairs_table(backbone: str, examples: Sequence[Example], frames: pd.DataFrame, scored: _Scored) -> pd.DataFrame:
    picked = frames.iloc[scored.fr_rows]
    table = pd.DataFrame({
        "backbone": backbone,
        "example": np.array([e.name for e in examples], dtype=object)[scored.ex_rows] if len(examples) else [],
        "frame_id": picked["frame_id"].to_numpy(),
        "video": picked["video"].to_numpy(),
        "frame_index": picked["frame_index"].to_numpy(np.int64),
        "timestamp_s": picked["timestamp_s"].to_numpy(np.float64),
        "score": np.asarray(scored.scores, np.float64).round(6),
        "cosine": np.asarray(scored.cosine, np.float64).round(6),
        "inliers": np.asarray(scored.inliers, np.int64),
    })
    # Ties keep the given order (stable); rank 1 = best frame for this example and backbone.
    table = table.sort_values(["example", "score"], ascending=[True, False], kind="stable")
    table["rank"] = table.groupby("example", sort=False).cumcount().astype(np.int64) + 1
    return table[PAIRS_COLUMNS + EXTRA_COLUMNS].reset_index(drop=True)


def _backbone_summary(backbone: Backbone, frames: EmbedStats, examples: EmbedStats,
                      search_seconds: float) -> dict[str, Any]:
    embedded = frames.embedded + examples.embedded
    seconds = frames.seconds + examples.seconds
    return {
        "name": backbone.name, "spec": backbone.spec, "dim": backbone.dim, "input_size": backbone.input_size,
        "weights": backbone.weights, "runtime": backbone.runtime,
        "frames_embedded": frames.embedded, "frames_cached": frames.cached,
        "examples_embedded": examples.embedded, "embed_seconds": round(seconds, 3),
        "images_per_s": round(embedded / seconds, 2) if embedded and seconds > 0 else None,
        "search_seconds": round(search_seconds, 4),
    }


def read_ground_truth(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A ground-truth CSV: ``example, video, timestamp_s``; an empty video marks an example from no video."""
    from framesim.dataset import _one_line

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
    from framesim.dataset import _one_line

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
