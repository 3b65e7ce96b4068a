"""VGG16, ResNet50 and ResNet101 from ``keras.applications``: ImageNet features of the last conv block
(VGG16: block5_pool, 512 channels; ResNet: conv5 output, 2048), pooled by the spec's descriptor
(``pooling``; default global average, as before: GeM was not measured for these without their weights).

Weights: ``"imagenet"`` goes through Keras' own download and cache (``$KERAS_HOME/models``, default
``~/.keras/models``), which needs internet the first time; ``weights=FILE`` loads a local ``.h5`` file
(the same "notop" file Keras would download); ``weights=None`` gives random weights (tests, plumbing).
The Keras model is built when first needed: with a converted runtime found in ``runtime_index`` (keyed by
the weights file's sha256) that is never, and TensorFlow is not imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from framesim.backbones.base import BackboneError, register_backbone
from framesim.backbones.keras_base import KerasBackbone, quiet_tensorflow
from framesim.backbones.pooling import Descriptor, parse_descriptor
from framesim.backbones.runtime_index import make_locator

WEIGHTS_BASE_URL = "https://storage.googleapis.com/tensorflow/keras-applications"
DEFAULT_DESCRIPTOR = Descriptor("avg")
#: the ImageNet mean in BGR order that Keras' "caffe" preprocess_input (VGG, ResNet) subtracts
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], np.float32)


@dataclass(frozen=True)
class KerasAppSpec:
    name: str
    module: str  # keras.applications submodule that holds preprocess_input
    constructor: str
    dim: int
    notop_file: str  # file name Keras caches under $KERAS_HOME/models
    url_dir: str


SPECS = {
    spec.name: spec
    for spec in [
        KerasAppSpec("vgg16", "vgg16", "VGG16", 512,
                     "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", "vgg16"),
        KerasAppSpec("resnet50", "resnet", "ResNet50", 2048,
                     "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet"),
        KerasAppSpec("resnet101", "resnet", "ResNet101", 2048,
                     "resnet101_weights_tf_dim_ordering_tf_kernels_notop.h5", "resnet"),
    ]
}


def keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()


def cached_weights_path(spec: KerasAppSpec) -> Path:
    return keras_home() / "models" / spec.notop_file


def weights_url(spec: KerasAppSpec) -> str:
    return f"{WEIGHTS_BASE_URL}/{spec.url_dir}/{spec.notop_file}"


class KerasApplicationBackbone(KerasBackbone):
    input_size = 224

    def __init__(self, spec: KerasAppSpec, weights: str | os.PathLike[str] | None = "imagenet",
                 descriptor: Descriptor | str | None = None, runtime: str = "auto") -> None:
        self.name = spec.name
        self.dim = spec.dim
        self._spec = spec
        self._keras_weights: str | None
        if weights is None:
            self._keras_weights, self.weights = None, "random (weights=None)"
        elif str(weights) == "imagenet":
            self._keras_weights, self.weights = "imagenet", "imagenet"
        else:
            path = Path(weights)
            if not path.is_file():
                raise BackboneError(f"{spec.name}: weights file {path} does not exist")
            self._keras_weights, self.weights = str(path), str(path)
        super().__init__(descriptor=parse_descriptor(descriptor, DEFAULT_DESCRIPTOR), runtime=runtime,
                         build=self._build_model)

    def _side(self) -> int | None:
        return None if self.descriptor.multiscale else self.input_size  # any size for multi-scale

    def _build_model(self) -> Any:
        quiet_tensorflow()
        import keras

        spec, keras_weights = self._spec, self._keras_weights
        constructor = getattr(keras.applications, spec.constructor)
        side = self._side()
        try:
            # pooling=None: the model ends at the last conv block's map; the descriptor pools it.
            return constructor(include_top=False, weights=keras_weights, pooling=None, input_shape=(side, side, 3))
        except Exception as exc:  # Keras raises bare Exception on a failed download
            if keras_weights == "imagenet":
                raise BackboneError(self._offline_help(exc)) from exc
            raise BackboneError(f"{spec.name}: cannot load weights {keras_weights}: {exc}") from exc

    def _locator(self) -> dict[str, Any] | None:
        if self._keras_weights is None:
            return None
        path = cached_weights_path(self._spec) if self._keras_weights == "imagenet" else Path(self._keras_weights)
        if not path.is_file():
            return None  # not downloaded yet: the full path downloads it
        return make_locator(self._spec.name, self._side(), path, code=(Path(__file__),))

    def _offline_help(self, exc: Exception) -> str:
        spec = self._spec
        return (
            f"{spec.name}: could not get the ImageNet weights ({type(exc).__name__}: {exc}). "
            f"Without internet, download {weights_url(spec)} on another machine and either pass "
            f"--weights FILE or copy it to {cached_weights_path(spec)} (KERAS_HOME is respected)."
        )

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        # Keras' preprocess_input for VGG/ResNet ("caffe" mode, channels last): RGB 0..255 -> BGR minus the
        # mean, in float32. In numpy (the same numbers) so that a runtime from the index needs no Keras.
        return batch[..., ::-1].astype(np.float32) - CAFFE_MEAN_BGR


def _factory(spec: KerasAppSpec) -> Callable[..., KerasApplicationBackbone]:
    def make(weights: str | os.PathLike[str] | None = "imagenet", descriptor: Descriptor | str | None = None,
             runtime: str = "auto") -> KerasApplicationBackbone:
        return KerasApplicationBackbone(spec, weights=weights, descriptor=descriptor, runtime=runtime)

    return make


for _spec in SPECS.values():
    register_backbone(
        _spec.name,
        dim=_spec.dim,
        input_size=KerasApplicationBackbone.input_size,
        description=f"keras.applications.{_spec.constructor}, ImageNet; global average pooling, "
                    f"or :gem, :mac, :rmac, :gemP, +flip, +ms",
        weights_available=(lambda s=_spec: cached_weights_path(s).is_file()),
        poolable=True,
        default_descriptor=str(DEFAULT_DESCRIPTOR),
    )(_factory(_spec))
