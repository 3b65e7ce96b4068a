"""Shared plumbing for backbones implemented as Keras models."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from framesim.backbones.base import Backbone


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter unless the user asked for it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


class KerasBackbone(Backbone):
    """A backbone whose ``_forward`` is a Keras model mapping preprocessed input to (n, dim)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self._call: Any = None

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if self._call is None:
            import tensorflow as tf

            # One traced graph, reused for every batch of the same shape: avoids Keras' per-call
            # Python overhead (predict() builds a dataset per call).
            self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True)
        return np.asarray(self._call(batch))
