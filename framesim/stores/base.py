"""The ``VectorStore`` interface that every collection backend implements, and what they share.

A collection holds one vector per frame for one backbone spec: a point keyed by a stable integer id
derived from the frame id (``point_id``), with the frame's ``PAYLOAD_FIELDS`` as payload. Vectors are
L2-normalised and stored as float16 values (the embedding cache's precision, so no backend loses
anything and every backend returns the same scores); similarity is the inner product.

Local backends (FAISS, Qdrant Edge) keep framesim's own manifest beside the engine's files
(``collection.json``: backbone, dim, engine version, point count and a content checksum, plus a
fingerprint of the engine's files taken when it was last closed) and refuse to open a collection that
disagrees with it: a collection of another backbone, one whose files were changed behind our back and
no longer match the checksum, or one another process holds.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from framesim._io import write_json

#: what every point carries besides its vector (the manifest's columns a search result needs)
PAYLOAD_FIELDS: list[str] = ["frame_id", "video", "video_id", "frame_index", "timestamp_s", "sha256", "path"]
_INT_FIELDS = ("frame_index",)
_FLOAT_FIELDS = ("timestamp_s",)

MANIFEST_NAME = "collection.json"
MANIFEST_FORMAT = "framesim-collection"
MANIFEST_VERSION = 1

# Weights of the order-independent content checksum: odd 64-bit numbers derived from sha256, fixed
# forever (a collection written by one version is checked by the next), so that changing any bit of
# one vector changes the sum.
_CHECK_WEIGHTS = np.array([int.from_bytes(hashlib.sha256(b"framesim-%d" % j).digest()[:8], "big") | 1
                           for j in range(4096)], np.uint64)
_ID_WEIGHT = np.uint64(0x9E3779B97F4A7C15)


class StoreError(ValueError):
    """A collection that cannot be used as it is: the message is one line, naming it and what to do."""


class StoreLockedError(StoreError):
    """Another process has the collection open (Qdrant Edge and our FAISS store allow one opener)."""


def point_id(frame_id: str) -> int:
    """The point id of a frame: 63 bits of sha256(frame_id), the same on every machine and run (63 bits
    so it fits FAISS's int64 ids; at a million frames a collision has odds of about 1 in 10^7, and
    ``point_ids`` refuses one)."""
    return int.from_bytes(hashlib.sha256(frame_id.encode()).digest()[:8], "big") >> 1


def point_ids(frame_ids: Sequence[str]) -> np.ndarray:
    """int64 point ids of ``frame_ids``; ValueError if two different frame ids share one."""
    ids = np.fromiter((point_id(f) for f in frame_ids), np.int64, count=len(frame_ids))
    uniq, first = np.unique(ids, return_index=True)
    if len(uniq) != len(ids):
        frames = pd.Series(list(frame_ids))
        dup = pd.Series(ids).duplicated(keep=False)
        clash = frames[dup].unique()
        if len(clash) > 1:
            raise ValueError(f"frame ids {clash[0]!r} and {clash[1]!r} hash to the same point id")
    return ids


def as_stored(vectors: np.ndarray, dim: int) -> np.ndarray:
    """(n, dim) float32 holding float16 values: what every backend stores and searches."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return np.ascontiguousarray(vectors.astype(np.float16).astype(np.float32))


def prepare_upsert(ids: np.ndarray, vectors: np.ndarray, payloads: pd.DataFrame, dim: int
                   ) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """What every backend's ``upsert`` starts with: int64 ids, stored vectors, payload rows aligned with
    them; an id given twice keeps its last occurrence (Qdrant's rule, made explicit for all)."""
    ids = np.asarray(ids, np.int64)
    vectors = as_stored(vectors, dim)
    payloads = payloads.reset_index(drop=True)
    if len(ids) != len(vectors) or len(ids) != len(payloads):
        raise ValueError(f"upsert of {len(ids)} ids with {len(vectors)} vectors and {len(payloads)} payload rows")
    _, last = np.unique(ids[::-1], return_index=True)
    if len(last) != len(ids):
        keep = np.sort(len(ids) - 1 - last)
        ids, vectors, payloads = ids[keep], vectors[keep], payloads.iloc[keep].reset_index(drop=True)
    return ids, vectors, payloads


