"""One run directory, one appliance: a lock held for the appliance's life, and no process outliving it.

The run dir holds the Redis socket, supervisord's control socket and the metrics files, so two appliances on
one run dir would share a Redis socket path and fight over the API port. `inferd run` takes an exclusive
lock on `<run_dir>/inferd.lock` and hands the locked descriptor to supervisord across exec, so the lock lives
exactly as long as supervisord: a second `inferd run` on the same run dir is refused with the pid holding it.

Every program supervisord starts is wrapped in `setpriv --pdeathsig TERM`, so if supervisord itself is
killed (kill -9, OOM) its children get SIGTERM and leave cleanly (workers finish their batch) rather than
serve on unsupervised. Each child carries INFERD_RUN_DIR in its environment; a launcher that finds the lock
free but such processes still alive (a previous tree still finishing) waits for them, then kills what is
left, before starting its own.

The launcher also writes `<run_dir>/appliance.json` (`ApplianceRecord`): where the running appliance answers
(address, and with TLS the certificate it presents, which local clients trust: daemon/ops/local_client.py)
and where its Redis is, as its settings and INFERD_* overrides made them, so the tools find an appliance
started with overrides they were not given (`INFERD_API_PORT=9000 inferd run`, then `tools/stress`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from daemon.errors import InferdError
from daemon.settings import Settings

log = logging.getLogger(__name__)

LOCK_NAME = "inferd.lock"
RUN_DIR_ENV = "INFERD_RUN_DIR"
LEFTOVER_GRACE_S = 35.0
"""How long a previous tree's processes get to finish (above a worker's stopwaitsecs of 30 s) before SIGKILL."""
PDEATHSIG = "TERM"
RECORD_NAME = "appliance.json"


class AlreadyRunning(InferdError):
    """Another appliance holds this run directory."""


def take_lock(run_dir: Path) -> int:
    """Lock the run dir for this appliance; the descriptor is inheritable so supervisord keeps it across exec."""
    fd = os.open(run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise AlreadyRunning(
            f"another inferd (pid {holder}) is running with run dir {run_dir}; stop it first, "
            "or give this one its own paths.run_dir and api.port"
        ) from None
    # The pid written is ours, and stays right: the launcher execs supervisord in this same process.
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.set_inheritable(fd, True)
    return fd


def leftover_processes(run_dir: Path) -> list[int]:
    """Processes of a previous appliance on this run dir (found by the INFERD_RUN_DIR they carry)."""
    marker = f"{RUN_DIR_ENV}={run_dir}".encode()
    found = []
    own = {os.getpid(), os.getppid()}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in own:
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or another user's
        if marker in environ.split(b"\0"):
            found.append(int(entry))
    return sorted(found)


def clear_leftovers(run_dir: Path, grace_s: float = LEFTOVER_GRACE_S) -> list[int]:
    """Let a previous tree's processes finish (they got SIGTERM when their supervisord died), then kill the
    rest; returns the pids that were found."""
    pids = leftover_processes(run_dir)
    if not pids:
        return []
    log.warning(
        "inferd: %d process(es) of a previous appliance on %s are still running (pids %s); "
        "waiting up to %.0fs for them to finish",
        len(pids),
        run_dir,
        " ".join(map(str, pids)),
        grace_s,
    )
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and leftover_processes(run_dir):
        time.sleep(0.2)
    remaining = leftover_processes(run_dir)
    for pid in remaining:
        _signal(pid, signal.SIGKILL)
    if remaining:
        log.warning(
            "inferd: killed %s, which did not leave within %.0fs", " ".join(map(str, remaining)), grace_s
        )
    return pids


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def pdeathsig_prefix() -> str:
    """The command prefix that makes a program die with its parent, or "" where setpriv is missing."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        log.warning("inferd: setpriv (util-linux) not found; programs would outlive a killed supervisord")
        return ""
    return f"{setpriv} --pdeathsig {PDEATHSIG} --"


@dataclasses.dataclass(frozen=True, slots=True)
class ApplianceRecord:
    """Where a running appliance answers, as it was started (settings file plus INFERD_* overrides)."""

    pid: int
    """supervisord's (the launcher execs it in the same process)."""
    config: str
    api_host: str
    api_port: int
    api_tls_cert_file: str | None
    """The certificate the front door presents (https), or None (plain HTTP)."""
    api_tls_key_file: str | None
    redis_socket: str | None
    redis_host: str
    redis_port: int

    @classmethod
    def of(cls, settings: Settings, pid: int) -> ApplianceRecord:
        return cls(
            pid=pid,
            config=str(settings.source),
            api_host=settings.api.host,
            api_port=settings.api.port,
            api_tls_cert_file=_optional(settings.api.tls_cert_file),
            api_tls_key_file=_optional(settings.api.tls_key_file),
            redis_socket=_optional(settings.redis_socket),
            redis_host=settings.redis.host,
            redis_port=settings.redis.port,
        )

    def applied_to(self, settings: Settings) -> Settings:
        """`settings` with the running appliance's addresses in place of the file's."""
        api = dataclasses.replace(
            settings.api,
            host=self.api_host,
            port=self.api_port,
            tls_cert_file=_path(self.api_tls_cert_file),
            tls_key_file=_path(self.api_tls_key_file),
        )
        redis_settings = dataclasses.replace(
            settings.redis,
            socket=_path(self.redis_socket),
            host=self.redis_host,
            port=self.redis_port,
        )
        return dataclasses.replace(settings, api=api, redis=redis_settings)


def _optional(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


def write_json_record(path: Path, body: dict[str, Any]) -> None:
    """Replace the run dir's JSON record at `path` atomically: a reader sees the old record or the new one,
    never half of one (appliance.json here, model.json in daemon.model.active_model)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(partial, path)


def read_json_record(path: Path) -> dict[str, Any] | None:
    """The JSON object a record holds, or None when there is no record; raises OSError when it cannot be read
    and ValueError when it is not a JSON object."""
    try:
        body = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    if not isinstance(body, dict):
        raise ValueError(f"{path} holds {type(body).__name__}, not a JSON object")
    return body


def write_record(run_dir: Path, record: ApplianceRecord) -> None:
    write_json_record(run_dir / RECORD_NAME, dataclasses.asdict(record))


def read_record(run_dir: Path) -> ApplianceRecord | None:
    """The record of the appliance running on `run_dir`, or None when there is none or it has stopped."""
    try:
        body = read_json_record(run_dir / RECORD_NAME)
        record = None if body is None else ApplianceRecord(**body)
    except (OSError, ValueError, TypeError):
        return None  # unreadable (another user's run dir), or written by another version
    if record is None:
        return None
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return None  # a stopped appliance's leftover
    except PermissionError:
        pass  # alive, under another user
    return record
