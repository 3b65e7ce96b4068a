"""Leader batching of concurrent searches over one real store: same answers, fewer store calls."""

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from framesim.server.batching import QueryBatcher
from framesim.stores.base import point_ids
from framesim.stores.faiss_store import FaissStore


@pytest.fixture
def store(tmp_path: Path) -> FaissStore:
    x = np.random.default_rng(0).standard_normal((500, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    frames = [f"v{i % 3}/{i}" for i in range(500)]
    s = FaissStore(tmp_path / "c", 32, "test")
    s.upsert(point_ids(frames), x, pd.DataFrame({"frame_id": frames, "video": [f"v{i % 3}" for i in range(500)]}))
    return s


def test_concurrent_searches_get_their_own_answers_in_fewer_calls(store: FaissStore) -> None:
    real_search = store.search

    def slow_search(*args: object, **kwargs: object) -> tuple[np.ndarray, np.ndarray]:
        time.sleep(0.05)  # a store call that takes long enough for others to queue behind it
        return real_search(*args, **kwargs)

    store.search = slow_search  # type: ignore[method-assign]
    batcher = QueryBatcher(store, threading.Lock())
    queries = np.random.default_rng(1).standard_normal((12, 32)).astype(np.float32)
    asks = [(q, 3 + i % 4, None if i % 3 else ["v1"]) for i, q in enumerate(queries)]
    got: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def ask(i: int) -> None:
        q, k, videos = asks[i]
        got[i] = batcher.search(q, k, videos)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, (q, k, videos) in enumerate(asks):
        scores, ids = real_search(q[None], k, videos=videos)
        assert got[i][1].tolist() == ids[0].tolist() and np.allclose(got[i][0], scores[0])
    assert batcher.queries == len(asks) and batcher.calls < len(asks)  # filters batch only with their own kind


def test_an_error_reaches_every_query_of_its_batch(store: FaissStore) -> None:
    batcher = QueryBatcher(store, threading.Lock())
    with pytest.raises(ValueError):
        batcher.search(np.zeros(7, np.float32), 3)  # wrong dimension: the store's own error
    scores, ids = batcher.search(np.ones(32, np.float32), 2)  # and the batcher still works
    assert len(ids) == 2 and (ids >= 0).all()
