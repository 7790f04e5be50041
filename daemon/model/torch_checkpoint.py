"""Read a PyTorch state-dict checkpoint (.pth) into numpy arrays, without torch and without unsafe pickles."""

from __future__ import annotations

import collections
import logging
import pickle
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from daemon.errors import ModelLoadError

log = logging.getLogger(__name__)

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
"""First pickle of a pre-1.6 (non-zip) torch.save file."""
LEGACY_PROTOCOL = 1001
"""The only legacy protocol version torch ever wrote."""

STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
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
"""torch storage classes a checkpoint may name, and their little-endian numpy dtypes."""


class CheckpointError(ModelLoadError):
    """The checkpoint is malformed, unsupported, or asks the unpickler for something it must not build."""


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class _StorageRef:
    key: str
    dtype: np.dtype[Any]
    numel: int


@dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(
    storage: _StorageRef, offset: int, shape: tuple[int, ...], stride: tuple[int, ...], *_: object
) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"tensor built on {type(storage).__name__}, not a storage")
    # Only described here: in the legacy format the storage bytes come after this pickle. int() makes a
    # malformed shape fail now, as an unpickling error, rather than later as a crash.
    return _TensorRef(storage, int(offset), tuple(int(n) for n in shape), tuple(int(s) for s in stride))


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only tensors, storages and OrderedDicts; any other global is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name, STORAGE_DTYPES[name])
        raise CheckpointError(
            f"checkpoint refers to {module}.{name}, which a weights file has no reason to need; refusing it"
        )

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id in checkpoint: {pid!r:.100}")
        storage_type, key, _location, numel = pid[1:5]
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"persistent id names {storage_type!r:.100}, not a storage type")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("checkpoint uses storage views (torch < 0.4 format); re-save it")
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def _unpickle(stream: IO[bytes]) -> Any:
    try:
        return _RestrictedUnpickler(stream).load()
    except CheckpointError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        TypeError,
        ValueError,
        AttributeError,
        IndexError,
        KeyError,
    ) as exc:
        raise CheckpointError(f"corrupt checkpoint pickle: {exc}") from exc


def _materialise(ref: _TensorRef, storages: Mapping[str, np.ndarray]) -> np.ndarray:
    data = storages[ref.storage.key]
    if any(n == 0 for n in ref.shape):
        return np.zeros(ref.shape, dtype=data.dtype)
    # Bounds-check by hand: as_strided would happily read past the buffer of a malformed file.
    extent = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True)) + 1
    if ref.offset < 0 or min(ref.stride, default=0) < 0 or extent > data.size:
        raise CheckpointError(f"tensor of shape {ref.shape} runs past its storage of {data.size} elements")
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * data.itemsize for s in ref.stride),
        writeable=False,
    )
    # Native byte order and an owned, contiguous buffer: callers hand these straight to Keras.
    return np.array(view, dtype=data.dtype.newbyteorder("="), order="C")


def _state_dict(obj: Any, storages: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
    tensors: dict[str, np.ndarray] = {}
    for name, value in obj.items():
        if not isinstance(value, _TensorRef):
            raise CheckpointError(f"checkpoint entry {name!r} is a {type(value).__name__}, not a tensor")
        tensors[str(name)] = _materialise(value, storages)
    return tensors


def _collect_refs(obj: Any) -> list[_StorageRef]:
    values = obj.values() if isinstance(obj, Mapping) else []
    return [v.storage for v in values if isinstance(v, _TensorRef)]


def _read_legacy(stream: IO[bytes]) -> dict[str, np.ndarray]:
    magic = _unpickle(stream)
    if magic != LEGACY_MAGIC:
        raise CheckpointError("not a PyTorch checkpoint (bad magic number)")
    protocol = _unpickle(stream)
    if protocol != LEGACY_PROTOCOL:
        raise CheckpointError(f"unsupported legacy checkpoint protocol {protocol!r}")
    sys_info = _unpickle(stream)
    if isinstance(sys_info, dict) and sys_info.get("little_endian") is False:
        raise CheckpointError("checkpoint was written on a big-endian machine; not supported")
    obj = _unpickle(stream)
    keys = _unpickle(stream)
    if not isinstance(keys, list):
        raise CheckpointError("legacy checkpoint lacks its list of storage keys")
    refs = {ref.key: ref for ref in _collect_refs(obj)}
    storages: dict[str, np.ndarray] = {}
    # Storages follow in the order of `keys`, each as an int64 element count then the raw bytes.
    for key in keys:
        ref = refs.get(str(key))
        if ref is None:
            raise CheckpointError(f"storage {key!r} is not used by any tensor")
        header = stream.read(8)
        if len(header) != 8:
            raise CheckpointError(f"checkpoint truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != ref.numel:
            raise CheckpointError(f"storage {key!r} holds {numel} elements, its tensor expects {ref.numel}")
        raw = stream.read(numel * ref.dtype.itemsize)
        if len(raw) != numel * ref.dtype.itemsize:
            raise CheckpointError(f"checkpoint truncated inside storage {key!r}")
        storages[str(key)] = np.frombuffer(raw, dtype=ref.dtype)
    return _state_dict(obj, storages)


def _read_zip(archive: zipfile.ZipFile) -> dict[str, np.ndarray]:
    # torch names the top folder after the file it saved to, so find it rather than assume "archive/".
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
        raise CheckpointError("zip checkpoint has no single <folder>/data.pkl")
    prefix = pickles[0].removesuffix("data.pkl")
    if prefix + "byteorder" in archive.namelist() and archive.read(prefix + "byteorder") != b"little":
        raise CheckpointError("checkpoint was written big-endian; not supported")
    with archive.open(pickles[0]) as stream:
        obj = _unpickle(stream)
    storages: dict[str, np.ndarray] = {}
    for ref in {r.key: r for r in _collect_refs(obj)}.values():
        try:
            raw = archive.read(f"{prefix}data/{ref.key}")
        except KeyError as exc:
            raise CheckpointError(f"zip checkpoint lacks storage {ref.key!r}") from exc
        if len(raw) != ref.numel * ref.dtype.itemsize:
            raise CheckpointError(f"storage {ref.key!r} has {len(raw)} bytes, expected {ref.numel} elements")
        storages[ref.key] = np.frombuffer(raw, dtype=ref.dtype)
    return _state_dict(obj, storages)


def read_state_dict(path: Path) -> dict[str, np.ndarray]:
    """Read a torch.save'd state dict (legacy or zip format) into name -> numpy array."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                tensors = _read_zip(archive)
        else:
            with path.open("rb") as stream:
                tensors = _read_legacy(stream)
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    log.debug("checkpoint: read %d tensors from %s", len(tensors), path)
    return tensors
