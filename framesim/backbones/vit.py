"""``vit-b16``: ViT-B/16 at 224 x 224 from Keras' own model library, keras-hub (``pip install 'framesim[vit]'``).

The network is keras-hub's ``ViTBackbone`` (12 layers, 12 heads, width 768, MLP 3072, patches 16 x 16),
whose output is the encoder's token sequence after its final layer norm, (n, 1 + 196, 768), class token
first. The descriptor (``pooling.TokenDescriptor``) makes one vector of it:

* ``vit-b16:cls`` (the default): the class token. It is what the preset's ImageNet classifier reads (the
  ViT paper's head sits on the class token alone), so it is the vector the training shaped.
* ``vit-b16:mean``: the mean of the 196 patch tokens, class token left out (the paper's "global average
  pooling" variant has no class token; keras-hub's classifier option ``pooling="gap"`` averages all 197).
  It averages local evidence, which may suit crops. Neither was measured here on real frames (no copy of
  the weights on this machine).

Weights: ``"imagenet"`` is keras-hub's preset ``vit_base_patch16_224_imagenet`` (google/vit-base-patch16-224:
ImageNet-21k pre-training, ImageNet-1k fine-tuning at 224), loaded by ``ViTBackbone.from_preset``, which
downloads it from Kaggle the first time into kagglehub's cache (``$KAGGLEHUB_CACHE``, default
``~/.cache/kagglehub``) and reads it from there afterwards, offline too. ``weights=DIR`` loads a keras-hub
preset folder (``config.json`` + ``model.weights.h5``, what ``save_to_preset`` writes or that cache holds);
``weights=FILE`` a ``.weights.h5`` of this architecture; ``weights=None`` builds the architecture with
random weights, downloading nothing (tests).

Preprocessing is the preset's image converter: ``x * scale + offset`` with scale = 1/255/0.5 and offset =
-0.5/0.5, i.e. RGB mapped to [-1, 1] (keras-hub's ``convert_vit_checkpoints.py`` builds the converter from
the Hugging Face ViTImageProcessor's rescale 1/255, mean 0.5 and std 0.5). A preset folder with its own
``image_converter.json`` uses its numbers. Frames are resized to 224 x 224 whole, like every framesim
backbone (the converter would crop to the aspect ratio first).

Runtime: TensorFlow (one ``tf.function``), whatever ``runtime`` asks. The ONNX export needs two
workarounds (tf2onnx has no ``Erfc``, which TensorFlow's exact GELU uses, and the position ids become a
second graph input) and then gave no speed: ONNX Runtime 3.6 images/s, TensorFlow 3.7 (batch 8, random
weights, the 2-core CPU here; vectors equal within 2e-7 after L2 normalisation), for a 343 MB file and
75 s of conversion. Importing this module imports neither keras-hub nor TensorFlow.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from framesim.backbones.base import Backbone, BackboneError, register_backbone
from framesim.backbones.pooling import PoolingError, TokenDescriptor, parse_token_descriptor
from framesim.backbones.runtime import TensorFlowRunner, check_runtime

log = logging.getLogger(__name__)

PRESET = "vit_base_patch16_224_imagenet"
#: the preset's Kaggle handle in keras-hub 0.32; the installed keras-hub's own table wins (``preset_handle``)
KAGGLE_HANDLE = "keras/vit/keras/vit_base_patch16_224_imagenet/4"
INPUT_SIZE = 224
DIM = 768
#: keras-hub ViTBackbone arguments of the preset (its config.json): ViT-B/16, no dropout, biased attention
ARCHITECTURE: dict[str, Any] = {
    "image_shape": (INPUT_SIZE, INPUT_SIZE, 3), "patch_size": (16, 16), "num_layers": 12, "num_heads": 12,
    "hidden_dim": DIM, "mlp_dim": 3072, "dropout_rate": 0.0, "attention_dropout": 0.0,
    "layer_norm_epsilon": 1e-6, "use_mha_bias": True, "use_mlp_bias": True, "use_class_token": True,
    "use_patch_bias": True,
}
#: class token + 14 x 14 patches
TOKENS = 1 + (INPUT_SIZE // 16) ** 2
#: the preset's image converter: RGB 0..255 -> [-1, 1]
SCALE = 1 / 255 / 0.5
OFFSET = -0.5 / 0.5
DEFAULT_DESCRIPTOR = TokenDescriptor("cls")
MISSING = "vit-b16 needs keras-hub: pip install 'framesim[vit]'"
#: the preset files ``Backbone.from_preset`` reads
PRESET_FILES = ("config.json", "model.weights.h5")


def keras_hub_installed() -> bool:
    """True when keras-hub can be imported (found without importing it: it imports TensorFlow)."""
    return importlib.util.find_spec("keras_hub") is not None


def preset_handle() -> str:
    """The preset's Kaggle handle as the installed keras-hub names it (the version moves between releases),
    read from its preset table without importing keras-hub; ``KAGGLE_HANDLE`` if that cannot be read."""
    spec = importlib.util.find_spec("keras_hub")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        table = Path(root) / "src" / "models" / "vit" / "vit_presets.py"
        try:
            tree = ast.parse(table.read_text())
        except (OSError, SyntaxError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "backbone_presets" for t in node.targets):
                try:
                    handle = ast.literal_eval(node.value)[PRESET]["kaggle_handle"]
                except (ValueError, KeyError, TypeError):
                    break
                return str(handle).removeprefix("kaggle://")
    return KAGGLE_HANDLE


def kagglehub_cache() -> Path:
    """kagglehub's cache folder: ``$KAGGLEHUB_CACHE``, default ``~/.cache/kagglehub``."""
    return Path(os.environ.get("KAGGLEHUB_CACHE") or Path.home() / ".cache" / "kagglehub").expanduser()


