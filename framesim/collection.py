"""A dataset's persistent collections: fill them (``index``), ask them (``search``), move them (``copy_store``).

``index`` makes a collection mirror the dataset for one backbone: it embeds the frames the embedding
cache lacks, upserts the points the collection lacks and removes the points of frames the dataset no
longer has (or of videos left out with ``exclude``). Every step is idempotent and keyed by stable ids,
so a rerun adds nothing twice and a run killed at any point, then rerun, gives the same collection as
one uninterrupted run (the content checksum in ``info()`` says so).

``search`` embeds query images and asks the collection: no frame vectors are loaded, so the first
answer comes as fast as the model loads and the store opens.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from framesim.backbones.base import Backbone, get_backbone, weights_for
from framesim.dataset import FrameDataset
from framesim.dedupe import DEFAULT_DEDUPE_THRESHOLD, DedupeResult, dataset_runs
from framesim.embed_job import embed_frames
from framesim.embeddings import EmbeddingCache, EmbedStats
from framesim.engines import Engine, engine_session
from framesim.examples import Example, example_loader, load_examples
from framesim.stores import StoreSpec, VectorStore, open_store, parse_store, point_ids

#: points upserted per call (and per progress step)
UPSERT_CHUNK = 4096
#: flush the collection (durable, manifest updated) at least this often while indexing
FLUSH_SECONDS = 30.0


@dataclass
class IndexSummary:
    """What one ``index`` call did for one backbone."""

    backbone: str
    store: dict[str, Any]
    added: int = 0
    removed: int = 0
    present: int = 0
    embed: EmbedStats | None = None
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)


def index(dataset: str | os.PathLike[str], backbones: Sequence[str] = ("efficientnet-lite0",), *,
          store: str | StoreSpec | None = None, weights: Mapping[str, str | None] | None = None,
          runtime: str = "auto", exclude: Sequence[str] = (), batch_size: int = 32, progress: bool = True,
          on_error: Callable[[str], None] | None = None, dedupe: float = DEFAULT_DEDUPE_THRESHOLD,
          workers: int = 2, engine: str | Engine = "local", ray_address: str | None = None) -> list[IndexSummary]:
    """Bring each backbone's collection of ``dataset`` up to date (module docstring); ``exclude``: videos
    (``video`` or ``video_id`` values) kept out of the collections, their points removed. ``engine``
    (``"local"``, ``"ray"``: see ``framesim.engines``) embeds the frames; the driver upserts them."""
    ds = FrameDataset(dataset)
    spec = store if isinstance(store, StoreSpec) else parse_store(store)
    out = []
    # the embedding cache is written under the dataset's lock, as by match
    with ds.lock(), engine_session(engine, address=ray_address) as runner:
        manifest = _indexed_frames(ds, exclude)
        frames_by_key = manifest.drop_duplicates("sha256")
        runs = dataset_runs(ds, manifest, frames_by_key, dedupe, workers)
        for name in backbones:
            started = time.perf_counter()
            backbone = get_backbone(name, runtime=runtime, **weights_for(name, weights))
            cache = EmbeddingCache(ds.root / "embeddings", backbone)
            with open_store(spec, dataset=ds.root, backbone=backbone) as collection:
                summary = sync_collection(collection, ds, manifest, frames_by_key, runs, backbone, cache,
                                          batch_size=batch_size, progress=progress, engine=runner)
                summary.store = collection.info()
            for msg in summary.failures:
                if on_error:
                    on_error(msg)
            summary.seconds = round(time.perf_counter() - started, 3)
            out.append(summary)
    return out


def _indexed_frames(ds: FrameDataset, exclude: Sequence[str]) -> pd.DataFrame:
    manifest = ds.manifest()
    if manifest.empty:
        raise ValueError(f"{ds.root}: the dataset has no frames; run `framesim extract` first")
    if exclude:
        out = manifest["video"].isin(exclude) | manifest["video_id"].isin(exclude)
        unknown = sorted(set(exclude) - set(manifest["video"]) - set(manifest["video_id"]))
        if unknown:
            raise ValueError(f"--exclude {unknown[0]}: no such video in {ds.root}")
        manifest = manifest[~out].reset_index(drop=True)
    return manifest


def sync_collection(collection: VectorStore, ds: FrameDataset, manifest: pd.DataFrame,
                    frames_by_key: pd.DataFrame, runs: DedupeResult, backbone: Backbone, cache: EmbeddingCache,
                    *, batch_size: int = 32, progress: bool = True, engine: Engine | None = None) -> IndexSummary:
    """Make ``collection`` hold exactly ``manifest``'s frames (embedding what the cache lacks)."""
    from tqdm import tqdm

    summary = IndexSummary(backbone.name, {})
    ids = point_ids(list(manifest["frame_id"]))
    present = collection.ids()
    stale = present[~np.isin(present, ids)]
    if len(stale):
        collection.delete(stale)
        summary.removed = len(stale)
    missing = ~np.isin(ids, present)
    todo, todo_ids = manifest[missing], ids[missing]
    summary.present = len(manifest) - len(todo)
    needed = [runs.vector_key[k] for k in todo["sha256"]]
    summary.embed = embed_frames(backbone, cache, needed, ds, frames_by_key, engine=engine, batch_size=batch_size,
                                 progress=progress)
    summary.failures = list(summary.embed.failures)
    readable = np.array([k in cache for k in needed], bool)  # frames whose image could not be read stay out
    todo, todo_ids = todo[readable], todo_ids[readable]
    bar = tqdm(total=len(todo), desc=f"index [{backbone.name}]", unit="pt", disable=not progress or not len(todo),
               file=sys.stderr, dynamic_ncols=True)
    last_flush = time.monotonic()
    for start in range(0, len(todo), UPSERT_CHUNK):
        rows = todo.iloc[start:start + UPSERT_CHUNK]
        vectors = cache.get([runs.vector_key[k] for k in rows["sha256"]])
        collection.upsert(todo_ids[start:start + UPSERT_CHUNK], vectors, rows)
        summary.added += len(rows)
        bar.update(len(rows))
        if time.monotonic() - last_flush >= FLUSH_SECONDS:
            collection.flush()
            last_flush = time.monotonic()
    bar.close()
    collection.flush()
    return summary


