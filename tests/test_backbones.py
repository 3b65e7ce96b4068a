import json
from pathlib import Path

import numpy as np
import pytest

from framesim.backbones import Backbone, BackboneError, get_backbone, list_backbones, register_backbone
from framesim.backbones.keras_apps import SPECS


def test_registry_lists_builtin_backbones_without_building_them() -> None:
    names = {b.name for b in list_backbones()}
    assert {"efficientnet-lite0", "vgg16", "resnet50", "resnet101", "tiny-image"} <= names
    with pytest.raises(BackboneError, match="unknown backbone 'nope'; known: .*resnet50"):
        get_backbone("nope")


def test_a_registered_plugin_is_usable_by_name() -> None:
    class Mean(Backbone):
        name, input_size, dim = "mean-colour", 8, 3

        def preprocess(self, batch: np.ndarray) -> np.ndarray:
            return batch.astype(np.float32)

        def _forward(self, batch: np.ndarray) -> np.ndarray:
            return batch.mean(axis=(1, 2))

    register_backbone("mean-colour", dim=3, input_size=8)(lambda **_: Mean())
    vec = get_backbone("mean-colour").embed([np.full((20, 30, 3), (10, 20, 20), np.uint8)])
    np.testing.assert_allclose(vec, [[1 / 3, 2 / 3, 2 / 3]], rtol=1e-6)


def test_embed_resizes_any_input_and_normalises() -> None:
    bb = get_backbone("tiny-image")
    rng = np.random.default_rng(0)
    out = bb.embed([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(10, 10), (480, 640), (77, 33)]])
    assert out.shape == (3, bb.dim) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    assert bb.embed([]).shape == (0, bb.dim)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vgg16", "resnet50", "resnet101", "vgg16:rmac", "resnet50:gem+flip"])
def test_keras_applications_shapes_with_random_weights(name: str) -> None:
    bb = get_backbone(name, weights=None)
    name = name.split(":")[0]
    rng = np.random.default_rng(0)
    out = bb.embed([rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(3)])
    assert out.shape == (3, SPECS[name].dim) == (3, bb.dim)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    assert bb.weights.startswith("random")


@pytest.mark.slow
def test_weights_file_is_the_offline_path(tmp_path: Path) -> None:
    # A "notop" weights file saved from one model loads into a fresh one through weights=FILE
    # and gives identical embeddings: the path an offline user takes with a downloaded .h5.
    first = get_backbone("resnet50", weights=None)
    weights_file = tmp_path / "resnet50_notop.weights.h5"
    first.model.save_weights(weights_file)
    second = get_backbone("resnet50", weights=str(weights_file))
    images = np.random.default_rng(1).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    np.testing.assert_allclose(first.embed(images), second.embed(images), atol=1e-5)
    assert second.weights == str(weights_file)


def test_missing_weights_file_and_offline_download_give_actionable_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BackboneError, match="does not exist"):
        get_backbone("vgg16", weights=str(tmp_path / "nope.h5"))
    # With no cached file and no internet, Keras' real download fails; the message says what to do.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # make the download fail fast everywhere
    with pytest.raises(BackboneError) as err:
        get_backbone("vgg16")
    msg = str(err.value)
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in msg and "--weights FILE" in msg
    assert str(tmp_path / "keras" / "models") in msg


# --------------------------------------------------------------------------------------------------
# Descriptors: pooling functions, spec parsing, cache folders


def test_gem_on_known_values_and_its_limits() -> None:
    from framesim.backbones.pooling import Descriptor, gem

    maps = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_allclose(gem(maps, 3.0), [[(100 / 4) ** (1 / 3)]], rtol=1e-6)  # (1+8+27+64)/4
    rng = np.random.default_rng(0)
    x = rng.random((3, 5, 4, 8)).astype(np.float32)
    np.testing.assert_allclose(gem(x, 1.0), x.mean(axis=(1, 2)), rtol=1e-5)  # p = 1 is the average
    np.testing.assert_allclose(Descriptor("avg").pool(x), x.mean(axis=(1, 2)), rtol=1e-6)
    # p -> inf approaches the max (MAC) from below; monotone in p.
    mac = Descriptor("mac").pool(x)
    np.testing.assert_allclose(mac, x.max(axis=(1, 2)))
    assert np.all(gem(x, 200.0) <= mac + 1e-6) and np.allclose(gem(x, 200.0), mac, rtol=0.02)
    assert np.all(gem(x, 2.0) <= gem(x, 3.0) + 1e-6) and np.all(gem(x, 3.0) <= gem(x, 6.0) + 1e-6)
    np.testing.assert_allclose(gem(x, 3.0), gem(x, 3.0000001), rtol=1e-5)  # fast path = general formula


