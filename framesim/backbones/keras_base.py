"""Shared plumbing for backbones implemented as Keras models."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from framesim.backbones.base import Backbone
from framesim.backbones.pooling import Descriptor, describe


def quiet_tensorflow() -> None:
    """Silence TensorFlow's C++ start-up chatter unless the user asked for it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


class KerasBackbone(Backbone):
    """A backbone whose Keras ``model`` maps preprocessed input to its last activation map (n, h, w, C).

    ``descriptor`` (see ``pooling``) turns the map into the embedding, so every Keras backbone offers
    the same poolings. The model must accept any input size (``ms`` runs it at other scales).
    """

    def __init__(self, model: Any, descriptor: Descriptor | None = None) -> None:
        self.model = model
        self.descriptor = descriptor or Descriptor()
        self._call: Any = None

    @property
    def spec(self) -> str:
        return f"{self.base_name}:{self.descriptor}"

    def feature_maps(self, batch: np.ndarray) -> np.ndarray:
        """The activation maps (n, h, w, C) of a preprocessed float32 batch."""
        if self._call is None:
            import tensorflow as tf

            # One traced graph, reused for every batch of the same shape: avoids Keras' per-call
            # Python overhead (predict() builds a dataset per call).
            # Traced once for any batch and image size (multi-scale runs three sizes).
            self._call = tf.function(lambda x: self.model(x, training=False),
                                     input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
        return np.asarray(self._call(batch))

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return describe(self.feature_maps, batch, self.descriptor, _resize_batch)


def _resize_batch(batch: np.ndarray, side: int) -> np.ndarray:
    # Preprocessed floats: linear interpolation is right for both up- and downscaling by sqrt(2).
    interp = cv2.INTER_AREA if side < batch.shape[1] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (side, side), interpolation=interp) for im in batch])
