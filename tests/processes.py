"""Real processes for tests: a redis-server and the whole appliance, each in its own process group.

Readiness is waited for with a deadline that fails loudly (with the process's output), never silently.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import redis
import requests

REPO = Path(__file__).resolve().parent.parent
INFERD = [sys.executable, "-m", "daemon.launcher"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    what: str, predicate: Callable[[], bool], timeout_s: float, on_fail: Callable[[], str] = str
) -> None:
    """Poll `predicate` until it holds; past the deadline fail with `what` and whatever `on_fail` adds."""
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, requests.RequestException, redis.RedisError, ValueError) as exc:
            # The thing we wait for refuses connections, or answers half-started, until it is up.
            last_error = exc
        time.sleep(0.1)
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what} (last error: {last_error})\n{on_fail()}"
    )


@contextmanager
def redis_server(folder: Path) -> Iterator[Path]:
    """Debian's redis-server on a unix socket in `folder`, no TCP, no persistence."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "redis.sock"
    log = folder / "redis.log"
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            "0",
            "--unixsocket",
            str(sock),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(log),
        ],
        start_new_session=True,
    )
    try:
        client = redis.Redis(unix_socket_path=str(sock))
        wait_until("redis-server to answer PING", lambda: bool(client.ping()), 10, lambda: log.read_text())
        yield sock
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def write_settings(folder: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A settings.toml in `folder` from nested dicts (strings quoted, lists and numbers as TOML)."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, str | Path):
            return '"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        return str(item)

    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(item)}" for key, item in values.items())
    path = folder / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


class Appliance:
    """`inferd run` (supervisord, Redis, gunicorn, workers) started for a test and stopped after it."""

    def __init__(
        self,
        folder: Path,
        config: Path,
        port: int,
        run_dir: Path,
        shards: int,
        env: dict[str, str] | None = None,
    ):
        self.folder = folder
        self.run_dir = run_dir
        self.config = config
        self.port = port
        self.shards = shards
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = folder / "appliance.log"
        self.env = {**os.environ, "INFERD_CONFIG": str(config), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def redis(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.run_dir / "redis.sock"))

    def start(self, timeout_s: float = 90) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*INFERD, "--config", str(self.config), "run"],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.wait_ready(timeout_s)

    def live_shards(self) -> list[str]:
        response = requests.get(f"{self.url}/readyz", timeout=2)
        shards: list[str] = response.json().get("live_shards", [])
        return shards

    def wait_ready(self, timeout_s: float = 90) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"appliance exited with {self.proc.returncode}:\n{self.output()}")
            return len(self.live_shards()) == self.shards

        wait_until(f"{self.shards} live shard(s) at {self.url}/readyz", ready, timeout_s, self.output)

    def supervisorctl(self, *args: str) -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisor.supervisorctl",
                "-c",
                str(REPO / "conf" / "supervisord.conf"),
                *args,
            ],
            env={**self.env, "INFERD_RUN_DIR": str(self.run_dir), "INFERD_LOG_DIR": str(self.folder / "log")},
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout + result.stderr

    def pid_of(self, program: str) -> int:
        for line in self.supervisorctl("status").splitlines():
            if line.startswith(program) and "pid" in line:
                return int(line.split("pid", 1)[1].split(",")[0].strip())
        raise AssertionError(f"no running {program} in supervisorctl status:\n{self.supervisorctl('status')}")

    def wait_restarted(self, program: str, old_pid: int, timeout_s: float = 60) -> int:
        """Wait until supervisord runs `program` again under a new pid; returns that pid."""
        pids: list[int] = []

        def restarted() -> bool:
            try:
                pids[:] = [self.pid_of(program)]
            except AssertionError:  # not running yet: STARTING or BACKOFF
                return False
            return pids[0] != old_pid

        wait_until(f"{program} to run again after pid {old_pid}", restarted, timeout_s, self.output)
        return pids[0]

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM supervisord and wait; returns its exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"appliance did not stop within {timeout_s}s:\n{self.output()}") from None
        finally:
            # Anything left in the group (it should be empty) must not outlive the test.
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
