import numpy as np
import pytest

from framesim.index import FaissIndex, auto_factory, make_index


def unit(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_flat_search_is_exact_cosine() -> None:
    db, q = unit(500, 32), unit(7, 32, seed=1)
    idx = make_index(32, "Flat")
    idx.add(db[:200])
    idx.add(db[200:])  # ids continue across adds
    scores, ids = idx.search(q, 5)
    brute = q @ db.T
    expected = np.argsort(-brute, axis=1)[:, :5]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected, 1), rtol=1e-5)


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_range_search_returns_every_pair_above_threshold(factory: str) -> None:
    db, q = unit(300, 16), unit(5, 16, seed=2)
    idx = make_index(16, factory)
    idx.add(db)
    brute = q @ db.T
    for qi, (scores, ids) in enumerate(idx.range_search(q, 0.4)):
        assert set(ids.tolist()) == set(np.flatnonzero(brute[qi] >= 0.4).tolist())
        assert np.all(np.diff(scores) <= 1e-6), "best first"


def test_ivf_trains_itself_and_finds_exact_copies() -> None:
    db = unit(2000, 32)
    idx = make_index(32, "IVF16,Flat")
    idx.add(db)
    _, ids = idx.search(db[:20], 1)
    assert (ids[:, 0] == np.arange(20)).all()


def test_bad_factory_and_shape_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="factory string"):
        FaissIndex(8, "NoSuchIndex")
    idx = make_index(8, "Flat")
    with pytest.raises(ValueError, match=r"\(n, 8\)"):
        idx.add(np.zeros((3, 9), np.float32))


def test_empty_index_and_auto_choice() -> None:
    idx = make_index(8)
    scores, ids = idx.search(unit(2, 8), 3)
    assert scores.shape == (2, 0) and ids.shape == (2, 0)
    assert auto_factory(10) == "Flat" and auto_factory(5_000_000).startswith("HNSW")
