"""Read a PyTorch ``.pth`` state dict into numpy arrays, without torch: both file formats.

The zip format (``torch.save``'s default since torch 1.6; torchvision's ImageNet weights) is a zip
archive (entries stored, not compressed) whose names all start with one folder ``<prefix>/``
(the saved file's stem, or ``archive``):

* ``data.pkl``: pickle (protocol 2) of the object; each tensor is ``torch._utils._rebuild_tensor_v2(
  storage, offset, size, stride, requires_grad, backward_hooks[, metadata])`` and each storage a
  persistent id ``("storage", storage_type, key, location, numel)``; ``storage_type`` is a typed class
  (``torch.FloatStorage``, numel in elements) or ``torch.UntypedStorage`` (bytes);
* ``data/<key>``: each storage's raw elements, ``numel`` times the element size;
* ``version`` (the format version, digits), and since torch 2.1 ``byteorder`` (``little``/``big``;
  files without it are little-endian, as torch assumes).

The legacy format (``torch.save(..., _use_new_zipfile_serialization=False)``, and every file written
by torch < 1.6) is a concatenation of:

1. pickle: the magic number ``0x1950a86a20f9469cfc6c``
2. pickle: the protocol version (1001)
3. pickle: sys_info (``{"little_endian": bool, "type_sizes": {...}, ...}``)
4. pickle: the object itself, tensors and storages as above (a storage id may carry a sixth item,
   ``view_metadata``, in files of old torch)
5. pickle: the list of storage keys, in the order their data follows
6. for each key: an 8-byte element count, then the raw elements

Unpickling runs code named by the file, so a ``.pth`` is as dangerous as a script. The unpickler
here (the same for both formats) resolves only the handful of names a state dict needs, each to a
harmless local stand-in; anything else (``os.system``, ``builtins.eval``, ...) is refused before it can
run, and the stand-ins refuse pickle's BUILD so a file cannot rewrite a checked offset or stride.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001
#: how every torch.save zip archive (and torch's own check, ``_is_zipfile``) starts
ZIP_MAGIC = b"PK\x03\x04"

#: legacy storage class name -> element dtype (little-endian; byte order fixed up from sys_info)
STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


#: the untyped storage class (zip format; its numel counts bytes), by the modules it is pickled under
UNTYPED_STORAGE = {("torch", "UntypedStorage"), ("torch.storage", "UntypedStorage")}


class _StandIn:
    """Base of the unpickled stand-ins: pickle's BUILD (setting attributes after the checks) is refused."""

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError(f"refusing to set the state of a {type(self).__name__.strip('_')}")


class _StorageType(_StandIn):
    """Stand-in for ``torch.FloatStorage`` etc.: only carries the element dtype."""

    def __init__(self, name: str, dtype: np.dtype | None = None) -> None:
        self.name = name
        self.dtype = STORAGE_DTYPES[name] if dtype is None else dtype


class _StorageRef(_StandIn):
    """A storage named in the pickle; its data is read after the pickle (``array`` set then)."""

    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None


class _TensorRef(_StandIn):
    """A tensor whose storage data is not read yet (it follows the pickle in the file)."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...],
                 stride: tuple[int, ...]) -> None:
        self.storage = storage
        self.offset = offset
        self.size = size
        self.stride = stride


class _View(_StandIn):
    """A storage view (old torch): ``numel`` elements of ``base`` starting at ``offset``."""

    def __init__(self, base: _StorageRef, offset: int, numel: int) -> None:
        self.base = base
        self.offset = offset
        self.numel = numel


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(type(v) is int for v in value):
        raise ValueError(f"tensor {what} is not a tuple of ints: {value!r:.80}")
    return value


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None, metadata: Any = None
                       ) -> _TensorRef:
    if isinstance(storage, _View):
        storage_offset = storage_offset + storage.offset if type(storage_offset) is int else None
        storage = storage.base
    if not isinstance(storage, _StorageRef):
        raise ValueError(f"tensor storage is not a storage reference: {type(storage).__name__}")
    if type(storage_offset) is not int or storage_offset < 0:
        raise ValueError(f"bad tensor storage offset {storage_offset!r:.80}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride) or any(v < 0 for v in size + stride):
        raise ValueError(f"bad tensor size/stride {size}/{stride}")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None) -> Any:
    # nn.Parameter wrapper: the tensor is all a state dict needs.
    return data


def _ordered_dict(*args: Any) -> collections.OrderedDict:
    # Only the no-argument form pickle uses (REDUCE with an empty tuple); items come via SETITEMS.
    # Refusing arguments keeps the constructor from consuming arbitrary iterables.
    if args:
        raise ValueError("unexpected OrderedDict constructor arguments")
    return collections.OrderedDict()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can build a state dict and nothing else."""

    _ALLOWED: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): _ordered_dict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in UNTYPED_STORAGE:
            return _StorageType("UntypedStorage", np.dtype("u1"))
        if module == "torch" and name.endswith("Storage"):
            raise pickle.UnpicklingError(f"unsupported tensor element type torch.{name}")
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a tensor state dict")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r:.80}")
        _, storage_type, key, _location, numel = pid[:5]
        view_metadata = pid[5] if len(pid) == 6 else None
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str) or type(numel) is not int:
            raise pickle.UnpicklingError(f"malformed storage id {pid!r:.80}")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, storage_type.dtype, numel)
        elif ref.dtype != storage_type.dtype:
            raise pickle.UnpicklingError(f"storage {key} used with two dtypes")
        if view_metadata is not None:
            # Old torch: (view_key, offset, view_numel) into the root storage ``key``.
            if not (isinstance(view_metadata, tuple) and len(view_metadata) == 3):
                raise pickle.UnpicklingError(f"malformed storage view {view_metadata!r:.80}")
            _view_key, offset, view_numel = view_metadata
            if type(offset) is not int or type(view_numel) is not int or offset < 0 or view_numel < 0:
                raise pickle.UnpicklingError(f"malformed storage view {view_metadata!r:.80}")
            return _View(ref, offset, view_numel)
        return ref


