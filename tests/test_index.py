import numpy as np
import pytest

from framesim.index import AUTO_FLAT_LIMIT, FaissIndex, auto_factory, make_index


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


@pytest.mark.parametrize("factory", ["IVF16,Flat", "IVF16,SQ8|nprobe=4"])  # the second: the auto choice's kind
def test_ivf_trains_itself_and_finds_exact_copies(factory: str) -> None:
    db = unit(2000, 32)
    idx = make_index(32, factory)
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
    assert auto_factory(10) == "Flat" and auto_factory(AUTO_FLAT_LIMIT - 1) == "Flat"


@pytest.mark.parametrize(("n", "nlist", "nprobe"), [(AUTO_FLAT_LIMIT, 1024, 128), (4_000_000, 2048, 256)])
def test_auto_choice_above_the_flat_limit_is_a_working_ivf(n: int, nlist: int, nprobe: int) -> None:
    import faiss

    assert auto_factory(n) == f"IVF{nlist},SQ8|nprobe={nprobe}"
    idx = FaissIndex(8, auto_factory(n))  # a valid factory string with valid search parameters
    assert faiss.extract_index_ivf(idx._index).nprobe == nprobe
    assert idx.training_size == 50 * nlist


def test_search_parameters_follow_the_factory_string() -> None:
    import faiss

    hnsw = FaissIndex(16, "HNSW32|efSearch=77")
    assert hnsw._index.hnsw.efSearch == 77
    ivf = FaissIndex(16, "IVF8,Flat|nprobe=3")
    assert faiss.extract_index_ivf(ivf._index).nprobe == 3
    ivf.set_search_params("nprobe=8")
    assert faiss.extract_index_ivf(ivf._index).nprobe == 8
    with pytest.raises(ValueError, match="search parameters"):
        FaissIndex(16, "Flat|nprobe=3")


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "SQfp16"])
def test_reserved_storage_keeps_adds_exact(factory: str) -> None:
    db = unit(1000, 16, seed=3)
    idx = make_index(16, factory, n_vectors=len(db))
    for start in range(0, len(db), 300):
        idx.add(db[start:start + 300])
    assert len(idx) == len(db)
    _, ids = idx.search(db[::50], 1)
    assert (ids[:, 0] == np.arange(0, len(db), 50)).all()


def test_untrained_index_trains_on_a_bounded_sample_of_the_first_add() -> None:
    idx = FaissIndex(16, "IVF4,Flat")
    assert idx.needs_training and idx.training_size == 200
    trained_on = []
    train = idx.train
    idx.train = lambda vectors: (trained_on.append(len(vectors)), train(vectors))  # type: ignore[method-assign]
    idx.add(unit(5000, 16, seed=4))
    assert trained_on == [200]
    assert not idx.needs_training and idx.training_size == 0 and len(idx) == 5000
