"""Fast start: a backbone whose converted model is cached and checked opens it through the runtime index
(``runtime_index``) without building the Keras model or importing TensorFlow, with the same embeddings;
a damaged or foreign index entry or file falls back to the full path; what the file cannot do (TensorFlow
runtime, other sizes, the classifier) builds the model when first needed.

The first tests use test_runtime's small network built lazily (a conversion takes about a second); the
slow ones start the real EfficientNet-Lite0 in fresh interpreters, where "tensorflow" in sys.modules
tells whether it was imported."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_runtime import CONVERTED, SmallNet, images, needs_onnxruntime

from framesim.backbones import runtime as R
from framesim.backbones import runtime_index as RI
from framesim.backbones.keras_base import KerasBackbone
from framesim.backbones.pooling import parse_descriptor

REPO = Path(__file__).resolve().parents[1]


class IndexedNet(KerasBackbone):
    """SmallNet's network, built only when needed, with weights named by a file holding the seed."""

    name = "indexed-net"
    input_size = 64
    dim = 16

    def __init__(self, weights_file: Path, descriptor: str = "gem", runtime: str = "auto") -> None:
        self.weights_file = weights_file
        self.weights = str(weights_file)
        self.builds = 0
        super().__init__(descriptor=parse_descriptor(descriptor), runtime=runtime, build=self._build_model)

    def _build_model(self) -> Any:
        self.builds += 1
        seed = int(self.weights_file.read_text())
        return SmallNet(str(self.descriptor), runtime="tensorflow", seed=seed).model

    def _locator(self) -> dict[str, Any] | None:
        side = None if self.descriptor.multiscale else self.input_size
        return RI.make_locator(self.name, side, self.weights_file, code=(Path(__file__),))

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        return (batch.astype(np.float32) - 127.0) / 128.0


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "net-weights.txt"
    path.write_text("0")
    return path


def entry_files(home: Path) -> list[Path]:
    return sorted((home / "runtimes" / "locators").glob("*.json"))


@needs_onnxruntime
@pytest.mark.parametrize("runtime", ["auto", *CONVERTED])
def test_second_start_opens_the_indexed_file_without_the_model(home: Path, weights: Path, exports: list[Path],
                                                               runtime: str) -> None:
    first = IndexedNet(weights, runtime=runtime)
    assert first.builds == 1 and len(exports) == 1 and len(entry_files(home)) == 1
    second = IndexedNet(weights, runtime=runtime)
    assert second.builds == 0 and second._model is None and len(exports) == 1
    assert second.runtime == first.runtime == (CONVERTED[0] if runtime == "auto" else runtime)
    assert 0 < second.runtime_seconds < 5
    batch = images()
    assert np.array_equal(second.embed(batch), first.embed(batch))
    assert second.builds == 0  # embedding at the file's size needs no Keras model
    weights.write_text("1")  # other weights: another locator, the full path
    assert IndexedNet(weights, runtime=runtime).builds == 1 and len(exports) == 2 and len(entry_files(home)) == 2


def _damage(home: Path, damage: str) -> None:
    (onnx,) = (home / "runtimes").glob("*.onnx")
    sidecar = onnx.with_suffix(".json")
    (entry,) = entry_files(home)
    if damage == "flipped byte in the file":
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0x55
        onnx.write_bytes(bytes(data))
    elif damage == "truncated file":
        onnx.write_bytes(onnx.read_bytes()[:1000])
    elif damage == "no sidecar":
        sidecar.unlink()
    elif damage == "garbage index":
        entry.write_text("{not json")
    elif damage == "index for another locator":  # another model's entry copied under this one's name
        text = json.loads(entry.read_text())
        text["locator"]["weights"]["sha256"] = "0" * 64
        entry.write_text(json.dumps(text))
    elif damage == "index for another key":
        text = json.loads(entry.read_text())
        text["key"] = "0" * 64
        entry.write_text(json.dumps(text))
    elif damage == "index pointing elsewhere":
        text = json.loads(entry.read_text())
        text["file"] = "../" + onnx.name
        entry.write_text(json.dumps(text))
    elif damage == "sidecar lost the check":
        meta = json.loads(sidecar.read_text())
        meta["checks"] = {}
        sidecar.write_text(json.dumps(meta))
    else:
        raise AssertionError(damage)


