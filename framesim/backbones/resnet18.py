"""torchvision's ResNet-18 in Keras, loading torchvision's own ImageNet ``.pth`` without torch.

The network is torchvision's ``resnet18`` layer for layer: conv1 7x7 stride 2 (padding 3), batch norm,
ReLU, max-pool 3x3 stride 2 (padding 1), then layer1..layer4 of two BasicBlocks each (64, 128, 256, 512
channels; the first block of layers 2-4 halves the map with stride 2 and a 1x1 stride-2 conv + batch
norm on its shortcut). Torch pads symmetrically where Keras' ``padding="same"`` pads stride-2 layers
asymmetrically (one pixel more at the bottom/right), so every padded layer is an explicit
``ZeroPadding2D`` before a ``"valid"`` conv or pool. The max-pool's zero padding stands for torch's
-inf padding: it follows a ReLU, so a zero never exceeds the window's largest real value.

The embedding pools layer4's map (n, h, w, 512) as the spec's descriptor says (``pooling``). The
default is the global average: it is torchvision's own pooling (``avgpool`` before ``fc``), the feature
the ImageNet training shaped; GeM was not measured for these weights (no copy of them here).
``classify`` adds ``fc`` (the ImageNet classifier, or a fine-tuned one's classes) to check real weights.
Input: RGB / 255, minus the ImageNet mean, divided by its std, as torchvision's transforms after resizing.

Weights: ``"imagenet"`` is torchvision's ``resnet18-f37072fd.pth``, found where torch keeps it,
``$TORCH_HOME/hub/checkpoints/`` (``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch``, else
``~/.cache/torch``), and downloaded there when missing; its sha256 must start with the 8 hex digits in
its name, as torch hub checks. ``weights=FILE`` loads a ``.pth`` (a resnet18 state dict: any number of
``fc`` classes; a ``module.`` prefix from DataParallel is dropped); ``weights=None`` gives random weights
(tests). The ``.pth`` (zip or legacy format, ``torch_pth``) is read each time the model is built: 47 MB
parse in a fraction of a second, so there is no converted cache. Batch norms (eval mode, eps 1e-5) are
folded into the convolutions when the weights are assigned: against a float64 reference of torchvision's
graph, layer4 maps differ by about 1e-6 relative either way (folded or separate BN layers, random
weights), and folded runs about 12% faster in TensorFlow on CPU.

Importing this module does not import TensorFlow; a converted runtime found in ``runtime_index`` (keyed
by the ``.pth``'s sha256) needs neither TensorFlow nor the weights.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from framesim._io import sha256_file
from framesim.backbones import torch_pth
from framesim.backbones.base import BackboneError, register_backbone
from framesim.backbones.keras_base import KerasBackbone, quiet_tensorflow
from framesim.backbones.pooling import Descriptor, parse_descriptor
from framesim.backbones.runtime_index import make_locator

log = logging.getLogger(__name__)

NAME = "resnet18"
#: torchvision's ResNet18_Weights.IMAGENET1K_V1; the file name carries its sha256 prefix
WEIGHTS_URL = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
DIM = 512
INPUT_SIZE = 224
BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
DEFAULT_DESCRIPTOR = Descriptor("avg")
#: (torch module name, channels, stride of its first block); two BasicBlocks each
STAGES = (("layer1", 64, 1), ("layer2", 128, 2), ("layer3", 256, 2), ("layer4", 512, 2))
DOWNLOAD_TIMEOUT_S = 60
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")


# --------------------------------------------------------------------------------------------------
# Weights: where they are, the download, .pth -> Keras layout


def torch_home() -> Path:
    """torch hub's cache root: ``$TORCH_HOME``, else ``$XDG_CACHE_HOME/torch``, else ``~/.cache/torch``."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch"
    return Path(os.environ.get("TORCH_HOME") or default).expanduser()


def cached_weights_path() -> Path:
    """Where torch (``torch.hub.load_state_dict_from_url``) keeps the ImageNet file."""
    return torch_home() / "hub" / "checkpoints" / WEIGHTS_URL.rsplit("/", 1)[-1]


def weights_available() -> bool:
    """True when ``weights="imagenet"`` works without network: the file is in torch's cache."""
    return cached_weights_path().is_file()


def _name_hash(path: Path) -> str | None:
    # torch hub's convention: "name-<first hex digits of the sha256>.pth"
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", path.name)
    return m.group(1) if m else None


def _check_name_hash(path: Path, sha: str) -> None:
    prefix = _name_hash(path)
    if prefix and not sha.startswith(prefix):
        raise BackboneError(f"{path}: sha256 {sha[:16]}... does not match the {prefix} in its name; the file "
                            f"is damaged: delete it (it is downloaded again) or pass --weights FILE")


