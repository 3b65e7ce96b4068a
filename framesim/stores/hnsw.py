"""Opt-in HNSW graph for a Qdrant Edge collection, built aside and kept only if it finds what exact search finds.

Exact search over a million 1280-d vectors costs about half a second a query; an HNSW graph answers in
milliseconds but approximately, and Edge builds it in ``optimize()``, which holds the GIL for minutes
at 100k points. So the build never runs in the process that answers queries, nor on the folder it
reads:

1. under the collection's lock, its shard is copied to ``.<name>.hnsw-build`` (searches resume after);
2. a child process (``python -m framesim.stores.hnsw``) builds the graph in the copy;
3. recall@k of the graph against exact search is measured on ``sample`` of the collection's own
   frames as queries: below ``min_recall`` the copy is thrown away and the collection stays exact;
4. otherwise, under the lock again and only if the collection did not change meanwhile, the copy
   replaces the shard and the manifest records the graph and the ``hnsw_ef`` searches use.

A crash in step 4 between its two renames leaves ``.shard-old``, which the next open puts back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from framesim._io import write_json
from framesim.stores.base import MANIFEST_NAME, StoreError, lock_folder, unlock_folder

DEFAULT_M = 16
DEFAULT_EF_CONSTRUCT = 128
DEFAULT_EF = 128
DEFAULT_MIN_RECALL = 0.95
#: segments smaller than this many KB of vectors are scanned, not walked (Qdrant's default: as fast)
DEFAULT_FULL_SCAN_KB = 10_000
OLD_SHARD = ".shard-old"
#: how long the install waits for another process to close the collection
INSTALL_WAIT_S = 30.0


def build_hnsw(folder: str | Path, *, m: int = DEFAULT_M, ef_construct: int = DEFAULT_EF_CONSTRUCT,
               ef: int = DEFAULT_EF, min_recall: float = DEFAULT_MIN_RECALL, sample: int = 200, k: int = 10,
               full_scan_kb: int = DEFAULT_FULL_SCAN_KB, log: Any = None) -> dict[str, Any]:
    """Build, check and (if good enough) install an HNSW graph in the Qdrant Edge collection ``folder``.

    Returns what happened: ``installed``, ``recall``, ``seconds`` and the parameters."""
    folder = Path(folder)
    say = log or (lambda msg: print(msg, file=sys.stderr))
    build = folder.parent / f".{folder.name}.hnsw-build"
    started = time.perf_counter()
    manifest = _copy_aside(folder, build)
    say(f"copied {manifest['count']} points to {build}; building the graph (m={m}, ef_construct={ef_construct}) "
        "in a child process")
    proc = subprocess.run([sys.executable, "-m", "framesim.stores.hnsw", str(build / "shard"), str(manifest["dim"]),
                           str(m), str(ef_construct), str(full_scan_kb)], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(build, ignore_errors=True)
        detail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        raise StoreError(f"{folder}: building the HNSW graph failed: {detail}")
    built_s = time.perf_counter() - started
    recall = measure_recall(build / "shard", ef=ef, sample=sample, k=k)
    report = {"m": m, "ef_construct": ef_construct, "ef": ef, "recall": round(recall, 4), "recall_at": k,
              "sample": sample, "build_seconds": round(built_s, 1), "min_recall": min_recall, "installed": False}
    if recall < min_recall:
        shutil.rmtree(build, ignore_errors=True)
        say(f"recall@{k} {recall:.3f} < {min_recall}: graph discarded, the collection stays exact "
            "(try a larger --m / --ef-construct / --ef)")
    else:
        _install(folder, build, manifest, report)
        report["installed"] = True
        say(f"recall@{k} {recall:.3f} >= {min_recall}: graph installed; searches use hnsw_ef={ef}")
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _read_manifest(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{folder}: no readable collection manifest ({exc})") from None


def _copy_aside(folder: Path, build: Path) -> dict[str, Any]:
    from framesim.stores.base import LocalCollection
    from framesim.stores.qdrant_edge import QdrantEdgeStore

    fd = lock_folder(folder)
    try:
        manifest = _read_manifest(folder)
        if manifest.get("backend") != QdrantEdgeStore.name:
            raise StoreError(f"{folder}: HNSW graphs are for qdrant (Qdrant Edge) collections, not "
                             f"{manifest.get('backend')}")
        if manifest.get("state") != "closed" or manifest.get("files") != LocalCollection.fingerprint_of(folder):
            # (a graph built on damaged files, then fingerprinted anew, would launder the damage)
            raise StoreError(f"{folder}: not closed cleanly or changed since; open it once (framesim store info "
                             "checks it) and retry")
        shutil.rmtree(build, ignore_errors=True)
        shutil.copytree(folder / "shard", build / "shard")  # copy2 keeps mtimes: the fingerprint holds
    finally:
        unlock_folder(fd)
    return manifest


def _install(folder: Path, build: Path, manifest: dict[str, Any], report: dict[str, Any]) -> None:
    from framesim.stores.base import LocalCollection, StoreLockedError

    deadline = time.monotonic() + INSTALL_WAIT_S
    while True:  # a search holding the collection for a moment: wait for it
        try:
            fd = lock_folder(folder)
            break
        except StoreLockedError as exc:
            if time.monotonic() > deadline:
                shutil.rmtree(build, ignore_errors=True)
                raise StoreError(f"{exc} (the HNSW graph was built but cannot be installed while it is open)") from None
            time.sleep(0.2)
    try:
        now = _read_manifest(folder)
        if (now.get("count"), now.get("checksum"), now.get("state")) != (
                manifest.get("count"), manifest.get("checksum"), "closed"):
            shutil.rmtree(build, ignore_errors=True)
            raise StoreError(f"{folder}: changed while the graph was built (framesim index ran?); run again")
        (folder / "shard").rename(folder / OLD_SHARD)
        (build / "shard").rename(folder / "shard")
        now["hnsw"] = {key: report[key] for key in ("m", "ef_construct", "ef", "recall", "recall_at")}
        now["files"] = LocalCollection.fingerprint_of(folder)
        write_json(folder / MANIFEST_NAME, now)
        shutil.rmtree(folder / OLD_SHARD, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)
    finally:
        unlock_folder(fd)


def restore_interrupted_swap(folder: Path) -> None:
    """Undo an install killed between its renames (called by the store on open, under the lock)."""
    old = folder / OLD_SHARD
    if old.exists():
        if not (folder / "shard").exists():
            old.rename(folder / "shard")
        else:
            shutil.rmtree(old, ignore_errors=True)


def measure_recall(shard_dir: Path, *, ef: int, sample: int, k: int, seed: int = 0) -> float:
    """Mean recall@k of HNSW (``hnsw_ef=ef``) against exact search, the queries being ``sample`` of the
    shard's own vectors (the user's frames, not random ones: the graph is judged on the data it serves)."""
    from qdrant_edge import EdgeShard, Query, QueryBatchRequest, QueryRequest, ScrollRequest, SearchParams

    shard = EdgeShard.load(str(shard_dir))
    try:
        ids: list[int] = []
        offset = None
        while True:
            records, offset = shard.scroll(ScrollRequest(offset=offset, limit=8192, with_payload=False,
                                                         with_vector=False))
            ids.extend(int(r.id) for r in records)
            if offset is None or not records:
                break
        if not ids:
            return 1.0
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(ids), size=min(sample, len(ids)), replace=False)
        records = shard.retrieve([ids[i] for i in chosen], with_payload=False, with_vector=True)
        vectors = [r.vector.get("", next(iter(r.vector.values()))) if isinstance(r.vector, dict) else r.vector
                   for r in records]

        def top(params: Any) -> list[set[int]]:
            requests = [QueryRequest(limit=k, query=Query.Nearest(list(v)), params=params) for v in vectors]
            return [{int(p.id) for p in hits} for hits in shard.query_batch(QueryBatchRequest(requests))]

        exact, approx = top(SearchParams(exact=True)), top(SearchParams(hnsw_ef=ef))
        return float(np.mean([len(a & e) / max(len(e), 1) for a, e in zip(approx, exact, strict=True)]))
    finally:
        shard.close()


def _build_in_this_process(shard_dir: str, dim: int, m: int, ef_construct: int, full_scan_kb: int) -> None:
    from qdrant_edge import (
        Distance,
        EdgeConfig,
        EdgeOptimizersConfig,
        EdgeShard,
        EdgeVectorParams,
        HnswIndexConfig,
        VectorStorageDatatype,
    )

    config = EdgeConfig(
        vectors=EdgeVectorParams(size=dim, distance=Distance.Dot, on_disk=True, datatype=VectorStorageDatatype.Float16),
        hnsw_config=HnswIndexConfig(m=m, ef_construct=ef_construct, full_scan_threshold=full_scan_kb),
        # index every segment, however small (the default waits for 10k+ KB of vectors)
        optimizers=EdgeOptimizersConfig(indexing_threshold=1))
    shard = EdgeShard.load(shard_dir, config)
    shard.optimize()
    shard.flush()
    shard.close()


if __name__ == "__main__":
    _build_in_this_process(sys.argv[1], *map(int, sys.argv[2:6]))
