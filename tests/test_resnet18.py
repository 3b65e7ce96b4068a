"""resnet18: torchvision's ResNet-18 in Keras, and the torch-free reader of torch's zip-format ``.pth``.

The ``.pth`` files are written here the way ``torch.save`` writes them (pickle protocol 2 with the same
globals and persistent ids, a zip archive with the same entry names); the network is checked against a
float64 numpy forward pass of torchvision's graph written from its definition (NCHW, torch layouts, -inf
max-pool padding), which is what proves the padding and the layout transposition. No torch anywhere.
Tests that build a Keras model are marked slow.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import http.server
import json
import os
import pickle
import re
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_video
from numpy.lib.stride_tricks import sliding_window_view

import framesim.backbones.resnet18 as R
from framesim.backbones import BackboneError, get_backbone, list_backbones
from framesim.backbones.torch_pth import load_state_dict
from framesim.cli import cli

# ImageNet-1k class indices (see test_efficientnet_lite.py)
CATS = set(range(281, 288))
ESPRESSO_CUP = {967, 968}


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, so no test sees (or writes to) the user's torch cache."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


# --------------------------------------------------------------------------------------------------
# Writing zip-format .pth files by hand: the pickle opcodes torch.save emits, in torch's archive layout


def _plain(obj: object) -> bytes:
    """Pickle opcodes for a plain value (str, int, tuple of ints), without the PROTO header and STOP."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _ordered_dict(items: bytes = b"") -> bytes:
    # OrderedDict's reduce: OrderedDict() then SETITEMS
    return _global("collections", "OrderedDict") + b")R" + (b"(" + items + b"u" if items else b"")


STORAGE_TYPES = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage",
                 np.dtype("float16"): "HalfStorage", np.dtype("uint8"): "ByteStorage"}


@dataclass(frozen=True)
class View:
    """A tensor in a .pth: ``size``/``stride`` elements of storage ``key`` from ``offset``."""

    key: str
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def contiguous(key: str, shape: tuple[int, ...], offset: int = 0) -> View:
    strides = tuple(int(np.prod(shape[i + 1:])) for i in range(len(shape)))
    return View(key, offset, tuple(shape), strides)


def tensor_pickle(v: View, storages: dict[str, np.ndarray], storage_type: tuple[str, str] | None = None) -> bytes:
    """What torch.save pickles for a tensor: ``_rebuild_tensor_v2(persistent storage id, offset, size,
    stride, requires_grad=False, OrderedDict())``; the id is ``("storage", type, key, "cpu", numel)``."""
    module, cls = storage_type or ("torch", STORAGE_TYPES[storages[v.key].dtype])
    numel = storages[v.key].nbytes if cls == "UntypedStorage" else storages[v.key].size
    pid = b"(" + _plain("storage") + _global(module, cls) + _plain(v.key) + _plain("cpu") + _plain(numel) + b"tQ"
    return (_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + _plain(v.offset) + _plain(v.size)
            + _plain(v.stride) + b"\x89" + _ordered_dict() + b"tR")


def state_dict_pickle(views: dict[str, View], storages: dict[str, np.ndarray],
                      storage_type: dict[str, tuple[str, str]] | None = None) -> bytes:
    """``data.pkl`` as torch.save writes a ``state_dict()``: an OrderedDict of tensors, then (BUILD) its
    ``_metadata`` attribute, an OrderedDict of module name -> {"version": n}."""
    storage_type = storage_type or {}
    items = b"".join(_plain(name) + tensor_pickle(v, storages, storage_type.get(v.key)) for name, v in views.items())
    modules = sorted({n.rpartition(".")[0] for n in views})
    meta = b"".join(_plain(m) + b"}" + _plain("version") + _plain(2 if ".bn" in m or m == "bn1" else 1) + b"s"
                    for m in ["", *modules])
    return b"\x80\x02" + _ordered_dict(items) + b"}" + _plain("_metadata") + _ordered_dict(meta) + b"sb."


