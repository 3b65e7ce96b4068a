"""``--metric l2``: ranking by Euclidean distance between unnormalised descriptors (``IndexFlatL2``).

framesim ranks by cosine by default: the descriptors are L2-normalised and FAISS takes inner products.
Some pipelines (seed 004) rank by the Euclidean distance of the descriptors as the network gives them,
where a descriptor's length counts too. ``UnnormalisedVectors`` is the backbone seen that way: the same
network and pooling, without the final normalisation, cached apart from the normalised vectors (its
spec ends in ``@raw``). With it ``scoring.l2_pairs`` searches an L2 index of the frames and gives each
pair its ``distance`` (Euclidean, not FAISS' squared one; smaller = closer), a ``score`` that keeps the
pairs contract's "higher = more similar" (``1 / (1 + distance)``, the same order) and the ``cosine``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from framesim.backbones.base import Backbone

METRICS = ("cosine", "l2")
RAW_SUFFIX = "@raw"


class UnnormalisedVectors(Backbone):
    """``backbone`` whose ``embed`` returns the descriptor before L2 normalisation."""

    def __init__(self, backbone: Backbone) -> None:
        self.inner = backbone
        self.name = backbone.name
        self.input_size, self.dim = backbone.input_size, backbone.dim
        self.weights, self.runtime = backbone.weights, backbone.runtime
        self.recipe = backbone.recipe

    @property
    def spec(self) -> str:
        return self.inner.spec + RAW_SUFFIX

    def resize(self, image: np.ndarray) -> np.ndarray:
        return self.inner.resize(image)

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.preprocess(batch)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self.inner._forward(batch)

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        return self.inner.embed_unnormalised(images)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    return metric


def distance_score(distance: np.ndarray) -> np.ndarray:
    """The pairs' ``score`` under L2: in (0, 1], 1 for identical vectors, ordered as the distance."""
    return 1.0 / (1.0 + np.asarray(distance, np.float64))
