"""The one logging set-up of every inferd process: one line per record on stderr, level from the environment."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TextIO

LEVEL_ENV = "INFERD_LOG_LEVEL"
"""DEBUG, INFO (the default), WARNING or ERROR, for every process the appliance runs."""
FORMAT = "%(asctime)s %(levelname)s %(message)s"
"""No logger name: each message starts with who speaks (`api:`, `gpu0:`, `shard:`), which says more."""


def log_level(env: Mapping[str, str]) -> int | None:
    """The level INFERD_LOG_LEVEL names (INFO when unset), or None when it names no level."""
    name = env.get(LEVEL_ENV, "INFO").strip().upper() or "INFO"
    return logging.getLevelNamesMapping().get(name)


def setup_logging(env: Mapping[str, str] | None = None, stream: TextIO | None = None) -> None:
    """Configure the root logger once per process, at the level INFERD_LOG_LEVEL names, on stderr or
    `stream`."""
    env = os.environ if env is None else env
    level = log_level(env)
    logging.basicConfig(level=logging.INFO if level is None else level, format=FORMAT, stream=stream)
    if level is None:
        # A typo in a log level must not stop a worker from serving: say it, and log at INFO.
        logging.getLogger(__name__).warning(
            "logs: %s=%r is not a log level; using INFO", LEVEL_ENV, env.get(LEVEL_ENV)
        )