def write_zip_pth(path: Path, views: dict[str, View], storages: dict[str, np.ndarray], *,
                  prefix: str | None = None, data_pkl: bytes | None = None, byteorder: str | None = "little",
                  storage_type: dict[str, tuple[str, str]] | None = None) -> Path:
    """A torch.save zip archive: ``<prefix>/data.pkl``, ``byteorder``, ``data/<key>``, ``version``
    (prefix: the file's stem, as torch's file writer names it)."""
    prefix = prefix or path.stem
    pkl = data_pkl if data_pkl is not None else state_dict_pickle(views, storages, storage_type)
    order = "<" if byteorder != "big" else ">"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", pkl)
        if byteorder:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for key in sorted(storages):
            arr = storages[key]
            z.writestr(f"{prefix}/data/{key}", arr.astype(arr.dtype.newbyteorder(order)).tobytes())
        z.writestr(f"{prefix}/version", "3\n")
        z.writestr(f"{prefix}/.data/serialization_id", "1234567890")
    return path


# --------------------------------------------------------------------------------------------------
# A random torchvision resnet18 state dict, written with views of shared and permuted storages


def torchvision_shapes() -> dict[str, tuple[int, ...]]:
    """Every entry of torchvision's resnet18 ``state_dict()``, in its order (written from its code)."""
    shapes: dict[str, tuple[int, ...]] = {"conv1.weight": (64, 3, 7, 7)}

    def bn(prefix: str, c: int) -> None:
        shapes.update({f"{prefix}.{p}": (c,) for p in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{prefix}.num_batches_tracked"] = ()

    bn("bn1", 64)
    inplanes = 64
    for i, planes in enumerate((64, 128, 256, 512), 1):
        for b in range(2):
            p = f"layer{i}.{b}"
            shapes[f"{p}.conv1.weight"] = (planes, inplanes if b == 0 else planes, 3, 3)
            bn(f"{p}.bn1", planes)
            shapes[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            if b == 0 and i > 1:
                shapes[f"{p}.downsample.0.weight"] = (planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes)
        inplanes = planes
    shapes["fc.weight"] = (1000, 512)
    shapes["fc.bias"] = (1000,)
    return shapes


def random_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    """He-scaled convs and plausible BN statistics, so activations stay of order one through the net."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    for key, shape in torchvision_shapes().items():
        if key.endswith("num_batches_tracked"):
            sd[key] = np.array(int(rng.integers(0, 10**6)), np.int64)
        elif len(shape) == 4:
            sd[key] = (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))).astype(np.float32)
        elif key.endswith(("running_var", ".weight")) and not key.startswith("fc"):
            sd[key] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            sd[key] = (rng.standard_normal(shape) * (0.01 if key.startswith("fc") else 0.1)).astype(np.float32)
    return sd


def write_resnet18_pth(path: Path, sd: dict[str, np.ndarray]) -> Path:
    """``sd`` as a zip .pth; most tensors own a storage, and some are views as torch can save them:
    conv1.weight a permuted view of a (kh, kw, in, out) storage, layer1.0.bn1's four vectors at offsets
    0/64/128/192 of one storage, fc.weight a transposed view, fc.bias at offset 3 of a longer storage."""
    views: dict[str, View] = {}
    storages: dict[str, np.ndarray] = {}
    shared_bn = "layer1.0.bn1"
    for key, arr in sd.items():
        if key == "conv1.weight":
            storages["conv1"] = np.ascontiguousarray(arr.transpose(2, 3, 1, 0)).ravel()  # (7, 7, 3, 64)
            views[key] = View("conv1", 0, arr.shape, (1, 64, 7 * 3 * 64, 3 * 64))
        elif key.startswith(shared_bn + ".") and not key.endswith("num_batches_tracked"):
            i = ("weight", "bias", "running_mean", "running_var").index(key.rpartition(".")[2])
            views[key] = contiguous("bn_shared", arr.shape, offset=64 * i)
        elif key == "fc.weight":
            storages["fc_t"] = np.ascontiguousarray(arr.T).ravel()
            views[key] = View("fc_t", 0, arr.shape, (1, 1000))
        elif key == "fc.bias":
            storages["fc_b"] = np.concatenate([np.full(3, 7.0, np.float32), arr, np.zeros(2, np.float32)])
            views[key] = contiguous("fc_b", arr.shape, offset=3)
        else:
            k = str(len(storages))
            storages[k] = arr.ravel().copy()
            views[key] = contiguous(k, arr.shape)
    storages["bn_shared"] = np.concatenate([sd[f"{shared_bn}.{p}"] for p in
                                            ("weight", "bias", "running_mean", "running_var")])
    return write_zip_pth(path, views, storages)


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return random_state_dict()


@pytest.fixture(scope="module")
def pth(tmp_path_factory: pytest.TempPathFactory, state_dict: dict[str, np.ndarray]) -> Path:
    return write_resnet18_pth(tmp_path_factory.mktemp("pth") / "resnet18-random.pth", state_dict)


# --------------------------------------------------------------------------------------------------
# numpy reference: torchvision's ResNet18.forward in float64, NCHW, from torch-layout weights


def ref_conv(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """torch.nn.functional.conv2d (no bias): x (n, c, h, w), w (out, c, kh, kw)."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(x, w.shape[2:], axis=(2, 3))[:, :, ::stride, ::stride]  # n c y x i j
    return np.einsum("ncyxij,ocij->noyx", windows, w.astype(np.float64), optimize=True)


def ref_bn(x: np.ndarray, sd: dict[str, np.ndarray], p: str) -> np.ndarray:
    mean, var, gamma, beta = (sd[f"{p}.{k}"].astype(np.float64)[None, :, None, None]
                              for k in ("running_mean", "running_var", "weight", "bias"))
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def ref_maxpool(x: np.ndarray) -> np.ndarray:
    """max_pool2d(kernel 3, stride 2, padding 1): torch pads with -inf."""
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2].max(axis=(4, 5))


def ref_features(images: np.ndarray, sd: dict[str, np.ndarray]) -> np.ndarray:
    """layer4's output (n, 512, h, w) for uint8 RGB images (n, h, w, 3), torchvision-normalised."""
    x = (images / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    x = x.transpose(0, 3, 1, 2)
    relu = lambda t: np.maximum(t, 0)  # noqa: E731
    x = ref_maxpool(relu(ref_bn(ref_conv(x, sd["conv1.weight"], 2, 3), sd, "bn1")))
    for i, stride in enumerate((1, 2, 2, 2), 1):
        for b in range(2):
            p, s = f"layer{i}.{b}", stride if b == 0 else 1
            out = relu(ref_bn(ref_conv(x, sd[f"{p}.conv1.weight"], s, 1), sd, f"{p}.bn1"))
            out = ref_bn(ref_conv(out, sd[f"{p}.conv2.weight"], 1, 1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = ref_bn(ref_conv(x, sd[f"{p}.downsample.0.weight"], s, 0), sd, f"{p}.downsample.1")
            x = relu(out + x)
    return x


def ref_logits(images: np.ndarray, sd: dict[str, np.ndarray]) -> np.ndarray:
    pooled = ref_features(images, sd).mean(axis=(2, 3))  # avgpool + flatten
    return pooled @ sd["fc.weight"].T.astype(np.float64) + sd["fc.bias"]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


# --------------------------------------------------------------------------------------------------
# The zip reader (torch_pth) on files written like torch.save


def test_torchvision_state_dict_known_answers() -> None:
    shapes = torchvision_shapes()
    assert len(shapes) == 122  # len(torchvision.models.resnet18().state_dict())
    params = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var",
                                                                               "num_batches_tracked")))
    assert params == 11_689_512  # torchvision's ResNet18_Weights.IMAGENET1K_V1.meta["num_params"]
    assert R.expected_shapes() == shapes


def test_zip_reader_views_offsets_shared_storage(pth: Path, state_dict: dict[str, np.ndarray]) -> None:
    sd = load_state_dict(pth)
    assert list(sd) == list(state_dict)  # the state dict's order, as saved
    for key, want in state_dict.items():
        assert sd[key].dtype == want.dtype and sd[key].shape == want.shape, key
        np.testing.assert_array_equal(sd[key], want, err_msg=key)
    assert sd["conv1.weight"].strides == (4, 256, 4 * 1344, 4 * 192)  # the permuted view, not a copy
    # One storage, as saved: the variance lies 3 x 64 floats after the weight.
    address = {k: sd[f"layer1.0.bn1.{k}"].__array_interface__["data"][0] for k in ("weight", "running_var")}
    assert address["running_var"] - address["weight"] == 3 * 64 * 4
    assert sd["bn1.num_batches_tracked"].shape == () and sd["bn1.num_batches_tracked"].dtype == np.int64


def test_zip_reader_formats(tmp_path: Path) -> None:
    base = np.arange(12, dtype=np.float32)
    half = np.array([1.5, -2.0, 3.25], np.float16)
    raw = np.array([1, 2, 250], np.uint8)
    views = {"m": contiguous("a", (3, 4)), "t": View("a", 1, (2, 3), (1, 4)), "h": contiguous("b", (3,)),
             "u": contiguous("c", (3,))}
    storages = {"a": base, "b": half, "c": raw}
    for order in ("little", "big", None):  # no byteorder record (torch < 2.1): little-endian
        path = write_zip_pth(tmp_path / f"f-{order}.pth", views, storages, byteorder=order, prefix="archive",
                             storage_type={"c": ("torch.storage", "UntypedStorage")})
        sd = load_state_dict(path)
        np.testing.assert_array_equal(sd["m"], base.reshape(3, 4))
        np.testing.assert_array_equal(sd["t"], [[1, 5, 9], [2, 6, 10]])
        assert sd["h"].dtype == np.float16 and sd["h"].dtype.isnative
        np.testing.assert_array_equal(sd["h"], half)
        assert sd["u"].dtype == np.uint8 and sd["u"].tolist() == [1, 2, 250]  # untyped storage: bytes
    # A training checkpoint {"epoch": 3, "state_dict": {...}} is unwrapped.
    pkl = (b"\x80\x02}(" + _plain("epoch") + _plain(3) + _plain("state_dict") + _ordered_dict(
        _plain("m") + tensor_pickle(views["m"], storages)) + b"u.")
    sd = load_state_dict(write_zip_pth(tmp_path / "ckpt.pth", views, storages, data_pkl=pkl))
    assert list(sd) == ["m"]


def test_zip_reader_rejects_malformed_archives(tmp_path: Path) -> None:
    views, storages = {"w": contiguous("0", (4,))}, {"0": np.arange(4, dtype=np.float32)}
    pkl = state_dict_pickle(views, storages)
    good = write_zip_pth(tmp_path / "good.pth", views, storages).read_bytes()
    (tmp_path / "truncated.pth").write_bytes(good[: len(good) // 2])
    values = np.arange(4, dtype=np.float32).tobytes()
    assert good.count(values) == 1
    (tmp_path / "flipped.pth").write_bytes(good.replace(values, np.arange(1, 5, dtype=np.float32).tobytes()))
    write_zip_pth(tmp_path / "short.pth", views, {"0": np.arange(3, dtype=np.float32)}, data_pkl=pkl)
    write_zip_pth(tmp_path / "missing.pth", views, {}, data_pkl=pkl)
    write_zip_pth(tmp_path / "overrun.pth", {"w": View("0", 2, (2, 2), (2, 1))}, storages)
    write_zip_pth(tmp_path / "order.pth", views, storages, byteorder="middle")
    write_zip_pth(tmp_path / "bf16.pth", views, storages, storage_type={"0": ("torch", "BFloat16Storage")})
    write_zip_pth(tmp_path / "list.pth", views, storages, data_pkl=b"\x80\x02](" + tensor_pickle(views["w"], storages)
                  + b"e.")
    with zipfile.ZipFile(tmp_path / "script.pth", "w") as z:  # torch.jit.save: code/ and constants.pkl too
        z.writestr("script/data.pkl", pkl)
        z.writestr("script/constants.pkl", b"\x80\x02).")
        z.writestr("script/code/__torch__/m.py", "")
    with zipfile.ZipFile(tmp_path / "two.pth", "w") as z:
        z.writestr("a/data.pkl", pkl)
        z.writestr("b/data.pkl", pkl)
    with zipfile.ZipFile(tmp_path / "nopkl.pth", "w") as z:
        z.writestr("nopkl/version", "3")
    cases = {
        "truncated.pth": "zip-format torch checkpoint, but not a readable zip archive",
        "flipped.pth": "damaged archive entry good/data/0 .*CRC",
        "short.pth": "short/data/0 holds 12 bytes, expected 16",
        "missing.pth": "storage 0 has no data",
        "overrun.pth": "overruns its storage",
        "order.pth": "unknown byte order",
        "bf16.pth": "unsupported tensor element type torch.BFloat16Storage",
        "list.pth": "holds a list, not a state dict",
        "script.pth": "TorchScript archive",
        "two.pth": "2 top folders",
        "nopkl.pth": "no nopkl/data.pkl",
    }
    for name, why in cases.items():
        with pytest.raises(ValueError, match=f"{name.replace('.', '[.]')}: .*{why}") as info:
            load_state_dict(tmp_path / name)
        assert "\n" not in str(info.value)


class _Exploit:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (self.command,))


def test_zip_reader_refuses_pickled_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = write_zip_pth(tmp_path / "evil.pth", {}, {}, data_pkl=pickle.dumps(
        collections.OrderedDict([("fc.weight", _Exploit(f"touch {marker}"))]), protocol=2))
    with pytest.raises(BackboneError, match=r"evil\.pth.*refusing to load (posix|os|nt)\.system") as info:
        get_backbone("resnet18", weights=str(evil))
    assert "\n" not in str(info.value) and not marker.exists()
    for module, name in [("builtins", "eval"), ("torch", "load"), ("torch.storage", "TypedStorage"),
                         ("torch._utils", "_rebuild_qtensor")]:
        path = write_zip_pth(tmp_path / "g.pth", {}, {}, data_pkl=b"\x80\x02" + _global(module, name)
                             + _plain(("1",)) + b"R.")
        with pytest.raises(ValueError, match=f"refusing to load {module}.{name}"):
            load_state_dict(path)
    # BUILD after a tensor is checked could rewrite its stride to read outside the storage: refused.
    views, storages = {"w": contiguous("0", (4,))}, {"0": np.arange(4, dtype=np.float32)}
    restride = b"}" + _plain("stride") + _plain((-10**9,)) + b"sb"
    pkl = b"\x80\x02" + _ordered_dict(_plain("w") + tensor_pickle(views["w"], storages) + restride) + b"."
    with pytest.raises(ValueError, match=r"build\.pth.*refusing to set the state of a TensorRef"):
        load_state_dict(write_zip_pth(tmp_path / "build.pth", views, storages, data_pkl=pkl))


def test_state_dict_checks(tmp_path: Path, state_dict: dict[str, np.ndarray]) -> None:
    arrays = R.check_state_dict(state_dict)
    assert len(arrays) == 122 - 20 and all(a.dtype == np.float32 for a in arrays.values())  # no BN counters
    assert R.check_state_dict({f"module.{k}": v for k, v in state_dict.items()}).keys() == arrays.keys()
    ten = dict(state_dict, **{"fc.weight": state_dict["fc.weight"][:10], "fc.bias": state_dict["fc.bias"][:10]})
    assert R.check_state_dict(ten)["fc.bias"].shape == (10,)  # a fine-tuned head
    missing = {k: v for k, v in state_dict.items() if k != "layer3.1.bn2.bias"}
    bad = {
        "missing.*layer3.1.bn2.bias": missing,
        "conv1.weight: shape": dict(state_dict, **{"conv1.weight": state_dict["conv1.weight"][:, :, :5, :5]}),
        "NaN": dict(state_dict, **{"bn1.bias": np.full(64, np.nan, np.float32)}),
        "negative running variance": dict(state_dict, **{"bn1.running_var": -state_dict["bn1.running_var"]}),
        "unexpected.*layer1.2": dict(state_dict, **{"layer1.2.conv1.weight": state_dict["layer1.0.conv1.weight"]}),
    }
    for why, sd in bad.items():
        with pytest.raises(ValueError, match=why):
            R.check_state_dict(sd)
    path = write_resnet18_pth(tmp_path / "partial.pth", missing)
    with pytest.raises(BackboneError, match=r"^resnet18: cannot use .*partial\.pth: .*layer3\.1\.bn2\.bias"):
        get_backbone("resnet18", weights=str(path))
    with pytest.raises(BackboneError, match="does not exist"):
        get_backbone("resnet18", weights=str(tmp_path / "nope.pth"))


# --------------------------------------------------------------------------------------------------
# Finding and downloading the ImageNet weights (a local HTTP server stands in for download.pytorch.org)


def test_torch_home_and_cache_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TORCH_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert R.torch_home() == Path.home() / ".cache" / "torch"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert R.torch_home() == tmp_path / "xdg" / "torch"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert R.cached_weights_path() == tmp_path / "th" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert R.WEIGHTS_URL == "https://download.pytorch.org/models/resnet18-f37072fd.pth"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed: connection refused


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture
def web(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves)."""
    root = tmp_path / "www"
    (root / "models").mkdir(parents=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/models", root / "models"
    server.shutdown()
    server.server_close()


def test_offline_imagenet_says_where_to_put_the_file(torch_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(R, "WEIGHTS_URL", f"http://127.0.0.1:{_closed_port()}/models/resnet18-f37072fd.pth")
    assert not R.weights_available()
    with pytest.raises(BackboneError) as info:
        get_backbone("resnet18")
    message = str(info.value)
    assert "\n" not in message and message.startswith("resnet18: could not download")
    assert str(torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "--weights FILE" in message and "TORCH_HOME" in message
    assert list((torch_home / "hub" / "checkpoints").iterdir()) == []  # no partial file left


def test_download_checks_the_hash_in_the_name(torch_home: Path, pth: Path, web: tuple[str, Path],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    url, root = web
    data = pth.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    (root / f"resnet18-{sha[:8]}.pth").write_bytes(data)
    (root / "resnet18-0badf00d.pth").write_bytes(data)
    checkpoints = torch_home / "hub" / "checkpoints"

    monkeypatch.setattr(R, "WEIGHTS_URL", f"{url}/resnet18-0badf00d.pth")
    with pytest.raises(BackboneError, match=r"resnet18-0badf00d\.pth: sha256 .* does not match the 0badf00d"):
        R.download_weights(R.WEIGHTS_URL, R.cached_weights_path())
    assert list(checkpoints.iterdir()) == []
    monkeypatch.setattr(R, "WEIGHTS_URL", f"{url}/resnet18-missing0.pth")
    with pytest.raises(BackboneError, match="HTTPError.*404"):
        R.download_weights(R.WEIGHTS_URL, R.cached_weights_path())

    monkeypatch.setattr(R, "WEIGHTS_URL", f"{url}/resnet18-{sha[:8]}.pth")
    R.download_weights(R.WEIGHTS_URL, R.cached_weights_path())
    assert R.weights_available() and list(checkpoints.iterdir()) == [R.cached_weights_path()]
    assert R.cached_weights_path().read_bytes() == data
    assert R.load_weights(R.cached_weights_path()).keys() == R.check_state_dict(load_state_dict(pth)).keys()
    # A damaged copy in the cache is caught by the name's hash when it is loaded.
    R.cached_weights_path().write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BackboneError, match="damaged: delete it"):
        get_backbone("resnet18")


def test_backbones_command_lists_resnet18(torch_home: Path) -> None:
    def line() -> str:
        res = CliRunner().invoke(cli, ["backbones"])
        assert res.exit_code == 0, res.output
        return next(s for s in res.output.splitlines() if s.split()[0] == "resnet18")

    info = {b.name: b for b in list_backbones()}["resnet18"]
    assert (info.dim, info.input_size, info.poolable, info.default_descriptor) == (512, 224, True, "avg")
    assert line().split()[1:5] == ["512", "224", "no", "(download)"]
    R.cached_weights_path().parent.mkdir(parents=True)
    R.cached_weights_path().write_bytes(b"")
    assert line().split()[1:4] == ["512", "224", "yes"]


def test_registered_without_importing_tensorflow(tmp_path: Path) -> None:
    code = ("import sys, framesim.backbones.resnet18 as r; r.weights_available(); "
            "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1],
                   env={**os.environ, "TORCH_HOME": str(tmp_path)})


# --------------------------------------------------------------------------------------------------
# The Keras model (slow: TensorFlow)


@pytest.mark.slow
def test_random_weights_embed(torch_home: Path) -> None:
    bb = get_backbone("resnet18", weights=None, runtime="tensorflow")
    assert (bb.name, bb.spec, bb.dim, bb.input_size, bb.weights) == ("resnet18", "resnet18:avg", 512, 224,
                                                                      "random (weights=None)")
    images = np.random.default_rng(0).integers(0, 256, (3, 100, 130, 3), dtype=np.uint8)
    emb = bb.embed(list(images))
    assert emb.shape == (3, 512) and emb.dtype == np.float32 and np.isfinite(emb).all()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert bb.model.output_shape == (None, 7, 7, 512)
    assert not torch_home.exists()  # random weights never download


@pytest.mark.slow
def test_loaded_weights_and_outputs_match_torchvision(pth: Path, state_dict: dict[str, np.ndarray]) -> None:
    """The Keras layers hold the file's arrays (torch (out, in, kh, kw) -> Keras (kh, kw, in, out), each
    batch norm folded in: kernel * gamma / sqrt(var + 1e-5), bias beta - mean * that), and the network
    gives torchvision's layer4 maps and logits (numpy reference) at sizes with even and odd maps."""
    bb = get_backbone("resnet18:avg+ms", weights=str(pth), runtime="tensorflow")  # +ms: any input size
    assert bb.weights == str(pth) and bb.spec == "resnet18:avg+ms"
    n_convs = 0
    for key, shape in torchvision_shapes().items():
        if len(shape) != 4:
            continue
        conv = key[: -len(".weight")]
        # torchvision's names: conv1 -> bn1, layerX.Y.convN -> layerX.Y.bnN, downsample.0 -> downsample.1
        bn = (conv[:-1] + "1" if conv.endswith("downsample.0")
              else conv.rpartition(".")[0] + (".bn" if "." in conv else "bn") + conv[-1])
        gamma, beta, mean, var = (state_dict[f"{bn}.{p}"].astype(np.float64)
                                  for p in ("weight", "bias", "running_mean", "running_var"))
        scale = gamma / np.sqrt(var + 1e-5)
        kernel, bias = bb.model.get_layer(conv.replace(".", "_")).get_weights()
        np.testing.assert_allclose(kernel, state_dict[key].transpose(2, 3, 1, 0) * scale, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(bias, beta - mean * scale, rtol=1e-6, atol=1e-7)
        n_convs += 1
    assert n_convs == 20
    fc_kernel, fc_bias = bb.classifier.get_layer("fc").get_weights()
    np.testing.assert_array_equal(fc_kernel, state_dict["fc.weight"].T)
    np.testing.assert_array_equal(fc_bias, state_dict["fc.bias"])

    rng = np.random.default_rng(3)
    for side, n in ((64, 2), (72, 1)):  # 64: maps 32/16/8/4/2; 72: 36/18/9/5/3 (odd maps into stride 2)
        images = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
        want = ref_features(images, state_dict).transpose(0, 2, 3, 1)
        got = bb.feature_maps(bb.preprocess(images))
        assert got.shape == want.shape
        assert relative_error(got, want) < 1e-4
        logits = np.asarray(bb.classifier(bb.preprocess(images), training=False))
        assert relative_error(logits, ref_logits(images, state_dict)) < 1e-4

    # The default spec: fixed 224 input, global average pooling, L2-normalised: torchvision's avgpool.
    default = get_backbone("resnet18", weights=str(pth), runtime="tensorflow")
    image = rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)
    pooled = ref_features(image, state_dict).mean(axis=(2, 3))
    np.testing.assert_allclose(default.embed(image), pooled / np.linalg.norm(pooled), atol=1e-5)
    probs = default.classify(list(image))
    assert probs.shape == (1, 1000)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_onnxruntime_and_fast_start(home: Path, pth: Path) -> None:
    """The exported network runs in ONNX Runtime with TensorFlow's outputs; the next start finds it through
    the runtime index without building the Keras model."""
    pytest.importorskip("onnxruntime")
    images = list(np.random.default_rng(4).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8))
    tf_emb = get_backbone("resnet18", weights=str(pth), runtime="tensorflow").embed(images)
    first = get_backbone("resnet18", weights=str(pth), runtime="onnxruntime")
    assert first.runtime == "onnxruntime"
    np.testing.assert_allclose(first.embed(images), tf_emb, atol=1e-4)
    second = get_backbone("resnet18", weights=str(pth))
    assert second.runtime == "onnxruntime" and second._model is None
    np.testing.assert_allclose(second.embed(images), tf_emb, atol=1e-4)


@pytest.mark.slow
def test_match_with_random_weights_from_the_cli(tmp_path: Path, torch_home: Path) -> None:
    video = write_video(tmp_path / "v.mp4", 6, size=(64, 48))
    examples = tmp_path / "examples"
    examples.mkdir()
    cap = cv2.VideoCapture(str(video))
    ok, frame = cap.read()
    cap.release()
    assert ok
    cv2.imwrite(str(examples / "first.png"), frame)
    dataset, run = tmp_path / "dataset", tmp_path / "run"
    assert CliRunner().invoke(cli, ["extract", str(video), "-o", str(dataset), "-q"]).exit_code == 0
    res = CliRunner().invoke(cli, ["match", str(examples), "-d", str(dataset), "-b", "resnet18", "--weights",
                                   "resnet18=none", "-k", "1", "-o", str(run), "-q", "--no-report"])
    assert res.exit_code == 0, res.output
    assert re.search(r"resnet18: [1-6] frames embedded", res.output)
    backbone = json.loads((run / "run.json").read_text())["backbones"][0]
    assert (backbone["name"], backbone["spec"], backbone["weights"]) == ("resnet18", "resnet18:avg",
                                                                         "random (weights=None)")
    assert (run / "pairs.csv").read_text().count("\n") == 2  # header and the example's best frame
    assert not torch_home.exists()


@pytest.mark.slow
def test_imagenet_weights_classify_photos(shared_media: Path) -> None:
    """Only where torchvision's file is in the torch cache (nothing is downloaded for this test)."""
    if not R.weights_available():
        pytest.skip(f"torchvision's ImageNet weights not at {R.cached_weights_path()}")
    from framesim.images import load_image

    d = shared_media / "images" / "skimage"
    photos = [load_image(d / n) for n in ("chelsea.png", "coffee.png")]
    bb = get_backbone("resnet18", runtime="tensorflow")
    top1 = bb.classify(photos).argmax(axis=1).tolist()
    assert top1[0] in CATS and top1[1] in ESPRESSO_CUP, top1
    emb = bb.embed(photos)
    assert float(bb.embed([photos[0][5:, 5:]])[0] @ emb[0]) > 0.9 > float(emb[0] @ emb[1])
