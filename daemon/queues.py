"""The Redis protocol between the API and the shards: every key, every script, and one face for each side.

Key layout. Every key starts with `inferd:`, so the tools touch ours and nothing else.

| key | type | written by | read by | bounded by |
| --- | --- | --- | --- | --- |
| `inferd:shards` | hash: shard id -> `wire.ShardInfo` | each worker, on every beat, or once as "failed" when it refuses to start | API, tools | a field per shard |
| `inferd:heartbeat:<shard>` | string: `wire.Heartbeat` | the worker, every `queue.heartbeat_interval_s` | enqueue script (liveness, and `batch_s` for the wait estimate), /readyz, tools | expires after `queue.heartbeat_ttl_s` |
| `inferd:queue:<shard>` | list of `wire.Job`, newest at the left | the API (`ApiQueues.submit`) | its shard, from the right | `queue.max_depth` |
| `inferd:processing:<shard>` | list: the jobs of the batch in hand | the shard, in the step that takes them off its queue | the shard (`commit` releases them); a live shard adopts a dead one's | `batching.max_batch_size` |
| `inferd:adopted:<shard>` | string marker | a live shard that adopted this shard's batch | this shard's next `commit` | expires after ADOPTED_MARK_TTL_S |
| `inferd:reply:<job id>` | list holding one `wire.Reply`, or a refusal marker | the shard, or whoever drops the job; the enqueue script marks a refused job (pipelined submit) | the API's BLPOP (`await_reply`, `submit_and_await`) | expires after `queue.answer_ttl_s` |
| `inferd:stats:<shard>` | list of `wire.BatchRecord`, newest first | the shard, with each commit | tools/gpu_status | STATS_WINDOW records |
| `inferd:rotation` | integer | the enqueue script | the enqueue script | - |
| `inferd:unready` | string: why (`shutdown`, `operator`) | the drain guard on SIGTERM (with a TTL), `inferd drain` | /readyz (503 while set), tools | the guard's TTL; `inferd undrain` deletes it |
| `inferd:draining` | string: why | `inferd drain`, `flush_queues --drain` | enqueue script (admits nothing), /readyz | `inferd undrain` deletes it |
| `inferd:draining:<shard>` | string: why | `inferd drain --shard`, `flush_queues --drain --shard` | enqueue script (skips the shard), /readyz | `inferd undrain` deletes it |
| `inferd:swap:<shard>` | string: `wire.ModelChoice` | `inferd reload` | the shard, between batches | the shard deletes it when it answers; the tool when it gives up |
| `inferd:swap-done:<shard>` | list holding one `wire.SwapResult` | the shard | `inferd reload`'s BLPOP | expires after SWAP_RESULT_TTL_S |

Invariants:
- A job is in one place at a time: a queue, a processing list, or answered. Every move between lists is one
  Redis command or one script, so a worker killed at any instant loses nothing.
- Only the enqueue script pushes onto a queue, and it checks liveness, the drain marks, the depth limit and
  the expected wait against the job's deadline in the same atomic step, so a queue never passes
  `queue.max_depth` however many API threads race, nothing is admitted to a drained shard once its mark is
  set (what is already queued still runs), and a job that could not be reached in time is refused instead.
- A shard pushes its batch's answers and releases the claims in one script: all or none. A batch that a live
  shard adopted while its owner was frozen is not answered again by the owner when it wakes (the `adopted`
  marker), so each job is answered once.

A job's pixels are not necessarily in Redis: with `queue.pixels = "shared_memory"` the job names a file
(`daemon.pixel_store`) and only its 76 bytes cross here.

The API's face is `ApiQueues` (submit a job, await its reply, or both in one round trip; liveness); a
shard's face is `ShardQueues` (claim a batch, commit its answers, requeue or adopt orphans, fail what waits,
beat); `read_shards` is the one reader of the registry for /readyz, /metrics and the tools.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import redis

from daemon.errors import Draining, InferdError, NoLiveWorker, Overloaded, QueueFull, RedisUnavailable
from daemon.settings import BatchingSettings, QueueSettings, Settings
from daemon.wire import (
    FAILED,
    STUCK,
    BatchRecord,
    Heartbeat,
    Job,
    ModelChoice,
    Reply,
    ShardInfo,
    SwapResult,
    WireError,
    as_text,
)

log = logging.getLogger(__name__)

KEY_PREFIX = "inferd:"
SHARDS_KEY = f"{KEY_PREFIX}shards"
ROTATION_KEY = f"{KEY_PREFIX}rotation"
UNREADY_KEY = f"{KEY_PREFIX}unready"
DRAINING_KEY = f"{KEY_PREFIX}draining"
STATS_WINDOW = 120
"""Batch records kept per shard for tools/gpu_status's rates."""
ADOPTED_MARK_TTL_S = 3600
"""How long an adoption marker waits for its frozen owner to wake; past it any caller has long gone."""
RATE_WINDOW_S = 60.0
"""Images/s and mean batch size are computed over this much recent history (tools/gpu_status, the notifier)."""
SHARD_LIST_TTL_S = 1.0
"""How long an API process trusts its copy of the registered shard list before reading it again."""
GATHER_MIN_SLICE_S = 0.001
"""Shortest pause between looks for more jobs while a batch fills: about three looks per window."""
SWAP_RESULT_TTL_S = 600
"""How long a shard's answer to a swap request waits for `inferd reload` to read it."""
SWAP_WAIT_SLICE_S = 1.0
"""Longest single blocking wait of `inferd reload` for a shard's answer."""


