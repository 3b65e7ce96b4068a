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
@pytest.mark.parametrize("name", ["vgg16", "resnet50", "resnet101"])
def test_keras_applications_shapes_with_random_weights(name: str) -> None:
    bb = get_backbone(name, weights=None)
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
