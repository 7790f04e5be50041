"""Every Redis key the appliance uses: the one table of who writes and reads each, and their names.

Key layout. Every key starts with `inferd:`, so the tools touch ours and nothing else.

| key | type | written by | read by | bounded by |
| --- | --- | --- | --- | --- |
| `inferd:shards` | hash: shard id -> `wire.ShardInfo` | each worker, on every beat, or once as "failed" when it refuses to start | API, tools | a field per shard |
| `inferd:heartbeat:<shard>` | string: `wire.Heartbeat` | the worker, every `queue.heartbeat_interval_s` | enqueue script (liveness, and `batch_s` for the wait estimate), /readyz, tools | expires after `queue.heartbeat_ttl_s` |
| `inferd:queue:<shard>` | list of `wire.Job`, newest at the left | the API (`ApiQueues.submit`) | its shard, from the right | `queue.max_depth` |
| `inferd:processing:<shard>` | list: the jobs of the batch in hand | the shard, in the step that takes them off its queue | the shard (`commit` releases them); a live shard adopts a dead one's | `batching.max_batch_size` |
| `inferd:on-time:<shard>` | string marker | the shard, in each claim that leaves it holding jobs | the claim and enqueue scripts: a shard holding jobs without it is overdue (its jobs waiting may be stolen, it gets new ones last) | expires when the batch in hand becomes overdue (`daemon.worker.pace`) |
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
- A shard takes jobs from its own queue, or (idle, `queue.steal`) from the longest queue of an overdue shard,
  in the one claim script that moves them into its processing list: a stolen job is claimed once.
- A shard pushes its batch's answers and releases the claims in one script: all or none. A batch that a live
  shard adopted while its owner was frozen is not answered again by the owner when it wakes (the `adopted`
  marker), so each job is answered once.

A job's pixels are not necessarily in Redis: with `queue.pixels = "shared_memory"` the job names a file
(`daemon.queue.pixel_store`) and only its 76 bytes cross here.

The scripts that move jobs between these keys are in `daemon.queue.scripts`, the faces that call them in
`daemon.queue.faces`, and the readers of the registry in `daemon.queue.registry`.
"""

from __future__ import annotations

KEY_PREFIX = "inferd:"
SHARDS_KEY = f"{KEY_PREFIX}shards"
ROTATION_KEY = f"{KEY_PREFIX}rotation"
UNREADY_KEY = f"{KEY_PREFIX}unready"
DRAINING_KEY = f"{KEY_PREFIX}draining"
STATS_WINDOW = 120
"""Batch records kept per shard for tools/gpu_status's rates."""
ADOPTED_MARK_TTL_S = 3600
"""How long an adoption marker waits for its frozen owner to wake; past it any caller has long gone."""
SWAP_RESULT_TTL_S = 600
"""How long a shard's answer to a swap request waits for `inferd reload` to read it."""


def queue_key(shard: str) -> str:
    return f"{KEY_PREFIX}queue:{shard}"


def processing_key(shard: str) -> str:
    return f"{KEY_PREFIX}processing:{shard}"


def on_time_key(shard: str) -> str:
    return f"{KEY_PREFIX}on-time:{shard}"


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