def content_checksum(ids: np.ndarray, vectors: np.ndarray) -> int:
    """Order-independent checksum of (id, vector) points, additive mod 2**64 (so adding and removing
    points updates it without rereading the collection)."""
    if not len(ids):
        return 0
    bits = np.ascontiguousarray(vectors, np.float32).view(np.uint32).astype(np.uint64)
    weights = _CHECK_WEIGHTS[np.arange(bits.shape[1]) % len(_CHECK_WEIGHTS)]
    with np.errstate(over="ignore"):
        id_bits = np.asarray(ids, np.int64).view(np.uint64)
        per_point = (bits * weights).sum(axis=1, dtype=np.uint64) + id_bits * _ID_WEIGHT
        return int(per_point.sum(dtype=np.uint64))


def add_checksums(a: int, b: int, sign: int = 1) -> int:
    return (a + sign * b) % 2**64


def payload_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The ``PAYLOAD_FIELDS`` columns of manifest rows, typed (missing optional columns become "")."""
    out = pd.DataFrame(index=rows.index)
    for f in PAYLOAD_FIELDS:
        missing = 0 if f in _INT_FIELDS else np.nan if f in _FLOAT_FIELDS else ""
        col = rows[f] if f in rows else pd.Series(missing, index=rows.index)
        out[f] = col.astype("int64" if f in _INT_FIELDS else "float64" if f in _FLOAT_FIELDS else str)
    return out


def payload_records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Payload dicts with plain Python values (what engines serialise)."""
    frame = payload_frame(rows).astype(object)
    return frame.where(frame.notna(), None).to_dict("records")  # NaN is no JSON number: null


