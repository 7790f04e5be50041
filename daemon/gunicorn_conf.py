"""gunicorn settings derived from inferd's settings (`gunicorn --config python:daemon.gunicorn_conf`)."""

from typing import Any

from prometheus_client import multiprocess

from daemon.capacity import api_threads, shard_count_from_env
from daemon.metrics import multiprocess_mode
from daemon.settings import load_settings

_settings = load_settings()

bind = (
    f"[{_settings.api.host}]:{_settings.api.port}"
    if ":" in _settings.api.host
    else f"{_settings.api.host}:{_settings.api.port}"
)
workers = _settings.api.workers
threads = api_threads(_settings, shard_count_from_env())
worker_class = "gthread"
# Threads wait on Redis, not on the CPU: a request holds its thread for at most request_timeout_s.
timeout = int(_settings.api.request_timeout_s) + 30
graceful_timeout = int(_settings.api.request_timeout_s) + 5
keepalive = 5
backlog = 2048
proc_name = "inferd-api"
errorlog = "-"
accesslog = None
# gunicorn >= 24 opens a control socket in $HOME by default; the appliance is run by supervisord instead.
control_socket_disable = True


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead gunicorn worker's live gauges from the shared metrics files (counters are kept)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
