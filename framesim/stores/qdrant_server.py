"""``qdrant+http://HOST:6333[/NAME]``: a collection on a Qdrant server or cluster, through ``qdrant-client``.

framesim's identity of a server collection (format version, backbone, dim) lives in the collection's
own metadata (``create_collection(metadata=...)``, Qdrant >= 1.16; qdrant-client's local mode keeps
it too) under the key ``"framesim"``: no point carries it, so it never shows in searches or counts,
and it travels with the collection through snapshots. A collection without it is refused as not
ours, one of another backbone or dim as built for another model.

Every write waits for the server (``wait=True``): once ``upsert`` or ``delete`` returns, the change is
in the server's write-ahead log, so ``flush`` has nothing to do. Upserts go ``batch`` points a request,
``parallel`` requests at a time (threads: no worker processes started per call). Searches are exact by default (the
same top-k as the local backends); ``hnsw_ef=N`` asks the server's HNSW graph instead. The API key
comes from ``$QDRANT_API_KEY`` only and appears in no message.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from framesim.stores.base import (
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    PAYLOAD_FIELDS,
    StoreError,
    VectorStore,
    as_stored,
    backbone_identity,
    payload_frame,
    payload_records,
    prepare_upsert,
)

#: the collection-metadata key holding framesim's identity
METADATA_KEY = "framesim"
INDEXED_FIELDS = ("video", "video_id")
SCROLL_BATCH = 4096
DEFAULT_TIMEOUT = 60


def default_collection_name(dataset: str | Path, backbone_spec: str) -> str:
    """``framesim-<dataset folder>-<backbone spec>``, cut to the characters Qdrant names allow."""
    raw = f"framesim-{Path(dataset).resolve().name}-{backbone_spec}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", raw).strip("-")[:255]


class QdrantServerStore(VectorStore):
    name: ClassVar[str] = "qdrant-server"

    def __init__(self, client: Any, collection: str, dim: int, backbone: str, *, create: bool = True,
                 url: str | None = None, shards: int | None = None, replicas: int | None = None,
                 on_disk: bool = False, batch: int = 256, parallel: int = 2, hnsw_ef: int | None = None,
                 owns_client: bool = True, on_note: Any = None) -> None:
        """Open (``create``: or make) ``collection`` through ``client``; ``shards``, ``replicas`` and
        ``on_disk`` apply when it is made; ``on_note`` is accepted like the local backends' (unused)."""
        from qdrant_client.local.qdrant_local import QdrantLocal

        self.client, self.collection, self.dim, self.backbone = client, collection, dim, backbone
        inner = getattr(client, "_client", None)
        self._local = isinstance(inner, QdrantLocal)  # qdrant-client's local mode: no server behind it
        self.url = _public_url(url or getattr(inner, "rest_uri", None) or getattr(inner, "location", None) or "local")
        self.location = f"{self.url}/{collection}"
        self.batch, self.parallel, self.hnsw_ef = max(1, int(batch)), max(1, int(parallel)), hnsw_ef
        self._closed, self._owns_client = False, owns_client  # owns_client=False: close() leaves it open
        self._pool: ThreadPoolExecutor | None = None
        with self._errors("cannot open the collection"):
            version = client.info().version  # first request: a down server or a bad key shows here
            self.engine = f"qdrant-client {_client_version()}" if self._local else f"qdrant server {version}"
            if not client.collection_exists(collection):
                if not create:
                    raise StoreError(f"{self.location}: no such collection on the server (run framesim index "
                                     "first, or name another one)")
                self._create(shards, replicas, on_disk)
            self._check_identity(client.get_collection(collection))

    @classmethod
    def from_spec(cls, spec: Any, *, dataset: Path, backbone: Any, create: bool = True,
                  **kwargs: Any) -> QdrantServerStore:
        """Open the server collection a StoreSpec names for ``dataset`` and a Backbone (registry entry point)."""
        try:
            from qdrant_client import QdrantClient
        except ImportError:
            raise StoreError("a Qdrant server store needs qdrant-client: pip install 'framesim[qdrant-server]'"
                             ) from None

        opts = spec.options
        try:
            typed = {k: int(opts[k]) for k in ("shards", "replicas", "batch", "parallel") if k in opts}
        except ValueError:
            raise StoreError(f"{_public_url(spec.url)}: ?shards, replicas, batch and parallel take whole numbers"
                             ) from None
        if "on_disk" in opts:
            typed["on_disk"] = opts["on_disk"].lower() in ("1", "true", "yes", "on")
        timeout = int(kwargs.pop("timeout", DEFAULT_TIMEOUT))
        # check_compatibility=False: its probe only warns; our first request says what is wrong instead
        client = QdrantClient(url=spec.url, api_key=os.environ.get("QDRANT_API_KEY") or None, timeout=timeout,
                              check_compatibility=False)
        name = spec.collection or default_collection_name(dataset, backbone.spec)
        try:
            return cls(client, name, backbone.dim, backbone_identity(backbone), create=create, url=spec.url,
                       **{**typed, **kwargs})
        except BaseException:
            client.close()
            raise

    # -- identity ---------------------------------------------------------------------------------------
    def _create(self, shards: int | None, replicas: int | None, on_disk: bool) -> None:
        from qdrant_client import models

        ident = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "backbone": self.backbone,
                 "dim": self.dim, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        vectors = models.VectorParams(size=self.dim, distance=models.Distance.DOT, on_disk=on_disk or None,
                                      datatype=models.Datatype.FLOAT16)
        try:
            self.client.create_collection(self.collection, vectors_config=vectors, shard_number=shards,
                                          replication_factor=replicas, metadata={METADATA_KEY: ident})
        except Exception:
            if not self.client.collection_exists(self.collection):
                raise
            return  # another process made it in between: its identity is checked like any other
        with warnings.catch_warnings():  # local mode warns that payload indexes do nothing there
            warnings.simplefilter("ignore", UserWarning)
            for field in INDEXED_FIELDS:
                self.client.create_payload_index(self.collection, field, models.PayloadSchemaType.KEYWORD, wait=True)
        if not (self.client.get_collection(self.collection).config.metadata or {}).get(METADATA_KEY):
            self.client.delete_collection(self.collection)  # a server that drops metadata cannot hold ours
            raise StoreError(f"{self.location}: the server keeps no collection metadata (Qdrant older than "
                             "1.16?); upgrade it")

    def _check_identity(self, info: Any) -> None:
        ident = (info.config.metadata or {}).get(METADATA_KEY)
        vectors = info.config.params.vectors
        if not isinstance(ident, dict) or ident.get("format") != MANIFEST_FORMAT:
            raise StoreError(f"{self.location}: not a framesim collection (no framesim identity in its metadata); "
                             "name another collection")
        if int(ident.get("version", 0)) > MANIFEST_VERSION:
            raise StoreError(f"{self.location}: written by a newer framesim (collection format "
                             f"{ident.get('version')}); upgrade framesim")
        if ident.get("backbone") != self.backbone or ident.get("dim") != self.dim:
            raise StoreError(f"{self.location}: built for backbone {ident.get('backbone')} (dim {ident.get('dim')}), "
                             f"not {self.backbone} (dim {self.dim}); delete the collection or name another one")
        if getattr(vectors, "size", None) != self.dim:
            raise StoreError(f"{self.location}: damaged: its vectors are not one unnamed vector of dim {self.dim}")

    # -- VectorStore --------------------------------------------------------------------------------------
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, payloads: pd.DataFrame) -> None:
        from qdrant_client import models

        # (repeated ids are resolved first: parallel batches have no order)
        ids, vectors, payloads = prepare_upsert(ids, vectors, payloads, self.dim)
        if not len(ids):
            return
        records = payload_records(payloads)
        batches = [models.Batch(ids=ids[a:a + self.batch].tolist(), vectors=vectors[a:a + self.batch].tolist(),
                                payloads=records[a:a + self.batch]) for a in range(0, len(ids), self.batch)]
        with self._errors("upsert failed"):
            if len(batches) == 1 or self._local or self.parallel == 1:
                for b in batches:
                    self._upsert_batch(b)
            else:  # threads, not upload_collection's processes: no worker start per call, plain exceptions
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.parallel, thread_name_prefix="qdrant-upsert")
                for _ in self._pool.map(self._upsert_batch, batches):
                    pass

    def _upsert_batch(self, batch: Any) -> None:
        self.client.upsert(self.collection, points=batch, wait=True)  # wait: acknowledged means in the WAL

    def delete(self, ids: Sequence[int]) -> None:
        from qdrant_client import models

        ids = np.asarray(ids, np.int64)
        if not len(ids):
            return
        with self._errors("delete failed"):
            for start in range(0, len(ids), 65_536):  # bounds one request's size
                chunk = ids[start:start + 65_536].tolist()
                self.client.delete(self.collection, points_selector=models.PointIdsList(points=chunk), wait=True)

    def search(self, queries: np.ndarray, k: int, videos: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        queries = as_stored(queries, self.dim)
        scores, ids = self._pad(len(queries), k)
        if k < 1 or not len(queries) or (videos is not None and not len(videos)):
            return scores, ids
        params = None if self._local else (models.SearchParams(exact=True) if self.hnsw_ef is None
                                           else models.SearchParams(hnsw_ef=int(self.hnsw_ef)))
        flt = _video_filter(videos)
        requests = [models.QueryRequest(query=q, limit=k, filter=flt, params=params, with_payload=False,
                                        with_vector=False) for q in queries.tolist()]
        with self._errors("search failed"):
            for start in range(0, len(requests), 256):  # one request per 256 queries
                answers = self.client.query_batch_points(self.collection, requests=requests[start:start + 256])
                for row, answer in enumerate(answers, start):
                    for col, hit in enumerate(answer.points[:k]):
                        scores[row, col], ids[row, col] = hit.score, int(hit.id)
        return scores, ids

    def payloads(self, ids: Sequence[int]) -> pd.DataFrame:
        ids = np.asarray(ids, np.int64)
        with self._errors("reading payloads failed"):
            records = self.client.retrieve(self.collection, ids=ids.tolist(), with_payload=True,
                                           with_vectors=False) if len(ids) else []
        by_id = {int(r.id): r.payload for r in records}
        found = [int(i) for i in ids.tolist() if int(i) in by_id]  # the order asked, not the server's
        rows = payload_frame(pd.DataFrame([by_id[i] for i in found], columns=PAYLOAD_FIELDS))
        rows.index = pd.Index(found, dtype="int64", name="id")
        return rows

    def ids_of_videos(self, videos: Sequence[str]) -> np.ndarray:
        if not len(videos):
            return np.zeros(0, np.int64)
        parts = [ids for ids, _, _ in self._scroll(flt=_video_filter(videos))]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def count(self) -> int:
        with self._errors("count failed"):
            return int(self.client.count(self.collection, exact=True).count)

    def ids(self) -> np.ndarray:
        parts = [ids for ids, _, _ in self._scroll(batch=65_536)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def scan(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
        yield from self._scroll(with_vectors=True, with_payload=True, batch=batch)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown()
            if self._owns_client:
                with contextlib.suppress(Exception):  # closing a client to a dead server must not fail
                    self.client.close()

    def info(self) -> dict[str, Any]:
        with self._errors("reading collection info failed"):
            params = self.client.get_collection(self.collection).config.params
        mode = "exact" if self.hnsw_ef is None else f"HNSW (hnsw_ef={self.hnsw_ef})"
        return {"backend": self.name, "location": self.location, "count": self.count(), "dim": self.dim,
                "backbone": self.backbone, "engine": self.engine, "search": mode,
                "shards": params.shard_number or 1, "replicas": params.replication_factor or 1}

    # -- helpers ------------------------------------------------------------------------------------------
    def _scroll(self, *, flt: Any = None, with_vectors: bool = False, with_payload: bool = False,
                batch: int = SCROLL_BATCH) -> Iterator[tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
        offset = None
        while True:
            with self._errors("reading points failed"):
                records, offset = self.client.scroll(self.collection, scroll_filter=flt, limit=batch, offset=offset,
                                                     with_payload=with_payload, with_vectors=with_vectors)
            if records:
                ids = np.fromiter((int(r.id) for r in records), np.int64, count=len(records))
                vectors = (np.array([r.vector for r in records], np.float32).reshape(len(records), self.dim)
                           if with_vectors else np.zeros((len(records), 0), np.float32))
                payload = (payload_frame(pd.DataFrame([r.payload for r in records], columns=PAYLOAD_FIELDS))
                           if with_payload else pd.DataFrame(index=range(len(records))))
                yield ids, vectors, payload
            if offset is None or not records:
                return

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Connection and HTTP errors as one-line StoreErrors naming the server and the reason."""
        from httpx import HTTPError
        from qdrant_client.common.client_exceptions import QdrantException
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            yield
        except StoreError:
            raise
        except UnexpectedResponse as exc:
            raise StoreError(f"{self.location}: {doing}: {_http_reason(exc)}") from None
        except ResponseHandlingException as exc:
            raise StoreError(f"{self.url}: cannot reach the Qdrant server ({_first_line(exc.source)}); is it running "
                             "and is the URL right?") from None
        except (HTTPError, QdrantException, OSError) as exc:
            raise StoreError(f"{self.location}: {doing}: {_first_line(exc)}") from None


def _video_filter(videos: Sequence[str] | None) -> Any:
    if videos is None:
        return None
    from qdrant_client import models

    return models.Filter(must=[models.FieldCondition(key="video", match=models.MatchAny(any=list(videos)))])


def _http_reason(exc: Any) -> str:
    if exc.status_code in (401, 403):
        return (f"the server refused the request (HTTP {exc.status_code} {exc.reason_phrase}): "
                "set QDRANT_API_KEY to a key for it")
    try:
        detail = exc.structured()["status"]["error"]
    except Exception:
        detail = exc.content[:200].decode("utf-8", "replace")
    return f"HTTP {exc.status_code} {exc.reason_phrase}: {_first_line(detail)}"


def _first_line(obj: object) -> str:
    text = str(obj).strip()
    return text.splitlines()[0] if text else type(obj).__name__


def _public_url(url: str) -> str:
    """``url`` without user:password@ (a URL is printed in messages and info)."""
    return re.sub(r"//[^/@]*@", "//", url).rstrip("/")


def _client_version() -> str:
    try:
        return metadata.version("qdrant-client")
    except metadata.PackageNotFoundError:
        return "?"
