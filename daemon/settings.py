"""Typed, frozen settings: loaded from TOML, overridden from the environment, validated once at start.

Every start-time check lives here: `load_settings` checks the values and reads the secret files, and
`check_model_files` checks the model's files for the commands that serve (tools load settings without them).

Why past 400 lines: each key's type, default, one-line meaning and allowed range sit together in its
section's dataclass, next to the one loader and validator that read them, so a new setting is one edit here
(as gunicorn's config.py keeps each setting whole); about half the lines are those key docstrings. Split by
section, a key's default and its check would live in two files.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import pwd
import re
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.errors import ConfigError

HOME = Path(__file__).resolve().parent.parent
"""The checkout (or installed app folder): relative paths among the defaults below are relative to it."""
DEFAULT_CONFIG = HOME / "conf" / "settings.toml"
"""The settings file used when neither --config nor INFERD_CONFIG names one."""

ENV_PREFIX = "INFERD_"
"""Environment variables INFERD_<SECTION>_<KEY> override the file's values."""
NOT_SETTINGS_ENV = frozenset(
    {"INFERD_API_INSTANCE", "INFERD_REDIS_AUTOSTART", "INFERD_REDIS_CONF", "INFERD_REDIS_SERVER"}
)
"""Variables that look like INFERD_<SECTION>_<KEY> but are not settings: the launcher sets them for
supervisord's config (daemon/launcher.py, daemon/ops/front_door.py), and every program inherits them."""

PILLOW_PIXEL_CEILING = 178_956_970
"""Twice Pillow's MAX_IMAGE_PIXELS: Pillow raises DecompressionBombError above it in any case."""
PREPROCESSING_MODES = ("none", "efficientnet_lite", "tf", "torch", "caffe")
RESIZE_MODES = ("crop", "stretch")
DECODE_PLACES = ("auto", "api", "shard")
DISPATCH_POLICIES = ("round_robin", "shortest_queue")
PIXEL_PATHS = ("shared_memory", "redis")
MAX_API_THREADS = 1024
"""Most threads per API process (auto or explicit): past it a process spends its CPU switching threads."""
MAX_API_WORKERS = 64
"""Most API processes: each holds its own Redis pool, and Redis's clients are bounded by file descriptors."""
KERAS_BACKENDS = ("tensorflow", "jax", "torch")
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
"""A model name that is one URL path segment as it stands, as Triton's model repository names are."""


# The defaults below are the values conf/settings.toml ships, so a key a file leaves out means what the shipped
# file says. Both are written down because code builds sections without a file (tests, bench) and operators
# read the file; tests/unit/test_settings.py compares them key by key, so they cannot drift apart.


