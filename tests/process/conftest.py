"""A whole appliance shared by a module's tests that only read from it (two CPU shards, the tiny model), and
the real embedded default model for the tests that classify real photos."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import skimage

from daemon.model.default_model import MODEL_FILENAME, default_weights_path, export_default_model
from testkit.config import write_settings
from testkit.harness import Appliance
from tests.conftest import tiny_sections

SKIMAGE_DATA = Path(str(skimage.__file__)).parent / "data"
"""scikit-image's sample photos: coffee.png is an espresso, chelsea.png a tabby cat."""


@pytest.fixture(scope="module")
def default_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The embedded EfficientNet-Lite0 (model, labels), built from its weights into the module's folder."""
    folder = tmp_path_factory.mktemp("default-model")
    export_default_model(folder, default_weights_path())
    return folder / MODEL_FILENAME, folder / "imagenet-labels.txt"


def default_model_section(default_model: tuple[Path, Path]) -> dict[str, Any]:
    """The `[model]` settings that serve the embedded default model, preprocessed as it was trained."""
    model_path, labels_path = default_model
    return {
        "path": model_path,
        "labels": labels_path,
        "input_size": 224,
        "preprocessing": "efficientnet_lite",
    }


@pytest.fixture(scope="module")
def shared_appliance(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Path]
) -> Iterator[Appliance]:
    folder = tmp_path_factory.mktemp("appliance")
    sections = tiny_sections(tiny_model, devices={"cpu_workers": 2})
    config = write_settings(folder, sections)
    appliance = Appliance(folder, config, sections["api"]["port"], Path(sections["paths"]["run_dir"]), 2)
    appliance.start()
    yield appliance
    appliance.stop()