def cached_preset_dir() -> Path | None:
    """Where kagglehub keeps the preset's files (``models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION``); None for
    a handle without a version."""
    parts = preset_handle().split("/")
    if len(parts) != 5:
        return None
    return kagglehub_cache().joinpath("models", *parts)


def weights_available() -> bool:
    """True when keras-hub is installed and kagglehub's cache holds the preset's files, each with the
    completion marker kagglehub writes after a download (without it kagglehub downloads again)."""
    folder = cached_preset_dir()
    if folder is None or not keras_hub_installed():
        return False
    markers = folder.parent / ".complete" / folder.name
    return all((folder / f).is_file() and (markers / f"{f}.complete").is_file() for f in PRESET_FILES)


def preset_url() -> str:
    """The preset's page on Kaggle (where ``from_preset`` downloads it from)."""
    owner, model, framework, variation, *version = preset_handle().split("/")
    return f"https://www.kaggle.com/models/{owner}/{model}/{framework}/{variation}/{'/'.join(version)}".rstrip("/")


class VitBackbone(Backbone):
    """ViT-B/16 (keras-hub) embedding its class token or mean patch token (see the module docstring)."""

    name = "vit-b16"
    input_size = INPUT_SIZE
    dim = DIM
    runtime = "tensorflow"

    def __init__(self, weights: str | os.PathLike[str] | None = "imagenet",
                 descriptor: TokenDescriptor | str | None = None, runtime: str = "auto") -> None:
        check_runtime(runtime)
        try:
            self.descriptor = parse_token_descriptor(descriptor, DEFAULT_DESCRIPTOR)
        except PoolingError as exc:  # get_backbone parses first; this is for direct callers
            raise BackboneError(f"vit-b16: {exc}") from None
        if not keras_hub_installed():
            raise BackboneError(MISSING)
        if runtime in ("onnxruntime", "openvino"):
            log.warning("vit-b16: runs on TensorFlow, not %s (its ONNX export is no faster; see "
                        "framesim.backbones.vit)", runtime)
        self._scale = np.full(3, SCALE, np.float32)
        self._offset = np.full(3, OFFSET, np.float32)
        self._preset: str | None = None  # what from_preset loads (a preset name or folder)
        self._weights_file: Path | None = None  # a bare .weights.h5
        if weights is None:
            self.weights = "random (weights=None)"
        elif str(weights) == "imagenet":
            self._preset, self.weights = PRESET, "imagenet"
        else:
            self.weights = self._local_weights(Path(weights).expanduser())
        self.model = self._build_model()
        self._runner = TensorFlowRunner(self.model)

    @property
    def spec(self) -> str:
        return f"{self.base_name}:{self.descriptor}"

    def _local_weights(self, path: Path) -> str:
        """Check ``--weights`` PATH; return the display string, a file (so the cache tag follows its contents)."""
        if path.is_file():
            self._weights_file = path
            return str(path)
        if not path.is_dir():
            raise BackboneError(f"vit-b16: weights {path} does not exist (give a keras-hub preset folder or a "
                                ".weights.h5 file)")
        weights = path / "model.weights.h5"
        if not (path / "config.json").is_file() or not weights.is_file():
            raise BackboneError(f"vit-b16: {path} is not a keras-hub preset folder (needs config.json and "
                                "model.weights.h5)")
        self._preset = str(path)
        converter = path / "image_converter.json"
        if converter.is_file():
            self._scale, self._offset = _converter_numbers(converter)
        return str(weights)

    def _build_model(self) -> Any:
        from framesim.backbones.keras_base import quiet_tensorflow

        quiet_tensorflow()
        try:
            import keras_hub
        except ImportError:
            raise BackboneError(MISSING) from None
        if self._preset is None:
            model = keras_hub.models.ViTBackbone(**ARCHITECTURE)  # random weights, nothing downloaded
            if self._weights_file is not None:
                try:
                    model.load_weights(str(self._weights_file))
                except Exception as exc:  # Keras raises ValueError or h5py errors for a foreign file
                    raise BackboneError(f"vit-b16: cannot load weights {self._weights_file}: "
                                        f"{_one_line(exc)}") from exc
        else:
            try:
                model = keras_hub.models.ViTBackbone.from_preset(self._preset)
            except Exception as exc:  # requests, kagglehub and keras-hub each raise their own kinds
                if self._preset == PRESET:
                    raise BackboneError(self._offline_help(exc)) from exc
                raise BackboneError(f"vit-b16: cannot load the keras-hub preset {self._preset}: "
                                    f"{_one_line(exc)}") from exc
            shape_in, shape_out = tuple(model.inputs[0].shape[1:]), tuple(model.outputs[0].shape[1:])
            if shape_in != ARCHITECTURE["image_shape"] or shape_out != (TOKENS, DIM):
                raise BackboneError(f"vit-b16: {self._preset} is a ViT for {shape_in} input giving {shape_out} "
                                    f"tokens; vit-b16 is ViT-B/16 at {INPUT_SIZE} ({TOKENS} tokens of {DIM})")
        return model

    def _offline_help(self, exc: Exception) -> str:
        return (f"vit-b16: could not get the keras-hub preset {PRESET} ({_one_line(exc)}). It needs a download "
                f"once ({preset_url()}, into {cached_preset_dir() or kagglehub_cache()}; KAGGLEHUB_CACHE is "
                "respected), or a local preset folder (config.json, model.weights.h5) via --weights DIR.")

    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        # The preset's ImageConverter arithmetic (x * scale + offset per channel, float32), in numpy.
        return batch.astype(np.float32) * self._scale + self._offset

    def tokens(self, batch: np.ndarray) -> np.ndarray:
        """The encoder's output sequence (n, 197, 768) of a preprocessed batch, class token first."""
        return self._runner(batch)

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        return self.descriptor.pool(self.tokens(batch))


def _converter_numbers(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """scale and offset (3 channels each) of a preset's ``image_converter.json`` (a serialised ImageConverter;
    None: no scaling / no offset)."""
    try:
        config = json.loads(path.read_text())["config"]
        scale, offset = config.get("scale"), config.get("offset")
        return (np.broadcast_to(np.asarray(1.0 if scale is None else scale, np.float32), (3,)).copy(),
                np.broadcast_to(np.asarray(0.0 if offset is None else offset, np.float32), (3,)).copy())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BackboneError(f"vit-b16: cannot read the image converter {path}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


@register_backbone("vit-b16", dim=DIM, input_size=INPUT_SIZE, weights_available=weights_available,
                   description="ViT-B/16 (keras-hub vit_base_patch16_224_imagenet); class token, or :mean "
                               "(mean of the patch tokens); needs framesim[vit]",
                   poolable=True, default_descriptor=str(DEFAULT_DESCRIPTOR), parse_descriptor=parse_token_descriptor)
def make_vit_b16(weights: str | os.PathLike[str] | None = "imagenet", descriptor: TokenDescriptor | str | None = None,
                 runtime: str = "auto") -> VitBackbone:
    return VitBackbone(weights=weights, descriptor=descriptor, runtime=runtime)
