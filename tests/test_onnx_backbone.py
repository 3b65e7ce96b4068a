"""``onnx:PATH[:DESCRIPTOR]`` backbones: framesim's embeddings equal the model's own outputs (a Keras CNN
exported to ONNX, and models written with ``onnx.helper`` whose answers are computed here in numpy),
the layout, colour order and normalisation come from options and metadata, errors are one line naming
the file, the cache follows the file's bytes, and config-registered models reach ``framesim backbones``
and ``framesim match``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from framesim.backbones import BackboneError, get_backbone, list_backbones, split_spec
from framesim.backbones import base as B
from framesim.backbones import onnx_model as M
from framesim.cli import cli
from framesim.embeddings import cache_dir, weights_tag

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
#: tolerance against answers computed here in float64: the model computes in float32
F32 = 1e-5


# --------------------------------------------------------------------------------------------------
# Models written with onnx.helper, and their answers in numpy


def save(path: Path, nodes: list[Any], inputs: list[Any], outputs: list[Any], weights: dict[str, np.ndarray],
         meta: dict[str, str] | None = None) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what onnxruntime of any supported version reads
    if meta:
        helper.set_model_props(model, meta)
    onnx.save(model, str(path))
    return path


def tensor(name: str, shape: list[Any]) -> Any:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_weights(seed: int = 0, out: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(out, 3, 3, 3)).astype(np.float32)


def conv_model(path: Path, meta: dict[str, str] | None = None, seed: int = 0, batch: Any = "n",
               side: Any = 10) -> Path:
    """NCHW input (batch, 3, side, side) -> 3x3 conv, 5 channels: an NCHW feature map."""
    return save(path, [helper.make_node("Conv", ["x", "w"], ["y"])], [tensor("x", [batch, 3, side, side])],
                [tensor("y", [batch, 5, None, None])], {"w": conv_weights(seed)}, meta)


def conv_maps(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Valid 3x3 cross-correlation of NHWC ``x`` with (out, 3, 3, 3) ``w`` -> NHWC maps."""
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), (3, 3), axis=(1, 2))
    return np.einsum("nhwcij,ocij->nhwo", windows, w.astype(np.float64))


def flat_model(path: Path, meta: dict[str, str] | None = None, batch: Any = 1, dim: int = 7) -> Path:
    """NCHW input with dynamic H/W -> global average pool -> flatten -> MatMul: an (n, dim) vector."""
    w = np.random.default_rng(3).normal(size=(3, dim)).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "w"], ["v"])]
    return save(path, nodes, [tensor("x", [batch, 3, "h", "w"])], [tensor("v", [batch, dim])], {"w": w}, meta)


def normalise(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def pixels(n: int = 3, side: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, 3), dtype=np.uint8)


def one_line_error(spec: str, match: str, **kwargs: Any) -> str:
    with pytest.raises(BackboneError, match=match) as info:
        get_backbone(spec, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------------------------------
# A Keras CNN exported to ONNX: framesim gives the model's own outputs


@pytest.fixture(scope="module")
def keras_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from framesim.backbones.keras_base import quiet_tensorflow
    from framesim.backbones.runtime import _export_onnx

    quiet_tensorflow()
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((24, 24, 3))
    x = layers.Conv2D(4, 3, strides=2, activation="relu")(inputs)
    maps = layers.Conv2D(6, 3)(x)
    vector = layers.Dense(5)(layers.GlobalAveragePooling2D()(maps))
    folder = tmp_path_factory.mktemp("keras-onnx")
    out: dict[str, Any] = {}
    for name, output in (("maps", maps), ("vector", vector)):
        model = keras.Model(inputs, output)
        _export_onnx(model, folder / f"{name}.onnx")  # framesim's own export (dynamic batch, NHWC)
        out[name], out[f"{name}-keras"] = folder / f"{name}.onnx", model
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["maps", "vector"])
def test_exported_keras_model_gives_its_own_outputs(keras_models: dict[str, Any], kind: str) -> None:
    path = keras_models[kind]
    backbone = get_backbone(f"onnx:{path}")
    assert (backbone.input_size, backbone.layout, backbone.runtime) == (24, "nhwc", "onnxruntime")
    assert backbone.dim == (6 if kind == "maps" else 5)
    assert (backbone.descriptor is not None) == (kind == "maps") and backbone.spec.endswith(":avg") == (kind == "maps")
    images = [*pixels(2, 24), np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)]
    got = backbone.embed(images)
    # Preprocessing by hand (ImageNet mean/std on RGB), then the file in ONNX Runtime and the Keras model.
    batch = np.stack([backbone.resize(im) for im in images])
    x = ((batch / 255.0 - MEAN) / STD).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    own = session.run(None, {session.get_inputs()[0].name: x})[0]
    want = normalise(own.mean(axis=(1, 2)) if kind == "maps" else own)
    assert got.shape == (3, backbone.dim) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-6)
    keras_out = np.asarray(keras_models[f"{kind}-keras"](x))
    np.testing.assert_allclose(got, normalise(keras_out.mean(axis=(1, 2)) if kind == "maps" else keras_out),
                               atol=1e-5)


