"""Vector indexes behind one small interface.

``Index`` is what matching talks to; ``FaissIndex`` implements it with FAISS, chosen by a factory
string exactly as ``faiss.index_factory`` takes it (``"Flat"``, ``"HNSW32"``, ``"IVF4096,Flat"``).
Vectors are L2-normalised, so inner product = cosine similarity. Other engines (a vector database)
can implement the same four methods.
"""

from __future__ import annotations

import abc

import numpy as np

#: below this many vectors exact search is fast enough and needs no training
AUTO_FLAT_LIMIT = 1_000_000
#: vectors copied into FAISS per call: bounds the extra memory of ``add`` on big collections
ADD_CHUNK = 65_536


class Index(abc.ABC):
    """A searchable set of vectors identified by their position (0..n-1) in the order added."""

    dim: int

    @abc.abstractmethod
    def add(self, vectors: np.ndarray) -> None:
        """Append (n, dim) float32 vectors; their ids continue from ``len(self)``."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query: (scores, ids), each (n_queries, k), best first; id -1 where fewer exist."""

    @abc.abstractmethod
    def range_search(self, queries: np.ndarray, min_score: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every vector with score >= min_score, per query: a list of (scores, ids), best first."""

    @abc.abstractmethod
    def __len__(self) -> int: ...


def auto_factory(n_vectors: int) -> str:
    """The index we pick when the user does not: exact below a million vectors, HNSW above."""
    return "Flat" if n_vectors < AUTO_FLAT_LIMIT else "HNSW32"


class FaissIndex(Index):
    """FAISS index built from a factory string, inner-product metric."""

    def __init__(self, dim: int, factory: str = "Flat") -> None:
        import faiss

        self.dim = dim
        self.factory = factory
        try:
            self._index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"invalid FAISS index factory string {factory!r}: {exc}") from None

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def needs_training(self) -> bool:
        return not self._index.is_trained

    def train(self, vectors: np.ndarray) -> None:
        self._index.train(_as_f32(vectors, self.dim))

    def add(self, vectors: np.ndarray) -> None:
        vectors = _as_f32(vectors, self.dim)
        if self.needs_training:
            self.train(vectors)
        for start in range(0, len(vectors), ADD_CHUNK):
            self._index.add(np.ascontiguousarray(vectors[start:start + ADD_CHUNK]))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _as_f32(queries, self.dim)
        k = max(1, min(k, len(self))) if len(self) else 1
        if len(self) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, ids = self._index.search(queries, k)
        return scores, ids

    def range_search(self, queries: np.ndarray, min_score: float) -> list[tuple[np.ndarray, np.ndarray]]:
        queries = _as_f32(queries, self.dim)
        if len(self) == 0:
            return [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        try:
            # FAISS keeps inner-product results strictly above the radius.
            lims, scores, ids = self._index.range_search(queries, float(np.nextafter(min_score, -np.inf)))
        except RuntimeError:
            # Some index types (HNSW) have no range search: widen a top-k search until it is exhaustive.
            return self._range_by_topk(queries, min_score)
        out = []
        for q in range(len(queries)):
            s, i = scores[lims[q]:lims[q + 1]], ids[lims[q]:lims[q + 1]]
            order = np.argsort(-s, kind="stable")
            out.append((s[order], i[order]))
        return out

    def _range_by_topk(self, queries: np.ndarray, min_score: float) -> list[tuple[np.ndarray, np.ndarray]]:
        k = min(256, len(self))
        while True:
            scores, ids = self._index.search(queries, k)
            if k >= len(self) or bool((scores[:, -1] < min_score).all()):
                break
            k = min(k * 4, len(self))
        keep = (scores >= min_score) & (ids >= 0)
        return [(s[m], i[m]) for s, i, m in zip(scores, ids, keep, strict=True)]


def make_index(dim: int, factory: str | None = None, n_vectors: int = 0) -> Index:
    """Build an index; ``factory=None`` or ``"auto"`` picks by collection size."""
    if factory is None or factory == "auto":
        factory = auto_factory(n_vectors)
    return FaissIndex(dim, factory)


def _as_f32(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {x.shape}")
    return x
