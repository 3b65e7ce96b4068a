"""``qdrant``: Qdrant's engine in-process (Qdrant Edge, ``qdrant-edge-py``), the default collection.

A folder on disk, opened in a fraction of a second whatever its size (vectors are memory-mapped,
float16), answering one query without loading the collection: exact search by default (the same
top-k as FAISS), a keyword payload index on ``video`` for filters. Edge allows one opener per folder;
framesim's lock in front of it names the holder.

HNSW is not built here: Edge's ``optimize()`` holds the GIL for minutes at 100k points, so it runs in
another process on a copy, gated by a recall check (``framesim.stores.hnsw``); a collection with a
graph answers approximately with ``hnsw_ef`` from its manifest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from framesim.stores.base import (
    PAYLOAD_FIELDS,
    LocalCollection,
    StoreError,
    as_stored,
    content_checksum,
    payload_frame,
    payload_records,
    prepare_upsert,
)

#: points per update call: bounds the Python lists built for one call
UPSERT_BATCH = 1024
SCROLL_BATCH = 8192
#: payload fields with a keyword index (the filters search offers)
INDEXED_FIELDS = ("video", "video_id")


def edge_version() -> str:
    try:
        return f"qdrant-edge-py {metadata.version('qdrant-edge-py')}"
    except metadata.PackageNotFoundError:
        return "qdrant-edge-py"


class QdrantEdgeStore(LocalCollection):
    name: ClassVar[str] = "qdrant"

    def __init__(self, folder: str | Path, dim: int, backbone: str, **kwargs: Any) -> None:
        try:
            import qdrant_edge  # noqa: F401
        except ImportError:
            raise StoreError("the qdrant store needs qdrant-edge-py: pip install qdrant-edge-py "
                             "(or use --store faiss)") from None
        self.engine = edge_version()
        self._shard: Any = None
        super().__init__(folder, dim, backbone, **kwargs)

    @property
    def shard_dir(self) -> Path:
        return self.folder / "shard"

    # -- engine hooks ----------------------------------------------------------------------------------
    def _before_open(self) -> None:
        from framesim.stores.hnsw import restore_interrupted_swap

        restore_interrupted_swap(self.folder)

    def _config(self) -> Any:
        from qdrant_edge import Distance, EdgeConfig, EdgeVectorParams, VectorStorageDatatype

        return EdgeConfig(vectors=EdgeVectorParams(size=self.dim, distance=Distance.Dot, on_disk=True,
                                                   datatype=VectorStorageDatatype.Float16))

    def _engine_open(self, fresh: bool) -> None:
        from qdrant_edge import EdgeShard, PayloadSchemaType, UpdateOperation

        try:
            if fresh or not self.shard_dir.exists():
                if not fresh:
                    raise StoreError(f"{self.folder}: damaged: the Qdrant shard folder is missing; "
                                     f"{self._rebuild_hint()}")
                self._shard = EdgeShard.create(str(self.shard_dir), self._config())
                for field in INDEXED_FIELDS:
                    self._shard.update(UpdateOperation.create_field_index(field, PayloadSchemaType.Keyword))
            else:
                self._shard = EdgeShard.load(str(self.shard_dir))
        except StoreError:
            raise
        except Exception as exc:  # the engine raises plain Exception with a Rust message
            raise StoreError(f"{self.folder}: Qdrant Edge cannot open it: {str(exc).splitlines()[0]}; "
                             f"{self._rebuild_hint()}") from None
        info = self._shard.info()
        self._hnsw_ef = self._manifest.get("hnsw", {}).get("ef") if self._manifest.get("hnsw") else None
        self._count = int(info.points_count)

    def _engine_flush(self) -> None:
        if self._shard is not None:
            self._shard.flush()

    def _engine_close(self) -> None:
        if self._shard is not None:
            self._shard.close()
            self._shard = None

    def _engine_checksum(self) -> tuple[int, int]:
        total, n = 0, 0
        for ids, vecs, _ in self._scroll(with_vector=True, with_payload=False):
            total = (total + content_checksum(ids, vecs)) % 2**64
            n += len(ids)
        return n, total

    # -- VectorStore ----------------------------------------------------------------------------------
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, payloads: pd.DataFrame) -> None:
        from qdrant_edge import Point, UpdateOperation

        ids, vectors, payloads = prepare_upsert(ids, vectors, payloads, self.dim)
        if not len(ids):
            return
        old = self._retrieve(ids, with_vector=True)
        if len(old[0]):  # replaced points leave the checksum first
            self._record(self._count, content_checksum(old[0], old[1]), sign=-1)
        records = payload_records(payloads)
        for start in range(0, len(ids), UPSERT_BATCH):
            stop = start + UPSERT_BATCH
            points = [Point(int(i), v, p) for i, v, p in zip(ids[start:stop].tolist(), vectors[start:stop],
                                                             records[start:stop], strict=True)]
            self._shard.update(UpdateOperation.upsert_points(points))
        self._count += len(ids) - len(old[0])
        self._record(self._count, content_checksum(ids, vectors))

    def delete(self, ids: Sequence[int]) -> None:
        from qdrant_edge import UpdateOperation

        found_ids, vectors, _ = self._retrieve(np.asarray(ids, np.int64), with_vector=True)
        if not len(found_ids):
            return
        self._shard.update(UpdateOperation.delete_points(found_ids.tolist()))
        self._count -= len(found_ids)
        self._record(self._count, content_checksum(found_ids, vectors), sign=-1)

    def search(self, queries: np.ndarray, k: int, videos: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_edge import Query, QueryBatchRequest, QueryRequest, SearchParams

        queries = as_stored(queries, self.dim)
        scores, ids = self._pad(len(queries), k)
        if not self._count or k < 1 or not len(queries):
            return scores, ids
        params = SearchParams(exact=True) if self._hnsw_ef is None else SearchParams(hnsw_ef=int(self._hnsw_ef))
        flt = self._video_filter(videos)
        requests = [QueryRequest(limit=k, query=Query.Nearest(q.tolist()), filter=flt, params=params,
                                 with_payload=False, with_vector=False) for q in queries]
        for row, hits in enumerate(self._shard.query_batch(QueryBatchRequest(requests))):
            for col, hit in enumerate(hits[:k]):
                scores[row, col], ids[row, col] = hit.score, hit.id
        return scores, ids

    def payloads(self, ids: Sequence[int]) -> pd.DataFrame:
        found, _, rows = self._retrieve(np.asarray(ids, np.int64), with_vector=False, with_payload=True)
        rows.index = pd.Index(found, name="id")
        return rows

    def ids_of_videos(self, videos: Sequence[str]) -> np.ndarray:
        parts = [ids for ids, _, _ in self._scroll(flt=self._video_filter(videos))]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def count(self) -> int:
        return self._count

    def ids(self) -> np.ndarray:
        parts = [ids for ids, _, _ in self._scroll()]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def scan(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
        yield from self._scroll(with_vector=True, with_payload=True, batch=batch)

    def info(self) -> dict[str, Any]:
        mode = "exact" if self._hnsw_ef is None else f"HNSW (hnsw_ef={self._hnsw_ef})"
        return {**super().info(), "search": mode, "segments": int(self._shard.info().segments_count)}

    # -- helpers --------------------------------------------------------------------------------------
    @staticmethod
    def _video_filter(videos: Sequence[str] | None) -> Any:
        if videos is None:
            return None
        from qdrant_edge import FieldCondition, Filter, MatchAny

        return Filter(must=[FieldCondition("video", match=MatchAny(list(videos)))])

    def _scroll(self, *, flt: Any = None, with_vector: bool = False, with_payload: bool = False,
                batch: int = SCROLL_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
        from qdrant_edge import ScrollRequest

        offset = None
        while True:
            records, offset = self._shard.scroll(ScrollRequest(offset=offset, limit=batch, filter=flt,
                                                               with_payload=with_payload, with_vector=with_vector))
            if records:
                yield self._unpack(records, with_vector, with_payload)
            if offset is None or not records:
                return

    def _retrieve(self, ids: np.ndarray, with_vector: bool = False, with_payload: bool = False
                  ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        if not len(ids):
            return self._unpack([], with_vector, with_payload)
        records = self._shard.retrieve(ids.tolist(), with_payload=with_payload, with_vector=with_vector)
        order = {int(i): n for n, i in enumerate(ids.tolist())}  # the order asked, not the engine's
        records = sorted(records, key=lambda r: order.get(int(r.id), 0))
        return self._unpack(records, with_vector, with_payload)

    def _unpack(self, records: list[Any], with_vector: bool, with_payload: bool
                ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
        ids = np.fromiter((int(r.id) for r in records), np.int64, count=len(records))
        vectors = (np.array([_dense(r.vector) for r in records], np.float32).reshape(len(records), self.dim)
                   if with_vector else np.zeros((len(records), 0), np.float32))
        payload = (payload_frame(pd.DataFrame([r.payload for r in records], columns=PAYLOAD_FIELDS))
                   if with_payload else pd.DataFrame(index=range(len(records))))
        return ids, vectors, payload


def _dense(vector: Any) -> Any:
    """The default (unnamed) dense vector of a record: Edge returns a list, or a dict by name."""
    return vector.get("", next(iter(vector.values()))) if isinstance(vector, dict) else vector
