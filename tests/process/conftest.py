"""A whole appliance shared by a module's tests that only read from it (two CPU shards, the tiny model)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import tiny_sections
from tools.harness import Appliance, write_settings


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
