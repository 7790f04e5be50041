"""supervisord in the foreground, then one line saying the appliance has stopped.

The launcher execs this (same process, same pid: systemd's main process and the holder of the run dir's
lock) instead of `python -m supervisor.supervisord`. supervisord's `main()` returns once every program has
exited after a stop; the last thing a user sees is then ours, not whichever program spoke last.
"""

from __future__ import annotations

import logging
import sys
import time

from supervisor import supervisord

from daemon.logs import setup_logging

log = logging.getLogger(__name__)


def main(argv: list[str]) -> int:
    setup_logging(stream=sys.stdout)  # where supervisord's own lines go: the log a redirect captures
    started = time.monotonic()
    supervisord.main(argv)
    log.info("inferd: stopped after %.0fs; every program has exited", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
