"""Start nginx (the front door) once the API instances listen: `python -m daemon.ops.start_front_door NGINX ARGS`.

supervisord starts its programs in priority order without waiting for one to listen before the next
starts, so nginx would be up before gunicorn made its sockets, and every early request (a balancer's or a
script's /readyz poll, our own ready announcement) would leave a `[crit] connect() to unix:...api0.sock
failed (2: No such file or directory)` line in the log. Waiting here until both instances accept keeps
those lines for what they mean: an API instance that died. The wait is bounded: after API_WAIT_S nginx
starts anyway (one instance may be failing; nginx sends its requests to the other), with one line saying
which did not listen. This process then becomes nginx (exec: same pid, so supervisord's stop signal and the
parent-death signal reach nginx itself).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from daemon.logs import setup_logging
from daemon.ops.front_door import API_INSTANCES, api_socket
from daemon.ops.run_dir import RUN_DIR_ENV

log = logging.getLogger(__name__)

API_WAIT_S = 60.0
"""Longest nginx waits for the API instances: beyond gunicorn's start on a loaded box, short of forever."""
POLL_INTERVAL_S = 0.1


def accepts(path: Path) -> bool:
    """Whether a server listens on the unix socket `path` now."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def wait_for_api(run_dir: Path, wait_s: float) -> list[Path]:
    """Wait until every API instance accepts, at most `wait_s`; the sockets still silent then."""
    deadline = time.monotonic() + wait_s
    pending = [api_socket(run_dir, instance) for instance in range(API_INSTANCES)]
    while True:
        pending = [path for path in pending if not accepts(path)]
        if not pending or time.monotonic() >= deadline:
            return pending
        time.sleep(POLL_INTERVAL_S)


def main(argv: list[str]) -> int:
    setup_logging()
    # supervisord stops nginx with QUIT, whose default action would dump core while we still wait.
    signal.signal(signal.SIGQUIT, lambda signum, frame: sys.exit(0))
    silent = wait_for_api(Path(os.environ[RUN_DIR_ENV]), API_WAIT_S)
    if silent:
        log.warning(
            "front door: %s not listening after %.0fs; nginx starts and sends requests to the instance that is",
            ", ".join(path.name for path in silent),
            API_WAIT_S,
        )
    os.execv(argv[0], argv)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
