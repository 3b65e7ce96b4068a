"""Running verification over many pairs: cached local features, cached results, a cascade, all cores.

* **Features once.** Each image's local features (``verification.local_features``) are stored by pixel
  sha256 under ``<dataset>/embeddings/_local/<settings>/`` (the embedding cache's checksummed shards:
  a damaged shard is dropped with a warning and recomputed), the mirrored example under
  ``<sha256>:flip``. A grown dataset or a new example pays only for its own images.
* **Results once.** Each pair's inlier count is stored by (example, frame) and every verification
  setting, so a second identical ``match`` verifies nothing.
* **Cascade.** The mirrored example is matched only when the example as it is finds no conclusive
  geometric match with any of its candidates (``Cascade.mirror_below`` inliers): a clear match
  already decides, and mirrored copies are among what is left. Every candidate is still verified:
  telling the source instant from its neighbours in the same shot is what verification is for
  (stopping at the first conclusive candidate by cosine was measured: µAP fell from 0.80 to 0.44 on
  ``python -m bench endtoend``'s benchmark, as that candidate is often a neighbour over a second away).
* **All cores.** Features and pairs run in threads: OpenCV's detectors, RANSAC and the BLAS matrix
  product release the GIL.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from framesim.embeddings import EmbeddingCache
from framesim.verification import (
    LocalFeatures,
    VerifyParams,
    count_inliers_many,
    empty_features,
    local_features,
    mirrored,
)


@dataclass(frozen=True)
class Cascade:
    """Which matchings to skip. ``mirror_below``: match the mirrored example only if the example as it
    is gets fewer inliers than this with every candidate (0: never mirror; a large number: always)."""

    mirror_below: int = 16

    def describe(self) -> dict[str, object]:
        return {"method": "mirror only when the example as it is finds no conclusive match", **asdict(self)}


@dataclass
class VerifyStats:
    """What one ``verify_pairs`` call did (for run.json)."""

    pairs: int = 0
    pairs_cached: int = 0
    pairs_verified: int = 0
    mirrored: int = 0
    features_computed: int = 0
    features_cached: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "failures"}
        out["seconds"] = round(self.seconds, 3)
        out["share_verified"] = round(self.pairs_verified / self.pairs, 4) if self.pairs else 0.0
        return out


#: examples whose features (and their candidates') are held in memory at once
EXAMPLES_PER_CHUNK = 32


class _RecordSpec:
    """What ``EmbeddingCache`` needs to know about a store of fixed-size records (not a backbone)."""

    weights = "none"

    def __init__(self, name: str, dim: int) -> None:
        self.name = self.spec = self.base_name = name
        self.dim = dim


class FeatureStore:
    """Local features by key, as fixed-size float16 records: [count, mirror axis, x0, y0, x1, y1, ...,
    descriptors]. float16 holds the descriptors' whole numbers 0..255 exactly and positions to 1/2048 of
    the long side (``local_features`` rounds them so)."""

    def __init__(self, root: str | Path, params: VerifyParams) -> None:
        self.params = params
        self.n, self.d = params.n_features, params.descriptor_size
        spec = _RecordSpec(f"_local-{params.extraction_tag()}", 2 + self.n * (2 + self.d))
        self.cache = EmbeddingCache(Path(root) / "_local", spec)  # type: ignore[arg-type]

    def __contains__(self, key: str) -> bool:
        return key in self.cache

    def get(self, keys: Sequence[str]) -> list[LocalFeatures]:
        out = []
        for rec in self.cache.get(list(keys)):
            k = min(int(rec[0]), self.n)
            points = rec[2:2 + 2 * k].reshape(k, 2).astype(np.float32)
            start = 2 + 2 * self.n
            desc = rec[start:start + k * self.d].reshape(k, self.d).astype(np.uint8)
            out.append(LocalFeatures(points, desc, float(rec[1])))
        return out

    def put(self, keys: Sequence[str], feats: Sequence[LocalFeatures]) -> None:
        recs = np.zeros((len(keys), self.cache.dim), np.float32)
        for rec, f in zip(recs, feats, strict=True):
            k = min(len(f), self.n)  # detectors can return a few more than asked for (ties)
            rec[0], rec[1] = k, f.mirror_axis
            rec[2:2 + 2 * k] = f.points[:k].ravel()
            start = 2 + 2 * self.n
            rec[start:start + k * self.d] = f.descriptors[:k].ravel()
        self.cache.put(list(keys), recs)

    def flush(self) -> None:
        self.cache.flush()


class InlierStore:
    """Inlier counts by ``<example sha256>:<frame sha256>`` for one complete verification setting."""

    def __init__(self, root: str | Path, params: VerifyParams, cascade: Cascade) -> None:
        tag = f"{params.tag()}-m{cascade.mirror_below}"
        self.cache = EmbeddingCache(Path(root) / "_local", _RecordSpec(f"_inliers-{tag}", 1))  # type: ignore[arg-type]

    @staticmethod
    def key(example: Hashable, frame: Hashable) -> str:
        return f"{example}:{frame}"

    def __contains__(self, key: str) -> bool:
        return key in self.cache

    def get(self, keys: Sequence[str]) -> np.ndarray:
        return self.cache.get(list(keys))[:, 0].round().astype(np.int32)

    def put(self, keys: Sequence[str], counts: Sequence[int]) -> None:
        self.cache.put(list(keys), np.asarray(counts, np.float32).reshape(-1, 1))

    def flush(self) -> None:
        self.cache.flush()


def verify_pairs(
    pairs: Sequence[tuple[str, str]],
    load_example: Callable[[str], np.ndarray],
    load_frame: Callable[[str], np.ndarray],
    *,
    params: VerifyParams | None = None,
    cascade: Cascade | None = None,
    cache_root: str | Path | None = None,
    workers: int = 2,
    progress: bool = False,
    on_error: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, VerifyStats]:
    """Inlier count of every (example sha256, frame sha256) pair, in order, and what it took.

    With ``cache_root`` features and counts are cached there (see the module docstring). An image that
    cannot be loaded gives 0 for its pairs (reported, not cached, so a fixed file is verified later).
    """
    from tqdm import tqdm

    params, cascade = params or VerifyParams(), cascade or Cascade()
    started = time.perf_counter()
    stats = VerifyStats(pairs=len(pairs))
    out = np.zeros(len(pairs), np.int32)
    if not pairs:
        return out, stats
    results = InlierStore(cache_root, params, cascade) if cache_root is not None else None
    store = FeatureStore(cache_root, params) if cache_root is not None else None
    keys = [InlierStore.key(e, f) for e, f in pairs]
    todo = list(range(len(pairs)))
    if results is not None:
        cached = [i for i in todo if keys[i] in results]
        if cached:
            out[cached] = results.get([keys[i] for i in cached])
        todo = [i for i in todo if keys[i] not in results]
    stats.pairs_cached = len(pairs) - len(todo)
    if not todo:
        stats.seconds = time.perf_counter() - started
        return out, stats

    failed: set[str] = set()
    memo: dict[str, LocalFeatures] = {}

    def report(msg: str) -> None:
        stats.failures.append(msg)
        if on_error:
            on_error(msg)

    def compute(key: str) -> LocalFeatures | None:
        image_key, _, view = key.partition(":")
        if view == "flip" and params.features == "rootsift" and f"{image_key}:plain" in memo:
            return mirrored(memo[f"{image_key}:plain"])  # derived: nothing decoded or detected
        try:
            rgb = (load_frame if view == "frame" else load_example)(image_key)
        except (OSError, ValueError) as exc:
            report(f"verification skipped: {exc}")
            return None
        return local_features(rgb, params, flip=view == "flip")

    def features(keys_needed: Sequence[str], pool: concurrent.futures.Executor) -> None:
        """Fill ``memo`` for ``keys_needed``: from the store, else computed in ``pool`` and stored."""
        need = [k for k in dict.fromkeys(keys_needed) if k not in memo and k not in failed]
        have = [k for k in need if store is not None and _store_key(k) in store]
        if have and store is not None:
            memo.update(zip(have, store.get([_store_key(k) for k in have]), strict=True))
        stats.features_cached += len(have)
        new = [k for k in need if k not in memo]
        computed = list(pool.map(compute, new))
        good = [(k, f) for k, f in zip(new, computed, strict=True) if f is not None]
        failed.update(k for k, f in zip(new, computed, strict=True) if f is None)
        memo.update(good)
        stats.features_computed += len(good)
        stored = [(k, f) for k, f in good if not (k.endswith(":flip") and params.features == "rootsift")]
        if store is not None and stored:  # (mirrored RootSIFT is derived again: cheaper than reading it)
            store.put([_store_key(k) for k, _ in stored], [f for _, f in stored])
            store.flush()  # now, so the next chunk finds them (the cache answers `in` for flushed keys only)

    pending = set(todo)
    by_example: dict[str, list[int]] = {}
    for i in range(len(pairs)):  # all pairs, cached ones too: the cascade reads their counts
        by_example.setdefault(pairs[i][0], []).append(i)
    bar = tqdm(total=len(todo), desc="verify", unit="pair", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)

    def feats(key: str) -> LocalFeatures:
        return memo.get(key, empty_features(params))

    def example_task(rows: list[int]) -> list[tuple[int, int]]:  # (runs in the pool: no shared writes)
        """(pair, count) for one example's pairs still to verify: matched together (one matrix product)."""
        query = feats(f"{pairs[rows[0]][0]}:plain")
        counts = count_inliers_many(query, [feats(f"{pairs[i][1]}:frame") for i in rows], params)
        bar.update(len(rows))
        return list(zip(rows, counts, strict=True))

    def match_mirror(rows: list[int]) -> list[tuple[int, int]]:
        """The mirrored example against the frames of ``rows`` (all of one example)."""
        found = count_inliers_many(feats(f"{pairs[rows[0]][0]}:flip"), [feats(f"{pairs[i][1]}:frame") for i in rows],
                                   params)
        return [(i, max(counts[i], n)) for i, n in zip(rows, found, strict=True)]

    counts: dict[int, int] = {}
    examples = [ex for ex, rows in by_example.items() if pending.intersection(rows)]
    # The pool's threads are the parallelism: BLAS threads inside each of them only contend for the same
    # cores (and OpenBLAS spins while it waits): one BLAS thread each made verification about 10 % faster.
    with threadpool_limits(limits=1, user_api="blas"), \
            concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # A few examples at a time, so memory holds only their features and their candidates' (frames
        # shared by two chunks come back from the store).
        for start in range(0, len(examples), EXAMPLES_PER_CHUNK):
            chunk = {ex: [i for i in by_example[ex] if i in pending]
                     for ex in examples[start:start + EXAMPLES_PER_CHUNK]}
            memo.clear()
            features([f"{ex}:plain" for ex in chunk] + [f"{pairs[i][1]}:frame" for rows in chunk.values()
                                                         for i in rows], pool)
            for got in pool.map(example_task, chunk.values()):
                counts.update(got)
            # The mirror only for examples whose best candidate, as they are, is not conclusive (cached
            # candidates count too): a clear match already decides, and the rest are its other instants.
            flip = {ex: rows for ex, rows in chunk.items()
                    if params.flip and f"{ex}:plain" not in failed
                    and max(counts.get(i, int(out[i])) for i in by_example[ex]) < cascade.mirror_below}
            if flip:
                features([f"{ex}:flip" for ex in flip], pool)
                for got in pool.map(match_mirror, flip.values()):
                    counts.update(got)
            stats.mirrored += sum(len(rows) for rows in flip.values())
            done = [i for rows in chunk.values() for i in rows]
            out[done] = [counts[i] for i in done]
            # Kept chunk by chunk: an interrupted run resumes from the last one. Pairs with an unreadable
            # image are not kept, so they are verified again once it is fixed.
            good = [i for i in done if not ({f"{pairs[i][0]}:plain", f"{pairs[i][1]}:frame"} & failed)]
            if results is not None and good:
                results.put([keys[i] for i in good], [counts[i] for i in good])
                results.flush()
    bar.close()
    stats.pairs_verified = len(counts)
    stats.seconds = time.perf_counter() - started
    return out, stats


def _store_key(key: str) -> str:
    """Store key of a memo key: an image's features are the same whether it is an example or a frame."""
    image_key, _, view = key.partition(":")
    return f"{image_key}:flip" if view == "flip" else image_key
