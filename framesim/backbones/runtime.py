"""Inference runtimes for the Keras backbones: TensorFlow (the reference) or the same network exported
to ONNX and run by ONNX Runtime or OpenVINO, with the same outputs: for EfficientNet-Lite0 on a 2-core
CPU, ONNX Runtime gave 1.6x TensorFlow's images/s at TensorFlow's best batch size (``python -m bench
backbones``).

Route: Keras' own ONNX export (``model.export(format="onnx")``, which drives tf2onnx) writes one file per
network; ONNX Runtime runs it, and so does OpenVINO through its ONNX reader (OpenVINO's direct conversion
of the Keras model gave feature maps off by up to 0.05, so it is not used). The batch axis is dynamic;
the spatial axes are fixed when the Keras model's are, so a batch of another size goes to TensorFlow.

Converted files are cached as ``$FRAMESIM_HOME/runtimes/<backbone>-<side>-<key>.onnx`` plus a JSON
sidecar. The key hashes the weights, the model config (layer names left out: Keras numbers them per
process) and the versions of TensorFlow, Keras and the converters. The sidecar holds the file's sha256,
so a damaged or foreign file is rebuilt, and, per runtime and version, the result of the one-time check
against TensorFlow: the largest difference of the L2-normalised pooled embeddings (every pooling) on a
fixed batch must stay within ``VERIFY_TOLERANCE``; otherwise a one-line warning and TensorFlow.
Models with random weights (``weights=None``) are converted only when a runtime is asked for by name,
into a temporary file: their key never repeats, so caching them would only fill the disk.

``"auto"`` takes the first runtime of ``AUTO_ORDER`` that is installed and passes the check, else
TensorFlow with a warning. Threads: ``FRAMESIM_THREADS`` if set, else the CPUs this process may use.
Finding a file by its key needs the built model; ``runtime_index`` finds one already checked without
TensorFlow (the TensorFlow runner then builds its model only if it is called).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from framesim.backbones.base import BackboneError, l2_normalize
from framesim.backbones.pooling import POOLINGS, Descriptor

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "tensorflow", "onnxruntime", "openvino")
#: what ``"auto"`` tries, fastest first on EfficientNet-Lite0 (bench/backbones.py)
AUTO_ORDER = ("onnxruntime", "openvino")
#: largest allowed difference of L2-normalised embeddings between a runtime and TensorFlow
VERIFY_TOLERANCE = 1e-4
THREADS_ENV = "FRAMESIM_THREADS"
#: bump when the exported file or the sidecar changes meaning; older files are then rebuilt
CACHE_FORMAT = 1
ONNX_OPSET = 17
#: packages a converted runtime needs: to run the file, and to write it
RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
CONVERTER_PACKAGES = ("tf2onnx", "onnx")


class RuntimeUnavailable(RuntimeError):
    """A runtime cannot be used here: package missing, conversion failed or outputs differ from TF."""


def cpu_threads() -> int:
    """Threads for inference: ``$FRAMESIM_THREADS``, else the CPUs this process may run on."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            threads = 0
        if threads < 1:
            raise BackboneError(f"{THREADS_ENV}={value!r}: expected a positive whole number")
        return threads
    try:
        return len(os.sched_getaffinity(0))  # respects taskset and container CPU sets
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_runtime(runtime: str) -> str:
    """Return ``runtime`` if it names a runtime, else raise BackboneError listing them."""
    if runtime not in RUNTIMES:
        raise BackboneError(f"unknown runtime {runtime!r}; known: {', '.join(RUNTIMES)}")
    return runtime


def installed(runtime: str) -> bool:
    """True when ``runtime``'s package is importable (found without importing it)."""
    return runtime == "tensorflow" or importlib.util.find_spec(RUNTIME_PACKAGES[runtime]) is not None


# --------------------------------------------------------------------------------------------------
# Runners: preprocessed float32 batch (n, h, w, 3) -> feature maps (n, h', w', C)


