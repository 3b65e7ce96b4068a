"""Any ONNX image model as a backbone: ``-b onnx:PATH[?OPTIONS][:DESCRIPTOR]``, run by ONNX Runtime (CPU).

Spec: ``onnx:model.onnx``, ``onnx:/models/m.onnx:gem+flip``,
``'onnx:m.onnx?size=224&layout=nchw&colour=bgr&mean=0.485,0.456,0.406&std=0.229,0.224,0.225:avg'``
(quote it in a shell). The path may be relative (to the current folder) and may hold ':' (the
descriptor is the text after the last ':' when it is one, see ``pooling``); the options follow the
last '?' as ``KEY=VALUE`` joined by '&' (values may be %-escaped). Options, also keyword arguments of
``OnnxBackbone`` / ``register_onnx_backbone`` and keys of the config file:

- ``size``: the square input side in pixels. Default: the graph input's static H/W; a model whose H
  and W are both dynamic needs it (a one-line error says so).
- ``layout``: ``nchw`` or ``nhwc``. Default: the input axis that is 3 (axis 1: NCHW, axis 3: NHWC).
- ``colour`` (or ``color``): ``rgb`` or ``bgr``, the channel order the network expects. Default rgb.
- normalisation, in the model's channel order (after ``colour``): ``mean`` and ``std`` on pixel/255
  (``(x / 255 - mean) / std``), or ``scale`` and ``offset`` on 0..255 pixels (``x * scale + offset``);
  1 or 3 comma-separated numbers. One group: an omitted mean/offset is 0, std/scale 1. Default: the
  ImageNet mean/std (reordered for bgr).
- ``output``: the output to use, by name. Default: the first.
- ``output_layout``: ``nchw`` or ``nhwc`` for a 4-D output. Default: the input's layout.
- ``descriptor``: (keyword/config only) the default descriptor of a registered name. Default avg.

Precedence: keyword arguments, then the spec's options, then a registered name's options, then the
model's own ``metadata_props``, then the defaults above. Metadata read: framesim's keys
``framesim.<option>`` (``framesim.mean = "0.5,0.5,0.5"``, ``framesim.layout = "nchw"``, same syntax; stamp
an exported model once with ``onnx.helper.set_model_props``), and the WinML image convention
``Image.BitmapPixelFormat`` (``Rgb8``/``Bgr8``) and ``Image.NominalPixelRange`` (``NominalRange_0_255``,
``Normalized_0_1``, ``Normalized_1_1``, ``NominalRange_16_235``); framesim's keys win over WinML's.

Output: a 2-D ``(n, dim)`` output is the embedding as it is (L2-normalised; a descriptor is an error).
A 4-D output is a feature map, pooled by the descriptor (``avg`` unless told: arbitrary maps may be
negative, which GeM clamps); ``+ms`` needs an input whose H and W are dynamic. Any other rank, a
non-float output or an unknown size (after one dummy run) is an error. A model with a fixed batch size
runs in chunks of that size (the last one zero-padded).

Identity: ``weights`` is ``sha256:<the file's sha256>``, so ``embeddings.weights_tag`` (which takes
names as they are) gives a content tag and a changed file never reuses old vectors; ``spec`` is
``onnx-<sha 12>-<preprocessing hash 8>[:DESCRIPTOR]``, a short, safe cache folder for any path; ``name``
is the spec as typed (for the pairs and the report); ``recipe`` holds the absolute path.

Registered names: ``register_onnx_backbone(name, path, **options)``, or the config file
``$FRAMESIM_HOME/backbones.json``, a JSON object of name -> options plus ``"path"`` (relative paths
are relative to the file) and an optional ``"description"``::

    {"mynet": {"path": "models/mynet.onnx", "size": 224, "colour": "bgr", "descriptor": "gem"}}

``framesim backbones`` lists them; ``-b mynet`` and ``-b mynet:gem`` use them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from framesim.backbones.base import _REGISTRY, Backbone, BackboneError, BackboneInfo, register_backbone
from framesim.backbones.onnx_options import (
    OptionError,
    check_options,
    metadata_options,
    parse_onnx_spec,
    read_config,
    resolve_preprocessing,
)
from framesim.backbones.pooling import Descriptor, PoolingError, describe, parse_descriptor

log = logging.getLogger(__name__)

CONFIG_NAME = "backbones.json"
DEFAULT_DESCRIPTOR = Descriptor("avg")
FLOAT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")
#: bump when the same file and options would give other vectors; it is part of ``spec``
FORMAT = 1
_SESSIONS: dict[tuple[str, str, int], Any] = {}
_SESSION_CACHE = 4  # sessions kept for reuse (registration probes, then the factory builds)
_REGISTERED: set[str] = set()  # names register_onnx_backbone made (may be re-registered)


class OnnxBackbone(Backbone):
    """An ONNX image model: options and metadata as in the module docstring."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, *, descriptor: Descriptor | str | None = None, runtime: str = "auto",
                 name: str | None = None, **options: Any) -> None:
        label = str(path)
        self.name = name or f"onnx:{label}"
        if runtime not in ("auto", "onnxruntime"):  # one --runtime serves every backbone of a run
            log.warning("%s: ONNX models run in ONNX Runtime, not %s", label, runtime)
        if "weights" in options:
            raise BackboneError(f"{label}: an ONNX model carries its weights; --weights does not apply")
        try:
            explicit = check_options(options)
            self.path = Path(path).expanduser().resolve()
        except (OptionError, OSError) as exc:
            raise BackboneError(f"{label}: {exc}") from None
        if not self.path.is_file():
            raise BackboneError(f"{label}: no such ONNX file{_descriptor_hint(label)}")
        from framesim._io import sha256_file  # lazily: framesim._io imports pandas

        try:
            self.sha256 = sha256_file(self.path)  # once: the cache key, and the session cache's
        except OSError as exc:
            raise BackboneError(f"{label}: cannot read it ({exc.strerror or exc})") from None
        self.weights = f"sha256:{self.sha256}"
        self._session = _session(self.path, self.sha256, label)
        try:
            meta = metadata_options(self._session.get_modelmeta().custom_metadata_map)
            self._prep = resolve_preprocessing(explicit, meta)
        except OptionError as exc:
            raise BackboneError(f"{label}: {exc}") from None
        settings = {**meta, **explicit}
        self._resolve_input(settings, label)
        self._scale = np.asarray(self._prep.scale, np.float32)
        self._offset = np.asarray(self._prep.offset, np.float32)
        self._resolve_output(settings, "output_layout" in explicit, label)
        self._resolve_descriptor(descriptor, settings, label)
        prep = json.dumps([FORMAT, self.input_size, self.layout, self._prep.key(), self._output, self.output_layout])
        self._base = f"onnx-{self.sha256[:12]}-{hashlib.sha256(prep.encode()).hexdigest()[:8]}"

    # -- resolving the model's interface ---------------------------------------------------------
    def _resolve_input(self, settings: Mapping[str, Any], label: str) -> None:
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BackboneError(f"{label}: the model has {len(inputs)} inputs; framesim feeds one image tensor")
        node = inputs[0]
        shape = [d if isinstance(d, int) and d > 0 else None for d in (node.shape or [])]
        if node.type != "tensor(float)" or len(shape) != 4:
            raise BackboneError(f"{label}: input {node.name!r} is {node.type} {node.shape}: expected a 4-D float "
                                "image tensor")
        layout = settings.get("layout")
        if layout is None:
            if (shape[1] == 3) == (shape[3] == 3):
                raise BackboneError(f"{label}: cannot tell the layout of input shape {node.shape}: give layout=nchw "
                                    "or layout=nhwc")
            layout = "nchw" if shape[1] == 3 else "nhwc"
        channels, h, w = (shape[1], shape[2], shape[3]) if layout == "nchw" else (shape[3], shape[1], shape[2])
        if channels not in (None, 3):
            raise BackboneError(f"{label}: input {node.name!r} {node.shape} has {channels} channels in {layout}; "
                                "framesim feeds 3")
        if h is not None and w is not None and h != w:
            raise BackboneError(f"{label}: input {node.name!r} is fixed at {h}x{w}: only square inputs are supported")
        fixed = h or w
        size = settings.get("size")
        if fixed is not None and size is not None and size != fixed:
            raise BackboneError(f"{label}: size={size} does not fit the model's input, fixed at {fixed}x{fixed}")
        if fixed is None and size is None:
            raise BackboneError(f"{label}: input {node.name!r} {node.shape} has dynamic height and width: give "
                                "size=PIXELS (e.g. onnx:model.onnx?size=224)")
        self._input, self.layout, self.input_size = node.name, layout, int(fixed or size)
        self.dynamic_hw = h is None and w is None
        #: the model's fixed batch size (None: any)
        self.batch_size: int | None = shape[0]

    def _resolve_output(self, settings: Mapping[str, Any], layout_given: bool, label: str) -> None:
        outputs = self._session.get_outputs()
        want = settings.get("output")
        if want is not None and want not in [o.name for o in outputs]:
            raise BackboneError(f"{label}: no output {want!r}; outputs: {', '.join(o.name for o in outputs)}")
        node = next(o for o in outputs if o.name == want) if want else outputs[0]
        if node.type not in FLOAT_TYPES:
            raise BackboneError(f"{label}: output {node.name!r} is {node.type}: expected floats")
        self._output, self._output_type = node.name, node.type
        shape = list(node.shape or [])
        self.output_layout = settings.get("output_layout") or self.layout
        dim = self._dim_of(shape)
        if dim is None:  # rank or channels unknown from the graph: one dummy batch tells
            pixels = np.full((self.batch_size or 1, self.input_size, self.input_size, 3), 128, np.uint8)
            try:
                shape = list(self._run(self.preprocess(pixels)).shape)
            except Exception as exc:  # ONNX Runtime raises its own kinds
                raise BackboneError(f"{label}: running the model on a {self.input_size}x{self.input_size} batch "
                                    f"failed ({_one_line(exc)})") from None
            dim = self._dim_of(shape)
        if len(shape) not in (2, 4) or dim is None:
            raise BackboneError(f"{label}: output {node.name!r} has shape {shape}: expected a (n, dim) vector or a "
                                "4-D feature map (n, C, h, w) / (n, h, w, C)")
        self.maps = len(shape) == 4
        if layout_given and not self.maps:
            raise BackboneError(f"{label}: output_layout applies to 4-D outputs; {node.name!r} is {shape}")
        self.dim = int(dim)

    def _dim_of(self, shape: list[Any]) -> int | None:
        axis = {2: 1, 4: 1 if self.output_layout == "nchw" else 3}.get(len(shape))
        if axis is None:
            return -1 if shape else None  # -1: a known, unusable rank (checked by the caller)
        dim = shape[axis]
        return dim if isinstance(dim, int) and dim > 0 else None

    def _resolve_descriptor(self, descriptor: Descriptor | str | None, settings: Mapping[str, Any],
                            label: str) -> None:
        if not self.maps:
            if descriptor is not None:
                raise BackboneError(f"{label}: the model outputs {self.dim}-d vectors: no feature map to pool "
                                    f"with {str(descriptor)!r}")
            self.descriptor: Descriptor | None = None
            return
        try:
            self.descriptor = parse_descriptor(descriptor if descriptor is not None else settings.get("descriptor"),
                                               DEFAULT_DESCRIPTOR)
        except PoolingError as exc:
            raise BackboneError(f"{label}: {exc}") from None
        if self.descriptor.multiscale and not self.dynamic_hw:
            raise BackboneError(f"{label}: +ms runs the model at other sizes, but its input is fixed at "
                                f"{self.input_size}x{self.input_size}")

    # -- identity ---------------------------------------------------------------------------------
    @property
    def spec(self) -> str:
        return f"{self._base}:{self.descriptor}" if self.descriptor is not None else self._base

    @property
    def about(self) -> str:
        """One line for ``framesim backbones``."""
        if not self.maps:
            return f"ONNX {self.path} ({self.sha256[:12]}): {self.dim}-d vectors"
        other = "ms" if self.dynamic_hw else ""
        return (f"ONNX {self.path} ({self.sha256[:12]}): {self.dim}-channel {self.output_layout.upper()} maps, "
                f"{self.descriptor}; or :avg, :gem, :mac, :rmac, +flip{', +' + other if other else ''}")

    # -- running ----------------------------------------------------------------------------------
    def preprocess(self, batch: np.ndarray) -> np.ndarray:
        # NHWC here whatever the model's layout: flips and ms rescale along these axes; _run transposes.
        x = batch[..., ::-1] if self._prep.colour == "bgr" else batch
        return x.astype(np.float32) * self._scale + self._offset

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Preprocessed NHWC batch -> the chosen output as float32 (the model's own layout)."""
        x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2) if self.layout == "nchw" else batch, np.float32)
        step = self.batch_size
        if step is None or len(x) == step:
            return np.asarray(self._session.run([self._output], {self._input: x})[0], np.float32)
        parts = []
        for start in range(0, len(x), step):
            chunk = x[start:start + step]
            padded = np.concatenate([chunk, np.zeros((step - len(chunk), *x.shape[1:]), np.float32)])
            parts.append(np.asarray(self._session.run([self._output], {self._input: padded})[0][:len(chunk)],
                                    np.float32))
        return np.concatenate(parts)

    def feature_maps(self, batch: np.ndarray) -> np.ndarray:
        """The output of a preprocessed batch as (n, h, w, C) maps (feature-map models)."""
        out = self._run(batch)
        return out.transpose(0, 2, 3, 1) if self.output_layout == "nchw" else out

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        if not len(batch):  # a fixed-batch model has nothing to run; the output's shape is known anyway
            return np.zeros((0, self.dim), np.float32)
        if self.descriptor is not None:
            return describe(self.feature_maps, batch, self.descriptor, _resize_batch)
        out = self._run(batch)
        if out.shape != (len(batch), self.dim):
            raise BackboneError(f"{self.path}: output {self._output!r} has shape {out.shape}, expected "
                                f"({len(batch)}, {self.dim})")
        return out