# -- search --------------------------------------------------------------------------------------------
@dataclass
class SearchResult:
    """Pairs in ``match``'s contract (PAIRS_COLUMNS + cosine), plus what was searched."""

    pairs: pd.DataFrame
    examples: list[Example]
    failures: list[dict[str, str]]
    store: dict[str, Any]
    timings: dict[str, float]


def search(images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], dataset: str | os.PathLike[str],
           backbone: str = "efficientnet-lite0", *, store: str | StoreSpec | None = None, top_k: int = 10,
           videos: Sequence[str] | None = None, weights: Mapping[str, str | None] | None = None,
           runtime: str = "auto", on_error: Callable[[str], None] | None = None) -> SearchResult:
    """The ``top_k`` frames of the collection nearest each image (cosine, best first), optionally among
    ``videos`` only. Reads the collection only: no lock on the dataset, nothing embedded but the images."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    inputs = [images] if isinstance(images, str | os.PathLike) else list(images)
    examples, _root, failed = load_examples(inputs, on_error=None)
    for f in failed:
        if on_error:
            on_error(f["reason"])
    timings["examples"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = get_backbone(backbone, runtime=runtime, **weights_for(backbone, weights))
    timings["model"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with open_store(store, dataset=dataset, backbone=model, create=False) as collection:
        timings["open"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        load = example_loader(examples, model.input_size)
        queries = np.zeros((0, model.dim), np.float32)
        good: list[Example] = []
        for batch in _batches(examples, 32):
            images_ok = []
            for ex in batch:
                try:
                    images_ok.append((ex, model.resize(load(ex.sha256))))
                except (OSError, ValueError) as exc:
                    failed.append({"example": ex.name, "reason": str(exc)})
                    if on_error:
                        on_error(str(exc))
            if images_ok:
                good.extend(ex for ex, _ in images_ok)
                queries = np.vstack([queries, model.embed(np.stack([im for _, im in images_ok]))])
        timings["embed"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, ids = collection.search(queries, top_k, videos=videos)
        timings["search"] = time.perf_counter() - t0
        pairs = _pairs(model.name, good, scores, ids, collection)
        info = collection.info()
    return SearchResult(pairs, good, failed, info, {k: round(v, 4) for k, v in timings.items()})


def _batches(items: Sequence[Any], n: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), n):
        yield items[start:start + n]


def _pairs(backbone: str, examples: Sequence[Example], scores: np.ndarray, ids: np.ndarray,
           collection: VectorStore) -> pd.DataFrame:
    from framesim.runs import EXTRA_COLUMNS, PAIRS_COLUMNS

    found = ids >= 0
    rows_e, cols = np.nonzero(found)
    payload = collection.payloads(np.unique(ids[found]))
    picked = payload.reindex(ids[found])
    table = pd.DataFrame({
        "backbone": backbone,
        "example": np.array([e.name for e in examples], dtype=object)[rows_e] if len(examples) else [],
        "frame_id": picked["frame_id"].to_numpy(object),
        "video": picked["video"].to_numpy(object),
        "frame_index": picked["frame_index"].fillna(-1).to_numpy(np.int64),
        "timestamp_s": picked["timestamp_s"].to_numpy(np.float64),
        "score": scores[found].astype(np.float64).round(6),
        "rank": (cols + 1).astype(np.int64),
        "cosine": scores[found].astype(np.float64).round(6),
        "inliers": np.full(len(rows_e), -1, np.int64),
        "path": picked["path"].to_numpy(object),
    })
    return table[PAIRS_COLUMNS + EXTRA_COLUMNS + ["path"]]


def copy_store(source: VectorStore, target: VectorStore, *, batch: int = 4096, progress: bool = True) -> int:
    """Stream every point of ``source`` into ``target`` (same dim); returns how many were copied."""
    from tqdm import tqdm

    if source.dim != target.dim:
        raise ValueError(f"{source.location} has dim {source.dim}, {target.location} dim {target.dim}")
    n = 0
    with tqdm(total=source.count(), desc="copy", unit="pt", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for ids, vectors, payload in source.scan(batch):
            target.upsert(ids, vectors, payload)
            n += len(ids)
            bar.update(len(ids))
    target.flush()
    return n