class TensorFlowRunner:
    """The Keras model through one ``tf.function`` (the reference path). Given ``build`` instead of a
    model, it builds the model (importing TensorFlow) when first needed."""

    name = "tensorflow"

    def __init__(self, model: Any = None, *, build: Callable[[], Any] | None = None) -> None:
        if (model is None) == (build is None):
            raise TypeError("TensorFlowRunner takes a model or a build function")
        self._model = model
        self._build = build
        self._call: Any = None

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = self._build()  # type: ignore[misc]
        return self._model

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if self._call is None:
            model = self.model  # built first: building sets TensorFlow's environment before it starts
            import tensorflow as tf

            # One traced graph for any batch and image size (multi-scale runs three sizes); avoids
            # Keras' per-call Python overhead (predict() builds a dataset per call).
            self._call = tf.function(lambda x: model(x, training=False),
                                     input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
        return np.asarray(self._call(batch))


class ConvertedRunner:
    """An exported network in ONNX Runtime or OpenVINO; batches of a size the file does not take
    (fixed spatial axes) go to ``fallback``."""

    def __init__(self, name: str, path: Path, spatial: tuple[int | None, int | None], fallback: TensorFlowRunner,
                 threads: int) -> None:
        self.name = name
        self.spatial = spatial
        self.fallback = fallback
        self.threads = threads
        #: the cache entry ``path`` belongs to (None: a temporary file); set by ``_converted_runner``
        self.stored: ConvertedModel | None = None
        self._run = _open_onnxruntime(path, threads) if name == "onnxruntime" else _open_openvino(path, threads)

    def accepts(self, shape: Sequence[int]) -> bool:
        return all(want is None or want == got for want, got in zip(self.spatial, shape[1:3], strict=True))

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.accepts(batch.shape):
            return self.fallback(batch)
        return self._run(np.ascontiguousarray(batch, dtype=np.float32))


def onnxruntime_session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session for ``path`` with framesim's settings (the converted backbones' and
    ``onnx_model``'s)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # a chain of convolutions: nothing to run side by side
    # Idle threads sleep instead of spinning: spinning takes CPU from the decoding threads next to us
    # and from other processes, and was not faster on a loaded 2-core machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _open_onnxruntime(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    session = onnxruntime_session(path, threads)
    input_name = session.get_inputs()[0].name
    return lambda batch: session.run(None, {input_name: batch})[0]


def _open_openvino(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads,
        "PERFORMANCE_HINT": "LATENCY",
        # f32 always: on CPUs with bf16 units OpenVINO would otherwise compute in bf16 (other outputs).
        "INFERENCE_PRECISION_HINT": "f32",
        "ENABLE_CPU_PINNING": False,  # pinning hurts when the cores are shared
    })
    request = compiled.create_infer_request()
    lock = threading.Lock()  # one infer request: not to be used by two threads at once

    def run(batch: np.ndarray) -> np.ndarray:
        with lock:
            return np.asarray(request.infer({0: batch})[0])

    return run


Runner = TensorFlowRunner | ConvertedRunner


# --------------------------------------------------------------------------------------------------
# Choosing a runtime


def select_runner(model: Any, runtime: str, *, name: str, check_batches: Sequence[np.ndarray],
                  cache: bool = True, reference: TensorFlowRunner | None = None) -> Runner:
    """The runner for ``runtime`` (see the module docstring); never fails over to a slower path silently.

    ``name`` labels messages and cache files; ``check_batches`` are preprocessed batches to compare
    against TensorFlow; ``cache=False`` (random weights): ``"auto"`` means TensorFlow, and a runtime
    asked for by name is converted into a temporary file. A runtime asked for by name whose package is
    missing raises BackboneError; one that cannot convert or whose outputs differ warns and gives TF.
    ``reference``: the model's TensorFlow runner, if there is one already (saves tracing it again).
    """
    reference = reference or TensorFlowRunner(model)
    check_runtime(runtime)
    if runtime == "tensorflow" or (runtime == "auto" and not cache):
        return reference
    problems = []
    for candidate in AUTO_ORDER if runtime == "auto" else (runtime,):
        missing = [p for p in (RUNTIME_PACKAGES[candidate], *CONVERTER_PACKAGES) if importlib.util.find_spec(p) is None]
        if missing:
            if runtime != "auto":
                raise BackboneError(f"{name}: runtime {candidate} needs `pip install {' '.join(missing)}`")
            problems.append(f"{candidate} not installed (pip install {' '.join(missing)})")
            continue
        try:
            return _converted_runner(model, candidate, name, reference, check_batches, cache)
        except RuntimeUnavailable as exc:
            problems.append(f"{candidate}: {exc}")
    log.warning("%s: using TensorFlow: %s", name, "; ".join(problems))
    return reference


