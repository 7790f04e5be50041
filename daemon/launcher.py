"""`inferd`: validate settings, discover shards, prepare the run directory, then exec supervisord.

supervisord stays in the foreground (systemd or a terminal owns it) and runs Redis, the front door (nginx),
two gunicorn instances of the API and one worker per shard; this launcher only computes what supervisord's
static config cannot: how many workers, which device each gets, a Redis config holding secrets that must not
appear on a command line, nginx's config, and the open-files limit nginx needs for `api.max_connections`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from daemon.cli import drain as drain_tool
from daemon.cli import reload as reload_tool
from daemon.cli.common import settings_or_exit
from daemon.errors import (
    EXIT_ALREADY_RUNNING,
    EXIT_CONFIG,
    EXIT_DEVICE,
    EXIT_MODEL_LOAD,
    ConfigError,
    UsageArgumentParser,
)
from daemon.logs import setup_logging
from daemon.metrics.inferd import MULTIPROC_ENV
from daemon.model.active_model import active_record, choice_of, forget_stale_record, record_path
from daemon.ops.capacity import SHARD_COUNT_ENV, api_threads, redis_maxclients
from daemon.ops.front_door import (
    NGINX_DIR,
    check_nginx_conf,
    check_tls_files,
    nginx_binary,
    open_files_wanted,
    raise_open_files_limit,
    write_nginx_conf,
)
from daemon.ops.run_dir import (
    RUN_DIR_ENV,
    AlreadyRunning,
    ApplianceRecord,
    clear_leftovers,
    pdeathsig_prefix,
    take_lock,
    write_record,
)
from daemon.ops.service_user import become_service_user
from daemon.queue.pixel_store import create_folder, room_note
from daemon.queue.wire import JOB_HEADER
from daemon.settings import (
    HOME,
    ModelSettings,
    Settings,
    check_model_files,
    load_settings,
    resolve_config_path,
)
from daemon.shard import SHARDS_ENV, Shard, discover_shards, encode_shards, use_backend

log = logging.getLogger(__name__)

SUPERVISORD_CONF = HOME / "conf" / "supervisord.conf"
REDIS_OVERHEAD_MB = 64
"""Redis's own memory plus replies, stats and keys, on top of what full queues hold."""
DEFAULT_MODEL_DIR = (HOME / ModelSettings().path).parent
"""Where `build-default-model` writes without --out: the default model's own folder (var/models), never the
folder of a model the settings point at, which holds the user's files."""
OVERCOMMIT_SETTING = Path("/proc/sys/vm/overcommit_memory")
"""The kernel setting Redis checks at start: anything but 1 makes it log a WARNING we explain."""
DRAIN_STOP_SLACK_S = 10
"""supervisord's wait for the drain guard, beyond its grace, before it kills it."""
SYSTEMD_NOTIFY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
"""What systemd gives a Type=notify service: handed to the notify program alone, under INFERD_ names."""


def redis_maxmemory_mb(settings: Settings, shard_count: int) -> int:
    """The memory full queues and processing lists can hold, plus overhead: Redis refuses writes past it."""
    if settings.redis.maxmemory_mb:
        return settings.redis.maxmemory_mb
    job_bytes = settings.model.input_size**2 * 3 + JOB_HEADER.size
    jobs = shard_count * (settings.queue.max_depth + settings.batching.max_batch_size)
    return REDIS_OVERHEAD_MB + (2 * jobs * job_bytes) // 2**20


def render_redis_conf(settings: Settings, shard_count: int) -> str:
    """A unix-socket-only Redis: no TCP port, no persistence, bounded memory, writes refused when full."""
    lines = [
        "port 0",
        f"unixsocket {settings.redis_socket}",
        "unixsocketperm 700",
        'save ""',
        "appendonly no",
        f"maxmemory {redis_maxmemory_mb(settings, shard_count)}mb",
        f"maxclients {redis_maxclients(settings, shard_count)}",
        "maxmemory-policy noeviction",
        "protected-mode yes",
        "daemonize no",
        'logfile ""',
    ]
    if settings.secrets.redis_password is not None:
        lines.append(f"requirepass {settings.secrets.redis_password}")
    return "\n".join(lines) + "\n"


