"""Shared fixtures: a real redis-server per session, tiny generated models, settings files, appliances.

The layers, fastest first:
- tests/unit: pure functions and stand-ins (a fake NVML module, a small in-test HTTP server); no Redis
  server, no Keras model (tests/unit/conftest.py refuses the fixtures that start them).
- tests/integration: the session's real redis-server (flushed around each test), the Falcon app through
  TestClient, and in-process workers on the tiny generated Keras model.
- tests/model: the real embedded default model.
- tests/process: the real supervisord, gunicorn and worker processes, signalled and their exit codes checked.

Inside each layer the folders mirror daemon/: tests/<layer>/<package>/ holds the tests of daemon/<package>/
(and of tools/, bench/ and testkit/ under their own names); the tests of the entry and base modules (api,
dispatcher, gpu_worker, shard, launcher, settings, errors, logs) and of the whole appliance sit at the
layer's top.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

from daemon.queue.pixel_store import create_folder, remove_folder, segment_folder
from daemon.settings import Settings, load_settings
from testkit.config import short_folder, write_settings
from testkit.harness import Appliance, free_port, redis_server
from testkit.images import encode_image
from tests.tiny_model import build_tiny_model

TINY_INPUT = 32


@pytest.fixture(scope="session")
def redis_socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with redis_server(tmp_path_factory.mktemp("redis")) as sock:
        yield sock


@pytest.fixture()
def redis_client(redis_socket: Path) -> Iterator[redis.Redis]:
    client = redis.Redis(unix_socket_path=str(redis_socket))
    client.flushall()
    yield client
    client.flushall()
    client.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), input_size=TINY_INPUT)


def tiny_sections(tiny_model: tuple[Path, Path], **overrides: dict[str, Any]) -> dict[str, dict[str, Any]]:
    model_path, labels_path = tiny_model
    sections: dict[str, dict[str, Any]] = {
        "api": {"port": free_port(), "request_timeout_s": 10.0},
        "model": {"path": model_path, "labels": labels_path, "input_size": TINY_INPUT, "preprocessing": "tf"},
        "devices": {"gpus": "none", "cpu_workers": 1},
        # Unix socket paths are limited to 107 bytes, so the run dir is short and under /tmp.
        "paths": {"run_dir": str(short_folder()), "log_dir": "log"},
    }
    for section, values in overrides.items():
        sections.setdefault(section, {}).update(values)
    return sections


def standin_model(folder: Path, batch_ms: float, **spec: Any) -> Path:
    """A stand-in model file (daemon/model/standin.py) that sleeps `batch_ms` per batch: it starts in about a second
    and makes "the worker is inside a batch" last as long as a test needs."""
    path = folder / f"standin-{batch_ms:g}ms.json"
    path.write_text(json.dumps({"inferd_standin": 1, "batch_ms": batch_ms, "per_image_ms": 0, **spec}))
    return path


@pytest.fixture()
def make_settings(tmp_path: Path, tiny_model: tuple[Path, Path]) -> Iterator[Callable[..., Settings]]:
    """Settings for the tiny model, written to a real file and loaded the real way."""

    made: list[Settings] = []

    def make(env: dict[str, str] | None = None, **overrides: dict[str, Any]) -> Settings:
        path = write_settings(tmp_path, tiny_sections(tiny_model, **overrides))
        made.append(load_settings(path, env=env or {}))
        # What `inferd run` does at start: the API and workers built on these settings find their folder.
        made[-1].paths.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        create_folder(made[-1])
        return made[-1]

    yield make
    for settings in made:
        # Each has its own throwaway run dir, so its shared-memory folder would outlive the test.
        folder = segment_folder(settings)
        if folder is not None:
            remove_folder(folder)


@pytest.fixture()
def redis_settings(make_settings: Callable[..., Settings], redis_socket: Path) -> Settings:
    """Tiny-model settings that talk to the session's redis-server."""
    return make_settings(redis={"managed": False, "socket": str(redis_socket)})


@pytest.fixture()
def start_appliance(tmp_path: Path, tiny_model: tuple[Path, Path]) -> Iterator[Callable[..., Appliance]]:
    """Start a whole appliance (tiny model, CPU shards) and stop it after the test; with `ready=False`, return
    without waiting for it to become ready (for an appliance that must not)."""
    started: list[Appliance] = []

    def start(
        shards: int = 2, env: dict[str, str] | None = None, ready: bool = True, **overrides: dict[str, Any]
    ) -> Appliance:
        overrides.setdefault("devices", {}).update({"cpu_workers": shards})
        sections = tiny_sections(tiny_model, **overrides)
        # A second appliance in one test gets its own folder: settings file, log dir and output.
        folder = tmp_path / f"appliance-{len(started)}" if started else tmp_path
        folder.mkdir(exist_ok=True)
        config = write_settings(folder, sections)
        appliance = Appliance(
            folder, config, sections["api"]["port"], Path(sections["paths"]["run_dir"]), shards, env
        )
        started.append(appliance)
        if ready:
            appliance.start()
        else:
            appliance.launch()
        return appliance

    yield start
    for appliance in started:
        appliance.stop()


@pytest.fixture(scope="session")
def photo_png() -> bytes:
    """A 451x300 natural photo (scikit-image's astronaut), the size the benchmark uploads."""
    from skimage import data

    astronaut = data.astronaut()  # type: ignore[no-untyped-call]
    return encode_image(np.asarray(Image.fromarray(astronaut).resize((451, 300))))