# --------------------------------------------------------------------------------------------------
# onnx.helper models: layout, colour, normalisation and pooling from metadata and options


def test_nchw_bgr_metadata_and_poolings(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "conv.onnx", {"Image.BitmapPixelFormat": "Bgr8",
                                               "Image.NominalPixelRange": "Normalized_1_1"})
    images = pixels()
    maps = conv_maps(images[..., ::-1] * (2 / 255) - 1, conv_weights())  # BGR, on -1..1
    plain = get_backbone(f"onnx:{path}")
    assert (plain.layout, plain.output_layout, plain.input_size, plain.dim) == ("nchw", "nchw", 10, 5)
    np.testing.assert_allclose(plain.embed(images), normalise(maps.mean(axis=(1, 2))), atol=F32)
    # The channels axis is 1 in the output: mac takes the max over h and w, per channel.
    mac = get_backbone(f"onnx:{path}:mac")
    np.testing.assert_allclose(mac.embed(images), normalise(maps.max(axis=(1, 2))), atol=F32)
    flip = get_backbone(f"onnx:{path}:avg+flip")
    flipped = conv_maps(images[:, :, ::-1, ::-1] * (2 / 255) - 1, conv_weights())
    want = normalise(normalise(maps.mean(axis=(1, 2))) + normalise(flipped.mean(axis=(1, 2))))
    np.testing.assert_allclose(flip.embed(images), want, atol=F32)
    assert len({plain.spec, mac.spec, flip.spec}) == 3 and mac.name == f"onnx:{path}:mac"
    # Explicit options win over the metadata (here: RGB, ImageNet mean/std in the given order).
    spec = f"onnx:{path}?colour=rgb&mean={','.join(map(str, MEAN))}&std={','.join(map(str, STD))}"
    explicit = get_backbone(spec)
    maps_rgb = conv_maps((images / 255.0 - MEAN) / STD, conv_weights())
    np.testing.assert_allclose(explicit.embed(images), normalise(maps_rgb.mean(axis=(1, 2))), atol=F32)
    assert explicit.spec != plain.spec  # other preprocessing, other cache