class VectorStore(abc.ABC):
    """A persistent collection of frame vectors for one backbone.

    The same method names on every backend (the imagededup rule): ``upsert``, ``search``,
    ``payloads``, ``delete``, ``delete_videos``, ``count``, ``ids``, ``scan``, ``flush``, ``close``,
    ``info``. Scores are inner products of L2-normalised vectors (cosine), best first.
    """

    #: registry name (``faiss``, ``qdrant``, ``qdrant-server``)
    name: ClassVar[str]
    dim: int
    #: where it lives, for messages ("dataset/collections/...", "http://host:6333/coll")
    location: str

    @abc.abstractmethod
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, payloads: pd.DataFrame) -> None:
        """Insert or replace points: int64 ``ids``, (n, dim) vectors, payload rows (``PAYLOAD_FIELDS``)."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int, videos: Sequence[str] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k per query, optionally among frames of ``videos`` only: (scores, ids), each
        (n_queries, k) best first, padded with score -inf and id -1 where fewer exist. Queries are
        rounded to float16 like the stored vectors (Qdrant does so itself), so every backend agrees."""

    @abc.abstractmethod
    def payloads(self, ids: Sequence[int]) -> pd.DataFrame:
        """Payload rows of ``ids`` (index: id), in the order given; ids not stored are left out."""

    @abc.abstractmethod
    def delete(self, ids: Sequence[int]) -> None:
        """Remove points (ids not stored are ignored)."""

    @abc.abstractmethod
    def ids_of_videos(self, videos: Sequence[str]) -> np.ndarray:
        """Ids of every point whose payload ``video`` is one of ``videos``."""

    @abc.abstractmethod
    def count(self) -> int: ...

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """Every stored id (int64, any order)."""

    @abc.abstractmethod
    def scan(self, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray, pd.DataFrame]]:
        """Every point, ``batch`` at a time: (ids, vectors, payload rows)."""

    def flush(self) -> None:  # noqa: B027 (a no-op where every call is durable)
        """Make every acknowledged change durable."""

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """What it is: backend, location, count, dim, engine and version, search mode."""

    def delete_videos(self, videos: Sequence[str]) -> int:
        """Remove every frame of ``videos``; returns how many points went."""
        ids = self.ids_of_videos(videos)
        if len(ids):
            self.delete(ids)
        return len(ids)

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _pad(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        return np.full((n_queries, k), -np.inf, np.float32), np.full((n_queries, k), -1, np.int64)


class LocalCollection(VectorStore):
    """A backend whose files live in one folder on this machine, under framesim's manifest and lock.

    Subclasses implement the engine calls and three hooks: ``_engine_open``, ``_engine_close`` and
    ``_engine_checksum`` (count and content checksum recomputed from the engine's own data, the slow
    check run only when the files changed since a clean close).
    """

    engine: ClassVar[str]  # "faiss 1.9.0"

    def __init__(self, folder: str | Path, dim: int, backbone: str, *, create: bool = True,
                 on_note: Any = None) -> None:
        self.folder = Path(folder)
        self.location = str(self.folder)
        self.dim = dim
        self.backbone = backbone
        self._note = on_note or (lambda msg: print(f"note: {msg}", file=sys.stderr))
        self._lock_fd: int | None = None
        self._closed = False
        if not create and self._read_manifest() is None:  # (before the lock, which makes the folder)
            raise StoreError(f"{self.folder}: no collection here (run framesim index first)")
        self._take_lock()
        try:
            self._before_open()
            manifest = self._read_manifest()
            self._manifest = manifest or self._new_manifest()
            self._check_identity(self._manifest)
            dirty = self._manifest.get("state") != "closed"
            changed = self._manifest.get("files") != self._fingerprint()
            self._engine_open(fresh=manifest is None)
            if manifest is not None and (dirty or changed):
                self._reconcile(dirty)
            self._manifest["state"] = "open"
            self._manifest["owner"] = _owner()
            self._write_manifest()
        except BaseException:
            self._release_lock()
            raise

    @classmethod
    def from_spec(cls, spec: Any, *, dataset: Path, backbone: Any, create: bool = True,
                  **kwargs: Any) -> LocalCollection:
        """Open the collection a StoreSpec names for ``dataset`` and a Backbone (registry entry point)."""
        from framesim.stores import collection_folder

        folder = Path(spec.path) if spec.path else collection_folder(dataset, backbone, cls.name)
        return cls(folder, backbone.dim, backbone_identity(backbone), create=create, **kwargs)

    # -- manifest ------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST_NAME

    def _new_manifest(self) -> dict[str, Any]:
        if self.folder.exists() and any(p.name not in (".lock",) for p in self.folder.iterdir()):
            raise StoreError(f"{self.folder}: holds files but no {MANIFEST_NAME}: not a framesim collection "
                             "(move it away or pick another --store)")
        return {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "backend": self.name,
                "engine": self.engine, "backbone": self.backbone, "dim": self.dim, "count": 0, "checksum": "0",
                "state": "new", "files": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def _read_manifest(self) -> dict[str, Any] | None:
        try:
            text = self.manifest_path.read_bytes()  # bytes: json.loads decodes, so non-UTF-8 is a ValueError there
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{self.manifest_path}: cannot read: {exc.strerror}") from None
        try:
            found = json.loads(text)
            if not isinstance(found, dict) or found.get("format") != MANIFEST_FORMAT:
                raise ValueError
        except ValueError:
            raise StoreError(f"{self.manifest_path}: damaged collection manifest; {self._rebuild_hint()}") from None
        return found

    def _check_identity(self, m: dict[str, Any]) -> None:
        if m.get("version", 0) > MANIFEST_VERSION:
            raise StoreError(f"{self.folder}: written by a newer framesim (collection format {m.get('version')}); "
                             "upgrade framesim")
        if m.get("backend") != self.name:
            raise StoreError(f"{self.folder}: a {m.get('backend')} collection, not {self.name}")
        if m.get("backbone") != self.backbone or m.get("dim") != self.dim:
            raise StoreError(f"{self.folder}: built for backbone {m.get('backbone')} (dim {m.get('dim')}), "
                             f"not {self.backbone} (dim {self.dim}); {self._rebuild_hint()}")
        self._check_engine(str(m.get("engine", "")))

    def _check_engine(self, written_by: str) -> None:
        """Refuse files written by a newer engine than this one (an older engine may not read them)."""
        have, found = _version_tuple(self.engine), _version_tuple(written_by)
        if found > have:
            raise StoreError(f"{self.folder}: written by {written_by}, newer than the installed {self.engine}: "
                             "upgrade it (pip install -U) or rebuild the collection")

    def _rebuild_hint(self) -> str:
        return f"remove {self.folder} and run framesim index again to rebuild it"

    def _write_manifest(self) -> None:
        write_json(self.manifest_path, self._manifest)

    def _before_open(self) -> None:
        """Hook run under the lock before anything is read (Qdrant Edge finishes an interrupted swap)."""

    def _fingerprint(self) -> dict[str, list[int]]:
        return self.fingerprint_of(self.folder)

    @staticmethod
    def fingerprint_of(folder: Path) -> dict[str, list[int]]:
        """(size, mtime) of every engine file: equal to the one taken at the last clean close means
        nobody touched the files, so the content checksum need not be recomputed on open."""
        out: dict[str, list[int]] = {}
        for root, _dirs, files in os.walk(folder):
            for name in files:
                p = Path(root) / name
                rel = p.relative_to(folder).as_posix()
                if rel in (MANIFEST_NAME, ".lock") or name.startswith(f".{MANIFEST_NAME}"):
                    continue
                st = p.stat()
                out[rel] = [st.st_size, st.st_mtime_ns]
        return dict(sorted(out.items()))

    def _reconcile(self, dirty: bool) -> None:
        count, checksum = self._engine_checksum()
        if dirty:
            # Not closed cleanly (killed): the engine kept what it acknowledged, which may be more than
            # the manifest had recorded. Take the engine's content as the truth.
            if count != self._manifest.get("count"):
                self._note(f"{self.folder}: recovered after an unclean shutdown: {count} points "
                           f"(the manifest recorded {self._manifest.get('count')})")
        elif count != self._manifest.get("count") or str(checksum) != self._manifest.get("checksum"):
            self._engine_close()
            raise StoreError(f"{self.folder}: damaged: its files changed since it was closed and now hold "
                             f"{count} points (checksum {checksum:016x}) instead of {self._manifest.get('count')} "
                             f"({int(self._manifest.get('checksum', 0)):016x}); {self._rebuild_hint()}")
        self._manifest["count"], self._manifest["checksum"] = count, str(checksum)

    def _record(self, count: int, checksum_delta: int, sign: int = 1) -> None:
        self._manifest["count"] = count
        self._manifest["checksum"] = str(add_checksums(int(self._manifest["checksum"]), checksum_delta, sign))

    # -- lock -----------------------------------------------------------------------------------
    def _take_lock(self) -> None:
        self._lock_fd = lock_folder(self.folder)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            unlock_folder(self._lock_fd)
            self._lock_fd = None

    # -- life cycle -------------------------------------------------------------------------------
    def flush(self) -> None:
        self._engine_flush()
        self._write_manifest()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._engine_flush()
            self._engine_close()
            self._manifest["state"] = "closed"
            self._manifest["owner"] = None
            self._manifest["files"] = self._fingerprint()
            self._write_manifest()
        finally:
            self._release_lock()

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "location": self.location, "count": self.count(), "dim": self.dim,
                "backbone": self.backbone, "engine": self.engine, "checksum": f"{int(self._manifest['checksum']):016x}"}

    @abc.abstractmethod
    def _engine_open(self, fresh: bool) -> None: ...

    @abc.abstractmethod
    def _engine_flush(self) -> None: ...

    @abc.abstractmethod
    def _engine_close(self) -> None: ...

    @abc.abstractmethod
    def _engine_checksum(self) -> tuple[int, int]: ...


def lock_folder(folder: Path) -> int:
    """Take a collection folder's lock (``flock`` on ``<folder>/.lock``, dropped by the kernel when the
    holder dies); StoreLockedError naming the holder (from the manifest) when another process has it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        try:
            holder = json.loads((folder / MANIFEST_NAME).read_text()).get("owner") or {}
        except (OSError, ValueError, AttributeError):
            holder = {}
        who = (f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('command')}, since "
               f"{holder.get('since')})") if holder else "another process"
        raise StoreLockedError(f"{folder}: in use by {who}; one process opens a collection at a time: "
                               "stop it, or send queries to it (framesim serve)") from None
    return fd


def unlock_folder(fd: int) -> None:
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def backbone_identity(backbone: Any) -> str:
    """What a collection's vectors depend on: the backbone spec and its weights ("efficientnet-lite0
    [imagenet]"), so a collection is never searched with another model's queries."""
    from framesim.embeddings import weights_tag

    return f"{backbone.spec} [{weights_tag(backbone)}]"


def _owner() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv[:2])[:80],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _version_tuple(engine: str) -> tuple[int, ...]:
    """(1, 9, 0) from "faiss 1.9.0"; () when there is no version."""
    version = engine.rpartition(" ")[2]
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)
