"""vit-b16: keras-hub's ViT-B/16 with random weights (no download here), its token descriptors, and its errors.

Known answers: ``:cls`` is the class token and ``:mean`` the mean of the patch tokens of the Keras model's own
output sequence on the same preprocessed input; the preprocessing is keras-hub's ImageConverter arithmetic
with the preset's numbers (those of the Hugging Face processor it was converted from); a preset folder
written by keras-hub's ``save_to_preset`` loads back to the same vectors, as ``--weights DIR`` and, put where
kagglehub keeps a download, through the real ``from_preset`` path with the network blocked. Tests that
build ViT-B (86M parameters, a few seconds each) or import keras-hub (TensorFlow) are marked slow.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import framesim.backbones.vit as V  # registers vit-b16 until base._load_builtin imports it
from framesim.backbones import BackboneError, get_backbone, list_backbones
from framesim.backbones.base import l2_normalize
from framesim.backbones.pooling import PoolingError, TokenDescriptor, parse_descriptor, parse_token_descriptor
from framesim.cli import cli
from framesim.embeddings import cache_dir

needs_keras_hub = pytest.mark.skipif(not V.keras_hub_installed(), reason="needs keras-hub (framesim[vit])")


def _images(n: int = 2, seed: int = 3) -> list[np.ndarray]:
    # Not 224 square: embed resizes them, as frames are.
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (180 + 20 * i, 320, 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(autouse=True)
def _empty_kaggle_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Never the user's cache: "weights here" and the download path must not depend on this machine.
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kagglehub"))


@pytest.fixture(scope="module")
def vit_cls() -> V.VitBackbone:
    if not V.keras_hub_installed():
        pytest.skip("needs keras-hub (framesim[vit])")
    return get_backbone("vit-b16", weights=None)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def vit_mean() -> V.VitBackbone:
    if not V.keras_hub_installed():
        pytest.skip("needs keras-hub (framesim[vit])")
    return get_backbone("vit-b16:mean", weights=None)  # type: ignore[return-value]


def test_token_descriptors_pick_the_class_token_or_average_the_patches() -> None:
    tokens = np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3)  # class token + 3 patches of 3 channels
    np.testing.assert_array_equal(TokenDescriptor("cls").pool(tokens), [[0, 1, 2], [12, 13, 14]])
    np.testing.assert_array_equal(TokenDescriptor("mean").pool(tokens), [[6, 7, 8], [18, 19, 20]])
    assert parse_token_descriptor(" MEAN ") == TokenDescriptor("mean") and str(parse_token_descriptor("cls")) == "cls"
    assert parse_token_descriptor(None, TokenDescriptor("mean")) == TokenDescriptor("mean")
    for bad in ("gem", "cls+flip", "avg"):
        with pytest.raises(PoolingError, match="unknown token descriptor"):
            parse_token_descriptor(bad)
    with pytest.raises(PoolingError, match="unknown pooling 'cls'"):  # the CNN poolings do not take them
        parse_descriptor("cls")
    with pytest.raises(ValueError, match="tokens"):
        TokenDescriptor("cls").pool(np.zeros((2, 7, 7, 3)))


def test_specs_name_the_descriptor_and_refuse_poolings() -> None:
    info = {b.name: b for b in list_backbones()}["vit-b16"]
    assert info.poolable and info.default_descriptor == "cls" and info.dim == 768 and info.input_size == 224
    with pytest.raises(BackboneError, match=r"^'vit-b16:gem': unknown token descriptor 'gem'; known: cls") as exc:
        get_backbone("vit-b16:gem", weights=None)
    assert "\n" not in str(exc.value)
    with pytest.raises(BackboneError, match="unknown pooling 'mean'"):  # unchanged for the CNNs
        get_backbone("resnet50:mean", weights=None)


def test_without_keras_hub_a_one_line_error_and_still_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # import keras_hub now raises ImportError
    for spec in ("vit-b16", "vit-b16:mean"):
        with pytest.raises(BackboneError) as exc:
            get_backbone(spec, weights=None)
        assert str(exc.value) == "vit-b16 needs keras-hub: pip install 'framesim[vit]'"
    assert not V.weights_available()
    res = CliRunner().invoke(cli, ["backbones"])
    assert res.exit_code == 0, res.output
    row = next(line for line in res.output.splitlines() if line.split()[0] == "vit-b16")
    assert "768" in row and "224" in row and "no (download)" in row


@needs_keras_hub
def test_weights_here_once_kagglehub_has_the_preset(tmp_path: Path) -> None:
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    assert not V.weights_available()
    assert "no (download)" in _backbones_row()
    # Put the files where kagglehub itself looks (its own cache code says where, and what marks them complete).
    handle = parse_model_handle(V.preset_handle())
    cache = Cache()
    for name in V.PRESET_FILES:
        path = Path(cache.get_path(handle, name))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"{}")
        assert not V.weights_available()  # a file without its completion marker is downloaded again
        cache.mark_as_complete(handle, name)
        assert cache.load_from_cache(handle, name) == str(path)
    assert V.cached_preset_dir() == Path(cache.get_path(handle))
    assert V.weights_available() and "yes" in _backbones_row()


def _backbones_row() -> str:
    res = CliRunner().invoke(cli, ["backbones"])
    return next(line for line in res.output.splitlines() if line.split()[0] == "vit-b16")


@pytest.mark.slow
@needs_keras_hub
def test_preset_handle_and_preprocessing_are_keras_hub_s() -> None:
    import keras_hub
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    assert f"kaggle://{V.preset_handle()}" == BUILTIN_PRESETS[V.PRESET]["kaggle_handle"]
    assert V.preset_handle() == V.KAGGLE_HANDLE  # the fallback is current (keras-hub 0.32)
    # The preset's converter, as keras-hub's convert_vit_checkpoints.py builds it from the Hugging Face
    # ViTImageProcessor of google/vit-base-patch16-224 (rescale 1/255, mean 0.5, std 0.5 per channel).
    rescale, mean, std = 1 / 255, [0.5] * 3, [0.5] * 3
    converter = keras_hub.layers.ViTImageConverter(scale=[rescale / s for s in std],
                                                   offset=[-m / s for m, s in zip(mean, std, strict=True)])
    vit = _bare_vit()
    batch = np.stack([np.full((224, 224, 3), v, np.uint8) for v in (0, 128, 255)] + [vit.resize(_images(1)[0])])
    ours = vit.preprocess(batch)
    np.testing.assert_allclose(ours, np.asarray(converter(batch.astype(np.float32))), atol=1e-6)
    assert ours[0].max() == -1 and ours[2].min() == pytest.approx(1, abs=1e-6)  # RGB 0..255 -> [-1, 1]


def _bare_vit() -> V.VitBackbone:
    # preprocess without building a network: the preset's numbers, as __init__ sets them
    vit = V.VitBackbone.__new__(V.VitBackbone)
    vit._scale, vit._offset = np.full(3, V.SCALE, np.float32), np.full(3, V.OFFSET, np.float32)
    return vit


@pytest.mark.slow
def test_random_vit_embeds_its_class_token(vit_cls: V.VitBackbone) -> None:
    assert (vit_cls.name, vit_cls.spec, vit_cls.runtime, vit_cls.weights) == (
        "vit-b16", "vit-b16:cls", "tensorflow", "random (weights=None)")
    images = _images()
    vecs = vit_cls.embed(images)
    assert vecs.shape == (2, 768) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-6)
    # The Keras model itself, called eagerly on the same preprocessed input.
    x = vit_cls.preprocess(np.stack([vit_cls.resize(im) for im in images]))
    tokens = np.asarray(vit_cls.model(x, training=False))
    assert tokens.shape == (2, 197, 768)
    np.testing.assert_allclose(vecs, l2_normalize(tokens[:, 0]), atol=1e-5)
    assert vit_cls.recipe == ("vit-b16", "tensorflow", {"weights": None})
    assert get_backbone("vit-b16:cls", weights=None, runtime="onnxruntime").runtime == "tensorflow"


@pytest.mark.slow
def test_mean_spec_embeds_the_mean_of_the_patch_tokens(vit_cls: V.VitBackbone, vit_mean: V.VitBackbone) -> None:
    images = _images(3, seed=8)
    vecs = vit_mean.embed(images)
    x = vit_mean.preprocess(np.stack([vit_mean.resize(im) for im in images]))
    tokens = np.asarray(vit_mean.model(x, training=False))
    np.testing.assert_allclose(vecs, l2_normalize(tokens[:, 1:].mean(axis=1)), atol=1e-5)
    assert not np.allclose(vecs, l2_normalize(tokens[:, 0]), atol=1e-2)  # not the class token
    # Different specs, different embedding caches (same weights tag).
    assert (vit_mean.name, vit_mean.spec) == ("vit-b16:mean", "vit-b16:mean")
    assert cache_dir("/c", vit_cls) == Path("/c/vit-b16/cls/random-weights-none")
    assert cache_dir("/c", vit_mean) == Path("/c/vit-b16/mean/random-weights-none")


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline for real: every request goes to a proxy port where nothing listens (no download either way).
    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.mark.slow
@needs_keras_hub
def test_offline_imagenet_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch)
    with pytest.raises(BackboneError) as exc:
        get_backbone("vit-b16")
    message = str(exc.value)
    assert "\n" not in message and message.startswith("vit-b16: could not get the keras-hub preset "
                                                       "vit_base_patch16_224_imagenet")
    assert "--weights DIR" in message and str(V.cached_preset_dir()) in message and "download" in message


@pytest.mark.slow
def test_preset_in_the_cache_a_preset_folder_and_a_weights_file(vit_cls: V.VitBackbone, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import keras_hub
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    batch = np.stack([vit_cls.resize(im) for im in _images()])
    want_cls = vit_cls.embed(batch)
    # keras-hub's own preset files (save_to_preset), where kagglehub keeps a download: "imagenet" then loads
    # them through the real from_preset path, offline.
    folder = V.cached_preset_dir()
    assert folder is not None
    vit_cls.model.save_to_preset(str(folder))
    handle = parse_model_handle(V.preset_handle())
    for name in V.PRESET_FILES:
        Cache().mark_as_complete(handle, name)
    assert V.weights_available()
    _offline(monkeypatch)
    cached = get_backbone("vit-b16")
    assert cached.weights == "imagenet"
    np.testing.assert_allclose(cached.embed(batch), want_cls, atol=1e-5)
    # The folder as --weights DIR, now with a converter of other numbers (ImageNet mean/std) saved by keras-hub:
    # the folder's own preprocessing is used.
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    converter = keras_hub.layers.ViTImageConverter(scale=[1 / 255 / s for s in std],
                                                   offset=[-m / s for m, s in zip(mean, std, strict=True)])
    converter.save_to_preset(str(folder))
    loaded = get_backbone("vit-b16:mean", weights=str(folder))
    assert loaded.weights == str(folder / "model.weights.h5")
    x = loaded.preprocess(batch)
    np.testing.assert_allclose(x, np.asarray(converter(batch.astype(np.float32))), atol=1e-5)
    want_mean = l2_normalize(np.asarray(vit_cls.model(x, training=False))[:, 1:].mean(axis=1))
    np.testing.assert_allclose(loaded.embed(batch), want_mean, atol=1e-5)
    # The weights file alone: the architecture here, its weights there (the default preprocessing).
    from_file = get_backbone("vit-b16", weights=str(folder / "model.weights.h5"))
    np.testing.assert_allclose(from_file.embed(batch), want_cls, atol=1e-5)
    assert os.path.getsize(folder / "model.weights.h5") > 300e6  # the whole ViT-B really went through the file
    # Another ViT: refused in one line, not loaded into the wrong shapes.
    small = tmp_path / "small"
    keras_hub.models.ViTBackbone(image_shape=(224, 224, 3), patch_size=32, num_layers=1, num_heads=2, hidden_dim=32,
                                 mlp_dim=64).save_to_preset(str(small))
    with pytest.raises(BackboneError, match=r"is a ViT for \(224, 224, 3\) input giving \(50, 32\) tokens"):
        get_backbone("vit-b16", weights=str(small))
    for bad, why in ((tmp_path / "nothing", "does not exist"), (tmp_path, "not a keras-hub preset folder")):
        with pytest.raises(BackboneError, match=why):
            get_backbone("vit-b16", weights=str(bad))