def _resize_batch(batch: np.ndarray, side: int) -> np.ndarray:
    interp = cv2.INTER_AREA if side < batch.shape[1] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (side, side), interpolation=interp) for im in batch])


def _session(path: Path, sha256: str, label: str) -> Any:
    """An ONNX Runtime session for the file (shared by backbones of the same file, content and threads)."""
    from framesim.backbones.runtime import cpu_threads, onnxruntime_session

    threads = cpu_threads()
    key = (str(path), sha256, threads)
    if key not in _SESSIONS:
        try:
            session = onnxruntime_session(path, threads)
        except Exception as exc:  # ONNX Runtime raises its own kinds for files it cannot read
            raise BackboneError(f"{label}: not a usable ONNX model ({_one_line(exc)})") from None
        while len(_SESSIONS) >= _SESSION_CACHE:
            _SESSIONS.pop(next(iter(_SESSIONS)))
        _SESSIONS[key] = session
    return _SESSIONS[key]


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


def _descriptor_hint(path: str) -> str:
    # "onnx:m.onnx:gemx" reads as a file named "m.onnx:gemx": say why the tail was not a descriptor.
    head, sep, tail = path.rpartition(":")
    if not sep or not head or "/" in tail or "\\" in tail or "." in tail:
        return ""
    try:
        parse_descriptor(tail)
    except PoolingError as exc:
        return f" (if :{tail} is meant as a descriptor: {exc})"
    return ""