class _NoGlobalsUnpickler(pickle.Unpickler):
    """For the header pickles and the key list: plain ints, strings, lists and dicts only."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} outside the tensor pickle")


def _load_pickle(fh: io.BytesIO) -> Any:
    return _NoGlobalsUnpickler(fh).load()


def _materialise(tensor: _TensorRef) -> np.ndarray:
    storage = tensor.storage
    assert storage.array is not None
    itemsize = storage.array.itemsize
    # Last element reached must lie inside the storage (as_strided does not check).
    if any(s == 0 for s in tensor.size):
        return np.zeros(tensor.size, storage.array.dtype)
    last = tensor.offset + sum((n - 1) * st for n, st in zip(tensor.size, tensor.stride, strict=True))
    if last >= storage.array.size:
        raise ValueError(f"tensor (offset {tensor.offset}, size {tensor.size}, stride {tensor.stride}) "
                         f"overruns its storage of {storage.array.size} elements")
    return np.lib.stride_tricks.as_strided(
        storage.array[tensor.offset:],
        shape=tensor.size,
        strides=tuple(st * itemsize for st in tensor.stride),
    )


def _resolve(obj: Any) -> Any:
    """Replace tensor stand-ins in the unpickled object by numpy arrays."""
    if isinstance(obj, _TensorRef):
        return _materialise(obj)
    if isinstance(obj, Mapping):
        return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def _unpickle_object(fh: io.BytesIO) -> tuple[Any, _RestrictedUnpickler]:
    """The tensor pickle at ``fh``'s position, by the restricted unpickler (which keeps the storages)."""
    unpickler = _RestrictedUnpickler(fh)
    try:
        return unpickler.load(), unpickler
    except (pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"cannot unpickle ({exc})") from exc
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError,
            MemoryError) as exc:
        # Malformed opcodes surface as all sorts of errors from the pickle machinery.
        raise ValueError(f"cannot unpickle ({type(exc).__name__}: {exc})") from exc


def _set_array(ref: _StorageRef, raw: memoryview | bytes, little_endian: bool) -> None:
    dtype = ref.dtype if little_endian else ref.dtype.newbyteorder(">")
    # Copy: arrays own their memory (writable, and the file bytes can be freed).
    ref.array = np.frombuffer(raw, dtype=dtype).astype(ref.dtype.newbyteorder("="))


