"""Settings: the shipped file loads, the environment overrides, bad values stop the start with one line."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.settings import (
    DEFAULT_CONFIG,
    HOME,
    SECTIONS,
    check_model_files,
    gpu_selection_text,
    load_settings,
    resolve_config_path,
)
from testkit.config import write_settings


def test_shipped_settings_load_with_documented_defaults():
    settings = load_settings(DEFAULT_CONFIG, env={})
    assert (settings.api.host, settings.api.port) == ("127.0.0.1", 8000)
    assert settings.redis.managed and settings.redis_socket == settings.paths.run_dir / "redis.sock"
    assert (
        settings.model.path
        == (DEFAULT_CONFIG.parent.parent / "var/models/efficientnet-lite0.keras").resolve()
    )
    assert settings.devices.gpus is None  # "auto"


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
    assert settings.devices.gpus == (0, 2)


def test_a_misspelt_environment_override_stops_the_start_like_a_typo_in_the_file(tmp_path: Path):
    config = write_settings(tmp_path, {"api": {"port": 8000}})
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['INFERD_API_BOGUS'\] in the environment"):
        load_settings(config, env={"INFERD_API_BOGUS": "1"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bogus'\] in \[api\]"):
        (tmp_path / "typo").mkdir()
        load_settings(write_settings(tmp_path / "typo", {"api": {"bogus": 1}}), env={})
    # What the launcher hands supervisord's programs looks like a setting but is not one.
    inherited = {
        "INFERD_API_INSTANCE": "1",
        "INFERD_REDIS_CONF": "/run/redis.conf",
        "INFERD_LOG_LEVEL": "INFO",
    }
    assert load_settings(config, env=inherited).api.port == 8000


def test_relative_paths_are_relative_to_the_settings_file(tmp_path: Path):
    config = write_settings(tmp_path, {"model": {"path": "models/m.keras"}, "devices": {"gpus": [1, 3]}})
    settings = load_settings(config, env={})
    assert settings.model.path == (tmp_path / "models/m.keras").resolve()
    assert settings.devices.gpus == (1, 3)


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
        ({"devices": {"gpus": [0, -1]}}, {}, 'devices.gpus = [0, -1] is not allowed: "auto", "none", or a'),
        (
            {"devices": {"gpus": [1, 1]}},
            {},
            "devices.gpus = [1, 1] is not allowed: each GPU index at most once",
        ),
        ({"devices": {"gpus": 1}}, {}, "devices.gpus = 1 is not allowed"),
        ({}, {"INFERD_DEVICES_GPUS": "0,x"}, "devices.gpus = '0,x' is not allowed"),
        ({"api": {"colour": "blue"}}, {}, "unknown key(s) ['colour'] in [api]"),
        (
            {"api": {"tls_cert_file": "cert.pem"}},
            {},
            "api.tls_key_file = '' is not allowed: api.tls_cert_file and api.tls_key_file are set together",
        ),
        ({}, {"INFERD_API_TLS_KEY_FILE": "key.pem"}, "api.tls_cert_file = '' is not allowed"),
        ({"api": {"max_connections": 10}}, {}, "api.max_connections = 10 is not allowed"),
        ({"api": {"client_timeout_s": 0}}, {}, "api.client_timeout_s = 0.0 is not allowed: 0.5 to 3600"),
        ({"queue": {"heartbeat_ttl_s": 0.5}}, {}, "queue.heartbeat_ttl_s = 0.5 is not allowed"),
        (
            {"queue": {"pixels": "shm"}},
            {},
            "queue.pixels = 'shm' is not allowed: one of ('shared_memory', 'redis')",
        ),
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


def test_every_shipped_value_is_the_code_default():
    # Operators read conf/settings.toml and code builds sections without a file: one must not say 16 threads
    # while the other says 32. Relative default paths are relative to HOME, as the file's are to conf/.
    raw = tomllib.loads(DEFAULT_CONFIG.read_text())
    shipped = load_settings(DEFAULT_CONFIG, env={})
    assert set(raw) == set(SECTIONS)
    for section, section_type in SECTIONS.items():
        fields = {f.name: f.default for f in dataclasses.fields(section_type)}
        assert set(raw[section]) == set(fields), f"[{section}] in the file lists other keys than the code"
        for key, default in fields.items():
            if isinstance(default, Path):
                default = (HOME / default).resolve()
            value = getattr(getattr(shipped, section), key)
            assert value == default, f"{section}.{key}: the file says {value!r}, the code {default!r}"


def test_a_key_a_file_leaves_out_takes_the_shipped_value(tmp_path: Path):
    settings = load_settings(write_settings(tmp_path, {"api": {"port": 9000}}), env={})
    assert settings.api.threads == load_settings(DEFAULT_CONFIG, env={}).api.threads
    assert settings.paths.run_dir == load_settings(DEFAULT_CONFIG, env={}).paths.run_dir


@pytest.mark.parametrize(
    ("written", "env", "expected", "text"),
    [
        ("auto", None, None, "auto"),
        ("none", None, (), "none"),
        ([0, 1], None, (0, 1), "0,1"),
        ("auto", "none", (), "none"),
        ("none", " AUTO ", None, "auto"),
        ("auto", "3, 1", (3, 1), "3,1"),
    ],
)
def test_gpu_selection_is_typed_once_from_the_file_or_the_environment(
    tmp_path: Path, written, env, expected, text
):
    config = write_settings(tmp_path, {"devices": {"gpus": written}})
    settings = load_settings(config, env={} if env is None else {"INFERD_DEVICES_GPUS": env})
    assert settings.devices.gpus == expected
    assert gpu_selection_text(settings.devices.gpus) == text


@pytest.mark.parametrize("key", ["api.auth_token_file", "redis.password_file"])
def test_secret_files_are_read_at_load_and_kept_out_of_the_repr(tmp_path: Path, key: str):
    section, name = key.split(".")
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o600)
    settings = load_settings(write_settings(tmp_path, {section: {name: str(secret)}}), env={})
    read = settings.secrets.auth_token if section == "api" else settings.secrets.redis_password
    assert read == "s3cret-value"
    assert "s3cret-value" not in repr(settings)


@pytest.mark.parametrize("key", ["api.auth_token_file", "redis.password_file"])
def test_a_missing_or_empty_secret_file_is_a_config_error_naming_the_key(tmp_path: Path, key: str):
    section, name = key.split(".")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    for path, message in ((empty, "is empty"), (tmp_path / "nope", "cannot be read: No such file")):
        config = write_settings(tmp_path, {section: {name: str(path)}})
        with pytest.raises(ConfigError) as error:
            load_settings(config, env={})
        assert error.value.message.startswith(f"{key} = {str(path)!r} {message}")


def test_model_files_are_checked_by_their_own_step(tmp_path: Path):
    # Tools load settings on machines without the model; only the commands that serve call this.
    settings = load_settings(write_settings(tmp_path, {"model": {"path": "absent.keras"}}), env={})
    with pytest.raises(ConfigError, match=re.escape(f"model.path = {str(tmp_path / 'absent.keras')!r} does")):
        check_model_files(settings)


@pytest.mark.parametrize("key", ["api.auth_token_file", "redis.password_file"])
def test_a_world_readable_secret_file_is_refused(tmp_path: Path, key: str):
    section, name = key.split(".")
    secret = tmp_path / "secret"
    secret.write_text("s3cret-value\n")
    secret.chmod(0o644)
    config = write_settings(tmp_path, {section: {name: str(secret)}})
    with pytest.raises(ConfigError, match=re.escape(f"{key} = {str(secret)!r} is readable by every user")):
        load_settings(config, env={})
    secret.chmod(0o640)  # the appliance's group may read it
    assert load_settings(config, env={}).secrets is not None


def test_an_external_redis_over_the_network_needs_a_password_or_an_opt_in(tmp_path: Path):
    remote = {"managed": False, "host": "10.1.2.3", "port": 6379}
    with pytest.raises(ConfigError, match=re.escape("redis.host = '10.1.2.3' is not allowed")):
        load_settings(write_settings(tmp_path, {"redis": remote}), env={})
    load_settings(write_settings(tmp_path, {"redis": {**remote, "allow_no_password": True}}), env={})
    for loopback in ("127.0.0.1", "::1", "localhost"):
        load_settings(write_settings(tmp_path, {"redis": {**remote, "host": loopback}}), env={})
    secret = tmp_path / "password"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    load_settings(write_settings(tmp_path, {"redis": {**remote, "password_file": str(secret)}}), env={})
