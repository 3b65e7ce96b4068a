"""Pooling a CNN's last convolutional feature map into one descriptor, shared by every Keras backbone.

A descriptor is written after the backbone name in a spec: ``NAME:POOLING[+OPTION...]``.

Poolings (``x`` is the non-negative activation map, h x w x C):

* ``avg``: global average (the seed behaviour; GeM with p = 1).
* ``gem`` (= ``gem3``), ``gemP``: generalised mean ``(mean x^p)^(1/p)`` per channel (Radenović et al.,
  "Fine-tuning CNN image retrieval with no human annotation", TPAMI 2019); p = 3 is their default.
  p = 1 is ``avg``, p -> inf approaches ``mac``; larger p weights the strongest local responses more.
* ``mac``: global max per channel (Tolias et al., "Particular object retrieval with integral
  max-pooling of CNN activations", ICLR 2016).
* ``rmac``: R-MAC (Tolias et al.): MAC of square regions at ``L = 3`` scales, each L2-normalised, then
  summed. Regions of scale l have side ``2 min(h, w) / (l + 1)`` and overlap about 40 %.

Options:

* ``flip``: the mean of the descriptors of the image and its mirror image (left-right flip
  invariance; doubles the CNN cost).
* ``ms``: multi-scale: the mean of the descriptors at input scales 1/sqrt(2), 1 and sqrt(2) (about
  3.5 times the CNN cost).

Descriptors are returned unnormalised; ``Backbone.embed`` L2-normalises them.

A vision transformer has no feature map: its output is a token sequence (n, 1 + patches, C), class token
first. Its descriptors (``TokenDescriptor``, ``parse_token_descriptor``) are ``cls``, the class token, and
``mean``, the mean of the patch tokens (class token left out).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

POOLINGS = ("avg", "gem", "mac", "rmac")
OPTIONS = ("flip", "ms")
GEM_P = 3.0
RMAC_LEVELS = 3
RMAC_OVERLAP = 0.4
#: input scales of the ``ms`` option, relative to the backbone's input size
MULTI_SCALES = (1 / math.sqrt(2), 1.0, math.sqrt(2))
_EPS = 1e-6


class PoolingError(ValueError):
    """A descriptor string cannot be parsed."""


@dataclass(frozen=True)
class Descriptor:
    """How a feature map becomes a vector: a pooling and options (see the module docstring)."""

    pooling: str = "avg"
    p: float = GEM_P  # GeM exponent (``gem`` only)
    flip: bool = False
    multiscale: bool = False

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise PoolingError(f"unknown pooling {self.pooling!r}; known: {', '.join(POOLINGS)}")
        if self.pooling == "gem" and not (math.isfinite(self.p) and self.p >= 1):
            raise PoolingError(f"GeM needs a finite p >= 1, got {self.p}")

    def __str__(self) -> str:
        name = self.pooling
        if self.pooling == "gem" and self.p != GEM_P:
            name = f"gem{_fmt(self.p)}"
        return "+".join([name] + (["flip"] if self.flip else []) + (["ms"] if self.multiscale else []))

    @property
    def cost(self) -> float:
        """CNN passes per image relative to one plain pass (pixels processed)."""
        scales = sum(s * s for s in MULTI_SCALES) if self.multiscale else 1.0
        return scales * (2 if self.flip else 1)

    def pool(self, maps: np.ndarray) -> np.ndarray:
        """(n, h, w, C) activation maps -> (n, C) descriptors, not normalised."""
        maps = np.asarray(maps, dtype=np.float32)
        if maps.ndim != 4:
            raise ValueError(f"expected (n, h, w, C) feature maps, got shape {maps.shape}")
        if self.pooling == "avg":
            return maps.mean(axis=(1, 2))
        if self.pooling == "gem":
            return gem(maps, self.p)
        if self.pooling == "mac":
            return maps.reshape(len(maps), -1, maps.shape[-1]).max(axis=1)
        return rmac(maps)


def _fmt(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else str(p)


_GEM = re.compile(r"^gem(\d+(?:\.\d+)?)?$")


def parse_descriptor(text: str | Descriptor | None, default: Descriptor | None = None) -> Descriptor:
    """``"gem"``, ``"gem4"``, ``"rmac+flip"``, ``"avg+ms"`` ... -> Descriptor (``None``/"" -> default)."""
    if isinstance(text, Descriptor):
        return text
    if not text:
        return default or Descriptor()
    head, *options = text.strip().lower().split("+")
    match = _GEM.match(head)
    if match:
        pooling, p = "gem", float(match.group(1)) if match.group(1) else GEM_P
    elif head in POOLINGS:
        pooling, p = head, GEM_P
    else:
        raise PoolingError(f"unknown pooling {head!r} in {text!r}; known: avg, gem, gemP (e.g. gem4), mac, rmac")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise PoolingError(f"unknown descriptor option {unknown[0]!r} in {text!r}; known: {', '.join(OPTIONS)}")
    return Descriptor(pooling, p, flip="flip" in options, multiscale="ms" in options)


def gem(maps: np.ndarray, p: float = GEM_P) -> np.ndarray:
    """Generalised mean over the spatial axes of (n, h, w, C) non-negative maps."""
    x = np.maximum(np.asarray(maps, np.float32), _EPS)  # GeM needs positive inputs
    if p == 3.0:  # the default: multiplications and cbrt are several times faster than power
        return np.cbrt((x * x * x).mean(axis=(1, 2)))
    return np.power(np.power(x, p).mean(axis=(1, 2)), 1.0 / p)


def rmac_regions(h: int, w: int, levels: int = RMAC_LEVELS, overlap: float = RMAC_OVERLAP
                 ) -> list[tuple[int, int, int]]:
    """R-MAC's square regions on an h x w map as (top, left, side), largest first.

    At level l (1..levels) the side is ``floor(2 min(h, w) / (l + 1))``; the long dimension gets
    extra regions (the count whose overlap is closest to ``overlap``), as in Tolias et al.'s code.
    On a square map: 1 + 4 + 9 regions for L = 3.
    """
    short = min(h, w)
    if short < 1:
        return []
    extra_w = extra_h = 0
    if h != w:
        steps = np.arange(2, 8)  # candidate region counts along the long side
        step = (max(h, w) - short) / (steps - 1)
        best = int(np.argmin(np.abs((short * short - short * step) / (short * short) - overlap)))
        if h < w:
            extra_w = best + 1
        else:
            extra_h = best + 1
    regions = []
    for level in range(1, levels + 1):
        side = int(math.floor(2 * short / (level + 1)))
        if side < 1:
            continue
        nx, ny = level + extra_w, level + extra_h
        xs = _starts(w, side, nx)
        ys = _starts(h, side, ny)
        regions += [(y, x, side) for y in ys for x in xs]
    return list(dict.fromkeys(regions))  # tiny maps can repeat a region


def _starts(length: int, side: int, count: int) -> list[int]:
    if count <= 1 or length <= side:
        return [max(0, (length - side) // 2)] if count <= 1 else [0]
    step = (length - side) / (count - 1)
    return [int(math.floor(i * step)) for i in range(count)]


def rmac(maps: np.ndarray, levels: int = RMAC_LEVELS) -> np.ndarray:
    """R-MAC: sum of L2-normalised regional MAC vectors of (n, h, w, C) maps."""
    maps = np.asarray(maps, np.float32)
    n, h, w, c = maps.shape
    out = np.zeros((n, c), np.float32)
    for y, x, s in rmac_regions(h, w, levels):
        v = maps[:, y:y + s, x:x + s].max(axis=(1, 2))
        out += v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return out


def describe(forward_maps: Callable[[np.ndarray], np.ndarray], batch: np.ndarray, descriptor: Descriptor,
             resize: Callable[[np.ndarray, int], np.ndarray]) -> np.ndarray:
    """Run ``forward_maps`` (preprocessed batch -> activation maps) as ``descriptor`` asks and pool.

    ``batch`` is the preprocessed (n, s, s, 3) input; ``resize(batch, side)`` rescales it for ``ms``.
    Each view's descriptor is L2-normalised before views are averaged, so no view dominates.
    """
    side = batch.shape[1]
    sides = [max(32, int(round(side * s / 32)) * 32) if s != 1.0 else side for s in MULTI_SCALES] \
        if descriptor.multiscale else [side]
    total = None
    for s in sides:
        scaled = batch if s == side else resize(batch, s)
        views = [scaled, scaled[:, :, ::-1]] if descriptor.flip else [scaled]
        for view in views:
            v = descriptor.pool(forward_maps(np.ascontiguousarray(view)))
            v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            total = v if total is None else total + v
    assert total is not None
    return total


# --------------------------------------------------------------------------------------------------
# Token descriptors (vision transformers)

#: descriptors of a transformer's output sequence (n, 1 + patches, C), class token first
TOKEN_POOLINGS = ("cls", "mean")


@dataclass(frozen=True)
class TokenDescriptor:
    """How a vision transformer's output tokens become one vector: ``cls`` (the class token) or ``mean``
    (the mean of the patch tokens, the class token left out)."""

    pooling: str = "cls"

    def __post_init__(self) -> None:
        if self.pooling not in TOKEN_POOLINGS:
            raise PoolingError(f"unknown token descriptor {self.pooling!r}; known: {', '.join(TOKEN_POOLINGS)}")

    def __str__(self) -> str:
        return self.pooling

    def pool(self, tokens: np.ndarray) -> np.ndarray:
        """(n, 1 + patches, C) output tokens, class token first -> (n, C) descriptors, not normalised."""
        tokens = np.asarray(tokens, dtype=np.float32)
        if tokens.ndim != 3 or tokens.shape[1] < 2:
            raise ValueError(f"expected (n, 1 + patches, C) tokens, got shape {tokens.shape}")
        return tokens[:, 0] if self.pooling == "cls" else tokens[:, 1:].mean(axis=1)


def parse_token_descriptor(text: str | TokenDescriptor | None, default: TokenDescriptor | None = None
                           ) -> TokenDescriptor:
    """``"cls"``, ``"mean"`` -> TokenDescriptor (``None``/"" -> default)."""
    if isinstance(text, TokenDescriptor):
        return text
    if not text:
        return default or TokenDescriptor()
    name = text.strip().lower()
    if name not in TOKEN_POOLINGS:
        raise PoolingError(f"unknown token descriptor {text!r}; known: cls (the class token), "
                           "mean (the mean of the patch tokens)")
    return TokenDescriptor(name)
