"""The two faces of the Redis protocol between the API and the shards, and `inferd reload`'s.

The API's face is `ApiQueues` (submit a job, await its reply, or both in one round trip; liveness); a
shard's face is `ShardQueues` (claim jobs, commit a batch's answers, requeue or adopt orphans, fail what waits,
beat); `request_swap` and `await_swap` are `inferd reload`'s. The keys they touch and the invariants they
keep are in `daemon.queue.keys`; the scripts that make each move atomic in `daemon.queue.scripts`.

Why past 400 lines: both faces of one protocol, each move beside its counterpart (submit and claim, answer
and await); apart, a change to one side would no longer sit next to the other.
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
from daemon.queue.keys import (
    ADOPTED_MARK_TTL_S,
    DRAINING_KEY,
    ROTATION_KEY,
    SHARDS_KEY,
    STATS_WINDOW,
    SWAP_RESULT_TTL_S,
    adopted_key,
    draining_key,
    heartbeat_key,
    on_time_key,
    processing_key,
    queue_key,
    reply_key,
    stats_key,
    swap_done_key,
    swap_key,
)
from daemon.queue.registry import (
    DrainState,
    no_worker_reason,
    parse_or_none,
    read_drain_state,
    read_shards,
    registered_shard_ids,
)
from daemon.queue.scripts import (
    ALL_QUEUES_FULL,
    BATCH_ADOPTED,
    DRAINING,
    ENQUEUE_SCRIPT,
    NO_LIVE_SHARD,
    WOULD_MISS_DEADLINE,
    Scripts,
    load_enqueue_script,
)
from daemon.queue.wire import (
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
from daemon.settings import BatchingSettings, QueueSettings, Settings

log = logging.getLogger(__name__)

SHARD_LIST_TTL_S = 1.0
"""How long an API process trusts its copy of the registered shard list before reading it again."""
SWAP_WAIT_SLICE_S = 1.0
"""Longest single blocking wait of `inferd reload` for a shard's answer."""


@dataclass(frozen=True, slots=True)
class OverdueRule:
    """When a batch of n jobs becomes overdue: after max(floor_ms, per_job_ms * n) milliseconds. The claim
    script applies it to the jobs a shard holds, as a mark that expires when the batch is overdue."""

    floor_ms: int = 100
    per_job_ms: float = 0.0


def _ttl(seconds: float) -> int:
    return max(1, int(seconds))


def _unavailable(what: str, exc: redis.RedisError) -> RedisUnavailable:
    # The client learns what to do; the cause (socket paths included) stays in the server's log.
    log.debug("queues: %s failed: %s", what, exc)
    return RedisUnavailable("the queue service is unavailable; retry shortly")


def _push_replies(scripts: Scripts, replies: Mapping[str, Reply], ttl_s: float) -> None:
    if replies:
        args: list[str | bytes | int] = [_ttl(ttl_s), *(reply.encode() for reply in replies.values())]
        scripts.push_replies(keys=[reply_key(job_id) for job_id in replies], args=args)


