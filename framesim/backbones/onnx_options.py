"""The text side of ONNX backbones: the ``onnx:`` spec, option values and model metadata.

Kept apart from ``onnx_model`` (which runs the network) so that ``base.split_spec`` can parse an
``onnx:`` spec without importing ONNX Runtime. The syntax, the meaning of each option and the config
file are documented in ``onnx_model``; everything here is strict: an unknown key, a bad value or a
conflict is an ``OptionError`` with a one-line message, which the caller prefixes with the file's name.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from framesim.backbones.pooling import PoolingError, parse_descriptor

ONNX_PREFIX = "onnx:"
#: option keys, in the spec (``?size=224&...``), as keyword arguments and in the config file
OPTIONS = ("size", "layout", "colour", "mean", "std", "scale", "offset", "output", "output_layout", "descriptor")
ALIASES = {"color": "colour"}
NORMALISATION = ("mean", "std", "scale", "offset")
LAYOUTS = ("nchw", "nhwc")
COLOURS = ("rgb", "bgr")
MAX_SIZE = 4096
#: ImageNet statistics (RGB, on pixel / 255): the defaults when neither options nor metadata say otherwise
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: framesim's own metadata keys: ``framesim.<option>`` with the same value syntax as the spec's options
META_PREFIX = "framesim."
# The WinML image-model convention (metadata_props set by WinMLTools and the ONNX model zoo's image models).
WINML_FORMAT = "Image.BitmapPixelFormat"
WINML_RANGE = "Image.NominalPixelRange"
WINML_FORMATS = {"rgb8": "rgb", "bgr8": "bgr"}
#: pixel range -> (scale, offset) on 0..255 pixels
WINML_RANGES = {"nominalrange_0_255": (1.0, 0.0), "normalized_0_1": (1 / 255, 0.0),
                "normalized_1_1": (2 / 255, -1.0), "nominalrange_16_235": (219 / 255, 16.0)}


class OptionError(ValueError):
    """An option, spec or metadata value cannot be used (one line)."""


# --------------------------------------------------------------------------------------------------
# The spec


def is_onnx_spec(spec: str) -> bool:
    return spec.strip().startswith(ONNX_PREFIX)


def _is_descriptor(text: str) -> bool:
    try:
        return bool(text) and parse_descriptor(text) is not None
    except PoolingError:
        return False


def split_onnx_spec(spec: str) -> tuple[str, str | None]:
    """``onnx:PATH[?OPTIONS][:DESCRIPTOR]`` -> (``onnx:PATH[?OPTIONS]``, DESCRIPTOR or None).

    The descriptor is the text after the last ':' when ``parse_descriptor`` accepts it; any other
    ':' belongs to the path (``onnx:C:\\models\\m.onnx``, ``onnx:/data/a:b/m.onnx``)."""
    rest = spec.strip()[len(ONNX_PREFIX):]
    head, sep, tail = rest.rpartition(":")
    if sep and head and _is_descriptor(tail):
        return ONNX_PREFIX + head, tail
    return ONNX_PREFIX + rest, None


def parse_onnx_spec(spec: str) -> tuple[str, dict[str, str], str | None]:
    """``onnx:PATH[?KEY=VALUE&...][:DESCRIPTOR]`` -> (path, raw options, descriptor or None).

    The options start at the last '?' (a path that itself holds a '?' is taken whole when it names a
    file, or written with an empty option list: ``onnx:what?.onnx?``); values may be %-escaped."""
    model, descriptor = split_onnx_spec(spec)
    rest = model[len(ONNX_PREFIX):]
    path, query = rest, ""
    if "?" in rest and not Path(rest).expanduser().is_file():
        path, _, query = rest.rpartition("?")
    if not path:
        raise OptionError(f"{spec!r}: no file after 'onnx:' (expected onnx:PATH[?OPTIONS][:DESCRIPTOR])")
    options: dict[str, str] = {}
    for item in (part for part in query.split("&") if part):
        key, sep, value = item.partition("=")
        key = ALIASES.get(key.strip().lower(), key.strip().lower())
        if not sep or not value.strip():
            raise OptionError(f"{spec!r}: option {item!r} is not KEY=VALUE")
        if key not in OPTIONS or key == "descriptor":
            raise OptionError(f"{spec!r}: unknown option {key!r}; known: {', '.join(OPTIONS[:-1])} "
                              "(the descriptor goes after the last ':')")
        if key in options:
            raise OptionError(f"{spec!r}: option {key!r} given twice")
        options[key] = unquote(value.strip())
    return path, options, descriptor


# --------------------------------------------------------------------------------------------------
# Option values


def check_options(options: Mapping[str, Any], where: str = "option", prefix: str = "") -> dict[str, Any]:
    """Validate and normalise option values (strings from a spec or metadata, or Python/JSON values):
    size -> int, layout/colour -> lower-case names, mean/std/scale/offset -> 3 floats, output -> str,
    descriptor -> its canonical text. ``where`` and ``prefix`` name the source in messages."""
    out: dict[str, Any] = {}
    for raw_key, value in options.items():
        key = ALIASES.get(raw_key, raw_key)
        if key not in OPTIONS:
            raise OptionError(f"unknown {where} {prefix}{raw_key}; known: {', '.join(prefix + k for k in OPTIONS)}")
        if key in out:
            raise OptionError(f"{where} {prefix}{key} given twice (colour and color are the same)")
        out[key] = _check_value(key, value, f"{where} {prefix}{raw_key}")
    if {"mean", "std"} & out.keys() and {"scale", "offset"} & out.keys():
        raise OptionError(f"{where}s mix mean/std with scale/offset: give one form of normalisation")
    return out


def _check_value(key: str, value: Any, label: str) -> Any:
    if key == "size":
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise OptionError(f"{label}={value!r}: expected a whole number of pixels")
        try:
            size = int(value)
        except ValueError:
            raise OptionError(f"{label}={value!r}: expected a whole number of pixels") from None
        if not 1 <= size <= MAX_SIZE:
            raise OptionError(f"{label}={value!r}: expected 1..{MAX_SIZE} pixels")
        return size
    if key in ("layout", "output_layout", "colour"):
        choices = COLOURS if key == "colour" else LAYOUTS
        text = str(value).strip().lower() if isinstance(value, str) else None
        if text not in choices:
            raise OptionError(f"{label}={value!r}: expected {' or '.join(choices)}")
        return text
    if key in NORMALISATION:
        return _three_floats(value, label, nonzero=key in ("std", "scale"))
    if key == "output":
        if not isinstance(value, str) or not value.strip():
            raise OptionError(f"{label}={value!r}: expected an output name")
        return value.strip()
    try:  # descriptor
        if not isinstance(value, str):
            raise PoolingError(f"expected text, got {value!r}")
        return str(parse_descriptor(value))
    except PoolingError as exc:
        raise OptionError(f"{label}: {exc}") from None


def _three_floats(value: Any, label: str, nonzero: bool) -> tuple[float, float, float]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list | tuple) else [value]
    try:
        if any(isinstance(v, bool) for v in items):
            raise ValueError
        numbers = [float(v) for v in items]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) == 1:
        numbers *= 3
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers) or (nonzero and 0.0 in numbers):
        raise OptionError(f"{label}={value!r}: expected 1 or 3 finite numbers{' (not 0)' if nonzero else ''}, "
                          "comma-separated")
    return (numbers[0], numbers[1], numbers[2])


def metadata_options(meta: Mapping[str, str]) -> dict[str, Any]:
    """Options that the model's ``metadata_props`` declare: ``framesim.<option>`` keys, and the WinML
    ``Image.BitmapPixelFormat`` / ``Image.NominalPixelRange`` (framesim's keys win where both speak)."""
    winml: dict[str, Any] = {}
    if WINML_FORMAT in meta:
        value = meta[WINML_FORMAT].strip().lower()
        if value not in WINML_FORMATS:
            raise OptionError(f"metadata {WINML_FORMAT}={meta[WINML_FORMAT]!r}: framesim feeds 3 channels, "
                              f"{' or '.join(('Rgb8', 'Bgr8'))}")
        winml["colour"] = WINML_FORMATS[value]
    if WINML_RANGE in meta:
        value = meta[WINML_RANGE].strip().lower()
        if value not in WINML_RANGES:
            raise OptionError(f"metadata {WINML_RANGE}={meta[WINML_RANGE]!r}: known: "
                              "NominalRange_0_255, Normalized_0_1, Normalized_1_1, NominalRange_16_235")
        scale, offset = WINML_RANGES[value]
        winml.update(scale=(scale,) * 3, offset=(offset,) * 3)
    own = check_options({k[len(META_PREFIX):]: v for k, v in meta.items() if k.startswith(META_PREFIX)},
                        "metadata key", META_PREFIX)
    if _gives_normalisation(own):
        winml = {k: v for k, v in winml.items() if k not in NORMALISATION}
    return {**winml, **own}


def _gives_normalisation(options: Mapping[str, Any]) -> bool:
    return any(k in options for k in NORMALISATION)


# --------------------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class Preprocessing:
    """What ``preprocess`` does to RGB uint8 pixels: reorder to ``colour``, then ``x * scale + offset``
    per channel (in the model's channel order)."""

    colour: str
    scale: tuple[float, float, float]
    offset: tuple[float, float, float]

    def key(self) -> str:
        return f"{self.colour};{','.join(map(repr, self.scale))};{','.join(map(repr, self.offset))}"


def resolve_preprocessing(explicit: Mapping[str, Any], metadata: Mapping[str, Any]) -> Preprocessing:
    """Colour order and normalisation: explicit options over metadata over the defaults (RGB, ImageNet
    mean/std). The normalisation is one group: the first source that gives any of mean, std, scale or
    offset gives all of it (an omitted mean or offset is 0, an omitted std or scale 1)."""
    colour = explicit.get("colour") or metadata.get("colour") or "rgb"
    group = explicit if _gives_normalisation(explicit) else metadata if _gives_normalisation(metadata) else None
    if group is None:
        order = slice(None) if colour == "rgb" else slice(None, None, -1)  # the defaults are RGB statistics
        group = {"mean": IMAGENET_MEAN[order], "std": IMAGENET_STD[order]}
    if "scale" in group or "offset" in group:
        scale, offset = group.get("scale", (1.0,) * 3), group.get("offset", (0.0,) * 3)
    else:
        mean, std = group.get("mean", (0.0,) * 3), group.get("std", (1.0,) * 3)
        scale = tuple(1.0 / (255.0 * s) for s in std)
        offset = tuple(-m / s for m, s in zip(mean, std, strict=True))
    return Preprocessing(colour, tuple(scale), tuple(offset))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------
# The config file ($FRAMESIM_HOME/backbones.json, see onnx_model)


def read_config(path: Path) -> dict[str, dict[str, Any]]:
    """The config file's entries, checked (name -> options with an absolute ``path``); {} if there is none."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise OptionError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise OptionError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(data, dict):
        raise OptionError(f"{path}: expected an object of name -> {{\"path\": ..., options}}")
    entries = {}
    for name, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            raise OptionError(f"{path}: {name!r} needs an object with a \"path\" (a string)")
        options = {k: v for k, v in entry.items() if k not in ("path", "description")}
        try:
            check_options(options)
        except OptionError as exc:
            raise OptionError(f"{path}: {name!r}: {exc}") from None
        if "description" in entry and not isinstance(entry["description"], str):
            raise OptionError(f"{path}: {name!r}: description must be a string")
        entries[name] = {**entry, "path": str(path.parent / Path(entry["path"]).expanduser())}
    return entries