@dataclass(frozen=True, slots=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2
    threads: int = 0
    """Per API process; 0 derives it from the shard count (daemon/ops/capacity.py)."""
    request_timeout_s: float = 10.0
    max_body_bytes: int = 20_000_000
    max_image_pixels: int = 50_000_000
    """Per image: a 50 MP phone photo (8160x6120) or a 45 MP full-frame camera's still fits; more is refused."""
    max_request_pixels: int = 400_000_000
    """Per request (KServe V2 batches), summed from the files' headers before any decode: 8 such photos, or
    33 of a phone's usual 12 MP."""
    default_top: int = 5
    max_top: int = 100
    auth_token_file: Path | None = None
    client_timeout_s: float = 10.0
    max_connections: int = 16384
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    drain_grace_s: float = 3.0
    client_max_connections: int = 256
    """Requests one client address may have in progress at the front door at once (more: 429); 0: no limit."""
    client_requests_per_s: int = 1000
    """Requests per second one client address may send, with a burst of as many again (more: 429); 0: none."""
    trusted_proxies: tuple[str, ...] = ()
    """Balancers (addresses or networks) whose X-Forwarded-For names the client the limits count."""
    decode_in: str = "auto"
    """Where /predict's uploads are decoded: "api", "shard", or "auto" (the shard on a box with GPU shards,
    the API otherwise; daemon/images/shard_decode.py says why)."""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    socket: Path | None = None
    host: str = "127.0.0.1"
    port: int = 6379
    password_file: Path | None = None
    managed: bool = True
    maxmemory_mb: int = 0
    allow_no_password: bool = False
    """An external Redis over TCP beyond loopback without `password_file`: refused at start unless true."""


@dataclass(frozen=True, slots=True)
class ModelSettings:
    path: Path = Path("var/models/efficientnet-lite0.keras")
    labels: Path = Path("var/models/imagenet-labels.txt")
    input_size: int = 224
    resize: str = "crop"
    crop_fraction: float = 0.875
    preprocessing: str = "efficientnet_lite"
    backend: str = "tensorflow"
    name: str = ""
    """The name clients use for the model (KServe V2 routes, Triton metric labels); empty: from the file name."""
    version: int = 1
    allow_legacy_h5: bool = False
    """Accept a legacy HDF5 (.h5) model: Keras cannot hold such a file to safe_mode, so only the native
    `.keras` format loads unless the operator says so here."""

    @property
    def served_name(self) -> str:
        """`name`, or the model file's stem with every character but letters, digits and `_` made `_`
        (`efficientnet-lite0.keras` -> `efficientnet_lite0`), so that it is one plain URL segment."""
        return self.name or re.sub(r"[^A-Za-z0-9_]", "_", self.path.stem)


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    max_batch_size: int = 32
    max_wait_ms: float = 5.0


@dataclass(frozen=True, slots=True)
class QueueSettings:
    max_depth: int = 128
    answer_ttl_s: float = 60.0
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 5.0
    dispatch: str = "round_robin"
    stuck_after_s: float = 0.0
    """A batch running longer than this marks its worker stuck (restarted, jobs adopted); 0 derives it from
    the shard's recent batch times (`daemon.worker.pace`)."""
    steal: bool = True
    """A shard starting a batch fills its room with the jobs waiting behind an overdue shard's batch, and an
    overdue shard gets new jobs last (`daemon.worker.pace`); false serves every live shard alike, as before."""
    pixels: str = "shared_memory"
    """Where a job's pixels travel: "shared_memory" (a file under `shared_memory_dir`, only a header through
    Redis; a job that does not fit there goes through Redis) or "redis" (every job whole through Redis)."""
    shared_memory_dir: Path = Path("/dev/shm")
    """The tmpfs the appliance keeps its own folder of job pixels in (`daemon.queue.pixel_store`)."""


GpuSelection = tuple[int, ...] | None
"""`devices.gpus`: None selects every visible GPU ("auto"), () none at all ("none"), else these indices."""


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    gpus: GpuSelection = None
    cpu_workers: int = 1
    cpu_fallback: bool = False
    """A GPU shard whose runtime sees no GPU serves on the CPU (shown as a fallback) instead of refusing."""
    gpu_memory_limit_mb: int = 0
    """Device memory each GPU worker may take; 0 = no limit (memory still grows on demand)."""


@dataclass(frozen=True, slots=True)
class PathSettings:
    run_dir: Path = Path("var/run")
    log_dir: Path = Path("var/log")
    service_user: str = ""
    """Started as root, `inferd run` hands the run and log dirs to this user and becomes it before anything
    starts, so Redis, nginx, the API and the workers run as it; empty: they run as whoever started it."""


@dataclass(frozen=True, slots=True)
class Secrets:
    """What the secret files named in the settings hold, read once at load; never shown in a repr."""

    auth_token: str | None = field(default=None, repr=False)
    redis_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Settings:
    api: ApiSettings = field(default_factory=ApiSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    devices: DeviceSettings = field(default_factory=DeviceSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    secrets: Secrets = field(default_factory=Secrets)
    source: Path | None = None

    @property
    def redis_socket(self) -> Path | None:
        """The unix socket Redis listens on, or None when it is reached over TCP."""
        if self.redis.socket is not None:
            return self.redis.socket
        return self.paths.run_dir / "redis.sock" if self.redis.managed else None


SECTIONS: dict[str, type[Any]] = {
    name: hint for name, hint in typing.get_type_hints(Settings).items() if name not in ("secrets", "source")
}
"""The file's [sections]: every field of Settings but what is derived at load."""


def resolve_config_path(cli_path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path:
    """--config wins over INFERD_CONFIG, which wins over the bundled conf/settings.toml."""
    if cli_path:
        return Path(cli_path)
    if env.get("INFERD_CONFIG"):
        return Path(env["INFERD_CONFIG"])
    return DEFAULT_CONFIG


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> Settings:
    """Read the TOML file, apply INFERD_<SECTION>_<KEY> overrides, and validate."""
    env = os.environ if env is None else env
    config_path = resolve_config_path(path, env).resolve()
    try:
        raw = tomllib.loads(config_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"settings file {config_path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"settings file {config_path} is not valid TOML: {exc}") from None
    # Relative paths in the file are relative to the file, so a config works wherever it is started from;
    # relative paths from the environment are relative to the current directory, as a shell user expects.
    sections: dict[str, Any] = {}
    for name, section_type in SECTIONS.items():
        values = raw.pop(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table, got {values!r}")
        sections[name] = _build_section(name, section_type, values, env, config_path.parent)
    if raw:
        raise ConfigError(f"unknown section(s) {sorted(raw)}; allowed: {sorted(SECTIONS)}")
    settings = Settings(**sections, source=config_path)
    validate(settings)
    secrets = Secrets(
        auth_token=read_secret("api.auth_token_file", settings.api.auth_token_file),
        redis_password=read_secret("redis.password_file", settings.redis.password_file),
    )
    return dataclasses.replace(settings, secrets=secrets)


def read_secret(key: str, path: Path | None) -> str | None:
    """The stripped content of the file `key` names, None when it names none; unreadable or empty is an error."""
    if path is None:
        return None
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{key} = {str(path)!r} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{key} = {str(path)!r} is not text: it must hold the secret") from None
    if not secret:
        raise ConfigError(f"{key} = {str(path)!r} is empty: it must hold the secret")
    mode = path.stat().st_mode
    if mode & stat.S_IROTH:
        raise ConfigError(
            f"{key} = {str(path)!r} is readable by every user of this host (mode {stat.S_IMODE(mode):04o}): "
            f"make it readable by the appliance's user alone (chmod 600 {str(path)!r})"
        )
    return secret


MODEL_SUFFIXES = (".keras", ".json")
"""Model files loaded without an opt-in: Keras's native format (loaded with safe_mode) and a stand-in."""
LEGACY_SUFFIXES = (".h5", ".hdf5")


def model_file_refusal(model: ModelSettings, path: Path) -> str | None:
    """Why `path` may not be loaded as a model under these settings, or None when it may."""
    suffix = path.suffix.lower()
    if suffix in MODEL_SUFFIXES or (suffix in LEGACY_SUFFIXES and model.allow_legacy_h5):
        return None
    if suffix in LEGACY_SUFFIXES:
        return (
            f"{path} is a legacy HDF5 model, which Keras loads without safe_mode's protection (a Lambda layer "
            "runs its code); save it as .keras, or set model.allow_legacy_h5 = true if you trust the file"
        )
    return f"{path} is not a .keras model file"


def check_model_files(settings: Settings) -> None:
    """The model and labels files exist: checked by the commands that serve, before anything starts."""
    for key, path in (("model.path", settings.model.path), ("model.labels", settings.model.labels)):
        if not path.is_file():
            raise ConfigError(
                f"{key} = {str(path)!r} does not exist; build the embedded default with "
                "`inferd build-default-model` or point it at your own file"
            )
    refusal = model_file_refusal(settings.model, settings.model.path)
    if refusal is not None:
        raise ConfigError(f"model.path = {str(settings.model.path)!r} is not allowed: {refusal}")


def _field_type(section_type: type[Any], name: str) -> Any:
    hints = typing.get_type_hints(section_type)
    hint = hints[name]
    if isinstance(hint, types.UnionType):  # `Path | None`, `GpuSelection`
        return next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def _default(section_type: type[Any], name: str) -> Any:
    default = next(f.default for f in dataclasses.fields(section_type) if f.name == name)
    # A relative default path is relative to HOME, as the shipped file's own paths are, not to the
    # directory a process happens to start in.
    if isinstance(default, Path) and not default.is_absolute():
        return (HOME / default).resolve()
    return default


def _build_section(
    section: str, section_type: type[Any], values: dict[str, Any], env: Mapping[str, str], base: Path
) -> Any:
    known = {f.name for f in dataclasses.fields(section_type)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in [{section}]; allowed: {sorted(known)}")
    # A misspelt override must stop the start as the same typo in the file does, not be ignored.
    prefix = f"{ENV_PREFIX}{section.upper()}_"
    overrides = {name for name in env if name.startswith(prefix) and name not in NOT_SETTINGS_ENV}
    misspelt = sorted(overrides - {f"{prefix}{name.upper()}" for name in known})
    if misspelt:
        raise ConfigError(
            f"unknown setting(s) {misspelt} in the environment: [{section}] has no such key; allowed: "
            f"{sorted(f'{prefix}{name.upper()}' for name in known)}"
        )
    kwargs: dict[str, Any] = {}
    for name in known:
        key = f"{section}.{name}"
        env_name = f"{ENV_PREFIX}{section.upper()}_{name.upper()}"
        if env_name in env:
            kwargs[name] = _coerce(key, _field_type(section_type, name), env[env_name], Path.cwd())
        elif name in values:
            kwargs[name] = _coerce(key, _field_type(section_type, name), values[name], base)
        else:
            kwargs[name] = _default(section_type, name)
    return section_type(**kwargs)


def _coerce(key: str, target: Any, value: Any, base: Path) -> Any:
    if target is Path:
        if not isinstance(value, str):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a path string")
        if value == "":
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path).resolve()
    if target is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key} = {value!r} is not allowed: expected true or false")
    if target is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected an integer") from None
    if target is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a number") from None
    if target == tuple[int, ...]:
        return _gpu_selection(key, value)
    if target == tuple[str, ...]:
        # A TOML list, or "a, b" from the environment.
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a list of strings")
        return tuple(item.strip() for item in items if item.strip())
    if not isinstance(value, str | int):
        raise ConfigError(f"{key} = {value!r} is not allowed: expected a string")
    return str(value)


GPU_SELECTION_ALLOWED = '"auto", "none", or a list of GPU indices such as [0, 1]'


def _gpu_selection(key: str, value: Any) -> GpuSelection:
    """`devices.gpus` typed: "auto" is None, "none" (), and [0, 1] from TOML or "0,1" from the environment (0, 1)."""
    items: list[Any]
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return None
        if text in ("none", ""):
            return ()
        items = [part.strip() for part in text.split(",")]
    elif isinstance(value, list):
        items = value
    else:
        raise ConfigError(f"{key} = {value!r} is not allowed: {GPU_SELECTION_ALLOWED}")
    indices: list[int] = []
    for item in items:
        # bool is an int to Python, and int() takes "+1" and "²": only plain digits name a GPU.
        if isinstance(item, int) and not isinstance(item, bool) and item >= 0:
            indices.append(item)
        elif isinstance(item, str) and item.isascii() and item.isdigit():
            indices.append(int(item))
        else:
            raise ConfigError(f"{key} = {value!r} is not allowed: {GPU_SELECTION_ALLOWED}")
    if len(set(indices)) != len(indices):
        raise ConfigError(f"{key} = {value!r} is not allowed: each GPU index at most once")
    return tuple(indices)


def gpu_selection_text(gpus: GpuSelection) -> str:
    """`devices.gpus` as an operator writes it: "auto", "none" or "0,1"."""
    if gpus is None:
        return "auto"
    return ",".join(str(index) for index in gpus) or "none"


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_network(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def _require(condition: bool, key: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ConfigError(f"{key} = {value!r} is not allowed: {allowed}")


def validate(s: Settings) -> None:
    """Reject values that would only fail later, naming the key, the value and what is allowed."""
    _require(1 <= s.api.port <= 65535, "api.port", s.api.port, "an integer from 1 to 65535")
    _require(
        1 <= s.api.workers <= MAX_API_WORKERS, "api.workers", s.api.workers, f"from 1 to {MAX_API_WORKERS}"
    )
    _require(
        0 <= s.api.threads <= MAX_API_THREADS,
        "api.threads",
        s.api.threads,
        f"0 (auto: enough for every shard's batches) or from 1 to {MAX_API_THREADS}",
    )
    _require(s.api.request_timeout_s > 0, "api.request_timeout_s", s.api.request_timeout_s, "more than 0")
    _require(s.api.max_body_bytes >= 1024, "api.max_body_bytes", s.api.max_body_bytes, "1024 or more")
    _require(
        1 <= s.api.max_image_pixels <= PILLOW_PIXEL_CEILING,
        "api.max_image_pixels",
        s.api.max_image_pixels,
        f"from 1 to {PILLOW_PIXEL_CEILING} (Pillow refuses larger images whatever we allow)",
    )
    _require(
        s.api.max_image_pixels <= s.api.max_request_pixels <= 100 * PILLOW_PIXEL_CEILING,
        "api.max_request_pixels",
        s.api.max_request_pixels,
        f"from api.max_image_pixels ({s.api.max_image_pixels}) to {100 * PILLOW_PIXEL_CEILING}",
    )
    _require(
        0 <= s.api.drain_grace_s <= 300, "api.drain_grace_s", s.api.drain_grace_s, "from 0 to 300 seconds"
    )
    _require(s.api.max_top >= 1, "api.max_top", s.api.max_top, "1 or more")
    _require(s.api.decode_in in DECODE_PLACES, "api.decode_in", s.api.decode_in, f"one of {DECODE_PLACES}")
    _require(
        1 <= s.api.default_top <= s.api.max_top,
        "api.default_top",
        s.api.default_top,
        f"from 1 to api.max_top ({s.api.max_top})",
    )
    _require(
        0.5 <= s.api.client_timeout_s <= 3600, "api.client_timeout_s", s.api.client_timeout_s, "0.5 to 3600"
    )
    _require(
        256 <= s.api.max_connections <= 1_000_000,
        "api.max_connections",
        s.api.max_connections,
        "from 256 to 1000000",
    )
    _require(
        s.api.client_max_connections >= 0,
        "api.client_max_connections",
        s.api.client_max_connections,
        "0 (no limit) or more",
    )
    _require(
        s.api.client_requests_per_s >= 0,
        "api.client_requests_per_s",
        s.api.client_requests_per_s,
        "0 (no limit) or more requests per second",
    )
    for proxy in s.api.trusted_proxies:
        _require(
            _is_network(proxy),
            "api.trusted_proxies",
            list(s.api.trusted_proxies),
            f"IP addresses or networks such as 10.0.0.5 or 10.0.0.0/24 ({proxy!r} is neither)",
        )
    # A certificate without its key (or the reverse) cannot serve TLS: name the one that is missing.
    for key, value, other in (
        ("api.tls_key_file", s.api.tls_key_file, s.api.tls_cert_file),
        ("api.tls_cert_file", s.api.tls_cert_file, s.api.tls_key_file),
    ):
        _require(
            value is not None or other is None,
            key,
            "",
            "api.tls_cert_file and api.tls_key_file are set together (both for TLS, neither for plain HTTP)",
        )
    _require(0 <= s.redis.port <= 65535, "redis.port", s.redis.port, "an integer from 0 to 65535")
    _require(s.redis.maxmemory_mb >= 0, "redis.maxmemory_mb", s.redis.maxmemory_mb, "0 (derived) or more")
    _require(
        s.redis.managed or s.redis.socket is not None or s.redis.port > 0,
        "redis.port",
        s.redis.port,
        "a TCP port, or set redis.socket, when redis.managed is false",
    )
    _require(
        s.redis.managed
        or s.redis.socket is not None
        or s.redis.password_file is not None
        or s.redis.allow_no_password
        or _is_loopback(s.redis.host),
        "redis.host",
        s.redis.host,
        "a loopback address, or set redis.password_file: an external Redis over the network without a "
        "password lets anyone who reaches it read and steer the queues (redis.allow_no_password = true "
        "accepts that)",
    )
    _require(8 <= s.model.input_size <= 4096, "model.input_size", s.model.input_size, "from 8 to 4096")
    _require(s.model.resize in RESIZE_MODES, "model.resize", s.model.resize, f"one of {RESIZE_MODES}")
    _require(
        0.1 <= s.model.crop_fraction <= 1.0, "model.crop_fraction", s.model.crop_fraction, "from 0.1 to 1.0"
    )
    _require(
        s.model.preprocessing in PREPROCESSING_MODES,
        "model.preprocessing",
        s.model.preprocessing,
        f"one of {PREPROCESSING_MODES}",
    )
    _require(
        s.model.name == "" or MODEL_NAME_PATTERN.fullmatch(s.model.name) is not None,
        "model.name",
        s.model.name,
        "empty (the model file's stem) or up to 64 letters, digits, '_', '.' and '-', not starting with '.' or '-'",
    )
    _require(s.model.version >= 1, "model.version", s.model.version, "1 or more")
    _require(s.model.backend in KERAS_BACKENDS, "model.backend", s.model.backend, f"one of {KERAS_BACKENDS}")
    _require(
        1 <= s.batching.max_batch_size <= 1024,
        "batching.max_batch_size",
        s.batching.max_batch_size,
        "from 1 to 1024",
    )
    _require(
        0 <= s.batching.max_wait_ms <= 10_000, "batching.max_wait_ms", s.batching.max_wait_ms, "0 to 10000"
    )
    _require(s.queue.max_depth >= 1, "queue.max_depth", s.queue.max_depth, "1 or more")
    _require(s.queue.answer_ttl_s >= 1, "queue.answer_ttl_s", s.queue.answer_ttl_s, "1 or more seconds")
    _require(
        s.queue.heartbeat_interval_s > 0,
        "queue.heartbeat_interval_s",
        s.queue.heartbeat_interval_s,
        "more than 0",
    )
    _require(
        s.queue.stuck_after_s >= 0,
        "queue.stuck_after_s",
        s.queue.stuck_after_s,
        "0 (derived from the measured batch time) or more seconds",
    )
    _require(
        s.queue.heartbeat_ttl_s > s.queue.heartbeat_interval_s,
        "queue.heartbeat_ttl_s",
        s.queue.heartbeat_ttl_s,
        f"more than queue.heartbeat_interval_s ({s.queue.heartbeat_interval_s})",
    )
    _require(
        s.queue.dispatch in DISPATCH_POLICIES,
        "queue.dispatch",
        s.queue.dispatch,
        f"one of {DISPATCH_POLICIES}",
    )
    _require(s.queue.pixels in PIXEL_PATHS, "queue.pixels", s.queue.pixels, f"one of {PIXEL_PATHS}")
    _require(
        s.paths.service_user == "" or _user_exists(s.paths.service_user),
        "paths.service_user",
        s.paths.service_user,
        "empty, or a user of this host (e.g. inferd, made by `make install`, or nobody)",
    )
    _require(1 <= s.devices.cpu_workers <= 64, "devices.cpu_workers", s.devices.cpu_workers, "from 1 to 64")
    _require(
        s.devices.gpu_memory_limit_mb >= 0,
        "devices.gpu_memory_limit_mb",
        s.devices.gpu_memory_limit_mb,
        "0 (no limit) or more megabytes",
    )
