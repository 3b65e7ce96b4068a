"""``faiss``: an exact in-process collection persisted as FAISS index + payload files.

The whole index is in memory while open (5 GB per million 1280-d vectors), which makes it the
fastest for batch work (all-pairs, many examples: one BLAS matrix product) and the reference for
exact results; opening reads it all (seconds per million). Qdrant Edge (``qdrant``) answers single
queries without that load.

Files (one generation at a time; a flush writes the next, then the manifest naming it, then
deletes the old one, so a crash at any point leaves the previous or the new generation whole)::

    collection.json          framesim's manifest (see ``stores.base``), names the generation
    index-<gen>.faiss        IndexIDMap2(IndexFlatIP): the vectors and their point ids
    points-<gen>.parquet     the payload of every point (id + PAYLOAD_FIELDS)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from framesim._io import atomic_path, sha256_file, write_table
from framesim.stores.base import (
    LocalCollection,
    StoreError,
    as_stored,
    content_checksum,
    payload_frame,
    prepare_upsert,
)


def _faiss_version() -> str:
    import faiss

    return f"faiss {faiss.__version__}"


class FaissStore(LocalCollection):
    name: ClassVar[str] = "faiss"

    def __init__(self, folder: str | Path, dim: int, backbone: str, **kwargs: Any) -> None:
        self.engine = _faiss_version()
        self._dirty = False
        super().__init__(folder, dim, backbone, **kwargs)

    # -- engine hooks -------------------------------------------------------------------------------
    def _files(self, gen: int) -> tuple[Path, Path]:
        return self.folder / f"index-{gen:06d}.faiss", self.folder / f"points-{gen:06d}.parquet"

    def _engine_open(self, fresh: bool) -> None:
        import faiss

        gen = int(self._manifest.get("generation", 0))
        self._payload = pd.DataFrame({f: pd.Series(dtype=object) for f in payload_frame(pd.DataFrame()).columns})
        self._payload.index = pd.Index([], dtype="int64", name="id")
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        self._pending: list[pd.DataFrame] = []
        self._ids: set[int] = set()  # membership tests per upsert; np.isin over 1M ids costs 1 s a batch
        if gen == 0:
            return
        index_path, points_path = self._files(gen)
        if self._manifest.get("files") != self._fingerprint():  # touched since closed: check the bytes
            sums = self._manifest.get("sha256", {})
            for f in (index_path, points_path):
                if not f.exists() or sha256_file(f) != sums.get(f.name):
                    raise StoreError(f"{self.folder}: damaged: {f.name} is missing or does not match its "
                                     f"checksum; {self._rebuild_hint()}")
        try:
            self._index = faiss.read_index(str(index_path))
            self._payload = pd.read_parquet(points_path).set_index("id")
        except (RuntimeError, OSError, ValueError) as exc:
            raise StoreError(f"{self.folder}: damaged: cannot read {index_path.name}: {str(exc).splitlines()[0]}; "
                             f"{self._rebuild_hint()}") from None
        if self._index.d != self.dim or self._index.ntotal != len(self._payload):
            raise StoreError(f"{self.folder}: damaged: {self._index.ntotal} vectors of dim {self._index.d} but "
                             f"{len(self._payload)} payload rows; {self._rebuild_hint()}")
        self._ids = set(self._payload.index.tolist())

    def _engine_flush(self) -> None:
        import faiss

        if not self._dirty:
            return
        old = int(self._manifest.get("generation", 0))
        gen = old + 1
        index_path, points_path = self._files(gen)
        with atomic_path(index_path) as tmp:
            faiss.write_index(self._index, str(tmp))
        write_table(self._rows().reset_index(), parquet=points_path)
        self._manifest["generation"] = gen
        self._manifest["sha256"] = {f.name: sha256_file(f) for f in (index_path, points_path)}
        self._write_manifest()  # the commit point: from here on the new generation is the collection
        if old:
            for f in self._files(old):
                f.unlink(missing_ok=True)
        self._dirty = False

    def _engine_close(self) -> None:
        pass

    def _engine_checksum(self) -> tuple[int, int]:
        total = 0
        for ids, vecs, _ in self.scan(65_536):
            total = (total + content_checksum(ids, vecs)) % 2**64
        return self.count(), total

    # -- VectorStore ---------------------------------------------------------------------------------
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, payloads: pd.DataFrame) -> None:
        ids, vectors, payloads = prepare_upsert(ids, vectors, payloads, self.dim)
        if not len(ids):
            return
        present = [i for i in ids.tolist() if i in self._ids]
        if present:
            self.delete(present)
        self._index.add_with_ids(vectors, ids)
        rows = payload_frame(payloads)
        rows.index = pd.Index(ids, name="id")
        self._pending.append(rows)  # concatenated when next read: one copy per batch would be quadratic
        self._ids.update(ids.tolist())
        self._record(self.count(), content_checksum(ids, vectors))
        self._dirty = True

    def delete(self, ids: Sequence[int]) -> None:
        import faiss

        ids = np.array([i for i in np.asarray(ids, np.int64).tolist() if i in self._ids], np.int64)
        if not len(ids):
            return
        vectors = np.vstack([self._index.reconstruct(int(i)) for i in ids])
        self._index.remove_ids(faiss.IDSelectorBatch(ids))
        self._payload = self._rows().drop(index=ids)
        self._ids.difference_update(ids.tolist())
        self._record(self.count(), content_checksum(ids, vectors), sign=-1)
        self._dirty = True

    def search(self, queries: np.ndarray, k: int, videos: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        queries = as_stored(queries, self.dim)
        scores, ids = self._pad(len(queries), k)
        if not self.count() or k < 1:
            return scores, ids
        params = None
        if videos is not None:
            allowed = self.ids_of_videos(videos)
            if not len(allowed):
                return scores, ids
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        kk = min(k, self.count())
        with _threads_for(len(queries)):
            s, i = self._index.search(queries, kk, params=params)
        found = i >= 0
        scores[:, :kk] = np.where(found, s, -np.inf)
        ids[:, :kk] = i
        return scores, ids

    def payloads(self, ids: Sequence[int]) -> pd.DataFrame:
        ids = np.array([i for i in np.asarray(ids, np.int64).tolist() if i in self._ids], np.int64)
        return self._rows().loc[ids]

    def ids_of_videos(self, videos: Sequence[str]) -> np.ndarray:
        rows = self._rows()
        return rows.index[rows["video"].isin(list(videos))].to_numpy(np.int64)

    def _rows(self) -> pd.DataFrame:
        """The payload table, with the rows of recent upserts appended."""
        if self._pending:
            self._payload = pd.concat([self._payload, *self._pending]) if len(self._payload) else (
                pd.concat(self._pending))
            self._pending = []
        return self._payload

    def count(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def scan(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
        all_ids = self.ids()
        flat = self._index.index
        for start in range(0, len(all_ids), batch):
            ids = all_ids[start:start + batch]
            vectors = flat.reconstruct_n(start, len(ids))
            yield ids, vectors, self._rows().loc[ids].reset_index(drop=True)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "search": "exact (IndexFlatIP)"}


#: below this many queries FAISS searches on one thread: splitting one query's scan over OpenMP threads
#: cost more than it saved (20k x 1280: 40 ms a query on 2 threads, 11.5 ms on 1)
SINGLE_THREAD_BELOW = 8


@contextlib.contextmanager
def _threads_for(n_queries: int) -> Iterator[None]:
    import faiss

    if n_queries >= SINGLE_THREAD_BELOW:
        yield
        return
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