# --------------------------------------------------------------------------------------------------
# Specs, registered names and the config file


def onnx_backbone(spec: str, runtime: str = "auto", **kwargs: Any) -> OnnxBackbone:
    """The backbone for ``onnx:PATH[?OPTIONS][:DESCRIPTOR]`` (``get_backbone`` calls this); kwargs are options
    and win over the spec's."""
    try:
        path, inline, descriptor = parse_onnx_spec(spec)
    except OptionError as exc:
        raise BackboneError(str(exc)) from None
    if "descriptor" in kwargs:
        if descriptor is not None:
            raise BackboneError(f"{spec!r}: descriptor given twice (in the spec and as an argument)")
        descriptor = kwargs.pop("descriptor")
    options = {**inline, **kwargs}
    backbone = OnnxBackbone(path, descriptor=descriptor, runtime=runtime, name=spec.strip(), **options)
    # Rebuildable elsewhere (a cluster worker with another current folder): the absolute path, options as kwargs.
    rebuild = f"onnx:{backbone.path}" + (f":{backbone.descriptor}" if backbone.descriptor is not None else "")
    backbone.recipe = (rebuild, backbone.runtime, options)
    return backbone


def register_onnx_backbone(name: str, path: str | Path, *, description: str | None = None,
                           descriptor: str | None = None, **options: Any) -> BackboneInfo:
    """Register the ONNX model at ``path`` as backbone ``name`` (``-b name``, ``-b name:gem`` ...) with these
    options (see the module docstring); ``descriptor``: what plain ``name`` pools with. The file is opened now
    for ``framesim backbones``' dim and input size; an unusable file is still registered (listed with its
    error, which ``get_backbone`` raises)."""
    if name == "onnx" or name in _REGISTRY and name not in _REGISTERED:
        raise BackboneError(f"cannot register ONNX backbone {name!r}: the name is taken")
    if ":" in name or not name.strip():
        raise BackboneError(f"cannot register ONNX backbone {name!r}: a name cannot be empty or hold ':'")
    path = Path(path).expanduser().resolve()
    try:
        probe = OnnxBackbone(path, descriptor=descriptor, name=name, **options)
        dim, size, poolable, about = probe.dim, probe.input_size, probe.descriptor is not None, probe.about
        default = str(probe.descriptor) if probe.descriptor is not None else None
    except BackboneError as exc:
        dim, size, poolable, default = 0, int(options.get("size") or 0), True, descriptor
        about = f"ONNX model, unusable: {exc}"

    def factory(descriptor: Descriptor | None = None, runtime: str = "auto", **kwargs: Any) -> OnnxBackbone:
        return OnnxBackbone(path, descriptor=descriptor, runtime=runtime, name=name, **{**options, **kwargs})

    register_backbone(name, dim=dim, input_size=size, description=description or about,
                      weights_available=path.is_file, poolable=poolable, default_descriptor=default)(factory)
    _REGISTERED.add(name)
    return _REGISTRY[name]


def config_path() -> Path:
    """``$FRAMESIM_HOME/backbones.json``."""
    from framesim.backbones.efficientnet_lite import framesim_home  # where every framesim cache lives

    return framesim_home() / CONFIG_NAME


def register_configured(only: str | None = None, strict: bool = True) -> list[str]:
    """Register the config file's models (or just ``only``); return the names registered. ``strict=False``
    (listing): problems are warnings, so one bad entry does not hide the other backbones."""
    try:
        entries = read_config(config_path())
    except OptionError as exc:
        if strict:
            raise BackboneError(str(exc)) from None
        log.warning("%s", exc)
        return []
    done = []
    for name, entry in entries.items():
        if only is not None and name != only:
            continue
        options = {k: v for k, v in entry.items() if k not in ("path", "description")}
        try:
            register_onnx_backbone(name, entry["path"], description=entry.get("description"), **options)
        except BackboneError as exc:
            if strict:
                raise BackboneError(f"{config_path()}: {exc}") from None
            log.warning("%s: %s", config_path(), exc)
            continue
        done.append(name)
    return done
