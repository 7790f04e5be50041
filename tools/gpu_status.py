"""`gpu_status`: one row per shard: its GPU (through NVML), its queue, its worker and its recent throughput.

Reads only: the shard registry, queues, heartbeats and batch records the workers keep in Redis, and NVML.
Like `nvidia-smi`, one table by default, `--watch` to refresh in place, `--json` for scripts.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import redis

from daemon.cli.common import (
    ToolArgumentParser,
    connect_redis,
    redis_address,
    redis_down_message,
    render_table,
    settings_or_exit,
)
from daemon.errors import EXIT_CONFIG, EXIT_OK, EXIT_REDIS_DOWN, EXIT_SHARD_DOWN, EXIT_USAGE
from daemon.ops.nvml import GpuReading, Nvml
from daemon.ops.shard_status import ShardStatus, collect, shards_json
from daemon.queue.registry import RATE_WINDOW_S
from daemon.queue.wire import FAILED, STUCK
from daemon.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_WATCH_S = 2.0
"""Refresh interval of `--watch` given without a value (as `watch` does)."""
HOME_CURSOR, CLEAR_LINE, CLEAR_BELOW = "\x1b[H", "\x1b[K", "\x1b[J"
GIB = 2**30


def exit_code(statuses: list[ShardStatus]) -> int:
    return EXIT_OK if statuses and all(status.live for status in statuses) else EXIT_SHARD_DOWN


def _fmt(value: float | int | None, form: str) -> str:
    return "-" if value is None else form.format(value)


def render_status_table(statuses: list[ShardStatus]) -> str:
    headers = ["SHARD", "DEVICE", "UTIL", "MEMORY", "TEMP", "POWER", "QUEUE", "IN-FLIGHT", "WORKER", "PID"]
    headers += ["HEARTBEAT", "IMG/S", "BATCH"]
    rows = []
    for s in statuses:
        gpu = s.gpu or GpuReading(None, None, None, None, None)
        memory = "-"
        if gpu.memory_used_bytes is not None and gpu.memory_total_bytes is not None:
            memory = f"{gpu.memory_used_bytes / GIB:.1f}/{gpu.memory_total_bytes / GIB:.1f} GiB"
        device = s.device_name if s.device_index is None else f"{s.device_index}: {s.device_name}"
        rows.append(
            [
                s.shard,
                device,
                _fmt(gpu.utilization_pct, "{}%"),
                memory,
                _fmt(gpu.temperature_c, "{}C"),
                _fmt(gpu.power_w, "{:.0f}W"),
                str(s.queue_depth),
                str(s.in_flight),
                s.status if s.live else s.status.upper(),
                _fmt(s.pid, "{}"),
                _fmt(s.heartbeat_age_s, "{:.1f}s ago"),
                f"{s.images_per_s:.1f}",
                _fmt(s.mean_batch_size, "{:.1f}"),
            ]
        )
    table = render_table(headers, rows, right=frozenset({2, 4, 5, 6, 7, 9, 10, 11, 12}))
    down = [s.shard for s in statuses if not s.live]
    if not statuses:
        return f"{table}\nno shard registered: is the appliance running?"
    failed = [s.shard for s in statuses if s.failed]
    summary = f"{len(statuses)} shard(s): {len(statuses) - len(down)} live, {len(down)} down"
    summary += f" ({', '.join(down)})" if down else ""
    summary += f", {len(failed)} failed to start" if failed else ""
    # The reason goes under the table, whole: it names the cause and the fix, too long for a column.
    notes = [f"{s.shard} {s.status.upper()}: {s.reason}" for s in statuses if s.status in (FAILED, STUCK)]
    notes += [f"{s.shard} CPU FALLBACK: {s.reason}" for s in statuses if s.fallback and s.live]
    return "\n".join([table, summary, *notes])


def status_json(statuses: list[ShardStatus], settings: Settings, nvml: bool) -> dict[str, Any]:
    # The operator's own view adds where it looked and its exit code; the API leaves out the Redis address.
    document = shards_json(statuses, nvml)
    return {**document, "redis": redis_address(settings), "exit_code": exit_code(statuses)}


def one_frame(client: redis.Redis, settings: Settings, reader: Nvml, as_json: bool) -> tuple[int, str]:
    """(exit code, text) of one look at the appliance."""
    try:
        statuses = collect(client, settings, reader)
    except (redis.RedisError, OSError) as exc:
        message = redis_down_message(settings, exc)
        text = json.dumps({"time": time.time(), "redis": redis_address(settings), "error": message})
        return EXIT_REDIS_DOWN, text if as_json else f"gpu_status: {message}"
    if as_json:
        return exit_code(statuses), json.dumps(status_json(statuses, settings, reader.available))
    return exit_code(statuses), render_status_table(statuses)


def watch(
    frame: Callable[[], tuple[int, str]], interval_s: float, iterations: int | None, as_json: bool
) -> int:
    """Redraw in place on a terminal (cursor home, overwrite, clear the rest) until Ctrl-C or `iterations`."""
    in_place = sys.stdout.isatty() and not as_json
    code, shown = EXIT_OK, 0
    try:
        while True:
            code, text = frame()
            if as_json:
                print(text, flush=True)  # JSON lines: one document per refresh
            else:
                stamp = f"Every {interval_s:g}s: inferd gpu_status    {socket.gethostname()}: {time.ctime()}"
                lines = [stamp, "", *text.splitlines()]
                if in_place:
                    sys.stdout.write(
                        HOME_CURSOR + "".join(f"{line}{CLEAR_LINE}\n" for line in lines) + CLEAR_BELOW
                    )
                    sys.stdout.flush()
                else:
                    print("\n".join(lines) + "\n", flush=True)
            shown += 1
            if iterations is not None and shown >= iterations:
                return code
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return code


def main(argv: list[str] | None = None, nvml: Any | None = None) -> int:
    """Entry point; `nvml` replaces the pynvml module (tests pass a stand-in)."""
    parser = ToolArgumentParser(
        "gpu_status",
        "One row per inferd shard: GPU utilisation, memory, temperature and power (NVML), queue depth, "
        "jobs in flight, worker state, pid and heartbeat age, and images/s and mean batch size over the "
        f"last {RATE_WINDOW_S:g}s. CPU shards, or a machine without NVML, show '-' in the GPU columns.",
        exit_codes=(EXIT_OK, EXIT_SHARD_DOWN, EXIT_REDIS_DOWN, EXIT_USAGE, EXIT_CONFIG),
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=DEFAULT_WATCH_S,
        metavar="SECONDS",
        help=f"refresh in place every SECONDS (default {DEFAULT_WATCH_S:g}) until Ctrl-C",
    )
    parser.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N refreshes")
    parser.add_argument(
        "--json", action="store_true", help="JSON instead of a table (one line per refresh with --watch)"
    )
    args = parser.parse_args(argv)
    if args.watch is not None and args.watch <= 0:
        parser.error("--watch SECONDS must be more than 0")
    settings = settings_or_exit(parser.prog, args.config)
    client = connect_redis(settings)
    reader = Nvml.open(nvml)
    if not reader.available:
        log.info("gpu_status: NVML unavailable (%s); GPU columns stay empty", reader.unavailable_reason)
    try:

        def frame() -> tuple[int, str]:
            return one_frame(client, settings, reader, args.json)

        if args.watch is not None:
            return watch(frame, args.watch, args.count, args.json)
        code, text = frame()
        if args.json:
            text = json.dumps(json.loads(text), indent=2)
        print(text, file=sys.stderr if code == EXIT_REDIS_DOWN and not args.json else sys.stdout)
        return code
    finally:
        reader.close()
        client.close()


if __name__ == "__main__":
    sys.exit(main())
