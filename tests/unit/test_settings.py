"""Settings: the shipped file loads, the environment overrides, bad values stop the start with one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.settings import DEFAULT_CONFIG, load_settings, resolve_config_path
from tools.harness import write_settings


def test_shipped_settings_load_with_documented_defaults():
    settings = load_settings(DEFAULT_CONFIG, env={})
    assert (settings.api.host, settings.api.port) == ("127.0.0.1", 8000)
    assert settings.redis.managed and settings.redis_socket == settings.paths.run_dir / "redis.sock"
    assert (
        settings.model.path
        == (DEFAULT_CONFIG.parent.parent / "var/models/efficientnet-lite0.keras").resolve()
    )
    assert settings.gpu_indices() is None  # "auto"


def test_environment_overrides_any_key(tmp_path: Path):
    config = write_settings(tmp_path, {"api": {"port": 8000}})
    env = {
        "INFERD_API_PORT": "9000",
        "INFERD_MODEL_PATH": "/m.keras",
        "INFERD_BATCHING_MAX_WAIT_MS": "2.5",
        "INFERD_REDIS_MANAGED": "false",
        "INFERD_DEVICES_GPUS": "0,2",
    }
    settings = load_settings(config, env=env)
    assert settings.api.port == 9000
    assert settings.model.path == Path("/m.keras")
    assert settings.batching.max_wait_ms == 2.5
    assert settings.redis.managed is False
    assert settings.gpu_indices() == [0, 2]


def test_relative_paths_are_relative_to_the_settings_file(tmp_path: Path):
    config = write_settings(tmp_path, {"model": {"path": "models/m.keras"}, "devices": {"gpus": [1, 3]}})
    settings = load_settings(config, env={})
    assert settings.model.path == (tmp_path / "models/m.keras").resolve()
    assert settings.gpu_indices() == [1, 3]


def test_config_file_choice_cli_then_env_then_default():
    assert resolve_config_path("/a.toml", {"INFERD_CONFIG": "/b.toml"}) == Path("/a.toml")
    assert resolve_config_path(None, {"INFERD_CONFIG": "/b.toml"}) == Path("/b.toml")
    assert resolve_config_path(None, {}) == DEFAULT_CONFIG


@pytest.mark.parametrize(
    ("sections", "env", "message"),
    [
        ({"api": {"port": 70000}}, {}, "api.port = 70000 is not allowed: an integer from 1 to 65535"),
        ({}, {"INFERD_API_PORT": "eighty"}, "api.port = 'eighty' is not allowed: expected an integer"),
        ({"batching": {"max_batch_size": 0}}, {}, "batching.max_batch_size = 0 is not allowed"),
        ({"model": {"preprocessing": "magic"}}, {}, "model.preprocessing = 'magic' is not allowed: one of"),
        ({"devices": {"gpus": "first"}}, {}, "devices.gpus = 'first' is not allowed"),
        ({"api": {"colour": "blue"}}, {}, "unknown key(s) ['colour'] in [api]"),
        ({"queue": {"heartbeat_ttl_s": 0.5}}, {}, "queue.heartbeat_ttl_s = 0.5 is not allowed"),
        (
            {},
            {"INFERD_REDIS_MANAGED": "perhaps"},
            "redis.managed = 'perhaps' is not allowed: expected true or false",
        ),
    ],
)
def test_invalid_settings_name_the_key_the_value_and_what_is_allowed(tmp_path, sections, env, message):
    config = write_settings(tmp_path, sections)
    with pytest.raises(ConfigError) as error:
        load_settings(config, env=env)
    assert message in error.value.message
    assert "\n" not in error.value.message


def test_missing_and_malformed_files_are_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("[api\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, env={})


def test_pixel_limit_cannot_exceed_what_pillow_decodes(tmp_path: Path):
    config = write_settings(tmp_path, {"api": {"max_image_pixels": 500_000_000}})
    with pytest.raises(ConfigError, match=re.escape("api.max_image_pixels = 500000000 is not allowed")):
        load_settings(config, env={})