def child_output() -> dict[str, str]:
    """Where supervisord sends its programs' output: to its own stdout, or to syslog under systemd."""
    # systemd hands the journal over as a unix socket on stdout, and open("/dev/stdout") on a socket fails
    # with ENXIO, so supervisord could start no program at all; its syslog option reaches the same journal.
    if stat.S_ISSOCK(os.fstat(sys.stdout.fileno()).st_mode):
        return {"INFERD_CHILD_LOGFILE": "NONE", "INFERD_CHILD_SYSLOG": "true"}
    return {"INFERD_CHILD_LOGFILE": "/dev/stdout", "INFERD_CHILD_SYSLOG": "false"}


def append_to_redirected_output() -> None:
    """Make a stdout or stderr redirected to a file (`inferd run > run.log`) append, for every writer.

    supervisord opens /dev/stdout anew for its programs' output, which for a regular file means its own file
    description: with O_APPEND, at the end. supervisord's own lines (and ours) go through the description the
    shell opened with `>`, whose offset only its own writes move: each would overwrite the programs' lines
    written since. O_APPEND on that shared description (fcntl may set it) puts every write at the end."""
    for fd in (sys.stdout.fileno(), sys.stderr.fileno()):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)


def overcommit_off() -> bool:
    """Whether the kernel's memory overcommit is not `always` (1), which Redis warns about at every start."""
    try:
        return OVERCOMMIT_SETTING.read_text().strip() != "1"
    except OSError:
        return False


def make_run_dir(settings: Settings) -> Path:
    run_dir = settings.paths.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)  # the Redis socket and supervisord's control socket live here
    return run_dir


