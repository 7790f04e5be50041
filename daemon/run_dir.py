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
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from daemon.errors import InferdError

log = logging.getLogger(__name__)

LOCK_NAME = "inferd.lock"
RUN_DIR_ENV = "INFERD_RUN_DIR"
LEFTOVER_GRACE_S = 35.0
"""How long a previous tree's processes get to finish (above a worker's stopwaitsecs of 30 s) before SIGKILL."""
PDEATHSIG = "TERM"


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
