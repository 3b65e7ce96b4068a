"""Persistent collections of frame vectors: the ``VectorStore`` interface and its backends.

A store is named like a FAISS factory string names an index:

====================================  ==================================================================
``qdrant`` (default)                  Qdrant Edge, embedded: ``<dataset>/collections/<backbone>/qdrant``
``faiss``                             FAISS in-process, persisted: ``<dataset>/collections/<backbone>/faiss``
``qdrant:PATH`` / ``faiss:PATH``      the same in the folder PATH
``qdrant+http://HOST:6333[/NAME]``    a Qdrant server or cluster (``https`` too); ``?shards=N&replicas=R``
``qdrant-server[/NAME]``              the server named by ``$QDRANT_URL``
====================================  ==================================================================

A server's API key comes from ``$QDRANT_API_KEY`` (never the command line, which others can read).
Backends register with ``register_store``; ``open_store`` opens one for a dataset and backbone.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framesim.stores.base import (
    PAYLOAD_FIELDS,
    StoreError,
    StoreLockedError,
    VectorStore,
    point_id,
    point_ids,
)

__all__ = ["DEFAULT_STORE", "PAYLOAD_FIELDS", "StoreError", "StoreLockedError", "StoreSpec", "VectorStore",
           "collection_folder", "open_store", "parse_store", "point_id", "point_ids", "register_store",
           "list_stores"]

DEFAULT_STORE = "qdrant"

#: name -> "module:Class", imported on first use (an unused backend costs nothing)
_REGISTRY: dict[str, str | Callable[..., VectorStore]] = {
    "qdrant": "framesim.stores.qdrant_edge:QdrantEdgeStore",
    "faiss": "framesim.stores.faiss_store:FaissStore",
    "qdrant-server": "framesim.stores.qdrant_server:QdrantServerStore",
}


def register_store(name: str, factory: str | Callable[..., VectorStore]) -> None:
    """Add a backend: ``factory(spec: StoreSpec, *, dataset, backbone, collection, dim, create)``
    returns an open VectorStore, or is a ``"module:Class"`` string whose class has ``from_spec``."""
    _REGISTRY[name] = factory


def list_stores() -> list[str]:
    return sorted(_REGISTRY)


@dataclass(frozen=True)
class StoreSpec:
    """A parsed ``--store`` value."""

    backend: str
    path: str | None = None  # local backends: an explicit folder
    url: str | None = None  # server: http(s)://host:port
    collection: str | None = None  # server: the collection name
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.url:
            return f"qdrant+{self.url}/{self.collection or ''}".rstrip("/")
        return f"{self.backend}:{self.path}" if self.path else self.backend


def parse_store(spec: str | None) -> StoreSpec:
    """``--store`` as a StoreSpec (None: the default); ValueError saying what is accepted."""
    spec = (spec or DEFAULT_STORE).strip()
    if spec.startswith(("qdrant+http://", "qdrant+https://")) or spec.startswith("qdrant-server"):
        if spec.startswith("qdrant-server"):
            rest = spec[len("qdrant-server"):]
            base = os.environ.get("QDRANT_URL", "")
            if not base:
                raise ValueError(f"--store {spec}: set QDRANT_URL to the server's address (http://host:6333)")
            if rest and not rest.startswith("/"):
                raise ValueError(f"--store {spec}: write qdrant-server or qdrant-server/COLLECTION")
            spec = f"qdrant+{base.rstrip('/')}{rest}"
        m = re.fullmatch(r"qdrant\+(https?://[^/?#]+)(?:/([^/?#]*))?/?(?:\?(.*))?", spec)
        if not m:
            raise ValueError(f"--store {spec}: expected qdrant+http://HOST:PORT[/COLLECTION][?shards=N&replicas=R]")
        options = dict(kv.partition("=")[::2] for kv in (m.group(3) or "").split("&") if kv)
        unknown = set(options) - {"shards", "replicas", "on_disk", "batch", "parallel"}
        if unknown:
            raise ValueError(f"--store {spec}: unknown option {sorted(unknown)[0]!r} "
                             "(shards, replicas, on_disk, batch, parallel)")
        if m.group(2) and not re.fullmatch(r"[A-Za-z0-9_.-]{1,255}", m.group(2)):
            raise ValueError(f"--store {spec}: collection names use letters, digits, '_', '-' and '.'")
        return StoreSpec("qdrant-server", url=m.group(1), collection=m.group(2) or None, options=options)
    backend, sep, path = spec.partition(":")
    if backend not in _REGISTRY or backend == "qdrant-server" or (sep and not path):
        local = ", ".join(n for n in list_stores() if n != "qdrant-server")
        raise ValueError(f"--store {spec}: expected one of {local} (optionally :FOLDER), "
                         "qdrant+http://HOST:PORT[/COLLECTION] or qdrant-server")
    return StoreSpec(backend, path=path or None)


def collection_folder(dataset: str | Path, backbone: Any, backend: str) -> Path:
    """Where a dataset keeps a local collection for ``backbone``: laid out like its embedding cache
    (one folder per spec and weights), then one folder per backend."""
    from framesim.embeddings import cache_dir

    return cache_dir(Path(dataset) / "collections", backbone) / backend


def open_store(spec: str | StoreSpec | None, *, dataset: str | Path, backbone: Any, create: bool = True,
               **kwargs: Any) -> VectorStore:
    """Open (``create``: or make) the collection ``spec`` names for ``dataset`` and ``backbone`` (a
    Backbone: its spec, weights and dim pick the folder and are checked against the manifest)."""
    parsed = spec if isinstance(spec, StoreSpec) else parse_store(spec)
    factory = _REGISTRY[parsed.backend]
    if isinstance(factory, str):
        module, _, cls_name = factory.partition(":")
        factory = getattr(importlib.import_module(module), cls_name).from_spec
    return factory(parsed, dataset=Path(dataset), backbone=backbone, create=create, **kwargs)
