"""The ``Backbone`` interface and the registry of named backbones.

A backbone turns RGB images into L2-normalised float32 vectors. Everything else in framesim
(embedding cache, index, matching, report) sees only this interface, so adding a model means
subclassing ``Backbone`` (or ``KerasBackbone``) and registering a factory under a name.

Backbones are asked for by a spec, ``NAME[:DESCRIPTOR]``: ``efficientnet-lite0`` (its default
descriptor), ``efficientnet-lite0:avg``, ``resnet50:gem+flip`` ... The descriptor (pooling and options,
see ``pooling``) applies to backbones registered with ``poolable=True`` (the CNNs).
Any ONNX image model is a backbone too: ``onnx:PATH[?OPTIONS][:DESCRIPTOR]``, or a name registered by
``onnx_model.register_onnx_backbone`` or in ``$FRAMESIM_HOME/backbones.json`` (see ``onnx_model``).
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np


class BackboneError(RuntimeError):
    """A backbone cannot be built (unknown name, weights missing or unreadable)."""


class Backbone(abc.ABC):
    """A named image embedder.

    Subclasses set ``name``, ``input_size`` (square side in pixels) and ``dim`` and implement
    ``_forward`` on a preprocessed float32 batch. ``embed`` handles resizing, preprocessing and
    normalisation so every backbone behaves the same to callers.
    """

    #: what the user asked for (the spec as given); appears in the pairs and the report
    name: str
    input_size: int
    dim: int
    #: where the weights come from, for display ("imagenet", a file path, "random (weights=None)")
    weights: str | None = None
    #: what runs the network ("tensorflow", "onnxruntime", "openvino"; "none" without a network)
    runtime: str = "none"
    #: ``get_backbone``'s arguments for this model (spec, runtime in use, factory kwargs); None if not made by it
    recipe: tuple[str, str, dict[str, Any]] | None = None

    @property
    def base_name(self) -> str:
        """The registered name, without the descriptor (``efficientnet-lite0``)."""
        return getattr(self, "_base_name", None) or self.name.partition(":")[0]

    @base_name.setter
    def base_name(self, value: str) -> None:
        self._base_name = value

    @property
    def spec(self) -> str:
        """The canonical, complete spec (``efficientnet-lite0:gem``): equal specs give equal vectors,
        so the embedding cache is keyed by it. Backbones without descriptor options: the name."""
        return self.name

    def resize(self, image: np.ndarray) -> np.ndarray:
        """Resize one RGB uint8 image to ``input_size`` x ``input_size`` (full frame, no crop)."""
        s = self.input_size
        if image.shape[0] == s and image.shape[1] == s:
            return image
        # INTER_AREA when shrinking avoids aliasing; frames are almost always larger than the input.
        interp = cv2.INTER_AREA if image.shape[0] > s or image.shape[1] > s else cv2.INTER_LINEAR
        return cv2.resize(image, (s, s), interpolation=interp)

    @abc.abstractmethod
    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        """Map a uint8 batch (n, s, s, 3) RGB to the float32 input the network expects."""

    @abc.abstractmethod
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """Run the network on a preprocessed batch; return (n, dim) float32, not yet normalised."""

    def embed(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """Embed RGB uint8 images of any size; return L2-normalised float32 vectors (n, dim)."""
        return l2_normalize(self.embed_unnormalised(images))

    def embed_unnormalised(self, images: np.ndarray | Sequence[np.ndarray]) -> np.ndarray:
        """``embed`` before the final L2 normalisation: the descriptor as the network and pooling give
        it (Euclidean distances between these are what ``--metric l2`` ranks by)."""
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:3] == (
            self.input_size,
            self.input_size,
        ):
            batch = images
        else:
            if len(images) == 0:
                return np.zeros((0, self.dim), np.float32)
            batch = np.stack([self.resize(np.asarray(im)) for im in images])
        if batch.dtype != np.uint8:
            raise TypeError(f"{self.name}: expected uint8 RGB images, got {batch.dtype}")
        return np.asarray(self._forward(self.preprocess(batch)), dtype=np.float32)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} dim={self.dim} input={self.input_size}>"


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


@dataclass(frozen=True)
class BackboneInfo:
    """What ``framesim backbones`` shows without building the model."""

    name: str
    dim: int
    input_size: int
    description: str
    weights_available: Callable[[], bool]
    factory: Callable[..., Backbone]
    #: accepts ``NAME:DESCRIPTOR`` (its factory takes ``descriptor=``)
    poolable: bool = False
    #: the descriptor used when the spec names none (poolable backbones)
    default_descriptor: str | None = None
    #: parses this backbone's descriptors (text -> what its factory takes as ``descriptor=``); None:
    #: ``pooling.parse_descriptor`` (feature-map poolings)
    parse_descriptor: Callable[[str | None], Any] | None = None


_REGISTRY: dict[str, BackboneInfo] = {}


def register_backbone(
    name: str,
    *,
    dim: int,
    input_size: int,
    description: str = "",
    weights_available: Callable[[], bool] = lambda: True,
    poolable: bool = False,
    default_descriptor: str | None = None,
    parse_descriptor: Callable[[str | None], Any] | None = None,
) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator: register ``factory(**kwargs) -> Backbone`` under ``name``.

    ``poolable``: the factory takes ``descriptor=`` (a ``pooling.Descriptor``) so that specs
    ``NAME:DESCRIPTOR`` work; ``default_descriptor`` is what plain ``NAME`` uses. ``parse_descriptor``: the
    backbone's own descriptor parser (raising ``pooling.PoolingError``), for descriptors other than
    poolings (a ViT's ``cls`` / ``mean``); the canonical spelling is ``str()`` of what it returns.
    """
    if ":" in name:
        raise ValueError(f"backbone names cannot contain ':' (it separates the descriptor): {name!r}")

    def decorator(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        _REGISTRY[name] = BackboneInfo(name, dim, input_size, description, weights_available, factory,
                                       poolable, default_descriptor, parse_descriptor)
        return factory

    return decorator


def list_backbones() -> list[BackboneInfo]:
    _load_builtin()
    from framesim.backbones.onnx_model import register_configured

    register_configured(strict=False)  # the config file's ONNX models (a bad entry is a warning here)
    return list(_REGISTRY.values())


def split_spec(spec: str) -> tuple[str, str | None]:
    """``"resnet50:gem+flip"`` -> ``("resnet50", "gem+flip")``; ``"resnet50"`` -> ``("resnet50", None)``;
    ``"onnx:dir/m.onnx:gem"`` -> ``("onnx:dir/m.onnx", "gem")`` (the path may hold ':')."""
    from framesim.backbones.onnx_options import is_onnx_spec, split_onnx_spec

    if is_onnx_spec(spec):
        return split_onnx_spec(spec)
    name, sep, descriptor = spec.strip().partition(":")
    return name, (descriptor if sep else None)


def strip_score_suffix(spec: str) -> str:
    """``spec`` without match's ``@SCORE[+whiten]`` part: after the last ``@``, and only when that part
    holds no path separator (an ONNX file's path may contain ``@``)."""
    head, sep, tail = spec.rpartition("@")
    return head if sep and "/" not in tail and "." not in tail.split("+")[0] else spec


def weights_for(spec: str, weights: Mapping[str, str | None] | None) -> dict[str, Any]:
    """``weights=`` for ``get_backbone``: looked up in ``weights`` by the spec as given, without its ``@...``
    part (match's score suffix), or by the bare name; {} when none is given."""
    if not weights:
        return {}
    model_spec = strip_score_suffix(spec)
    for key in (spec, model_spec, split_spec(model_spec)[0]):
        if key in weights:
            return {"weights": weights[key]}
    return {}


def get_backbone(spec: str, runtime: str = "auto", **kwargs: object) -> Backbone:
    """Build a backbone from a spec ``NAME[:DESCRIPTOR]``; kwargs go to its factory (e.g. ``weights=``).
    ``onnx:PATH[?OPTIONS][:DESCRIPTOR]`` is an ONNX model, its kwargs are options (``onnx_model``).

    The returned backbone's ``name`` is the spec as asked for (canonical descriptor spelling) and its
    ``spec`` the complete one (``efficientnet-lite0`` -> spec ``efficientnet-lite0:gem``).
    ``runtime`` (see ``runtime.RUNTIMES``) goes to factories that take it (the CNNs); the others have
    no network to run and ignore it, so one value can serve a list of mixed backbones.
    """
    from framesim.backbones.pooling import PoolingError, parse_descriptor
    from framesim.backbones.runtime import check_runtime

    check_runtime(runtime)

    _load_builtin()
    name, descriptor = split_spec(spec)
    if name.startswith("onnx:"):
        from framesim.backbones.onnx_model import onnx_backbone

        return onnx_backbone(spec, runtime=runtime, **kwargs)  # sets its recipe (with the absolute path)
    if name not in _REGISTRY:
        from framesim.backbones.onnx_model import register_configured

        register_configured(only=name)  # a model of $FRAMESIM_HOME/backbones.json
    try:
        info = _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise BackboneError(f"unknown backbone {name!r}; known: {known}") from None
    if descriptor is not None and not info.poolable:
        raise BackboneError(f"{name} has no feature map to pool: descriptor options ({spec!r}) apply to "
                            f"these backbones ({', '.join(b.name for b in _REGISTRY.values() if b.poolable)})")
    if info.poolable:
        try:
            parse = info.parse_descriptor or parse_descriptor
            parsed = parse(descriptor if descriptor is not None else info.default_descriptor)
        except PoolingError as exc:
            raise BackboneError(f"{spec!r}: {exc}") from None
        backbone = info.factory(descriptor=parsed, **_with_runtime(info.factory, runtime, kwargs))
        backbone.base_name = name
        backbone.name = name if descriptor is None else f"{name}:{parsed}"
    else:
        backbone = info.factory(**_with_runtime(info.factory, runtime, kwargs))
    # How to build the same model elsewhere (another process of a cluster), with the runtime now in use.
    backbone.recipe = (spec, backbone.runtime if backbone.runtime != "none" else runtime, dict(kwargs))
    return backbone


def _with_runtime(factory: Callable[..., Backbone], runtime: str, kwargs: dict[str, object]) -> dict[str, object]:
    # Plugin factories written before runtimes existed do not take the argument.
    params = inspect.signature(factory).parameters
    takes = "runtime" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {**kwargs, "runtime": runtime} if takes else kwargs


def _load_builtin() -> None:
    # Imported lazily: registering must not import TensorFlow for `framesim --help`.
    from framesim.backbones import efficientnet_lite, keras_apps, phash, resnet18, tiny, vit  # noqa: F401