def queue_key(shard: str) -> str:
    return f"{KEY_PREFIX}queue:{shard}"


def processing_key(shard: str) -> str:
    return f"{KEY_PREFIX}processing:{shard}"


def adopted_key(shard: str) -> str:
    return f"{KEY_PREFIX}adopted:{shard}"


def heartbeat_key(shard: str) -> str:
    return f"{KEY_PREFIX}heartbeat:{shard}"


def stats_key(shard: str) -> str:
    return f"{KEY_PREFIX}stats:{shard}"


def reply_key(job_id: str) -> str:
    return f"{KEY_PREFIX}reply:{job_id}"


def draining_key(shard: str) -> str:
    return f"{DRAINING_KEY}:{shard}"


def swap_key(shard: str) -> str:
    return f"{KEY_PREFIX}swap:{shard}"


def swap_done_key(shard: str) -> str:
    return f"{KEY_PREFIX}swap-done:{shard}"


# -- scripts ------------------------------------------------------------------------------------------------
# Nothing a script moves is ever evaluated; each returns counts or the jobs it took.

NO_LIVE_SHARD = -1
ALL_QUEUES_FULL = -2
WOULD_MISS_DEADLINE = -3
DRAINING = -4
# KEYS: rotation counter, box drain mark, the job's reply key, then (queue, heartbeat, shard drain mark) per
# shard.
# ARGV: job bytes, max depth, policy, milliseconds left before the job's deadline, max batch size, and the
# seconds a refusal marker lives on the reply key (0: none).
# Returns {chosen slot, or NO_LIVE_SHARD, ALL_QUEUES_FULL, WOULD_MISS_DEADLINE or DRAINING; expected wait in ms}.
# A shard's expected wait is the batches ahead of the job (its own included) times the seconds per batch its
# worker last reported in its heartbeat (`batch_s`; 0 until it has run a batch): a job that would wait past
# its deadline goes to a shard where it would not, or is refused with the shortest wait as the retry hint.
# A refused job gets a marker ('refused') on its reply key when asked for, so that a reply wait sent in the same
# round trip (`ApiQueues.submit_and_await`) returns at once.
ENQUEUE_SCRIPT = """
local function refuse(code, wait)
  local ttl = tonumber(ARGV[6])
  if ttl > 0 then
    redis.call('LPUSH', KEYS[3], 'refused')
    redis.call('EXPIRE', KEYS[3], ttl)
  end
  return {code, wait}
end
if redis.call('EXISTS', KEYS[2]) == 1 then return refuse(-4, 0) end
local shard_count = (#KEYS - 3) / 3
local max_depth = tonumber(ARGV[2])
local policy = ARGV[3]
local budget_ms = tonumber(ARGV[4])
local max_batch = tonumber(ARGV[5])
-- Rotate over live, admitting shards only, so a dead or drained shard's turn is not handed to its
-- neighbour twice.
local live, drained = {}, 0
for slot = 0, shard_count - 1 do
  if redis.call('EXISTS', KEYS[5 + slot * 3]) == 1 then
    if redis.call('EXISTS', KEYS[6 + slot * 3]) == 1 then drained = drained + 1 else live[#live + 1] = slot end
  end
end
if #live == 0 then
  if drained > 0 then return refuse(-4, 0) end
  return refuse(-1, 0)
end
local function expected_wait_ms(slot, depth)
  local ok, beat = pcall(cjson.decode, redis.call('GET', KEYS[5 + slot * 3]))
  local batch_s = ok and type(beat) == 'table' and tonumber(beat['batch_s']) or 0
  return math.ceil((depth + 1) / max_batch) * batch_s * 1000
end
local start = redis.call('INCR', KEYS[1])
local best_slot, best_depth = -1, max_depth
local soonest_wait = -1
for offset = 0, #live - 1 do
  local slot = live[((start + offset) % #live) + 1]
  local depth = redis.call('LLEN', KEYS[4 + slot * 3])
  if depth < max_depth then
    local wait = expected_wait_ms(slot, depth)
    if soonest_wait < 0 or wait < soonest_wait then soonest_wait = wait end
    if depth < best_depth and wait <= budget_ms then
      best_slot, best_depth = slot, depth
      if policy == 'round_robin' then break end
    end
  end
end
if best_slot < 0 then
  if soonest_wait < 0 then return refuse(-2, 0) end
  return refuse(-3, math.ceil(soonest_wait))
end
redis.call('LPUSH', KEYS[4 + best_slot * 3], ARGV[1])
return {best_slot, 0}
"""