FILE_DAMAGES = ["flipped byte in the file", "truncated file", "no sidecar"]
INDEX_DAMAGES = ["garbage index", "index for another locator", "index for another key", "index pointing elsewhere",
                 "sidecar lost the check"]


@needs_onnxruntime
@pytest.mark.parametrize("damage", FILE_DAMAGES + INDEX_DAMAGES)
def test_damaged_file_or_index_falls_back_to_the_full_path(home: Path, weights: Path, exports: list[Path],
                                                           damage: str, caplog: pytest.LogCaptureFixture) -> None:
    batch = images(3)
    want = IndexedNet(weights, runtime="onnxruntime").embed(batch)
    _damage(home, damage)
    exports.clear()
    with caplog.at_level(logging.WARNING):
        again = IndexedNet(weights, runtime="onnxruntime")
    assert again.builds == 1 and again.runtime == "onnxruntime"  # the full path, never the damaged file
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    if damage in FILE_DAMAGES:  # rebuilt, with today's warning
        assert len(exports) == 1 and any("rebuilding" in w for w in warnings), warnings
    else:  # the file was fine: found by its key, nothing to warn about
        assert not exports and not warnings, warnings
    assert np.array_equal(again.embed(batch), want)
    fast = IndexedNet(weights, runtime="onnxruntime")  # the full path wrote the entry again
    assert fast.builds == 0 and np.array_equal(fast.embed(batch), want)


@needs_onnxruntime
def test_what_the_file_cannot_do_builds_the_model_when_first_needed(home: Path, weights: Path) -> None:
    reference = IndexedNet(weights, runtime="tensorflow")
    assert reference.builds == 1 and not entry_files(home)  # TensorFlow: no converted file, no entry
    IndexedNet(weights, runtime="onnxruntime")
    bb = IndexedNet(weights, runtime="onnxruntime")
    assert bb.builds == 0
    x = bb.preprocess(np.stack(images(2)[:1] * 2)[:, :48, :48])  # 48 x 48: the file takes 64 x 64 only
    np.testing.assert_allclose(bb.feature_maps(x), reference.feature_maps(x), atol=1e-6)
    assert bb.builds == 1 and bb.runtime == "onnxruntime"
    batch = images()
    converted = bb.embed(batch)
    bb.set_runtime("tensorflow")
    assert bb.runtime == "tensorflow" and bb.builds == 1
    assert np.abs(bb.embed(batch) - converted).max() <= 1e-5
    bb.set_runtime("onnxruntime")
    assert np.array_equal(bb.embed(batch), converted)


@needs_onnxruntime
def test_multiscale_has_its_own_any_size_file(home: Path, weights: Path) -> None:
    first = IndexedNet(weights, "avg+ms", runtime="onnxruntime")
    second = IndexedNet(weights, "avg+ms", runtime="onnxruntime")
    assert second.builds == 0 and second.runner.spatial == (None, None)
    batch = images()
    assert np.array_equal(second.embed(batch), first.embed(batch))  # three scales, no TensorFlow
    assert second.builds == 0
    assert IndexedNet(weights, "gem", runtime="onnxruntime").builds == 1  # the fixed-size file is another


@pytest.mark.skipif(len(CONVERTED) < 2, reason="needs onnxruntime and openvino")
def test_auto_follows_the_recorded_checks(home: Path, weights: Path) -> None:
    IndexedNet(weights, runtime="onnxruntime")
    assert IndexedNet(weights, runtime="openvino").builds == 1  # not checked yet: the full path checks it
    assert IndexedNet(weights, runtime="openvino").builds == 0
    (sidecar,) = (home / "runtimes").glob("*.json")
    meta = json.loads(sidecar.read_text())
    label = f"onnxruntime {R._version('onnxruntime')}"
    meta["checks"][label] = {"passed": False, "error": "made to fail"}
    sidecar.write_text(json.dumps(meta))
    auto = IndexedNet(weights, runtime="auto")  # as the full path would: onnxruntime failed, openvino passed
    assert auto.builds == 0 and auto.runtime == "openvino"
    assert IndexedNet(weights, runtime="onnxruntime").runtime == "tensorflow"  # failed: the full path says so


