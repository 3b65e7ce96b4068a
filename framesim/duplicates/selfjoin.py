"""k-nearest-neighbour self-join of a frame collection: near-duplicate frame pairs between videos.

Every frame is a query against all the others, but never as an n x n similarity matrix: the memory is
the index, one chunk of queries and the O(n k) results. Adjacent frames of one video are nearly the
same picture, so a plain top-k would be filled by the query's own video; the own video is excluded
*inside* the search instead (FAISS search-time ID selectors, faiss >= 1.7.3):

* frames are ordered by (video, time), so each video is one contiguous id range ``[lo, hi)`` of the index;
* a video's queries are searched with ``IDSelectorNot(IDSelectorRange(lo, hi))`` (IVF, HNSW ...). For an
  exact ``IndexFlatIP`` that selector would force FAISS off its BLAS path (measured 4.6x slower), so
  there the two ranges ``[0, lo)`` and ``[hi, n)`` are searched separately, each on the BLAS path, and
  merged;
* runs of short videos (photos are one-frame "videos") are searched together without a selector for
  ``k`` + their longest video's length and filtered afterwards: one call per video would be slow.

With ``same_video_gap_s`` each frame also gets up to ``k`` neighbours from its own video more than that
many seconds away (a selector for the own range, ``k`` + the frames inside the time window, filtered),
kept separately so that a looping video cannot crowd out the cross-video matches.

Index: ``"auto"`` is exact search (``Flat``) up to ``AUTO_FLAT_LIMIT`` frames and above that
``PCAR256,IVF{nlist},SQ8`` with nlist ~ sqrt(n) (``auto_index``; any FAISS factory string may be given).
Approximate indexes return ``RERANK`` times more candidates, which are re-scored exactly from the
original vectors (read chunk-wise from a float16 memmap, never copied whole), so every score returned
is an exact cosine. Measured on 1M x 1280 synthetic frame descriptors with planted copies
(``python -m bench selfjoin``): see ``AUTO_NPROBE``.

Sources: FAISS wiki "Setting search parameters for one query" (``SearchParameters.sel``), "Guidelines
to choose an index"; Douze et al., "The Faiss library" (2024).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from framesim.descriptors import even_sample

#: up to this many frames the self-join is exact. Exact costs n^2 d: FAISS Flat runs at ~45 GFLOP/s on
#: 2 cores, so 50k x 1280 takes ~2.5 min, 100k ~10 min and 200k ~40 min; IVF is several times faster above.
AUTO_FLAT_LIMIT = 50_000
#: approximate indexes return this many times k candidates, re-scored exactly, best k kept
RERANK = 2
#: approximate candidates scoring more than this below min_score are not re-scored (8-bit quantisation
#: moves a cosine by a few hundredths). Not used after a pre-transform: FAISS's PCA subtracts the mean, so
#: its scores are centred inner products, far below the cosines (0.3 for 0.7 on descriptors with a common
#: component); there every candidate is re-scored
RESCORE_MARGIN = 0.15
#: IVF lists probed by default. Measured (``python -m bench selfjoin``, 1M x 1280, PCAR256,IVF1024,SQ8, 2 busy
#: cores) at nprobe=4: 425 s, 3.3 GB peak RSS, 97.5 % of the planted copy pairs found, 77 % of the copies'
#: exact top 10 (cosine >= 0.6); 8 doubles the search time for more recall (1000-query runs: +3-4 points)
AUTO_NPROBE = 8
#: videos of at most this many frames are searched in batches and filtered, not one call each
SMALL_VIDEO = 64


@dataclass(frozen=True)
class FramePairs:
    """Near-duplicate frame pairs: frame positions ``i < j`` (int64) and their cosine ``score`` (float32),
    each unordered pair once, sorted by (i, j)."""

    i: np.ndarray
    j: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return len(self.i)

    @classmethod
    def empty(cls) -> FramePairs:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def auto_index(n: int) -> str:
    """The index ``index="auto"`` picks for ``n`` frames: exact up to ``AUTO_FLAT_LIMIT``, else PCA to 256
    dims (exact re-scoring repairs its scores), IVF with framesim's list count (``framesim.index.ivf_lists``:
    ~sqrt(n); 4 sqrt(n) lists cost more in training and coarse assignment than they save at 1M on 2 cores)
    and 8-bit codes: 256 bytes a frame."""
    from framesim.index import ivf_lists

    if n <= AUTO_FLAT_LIMIT:
        return "Flat"
    return f"PCAR256,IVF{ivf_lists(n)},SQ8"


def knn_self_join(vectors: np.ndarray, videos: np.ndarray, times: np.ndarray, *, k: int = 10,
                  min_score: float = 0.5, same_video_gap_s: float | None = None, index: str = "auto",
                  nprobe: int | None = None, chunk: int = 8192, progress: bool = True) -> FramePairs:
    """Pairs of each frame with its ``k`` nearest frames of other videos (cosine >= ``min_score``), and with
    ``same_video_gap_s`` also up to ``k`` of its own video more than that many seconds away.

    ``vectors``: (n, d) L2-normalised float32 or float16 (an ``np.memmap`` is read ``chunk`` rows at a time);
    ``videos``: (n,) integer video code per frame; ``times``: (n,) seconds. ``index``: ``"auto"`` or a FAISS
    factory string (``"Flat"``, ``"IVF1024,Flat"``, ``"HNSW32"``, ``"PCAR256,IVF1024,SQ8"``); ``nprobe``:
    IVF lists searched (default ``AUTO_NPROBE``).
    """
    videos, times = _validate(vectors, videos, times, k, min_score, same_video_gap_s, chunk)
    n, dim = vectors.shape
    if n < 2:
        return FramePairs.empty()
    order = np.lexsort((times, videos))  # positions in index order: each video one contiguous range
    sorted_videos, sorted_times = videos[order], times[order]
    bounds = np.flatnonzero(np.diff(sorted_videos)) + 1
    starts, stops = np.concatenate([[0], bounds]), np.concatenate([bounds, [n]])
    searcher = _Searcher(vectors, order, index if index != "auto" else auto_index(n), nprobe, chunk)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    from tqdm import tqdm

    bar = tqdm(total=n, unit="frame", desc="self-join", file=sys.stderr, disable=not progress, smoothing=0.1)
    try:
        for lo, hi, video in _batches(starts, stops, chunk):
            rows = np.arange(lo, hi)
            queries = searcher.queries(rows)
            if isinstance(video, np.ndarray):
                # several short videos at once: no selector, k + the longest video, own video dropped after
                owner = np.repeat(video[:-1], np.diff(video))
                owner_end = np.repeat(video[1:], np.diff(video))
                ids, scores = searcher.search(queries, k * searcher.rerank + int(np.diff(video).max()))
                own = (ids >= owner[:, None]) & (ids < owner_end[:, None])
                parts.append(searcher.keep(rows, queries, np.where(own, -1, ids), scores, k, min_score))
                if same_video_gap_s is not None:
                    far = own & (np.abs(sorted_times[ids] - sorted_times[rows, None]) > same_video_gap_s)
                    parts.append(searcher.keep(rows, queries, np.where(far, ids, -1), scores, k, min_score))
            else:
                ids, scores = searcher.search(queries, k * searcher.rerank, exclude=video)
                parts.append(searcher.keep(rows, queries, ids, scores, k, min_score))
                if same_video_gap_s is not None:
                    t, q = sorted_times[video[0]:video[1]], sorted_times[rows]
                    window = (np.searchsorted(t, q + same_video_gap_s, "right")
                              - np.searchsorted(t, q - same_video_gap_s))
                    ids, scores = searcher.search(queries, k * searcher.rerank + int(window.max()), only=video)
                    far = (ids >= 0) & (np.abs(sorted_times[ids] - q[:, None]) > same_video_gap_s)
                    parts.append(searcher.keep(rows, queries, np.where(far, ids, -1), scores, k, min_score))
            bar.update(hi - lo)
    finally:
        bar.close()
    return _unique_pairs(parts, order)


def _validate(vectors: np.ndarray, videos: np.ndarray, times: np.ndarray, k: int, min_score: float,
              gap: float | None, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    if getattr(vectors, "ndim", 0) != 2:
        raise ValueError(f"vectors: expected a 2-d (n, dim) array, got shape {getattr(vectors, 'shape', None)}")
    if vectors.dtype not in (np.float32, np.float16):
        raise ValueError(f"vectors: expected float32 or float16, got {vectors.dtype}")
    n = len(vectors)
    videos, times = np.asarray(videos), np.asarray(times, dtype=np.float64)
    if videos.shape != (n,) or times.shape != (n,):
        raise ValueError(f"videos and times: expected shape ({n},) like vectors, got {videos.shape} and {times.shape}")
    if not np.issubdtype(videos.dtype, np.integer):
        raise ValueError(f"videos: expected integer video codes, got {videos.dtype}")
    if not np.isfinite(times).all():
        raise ValueError("times: contains NaN or infinite values")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected an integer >= 1, got {k!r}")
    if not -1.0 <= float(min_score) <= 1.0:
        raise ValueError(f"min_score: expected a cosine in [-1, 1], got {min_score!r}")
    if gap is not None and not (math.isfinite(gap) and gap >= 0):
        raise ValueError(f"same_video_gap_s: expected seconds >= 0 or None, got {gap!r}")
    if chunk < 1:
        raise ValueError(f"chunk: expected rows >= 1, got {chunk!r}")
    for start in range(0, n, 65_536):  # chunk-wise: a float16 memmap is never copied whole
        if not np.isfinite(vectors[start:start + 65_536]).all():
            raise ValueError("vectors: contains NaN or infinite values")
    return videos.astype(np.int64, copy=False), times


def _batches(starts: np.ndarray, stops: np.ndarray,
             chunk: int) -> Iterator[tuple[int, int, tuple[int, int] | np.ndarray]]:
    """(first row, end row, video) of each query batch: a long video in pieces of at most ``chunk`` rows,
    ``video`` its (lo, hi) rows; or a run of consecutive short videos, ``video`` their boundaries."""
    v, n_videos = 0, len(starts)
    while v < n_videos:
        lo, hi = int(starts[v]), int(stops[v])
        if hi - lo > SMALL_VIDEO:
            for a in range(lo, hi, chunk):
                yield a, min(hi, a + chunk), (lo, hi)
            v += 1
            continue
        w = v
        while w + 1 < n_videos and stops[w + 1] - starts[w + 1] <= SMALL_VIDEO and stops[w + 1] - lo <= chunk:
            w += 1
        yield lo, int(stops[w]), np.concatenate([starts[v:w + 1], [stops[w]]])
        v = w + 1


class _Searcher:
    """The FAISS index over the frames in (video, time) order, searched with id-range exclusions."""

    def __init__(self, vectors: np.ndarray, order: np.ndarray, factory: str, nprobe: int | None, chunk: int) -> None:
        import faiss

        self.vectors, self.order, self.chunk = vectors, order, chunk
        n, dim = vectors.shape
        try:
            self.index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"index: invalid FAISS factory string {factory!r}: {exc}".splitlines()[0]) from None
        self.flat = isinstance(self.index, faiss.IndexFlat)
        self.rerank = 1 if self.flat else RERANK
        self.margin = None if isinstance(self.index, faiss.IndexPreTransform) else RESCORE_MARGIN
        self.ivf = faiss.try_extract_index_ivf(self.index)
        self.hnsw = self.index if isinstance(self.index, faiss.IndexHNSW) else None
        if self.ivf is not None:
            self.ivf.nprobe = min(int(nprobe or AUTO_NPROBE), self.ivf.nlist)
            self.ivf.parallel_mode = 0  # queries in parallel: a chunk holds thousands
        if not self.index.is_trained:
            size = 50 * self.ivf.nlist if self.ivf is not None else 65_536
            sample = self._rows(np.sort(self.order[even_sample(n, min(n, size))]))
            try:
                self.index.train(sample)
            except RuntimeError as exc:
                raise ValueError(f"index: {factory!r} cannot be trained on {len(sample)} frames; "
                                 "use Flat or fewer lists") from exc
            del sample
        for start in range(0, n, chunk):
            self.index.add(self.queries(np.arange(start, min(n, start + chunk))))
        self._selectors: list[object] = []  # FAISS keeps raw pointers: the Python objects must outlive a search

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        """float32 copy of the vectors at these original positions (a memmap reads just those rows)."""
        return np.ascontiguousarray(self.vectors[positions], dtype=np.float32)

    def queries(self, rows: np.ndarray) -> np.ndarray:
        """Vectors of index rows ``rows`` (positions in (video, time) order)."""
        positions = self.order[rows]
        if len(positions) and positions[-1] - positions[0] == len(positions) - 1 and (np.diff(positions) == 1).all():
            return self._rows(slice(int(positions[0]), int(positions[-1]) + 1))
        return self._rows(positions)

    def search(self, queries: np.ndarray, k: int, exclude: tuple[int, int] | None = None,
               only: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, approximate scores), best first, -1 for no result; ids are index rows."""
        import faiss

        n = int(self.index.ntotal)
        if exclude is not None and self.flat:
            # two BLAS searches of the ranges around the excluded one, merged (module docstring)
            parts = [self.search(queries, k, only=r) for r in ((0, exclude[0]), (exclude[1], n)) if r[1] > r[0]]
            if not parts:
                return np.full((len(queries), 1), -1, np.int64), np.full((len(queries), 1), -np.inf, np.float32)
            ids, scores = np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts])
            best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            return np.take_along_axis(ids, best, 1), np.take_along_axis(scores, best, 1)
        if exclude is not None:
            sel = faiss.IDSelectorNot(faiss.IDSelectorRange(*exclude))
            self._selectors = [sel, sel.sel] if hasattr(sel, "sel") else [sel]
            size = n - (exclude[1] - exclude[0])
        elif only is not None:
            sel = faiss.IDSelectorRange(*only)
            self._selectors = [sel]
            size = only[1] - only[0]
        else:
            sel, size = None, n
        k = max(1, min(k, size))
        scores, ids = self.index.search(queries, k, params=self._params(sel))
        ids[~np.isfinite(scores)] = -1
        return ids, scores

    def _params(self, sel: object) -> object:
        import faiss

        if sel is None:
            return None
        if self.ivf is not None:
            params = faiss.SearchParametersIVF(sel=sel, nprobe=self.ivf.nprobe)
        elif self.hnsw is not None:
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=self.hnsw.hnsw.efSearch)
        else:
            params = faiss.SearchParameters(sel=sel)
        if isinstance(self.index, faiss.IndexPreTransform):
            params = faiss.SearchParametersPreTransform(index_params=params)
        self._selectors.append(params)
        return params

    def keep(self, rows: np.ndarray, queries: np.ndarray, ids: np.ndarray, scores: np.ndarray, k: int,
             min_score: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best ``k`` candidates per query scoring >= min_score, exact scores (index rows, not positions)."""
        threshold = min_score if self.flat else -np.inf if self.margin is None else min_score - self.margin
        r, c = np.nonzero((ids >= 0) & (scores >= threshold))
        cand = ids[r, c]
        if self.flat:
            exact = scores[r, c].astype(np.float32)
        else:
            exact = np.empty(len(cand), np.float32)
            step = max(1, (64 << 20) // (4 * queries.shape[1]))  # rows re-read per step: 64 MB of float32
            for s in range(0, len(cand), step):
                part = np.sort(self.order[cand[s:s + step]])  # sorted positions read a memmap in file order
                vecs = self._rows(part)
                where = np.searchsorted(part, self.order[cand[s:s + step]])
                exact[s:s + step] = np.einsum("ij,ij->i", vecs[where], queries[r[s:s + step]])
        keep = exact >= min_score
        r, cand, exact = r[keep], cand[keep], exact[keep]
        order = np.lexsort((-exact, r))
        r, cand, exact = r[order], cand[order], exact[order]
        first = np.searchsorted(r, r)  # rank of each candidate inside its query's list
        top = np.arange(len(r)) - first < k
        return rows[r[top]], cand[top], exact[top]


def _unique_pairs(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], order: np.ndarray) -> FramePairs:
    """Index-row pairs of every search, as position pairs i < j, each once (best score), sorted by (i, j)."""
    if not parts:
        return FramePairs.empty()
    a = order[np.concatenate([p[0] for p in parts])]
    b = order[np.concatenate([p[1] for p in parts])]
    score = np.concatenate([p[2] for p in parts]).astype(np.float32)
    i, j = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    sort = np.lexsort((-score, j, i))
    i, j, score = i[sort], j[sort], score[sort]
    first = np.ones(len(i), bool)
    first[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return FramePairs(i[first], j[first], score[first])