# -- the API's face -----------------------------------------------------------------------------------------
class ApiQueues:
    """What the API needs: put a job on a live shard's queue, await its reply, and see which shards live."""

    def __init__(self, client: redis.Redis, settings: QueueSettings, batching: BatchingSettings) -> None:
        self._client = client
        self._max_depth = settings.max_depth
        self._policy = settings.dispatch
        self._steal = settings.steal
        self._max_batch_size = batching.max_batch_size
        self._answer_ttl_s = settings.answer_ttl_s
        self._scripts = Scripts(client)
        # A pipelined EVALSHA that misses cannot load the script before the reply wait behind it blocks, so
        # the script is loaded now and by every connection the pool opens later (after a Redis restart).
        client.connection_pool.connection_kwargs["redis_connect_func"] = load_enqueue_script
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
            # Every new connection loads the script (`load_enqueue_script`), so only a SCRIPT FLUSH under a
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
            keys += [
                key(shard) for key in (queue_key, heartbeat_key, draining_key, processing_key, on_time_key)
            ]
        args: list[bytes | str | int] = [
            job.encode(),
            self._max_depth,
            self._policy,
            budget_ms,
            self._max_batch_size,
            marker_ttl_s,
            1 if self._steal else 0,
        ]
        return shards, keys, args, budget_ms

    def _admitted(self, slot: int, wait_ms: int, shards: list[str], budget_ms: int) -> str:
        """The shard the enqueue script chose, or the 503 that says why it chose none."""
        if slot == NO_LIVE_SHARD:  # rare, and a failure already: one more read to say what /readyz says
            with contextlib.suppress(redis.RedisError):
                raise NoLiveWorker(no_worker_reason(self.failures()))
            raise NoLiveWorker(no_worker_reason({}))
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
    """What one shard's worker needs: claim jobs, commit answers, recover orphans, beat, leave. When a batch
    is complete is daemon.worker.batching's rule, built on `claim_first` and `claim_waiting`."""

    def __init__(self, client: redis.Redis, shard: str, settings: Settings) -> None:
        self.shard = shard
        self._client = client
        self._scripts = Scripts(client)
        self._queue, self._processing = queue_key(shard), processing_key(shard)
        self._own_claim_keys = [self._queue, self._processing, on_time_key(shard), draining_key(shard)]
        self.steal = settings.queue.steal
        self._answer_ttl_s = settings.queue.answer_ttl_s
        self._heartbeat_ttl_ms = int(settings.queue.heartbeat_ttl_s * 1000)
        self._peers: list[str] = []
        self._peers_read_at = float("-inf")
        self.stolen_from: str | None = None
        """The shard whose queue the last `claim_waiting` took from, or None when it took only from ours."""
        self.stolen = 0
        """How many of the jobs the last `claim_waiting` returned came from `stolen_from`."""

    def claim_first(self, timeout_s: float) -> bytes | None:
        """Block up to `timeout_s` for the next job and claim it (moved into the processing list, where it stays
        until `commit`); None when none came. How a batch grows from here is daemon.worker.batching's rule."""
        # Sent raw: Redis takes a fractional timeout here, which redis-py's typed blmove() does not admit.
        command: Any = self._client.execute_command
        job: bytes | None = command("BLMOVE", self._queue, self._processing, "RIGHT", "LEFT", timeout_s)
        return job

    def claim_waiting(
        self, count: int, overdue: OverdueRule | None = None, steal: bool = False
    ) -> list[bytes]:
        """Claim up to `count` jobs already waiting, oldest first, in one round trip (no wait). With `steal`
        (and `queue.steal`), a shard that holds nothing fills what room its own queue leaves from the longest
        queue of an overdue shard (`stolen_from` says which, `stolen` how many). Whatever we then hold is on
        time for as long as `overdue` gives a batch of that many."""
        overdue = overdue or OverdueRule()
        steal = steal and self.steal
        keys = list(self._own_claim_keys)
        for peer in self.peer_shards() if steal else []:
            keys += [queue_key(peer), processing_key(peer), on_time_key(peer)]
        args = [count, overdue.floor_ms, overdue.per_job_ms, 1 if steal else 0]
        victim, stolen, *jobs = self._scripts.claim(keys=keys, args=args)
        self.stolen_from = as_text(victim).removeprefix(queue_key("")) if victim else None
        self.stolen = int(stolen)
        return cast(list[bytes], jobs)

    def peer_shards(self) -> list[str]:
        """The other registered shards, read again every SHARD_LIST_TTL_S."""
        if time.monotonic() - self._peers_read_at >= SHARD_LIST_TTL_S:
            self._peers = [shard for shard in registered_shard_ids(self._client) if shard != self.shard]
            self._peers_read_at = time.monotonic()
        return self._peers

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
        choice = parse_or_none(ModelChoice.decode, payload)
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
