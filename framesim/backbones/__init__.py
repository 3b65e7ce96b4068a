"""Backbones: named image embedders behind one small interface (see ``base.Backbone``)."""

from framesim.backbones.base import (
    Backbone,
    BackboneError,
    BackboneInfo,
    get_backbone,
    l2_normalize,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "BackboneError",
    "BackboneInfo",
    "get_backbone",
    "l2_normalize",
    "list_backbones",
    "register_backbone",
]
