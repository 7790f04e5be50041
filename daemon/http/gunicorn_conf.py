"""gunicorn settings derived from inferd's settings (`gunicorn --config python:daemon.http.gunicorn_conf`).

Each of the API's instances (supervisord programs `api` and `api2`, told apart by INFERD_API_INSTANCE)
listens on its own unix socket in the run dir, behind the front door (daemon/ops/front_door.py).
"""

import os
from typing import Any

from prometheus_client import multiprocess

from daemon.http.whole_response import install as send_head_with_first_chunk
from daemon.metrics.inferd import multiprocess_mode
from daemon.ops.capacity import api_threads, shard_count_from_env
from daemon.ops.front_door import API_INSTANCE_ENV, api_socket, instance_workers
from daemon.settings import load_settings

_settings = load_settings()
send_head_with_first_chunk()  # in the master, before the fork: every worker inherits it
_instance = int(os.environ.get(API_INSTANCE_ENV, "0"))

bind = f"unix:{api_socket(_settings.paths.run_dir, _instance)}"
workers = instance_workers(_settings.api.workers, _instance)
threads = api_threads(_settings, shard_count_from_env())
worker_class = "gthread"
# Threads wait on Redis, not on the CPU: a request holds its thread for at most request_timeout_s.
timeout = int(_settings.api.request_timeout_s) + 30
graceful_timeout = int(_settings.api.request_timeout_s) + 5
backlog = 2048
proc_name = f"inferd-api{_instance}"
errorlog = "-"
accesslog = None
# gunicorn >= 24 opens a control socket in $HOME by default; the appliance is run by supervisord instead.
control_socket_disable = True


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead gunicorn worker's live gauges from the shared metrics files (counters are kept)."""
    if multiprocess_mode():
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
