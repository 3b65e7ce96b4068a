"""Query scoring: search the frames' descriptors for each example, then re-score the candidates.

Scores (``SCORES``):

* ``"verified"`` (default): local-feature verification (``verification``) counts the geometrically
  consistent matches of each candidate, and the score is the probability that the frame is the
  example's source among its candidates and "none of them" (``descriptors.MatchPosterior``), the
  evidence being the cosine against a background level (``descriptors.BackgroundSimilarity``) plus
  the inliers. One threshold works across examples; 0.5 means "more likely the source than not".
* ``"normalized"``: the same probability from the cosine and the background only (no verification).
* ``"cosine"``: the cosine similarity itself (the original behaviour).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from framesim.backbones.base import l2_normalize
from framesim.dataset import FrameDataset
from framesim.descriptors import MAX_FIT_FRAMES, BackgroundSimilarity, MatchPosterior, PCAWhitening, even_sample
from framesim.distance import distance_score
from framesim.embeddings import EmbeddingCache
from framesim.examples import Example, example_loader, frame_loader
from framesim.index import make_index
from framesim.stores.base import VectorStore
from framesim.verification import VerifyParams
from framesim.verification import describe as describe_verification
from framesim.verify_run import Cascade, verify_pairs

SCORES = ("verified", "normalized", "cosine")
DEFAULT_SCORE = "verified"
#: candidates per example that are re-scored (at least top_k). 20, not 10: in a static shot, or with
#: dense sampling, the best frames by descriptor are many near-identical ones, and often none of the
#: first 10 is within a second of the source instant, which only verification can pick out. Measured on
#: `python -m bench endtoend`'s benchmark (2 fps), seeds 0-3: 10 -> 20 -> 30 candidates took mean µAP
#: 0.816 -> 0.914 -> 0.949 and recall@P90 0.779 -> 0.887 -> 0.916, for about 25 % and 45 % more CPU.
DEFAULT_CANDIDATES = 20


def search_pairs(
    frame_vectors: Sequence[np.ndarray] | np.ndarray,
    example_vectors: np.ndarray,
    *,
    top_k: int | None,
    min_score: float | None,
    index: str | None = None,
    n_frames: int | None = None,
    train_sample: Callable[[int], np.ndarray] | None = None,
    metric: str = "cosine",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index frame vectors (an array or chunks of one) and search every example.

    ``metric="l2"``: an L2 index; the scores are FAISS' squared distances, smallest first, and
    ``min_score`` does not apply (give ``top_k``).

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
            idx = make_index(dim, index, n_frames if n_frames is not None else len(chunk), metric=metric)
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
            if min_score is not None and metric == "cosine":
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



def store_search_pairs(store: VectorStore, frame_ids: Sequence[str], queries: np.ndarray, *, top_k: int,
                       min_score: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``search_pairs`` over a persistent collection: the same flat arrays, frame rows being positions in
    ``frame_ids``. Points of frames not in ``frame_ids`` (the collection holds more) are left out."""
    from framesim.stores import point_ids

    ids = point_ids(list(frame_ids))
    order = np.argsort(ids)
    sorted_ids = ids[order]
    scores, found = store.search(queries, top_k)
    pos = np.clip(np.searchsorted(sorted_ids, found), 0, max(len(ids) - 1, 0))
    keep = (found >= 0) & (sorted_ids[pos] == found) if len(ids) else np.zeros(found.shape, bool)
    if min_score is not None:
        keep &= scores >= min_score
    ex_rows = np.nonzero(keep)[0]
    return ex_rows.astype(np.int64), order[pos[keep]].astype(np.int64), scores[keep].astype(np.float32)


def postprocess_settings(score: str, whiten: bool, candidates: int, verify: VerifyParams | None = None,
                         cascade: Cascade | None = None, metric: str = "cosine") -> dict[str, Any]:
    """Every parameter of the re-scoring, for run.json (per backbone; fitted sizes are added there)."""
    if metric == "l2":
        return {"score": "distance", "metric": "l2", "whitening": None,
                "score_meaning": "1 / (1 + Euclidean distance of the unnormalised descriptors); ranked by "
                                 "the distance (see the distance column)"}
    out: dict[str, Any] = {"score": score, "whitening": PCAWhitening().describe() if whiten else None}
    if score != "cosine":
        out["candidates"] = candidates
        out["background"] = BackgroundSimilarity().describe()
        out["posterior"] = MatchPosterior().describe(verified=score == "verified")
        out["score_meaning"] = ("probability that the frame is the example's source among its candidates "
                                "and 'none' (not a cosine; see the cosine column)")
    if score == "verified":
        out["verification"] = describe_verification(verify or VerifyParams())
        out["cascade"] = (cascade or Cascade()).describe()
    if out["whitening"] is not None:
        out["whitening"].pop("fit_frames")
    out.get("background", {}).pop("background_frames", None)
    return out


@dataclass
class Scored:
    """Pairs of one backbone as flat arrays (example row, frame row), best first per example."""

    ex_rows: np.ndarray
    fr_rows: np.ndarray
    scores: np.ndarray
    cosine: np.ndarray
    inliers: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)
    #: Euclidean distances (``metric="l2"`` only)
    distance: np.ndarray | None = None


