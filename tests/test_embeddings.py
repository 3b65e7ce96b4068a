from pathlib import Path

import numpy as np
import pytest

from framesim.backbones import get_backbone
from framesim.embeddings import EmbeddingCache, embed_missing
from framesim.images import pixel_sha256


def images(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for _ in range(n):
        im = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
        out[pixel_sha256(im)] = im
    return out


class CountingLoader:
    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table, self.calls = table, 0

    def __call__(self, key: str) -> np.ndarray:
        self.calls += 1
        return self.table[key]


def test_second_run_embeds_nothing_and_vectors_match(tmp_path: Path) -> None:
    bb = get_backbone("tiny-image")
    table = images(50)
    keys = list(table)
    cache = EmbeddingCache(tmp_path, bb, flush_every=16)
    stats = embed_missing(bb, cache, keys, CountingLoader(table), batch_size=8, progress=False)
    assert (stats.embedded, stats.cached) == (50, 0)
    expected = bb.embed([table[k] for k in keys])

    again = EmbeddingCache(tmp_path, bb)  # a new process would see the same
    loader = CountingLoader(table)
    stats2 = embed_missing(bb, again, keys, loader, progress=False)
    assert (stats2.embedded, stats2.cached, loader.calls) == (0, 50, 0)
    np.testing.assert_allclose(again.get(keys), expected, atol=2e-3)  # float16 storage


def test_grown_input_embeds_only_new_keys(tmp_path: Path) -> None:
    bb = get_backbone("tiny-image")
    table = images(30)
    keys = list(table)
    embed_missing(bb, EmbeddingCache(tmp_path, bb), keys[:20], CountingLoader(table), progress=False)
    loader = CountingLoader(table)
    stats = embed_missing(bb, EmbeddingCache(tmp_path, bb), keys + keys[:5], loader, progress=False)
    assert stats.embedded == 10 and loader.calls == 10


def test_damaged_shard_is_detected_and_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bb = get_backbone("tiny-image")
    table = images(20)
    keys = list(table)
    cache = EmbeddingCache(tmp_path, bb, flush_every=10)
    embed_missing(bb, cache, keys, CountingLoader(table), batch_size=5, progress=False)
    shards = sorted(cache.dir.glob("shard-*.vecs.npy"))
    assert len(shards) == 2
    data = shards[0].read_bytes()
    shards[0].write_bytes(data[: len(data) // 2])  # truncated, as by a crash or a full disk

    reopened = EmbeddingCache(tmp_path, bb)
    assert "damaged embedding shard" in capsys.readouterr().err
    assert len(reopened) == 10
    stats = embed_missing(bb, reopened, keys, CountingLoader(table), progress=False)
    assert stats.embedded == 10
    np.testing.assert_allclose(reopened.get(keys), bb.embed([table[k] for k in keys]), atol=2e-3)


def test_unfinished_shard_without_sidecar_is_ignored(tmp_path: Path) -> None:
    bb = get_backbone("tiny-image")
    table = images(10)
    cache = EmbeddingCache(tmp_path, bb)
    embed_missing(bb, cache, list(table), CountingLoader(table), progress=False)
    next(cache.dir.glob("shard-*.json")).unlink()  # killed between writing vectors and sidecar
    assert len(EmbeddingCache(tmp_path, bb)) == 0
    assert not list(cache.dir.glob("shard-*.npy"))


def test_cache_from_another_backbone_or_dim_is_not_used(tmp_path: Path) -> None:
    bb = get_backbone("tiny-image")
    table = images(5)
    cache = EmbeddingCache(tmp_path, bb)
    embed_missing(bb, cache, list(table), CountingLoader(table), progress=False)
    header = cache.dir / "header.json"
    header.write_text(header.read_text().replace('"dim": 256', '"dim": 128'))
    assert len(EmbeddingCache(tmp_path, bb)) == 0


def test_unreadable_image_is_reported_and_skipped(tmp_path: Path) -> None:
    bb = get_backbone("tiny-image")
    table = images(6)
    keys = list(table)

    def load(key: str) -> np.ndarray:
        if key == keys[2]:
            raise ValueError("broken.jpg: not a readable image")
        return table[key]

    cache = EmbeddingCache(tmp_path, bb)
    stats = embed_missing(bb, cache, keys, load, batch_size=4, progress=False)
    assert stats.embedded == 5 and stats.failures == ["broken.jpg: not a readable image"]
    assert keys[2] not in cache and all(k in cache for k in keys if k != keys[2])


def test_interrupted_embedding_resumes_with_identical_results(tmp_path: Path) -> None:
    bb = get_backbone("tiny-image")
    table = images(100)
    keys = list(table)
    loaded = 0

    def interrupting_load(key: str) -> np.ndarray:
        nonlocal loaded
        loaded += 1
        if loaded == 60:
            raise KeyboardInterrupt  # the user presses Ctrl-C part-way through
        return table[key]

    cache = EmbeddingCache(tmp_path, bb, flush_every=16)
    with pytest.raises(KeyboardInterrupt):
        embed_missing(bb, cache, keys, interrupting_load, batch_size=8, workers=1, progress=False)
    resumed = EmbeddingCache(tmp_path, bb)
    survived = len(resumed)
    assert 16 <= survived < 60  # whole shards survived, the unflushed tail did not
    loader = CountingLoader(table)
    embed_missing(bb, resumed, keys, loader, progress=False)
    assert loader.calls == 100 - survived  # only the rest is embedded
    fresh = EmbeddingCache(tmp_path / "fresh", bb)
    embed_missing(bb, fresh, keys, CountingLoader(table), progress=False)
    np.testing.assert_array_equal(resumed.get(keys), fresh.get(keys))
