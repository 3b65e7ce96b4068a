"""``tiny-image``: a downscaled, zero-mean greyscale thumbnail as the embedding (Torralba et al.,
"80 million tiny images", 2008). No model, no weights: a fast baseline that catches exact and
lightly re-encoded copies and fails on crops, which is what a learnt backbone must beat."""

from __future__ import annotations

import cv2
import numpy as np

from framesim.backbones.base import Backbone, register_backbone

SIDE = 16


class TinyImageBackbone(Backbone):
    name = "tiny-image"
    input_size = 64  # resized to 64 first (cheap, area-averaged), then to SIDE in preprocess
    dim = SIDE * SIDE
    weights = "none (no learnt weights)"

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        out = np.empty((len(batch), self.dim), np.float32)
        for i, rgb in enumerate(batch):
            grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
            out[i] = cv2.resize(grey, (SIDE, SIDE), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        # Zero mean per image: invariant to brightness offsets; the later L2 norm handles contrast.
        return out - out.mean(axis=1, keepdims=True)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return batch


@register_backbone("tiny-image", dim=TinyImageBackbone.dim, input_size=TinyImageBackbone.input_size,
                   description="16x16 greyscale thumbnail, zero mean (baseline, no CNN)")
def make_tiny_image(weights: object = None) -> TinyImageBackbone:
    return TinyImageBackbone()