def test_rmac_regions_as_specified() -> None:
    from framesim.backbones.pooling import rmac_regions

    # Square 7x7 map, L = 3: sides floor(2*7/(l+1)) = 7, 4, 3 with 1, 4, 9 regions.
    regions = rmac_regions(7, 7, 3)
    assert [s for _, _, s in regions] == [7] + [4] * 4 + [3] * 9
    assert regions[:5] == [(0, 0, 7), (0, 0, 4), (0, 3, 4), (3, 0, 4), (3, 3, 4)]
    assert {(y, x) for y, x, s in regions if s == 3} == {(y, x) for y in (0, 2, 4) for x in (0, 2, 4)}
    # Wide 7x12 map: one extra region along the width per level (overlap closest to 40 %): 2 + 6 + 12.
    wide = rmac_regions(7, 12, 3)
    assert [sum(1 for *_, s in wide if s == side) for side in (7, 4, 3)] == [2, 6, 12]
    for h, w in [(7, 7), (7, 12), (12, 7), (14, 14), (3, 5), (1, 1)]:
        regions = rmac_regions(h, w, 3)
        assert regions and all(y >= 0 and y + s <= h and x >= 0 and x + s <= w for y, x, s in regions)
        if min(h, w) < 7:
            continue  # 1-pixel regions of tiny maps need not tile them
        for side in {s for *_, s in regions}:  # each level covers the whole map
            covered = np.zeros((h, w), bool)
            for y, x, s in regions:
                if s == side:
                    covered[y:y + s, x:x + s] = True
            assert covered.all(), (h, w, side)


def test_rmac_is_the_sum_of_normalised_regional_maxima() -> None:
    from framesim.backbones.pooling import Descriptor, rmac_regions

    x = np.random.default_rng(1).random((2, 7, 9, 4)).astype(np.float32)
    expected = np.zeros((2, 4), np.float32)
    for y, xx, s in rmac_regions(7, 9):
        v = x[:, y:y + s, xx:xx + s].max(axis=(1, 2))
        expected += v / np.linalg.norm(v, axis=1, keepdims=True)
    np.testing.assert_allclose(Descriptor("rmac").pool(x), expected, rtol=1e-5)


def test_descriptor_specs_parse_and_print_canonically() -> None:
    from framesim.backbones.pooling import Descriptor, PoolingError, parse_descriptor

    assert parse_descriptor("gem") == Descriptor("gem", 3.0) and str(parse_descriptor("GEM3")) == "gem"
    assert str(parse_descriptor("gem4.5+flip")) == "gem4.5+flip"
    assert parse_descriptor("rmac+ms+flip") == Descriptor("rmac", flip=True, multiscale=True)
    assert str(parse_descriptor("rmac+ms+flip")) == "rmac+flip+ms"
    assert parse_descriptor(None, Descriptor("gem")) == Descriptor("gem")
    assert Descriptor("gem", flip=True, multiscale=True).cost == pytest.approx(2 * 3.5)
    for bad in ("median", "gem+zoom", "gem0.5"):
        with pytest.raises(PoolingError):
            parse_descriptor(bad)


def test_specs_name_the_backbone_and_refuse_pooling_without_a_feature_map() -> None:
    with pytest.raises(BackboneError, match="no feature map to pool"):
        get_backbone("tiny-image:gem")
    with pytest.raises(BackboneError, match="unknown pooling"):
        get_backbone("efficientnet-lite0:median")
    with pytest.raises(ValueError, match="cannot contain ':'"):
        register_backbone("bad:name", dim=1, input_size=8)
    infos = {b.name: b for b in list_backbones()}
    assert infos["efficientnet-lite0"].poolable and infos["efficientnet-lite0"].default_descriptor == "gem"
    assert infos["resnet50"].default_descriptor == "avg" and not infos["tiny-image"].poolable


class _SpecBackbone(Backbone):
    input_size, dim = 8, 4

    def __init__(self, name: str, spec: str, value: float) -> None:
        self.name, self._spec, self.value = name, spec, value

    @property
    def spec(self) -> str:
        return self._spec

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        return batch.astype(np.float32)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return np.full((len(batch), 4), self.value, np.float32)


def test_embedding_cache_folder_depends_on_the_full_spec(tmp_path: Path) -> None:
    from framesim.embeddings import EmbeddingCache, cache_dir

    root = tmp_path / "embeddings"
    gem = _SpecBackbone("cnn", "cnn:gem", 1.0)
    avg = _SpecBackbone("cnn:avg", "cnn:avg", 2.0)
    flip = _SpecBackbone("cnn:gem+flip", "cnn:gem+flip", 3.0)
    dirs = [cache_dir(root, b) for b in (gem, avg, flip)]
    assert len(set(dirs)) == 3 and dirs[0].relative_to(root).parts[:2] == ("cnn", "gem")
    assert ":" not in str(dirs[2].relative_to(root))
    # Unsafe characters are replaced, and a hash keeps sanitised names apart.
    odd1, odd2 = _SpecBackbone("a", "a b:gem", 0.0), _SpecBackbone("a", "a?b:gem", 0.0)
    assert cache_dir(root, odd1) != cache_dir(root, odd2)
    assert all(c.isalnum() or c in "._+-" for part in cache_dir(root, odd1).relative_to(root).parts for c in part)
    # Vectors stored for one spec are invisible to another, even for the same pixels.
    one = EmbeddingCache(root, gem)
    one.put(["k"], gem.embed(np.zeros((1, 8, 8, 3), np.uint8)))
    one.flush()
    assert "k" in EmbeddingCache(root, gem) and "k" not in EmbeddingCache(root, avg)
    assert json.loads((dirs[0] / "header.json").read_text())["backbone"] == "cnn:gem"
