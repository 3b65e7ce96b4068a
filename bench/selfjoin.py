"""Self-join benchmark: every frame of a collection against all others (``framesim.duplicates.selfjoin``).

    python -m bench selfjoin                       # 1M x 1280 (~10 min on 2 cores)
    python -m bench selfjoin --n 50000             # ~1 min
    python -m bench selfjoin --keep /data/sj       # generate the data once, re-run the join on later runs

Data: ``bench.index.FrameVectors`` (unit vectors laid out like 1 fps frame descriptors of 5-30 min videos:
shots of slowly drifting frames over a video-wide and a descriptor-wide component), written as a float16
memmap in 65,536-row chunks, as the embedding cache stores them. Then copies are planted: one video in
``COPY_SHARE`` receives an edited copy of a 10-60 s segment of another video (one cosine to the source in
``COPY_COSINE`` per segment, the edit a fixed direction plus per-frame noise, as a re-encode, crop or colour
change gives). Copies only go into videos that are themselves never copied from.

The join runs in a fresh subprocess (its peak RSS, VmHWM, is its own: index, one chunk and the pairs;
the memmap's pages it reads count too, page cache the kernel may drop). Reported: wall and CPU time,
peak RSS next to the n x n float32 matrix a naive join would need, pairs found, the share of the planted
(copy, source) frame pairs found, and recall against exact search for ``SAMPLE`` query frames (half
random, half planted copies): the share of each query's exact top k of other videos with cosine >= min
score that the join paired it with.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.index import COPY_COSINE, FrameVectors
from bench.pipeline import in_fresh_process, memory_mb, reset_peak_memory
from framesim.duplicates.pipeline import DEFAULT_CANDIDATE_SCORE, DEFAULT_K
from framesim.duplicates.selfjoin import AUTO_NPROBE

DIM = 1280
#: neighbours per frame, and the weakest pair kept: framesim duplicates' defaults
K = DEFAULT_K
#: in these data frames of unrelated videos have cosine ~0.40 +- 0.05, so among 1M frames a random frame's
#: 10 best reach 0.5-0.55 by chance; 0.6 keeps the pairs to near-duplicates (the copies: 0.65-0.95)
MIN_SCORE = DEFAULT_CANDIDATE_SCORE
#: IVF lists searched: the library's default (4 of 1024 at 1M halves the search time, and found 0.975 of
#: the planted copy pairs at k = 10)
BENCH_NPROBE = AUTO_NPROBE
#: share of the videos that receive a copied segment
COPY_SHARE = 0.2
SEGMENT_S = (10, 60)
SAMPLE = 2000
CHUNK = 65_536
FORMAT = 1


def _layout(vectors: FrameVectors) -> tuple[np.ndarray, np.ndarray]:
    """(video code, timestamp in seconds at 1 fps) of every frame."""
    starts, video_of_shot = vectors._layout
    video = np.repeat(video_of_shot, np.diff(starts)).astype(np.int64)
    first = np.searchsorted(video, video)  # first frame of each frame's video
    return video, (np.arange(vectors.n) - first).astype(np.float64)


def make_data(folder: Path, n: int, dim: int, seed: int = 0) -> dict[str, Any]:
    """Write ``vectors.f16`` and ``meta.npz`` (videos, times, planted pairs) into ``folder``; reuse them when
    they were made with the same n, dim and seed."""
    stamp = {"format": FORMAT, "n": n, "dim": dim, "seed": seed}
    if (folder / "stamp.json").exists() and json.loads((folder / "stamp.json").read_text()) == stamp:
        return {"generated_s": 0.0}
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    vectors = FrameVectors(n, dim, seed)
    videos, times = _layout(vectors)
    path = folder / "vectors.f16"
    with open(path, "wb") as f:
        for chunk in vectors.chunks(CHUNK):
            f.write(chunk.astype(np.float16).tobytes())
    mm = np.memmap(path, np.float16, "r+", shape=(n, dim))
    rng = np.random.default_rng([seed, 7])
    codes, first, length = np.unique(videos, return_index=True, return_counts=True)
    targets = rng.choice(len(codes), max(1, round(COPY_SHARE * len(codes))), replace=False)
    sources = np.setdiff1d(np.arange(len(codes)), targets)
    planted_a, planted_b = [], []
    for t in targets:
        s = int(rng.choice(sources))
        seg = int(min(rng.integers(SEGMENT_S[0], SEGMENT_S[1] + 1), length[t], length[s]))
        src = first[s] + rng.integers(0, length[s] - seg + 1) + np.arange(seg)
        dst = first[t] + rng.integers(0, length[t] - seg + 1) + np.arange(seg)
        cos = rng.uniform(*COPY_COSINE)
        edit = _unit(rng.standard_normal((1, dim)).astype(np.float32))
        change = _unit(0.8 * edit + 0.6 * _unit(rng.standard_normal((seg, dim)).astype(np.float32)))
        mm[dst] = _unit(cos * mm[src].astype(np.float32) + np.sqrt(1 - cos ** 2) * change).astype(np.float16)
        planted_a.append(dst)
        planted_b.append(src)
    mm.flush()
    del mm
    np.savez(folder / "meta.npz", videos=videos, times=times, planted_a=np.concatenate(planted_a),
             planted_b=np.concatenate(planted_b))
    (folder / "stamp.json").write_text(json.dumps(stamp))
    return {"generated_s": time.perf_counter() - started}


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    at = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[at] == keys if len(sorted_keys) else np.zeros(len(keys), bool)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _join(folder: Path, n: int, dim: int, index: str, nprobe: int | None) -> dict[str, Any]:
    """The self-join over the memmap (runs in a fresh process); pairs saved to ``pairs.npz``."""
    from framesim.duplicates.selfjoin import auto_index, knn_self_join

    reset_peak_memory()
    meta = np.load(folder / "meta.npz")
    vectors = np.memmap(folder / "vectors.f16", np.float16, "r", shape=(n, dim))
    wall, cpu = time.perf_counter(), time.process_time()
    pairs = knn_self_join(vectors, meta["videos"], meta["times"], k=K, min_score=MIN_SCORE, index=index,
                          nprobe=nprobe, progress=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    np.savez(folder / "pairs.npz", i=pairs.i, j=pairs.j, score=pairs.score)
    return {"wall": wall, "cpu": cpu, "peak_mb": memory_mb()[1], "pairs": len(pairs),
            "index": auto_index(n) if index == "auto" else index}


def _exact_neighbours(folder: Path, n: int, dim: int, queries: np.ndarray, videos: np.ndarray) -> list[np.ndarray]:
    """Exact top K of other videos with cosine >= MIN_SCORE for each query frame, by blocks of the memmap."""
    mm = np.memmap(folder / "vectors.f16", np.float16, "r", shape=(n, dim))
    q = mm[queries].astype(np.float32)
    best_s = np.full((len(q), K), -np.inf, np.float32)
    best_i = np.full((len(q), K), -1, np.int64)
    for start in range(0, n, CHUNK // 2):
        block = mm[start:start + CHUNK // 2].astype(np.float32)
        s = q @ block.T
        s[videos[queries][:, None] == videos[start:start + len(block)][None, :]] = -np.inf
        top = np.argpartition(-s, K - 1, axis=1)[:, :K]
        cand_s = np.hstack([best_s, np.take_along_axis(s, top, 1)])
        cand_i = np.hstack([best_i, top + start])
        keep = np.argsort(-cand_s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(cand_s, keep, 1), np.take_along_axis(cand_i, keep, 1)
    return [i[s >= MIN_SCORE] for s, i in zip(best_s, best_i, strict=True)]


def run_selfjoin(n: int, dim: int, keep: Path | None, index: str, nprobe: int | None) -> dict[str, Any]:
    folder = keep or Path(tempfile.mkdtemp(prefix="framesim-selfjoin-"))
    try:
        made = make_data(folder, n, dim)
        how = f"generated in {made['generated_s']:.0f} s" if made["generated_s"] else "reused"
        print(f"data: {n:,} x {dim} float16 frame-like vectors with planted copies in {folder} ({how})", flush=True)
        result = in_fresh_process(_join, folder, n, dim, index, nprobe)
        print(f"join: {result['wall']:.0f} s wall, {result['cpu']:.0f} s CPU, {result['pairs']:,} pairs", flush=True)
        meta, pairs = np.load(folder / "meta.npz"), np.load(folder / "pairs.npz")
        found = pairs["i"] * n + pairs["j"]
        a, b = meta["planted_a"], meta["planted_b"]
        planted = np.isin(np.minimum(a, b) * n + np.maximum(a, b), found)
        rng = np.random.default_rng(11)
        half = SAMPLE // 2
        queries = np.concatenate([rng.choice(n, half, replace=False), rng.choice(a, min(half, len(a)), replace=False)])
        started = time.perf_counter()
        truth = _exact_neighbours(folder, n, dim, queries, meta["videos"])
        exact_s = time.perf_counter() - started
        found = np.sort(found)  # keys of the pairs found; one sorted search per query instead of a set each
        hits = [_contains(found, np.minimum(q, t) * n + np.maximum(q, t)).sum() for q, t in zip(queries, truth,
                                                                                               strict=True)]
        sizes = np.array([len(t) for t in truth])
        hits = np.array(hits)
        recall = {name: float(hits[s].sum() / max(1, sizes[s].sum())) for name, s in
                  (("all", slice(None)), ("random", slice(0, half)), ("copies", slice(half, None)))}
        result.update({"n": n, "dim": dim, "planted_pairs": len(a), "planted_recall": float(planted.mean()),
                       "sample_recall": recall, "sample": len(queries), "sample_truth": int(sizes.sum()),
                       "exact_sample_s": exact_s,
                       "matrix_gb": n * n * 4 / 1e9, "memmap_gb": n * dim * 2 / 1e9})
        _print(result, nprobe)
        return result
    finally:
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def _print(r: dict[str, Any], nprobe: int | None) -> None:
    from framesim.duplicates.selfjoin import AUTO_NPROBE

    probe = "" if r["index"] == "Flat" else f", nprobe={nprobe or AUTO_NPROBE}"
    rec = r["sample_recall"]
    print(f"self-join of {r['n']:,} x {r['dim']} (k={K}, min score {MIN_SCORE}), index {r['index']}{probe}:\n"
          f"  wall {r['wall']:.0f} s, CPU {r['cpu']:.0f} s ({r['n'] / r['wall']:,.0f} frames/s)\n"
          f"  peak RSS {r['peak_mb']:,.0f} MiB (float16 memmap {r['memmap_gb']:.1f} GB; an n x n float32 "
          f"matrix would need {r['matrix_gb']:,.1f} GB)\n"
          f"  pairs found: {r['pairs']:,}\n"
          f"  planted copy pairs found: {r['planted_recall']:.3f} of {r['planted_pairs']:,}\n"
          f"  recall against exact search, {r['sample']} query frames ({r['sample_truth']:,} exact neighbours, "
          f"{r['exact_sample_s']:.0f} s): {rec['all']:.3f} (random frames {rec['random']:.3f}, copies "
          f"{rec['copies']:.3f})", flush=True)


@click.command()
@click.option("--n", "n", default=1_000_000, show_default=True, help="Frames in the collection.")
@click.option("--dim", default=DIM, show_default=True)
@click.option("--keep", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the data (and pairs) here; data already there with the same n and dim are reused.")
@click.option("--index", "index", default="auto", show_default=True, help="FAISS factory string or auto.")
@click.option("--nprobe", type=int, default=BENCH_NPROBE, show_default=True, help="IVF lists searched.")
def selfjoin(n: int, dim: int, keep: Path | None, index: str, nprobe: int) -> None:
    """kNN self-join of n frame-like vectors with planted copies: time, peak memory, recall."""
    run_selfjoin(n, dim, keep, index, nprobe)