def score_backbone(cache: EmbeddingCache, frames: pd.DataFrame, examples: Sequence[Example], ds: FrameDataset,
                   *, top_k: int | None, min_score: float | None, index: str | None, score: str, whiten: bool,
                   candidates: int, workers: int, fail: Callable[[str], None],
                   vector_key: Mapping[str, str] | None = None, verify: VerifyParams | None = None,
                   cascade: Cascade | None = None, progress: bool = False, store: VectorStore | None = None,
                   metric: str = "cosine") -> Scored:
    """Search ``frames`` for each of ``examples`` and score the candidates (module docstring).

    With ``store`` (a collection holding ``frames``) candidates come from it, not from an index built now.

    ``summary`` gets the fitted sizes and the seconds of each stage: ``search_seconds`` (index, search,
    background) and, when verified, ``verify_seconds`` and ``verification`` (what was cached, verified
    and skipped)."""
    t_search = time.perf_counter()
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

    def find_candidates(k: int | None, min_score: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if store is None:
            return search_pairs(chunks, queries, top_k=k, min_score=min_score, index=index, n_frames=len(keys),
                                train_sample=train_sample)
        if whitening is not None or k is None:
            raise ValueError("a collection (--store) is searched as stored: no --whiten, and --top-k above 0")
        return store_search_pairs(store, frames["frame_id"], queries, top_k=k, min_score=min_score)

    if metric == "l2":
        return _l2_pairs(cache, vec_keys, queries, chunks, top_k=top_k, min_score=min_score, index=index,
                         train_sample=train_sample, summary=summary, started=t_search)
    if score == "cosine":
        ex, fr, cos = find_candidates(top_k, min_score)
        summary["search_seconds"] = round(time.perf_counter() - t_search, 4)
        return Scored(ex, fr, cos, cos, np.full(len(ex), -1, np.int32), summary)

    k = max(top_k or 0, candidates)
    ex, fr, cos = find_candidates(k, None)
    n = len(examples)
    if len(ex) == 0:
        empty = np.zeros(0, np.int64)
        return Scored(empty, empty, np.zeros(0), np.zeros(0), np.zeros(0, np.int32), summary)
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
    summary["search_seconds"] = round(time.perf_counter() - t_search, 4)

    inl_m = None
    if score == "verified":
        params = verify or VerifyParams()
        pair_keys = [(examples[e].sha256, keys[f]) for e, f in zip(ex, fr, strict=True)]
        counts, stats = verify_pairs(
            pair_keys, example_loader(examples, min_long_side=params.long_side),
            frame_loader(ds, frames, min_long_side=params.long_side), params=params, cascade=cascade,
            cache_root=ds.root / "embeddings", workers=workers, progress=progress, on_error=fail)
        inl_m = np.zeros((n, k))
        inl_m[ex, slot] = counts
        summary["verify_seconds"] = round(stats.seconds, 3)
        summary["pairs_verified"] = stats.pairs_verified
        summary["verification_work"] = stats.summary()

    # Identical pixels stored twice (the same frame in two files) are one hypothesis, not rivals.
    sha = frames["sha256"].to_numpy()
    prob = MatchPosterior()(cos_m, bg, inl_m, valid, groups=np.where(valid, sha[fr_m], ""))
    prob = prob.round(6)  # as the pairs table writes it, so --min-score keeps what the file shows >= it
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
    return Scored(np.concatenate(rows_e).astype(np.int64), np.concatenate(rows_f).astype(np.int64),
                   np.concatenate(out_s), np.concatenate(out_c), np.concatenate(out_i).astype(np.int32), summary)



def _l2_pairs(cache: EmbeddingCache, vec_keys: Sequence[str], queries: np.ndarray, chunks: Any, *,
              top_k: int | None, min_score: float | None, index: str | None,
              train_sample: Callable[[int], np.ndarray], summary: dict[str, Any], started: float) -> Scored:
    """The ``top_k`` frames nearest each example by Euclidean distance (``framesim.distance``)."""
    if top_k is None:
        raise ValueError("--metric l2 needs --top-k above 0")
    ex, fr, squared = search_pairs(chunks, queries, top_k=top_k, min_score=None, index=index,
                                   n_frames=len(vec_keys), train_sample=train_sample, metric="l2")
    distance = np.sqrt(np.maximum(squared.astype(np.float64), 0.0))
    score = distance_score(distance)
    frame_vectors = cache.get([vec_keys[f] for f in fr])
    cosine = np.einsum("ij,ij->i", l2_normalize(queries[ex]), l2_normalize(frame_vectors))
    keep = score >= min_score if min_score is not None else np.ones(len(ex), bool)
    summary["search_seconds"] = round(time.perf_counter() - started, 4)
    return Scored(ex[keep], fr[keep], score[keep], cosine[keep], np.full(int(keep.sum()), -1, np.int32), summary,
                  distance=distance[keep])