def prepare_environment(settings: Settings, shards: list[Shard], config_path: Path) -> dict[str, str]:
    """Fill the (locked) run dir and make the log dir; return the variables supervisord.conf expands."""
    run_dir, log_dir = make_run_dir(settings), settings.paths.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    redis_conf = run_dir / "redis.conf"
    fd = os.open(redis_conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(render_redis_conf(settings, len(shards)))
    # Metrics files of the previous run would be summed into this one's: start empty.
    metrics_dir = run_dir / "metrics"
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir()
    redis_server = shutil.which("redis-server") or "/usr/bin/redis-server"
    # Raised here, before exec, so supervisord (minfds) and nginx (worker_rlimit_nofile) inherit it.
    open_files = raise_open_files_limit(open_files_wanted(settings))
    nginx_conf = write_nginx_conf(settings, open_files)
    check_nginx_conf(nginx_conf, run_dir / NGINX_DIR)
    return {
        "INFERD_CONFIG": str(config_path),
        "INFERD_HOME": str(HOME),
        "INFERD_PYTHON": sys.executable,
        RUN_DIR_ENV: str(run_dir),
        "INFERD_PDEATHSIG": pdeathsig_prefix(),
        "INFERD_LOG_DIR": str(log_dir),
        "INFERD_REDIS_SERVER": redis_server,
        "INFERD_REDIS_CONF": str(redis_conf),
        "INFERD_REDIS_AUTOSTART": "true" if settings.redis.managed else "false",
        "INFERD_NGINX": nginx_binary(),
        "INFERD_NGINX_CONF": str(nginx_conf),
        "INFERD_NGINX_PREFIX": str(run_dir / NGINX_DIR),
        "INFERD_MINFDS": str(open_files),
        # supervisord's `user`: this very user, so it drops nothing, and says nothing of running as root.
        "INFERD_UID": str(os.getuid()),
        SHARD_COUNT_ENV: str(len(shards)),
        "INFERD_DRAIN_STOPWAIT_S": str(int(settings.api.drain_grace_s) + DRAIN_STOP_SLACK_S),
        SHARDS_ENV: encode_shards(shards),
        "PYTHONUNBUFFERED": "1",
        **child_output(),
        MULTIPROC_ENV: str(metrics_dir),
    }


def run(config: str | None) -> int:
    append_to_redirected_output()
    config_path = resolve_config_path(config, os.environ).resolve()
    settings = load_settings(config_path)  # also reads the secret files: unreadable or empty ones stop here
    check_model_files(settings)
    check_tls_files(settings)
    # The lock's descriptor survives the exec below, so supervisord holds it until it dies.
    take_lock(make_run_dir(settings))
    clear_leftovers(settings.paths.run_dir)
    chosen = forget_stale_record(settings)
    if chosen is not None:
        for what, path in (("model", chosen.path), ("labels", chosen.labels)):
            if not path.is_file():
                raise ConfigError(
                    f"the {what} file {path} that `inferd reload` chose ({record_path(settings)}) is gone; "
                    "put it back, or delete that record to serve the settings' [model]"
                )
        log.info(
            "inferd: serving %s version %d, chosen by `inferd reload` (%s); [model] in the settings names %s",
            chosen.path,
            chosen.version,
            record_path(settings),
            settings.model.path,
        )
    shards = discover_shards(settings)
    note = room_note(settings, len(shards))
    if note:
        log.warning("inferd: %s", note)
    env = prepare_environment(settings, shards, config_path)
    os.environ.update(env)
    # Only daemon/ops/notify.py may speak for the appliance: gunicorn, for one, would tell systemd READY=1 as soon
    # as it listens (and STOPPING=1 when supervisord restarts it) if it found NOTIFY_SOCKET.
    for name in SYSTEMD_NOTIFY_ENV:
        if name in os.environ:
            os.environ[f"INFERD_{name}"] = os.environ.pop(name)
    write_record(settings.paths.run_dir, ApplianceRecord.of(settings, os.getpid()))
    log.info(
        "inferd: %d shard(s) [%s], API on %s://%s:%d (%d x %d threads), Redis %s",
        len(shards),
        ", ".join(shard.shard_id for shard in shards),
        "https" if settings.api.tls_cert_file else "http",
        settings.api.host,
        settings.api.port,
        settings.api.workers,
        api_threads(settings, len(shards)),
        settings.redis_socket or f"{settings.redis.host}:{settings.redis.port}",
    )
    log.info(
        "inferd: supervisord will log CRIT that its control socket has no HTTP authentication: the socket is "
        "in the 0700 run dir, which is its access control"
    )
    if settings.redis.managed and overcommit_off():
        log.info(
            "inferd: Redis will warn that memory overcommit is off; that matters for its background saves to "
            "disk, which this Redis never makes (no persistence)"
        )
    become_service_user(settings)
    # No process of this appliance is alive now: the previous run's segments have no owner, and this run
    # gets a fresh folder of its own, made by the user the appliance runs as (its processes accept no other).
    folder = create_folder(settings)
    if folder is not None:
        log.info("inferd: job pixels in %s", folder)
    # supervisord itself, run by daemon/ops/supervise.py so that the last line at a stop is ours.
    supervisord = [sys.executable, "-m", "daemon.ops.supervise", "--nodaemon", "-c", str(SUPERVISORD_CONF)]
    sys.stdout.flush()
    try:
        os.execv(sys.executable, supervisord)
    except PermissionError:
        # Only after become_service_user: the checkout or its Python lies in a folder that user cannot enter.
        raise ConfigError(
            f"paths.service_user = {settings.paths.service_user!r} cannot run {sys.executable}: install inferd "
            "where that user can read it (`make install` does), or leave paths.service_user empty"
        ) from None
    return 0  # not reached


def start_device_probes(shards: list[Shard]) -> list[subprocess.Popen[str]]:
    """Load `model.backend`'s runtime pinned as each shard's worker would be, one process per shard."""
    # All at once: pinning only takes before the runtime loads, once per process.
    env = {**os.environ, SHARDS_ENV: encode_shards(shards), "INFERD_LOG_LEVEL": "ERROR"}
    return [
        subprocess.Popen(
            [sys.executable, "-m", "daemon.gpu_worker", "--check-device", "--shard-index", str(index)],
            cwd=HOME,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(len(shards))
    ]


def report_devices(shards: list[Shard], probes: list[subprocess.Popen[str]]) -> int:
    """Print what each shard would compute on; EXIT_DEVICE when a shard's worker would refuse to start."""
    code = 0
    for shard, probe in zip(shards, probes, strict=True):
        out, err = probe.communicate()
        lines = out.strip().splitlines()
        try:
            found = json.loads(lines[-1])
        except (IndexError, ValueError):
            found = {"serve": False, "reason": f"the probe failed: {err.strip().splitlines()[-1:] or out}"}
        if found.get("serve"):
            runtime = found["runtime"]
            where = f"{found['device']} ({runtime['backend']} {runtime['runtime_version']})"
            if found.get("fallback"):
                where += f": {found['reason']}"
            print(f"{shard.shard_id}\t{shard.kind}\t{shard.name}\t-> {where}")
        else:
            print(f"{shard.shard_id}\t{shard.kind}\t{shard.name}\t-> WOULD FAIL (exit 80): {found['reason']}")
            code = EXIT_DEVICE
    return code


def build_default_model(out: str | None, force: bool) -> int:
    settings = load_settings()
    use_backend(settings.model.backend)  # before Keras loads: it reads KERAS_BACKEND once, on import
    from daemon.model import default_model

    target = Path(out) if out else DEFAULT_MODEL_DIR
    return default_model.main(["--out", str(target), *(["--force"] if force else [])])


def check(config: str | None) -> int:
    """`inferd check`: the settings, the model the appliance would serve (loaded and checked as a shard
    would), and what each shard would compute on; the first failure's exit code."""
    settings = load_settings(config)
    check_model_files(settings)
    check_tls_files(settings)
    shards = discover_shards(settings)
    print(f"settings OK: {settings.source}")
    probes = start_device_probes(shards)  # they load the runtime while the model is checked
    record = active_record(settings)
    served = record.active if record is not None else choice_of(settings.model)
    # The model in a process of its own, as `inferd reload` checks one: a label count that is not the model's
    # output width shows here rather than as every worker's exit 79 at run time.
    model_ok = reload_tool.check_model("inferd check", settings, served)
    devices = report_devices(shards, probes)
    return devices if model_ok else EXIT_MODEL_LOAD


CONFIG_HELP = "settings file (default: INFERD_CONFIG, else conf/settings.toml)"


def build_parser() -> UsageArgumentParser:
    parser = UsageArgumentParser(prog="inferd", description="On-prem image-classification appliance")
    parser.add_argument("--config", help=CONFIG_HELP)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        # Also after the command (`inferd run --config X`); SUPPRESS keeps one given before it.
        sub.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
        return sub

    command("run", "run the appliance in the foreground under supervisord")
    command(
        "check",
        "validate settings, load and check the model, and list the shards that would run and the device each "
        "would use",
    )
    build = command("build-default-model", "build the embedded EfficientNet-Lite0 model")
    build.add_argument("--out", help=f"folder for the .keras file and labels (default: {DEFAULT_MODEL_DIR})")
    build.add_argument("--force", action="store_true", help="rebuild even when the files are up to date")
    drain = command(
        "drain", "maintenance: /readyz answers 503 first, then admit nothing and finish what is queued"
    )
    drain_tool.add_drain_arguments(drain)
    undrain = command("undrain", "admit work again after `inferd drain`")
    undrain.add_argument("--shard", action="append", metavar="ID", help="only this shard; default: all marks")
    reload = command(
        "reload",
        "change the model without downtime: check it, then swap it in one shard at a time (all or nothing)",
    )
    reload_tool.add_reload_arguments(reload)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # `inferd run`'s lines go where supervisord's and its programs' go (stdout), so `inferd run > run.log`
    # holds them all; the other commands log to stderr, beside their errors.
    setup_logging(stream=sys.stdout if args.command == "run" else None)
    if args.config:
        os.environ["INFERD_CONFIG"] = str(Path(args.config).resolve())
    try:
        if args.command == "run":
            return run(args.config)
        if args.command == "build-default-model":
            return build_default_model(args.out, args.force)
        if args.command == "reload":
            settings = settings_or_exit("inferd reload", args.config)
            return reload_tool.run_reload("inferd reload", settings, args)
        if args.command in ("drain", "undrain"):
            settings = settings_or_exit(f"inferd {args.command}", args.config)
            if args.command == "drain":
                return drain_tool.run_drain("inferd drain", settings, args)
            return drain_tool.run_undrain("inferd undrain", settings, args.shard)
        return check(args.config)
    except ConfigError as exc:
        print(f"inferd: configuration error: {exc.message}", file=sys.stderr)
        return EXIT_CONFIG
    except AlreadyRunning as exc:
        print(f"inferd: {exc.message}", file=sys.stderr)
        return EXIT_ALREADY_RUNNING


if __name__ == "__main__":
    sys.exit(main())