def _converted_runner(model: Any, runtime: str, name: str, reference: TensorFlowRunner,
                      check_batches: Sequence[np.ndarray], cache: bool) -> ConvertedRunner:
    spatial = tuple(model.inputs[0].shape[1:3])
    threads = cpu_threads()
    stored = ConvertedModel(model, name) if cache else None
    try:
        rebuilt = stored.ensure() if stored else False
    except OSError as exc:  # read-only or full home: convert every time instead
        log.warning("%s: cannot cache the converted model (%s)", name, exc)
        stored = None
    if stored is None:
        with tempfile.TemporaryDirectory(prefix="framesim-onnx-") as tmp:
            path = Path(tmp) / "model.onnx"
            _export_onnx(model, path)
            runner = _open(runtime, path, spatial, reference, threads)  # reads the whole file
        _verify(runner, reference, check_batches)
        return runner
    try:
        runner = _open(runtime, stored.path, spatial, reference, threads)
    except RuntimeUnavailable:
        if rebuilt:
            raise
        log.warning("%s: rebuilding %s: %s cannot load it", name, stored.path, runtime)
        try:
            stored.ensure(force=True)
        except OSError as exc:
            raise RuntimeUnavailable(f"cannot rewrite {stored.path}: {exc}") from exc
        runner = _open(runtime, stored.path, spatial, reference, threads)
    stored.check(runtime, lambda: _verify(runner, reference, check_batches))
    runner.stored = stored
    return runner


def _open(runtime: str, path: Path, spatial: tuple[Any, ...], reference: TensorFlowRunner,
          threads: int) -> ConvertedRunner:
    try:
        return ConvertedRunner(runtime, path, spatial, reference, threads)  # type: ignore[arg-type]
    except Exception as exc:  # each runtime raises its own kinds for unreadable files
        raise RuntimeUnavailable(f"cannot load the converted model ({type(exc).__name__}: {exc})") from exc


def embedding_difference(reference_maps: np.ndarray, maps: np.ndarray) -> float:
    """Largest absolute difference between the L2-normalised pooled vectors of two sets of feature maps,
    over every pooling (inf if the shapes differ)."""
    if reference_maps.shape != maps.shape:
        return float("inf")
    worst = 0.0
    for pooling in POOLINGS:
        a, b = (l2_normalize(Descriptor(pooling).pool(m)) for m in (reference_maps, maps))
        worst = max(worst, float(np.abs(a - b).max(initial=0.0)))
    return worst if np.isfinite(maps).all() else float("inf")


def _verify(runner: ConvertedRunner, reference: TensorFlowRunner, check_batches: Sequence[np.ndarray]
            ) -> dict[str, Any]:
    """Compare ``runner`` with TensorFlow on ``check_batches``; raise RuntimeUnavailable if they differ."""
    embedding_diff = map_diff = 0.0
    for batch in check_batches:
        want = reference(batch)
        try:
            got = runner(batch)
        except Exception as exc:  # a file that loads but cannot run: each runtime raises its own kinds
            raise RuntimeUnavailable(f"cannot run the converted model ({type(exc).__name__}: {exc})") from exc
        embedding_diff = max(embedding_diff, embedding_difference(want, got))
        map_diff = max(map_diff, float(np.abs(want - got).max()) if want.shape == got.shape else float("inf"))
    result = {"embedding_max_abs_diff": embedding_diff, "map_max_abs_diff": map_diff,
              "passed": embedding_diff <= VERIFY_TOLERANCE}
    if not result["passed"]:
        raise RuntimeUnavailable(f"embeddings differ from TensorFlow's by {embedding_diff:.2g} "
                                 f"(> {VERIFY_TOLERANCE:g})")
    return result


# --------------------------------------------------------------------------------------------------
# The converted-model cache


