"""Shared plumbing for backbones implemented as Keras models."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np

from framesim.backbones.base import Backbone
from framesim.backbones.pooling import MULTI_SCALES, Descriptor, describe
from framesim.backbones.runtime import THREADS_ENV, Runner, TensorFlowRunner, check_runtime, select_runner
from framesim.backbones.runtime_index import open_indexed, record

#: images of the fixed batch each converted runtime is checked on against TensorFlow
CHECK_IMAGES = 3


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter unless the user asked for it; apply ``FRAMESIM_THREADS``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    # TensorFlow reads these when it starts. Its default (as many threads as cores, for both pools)
    # was not beaten by other settings on 2 cores, so only an explicit override is passed on.
    threads = os.environ.get(THREADS_ENV, "").strip()
    if threads:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", threads)


class KerasBackbone(Backbone):
    """A backbone whose Keras ``model`` maps preprocessed input to its last activation map (n, h, w, C).

    ``descriptor`` (see ``pooling``) turns the map into the embedding, so every Keras backbone offers
    the same poolings. The model must accept any input size (``ms`` runs it at other scales).
    ``runtime`` runs the model (see ``runtime``): ``"auto"``, ``"tensorflow"``, ``"onnxruntime"`` or
    ``"openvino"``; the one in use is ``self.runtime``. Subclasses call ``__init__`` last: checking a
    converted runtime embeds a fixed batch, so ``name``, ``input_size``, ``weights`` and ``preprocess``
    must work by then.

    Given ``build`` (a function returning the model) instead of ``model``, the model is built when first
    needed: a subclass whose ``_locator`` names a converted file already checked (``runtime_index``)
    then starts without TensorFlow, and builds the model (and imports TensorFlow) only for what the file
    cannot do: ``runtime="tensorflow"``, a batch size the file does not take, or ``self.model`` itself.
    """

    #: most images per network call; larger batches are split (None: run them as given). Depthwise
    #: convolutions are memory-bound: such networks run faster when one call's activations stay in cache.
    network_batch: int | None = None

    def __init__(self, model: Any = None, descriptor: Descriptor | None = None, runtime: str = "auto", *,
                 build: Callable[[], Any] | None = None) -> None:
        if (model is None) == (build is None):
            raise TypeError("KerasBackbone takes a model or a build function")
        self._model = model
        self._build = build
        self._build_lock = threading.Lock()
        self.descriptor = descriptor or Descriptor()
        self._reference = TensorFlowRunner(build=lambda: self.model)
        self._runners: dict[str, Runner] = {}
        self.set_runtime(runtime)

    @property
    def model(self) -> Any:
        """The Keras model: preprocessed batch -> activation maps (n, h, w, C); built on first use."""
        if self._model is None:
            with self._build_lock:  # embedding threads must not build it twice
                if self._model is None:
                    self._model = self._build()  # type: ignore[misc]
        return self._model

    def _locator(self) -> dict[str, Any] | None:
        """What names this model's converted file without building it (``runtime_index.make_locator``);
        None (the default): always the full path."""
        return None

    @property
    def spec(self) -> str:
        # The same for every runtime: a runtime is used only when its outputs match TensorFlow's.
        return f"{self.base_name}:{self.descriptor}"

    def set_runtime(self, runtime: str) -> None:
        """Run the model with ``runtime`` from now on (converting and checking it if needed; switching
        back to one used before is free)."""
        t0 = time.perf_counter()
        building = 0.0
        if check_runtime(runtime) not in self._runners:
            cache = not str(self.weights).startswith("random")  # random weights: never cached (see runtime)
            locator = self._locator() if cache and runtime != "tensorflow" else None
            runner = open_indexed(locator, runtime, name=self.base_name, fallback=self._reference) if locator else None
            if runner is None:
                t1 = time.perf_counter()
                model = self.model  # built now if not yet; that is not choosing the runtime, so not counted
                building = time.perf_counter() - t1
                runner = select_runner(model, runtime, name=self.base_name, check_batches=self._check_batches(),
                                       cache=cache, reference=self._reference)
                if locator:
                    record(locator, runner)
            self._runners[runtime] = runner
        self._runner = self._runners[runtime]
        #: the runtime in use: "tensorflow", "onnxruntime" or "openvino"
        self.runtime: str = self._runner.name
        #: seconds spent choosing the runtime: opening the indexed file, or loading (or converting) and
        #: checking the exported model; building the Keras model is not counted
        self.runtime_seconds = time.perf_counter() - t0 - building

    def _check_batches(self) -> list[np.ndarray]:
        """Preprocessed batches to compare runtimes on: structured and noisy images, and for a model that
        takes any size (multi-scale) the same at the largest ``ms`` scale."""
        rng = np.random.default_rng(5)
        s = self.input_size
        images = [cv2.resize(rng.integers(0, 256, (g, g, 3), dtype=np.uint8), (s, s), interpolation=cv2.INTER_CUBIC)
                  for g in (4, 24)] + [rng.integers(0, 256, (s, s, 3), dtype=np.uint8)]
        batch = self.preprocess(np.stack(images[:CHECK_IMAGES]))
        if self.model.inputs[0].shape[1] is not None:
            return [batch]
        return [batch, _resize_batch(batch, int(round(s * max(MULTI_SCALES) / 32)) * 32)]

    @property
    def runner(self) -> Runner:
        """The current runtime's network call: preprocessed batch -> maps, one call whatever the batch."""
        return self._runner

    def feature_maps(self, batch: np.ndarray) -> np.ndarray:
        """The activation maps (n, h, w, C) of a preprocessed float32 batch."""
        step = self.network_batch
        if step is None or len(batch) <= step:
            return self._runner(batch)
        return np.concatenate([self._runner(batch[i:i + step]) for i in range(0, len(batch), step)])

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return describe(self.feature_maps, batch, self.descriptor, _resize_batch)


def _resize_batch(batch: np.ndarray, side: int) -> np.ndarray:
    # Preprocessed floats: linear interpolation is right for both up- and downscaling by sqrt(2).
    interp = cv2.INTER_AREA if side < batch.shape[1] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (side, side), interpolation=interp) for im in batch])
