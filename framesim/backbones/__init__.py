"""Backbones: named image embedders behind one small interface (see ``base.Backbone``), asked for by
spec ``NAME[:DESCRIPTOR]`` (``efficientnet-lite0``, ``efficientnet-lite0:avg``, ``resnet50:gem+flip``;
descriptors: ``pooling``). CNN backbones run in TensorFlow or, converted, in ONNX Runtime or OpenVINO
(``runtime``)."""

from framesim.backbones.base import (
    Backbone,
    BackboneError,
    BackboneInfo,
    get_backbone,
    l2_normalize,
    list_backbones,
    register_backbone,
    split_spec,
)
from framesim.backbones.pooling import Descriptor, PoolingError, parse_descriptor

__all__ = [
    "Backbone",
    "BackboneError",
    "BackboneInfo",
    "Descriptor",
    "PoolingError",
    "get_backbone",
    "l2_normalize",
    "list_backbones",
    "parse_descriptor",
    "register_backbone",
    "split_spec",
]