# KEYS: queue, processing. ARGV: how many. Claims up to that many jobs that are already waiting, in one trip.
CLAIM_WAITING_SCRIPT = """
local claimed = {}
for _ = 1, tonumber(ARGV[1]) do
  local job = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not job then break end
  claimed[#claimed + 1] = job
end
return claimed
"""

# KEYS: processing, queue, adopted marker. A restarted worker puts its predecessor's claims back at the end
# it pops from, so they run first, and forgets any adoption mark meant for the predecessor.
REQUEUE_SCRIPT = """
redis.call('DEL', KEYS[3])
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do moved = moved + 1 end
return moved
"""

# KEYS: dead queue, dead processing, live queue, dead shard's adopted marker. ARGV: marker ttl.
# Moves the dead shard's queue, then its claims, to the end the live worker pops from: the claims (oldest)
# run first, then the queue in its order, then the live shard's own jobs. Marks the adoption of claims so
# that a frozen owner which wakes does not answer them a second time.
ADOPT_SCRIPT = """
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[3], 'LEFT', 'RIGHT') do moved = moved + 1 end
local claims = 0
while redis.call('LMOVE', KEYS[2], KEYS[3], 'LEFT', 'RIGHT') do claims = claims + 1 end
if claims > 0 then redis.call('SET', KEYS[4], '1', 'EX', tonumber(ARGV[1])) end
return moved + claims
"""

BATCH_ADOPTED = -1
# KEYS: processing, stats, adopted marker, queue, then one reply key per answer.
# ARGV: answer ttl, batch record ('' for none), stats window, then one encoded reply per reply key.
# Pushes every answer, records the batch and releases the claims, atomically. If a live shard adopted this
# batch meanwhile, it answers nothing (the adopter does) and puts back what was claimed since the adoption.
COMMIT_SCRIPT = """
if redis.call('DEL', KEYS[3]) == 1 then
  while redis.call('LMOVE', KEYS[1], KEYS[4], 'LEFT', 'RIGHT') do end
  return -1
end
for i = 5, #KEYS do
  redis.call('LPUSH', KEYS[i], ARGV[i - 1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
if ARGV[2] ~= '' then
  redis.call('LPUSH', KEYS[2], ARGV[2])
  redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
end
redis.call('DEL', KEYS[1])
return #KEYS - 4
"""

# KEYS: queue. Takes every waiting job off a queue in one atomic step.
TAKE_ALL_SCRIPT = """
local jobs = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return jobs
"""

# KEYS: one reply key per answer. ARGV: answer ttl, then one encoded reply per key.
PUSH_REPLIES_SCRIPT = """
for i = 1, #KEYS do
  redis.call('LPUSH', KEYS[i], ARGV[i + 1])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return #KEYS
"""


