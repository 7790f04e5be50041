"""`inferd drain` / `inferd undrain` (and `flush_queues --drain`): take the box or some shards out of service
for maintenance without failing a request, then report what was finished.

The order is `daemon.ops.drain`'s: for the box, /readyz answers 503 first and admission stops only after
`api.drain_grace_s`, so a load balancer has moved away before anything is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict

import redis

from daemon.cli.common import connect_redis, render_table, report_redis_down, unknown_shards
from daemon.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from daemon.ops import drain
from daemon.queue.registry import known_shards
from daemon.settings import Settings

TIMEOUT_MARGIN_S = 5.0
"""Added to api.request_timeout_s for the default wait: by then every admitted request has its answer."""


def add_drain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shard",
        action="append",
        metavar="ID",
        help="only this shard (e.g. gpu0); repeatable; default: every shard (a drain then takes the whole box "
        "out, readiness first)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="box drain: how long /readyz answers 503 before admission stops (default: api.drain_grace_s)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="how long to wait for queued jobs to finish (default: api.request_timeout_s + 5)",
    )
    parser.add_argument("--json", action="store_true", help="print the per-shard counts as JSON")


def report(results: list[drain.ShardDrain], box: bool) -> str:
    rows = [[r.shard, str(r.queued), str(r.in_flight), str(r.left)] for r in results]
    table = render_table(["SHARD", "QUEUED", "IN-FLIGHT", "LEFT"], rows, right=frozenset({1, 2, 3}))
    finished = sum(r.queued + r.in_flight - r.left for r in results)
    left = sum(r.left for r in results)
    what = "the box" if box else ", ".join(r.shard for r in results)
    tail = (
        f"drained {what}: {finished} queued or running job(s) finished, {left} left; "
        "new requests get 503 with Retry-After until `inferd undrain`"
    )
    return f"{table}\n{tail}"


def run_drain(prog: str, settings: Settings, args: argparse.Namespace) -> int:
    """Drain as `args` say, print the report, and return the exit code."""
    grace = settings.api.drain_grace_s if args.grace is None else args.grace
    timeout = settings.api.request_timeout_s + TIMEOUT_MARGIN_S if args.timeout is None else args.timeout
    if grace < 0 or timeout < 0:
        print(f"{prog}: --grace and --timeout must be 0 or more", file=sys.stderr)
        return EXIT_USAGE
    client = connect_redis(settings)
    try:
        if args.shard:
            message = unknown_shards(prog, args.shard, known_shards(client))
            if message:
                print(message, file=sys.stderr)
                return EXIT_USAGE
        shards = sorted(set(args.shard)) if args.shard else None
        results = drain.drain(
            client, shards, grace, timeout, say=lambda line: print(f"{prog}: {line}", file=sys.stderr)
        )
    except (redis.RedisError, OSError) as exc:
        return report_redis_down(prog, settings, exc)
    finally:
        client.close()
    if args.json:
        print(json.dumps({"box": args.shard is None, "shards": [asdict(r) for r in results]}, indent=2))
    else:
        print(report(results, args.shard is None))
    return EXIT_OK if all(r.left == 0 for r in results) else EXIT_FAILED


def run_undrain(prog: str, settings: Settings, shards: list[str] | None) -> int:
    client = connect_redis(settings)
    try:
        removed = drain.undrain(client, shards)
    except (redis.RedisError, OSError) as exc:
        return report_redis_down(prog, settings, exc)
    finally:
        client.close()
    what = "the box" if shards is None else ", ".join(shards)
    print(f"{prog}: {what} admits work again ({removed} drain mark(s) removed); /readyz follows at once")
    return EXIT_OK