def test_framesim_metadata_dynamic_size_and_fixed_batch(tmp_path: Path) -> None:
    # framesim's keys give the size of a model with dynamic H/W and win over WinML's pixel range.
    meta = {"framesim.size": "12", "framesim.mean": "0.5", "framesim.std": "0.25,0.5,1",
            "Image.BitmapPixelFormat": "Bgr8", "Image.NominalPixelRange": "NominalRange_0_255"}
    path = flat_model(tmp_path / "flat.onnx", meta, batch=1)
    backbone = get_backbone(f"onnx:{path}")
    assert (backbone.input_size, backbone.dim, backbone.batch_size, backbone.descriptor) == (12, 7, 1, None)
    images = pixels(3, 12)
    w = np.random.default_rng(3).normal(size=(3, 7))
    x = (images[..., ::-1] / 255.0 - 0.5) / np.array([0.25, 0.5, 1.0])  # BGR, the given mean/std
    want = normalise(x.mean(axis=(1, 2)) @ w)
    np.testing.assert_allclose(backbone.embed(images), want, atol=F32)  # 3 images through a batch-1 model
    # Options over metadata: another size, scale/offset replaces the metadata's mean/std.
    other = get_backbone(f"onnx:{path}?size=8&scale=2&offset=-1")
    small = np.stack([other.resize(im) for im in images])
    assert small.shape[1:3] == (8, 8)
    np.testing.assert_allclose(other.embed(images), normalise((small[..., ::-1] * 2.0 - 1).mean(axis=(1, 2)) @ w),
                               atol=F32)
    # Dynamic H/W allows multi-scale on feature maps; the ms views run at other sizes.
    ms_path = save(tmp_path / "ms.onnx", [helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["n", "h", "w", 3])],
                   [tensor("y", ["n", "h", "w", 3])], {})
    ms = get_backbone(f"onnx:{ms_path}?size=64:gem+ms")
    assert (ms.layout, ms.dim) == ("nhwc", 3) and ms.embed(pixels(2, 64)).shape == (2, 3)


def test_spec_syntax(tmp_path: Path) -> None:
    folder = tmp_path / "a:b?c"
    folder.mkdir()
    path = conv_model(folder / "m.onnx")
    assert split_spec(f"onnx:{path}:gem+flip") == (f"onnx:{path}", "gem+flip")
    assert split_spec(f"onnx:{path}?size=10") == (f"onnx:{path}?size=10", None)
    assert split_spec("efficientnet-lite0:gem") == ("efficientnet-lite0", "gem")
    backbone = get_backbone(f"onnx:{path}?:gem")  # ':' and '?' in the folder; empty option list
    assert backbone.name == f"onnx:{path}?:gem" and str(backbone.descriptor) == "gem"
    assert backbone.recipe == (f"onnx:{path.resolve()}:gem", "onnxruntime", {})
    rebuilt = get_backbone(backbone.recipe[0], backbone.recipe[1], **backbone.recipe[2])
    assert rebuilt.spec == backbone.spec
    # A safe, short cache folder whatever the path.
    assert cache_dir(tmp_path / "emb", backbone).relative_to(tmp_path / "emb").parts == (
        backbone.spec.split(":")[0], "gem", f"sha256-{backbone.sha256[:53]}")


# --------------------------------------------------------------------------------------------------
# Errors: one line naming the file


def test_errors_are_one_line_naming_the_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("not a model\n")
    assert str(text) in one_line_error(f"onnx:{text}", "not a usable ONNX model")
    dynamic = flat_model(tmp_path / "dyn.onnx")
    message = one_line_error(f"onnx:{dynamic}", "dynamic height and width: give size=")
    assert str(dynamic) in message
    rank3 = save(tmp_path / "rank3.onnx", [helper.make_node("ReduceMean", ["x"], ["y"], axes=[3], keepdims=0)],
                 [tensor("x", ["n", 3, 8, 8])], [tensor("y", ["n", 3, 8])], {})
    assert str(rank3) in one_line_error(f"onnx:{rank3}", r"has shape \['n', 3, 8\]: expected a \(n, dim\) vector")
    ints = save(tmp_path / "ints.onnx", [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.INT64)],
                [tensor("x", [1, 3, 8, 8])], [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 3, 8, 8])], {})
    one_line_error(f"onnx:{ints}", "is tensor.int64.: expected floats")
    conv = conv_model(tmp_path / "conv.onnx")
    vec = flat_model(tmp_path / "vec.onnx", {"framesim.size": "8"})
    one_line_error(f"onnx:{vec}:gem", "outputs 7-d vectors: no feature map to pool")
    one_line_error(f"onnx:{conv}:avg+ms", r"\+ms runs the model at other sizes, but its input is fixed at 10x10")
    one_line_error(f"onnx:{tmp_path}/missing.onnx", "missing.onnx: no such ONNX file")
    one_line_error(f"onnx:{conv}:gemx", r"no such ONNX file \(if :gemx is meant as a descriptor: unknown pooling")
    one_line_error(f"onnx:{conv}?size=12", "size=12 does not fit the model's input, fixed at 10x10")
    one_line_error(f"onnx:{conv}?layout=sideways", "option layout='sideways': expected nchw or nhwc")
    one_line_error(f"onnx:{conv}?std=0", r"option std='0': expected 1 or 3 finite numbers \(not 0\)")
    one_line_error(f"onnx:{conv}?mean=0.5&scale=2", "mix mean/std with scale/offset")
    one_line_error(f"onnx:{conv}?output=nope", "no output 'nope'; outputs: y")
    one_line_error(f"onnx:{conv}?size", "option 'size' is not KEY=VALUE")
    one_line_error(f"onnx:{conv}?size=10&size=10", "option 'size' given twice")
    one_line_error(f"onnx:{conv}?foo=1", "unknown option 'foo'")
    one_line_error(f"onnx:{conv}", "carries its weights; --weights does not apply", weights="x.npz")
    bad_meta = conv_model(tmp_path / "meta.onnx", {"Image.BitmapPixelFormat": "Gray8"})
    assert str(bad_meta) in one_line_error(f"onnx:{bad_meta}", "metadata Image.BitmapPixelFormat='Gray8'")
    two = save(tmp_path / "three.onnx", [helper.make_node("Relu", ["x"], ["y"])], [tensor("x", ["n", 3, 3, 3])],
               [tensor("y", ["n", 3, 3, 3])], {})
    one_line_error(f"onnx:{two}", "cannot tell the layout.*give layout=nchw or layout=nhwc")


