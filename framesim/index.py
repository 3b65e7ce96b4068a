"""Vector indexes behind one small interface.

``Index`` is what matching talks to; ``FaissIndex`` implements it with FAISS, chosen by a factory
string exactly as ``faiss.index_factory`` takes it (``"Flat"``, ``"HNSW32"``, ``"IVF4096,Flat"``),
optionally followed by ``|`` and search parameters as ``faiss.ParameterSpace`` takes them
(``"IVF4096,Flat|nprobe=32"``, ``"HNSW32|efSearch=128"``). Vectors are L2-normalised, so inner
product = cosine similarity. Other engines (a vector database) can implement the same four methods.
"""

from __future__ import annotations

import abc
import math

import numpy as np

from framesim.descriptors import even_sample

#: below this many vectors exact search is used. For a batch of 1000 queries it is also the fastest at
#: 1M x 1280 (``python -m bench index``: Flat 57 CPU-s build + search, exact, 5.7 GB peak; IVF1024,SQ8 at
#: nprobe=128 107 CPU-s, recall@10 0.95, 2.2 GB; HNSW32 ~500 CPU-s to build): above it we switch for
#: memory, the float32 copy costing 5 GB per million 1280-d vectors.
AUTO_FLAT_LIMIT = 1_000_000
#: share of the IVF lists the automatic choice searches (nprobe = nlist / 8)
AUTO_PROBE_SHARE = 8
#: vectors copied into FAISS per call: bounds the extra memory of ``add`` on big collections
ADD_CHUNK = 65_536
#: what ``FaissIndex`` ranks by: cosine (inner product of normalised vectors) or Euclidean distance
METRICS = ("cosine", "l2")
#: training vectors for indexes other than IVF (PQ codebooks)
TRAIN_DEFAULT = 65_536


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
    """The index we pick when the user does not: exact below ``AUTO_FLAT_LIMIT`` vectors, above it an
    IVF with ~sqrt(n) lists of 8-bit scalar-quantised vectors, a quarter of Flat's memory."""
    if n_vectors < AUTO_FLAT_LIMIT:
        return "Flat"
    nlist = ivf_lists(n_vectors)
    return f"IVF{nlist},SQ8|nprobe={nlist // AUTO_PROBE_SHARE}"


def ivf_lists(n_vectors: int) -> int:
    """IVF lists for ``n_vectors``: the power of two nearest sqrt(n), at least 64. FAISS suggests 4-16 sqrt(n),
    but training that many lists (k-means over 50 vectors per list) takes tens of CPU-minutes at 1M."""
    return max(64, 2 ** round(math.log2(math.sqrt(max(n_vectors, 1)))))


class FaissIndex(Index):
    """FAISS index built from a factory string (``"IVF1024,Flat|nprobe=32"``).

    ``metric``: ``"cosine"`` (inner product of the L2-normalised vectors; higher is closer) or ``"l2"``
    (FAISS' squared Euclidean distance; smaller is closer, ``search`` returns it ascending).
    ``expected`` vectors, when known, get their storage allocated up front (``reserve``).
    """

    def __init__(self, dim: int, factory: str = "Flat", expected: int = 0, metric: str = "cosine") -> None:
        import faiss

        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
        self.dim = dim
        self.factory = factory
        self.metric = metric
        build, _, params = factory.partition("|")
        if "idmap" in build.lower():  # ids are positions here; an IDMap index wants ids with every add
            raise ValueError(f"invalid FAISS index factory string {build!r}: IDMap is not needed (framesim "
                             "numbers the vectors itself); leave it out")
        try:
            self._index = faiss.index_factory(dim, build, faiss.METRIC_L2 if metric == "l2" else
                                              faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ValueError(f"invalid FAISS index factory string {build!r}: {exc}") from None
        if params:
            self.set_search_params(params)
        if expected:
            self.reserve(expected)

    def set_search_params(self, params: str) -> None:
        """Search parameters as ``faiss.ParameterSpace`` takes them: ``"nprobe=32"``, ``"efSearch=128"``."""
        import faiss

        try:
            faiss.ParameterSpace().set_index_parameters(self._index, params)
        except RuntimeError as exc:
            raise ValueError(f"invalid FAISS search parameters {params!r} for {self.factory!r}: {exc}") from None

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def needs_training(self) -> bool:
        return not self._index.is_trained

    @property
    def training_size(self) -> int:
        """Vectors ``train`` should get: 50 per IVF list (FAISS warns below 39 and subsamples above 256)."""
        import faiss

        if not self.needs_training:
            return 0
        ivf = faiss.try_extract_index_ivf(self._index)
        return 50 * int(ivf.nlist) if ivf is not None else TRAIN_DEFAULT

    def train(self, vectors: np.ndarray) -> None:
        """Train on a sample spread over the whole collection (its first videos alone would bias the lists).

        ValueError when there are too few vectors for the factory string (k-means needs at least one
        per IVF list; a product quantiser one per code).
        """
        vectors = _as_f32(vectors, self.dim)
        try:
            self._index.train(vectors)
        except RuntimeError as exc:  # FAISS says why in a C++ message several lines long
            detail = next((line.strip() for line in str(exc).splitlines() if "should be at least" in line), "")
            raise ValueError(f"index {self.factory!r} cannot be trained on {len(vectors)} vectors"
                             f"{f' ({detail})' if detail else ''}: use Flat or fewer lists") from exc

    def reserve(self, n: int) -> None:
        """Allocate room for ``n`` more vectors in flat storage (Flat, HNSW, scalar quantisers).

        Grown as vectors arrive, the storage doubles its capacity and copies itself, briefly needing
        up to twice the index's size (issue #5: "1M x 2048 needed 16 GB during add").
        """
        import faiss

        storage = faiss.downcast_index(self._index.storage) if hasattr(self._index, "storage") else self._index
        if not isinstance(storage, faiss.IndexFlatCodes):
            return  # IVF lists grow one list at a time: no collection-sized copy
        used = int(storage.ntotal) * storage.code_size
        if storage.codes.size() < used + n * storage.code_size:
            # std::vector keeps its capacity when shrunk back: later adds fill it without reallocating.
            storage.codes.resize(used + n * storage.code_size)
            storage.codes.resize(used)

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors, copied into FAISS ``ADD_CHUNK`` rows at a time. An untrained index is first
        trained on an even sample of these vectors; for a big collection call ``train`` first."""
        vectors = _as_f32(vectors, self.dim)
        if self.needs_training:
            self.train(vectors[even_sample(len(vectors), self.training_size)])
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
        if self.metric != "cosine":
            raise ValueError("a range search needs the cosine metric (with l2 give a top k)")
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


def make_index(dim: int, factory: str | None = None, n_vectors: int = 0, metric: str = "cosine") -> Index:
    """An index for ``n_vectors`` (0: unknown); ``factory=None`` or ``"auto"`` picks by collection size."""
    if factory is None or factory == "auto":
        factory = auto_factory(n_vectors)
    return FaissIndex(dim, factory, expected=n_vectors, metric=metric)


def _as_f32(x: np.ndarray, dim: int) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {x.shape}")
    return x
