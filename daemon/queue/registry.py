"""The shard registry as Redis holds it, read: which shards are registered, live, stuck or draining, and how
fast they work. `read_shards` is the one reader for /readyz, /metrics, the notifier and the tools.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import redis

from daemon.queue.keys import (
    DRAINING_KEY,
    SHARDS_KEY,
    STATS_WINDOW,
    UNREADY_KEY,
    draining_key,
    heartbeat_key,
    processing_key,
    queue_key,
    stats_key,
)
from daemon.queue.wire import DOWN, LIVE, SERVING, BatchRecord, Heartbeat, ShardInfo, WireError, as_text

log = logging.getLogger(__name__)

RATE_WINDOW_S = 60.0
"""Images/s and mean batch size are computed over this much recent history (tools/gpu_status, the notifier)."""


@dataclass(frozen=True, slots=True)
class ShardState:
    """One registered shard as Redis holds it now."""

    shard: str
    info: ShardInfo | None
    """None when the registry entry does not parse (written by something else)."""
    heartbeat: Heartbeat | None
    """None when the heartbeat expired: the shard gets no jobs and its work may be adopted."""
    heartbeat_ttl_ms: int | None
    queue_depth: int
    in_flight: int
    records: tuple[BatchRecord, ...] = ()

    @property
    def live(self) -> bool:
        return self.heartbeat is not None

    @property
    def status(self) -> str:
        """LIVE, DOWN (no fresh heartbeat), or the state its worker left in the registry (STUCK, FAILED)."""
        if self.heartbeat is not None:
            return LIVE
        if self.info is not None and self.info.state != SERVING:
            return self.info.state
        return DOWN


@dataclass(frozen=True, slots=True)
class DrainState:
    """What the drain marks say: why the box is not ready or admits nothing, and which shards admit nothing."""

    unready: str | None = None
    """Set first by a drain or a shutdown: /readyz answers 503 while the box still serves."""
    box: str | None = None
    """Set when the box admits no new work at all."""
    shards: frozenset[str] = frozenset()

    @property
    def any(self) -> bool:
        return bool(self.unready or self.box or self.shards)


def read_drain_state(client: redis.Redis, shards: list[str]) -> DrainState:
    """The drain marks of the box and of `shards`, in one round trip."""
    pipe = client.pipeline(transaction=False)
    pipe.get(UNREADY_KEY)
    pipe.get(DRAINING_KEY)
    for shard in shards:
        pipe.exists(draining_key(shard))
    unready, box, *marks = pipe.execute()
    return DrainState(
        unready=None if unready is None else as_text(unready),
        box=None if box is None else as_text(box),
        shards=frozenset(shard for shard, marked in zip(shards, marks, strict=True) if marked),
    )


def batch_rates(
    records: tuple[BatchRecord, ...], now: float, window_s: float = RATE_WINDOW_S
) -> tuple[float, float | None]:
    """Images/s and mean batch size over the last `window_s`, from a worker's records (newest first)."""
    recent = [batch for batch in records if batch.finished_at >= now - window_s]
    if not recent:
        return 0.0, None
    mean_batch = sum(batch.size for batch in recent) / len(recent)
    if len(records) >= STATS_WINDOW and len(recent) == len(records) and len(recent) > 1:
        # The worker keeps only STATS_WINDOW records: when all of them are recent, older batches of the
        # window were trimmed, so the rate is taken over the span the records cover (the oldest batch's
        # images were done before that span began).
        span = now - recent[-1].finished_at
        return sum(batch.size for batch in recent[:-1]) / max(span, 1e-3), mean_batch
    return sum(batch.size for batch in recent) / window_s, mean_batch


def registered_shard_ids(client: redis.Redis) -> list[str]:
    return sorted(as_text(key) for key in client.hkeys(SHARDS_KEY))


def read_shards(client: redis.Redis, with_records: bool = False) -> list[ShardState]:
    """Every registered shard in id order, with liveness, queue and claims (and batch records when asked),
    read in two round trips."""
    entries = {as_text(key): value for key, value in client.hgetall(SHARDS_KEY).items()}
    shards = sorted(entries)
    pipe = client.pipeline(transaction=False)
    for shard in shards:
        pipe.get(heartbeat_key(shard))
        pipe.pttl(heartbeat_key(shard))
        pipe.llen(queue_key(shard))
        pipe.llen(processing_key(shard))
        if with_records:
            pipe.lrange(stats_key(shard), 0, -1)
    answers = iter(pipe.execute())
    states = []
    for shard in shards:
        beat, ttl_ms, depth, in_flight = (next(answers) for _ in range(4))
        records = tuple(parse_all(BatchRecord.decode, next(answers))) if with_records else ()
        states.append(
            ShardState(
                shard=shard,
                info=parse_or_none(ShardInfo.decode, entries[shard]),
                heartbeat=None if beat is None else parse_or_none(Heartbeat.decode, beat) or Heartbeat(0),
                heartbeat_ttl_ms=int(ttl_ms) if beat is not None and int(ttl_ms) >= 0 else None,
                queue_depth=int(depth),
                in_flight=int(in_flight),
                records=records,
            )
        )
    return states


def known_shards(client: redis.Redis) -> list[str]:
    """Registered shards, plus any shard that still has a queue (one no longer configured, say)."""
    shards = set(registered_shard_ids(client))
    prefix = queue_key("")
    shards.update(as_text(key)[len(prefix) :] for key in client.scan_iter(match=f"{prefix}*", count=1000))
    return sorted(shards)


def parse_or_none(parse: Any, payload: bytes | str) -> Any:
    try:
        return parse(payload)
    except WireError as exc:
        log.warning("queues: ignoring a malformed entry: %s", exc)
        return None


def parse_all(parse: Any, payloads: list[bytes]) -> list[Any]:
    parsed = (parse_or_none(parse, payload) for payload in payloads)
    return [item for item in parsed if item is not None]
