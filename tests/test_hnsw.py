"""The opt-in HNSW graph of a Qdrant Edge collection: built aside, gated by recall, never blocking searches."""

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from framesim.stores.base import StoreError, point_ids
from framesim.stores.hnsw import OLD_SHARD, build_hnsw
from framesim.stores.qdrant_edge import QdrantEdgeStore

DIM = 64


def vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_collection(folder: Path, n: int) -> tuple[np.ndarray, np.ndarray]:
    x = vectors(n)
    frame_ids = [f"v{i % 4}/{i:06d}" for i in range(n)]
    ids = point_ids(frame_ids)
    with QdrantEdgeStore(folder, DIM, "test") as store:
        store.upsert(ids, x, pd.DataFrame({"frame_id": frame_ids, "video": [f"v{i % 4}" for i in range(n)]}))
    return ids, x


def exact_top(ids: np.ndarray, x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    x16, q16 = x.astype(np.float16).astype(np.float32), queries.astype(np.float16).astype(np.float32)
    return ids[np.argsort(-(q16 @ x16.T), axis=1)[:, :k]]


def test_a_poor_graph_is_discarded_and_a_good_one_installed(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    ids, x = make_collection(folder, 4000)
    # random 64-d vectors are hard for a tiny graph: recall far below the bar, nothing changes
    report = build_hnsw(folder, m=4, ef_construct=8, ef=8, min_recall=0.99, full_scan_kb=1, log=lambda _: None)
    assert not report["installed"] and report["recall"] < 0.9
    assert "hnsw" not in json.loads((folder / "collection.json").read_text())
    assert not (tmp_path / ".c.hnsw-build").exists()
    with QdrantEdgeStore(folder, DIM, "test") as store:
        assert store.info()["search"] == "exact"

    report = build_hnsw(folder, m=16, ef_construct=64, ef=64, min_recall=0.9, full_scan_kb=1, log=lambda _: None)
    assert report["installed"] and report["recall"] >= 0.9
    queries = vectors(50, seed=1)
    with QdrantEdgeStore(folder, DIM, "test") as store:
        assert store.info()["search"] == "HNSW (hnsw_ef=64)" and store.count() == 4000
        _, found = store.search(queries, 10)
        truth = exact_top(ids, x, queries, 10)
        assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]) >= 0.85
        # points added after the build are searched too (in the unindexed segment)
        more = vectors(10, seed=2)
        new_ids = point_ids([f"new/{i}" for i in range(10)])
        store.upsert(new_ids, more, pd.DataFrame({"frame_id": [f"new/{i}" for i in range(10)], "video": "new"}))
        assert store.search(more, 1)[1][:, 0].tolist() == new_ids.tolist()
        checksum = store.info()["checksum"]
    with QdrantEdgeStore(folder, DIM, "test") as store:  # reopened: the graph and the points are kept
        assert store.count() == 4010 and store.info()["checksum"] == checksum


def test_a_swap_killed_between_its_renames_is_undone_on_open(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    make_collection(folder, 500)
    with QdrantEdgeStore(folder, DIM, "test") as store:
        checksum = store.info()["checksum"]
    (folder / "shard").rename(folder / OLD_SHARD)  # the state right after the install's first rename
    with QdrantEdgeStore(folder, DIM, "test") as store:
        assert store.count() == 500 and store.info()["checksum"] == checksum
    assert not (folder / OLD_SHARD).exists()


@pytest.mark.slow
def test_searches_go_on_while_the_graph_is_built(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    ids, x = make_collection(folder, 20000)
    result: dict[str, object] = {}
    builder = threading.Thread(target=lambda: result.update(build_hnsw(
        folder, m=32, ef_construct=256, ef=64, min_recall=0.0, full_scan_kb=1, log=lambda _: None)))
    builder.start()
    deadline = time.monotonic() + 60
    while not (tmp_path / ".c.hnsw-build" / "shard").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.5)  # the copy is done and the child process is building
    t0 = time.perf_counter()
    with QdrantEdgeStore(folder, DIM, "test") as store:
        _, found = store.search(x[:5], 1)
    answered = time.perf_counter() - t0
    still_building = builder.is_alive()
    builder.join(timeout=300)
    assert found[:, 0].tolist() == ids[:5].tolist()
    assert still_building, "the build finished before the search: the test proves nothing (make it bigger)"
    assert answered < 2.0, f"a search during the build took {answered:.1f} s"
    assert result["installed"]


def test_a_collection_changed_since_closed_gets_no_graph(tmp_path: Path) -> None:
    # building on damaged files and fingerprinting the result anew would hide the damage
    folder = tmp_path / "c"
    make_collection(folder, 500)
    victim = max((folder / "shard" / "segments").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    with open(victim, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff" * 16)
    with pytest.raises(StoreError, match="changed since"):
        build_hnsw(folder, log=lambda _: None)
    with pytest.raises(StoreError, match="damaged"):
        QdrantEdgeStore(folder, DIM, "test")
