"""`flush_queues --purge | --drain`: empty inferd's shard queues, by dropping or by finishing what waits.

`--purge` drops the jobs waiting in `inferd:queue:<shard>` and answers each caller at once with a clean 503.
The old advice was "stop the server and FLUSHALL Redis", which also wiped answers, heartbeats and anything
else kept in that Redis; this removes only the queues' contents, and jobs a worker has already claimed (in
flight) are left to finish.

`--drain` drops nothing: it stops admitting to the shards (or the box, readiness first) and waits until
every waiting job is answered; it is `inferd drain` (daemon/cli/drain.py), and `inferd undrain` resumes.

One of the two is required: which one an operator means is not something to guess.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

import redis

from daemon.cli import drain as drain_tool
from daemon.cli.common import (
    ToolArgumentParser,
    connect_redis,
    render_table,
    report_redis_down,
    settings_or_exit,
    unknown_shards,
)
from daemon.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_REDIS_DOWN, EXIT_USAGE, JobDropped
from daemon.queue.faces import ShardQueues
from daemon.queue.keys import KEY_PREFIX, processing_key, queue_key
from daemon.queue.pixel_store import PixelStore
from daemon.queue.registry import known_shards
from daemon.settings import Settings

DROP_MESSAGE = "the job was dropped by an operator (flush_queues) before it ran; retry"
"""What every caller of a dropped job reads in its 503's JSON `error`."""


@dataclass(frozen=True, slots=True)
class ShardFlush:
    shard: str
    queued: int
    """Jobs waiting when looked at (dry run) or dropped and answered (real run)."""
    in_flight: int
    """Jobs a worker had already claimed: never touched, they finish normally."""


def flush(client: redis.Redis, settings: Settings, shards: list[str], dry_run: bool) -> list[ShardFlush]:
    """Count (dry run) or drop each shard's waiting jobs; dropped jobs' callers are answered 503."""
    results = []
    for shard in shards:
        in_flight = int(client.llen(processing_key(shard)))
        if dry_run:
            queued = int(client.llen(queue_key(shard)))
        else:
            queued = ShardQueues(client, shard, settings).fail_waiting(JobDropped(DROP_MESSAGE))
        results.append(ShardFlush(shard, queued, in_flight))
    if not dry_run:
        # The dropped jobs' segments go with their callers' 503s; what no caller will ever remove goes now.
        PixelStore.for_settings(settings).sweep()
    return results


def report(results: list[ShardFlush], dry_run: bool) -> str:
    verb = "WOULD DROP" if dry_run else "DROPPED"
    rows = [[r.shard, str(r.queued), str(r.in_flight)] for r in results]
    table = render_table(["SHARD", verb, "IN-FLIGHT (left alone)"], rows, right=frozenset({1, 2}))
    total = sum(r.queued for r in results)
    if dry_run:
        tail = f"dry run: {total} queued job(s) would be dropped; run again without --dry-run to drop them"
    else:
        tail = f"dropped {total} queued job(s); each caller was answered 503 ({DROP_MESSAGE!r})"
    return f"{table}\n{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = ToolArgumentParser(
        "flush_queues",
        f"Empty inferd's shard queues ({KEY_PREFIX}queue:<shard>), one of two ways. --purge drops the waiting "
        "jobs and answers each dropped job's caller at once with 503 and a JSON reason. --drain drops "
        "nothing: it stops admitting new jobs (for the box: /readyz answers 503 first, admission stops "
        "after api.drain_grace_s) and waits until every waiting job is answered; `inferd undrain` resumes. "
        "Nothing else in Redis is touched (no FLUSHALL), and jobs a worker is already running finish "
        "normally either way.",
        exit_codes=(EXIT_OK, EXIT_FAILED, EXIT_REDIS_DOWN, EXIT_USAGE, EXIT_CONFIG),
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--purge", action="store_true", help="drop waiting jobs; their callers get 503 at once")
    mode.add_argument(
        "--drain", action="store_true", help="stop admitting, let waiting jobs finish, report the counts"
    )
    drain_tool.add_drain_arguments(parser)
    parser.add_argument("--dry-run", action="store_true", help="--purge: show what would be dropped")
    args = parser.parse_args(argv)
    if args.drain and args.dry_run:
        parser.error("--dry-run goes with --purge; --drain drops nothing")
    if args.purge and (args.grace is not None or args.timeout is not None):
        parser.error("--grace and --timeout go with --drain")
    settings = settings_or_exit(parser.prog, args.config)
    if args.drain:
        return drain_tool.run_drain(parser.prog, settings, args)
    client = connect_redis(settings)
    try:
        shards = known_shards(client)
        if args.shard:
            message = unknown_shards(parser.prog, args.shard, shards)
            if message:
                print(message, file=sys.stderr)
                return EXIT_USAGE
            shards = sorted(set(args.shard))
        results = flush(client, settings, shards, args.dry_run)
    except (redis.RedisError, OSError) as exc:
        return report_redis_down("flush_queues", settings, exc)
    finally:
        client.close()
    if args.json:
        print(json.dumps({"dry_run": args.dry_run, "shards": [asdict(r) for r in results]}, indent=2))
    else:
        print(report(results, args.dry_run))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