class ConvertedModel:
    """The cached ONNX export of one Keras model and its sidecar (see the module docstring)."""

    def __init__(self, model: Any, name: str) -> None:
        from framesim.backbones.efficientnet_lite import framesim_home  # lazily: that module imports this one

        self.model = model
        self.key = model_key(model)
        side = model.inputs[0].shape[1]
        stem = f"{name}-{side or 'any'}-{self.key[:20]}"
        self.path = framesim_home() / "runtimes" / f"{stem}.onnx"
        self.meta_path = self.path.with_suffix(".json")
        self.meta: dict[str, Any] = {}

    def ensure(self, force: bool = False) -> bool:
        """Make sure an intact, current file is there; return True if it was (re)built now."""
        if not force:
            try:
                self.meta = self._read_meta()
                return False
            except (OSError, ValueError) as exc:
                if self.path.exists() or self.meta_path.exists():
                    log.warning("%s: rebuilding the converted model: %s", self.path.name, exc)
        from framesim._io import atomic_path, write_json  # lazily: framesim._io imports pandas

        with tempfile.TemporaryDirectory(prefix="framesim-onnx-") as tmp:
            exported = Path(tmp) / "model.onnx"
            _export_onnx(self.model, exported)
            with atomic_path(self.path) as target:
                shutil.copyfile(exported, target)
        self.meta = {"format": CACHE_FORMAT, "key": self.key, "sha256": _sha256(self.path),
                     "versions": converter_versions(), "checks": {}}
        write_json(self.meta_path, self.meta)
        return True

    def _read_meta(self) -> dict[str, Any]:
        meta = json.loads(self.meta_path.read_text())
        if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT or meta.get("key") != self.key:
            raise ValueError("sidecar is for another model or format")
        if meta.get("sha256") != _sha256(self.path):
            raise ValueError("file does not match its recorded sha256 (damaged or replaced)")
        return meta

    def check(self, runtime: str, verify: Callable[[], dict[str, Any]]) -> None:
        """Run ``verify`` once per runtime version and remember the result; raise if it failed."""
        label = f"{runtime} {_version(RUNTIME_PACKAGES[runtime])}"
        checks = self.meta.setdefault("checks", {})
        if label in checks:
            if not checks[label].get("passed"):
                raise RuntimeUnavailable(f"embeddings differ from TensorFlow's by "
                                         f"{checks[label].get('embedding_max_abs_diff')} (checked before)")
            return
        try:
            checks[label] = verify()
        except RuntimeUnavailable as exc:
            checks[label] = {"passed": False, "error": str(exc)}
            raise
        finally:
            from framesim._io import write_json

            with contextlib.suppress(OSError):  # read-only home: checked again next time, no harm
                write_json(self.meta_path, self.meta)


def converter_versions() -> dict[str, str | None]:
    return {p: _version(p) for p in ("tensorflow", "keras", *CONVERTER_PACKAGES)}


def _version(package: str) -> str | None:
    if package == "tensorflow":  # installed as tensorflow-cpu on x86-64
        import tensorflow as tf

        return str(tf.__version__)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_key(model: Any) -> str:
    """sha256 of what the exported file depends on: weights, config, input shape, library versions."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, "opset": ONNX_OPSET, "versions": converter_versions(),
                         "input": list(model.inputs[0].shape), "config": _config_without_names(model)},
                        sort_keys=True, default=str).encode())
    for weight in model.weights:
        arr = np.ascontiguousarray(np.asarray(weight))
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _config_without_names(model: Any) -> Any:
    # Keras numbers unnamed layers per process ("input_layer_3"), so names are replaced by their position.
    names = {layer.name: f"#{i}" for i, layer in enumerate(model.layers)}
    names[model.name] = "#model"

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return names.get(value, value) if isinstance(value, str) else value

    return strip(model.get_config())


def _sha256(path: Path) -> str:
    from framesim._io import sha256_file

    return sha256_file(path)


def _export_onnx(model: Any, path: Path) -> None:
    """Keras' ONNX export (tf2onnx) with a dynamic batch axis; RuntimeUnavailable if it fails."""
    import tensorflow as tf

    spec = tf.TensorSpec((None, *model.inputs[0].shape[1:]), tf.float32, name="image")
    try:
        with warnings.catch_warnings(), _quiet("tf2onnx"):
            warnings.simplefilter("ignore")  # tf2onnx's numpy-2 deprecations, Keras' input-structure notes
            model.export(str(path), format="onnx", verbose=False, input_signature=[spec], opset_version=ONNX_OPSET)
    except Exception as exc:  # the converter raises anything from ValueError to its own kinds
        raise RuntimeUnavailable(f"ONNX export failed ({type(exc).__name__}: {exc})") from exc


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
