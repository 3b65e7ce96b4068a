"""Batched embedding with an on-disk cache keyed by (backbone spec + weights, pixel hash).

Layout of one cache (one per complete backbone spec and weights) under
``<dataset>/embeddings/<backbone>/<descriptor>/<weights-tag>/`` (``efficientnet-lite0/gem/imagenet``;
backbones without descriptor options: ``<backbone>/<weights-tag>``), so vectors of different poolings
never mix::

    header.json                 format, version, backbone, weights, dim, dtype
    shard-000001.keys.npy       (n,) bytes: the keys (pixel sha256s)
    shard-000001.vecs.npy       (n, dim) float16 vectors (L2-normalised before the cast)
    shard-000001.json           count and sha256 of both files: written last, so it marks the shard complete

A run appends a shard every ``flush_every`` new vectors or ``flush_seconds``, so an interrupted run loses at most one
shard of work and the next run embeds only what is missing. A shard whose sidecar is missing or whose
checksum does not match (truncated, edited, other dim) is ignored and deleted, never silently used.
"""

from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from framesim._io import sha256_file, write_json, write_npy
from framesim.backbones.base import Backbone

FORMAT = "framesim-embeddings"
VERSION = 1
STORE_DTYPE = np.float16  # halves disk and memory; cosine scores change by < 1e-3
#: a shard is written every this many new vectors ... (read when a cache is made: tests lower them)
FLUSH_EVERY = 1024
#: ... or this many seconds, whichever comes first
FLUSH_SECONDS = 30.0


def weights_tag(backbone: Backbone) -> str:
    """A folder name that changes whenever the weights do (so caches never mix models)."""
    weights = backbone.weights or "unknown"
    path = Path(weights)
    # Names ("imagenet", "random (weights=None)", "none ...") are tags; only an existing file is hashed
    # (by where it is and which version of it), so the tag never depends on the current directory.
    if weights in ("imagenet",) or weights.startswith("random") or not path.is_file():
        return re.sub(r"[^a-z0-9]+", "-", weights.lower()).strip("-")[:60] or "unknown"
    stat = path.stat()
    ident = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return f"file-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


def _safe_component(text: str) -> str:
    """A portable folder name for ``text``: kept as is when safe, else sanitised plus a short hash of
    the original (so two specs can never share a folder)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip(". ")
    if safe == text and safe:
        return safe
    return f"{safe or 'x'}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def cache_dir(root: str | Path, backbone: Backbone) -> Path:
    """Where ``backbone``'s vectors live: one folder per complete spec and weights."""
    base, _, descriptor = backbone.spec.partition(":")
    parts = [_safe_component(base)] + ([_safe_component(descriptor)] if descriptor else [])
    return Path(root).joinpath(*parts, weights_tag(backbone))


def _shard_number(name: str) -> int | None:
    """The number in ``shard-<n>.json`` / ``shard-<n>.keys.npy`` / ``.vecs.npy``; None for any other name."""
    m = re.fullmatch(r"shard-(\d{1,9})\.(json|keys\.npy|vecs\.npy)", name)
    return int(m.group(1)) if m else None