def read_legacy(data: bytes) -> Any:
    """Parse the bytes of a legacy torch file; return the saved object with tensors as numpy arrays.

    Raises ValueError (without the file name) on anything malformed.
    """
    if data[:4] == ZIP_MAGIC:
        raise ValueError("this is a zip-format torch checkpoint (torch >= 1.6 default): read it with read_zip")
    fh = io.BytesIO(data)
    try:
        magic = _load_pickle(fh)
        if magic != MAGIC_NUMBER:
            raise ValueError("not a torch file (neither a zip archive nor the legacy magic number)")
        protocol = _load_pickle(fh)
        if protocol != PROTOCOL_VERSION:
            raise ValueError(f"unsupported torch protocol version {protocol!r:.40}")
        sys_info = _load_pickle(fh)
        if not isinstance(sys_info, dict):
            raise ValueError("malformed sys_info header")
        little_endian = bool(sys_info.get("little_endian", True))
        obj, unpickler = _unpickle_object(fh)
        keys = _load_pickle(fh)
    except (pickle.UnpicklingError, EOFError) as exc:
        raise ValueError(f"cannot unpickle ({exc})") from exc
    except (TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError, MemoryError) as exc:
        raise ValueError(f"cannot unpickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise ValueError("malformed storage key list")

    view = memoryview(data)
    pos = fh.tell()
    for key in keys:
        ref = unpickler.storages.get(key)
        if ref is None:
            raise ValueError(f"storage {key} listed but never used")
        if pos + 8 > len(data):
            raise ValueError(f"truncated: storage {key} header missing")
        numel = int.from_bytes(view[pos:pos + 8], "little" if little_endian else "big")
        pos += 8
        if numel != ref.numel:
            raise ValueError(f"storage {key}: {numel} elements in the data, {ref.numel} in the pickle")
        nbytes = numel * ref.dtype.itemsize
        if pos + nbytes > len(data):
            raise ValueError(f"truncated: storage {key} needs {nbytes} bytes, {len(data) - pos} left")
        _set_array(ref, view[pos:pos + nbytes], little_endian)
        pos += nbytes
    missing = [k for k, r in unpickler.storages.items() if r.array is None]
    if missing:
        raise ValueError(f"{len(missing)} storages have no data (e.g. {missing[0]})")
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} unexpected trailing bytes")
    return _resolve(obj)


def _archive_prefix(names: list[str]) -> str:
    """The one top folder of a torch.save archive (torch's reader also takes a single one)."""
    prefixes = {n.split("/", 1)[0] for n in names}
    if len(prefixes) != 1 or not all("/" in n for n in names):
        raise ValueError(f"not a torch.save archive: entries under {len(prefixes)} top folders, not one")
    prefix = prefixes.pop()
    if f"{prefix}/data.pkl" not in names:
        raise ValueError(f"not a torch.save archive: no {prefix}/data.pkl")
    if f"{prefix}/constants.pkl" in names or any(n.startswith(f"{prefix}/code/") for n in names):
        raise ValueError("a TorchScript archive (torch.jit.save), not a state dict saved with torch.save")
    return prefix


def read_zip(data: bytes) -> Any:
    """Parse the bytes of a zip-format torch file; return the saved object with tensors as numpy arrays.

    Raises ValueError (without the file name) on anything malformed.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        names = archive.namelist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"zip-format torch checkpoint, but not a readable zip archive ({exc})") from exc
    with archive:
        prefix = _archive_prefix(names)

        def record(name: str, limit: int | None = None) -> bytes:
            # zipfile checks each entry's CRC when it is read in full: flipped bytes surface here.
            info = archive.getinfo(f"{prefix}/{name}")
            if limit is not None and info.file_size != limit:
                raise ValueError(f"{prefix}/{name} holds {info.file_size} bytes, expected {limit}")
            try:
                return archive.read(info)
            except Exception as exc:  # zipfile, zlib and the compressors each raise their own kinds
                raise ValueError(f"damaged archive entry {prefix}/{name} ({type(exc).__name__}: {exc})") from exc

        if f"{prefix}/version" in names:
            version = record("version").strip()
            if not version.isdigit():
                raise ValueError(f"malformed format version record {version[:20]!r}")
        little_endian = True
        if f"{prefix}/byteorder" in names:
            order = record("byteorder")
            if order not in (b"little", b"big"):
                raise ValueError(f"unknown byte order {order[:20]!r}")
            little_endian = order == b"little"
        obj, unpickler = _unpickle_object(io.BytesIO(record("data.pkl")))
        for key, ref in unpickler.storages.items():
            if f"{prefix}/data/{key}" not in names:
                raise ValueError(f"storage {key} has no data ({prefix}/data/{key} missing)")
            _set_array(ref, record(f"data/{key}", ref.numel * ref.dtype.itemsize), little_endian)
    return _resolve(obj)


def read_torch(data: bytes) -> Any:
    """Parse a torch file of either format (zip if it starts as torch's own reader checks, else legacy)."""
    return read_zip(data) if data[:4] == ZIP_MAGIC else read_legacy(data)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a torch ``.pth`` state dict (zip or legacy format) as ``{name: array}`` without torch.

    Arrays keep the tensors' dtype, shape and strides (tensors sharing a storage share memory).
    A checkpoint that wraps the state dict as ``{"state_dict": {...}}`` is unwrapped.
    Raises ``ValueError`` naming the file when it is missing, truncated, not a torch file, or holds
    anything other than tensors (refusing any pickled code along the way).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    try:
        obj = read_torch(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, np.ndarray):
            raise ValueError(f"{path}: entry {key!r:.80} is a {type(value).__name__}, not a tensor")
        out[key] = value
    return out
