"""The real worker process (`python -m daemon.gpu_worker`) on the session's redis-server, no supervisord:
how it takes signals mid-batch, and that it is pinned to its shard before the ML runtime loads."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from daemon.queue.keys import heartbeat_key, processing_key, queue_key, reply_key
from daemon.queue.wire import Job, Reply, new_job_id
from daemon.shard import cpu_shards, cpu_threads_per_worker, encode_shards
from testkit.harness import PYTHON, Service
from tests.conftest import TINY_INPUT, standin_model

pytestmark = pytest.mark.slow

BATCH_MS = 4000.0
"""The stand-in's time per batch: a signal sent once the batch is claimed lands inside the model call."""


def start_worker(make_settings, redis_socket: Path, tmp_path: Path, model: Path, **env: str) -> Service:
    settings = make_settings(
        redis={"managed": False, "socket": str(redis_socket)},
        model={"path": model},
        batching={"max_wait_ms": 0},
    )
    argv = [PYTHON, "-m", "daemon.gpu_worker", "--config", str(settings.source), "--shard-index", "0"]
    return Service("worker", argv, tmp_path / "worker.log", env).start()


def push_job(client) -> str:
    now = time.monotonic()  # the system-wide monotonic clock, the one the worker reads deadlines on
    job = Job(new_job_id(), now + 60, now, 3, np.zeros((TINY_INPUT, TINY_INPUT, 3), dtype=np.uint8))
    client.lpush(queue_key("cpu0"), job.encode())
    return job.job_id


def start_a_batch(worker: Service, client) -> str:
    """Wait for the worker to serve, give it one job, and return once that job is claimed (in the model)."""
    worker.wait_until("cpu0 to beat", lambda: bool(client.exists(heartbeat_key("cpu0"))), 60)
    job_id = push_job(client)
    worker.wait_until("the job to be claimed", lambda: client.llen(processing_key("cpu0")) == 1, 20)
    return job_id


def test_first_sigterm_finishes_the_batch_in_hand_and_exits_0(
    make_settings, redis_socket, redis_client, tmp_path
):
    worker = start_worker(make_settings, redis_socket, tmp_path, standin_model(tmp_path, BATCH_MS))
    try:
        job_id = start_a_batch(worker, redis_client)
        os.kill(worker.pid, signal.SIGTERM)
        assert worker.wait_exit(BATCH_MS / 1000 + 30) == 0, worker.output()
    finally:
        worker.stop()
    reply = Reply.decode(redis_client.lpop(reply_key(job_id)))
    assert reply.error_kind is None and len(reply.predictions) == 3  # the batch was answered, not dropped
    assert redis_client.llen(processing_key("cpu0")) == 0
    assert not redis_client.exists(heartbeat_key("cpu0"))  # it left dispatch on the way out
    assert "cpu0: stopped after 1 images" in worker.log_text()


def test_second_sigterm_leaves_at_once_and_its_claim_stays_for_the_next_worker(
    make_settings, redis_socket, redis_client, tmp_path
):
    worker = start_worker(make_settings, redis_socket, tmp_path, standin_model(tmp_path, BATCH_MS))
    try:
        job_id = start_a_batch(worker, redis_client)
        signalled = time.monotonic()
        os.kill(worker.pid, signal.SIGTERM)
        time.sleep(0.2)  # two separate signals, not one coalesced pending signal
        os.kill(worker.pid, signal.SIGTERM)
        code = worker.wait_exit(30)
        elapsed = time.monotonic() - signalled
    finally:
        worker.stop()
    assert code == 1, worker.output()
    assert elapsed < BATCH_MS / 1000, f"took {elapsed:.1f}s: it finished the batch instead of leaving"
    # Nothing was answered, and the claim waits where a restarted worker requeues it from.
    assert not redis_client.exists(reply_key(job_id))
    [claim] = redis_client.lrange(processing_key("cpu0"), 0, -1)
    assert Job.peek_id(claim) == job_id


SNAPSHOT_HOOK = '''
"""Test hook: on the first import of an ML runtime, write which one and the pinning variables then set."""
import json, os, sys

_OUT = os.environ.get("INFERD_TEST_IMPORT_SNAPSHOT")
_KEYS = {keys!r}
_RUNTIMES = {{"keras", "tensorflow", "jax", "torch"}}


class _FirstRuntimeImport:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _RUNTIMES and _OUT and not os.path.exists(_OUT):
            with open(_OUT, "w") as out:
                json.dump({{"module": name, "env": {{key: os.environ.get(key) for key in _KEYS}}}}, out)
        return None


sys.meta_path.insert(0, _FirstRuntimeImport())
'''
PINNED = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def test_a_cpu_worker_is_pinned_before_its_ml_runtime_is_imported(
    make_settings, redis_socket, redis_client, tiny_model, tmp_path
):
    hook_dir = tmp_path / "hook"
    hook_dir.mkdir()
    (hook_dir / "sitecustomize.py").write_text(SNAPSHOT_HOOK.format(keys=[*PINNED, "KERAS_BACKEND"]))
    snapshot = tmp_path / "snapshot.json"
    shards = 2  # the worker of shard 0 of two: half the cores
    env = {
        "PYTHONPATH": str(hook_dir),
        "INFERD_TEST_IMPORT_SNAPSHOT": str(snapshot),
        "INFERD_SHARDS": encode_shards(cpu_shards(shards)),
        # What a careless environment might hand down: the pinning must override every one of these.
        "CUDA_VISIBLE_DEVICES": "0",
        "TF_NUM_INTRAOP_THREADS": "64",
        "OMP_NUM_THREADS": "64",
    }
    worker = start_worker(make_settings, redis_socket, tmp_path, tiny_model[0], **env)
    try:
        # Serving means the real Keras model is loaded and warmed up: the runtime was imported by then.
        worker.wait_until("cpu0 to beat", lambda: bool(redis_client.exists(heartbeat_key("cpu0"))), 120)
    finally:
        worker.stop()
    first = json.loads(snapshot.read_text())
    threads = str(cpu_threads_per_worker(shards))
    assert first["module"].partition(".")[0] in ("keras", "tensorflow")
    assert first["env"] == {
        "CUDA_VISIBLE_DEVICES": "",  # a CPU shard sees no GPU
        "OMP_NUM_THREADS": threads,
        "TF_NUM_INTRAOP_THREADS": threads,
        "TF_NUM_INTEROP_THREADS": "1",
        "KERAS_BACKEND": "tensorflow",
    }