class EmbeddingCache:
    """Append-only store of vectors by key for one backbone spec and weights."""

    def __init__(self, root: str | Path, backbone: Backbone, flush_every: int | None = None,
                 flush_seconds: float | None = None) -> None:
        self.backbone = backbone
        self.dim = backbone.dim
        self.dir = cache_dir(root, backbone)
        self.flush_every = FLUSH_EVERY if flush_every is None else flush_every
        # Slow backbones (VGG16: a few images/s) would otherwise risk minutes of work per interrupt.
        self.flush_seconds = FLUSH_SECONDS if flush_seconds is None else flush_seconds
        self._last_flush = time.monotonic()
        self._pending_keys: list[str] = []
        self._pending_vecs: list[np.ndarray] = []
        self._where: dict[str, tuple[int, int]] = {}  # key -> (shard number, row)
        self._shards: dict[int, np.ndarray] = {}  # shard number -> memory-mapped vectors
        self._open()

    # -- loading ---------------------------------------------------------------------------------
    def _header(self) -> dict[str, object]:
        return {"format": FORMAT, "version": VERSION, "backbone": self.backbone.spec,
                "weights": self.backbone.weights, "dim": self.dim, "dtype": np.dtype(STORE_DTYPE).name}

    def _open(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        header_path = self.dir / "header.json"
        header = self._header()
        try:
            found = json.loads(header_path.read_text())
        except (OSError, ValueError):
            found = None
        if found != header:
            if found is not None or header_path.exists():  # (a damaged header.json reads as None)
                print(f"warning: {self.dir}: embedding cache is unreadable or from another format/backbone/dim; "
                      "rebuilding", file=sys.stderr)
            for stale in self.dir.glob("shard-*"):
                stale.unlink()
            write_json(header_path, header)
        for sidecar in sorted(self.dir.glob("shard-*.json")):
            number = _shard_number(sidecar.name)
            if number is None or not self._load_shard(number, sidecar):
                print(f"warning: {sidecar.with_suffix('')}: damaged embedding shard ignored and removed",
                      file=sys.stderr)
                for f in self._shard_files(number) if number is not None else (sidecar,):
                    f.unlink(missing_ok=True)
        # Shards whose sidecar never got written are leftovers of an interrupted run.
        for f in self.dir.glob("shard-*.npy"):
            if _shard_number(f.name) not in self._shards:
                f.unlink(missing_ok=True)
        # So are temp files of atomic writes killed mid-way (like the orphans above, removed on the
        # assumption, true under match's dataset lock, that no other process writes this cache now).
        for f in [*self.dir.glob(".shard-*.tmp"), *self.dir.glob(".header.json.*.tmp")]:
            f.unlink(missing_ok=True)

    def _shard_files(self, number: int) -> tuple[Path, Path, Path]:
        stem = self.dir / f"shard-{number:06d}"
        return Path(f"{stem}.keys.npy"), Path(f"{stem}.vecs.npy"), Path(f"{stem}.json")

    def _load_shard(self, number: int, sidecar: Path) -> bool:
        keys_path, vecs_path, _ = self._shard_files(number)
        try:
            meta = json.loads(sidecar.read_text())
            if (meta.get("dim") != self.dim or sha256_file(keys_path) != meta["keys_sha256"]
                    or sha256_file(vecs_path) != meta["vecs_sha256"]):
                return False
            keys = np.load(keys_path, allow_pickle=False)
            vecs = np.load(vecs_path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # (a sidecar that is not an object)
            return False
        if vecs.shape != (len(keys), self.dim) or len(keys) != meta.get("count"):
            return False
        self._shards[number] = vecs
        for row, key in enumerate(keys):
            self._where[key.decode()] = (number, row)
        return True

    # -- queries -----------------------------------------------------------------------------------
    def __contains__(self, key: str) -> bool:
        return key in self._where

    def __len__(self) -> int:
        return len(self._where)

    def missing(self, keys: Sequence[str]) -> list[str]:
        """Keys without a stored vector, de-duplicated, in first-seen order."""
        return list(dict.fromkeys(k for k in keys if k not in self._where))

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 vectors for keys that are all stored (flushes pending vectors first)."""
        self.flush()
        out = np.empty((len(keys), self.dim), np.float32)
        if not len(keys):
            return out
        where = np.array([self._where[key] for key in keys], np.int64).reshape(-1, 2)
        # One fancy-index gather per shard instead of a Python loop over rows.
        for shard in np.unique(where[:, 0]):
            mine = np.flatnonzero(where[:, 0] == shard)
            out[mine] = self._shards[int(shard)][where[mine, 1]]
        return out

    def iter_chunks(self, keys: Sequence[str], chunk: int = 65_536) -> Iterator[np.ndarray]:
        """The vectors of ``keys`` in order, ``chunk`` rows at a time (bounded memory)."""
        for start in range(0, len(keys), chunk):
            yield self.get(keys[start:start + chunk])

    # -- writing ----------------------------------------------------------------------------------
    def put(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        if vectors.shape != (len(keys), self.dim):
            raise ValueError(f"expected ({len(keys)}, {self.dim}) vectors, got {vectors.shape}")
        self._pending_keys.extend(keys)
        self._pending_vecs.append(np.asarray(vectors, STORE_DTYPE))
        if (len(self._pending_keys) >= self.flush_every
                or time.monotonic() - self._last_flush >= self.flush_seconds):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending_keys:
            return
        number = self.next_shard_number()
        write_shard(self.dir, number, self._pending_keys, np.concatenate(self._pending_vecs), self.dim)
        self._shards[number] = np.load(self._shard_files(number)[1], mmap_mode="r", allow_pickle=False)
        for row, key in enumerate(self._pending_keys):
            self._where[key] = (number, row)
        self._pending_keys, self._pending_vecs = [], []

    def next_shard_number(self) -> int:
        return max(self._shards, default=0) + 1

    def refresh(self) -> None:
        """Take in the shards other processes wrote here since (``embed_job``: tasks on a cluster)."""
        self.flush()
        for sidecar in sorted(self.dir.glob("shard-*.json")):
            number = _shard_number(sidecar.name)
            if number is not None and number not in self._shards and not self._load_shard(number, sidecar):
                print(f"warning: {sidecar.with_suffix('')}: damaged embedding shard ignored", file=sys.stderr)
        for f in self.dir.glob(".shard-*.tmp"):  # left by attempts killed mid-write
            f.unlink(missing_ok=True)


def write_shard(folder: Path, number: int, keys: Sequence[str], vectors: np.ndarray, dim: int) -> None:
    """Write shard ``number`` (keys, float16 vectors, then the sidecar that makes it count) atomically;
    one written again with the same content replaces the first, never adds to it."""
    stem = folder / f"shard-{number:06d}"
    keys_path, vecs_path, sidecar = Path(f"{stem}.keys.npy"), Path(f"{stem}.vecs.npy"), Path(f"{stem}.json")
    key_array = np.array([k.encode() for k in keys])  # S<longest>: never truncates
    try:
        write_npy(keys_path, key_array)
        write_npy(vecs_path, np.asarray(vectors, STORE_DTYPE))
        write_json(sidecar, {"count": len(key_array), "dim": dim, "keys_sha256": sha256_file(keys_path),
                             "vecs_sha256": sha256_file(vecs_path)})
    except BaseException:
        # A full disk or Ctrl-C mid-shard: leave no half shard behind (the sidecar, written last,
        # is what makes a shard count, so removing it first keeps a crash here harmless too).
        for f in (sidecar, keys_path, vecs_path):
            f.unlink(missing_ok=True)
        raise


@dataclass
class EmbedStats:
    """What one ``embed_missing`` call did, for the run summary and report."""

    requested: int = 0
    cached: int = 0
    embedded: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)  # one-line messages

    @property
    def images_per_s(self) -> float | None:
        return self.embedded / self.seconds if self.embedded and self.seconds > 0 else None


def embed_missing(
    backbone: Backbone,
    cache: EmbeddingCache,
    keys: Sequence[str],
    load: Callable[[str], np.ndarray],
    *,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "embed",
    workers: int = 2,
) -> EmbedStats:
    """Embed every key not yet in ``cache``; ``load(key)`` returns its RGB uint8 image.

    Images are loaded and resized in worker threads (OpenCV releases the GIL) a few batches ahead
    of the model. A key whose image cannot be loaded is reported in ``failures`` and skipped.
    """
    from tqdm import tqdm

    stats = EmbedStats(requested=len(set(keys)))
    todo = cache.missing(keys)
    stats.cached = stats.requested - len(todo)
    if not todo:
        return stats

    def load_resized(key: str) -> np.ndarray | str:
        try:
            return backbone.resize(load(key))
        except (OSError, ValueError) as exc:
            return str(exc)

    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    started = time.perf_counter()
    bar = tqdm(total=len(todo), desc=f"{desc} [{backbone.name}]", unit="img", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending: collections.deque[tuple[list[str], list[concurrent.futures.Future[np.ndarray | str]]]]
        pending = collections.deque()
        queued = iter(batches)
        for batch_keys in queued:  # prime a bounded look-ahead (bounded memory)
            pending.append((batch_keys, [pool.submit(load_resized, k) for k in batch_keys]))
            if len(pending) == 3:
                break
        while pending:
            batch_keys, futures = pending.popleft()
            nxt = next(queued, None)
            if nxt is not None:
                pending.append((nxt, [pool.submit(load_resized, k) for k in nxt]))
            images, good = [], []
            for key, fut in zip(batch_keys, futures, strict=True):
                result = fut.result()
                if isinstance(result, str):
                    stats.failures.append(result)
                else:
                    images.append(result)
                    good.append(key)
            if images:
                cache.put(good, backbone.embed(np.stack(images)))
                stats.embedded += len(good)
            bar.update(len(batch_keys))
    cache.flush()
    bar.close()
    stats.seconds = time.perf_counter() - started
    return stats