# --------------------------------------------------------------------------------------------------
# Identity: the cache follows the file's bytes


def test_cache_key_follows_the_files_bytes(tmp_path: Path) -> None:
    path = conv_model(tmp_path / "m.onnx", seed=0)
    first = get_backbone(f"onnx:{path}")
    conv_model(path, seed=1)  # same path, other weights
    second = get_backbone(f"onnx:{path}")
    assert first.name == second.name == f"onnx:{path}"
    assert weights_tag(first) != weights_tag(second) and first.spec != second.spec
    assert cache_dir(tmp_path / "emb", first) != cache_dir(tmp_path / "emb", second)
    assert not np.allclose(first.embed(pixels()), second.embed(pixels()))
    # The same bytes elsewhere share the cache.
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(path.read_bytes())
    assert cache_dir(tmp_path / "emb", get_backbone(f"onnx:{copy}")) == cache_dir(tmp_path / "emb", second)


# --------------------------------------------------------------------------------------------------
# Registered names: the config file and register_onnx_backbone


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("FRAMESIM_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    before = set(B._REGISTRY)
    yield tmp_path / "home"
    for name in set(B._REGISTRY) - before:  # names registered here must not leak into other tests
        B._REGISTRY.pop(name)
        M._REGISTERED.discard(name)


def test_config_file_registers_models(home: Path) -> None:
    conv_model(home / "conv.onnx")
    flat_model(home / "flat.onnx")
    (home / "backbones.json").write_text(json.dumps({
        "myconv": {"path": "conv.onnx", "descriptor": "mac", "colour": "bgr"},
        "myvec": {"path": str(home / "flat.onnx"), "size": 16, "description": "a small vector model"},
        "gone": {"path": "missing.onnx"},
    }))
    res = CliRunner().invoke(cli, ["backbones"])
    assert res.exit_code == 0, res.output
    rows = {line.split()[0]: line.split() for line in res.output.splitlines()[1:]}
    assert rows["myconv"][1:3] == ["5", "10"] and "efficientnet-lite0" in rows
    assert rows["myvec"][1:3] == ["7", "16"] and "a small vector model" in res.output
    assert "missing.onnx: no such ONNX file" in res.output
    conv = get_backbone("myconv")
    assert (conv.name, str(conv.descriptor), conv._prep.colour) == ("myconv", "mac", "bgr")
    assert get_backbone("myconv:avg").name == "myconv:avg"
    assert get_backbone("myvec").dim == 7
    with pytest.raises(BackboneError, match="myvec has no feature map to pool"):
        get_backbone("myvec:gem")
    with pytest.raises(BackboneError, match="missing.onnx: no such ONNX file"):
        get_backbone("gone")


def test_bad_config_file(home: Path) -> None:
    (home / "backbones.json").write_text("{not json")
    with pytest.raises(BackboneError, match=r"backbones.json: not valid JSON \(.* at line 1\)"):
        get_backbone("anything")
    assert any(b.name == "efficientnet-lite0" for b in list_backbones())  # listing still works
    (home / "backbones.json").write_text(json.dumps({"x": {"path": "m.onnx", "colour": "grey"}}))
    with pytest.raises(BackboneError, match=r"backbones.json: 'x': option colour='grey': expected rgb or bgr"):
        get_backbone("x")


def test_register_onnx_backbone(home: Path, tmp_path: Path) -> None:
    path = conv_model(tmp_path / "conv.onnx")
    info = M.register_onnx_backbone("pyconv", path, descriptor="gem")
    assert (info.dim, info.input_size, info.poolable, info.default_descriptor) == (5, 10, True, "gem")
    backbone = get_backbone("pyconv")
    assert backbone.name == "pyconv" and backbone.spec.endswith(":gem")
    assert np.allclose(backbone.embed(pixels()), get_backbone(f"onnx:{path}:gem").embed(pixels()))
    with pytest.raises(BackboneError, match="the name is taken"):
        M.register_onnx_backbone("efficientnet-lite0", path)


# --------------------------------------------------------------------------------------------------
# End to end: extract, then match with an ONNX model


def make_dataset(tmp_path: Path, make_video: Callable[..., Path]) -> None:
    """``ds`` (every third frame of a 30-frame video, a cut at 15) and ``examples`` (frames 6 and 21, cropped)."""
    video = make_video("clip.mp4", n_frames=30, fps=10, scene_starts=(0, 15))
    res = CliRunner().invoke(cli, ["extract", str(video), "-o", str(tmp_path / "ds"), "--every", "3", "-q"])
    assert res.exit_code == 0, res.output
    (tmp_path / "examples").mkdir()
    cap = cv2.VideoCapture(str(video))
    for i in range(30):
        ok, bgr = cap.read()
        assert ok
        if i in (6, 21):
            cv2.imwrite(str(tmp_path / "examples" / f"ex{i}.png"), bgr[10:110, 10:150])  # cut from the frame
    cap.release()


def match(tmp_path: Path, spec: str) -> pd.DataFrame:
    res = CliRunner().invoke(cli, ["match", "examples", "-d", "ds", "-b", spec, "--score", "cosine", "-k", "3",
                                   "-o", "run", "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["backbones"][0]["weights"].startswith("sha256:") and run["backbones"][0]["name"] == spec
    pairs = pd.read_csv(tmp_path / "run" / "pairs.csv")
    assert set(pairs["backbone"]) == {spec}
    return pairs[pairs["rank"] == 1].set_index("example")["frame_index"]


def test_match_with_an_onnx_model(tmp_path: Path, make_video: Callable[..., Path],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # A "tiny image" model: 32x32 NCHW pixels flattened, so frames that differ by their number differ.
    save(tmp_path / "model.onnx", [helper.make_node("Flatten", ["x"], ["v"])], [tensor("x", ["n", 3, 32, 32])],
         [tensor("v", ["n", 3 * 32 * 32])], {})
    make_dataset(tmp_path, make_video)
    monkeypatch.chdir(tmp_path)  # the path as typed, relative to the current folder
    top1 = match(tmp_path, "onnx:model.onnx")
    assert (top1["ex6.png"], top1["ex21.png"]) == (6, 21)


@pytest.mark.slow
def test_match_with_an_exported_keras_model(tmp_path: Path, make_video: Callable[..., Path],
                                            monkeypatch: pytest.MonkeyPatch, keras_models: dict[str, Any]) -> None:
    make_dataset(tmp_path, make_video)
    monkeypatch.chdir(tmp_path)
    top1 = match(tmp_path, f"onnx:{keras_models['maps']}:mac")
    assert top1["ex6.png"] < 15 <= top1["ex21.png"]  # random weights: the right scene