# KEYS: swap request, swap answer list. ARGV: the request as the shard read it, the answer, answer ttl.
# Answers only a request that still stands: one the tool withdrew (it stopped waiting) is not taken up.
ANSWER_SWAP_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('LPUSH', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 1
"""


class _Scripts:
    """Every script registered once per client (redis-py then runs them by SHA, loading on a miss)."""

    def __init__(self, client: redis.Redis) -> None:
        self.enqueue = client.register_script(ENQUEUE_SCRIPT)
        self.claim_waiting = client.register_script(CLAIM_WAITING_SCRIPT)
        self.requeue = client.register_script(REQUEUE_SCRIPT)
        self.adopt = client.register_script(ADOPT_SCRIPT)
        self.commit = client.register_script(COMMIT_SCRIPT)
        self.take_all = client.register_script(TAKE_ALL_SCRIPT)
        self.push_replies = client.register_script(PUSH_REPLIES_SCRIPT)
        self.answer_swap = client.register_script(ANSWER_SWAP_SCRIPT)


def _ttl(seconds: float) -> int:
    return max(1, int(seconds))


def _load_enqueue_script(connection: Any) -> None:
    connection.on_connect()
    connection.send_command("SCRIPT", "LOAD", ENQUEUE_SCRIPT)
    connection.read_response()


def _unavailable(what: str, exc: redis.RedisError) -> RedisUnavailable:
    # The client learns what to do; the cause (socket paths included) stays in the server's log.
    log.debug("queues: %s failed: %s", what, exc)
    return RedisUnavailable("the queue service is unavailable; retry shortly")


def _push_replies(scripts: _Scripts, replies: Mapping[str, Reply], ttl_s: float) -> None:
    if replies:
        args: list[str | bytes | int] = [_ttl(ttl_s), *(reply.encode() for reply in replies.values())]
        scripts.push_replies(keys=[reply_key(job_id) for job_id in replies], args=args)


# -- the registry, read ---------------------------------------------------------------------------------------
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
        """ "live", "down" (no fresh heartbeat), or the state its worker left in the registry ("stuck")."""
        if self.heartbeat is not None:
            return "live"
        if self.info is not None and self.info.state != "serving":
            return self.info.state
        return "down"


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
        records = tuple(_parse_all(BatchRecord.decode, next(answers))) if with_records else ()
        states.append(
            ShardState(
                shard=shard,
                info=_parse_or_none(ShardInfo.decode, entries[shard]),
                heartbeat=None if beat is None else _parse_or_none(Heartbeat.decode, beat) or Heartbeat(0),
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


def _parse_or_none(parse: Any, payload: bytes | str) -> Any:
    try:
        return parse(payload)
    except WireError as exc:
        log.warning("queues: ignoring a malformed entry: %s", exc)
        return None


def _parse_all(parse: Any, payloads: list[bytes]) -> list[Any]:
    parsed = (_parse_or_none(parse, payload) for payload in payloads)
    return [item for item in parsed if item is not None]


# -- the API's face -----------------------------------------------------------------------------------------
class ApiQueues:
    """What the API needs: put a job on a live shard's queue, await its reply, and see which shards live."""

    def __init__(self, client: redis.Redis, settings: QueueSettings, batching: BatchingSettings) -> None:
        self._client = client
        self._max_depth = settings.max_depth
        self._policy = settings.dispatch
        self._max_batch_size = batching.max_batch_size
        self._answer_ttl_s = settings.answer_ttl_s
        self._scripts = _Scripts(client)
        # A pipelined EVALSHA that misses cannot load the script before the reply wait behind it blocks, so
        # the script is loaded now and by every connection the pool opens later (after a Redis restart).
        client.connection_pool.connection_kwargs["redis_connect_func"] = _load_enqueue_script
        with contextlib.suppress(redis.RedisError):
            client.script_load(ENQUEUE_SCRIPT)  # for connections opened before; Redis may not be up yet
        self._lock = threading.Lock()
        self._shards: list[str] = []
        self._shards_read_at = float("-inf")

    def registered_shards(self) -> list[str]:
        """Shard ids workers have registered, cached for SHARD_LIST_TTL_S."""
        with self._lock:
            if time.monotonic() - self._shards_read_at < SHARD_LIST_TTL_S:
                return self._shards
        shards = registered_shard_ids(self._client)
        with self._lock:
            self._shards, self._shards_read_at = shards, time.monotonic()
        return shards

    def submit(self, job: Job) -> str:
        """Push `job` onto one live shard's queue (by `queue.dispatch`) and return the shard, or raise the
        503 that says why not: no live shard, every queue full, or every queue too long to reach the job
        before `job.deadline`."""
        shards, keys, args, budget_ms = self._enqueue_call(job, marker_ttl_s=0)
        try:
            slot, wait_ms = (int(value) for value in self._scripts.enqueue(keys=keys, args=args))
        except redis.RedisError as exc:
            raise _unavailable("submit", exc) from exc
        return self._admitted(slot, wait_ms, shards, budget_ms)

    def submit_and_await(self, job: Job) -> tuple[str, Reply | None]:
        """`submit` then `await_reply` until `job.deadline`, in one round trip: the enqueue script and the
        reply wait go out in one pipeline, and a refused job's marker ends the wait at once. A Redis that
        fails the script itself (out of memory: the marker cannot be written either) leaves the wait to run
        to the deadline, a 504 where `submit` answers 503 at once; the managed Redis's maxmemory holds full
        queues twice over, so only a shared external Redis should ever get there."""
        shards, keys, args, budget_ms = self._enqueue_call(job, marker_ttl_s=_ttl(self._answer_ttl_s))
        pipe = self._client.pipeline(transaction=False)
        pipe.evalsha(self._scripts.enqueue.sha, len(keys), *keys, *args)
        pipe.blpop([reply_key(job.job_id)], timeout=max(job.deadline - time.monotonic(), 0.01))
        try:
            enqueued, popped = pipe.execute(raise_on_error=False)
        except redis.RedisError as exc:
            raise _unavailable("submit", exc) from exc
        if isinstance(enqueued, redis.exceptions.NoScriptError):
            # Every new connection loads the script (`_load_enqueue_script`), so only a SCRIPT FLUSH under a
            # live connection gets here, after a wait that ran to the deadline: load it for the next job.
            self._client.script_load(ENQUEUE_SCRIPT)
            log.warning("queues: Redis had lost the enqueue script; loaded it again")
        for answer in (enqueued, popped):
            if isinstance(answer, redis.RedisError):
                raise _unavailable("submit", answer) from answer
        slot, wait_ms = (int(value) for value in enqueued)
        shard = self._admitted(slot, wait_ms, shards, budget_ms)
        return shard, None if popped is None else Reply.decode(cast(Any, popped)[1])

    def _enqueue_call(
        self, job: Job, marker_ttl_s: int
    ) -> tuple[list[str], list[str], list[bytes | str | int], int]:
        """The registered shards, the enqueue script's keys and arguments for `job`, and the milliseconds
        left before its deadline."""
        try:
            shards = self.registered_shards()
        except redis.RedisError as exc:
            raise _unavailable("submit", exc) from exc
        if not shards:
            # Also what a restarted Redis looks like until the workers' next beat re-registers them.
            raise NoLiveWorker("no worker is registered yet (the appliance is starting); retry shortly")
        budget_ms = max(0, int((job.deadline - time.monotonic()) * 1000))
        keys: list[str] = [ROTATION_KEY, DRAINING_KEY, reply_key(job.job_id)]
        for shard in shards:
            keys += [queue_key(shard), heartbeat_key(shard), draining_key(shard)]
        args: list[bytes | str | int] = [
            job.encode(),
            self._max_depth,
            self._policy,
            budget_ms,
            self._max_batch_size,
            marker_ttl_s,
        ]
        return shards, keys, args, budget_ms

    def _admitted(self, slot: int, wait_ms: int, shards: list[str], budget_ms: int) -> str:
        """The shard the enqueue script chose, or the 503 that says why it chose none."""
        if slot == NO_LIVE_SHARD:
            raise NoLiveWorker("no live worker: every shard's heartbeat is stale")
        if slot == DRAINING:
            raise Draining(
                "the appliance is draining for maintenance and admits no new work; retry elsewhere"
            )
        if slot == ALL_QUEUES_FULL:
            raise QueueFull(
                f"all {len(shards)} shard queue(s) are full ({self._max_depth} jobs each); retry shortly"
            )
        if slot == WOULD_MISS_DEADLINE:
            raise Overloaded(
                f"the shortest queue holds about {wait_ms / 1000:.1f}s of work, more than the "
                f"{budget_ms / 1000:.1f}s left before this request's deadline; retry after Retry-After",
                retry_after_s=wait_ms / 1000,
            )
        return shards[slot]

    def await_reply(self, job_id: str, timeout_s: float) -> Reply | None:
        """The job's reply, or None if none came within `timeout_s`."""
        try:
            popped = self._client.blpop([reply_key(job_id)], timeout=max(timeout_s, 0.01))
        except redis.RedisError as exc:
            log.debug("queues: waiting for a reply failed: %s", exc)
            raise RedisUnavailable("lost the queue service while waiting for the answer; retry") from exc
        return None if popped is None else Reply.decode(cast(Any, popped)[1])

    def shard_status(self) -> dict[str, str]:
        """Every registered shard, in order, and its status: live, down or stuck."""
        return {state.shard: state.status for state in read_shards(self._client)}

    def failures(self) -> dict[str, str]:
        """Registered shards that are not serving by their own account (failed to start, or stuck), and why."""
        return {
            state.shard: state.info.reason or ""
            for state in read_shards(self._client)
            if state.status in (FAILED, STUCK) and state.info is not None
        }

    def drain_state(self) -> DrainState:
        """The drain marks of the box and of every registered shard."""
        return read_drain_state(self._client, registered_shard_ids(self._client))


# -- a shard's face -----------------------------------------------------------------------------------------
class ShardQueues:
    """What one shard's worker needs: claim batches, commit answers, recover orphans, beat, leave.

    A batch fills until `batching.max_batch_size` jobs or `batching.max_wait_ms` after its first job,
    with the remaining wait recomputed on the monotonic clock for every look (as MLServer does). The wait is
    only spent when jobs are arriving together (the last batch, or what was already queued, had more than
    one): a lone caller at low load would pay it in full and gain nothing.
    """

    def __init__(self, client: redis.Redis, shard: str, settings: Settings) -> None:
        self.shard = shard
        self._client = client
        self._scripts = _Scripts(client)
        self._queue, self._processing = queue_key(shard), processing_key(shard)
        self.max_batch_size = settings.batching.max_batch_size
        self.max_wait_s = settings.batching.max_wait_ms / 1000.0
        self._answer_ttl_s = settings.queue.answer_ttl_s
        self._heartbeat_ttl_ms = int(settings.queue.heartbeat_ttl_s * 1000)
        self._last_batch_size = self.max_batch_size  # assume company until a batch shows otherwise

    def claim_batch(self, idle_timeout_s: float) -> list[bytes]:
        """Block up to `idle_timeout_s` for a first job, then gather more until size or deadline. Every job
        claimed sits in the processing list until `commit`."""
        first = self._blocking_claim(idle_timeout_s)
        if first is None:
            return []
        batch: list[bytes] = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            batch.extend(
                self._scripts.claim_waiting(
                    keys=[self._queue, self._processing], args=[self.max_batch_size - len(batch)]
                )
            )
            remaining = deadline - time.monotonic()
            alone = len(batch) == 1 and self._last_batch_size == 1
            if len(batch) >= self.max_batch_size or remaining <= 0 or alone:
                break
            # Wait in a few slices rather than with BLMOVE: an idle Redis checks blocked clients' timeouts
            # only every 1000/hz ms (100 ms by default), which would stretch a 5 ms window twentyfold. Each
            # look takes every job that arrived meanwhile in one round trip.
            time.sleep(max(remaining / 2, min(remaining, GATHER_MIN_SLICE_S)))
        self._last_batch_size = len(batch)
        return batch

    def _blocking_claim(self, timeout_s: float) -> bytes | None:
        # Sent raw: Redis takes a fractional timeout here, which redis-py's typed blmove() does not admit.
        command: Any = self._client.execute_command
        job: bytes | None = command("BLMOVE", self._queue, self._processing, "RIGHT", "LEFT", timeout_s)
        return job

    def commit(self, replies: Mapping[str, Reply], record: BatchRecord | None) -> bool:
        """Push every answer, record the batch and release the claims, in one atomic step. False when a
        live shard adopted this batch meanwhile: it answers them, and we answered nothing."""
        keys = [self._processing, stats_key(self.shard), adopted_key(self.shard), self._queue]
        keys += [reply_key(job_id) for job_id in replies]
        args: list[str | bytes | int] = [_ttl(self._answer_ttl_s), record.encode() if record else ""]
        args += [STATS_WINDOW, *(reply.encode() for reply in replies.values())]
        return int(self._scripts.commit(keys=keys, args=args)) != BATCH_ADOPTED

    def requeue_orphans(self) -> int:
        """Put the claims a killed predecessor left in our processing list back on our queue, first in line."""
        keys = [self._processing, self._queue, adopted_key(self.shard)]
        return int(self._scripts.requeue(keys=keys))

    def adopt(self, dead_shard: str) -> int:
        """Move a dead shard's claims and queue onto ours, ahead of our own jobs (they are older), in order."""
        keys = [queue_key(dead_shard), processing_key(dead_shard), self._queue, adopted_key(dead_shard)]
        return int(self._scripts.adopt(keys=keys, args=[ADOPTED_MARK_TTL_S]))

    def adopt_dead_shards(self) -> dict[str, int]:
        """Adopt the work of every registered shard whose worker has no fresh heartbeat; jobs moved by shard."""
        pipe = self._client.pipeline(transaction=False)
        shards = [shard for shard in registered_shard_ids(self._client) if shard != self.shard]
        for shard in shards:
            pipe.exists(heartbeat_key(shard))
        dead = [shard for shard, alive in zip(shards, pipe.execute(), strict=True) if not alive]
        moved = {shard: self.adopt(shard) for shard in dead}
        return {shard: count for shard, count in moved.items() if count}

    def fail_waiting(self, error: InferdError) -> int:
        """Take every job waiting on our queue and answer each caller at once with `error`."""
        payloads = self._scripts.take_all(keys=[self._queue])
        replies: dict[str, Reply] = {}
        for payload in payloads:
            try:
                replies[Job.peek_id(payload)] = Reply.failure(self.shard, error)
            except WireError:
                continue  # nothing to answer: not a job of ours
        _push_replies(self._scripts, replies, self._answer_ttl_s)
        return len(payloads)

    def beat(self, info: ShardInfo, heartbeat: Heartbeat) -> None:
        """Say we are alive; registering again each time lets a restarted (empty) Redis learn of us."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(SHARDS_KEY, self.shard, info.encode())
        pipe.set(heartbeat_key(self.shard), heartbeat.encode(), px=self._heartbeat_ttl_ms)
        pipe.execute()

    def mark_failed(self, info: ShardInfo) -> None:
        """Take the shard out of dispatch and leave `info` (its state and reason) for /readyz and the tools."""
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(SHARDS_KEY, self.shard, info.encode())
        pipe.delete(heartbeat_key(self.shard))
        pipe.execute()

    def leave(self) -> None:
        """Stop receiving jobs at once (the registry entry stays, so the tools show the shard as down)."""
        self._client.delete(heartbeat_key(self.shard))

    def swap_request(self) -> tuple[bytes, ModelChoice] | None:
        """The model `inferd reload` asks this shard to swap to, as asked and parsed, if it asks."""
        payload = cast(bytes | None, self._client.get(swap_key(self.shard)))
        if payload is None:
            return None
        choice = _parse_or_none(ModelChoice.decode, payload)
        return None if choice is None else (payload, choice)

    def answer_swap(self, asked: bytes | str, result: SwapResult) -> bool:
        """Hand `inferd reload` the outcome and withdraw the request, in one step, if the request is still
        `asked` (the tool withdraws it when it gives up waiting): False means nobody waits for it any more."""
        keys = [swap_key(self.shard), swap_done_key(self.shard)]
        return bool(self._scripts.answer_swap(keys=keys, args=[asked, result.encode(), SWAP_RESULT_TTL_S]))


# -- `inferd reload`'s face -------------------------------------------------------------------------------
def request_swap(client: redis.Redis, shard: str, choice: ModelChoice) -> None:
    """Ask `shard` to swap to `choice`, forgetting any answer to an earlier request."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(swap_done_key(shard))
    pipe.set(swap_key(shard), choice.encode())
    pipe.execute()


def await_swap(client: redis.Redis, shard: str, timeout_s: float) -> SwapResult | None:
    """The shard's answer, or None after `timeout_s`: the request is then withdrawn, so a load that ends
    later is not taken up (the shard's answer and the withdrawal are each atomic, so one of them wins)."""
    deadline = time.monotonic() + timeout_s
    while True:
        # In slices, so the wait outlasts no socket timeout (the tools' is 2 s), however long the load.
        left = deadline - time.monotonic()
        popped = client.blpop([swap_done_key(shard)], timeout=max(min(left, SWAP_WAIT_SLICE_S), 0.01))
        if popped is not None:
            return SwapResult.decode(cast(Any, popped)[1])
        if left <= SWAP_WAIT_SLICE_S:
            # Withdraw and look once more in one step: an answer that came meanwhile was taken up.
            pipe = client.pipeline(transaction=True)
            pipe.delete(swap_key(shard))
            pipe.lpop(swap_done_key(shard))
            _, late = pipe.execute()
            return None if late is None else SwapResult.decode(late)
