"""What the operator commands share (`inferd drain|undrain|reload` and tools/): settings and Redis from
--config, a parser that lists its exit codes (daemon.errors' table), and plain-text tables."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import NoReturn

import redis

from daemon.errors import EXIT_CONFIG, EXIT_MEANINGS, EXIT_REDIS_DOWN, EXIT_USAGE, ConfigError
from daemon.ops.run_dir import read_record
from daemon.queue.connection import connect
from daemon.settings import Settings, load_settings

REDIS_TIMEOUT_S = 2.0
"""Tools fail fast rather than hang when Redis is wedged."""


class ToolArgumentParser(argparse.ArgumentParser):
    """argparse with EX_USAGE for usage errors and the exit codes listed under --help."""

    def __init__(self, prog: str, description: str, exit_codes: Sequence[int]) -> None:
        listed = [f"  {code:<3} {EXIT_MEANINGS[code]}" for code in exit_codes]
        super().__init__(
            prog=prog,
            description=textwrap.fill(description, width=100),
            epilog="\n".join(["exit codes:", *listed]),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.add_argument(
            "--config", help="the appliance's settings file (default: INFERD_CONFIG, else conf/settings.toml)"
        )

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def settings_or_exit(prog: str, config: str | None) -> Settings:
    """The appliance's settings, or exit EX_CONFIG with the validation message.

    When an appliance runs on the settings' run dir, its own addresses (API, Redis) replace the file's: it
    may have been started with INFERD_* overrides this tool was not given.
    """
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc.message}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    record = read_record(settings.paths.run_dir)
    return settings if record is None else record.applied_to(settings)


def unknown_shards(prog: str, requested: Sequence[str], known: Sequence[str]) -> str | None:
    """The usage error for shard ids that are not known, or None when all are."""
    unknown = sorted(set(requested) - set(known))
    if not unknown:
        return None
    return f"{prog}: no such shard {', '.join(unknown)}; known: {', '.join(known) or 'none'}"


def redis_address(settings: Settings) -> str:
    socket = settings.redis_socket
    return f"unix:{socket}" if socket is not None else f"{settings.redis.host}:{settings.redis.port}"


def redis_down_message(settings: Settings, exc: BaseException) -> str:
    """The line every tool gives when the appliance's Redis does not answer."""
    return f"Redis at {redis_address(settings)} is unreachable: {exc}"


def report_redis_down(prog: str, settings: Settings, exc: BaseException) -> int:
    """Say on stderr that Redis does not answer; the exit code that means it."""
    print(f"{prog}: {redis_down_message(settings, exc)}", file=sys.stderr)
    return EXIT_REDIS_DOWN


def connect_redis(settings: Settings) -> redis.Redis:
    return connect(settings, socket_timeout_s=REDIS_TIMEOUT_S)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int]) -> str:
    """Columns padded to their widest cell; indices in `right` are right-aligned (numbers)."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            cell.rjust(width) if index in right else cell.ljust(width)
            for index, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), *(line(row) for row in rows)])
