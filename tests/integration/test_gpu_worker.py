"""The worker's batch step against a real Redis and a real tiny Keras model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from daemon.gpu_worker import Worker
from daemon.model.classifier import Classifier
from daemon.queue.faces import ShardQueues
from daemon.queue.keys import processing_key, queue_key, reply_key
from daemon.queue.wire import Job, Reply, new_job_id
from daemon.shard import cpu_shards
from tests.conftest import TINY_INPUT


@pytest.fixture()
def worker(redis_settings, redis_client):
    queues = ShardQueues(redis_client, "cpu0", redis_settings)
    return Worker(
        redis_settings, cpu_shards(1)[0], queues, Classifier(redis_settings.model), handle_signals=False
    )


def enqueue(client, *, deadline_in_s: float = 10.0, top: int = 5, size: int = TINY_INPUT) -> str:
    job = Job(
        new_job_id(),
        time.monotonic() + deadline_in_s,
        time.monotonic(),
        top,
        np.full((size, size, 3), 90, dtype=np.uint8),
    )
    client.lpush(queue_key("cpu0"), job.encode())
    return job.job_id


def reply_of(client, job_id: str) -> Reply:
    payload = client.lindex(reply_key(job_id), 0)
    assert payload is not None, f"job {job_id} was not answered"
    return Reply.decode(payload)


def run_one_batch(worker: Worker) -> None:
    worker.execute_batch(worker.batcher.claim_batch(idle_timeout_s=1.0))


def test_a_batch_answers_each_caller_once_with_its_own_top_k(worker, redis_client):
    ids = [enqueue(redis_client, top=top) for top in (1, 3, 5)]
    run_one_batch(worker)
    replies = [reply_of(redis_client, job_id) for job_id in ids]
    assert [len(r.predictions) for r in replies] == [1, 3, 5]
    assert all(r.batch_size == 3 and r.shard == "cpu0" for r in replies)
    assert all(redis_client.llen(reply_key(job_id)) == 1 for job_id in ids)
    assert 0 < redis_client.ttl(reply_key(ids[0])) <= worker.settings.queue.answer_ttl_s
    assert redis_client.llen(processing_key("cpu0")) == 0  # claims released with the answers


def test_jobs_whose_caller_gave_up_are_not_computed(worker, redis_client):
    expired = enqueue(redis_client, deadline_in_s=-1.0)
    live = enqueue(redis_client)
    run_one_batch(worker)
    assert not redis_client.exists(reply_key(expired))
    assert reply_of(redis_client, live).batch_size == 1
    assert redis_client.llen(processing_key("cpu0")) == 0


def test_malformed_and_mis_sized_jobs_get_an_error_not_a_crash(worker, redis_client):
    wrong_size = enqueue(redis_client, size=TINY_INPUT + 1)
    good = enqueue(redis_client)
    truncated = Job(
        new_job_id(), time.monotonic() + 10, time.monotonic(), 5, np.zeros((4, 4, 3), dtype=np.uint8)
    ).encode()[:-7]
    redis_client.lpush(queue_key("cpu0"), truncated, b"not a job at all")
    run_one_batch(worker)
    assert reply_of(redis_client, wrong_size).error_kind == "InferenceFailed"
    assert reply_of(redis_client, Job.peek_id(truncated)).error_kind == "InferenceFailed"
    assert reply_of(redis_client, good).predictions
    assert redis_client.llen(processing_key("cpu0")) == 0


def test_a_failing_model_fails_the_whole_batch_at_once(worker, redis_client):
    class Broken:
        labels = worker.predictor.labels

        def predict(self, batch):
            raise RuntimeError("device lost")

    worker.predictor = Broken()
    ids = [enqueue(redis_client) for _ in range(4)]
    run_one_batch(worker)
    errors = [reply_of(redis_client, job_id) for job_id in ids]
    assert {(r.error_kind, r.error_message) for r in errors} == {
        ("InferenceFailed", "inference failed: RuntimeError: device lost")
    }


def test_teardown_fails_queued_jobs_cleanly_and_stops_taking_work(worker, redis_client):
    worker.beat()
    ids = [enqueue(redis_client) for _ in range(3)]
    worker.teardown()
    assert not redis_client.exists("inferd:heartbeat:cpu0")
    assert redis_client.llen(queue_key("cpu0")) == 0
    assert {reply_of(redis_client, job_id).error_kind for job_id in ids} == {"JobDropped"}
