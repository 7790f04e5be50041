"""Real processes for the tests and the benchmark: servers, a redis-server and the whole appliance.

Each runs in its own session with its output in a log file. Readiness is waited for with a deadline that
fails loudly (with the process's output), never silently. Stopping ends the whole process tree, not just
the process group: supervisord gives each program a group of its own, so after a stop that hung, Redis,
gunicorn and model workers would otherwise outlive the test that started them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from types import TracebackType

import redis
import requests

from daemon.errors import ConfigError
from daemon.ops.local_client import client_tls, fetch
from daemon.queue.pixel_store import remove_folder, segment_folder
from daemon.settings import load_settings
from testkit.proctree import ProcessId, kill_all, tree

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
INFERD = [PYTHON, "-m", "daemon.launcher"]
STOP_TIMEOUT_S = 30.0
"""How long a service gets to leave after SIGTERM before its whole tree is killed."""
POLL_S = 0.1
TREE_REFRESH_S = 1.0
"""How often a wait walks /proc for the tree: a walk costs milliseconds of a CPU the servers need."""
OUTPUT_CHARS = 6000
"""How much of a log's end a failure message shows (`output`); searches read the whole log (`log_text`)."""


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
        time.sleep(POLL_S)
    # The last error, with its type and traceback, is often the real failure (a refused password, a bad URL).
    raise AssertionError(
        f"timed out after {timeout_s}s waiting for {what} (last error: {last_error!r})\n{on_fail()}"
    ) from last_error