def download_weights(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` through a temporary file beside it, renamed only once its sha256
    matches the prefix in its name; BackboneError (one line: where to put the file) otherwise."""
    log.warning("%s: downloading %s to %s", NAME, url, dest)
    tmp: Path | None = None
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f"{dest.name}.", suffix=".partial", dir=dest.parent)
        tmp = Path(tmp_name)
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        _check_name_hash(dest, digest.hexdigest())
        os.replace(tmp, dest)
    except BackboneError:
        raise
    except Exception as exc:  # urllib's URLError/HTTPError, timeouts, OSError from the disk
        raise BackboneError(
            f"{NAME}: could not download the ImageNet weights {url} ({type(exc).__name__}: {exc}); without "
            f"internet, copy that file to {dest} (TORCH_HOME is respected) or pass --weights FILE") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def conv_specs() -> list[tuple[str, str, int, int, int]]:
    """(conv key, its batch norm's key, out channels, in channels, kernel) of every conv, in network order."""
    specs = [("conv1", "bn1", 64, 3, 7)]
    cin = 64
    for stage, channels, stride in STAGES:
        for b in range(2):
            p = f"{stage}.{b}"
            specs += [(f"{p}.conv1", f"{p}.bn1", channels, cin, 3), (f"{p}.conv2", f"{p}.bn2", channels, channels, 3)]
            if b == 0 and (stride != 1 or cin != channels):
                specs.append((f"{p}.downsample.0", f"{p}.downsample.1", channels, cin, 1))
            cin = channels
    return specs


def expected_shapes(num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    """torch-layout shape of every entry of torchvision's resnet18 state dict (BN counters included)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for conv, bn, cout, cin, k in conv_specs():
        shapes[f"{conv}.weight"] = (cout, cin, k, k)
        shapes.update({f"{bn}.{p}": (cout,) for p in _BN_PARAMS})
        shapes[f"{bn}.num_batches_tracked"] = ()
    shapes["fc.weight"] = (num_classes, DIM)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def check_state_dict(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The state dict as float32 arrays (BN counters dropped), or ValueError saying what does not fit."""
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    fc = state.get("fc.weight")
    shapes = expected_shapes(fc.shape[0] if fc is not None and fc.ndim == 2 else 1000)
    missing, extra = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or extra:
        raise ValueError(f"not a torchvision resnet18 state dict: missing {missing[:3]}, unexpected {extra[:3]}")
    out = {}
    for key, shape in shapes.items():
        arr = state[key]
        if arr.shape != shape:
            raise ValueError(f"{key}: shape {arr.shape}, expected {shape}")
        if key.endswith("num_batches_tracked"):
            continue  # a training-time counter
        if arr.dtype.kind != "f" or not np.isfinite(arr).all():
            raise ValueError(f"{key}: {arr.dtype} {'with NaN or infinity' if arr.dtype.kind == 'f' else 'values'}, "
                             "expected finite floats")
        out[key] = arr.astype(np.float32)
    if min(out[f"{bn}.running_var"].min() for _, bn, *_ in conv_specs()) < 0:
        raise ValueError("a batch norm has a negative running variance")
    return out


def load_weights(path: Path) -> dict[str, np.ndarray]:
    """Checked torch-layout float32 arrays from a ``.pth``; BackboneError naming the file otherwise."""
    try:
        if _name_hash(path):
            _check_name_hash(path, sha256_file(path))
        state = torch_pth.load_state_dict(path)  # its errors name the file
    except (OSError, ValueError) as exc:
        raise BackboneError(f"{NAME}: {exc}") from exc
    try:
        return check_state_dict(state)
    except ValueError as exc:
        raise BackboneError(f"{NAME}: cannot use {path}: {exc}") from exc


def to_keras(weights: Mapping[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Keras layer weights per torch conv/fc key: each conv with its batch norm folded in
    (kernel (kh, kw, in, out) from torch's (out, in, kh, kw), plus a bias); fc as Dense (in, out)."""
    out: dict[str, list[np.ndarray]] = {}
    for conv, bn, *_ in conv_specs():
        kernel = weights[f"{conv}.weight"].astype(np.float64).transpose(2, 3, 1, 0)
        gamma, beta, mean, var = (weights[f"{bn}.{p}"].astype(np.float64) for p in _BN_PARAMS)
        scale = gamma / np.sqrt(var + BN_EPSILON)  # eval-mode BN: a per-channel affine map
        out[conv] = [(kernel * scale).astype(np.float32), (beta - mean * scale).astype(np.float32)]
    out["fc"] = [np.ascontiguousarray(weights["fc.weight"].T), weights["fc.bias"]]
    return out


# --------------------------------------------------------------------------------------------------
# Keras model


def build_model(input_size: int | None = INPUT_SIZE, num_classes: int = 1000) -> tuple[Any, Any, dict[str, Any]]:
    """Build the network; return (layer4 feature-map model, classifier, {torch conv/fc key: layer}).

    Convs have biases (their batch norms are folded in, see ``to_keras``) and are named after the torch
    keys ("layer2.0.downsample.0" -> "layer2_0_downsample_0"). ``input_size=None``: any size (multi-scale).
    """
    quiet_tensorflow()
    import keras
    from keras import layers

    by_key: dict[str, Any] = {}

    def conv(x: Any, key: str, filters: int, kernel: int, stride: int) -> Any:
        name = key.replace(".", "_")
        if kernel > 1:  # torch's symmetric padding (kernel // 2 each side)
            x = layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x)
        by_key[key] = layers.Conv2D(filters, kernel, strides=stride, padding="valid", name=name)
        return by_key[key](x)

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.ReLU(name="relu")(conv(inputs, "conv1", 64, 7, 2))
    x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="valid", name="maxpool")(x)
    cin = 64
    for stage, channels, stride in STAGES:
        for b in range(2):
            p, s = f"{stage}.{b}", stride if b == 0 else 1
            h = layers.ReLU(name=f"{stage}_{b}_relu1")(conv(x, f"{p}.conv1", channels, 3, s))
            h = conv(h, f"{p}.conv2", channels, 3, 1)
            shortcut = conv(x, f"{p}.downsample.0", channels, 1, s) if s != 1 or cin != channels else x
            x = layers.ReLU(name=f"{stage}_{b}_relu2")(layers.Add(name=f"{stage}_{b}_add")([h, shortcut]))
            cin = channels
    by_key["fc"] = layers.Dense(num_classes, name="fc")
    logits = by_key["fc"](layers.GlobalAveragePooling2D(name="avgpool")(x))
    return (keras.Model(inputs, x, name="resnet18_features"), keras.Model(inputs, logits, name="resnet18"),
            by_key)


class ResNet18Backbone(KerasBackbone):
    """torchvision's ResNet-18: layer4's 512-channel map pooled by ``descriptor``, L2-normalised."""

    name = NAME
    input_size = INPUT_SIZE
    dim = DIM

    def __init__(self, weights: str | os.PathLike[str] | None = "imagenet", descriptor: Descriptor | str | None = None,
                 runtime: str = "auto") -> None:
        self._weights_file: Path | None
        if weights is None:
            self._weights_file, self.weights = None, "random (weights=None)"
        elif str(weights) == "imagenet":
            self._weights_file, self.weights = cached_weights_path(), "imagenet"
            if not self._weights_file.is_file():
                # Now rather than when the model is built: the first run can then index its converted runtime.
                download_weights(WEIGHTS_URL, self._weights_file)
        else:
            self._weights_file = Path(weights)
            if not self._weights_file.is_file():
                raise BackboneError(f"{NAME}: weights file {self._weights_file} does not exist")
            self.weights = str(self._weights_file)
        self._classifier: Any = None
        self._classify_call: Any = None
        super().__init__(descriptor=parse_descriptor(descriptor, DEFAULT_DESCRIPTOR), runtime=runtime,
                         build=self._build_model)

    def _side(self) -> int | None:
        return None if self.descriptor.multiscale else INPUT_SIZE  # any size for multi-scale

    def _build_model(self) -> Any:
        arrays = None
        if self._weights_file is not None:
            arrays = load_weights(self._weights_file)
        model, self._classifier, by_key = build_model(self._side(), 1000 if arrays is None else len(arrays["fc.bias"]))
        if arrays is not None:
            for key, values in to_keras(arrays).items():
                by_key[key].set_weights(values)
        return model

    def _locator(self) -> dict[str, Any] | None:
        if self._weights_file is None or not self._weights_file.is_file():
            return None  # random weights are never cached; a file gone since: the full path says so
        return make_locator(NAME, self._side(), self._weights_file, code=(Path(__file__), Path(torch_pth.__file__)))

    @property
    def classifier(self) -> Any:
        """The classifier model (the feature model's layers plus avgpool and fc); built with it."""
        if self._classifier is None:
            _ = self.model
        return self._classifier

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        # torchvision: ToTensor (RGB / 255) then Normalize(mean, std); in numpy so an indexed runtime needs no TF.
        return (batch.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD

    def classify(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Class probabilities (n, classes: 1000 for ImageNet) for RGB uint8 images of any size."""
        if len(images) == 0:
            return np.zeros((0, self.classifier.output_shape[-1]), np.float32)
        batch = np.stack([self.resize(np.asarray(im)) for im in images])
        if batch.dtype != np.uint8:
            raise TypeError(f"{self.name}: expected uint8 RGB images, got {batch.dtype}")
        if self._classify_call is None:
            classifier = self.classifier  # built first: that sets TensorFlow's environment before it starts
            import tensorflow as tf

            self._classify_call = tf.function(lambda x: tf.nn.softmax(classifier(x, training=False)),
                                              reduce_retracing=True)
        return np.asarray(self._classify_call(self.preprocess(batch)), dtype=np.float32)


@register_backbone(
    NAME,
    dim=DIM,
    input_size=INPUT_SIZE,
    description="torchvision resnet18 (Keras), ImageNet weights from torchvision's .pth (torch hub cache); "
                "global average pooling, or :gem, :mac, :rmac, :gemP, +flip, +ms",
    weights_available=weights_available,
    poolable=True,
    default_descriptor=str(DEFAULT_DESCRIPTOR),
)
def make_resnet18(weights: str | os.PathLike[str] | None = "imagenet", descriptor: Descriptor | str | None = None,
                  runtime: str = "auto") -> ResNet18Backbone:
    return ResNet18Backbone(weights=weights, descriptor=descriptor, runtime=runtime)
