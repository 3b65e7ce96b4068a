"""Index benchmark: build time, search time of 1,000 queries, recall@10 against Flat, peak memory.

    python -m bench index             # 100k and 1M vectors of 1280 dims (~10-15 min on 2 cores)
    python -m bench index --quick     # 20k and 50k (~1 min)

Each index is built and searched in a fresh subprocess, so its peak RSS (VmHWM) is its own: Python,
FAISS and one 65,536-row chunk of data, plus the index. Vectors are added through
``framesim.index.FaissIndex`` in 65,536-row chunks, as ``matching.search_pairs`` adds them from the
embedding cache, so the peak shows whether ``add`` copies the collection.

The data (``FrameVectors``) are unit vectors shaped like efficientnet-lite0 GeM descriptors of video
frames sampled at 1 fps, not isotropic Gaussian noise, against which every ANN index looks worse than
it does on real descriptors. The shape was measured on the shared media (225 frames of 5 videos, 56
photos, efficientnet-lite0 GeM):

* a common component: unrelated images have cosine 0.3-0.5 (CNN features are non-negative);
* videos of 5-30 min, each with a video-wide component, cut into shots (geometric, mean 8 s): frames
  of one shot, 1 s apart, have cosine 0.6-0.95, and move slowly from the shot's start to its end;
* an anisotropic spectrum: the real descriptors have an effective dimension of ~26 (225 frames);
  here every random component has coordinate variance proportional to i^-0.75 (effective dimension
  ~160): more spread out than measured, so harder for ANN indexes if anything.

Queries: 90 % edited copies of random indexed frames (cosine to their source 0.65-0.95, as the
``framesim.evaluation.edits`` edits give: median 0.72-0.99 per edit kind), 10 % frames of unseen
videos. Recall@10 is the share of Flat's exact top 10 that the index returns, over all queries.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.pipeline import in_fresh_process, memory_mb, reset_peak_memory

DIM = 1280
K = 10
N_QUERIES = 1000
#: rows per chunk handed to ``add``: as many as ``EmbeddingCache.iter_chunks`` gives matching
CHUNK = 65_536
#: squared weights of the components (they sum to 1): common, video, shot, per-frame
WEIGHTS = {"common": 0.40, "video": 0.15, "shot": 0.30, "frame": 0.15}
SPECTRUM_POWER = 0.75
MEAN_SHOT_S = 8
VIDEO_S = (300, 1800)
COPY_COSINE = (0.65, 0.95)
DISTRACTOR_SHARE = 0.1


@dataclass(frozen=True)
class FrameVectors:
    """``n`` deterministic unit vectors laid out as the frames of consecutive videos (module docstring)."""

    n: int
    dim: int = DIM
    seed: int = 0

    @cached_property
    def _scale(self) -> np.ndarray:
        return (np.arange(1, self.dim + 1) ** (-SPECTRUM_POWER / 2)).astype(np.float32)

    def _random_units(self, rng: np.random.Generator, n: int) -> np.ndarray:
        # Uniform coordinates are ~4x cheaper to draw than Gaussian ones; in 1280 dims the shape of the
        # coordinate distribution does not matter, the spectrum does.
        x = rng.random((n, self.dim), dtype=np.float32)
        x -= 0.5
        x *= self._scale
        return _normalise(x)

    @cached_property
    def _layout(self) -> tuple[np.ndarray, np.ndarray]:
        """(first frame of each shot, plus n at the end; video of each shot)."""
        rng = np.random.default_rng([self.seed, 0])
        n_shots = self.n // MEAN_SHOT_S * 2 + 16
        lengths = rng.geometric(1 / MEAN_SHOT_S, n_shots)
        starts = np.concatenate([[0], np.cumsum(lengths)])
        starts = np.concatenate([starts[starts < self.n], [self.n]])
        video_ends = np.cumsum(rng.integers(*VIDEO_S, self.n // VIDEO_S[0] + 2))
        return starts, np.searchsorted(video_ends, starts[:-1], side="right")

    @cached_property
    def _common(self) -> np.ndarray:
        # the same for every seed: it is the descriptor space's, shared by unseen videos too
        return np.sqrt(WEIGHTS["common"]) * self._random_units(np.random.default_rng(1), 1)[0]

    @cached_property
    def _videos(self) -> np.ndarray:
        units = self._random_units(np.random.default_rng([self.seed, 2]), int(self._layout[1][-1]) + 1)
        return np.sqrt(WEIGHTS["video"]) * units

    def chunks(self, rows: int = CHUNK) -> Iterator[np.ndarray]:
        """All vectors in order, ``rows`` at a time (the same vectors whatever ``rows`` is)."""
        for start in range(0, self.n, rows):
            yield self.rows(start, min(self.n, start + rows))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Vectors start..stop-1."""
        return self.take(np.arange(start, stop))

    def take(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of frame numbers ``ids``, each block of shots generated once."""
        ids = np.asarray(ids, np.int64)
        starts, _ = self._layout
        block = (np.searchsorted(starts, ids, side="right") - 1) // _SHOTS_PER_BLOCK
        out = np.empty((len(ids), self.dim), np.float32)
        for b in np.unique(block):
            s0 = int(b) * _SHOTS_PER_BLOCK
            rows = block == b
            out[rows] = self._shot_block(s0, min(len(starts) - 1, s0 + _SHOTS_PER_BLOCK))[ids[rows] - starts[s0]]
        return out

    def _shot_block(self, s0: int, s1: int) -> np.ndarray:
        """Every frame of shots s0..s1-1 (one block); seeded by the block, so regenerating it gives the same rows."""
        starts, video_of_shot = self._layout
        rng = np.random.default_rng([self.seed, 3, s0 // _SHOTS_PER_BLOCK])
        shot_ends = self._random_units(rng, 2 * (s1 - s0))
        lengths = np.diff(starts[s0:s1 + 1])
        shot = np.repeat(np.arange(s1 - s0), lengths)
        # position in the shot, 0..1: a shot drifts from one end point to the other
        pos = (np.arange(len(shot)) - np.repeat(starts[s0:s1] - starts[s0], lengths)) / np.maximum(lengths - 1, 1)[shot]
        pos = pos.astype(np.float32)[:, None]
        start_points, end_points = shot_ends[0::2], shot_ends[1::2]
        x = start_points[shot]
        x += pos * (end_points - start_points)[shot]
        x *= np.sqrt(WEIGHTS["shot"]) / np.linalg.norm(x, axis=1, keepdims=True)
        x += self._videos[video_of_shot[s0 + shot]]
        x += self._common
        noise = self._random_units(rng, len(x))
        noise *= np.sqrt(WEIGHTS["frame"])
        x += noise
        return _normalise(x)

    def queries(self, n_indexed: int, n_queries: int = N_QUERIES) -> tuple[np.ndarray, np.ndarray]:
        """Edited copies of random frames among the first ``n_indexed``, then frames of unseen videos;
        and the frame each copies (-1 for the unseen ones)."""
        rng = np.random.default_rng([self.seed, 4, n_indexed])
        n_distractors = round(n_queries * DISTRACTOR_SHARE)
        sources = np.sort(rng.choice(n_indexed, n_queries - n_distractors, replace=False))
        src = self.take(sources)
        cos = rng.uniform(*COPY_COSINE, (len(src), 1)).astype(np.float32)
        copies = _normalise(cos * src + np.sqrt(1 - cos ** 2) * self._random_units(rng, len(src)))
        unseen = FrameVectors(max(n_distractors * 50, VIDEO_S[1] * 2), self.dim, self.seed + 1)
        distractors = unseen.take(rng.choice(unseen.n, n_distractors, replace=False))
        return np.concatenate([copies, distractors]), np.concatenate([sources, np.full(n_distractors, -1)])


_SHOTS_PER_BLOCK = 256


def _normalise(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# ------------------------------------------------------------------------------------ measurement


@dataclass(frozen=True)
class _Job:
    """One index built and searched in a subprocess."""

    factory: str
    n: int
    dim: int
    data: Path  # float16 rows, as the embedding cache stores them
    queries: Path
    train: Path  # training sample (.npy), spread over the n vectors
    truth: Path | None  # Flat's top-k ids; None for Flat itself
    search_params: tuple[str, ...] = ("",)
    repeat: int = 3


def _read_chunks(path: Path, n: int, dim: int, rows: int = CHUNK) -> Iterator[np.ndarray]:
    """float32 chunks of the first n rows, read (not memory-mapped, whose pages would count as RSS)."""
    with open(path, "rb") as f:
        for start in range(0, n, rows):
            buf = np.empty((min(rows, n - start), dim), np.float16)
            f.readinto(memoryview(buf).cast("B"))
            yield buf.astype(np.float32)


def _timed(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def _measure(job: _Job) -> dict[str, Any]:
    """Build ``job.factory`` over the data, search the queries with each search parameter set."""
    from framesim.index import FaissIndex

    reset_peak_memory()
    rss_before, _ = memory_mb()
    index, build_wall, build_cpu = _timed(lambda: FaissIndex(job.dim, job.factory, expected=job.n))
    if index.needs_training:
        sample = np.load(job.train)[:index.training_size]
        _, train_wall, train_cpu = _timed(lambda: index.train(sample))
        build_wall, build_cpu = build_wall + train_wall, build_cpu + train_cpu
        del sample
    for chunk in _read_chunks(job.data, job.n, job.dim):
        _, wall, cpu = _timed(lambda c=chunk: index.add(c))
        build_wall, build_cpu = build_wall + wall, build_cpu + cpu
    del chunk
    rss_built, peak_build = memory_mb()
    queries = np.load(job.queries)
    truth = np.load(job.truth) if job.truth is not None else None
    searches = []
    for params in job.search_params:
        if params:
            index.set_search_params(params)
        walls, cpus = [], []
        for _ in range(job.repeat):
            (_, ids), wall, cpu = _timed(lambda: index.search(queries, K))
            walls.append(wall)
            cpus.append(cpu)
            if wall > 20:  # one slow run is a stable enough number; repeats would blow the time budget
                break
        recall = None if truth is None else float(np.mean([len(np.intersect1d(a, b)) / K
                                                            for a, b in zip(ids, truth, strict=True)]))
        searches.append({"params": params, "search_wall": statistics.median(walls),
                         "search_cpu": statistics.median(cpus), "recall": recall, "ids": ids})
    return {"factory": job.factory, "n": job.n, "build_wall": build_wall, "build_cpu": build_cpu,
            "index_mb": rss_built - rss_before, "peak_build_mb": peak_build, "peak_mb": memory_mb()[1],
            "searches": searches}


#: HNSW is built up to this size; above, its build time is extrapolated (1M x 1280 takes ~10 CPU-minutes)
HNSW_MAX_BUILD = 200_000
HNSW = ("HNSW32", ("efSearch=64", "efSearch=256"))


def _candidates(n: int) -> list[tuple[str, tuple[str, ...]]]:
    """The indexes compared with Flat at ``n`` vectors: IVF with framesim's list count and nprobe
    (``framesim.index.auto_factory``, also at sizes where it picks Flat), full vectors or 8-bit ones,
    and HNSW32 at two efSearch."""
    from framesim.index import AUTO_PROBE_SHARE, ivf_lists

    nlist = ivf_lists(n)
    probe = f"nprobe={nlist // AUTO_PROBE_SHARE}"
    return [(f"IVF{nlist},SQ8", (probe,)), (f"IVF{nlist},Flat", tuple(dict.fromkeys(("nprobe=16", probe)))), HNSW]


def _max_training(n: int) -> int:
    """The largest training sample any candidate at ``n`` asks for."""
    from framesim.index import FaissIndex

    return min(n, max(FaissIndex(8, factory).training_size for factory, _ in _candidates(n)))


def _write_vectors(vectors: FrameVectors, path: Path) -> None:
    with open(path, "wb") as f:
        for chunk in vectors.chunks():
            f.write(chunk.astype(np.float16).tobytes())


def _read_rows(path: Path, dim: int, rows: np.ndarray) -> np.ndarray:
    return np.memmap(path, np.float16, "r").reshape(-1, dim)[rows].astype(np.float32)


# ----------------------------------------------------------------------------------------------- CLI


@click.command()
@click.option("--quick", is_flag=True, help="20k and 50k vectors (~1 min) instead of 100k and 1M (~10 min).")
@click.option("--sizes", help="Comma-separated collection sizes, e.g. 100000,1000000 (overrides --quick).")
@click.option("--dim", default=DIM, show_default=True)
@click.option("--queries", "n_queries", default=N_QUERIES, show_default=True)
def index(quick: bool, sizes: str | None, dim: int, n_queries: int) -> None:
    """Flat against IVF and HNSW: build and search time, recall@10 against Flat, peak memory."""
    run_index([int(s) for s in sizes.split(",")] if sizes else ([20_000, 50_000] if quick else [100_000, 1_000_000]),
              dim, n_queries)


def run_index(sizes: list[int], dim: int = DIM, n_queries: int = N_QUERIES) -> None:
    from framesim.descriptors import even_sample

    vectors = FrameVectors(max(sizes), dim)
    rows = []
    with tempfile.TemporaryDirectory(prefix="framesim-index-") as d:
        tmp = Path(d)
        started = time.perf_counter()
        _write_vectors(vectors, tmp / "vectors.f16")
        print(f"data: {max(sizes):,} x {dim} frame-like unit vectors (bench/index.py docstring), float16 on disk, "
              f"generated in {time.perf_counter() - started:.0f} s; {n_queries} queries, k={K}", flush=True)
        for n in sorted(sizes):
            queries, sources = vectors.queries(n, n_queries)
            np.save(tmp / "queries.npy", queries)
            np.save(tmp / "train.npy", _read_rows(tmp / "vectors.f16", dim, even_sample(n, _max_training(n))))
            job = _Job("Flat", n, dim, tmp / "vectors.f16", tmp / "queries.npy", tmp / "train.npy", None)
            flat = in_fresh_process(_measure, job)
            np.save(tmp / "truth.npy", flat["searches"][0]["ids"])
            rows.append(_row(flat, sources))
            _print_row(rows[-1], header=len(rows) == 1)
            for factory, params in _candidates(n):
                if factory.startswith("HNSW") and n > HNSW_MAX_BUILD:
                    rows.append(_hnsw_extrapolated(rows, factory, n))
                else:
                    job = _Job(factory, n, dim, job.data, job.queries, job.train, tmp / "truth.npy", params)
                    rows.append(_row(in_fresh_process(_measure, job), sources))
                _print_row(rows[-1])
    _print_choice(rows)
    print(_NOTES)


def _row(result: dict[str, Any], sources: np.ndarray) -> list[dict[str, Any]]:
    """One table row per search parameter set; ``found``: share of the copies whose source is in the top 10."""
    copies = sources >= 0
    out = []
    for search in result["searches"]:
        found = float((search["ids"][copies] == sources[copies, None]).any(axis=1).mean())
        out.append({**{k: v for k, v in result.items() if k != "searches"},
                    **{k: v for k, v in search.items() if k != "ids"}, "found": found})
    return out


_COLUMNS = (f"{'n':>9s}  {'index':18s} {'search params':14s} {'build s':>8s} {'(CPU)':>7s} {'search s':>9s} "
            f"{'(CPU)':>7s} {'recall@10':>9s} {'found':>6s} {'index MiB':>9s} {'peak MiB':>9s}")


def _print_row(rows: list[dict[str, Any]], header: bool = False) -> None:
    if header:
        print(_COLUMNS)
    for r in rows:
        if r.get("extrapolated"):
            print(f"{r['n']:9,d}  {r['factory']:18s} {'':14s} {r['build_cpu']:>16.0f}  not built: build CPU time "
                  f"extrapolated from {r['from_n']:,} (x n log n); search not measured")
            continue
        recall = "exact" if r["recall"] is None else f"{r['recall']:.3f}"
        print(f"{r['n']:9,d}  {r['factory']:18s} {r['params'] or '-':14s} {r['build_wall']:8.1f} {r['build_cpu']:7.1f} "
              f"{r['search_wall']:9.2f} {r['search_cpu']:7.2f} {recall:>9s} {r['found']:6.3f} {r['index_mb']:9.0f} "
              f"{r['peak_mb']:9.0f}", flush=True)


def _hnsw_extrapolated(rows: list[list[dict[str, Any]]], factory: str, n: int) -> list[dict[str, Any]]:
    built = [r[0] for r in rows if r[0]["factory"] == factory and not r[0].get("extrapolated")]
    if not built:
        return []
    ref = max(built, key=lambda r: r["n"])
    scale = n * np.log(n) / (ref["n"] * np.log(ref["n"]))
    return [{"factory": factory, "n": n, "extrapolated": True, "from_n": ref["n"],
             "build_cpu": ref["build_cpu"] * scale}]


def _print_choice(rows: list[list[dict[str, Any]]]) -> None:
    """What framesim picks at each size, and build + search CPU seconds of each index next to Flat's."""
    from framesim.index import auto_factory

    print("\nbuild + search of 1000 queries, CPU s (recall@10, found):")
    for n in sorted({r[0]["n"] for r in rows}):
        parts = [f"{r['factory']}{'|' + r['params'] if r['params'] else ''} {r['build_cpu'] + r['search_cpu']:.0f}"
                 + ("" if r["recall"] is None else f" ({r['recall']:.2f}, {r['found']:.2f})")
                 for group in rows for r in group if r["n"] == n and not r.get("extrapolated")]
        print(f"  {n:,}: " + "; ".join(parts))
        print(f"  {'':{len(f'{n:,}')}}  framesim's auto choice: {auto_factory(n)}")


_NOTES = f"""
build: FaissIndex(dim, factory, expected=n), train on an even sample (IVF: 50 per list), add in {CHUNK:,}-row chunks.
search: {N_QUERIES} queries at once, k={K}, median of up to 3 runs; seconds wall and (CPU: both cores count).
recall@10: share of Flat's top 10 found; found: share of the copy queries whose source frame is in the top 10.
index MiB: RSS growth from building; peak MiB: the subprocess's peak RSS (Python + FAISS ~100, the float16
read buffer and float32 chunk ~500, the index, and for IVF the training sample)."""