class Service:
    """One process and everything it starts, in its own session, logging to `log_path`.

    The tree is remembered whenever it is looked at (readiness waits, exit waits, stop), so that what it
    started is still known, and killed, after the process itself is gone.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_mode = "ab"
        """How the log is opened: appended to, or "wb" as a shell's `>` opens it (no O_APPEND)."""
        self.stderr_path: Path | None = None
        """Where stderr goes when not into the log (as `cmd > log` leaves it on the terminal)."""
        self.killed = False
        """Whether the last `stop` had to SIGKILL the process because SIGTERM did not end it in time."""
        self.leftovers: list[int] = []
        """Pids the last `stop` found alive in the tree after the process had exited, and killed."""
        self._seen: set[ProcessId] = set()
        self._seen_at = 0.0

    def start(self) -> Service:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with ExitStack() as files:
            out = files.enter_context(self.log_path.open(self.log_mode))
            err = files.enter_context(self.stderr_path.open("ab")) if self.stderr_path else subprocess.STDOUT
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        self._remember_tree()
        log.debug("harness: started %s (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv))
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was never started"
        return self.proc.pid

    def log_text(self) -> str:
        """The whole log, for a test that looks for a line: the line may be far from the end by then."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output(self) -> str:
        """The log's end, for a failure message (never searched: a line logged early falls out of it)."""
        return self.log_text()[-OUTPUT_CHARS:]

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
        """Wait for `predicate`, failing loudly (with the log) on timeout or if the process exits."""

        def alive_and_ready() -> bool:
            assert self.proc is not None, f"{self.name} was never started"
            self._remember_tree(TREE_REFRESH_S)
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            return predicate()

        wait_until(f"{self.name}: {what}", alive_and_ready, timeout_s, self.output)
        self._remember_tree()  # ready: the tree is complete now

    def wait_http(self, url: str, timeout_s: float = 60.0) -> None:
        self.wait_until(f"{url} to answer", lambda: requests.get(url, timeout=2).status_code < 500, timeout_s)

    def terminate(self) -> None:
        """Ask the process group to leave (SIGTERM) without waiting; `wait_exit` or `stop` then waits."""
        if self.proc is not None and self.proc.poll() is None:
            self._remember_tree()
            with suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code once the process has exited, or None if it still runs after `timeout_s`."""
        assert self.proc is not None, f"{self.name} was never started"
        deadline = time.monotonic() + timeout_s
        # Polled rather than proc.wait(): what it starts while it stops belongs to it too.
        while self.proc.poll() is None and time.monotonic() < deadline:
            self._remember_tree(TREE_REFRESH_S)
            time.sleep(POLL_S)
        return self.proc.poll()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM, wait; past `timeout_s` SIGKILL the whole tree. Nothing of the tree outlives this call.

        Returns the exit code (negative: killed by that signal), None if it was never started; `killed` and
        `leftovers` say whether it had to be forced.
        """
        if self.proc is None:
            return None
        self.killed, self.leftovers = False, []
        self.terminate()
        if self.wait_exit(timeout_s) is None:
            self.killed = True
            log.warning("harness: %s ignored SIGTERM for %.0fs; killing its tree", self.name, timeout_s)
            self._remember_tree()
            kill_all(self._seen)
        else:
            # Whatever of the tree is still alive now was orphaned by the exit (normally nothing).
            self.leftovers = sorted(p.pid for p in kill_all(self._seen))
        returncode = self.proc.wait()
        if self.leftovers:
            log.warning("harness: %s exited but left %s running; killed them", self.name, self.leftovers)
        return returncode

    def _remember_tree(self, unless_within_s: float = 0.0) -> None:
        """Add the live tree to what this service has started, unless it was walked `unless_within_s` ago."""
        if self.proc is not None and time.monotonic() - self._seen_at >= unless_within_s:
            self._seen.update(tree(self.proc.pid))
            self._seen_at = time.monotonic()

    def __enter__(self) -> Service:
        return self.start() if self.proc is None else self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def stop_all(services: list[Service]) -> None:
    """Signal every service first, then wait for each, so their shutdowns overlap."""
    for service in services:
        service.terminate()
    for service in reversed(services):
        service.stop()


@contextmanager
def redis_server(folder: Path, password: str | None = None) -> Iterator[Path]:
    """Debian's redis-server on a unix socket in `folder`, no TCP, no persistence; with `password`, it
    requires it (requirepass)."""
    folder.mkdir(parents=True, exist_ok=True)
    sock = folder / "redis.sock"
    argv = ["redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
    argv += ["--save", "", "--appendonly", "no"]
    if password is not None:
        argv += ["--requirepass", password]
    with Service("redis-server", argv, folder / "redis.log") as server:
        client = redis.Redis(unix_socket_path=str(sock), password=password)
        server.wait_until("PING", lambda: bool(client.ping()), 10)
        client.close()
        yield sock


class Appliance:
    """`inferd run` (supervisord, Redis, gunicorn, workers) started for a test or a benchmark phase."""

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
        self.run_dir = Path(run_dir)
        self.config = config
        self.port = port
        self.shards = shards
        self.service = Service(
            "appliance",
            [*INFERD, "--config", str(config), "run"],
            folder / "appliance.log",
            {"INFERD_CONFIG": str(config), **(env or {})},
        )
        self.log_path = self.service.log_path
        self.env = self.service.env
        self.tls: ssl.SSLContext | None = None
        """With TLS on, what reaches the front door (its own certificate trusted, as the tools do)."""
        # Settings the appliance will refuse (a bad value, an unreadable certificate) leave it plain: it never
        # answers, over either scheme.
        with suppress(ConfigError, OSError, ValueError):
            self.tls = client_tls(load_settings(config, env=self.env).api)
        self.url = f"{'http' if self.tls is None else 'https'}://127.0.0.1:{port}"

    @property
    def pid(self) -> int:
        """supervisord's pid (the launcher execs it)."""
        return self.service.pid

    def log_text(self) -> str:
        return self.service.log_text()

    def output(self) -> str:
        return self.service.output()

    def redis(self) -> redis.Redis:
        return redis.Redis(unix_socket_path=str(self.run_dir / "redis.sock"))

    def segment_folder(self) -> Path | None:
        """Where the appliance keeps job pixels in shared memory (`daemon.queue.pixel_store`), once started."""
        return segment_folder(load_settings(self.config, env=self.env))

    def pixel_segments(self) -> list[str]:
        """The job pixel segments the appliance holds in shared memory now."""
        folder = self.segment_folder()
        return sorted(os.listdir(folder)) if folder is not None and folder.is_dir() else []

    def launch(self) -> Appliance:
        """Start without waiting for readiness (for a test that expects it never to become ready)."""
        self.service.start()
        return self

    def start(self, timeout_s: float = 90) -> None:
        self.launch()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            # BaseException: a Ctrl-C or a test timeout too. An appliance that never became ready must not
            # outlive the test that started it (fixtures call start() before their try/finally).
            self.stop()
            raise

    def live_shards(self) -> list[str]:
        _, body = fetch(f"{self.url}/readyz", self.tls, timeout_s=2)
        shards: list[str] = json.loads(body).get("live_shards", [])
        return shards

    def wait_ready(self, timeout_s: float = 90) -> None:
        self.service.wait_until(
            f"{self.shards} live shard(s) at {self.url}/readyz",
            lambda: len(self.live_shards()) == self.shards,
            timeout_s,
        )

    def wait_until(self, what: str, predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
        self.service.wait_until(what, predicate, timeout_s)

    def supervisorctl(self, *args: str) -> str:
        result = subprocess.run(
            [PYTHON, "-m", "supervisor.supervisorctl", "-c", str(REPO / "conf" / "supervisord.conf"), *args],
            env={**self.env, "INFERD_RUN_DIR": str(self.run_dir), "INFERD_LOG_DIR": str(self.folder / "log")},
            capture_output=True,
            text=True,
            timeout=30,
        )
        return result.stdout + result.stderr

    def pid_of(self, program: str, wait_s: float = 30.0) -> int:
        """The pid of `program` once supervisord calls it RUNNING, waiting up to `wait_s` for that.

        /readyz may answer before a program has stayed up for its `startsecs`, and until then supervisorctl
        shows it STARTING, without a pid.
        """
        pids: list[int] = []

        def running() -> bool:
            for line in self.supervisorctl("status").splitlines():
                if line.startswith(program) and "RUNNING" in line and "pid" in line:
                    pids[:] = [int(line.split("pid", 1)[1].split(",")[0].strip())]
                    return True
            return False

        if not running():
            if wait_s <= 0:
                raise AssertionError(
                    f"no running {program} in supervisorctl status:\n{self.supervisorctl('status')}"
                )
            self.wait_until(f"{program} to be RUNNING", running, wait_s)
        return pids[0]

    def wait_restarted(self, program: str, old_pid: int, timeout_s: float = 60) -> int:
        """Wait until supervisord runs `program` again under a new pid; returns that pid."""
        pids: list[int] = []

        def restarted() -> bool:
            try:
                pids[:] = [self.pid_of(program, wait_s=0)]
            except AssertionError:  # not running yet: STARTING or BACKOFF
                return False
            return pids[0] != old_pid

        self.wait_until(f"{program} to run again after pid {old_pid}", restarted, timeout_s)
        return pids[0]

    def terminate(self) -> None:
        """SIGTERM supervisord, as systemd does, without waiting; `wait_exit` or `stop` then waits."""
        self.service.terminate()

    def wait_exit(self, timeout_s: float) -> int | None:
        return self.service.wait_exit(timeout_s)

    def stop(self, timeout_s: float = 60) -> int | None:
        """SIGTERM supervisord and wait; returns its exit code. Fails if it had to be forced.

        Past the timeout, or when supervisord exited but left a program running, the whole tree is killed
        first, so nothing of this appliance outlives the call either way.
        """
        returncode = self.service.stop(timeout_s)
        # Its run dir is a throwaway one: no later start on it would clear what a killed process left.
        folder = self.segment_folder()
        if folder is not None:
            remove_folder(folder)
        if self.service.killed:
            raise AssertionError(f"appliance did not stop within {timeout_s}s (killed):\n{self.output()}")
        if self.service.leftovers:
            raise AssertionError(
                f"appliance exited but left pids {self.service.leftovers} running (killed):\n{self.output()}"
            )
        return returncode