def test_backbones_without_a_locator_or_with_random_weights_never_index(home: Path, weights: Path) -> None:
    SmallNet(runtime=CONVERTED[0] if CONVERTED else "tensorflow")  # no _locator: the full path only
    SmallNet(weights="random (weights=None)")
    assert not entry_files(home)
    assert RI.make_locator("x", 64, weights.with_name("missing"), code=()) is None


@pytest.mark.parametrize("name", ["vgg16", "resnet50"])
def test_keras_apps_preprocess_is_keras_caffe_preprocess(name: str) -> None:
    import keras

    from framesim.backbones.keras_apps import SPECS, KerasApplicationBackbone

    batch = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    keras_version = getattr(keras.applications, SPECS[name].module).preprocess_input(batch.astype(np.float32))
    ours = KerasApplicationBackbone.preprocess(None, batch)  # type: ignore[arg-type]
    assert ours.dtype == np.float32 and np.array_equal(ours, keras_version)


# --------------------------------------------------------------------------------------------------
# The real EfficientNet-Lite0 in fresh interpreters (slow)


CHILD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np
    from framesim.backbones import get_backbone
    spec, runtime, out, extra = sys.argv[1:5]
    bb = get_backbone(spec, runtime=runtime)
    rng = np.random.default_rng(3)
    emb = bb.embed([rng.integers(0, 256, (120 + 20 * i, 160, 3), dtype=np.uint8) for i in range(3)])
    info = {"seconds": time.perf_counter() - t0, "runtime": bb.runtime, "runtime_seconds": bb.runtime_seconds,
            "tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules}
    np.save(out, emb)
    if extra == "lazy":  # what the converted file cannot do, after embedding without TensorFlow
        small = bb.preprocess(rng.integers(0, 256, (2, 160, 160, 3), dtype=np.uint8))  # the file takes 224
        info["other_size_diff"] = float(np.abs(bb.feature_maps(small) - bb._reference(small)).max())
        info["tensorflow_after"] = "tensorflow" in sys.modules
        info["classes"] = list(bb.classify(np.zeros((1, 224, 224, 3), np.uint8)).shape)
        bb.set_runtime("tensorflow")
        rng = np.random.default_rng(3)
        tf_emb = bb.embed([rng.integers(0, 256, (120 + 20 * i, 160, 3), dtype=np.uint8) for i in range(3)])
        info["tensorflow_diff"] = float(np.abs(tf_emb - emb).max())
        info["runtime_after"] = bb.runtime
    print(json.dumps(info))
""")


def _start(home: Path, out: Path, spec: str = "efficientnet-lite0", runtime: str = "auto",
           extra: str = "") -> tuple[dict[str, Any], np.ndarray, str]:
    """Run CHILD in a fresh interpreter; return (what it says, its embeddings, its stderr)."""
    env = {**os.environ, "FRAMESIM_HOME": str(home), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", CHILD, spec, runtime, str(out), extra], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), np.load(out), done.stderr


def _require_lite0() -> None:
    from framesim.backbones.efficientnet_lite import VARIANTS, weights_available

    if not weights_available(VARIANTS["efficientnet-lite0"]):
        pytest.skip("efficientnet-lite0 weights not installed")
    if not CONVERTED:
        pytest.skip("neither onnxruntime nor openvino installed")


@pytest.fixture(scope="module")
def lite0_first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], np.ndarray]:
    """A FRAMESIM_HOME where one start converted and checked EfficientNet-Lite0: (home, info, embeddings)."""
    _require_lite0()
    tmp = tmp_path_factory.mktemp("lite0-fast-start")
    info, emb, _ = _start(tmp / "home", tmp / "first.npy")
    return tmp / "home", info, emb


@pytest.mark.slow
def test_lite0_second_start_skips_tensorflow(lite0_first: tuple[Path, dict[str, Any], np.ndarray],
                                             tmp_path: Path) -> None:
    home, first, want = lite0_first
    second, got, _ = _start(home, tmp_path / "second.npy")
    print(f"\nefficientnet-lite0 start-up + first embed: converting {first['seconds']:.2f} s "
          f"(tensorflow imported: {first['tensorflow']}), cached {second['seconds']:.2f} s "
          f"(tensorflow imported: {second['tensorflow']}); runtime {second['runtime']} "
          f"ready in {second['runtime_seconds']:.2f} s")
    assert first["tensorflow"] and not second["tensorflow"] and not second["keras"]
    assert second["runtime"] == first["runtime"] == CONVERTED[0]
    assert np.array_equal(got, want)
    assert second["seconds"] < first["seconds"]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["flipped byte in the file", "garbage index"])
def test_lite0_damaged_file_or_index_falls_back(lite0_first: tuple[Path, dict[str, Any], np.ndarray],
                                                tmp_path: Path, damage: str) -> None:
    home, _, want = lite0_first
    shutil.copytree(home, tmp_path / "home")  # the module's home stays intact
    _damage(tmp_path / "home", damage)
    info, got, stderr = _start(tmp_path / "home", tmp_path / "fallback.npy")
    assert info["tensorflow"] and info["runtime"] == CONVERTED[0]
    assert ("rebuilding" in stderr) == (damage == "flipped byte in the file")
    assert np.array_equal(got, want)
    info, got, _ = _start(tmp_path / "home", tmp_path / "fast.npy")  # the full path wrote the entry again
    assert not info["tensorflow"] and np.array_equal(got, want)


@pytest.mark.slow
def test_lite0_tensorflow_loaded_lazily(lite0_first: tuple[Path, dict[str, Any], np.ndarray],
                                        tmp_path: Path) -> None:
    home, _, want = lite0_first
    info, got, _ = _start(home, tmp_path / "lazy.npy", extra="lazy")
    assert not info["tensorflow"] and np.array_equal(got, want)
    assert info["tensorflow_after"] and info["other_size_diff"] <= 1e-6 and info["classes"] == [1, 1000]
    assert info["runtime_after"] == "tensorflow" and info["tensorflow_diff"] <= R.VERIFY_TOLERANCE


@pytest.mark.slow
def test_lite0_multiscale_and_tensorflow_runtime(lite0_first: tuple[Path, dict[str, Any], np.ndarray],
                                                 tmp_path: Path) -> None:
    home, _, want = lite0_first
    reference, tf_emb, _ = _start(home, tmp_path / "tf.npy", runtime="tensorflow")
    assert reference["runtime"] == "tensorflow" and np.abs(tf_emb - want).max() <= R.VERIFY_TOLERANCE
    spec = "efficientnet-lite0:gem+ms"
    first, ms_want, _ = _start(home, tmp_path / "ms1.npy", spec=spec)  # its own any-size file
    second, ms_got, _ = _start(home, tmp_path / "ms2.npy", spec=spec)
    assert first["tensorflow"] and not second["tensorflow"] and second["runtime"] == CONVERTED[0]
    assert np.array_equal(ms_got, ms_want) and not np.allclose(ms_got, want, atol=1e-3)


@pytest.mark.slow
@needs_onnxruntime
def test_keras_app_with_a_weights_file_starts_from_the_index(home: Path, tmp_path: Path) -> None:
    from framesim.backbones import get_backbone

    weights_file = tmp_path / "vgg16_notop.weights.h5"
    get_backbone("vgg16", weights=None).model.save_weights(weights_file)
    first = get_backbone("vgg16", weights=str(weights_file), runtime="onnxruntime")
    second = get_backbone("vgg16", weights=str(weights_file), runtime="onnxruntime")
    assert first._model is not None and second._model is None and second.runtime == "onnxruntime"
    batch = np.random.default_rng(2).integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    assert np.array_equal(second.embed(batch), first.embed(batch))
    assert second._model is None
