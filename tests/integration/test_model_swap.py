"""A worker's half of `inferd reload`, against a real Redis and real tiny Keras models, the loop in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.gpu_worker import Worker
from daemon.model import Classifier
from daemon.queues import ShardQueues, await_swap, queue_key, reply_key, request_swap, swap_key
from daemon.shard import cpu_shards
from daemon.wire import Job, ModelChoice, Reply, new_job_id
from tests.conftest import TINY_INPUT
from tests.tiny_model import build_tiny_model

SWAP_WAIT_S = 60.0


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> ModelChoice:
    model, labels = build_tiny_model(tmp_path_factory.mktemp("second"), input_size=TINY_INPUT, classes=5)
    labels.write_text("".join(f"second_{i}\n" for i in range(5)))
    return ModelChoice(model, labels, 2)


@pytest.fixture()
def worker(redis_settings, redis_client) -> Worker:
    queues = ShardQueues(redis_client, "cpu0", redis_settings)
    return Worker(
        redis_settings, cpu_shards(1)[0], queues, Classifier(redis_settings.model), handle_signals=False
    )


@pytest.fixture()
def serving(worker: Worker) -> Iterator[Worker]:
    thread = threading.Thread(target=worker.work, daemon=True)
    thread.start()
    yield worker
    worker.request_stop()
    thread.join(10)


def answer(client, timeout_s: float = 10.0) -> Reply:
    job = Job(
        new_job_id(), time.monotonic() + timeout_s, time.monotonic(), 3, np.full((32, 32, 3), 90, np.uint8)
    )
    client.lpush(queue_key("cpu0"), job.encode())
    popped = client.blpop([reply_key(job.job_id)], timeout=timeout_s)
    assert popped is not None, "no answer"
    return Reply.decode(popped[1])


def test_a_serving_worker_takes_up_a_checked_model_between_batches(serving, redis_client, second_model):
    assert answer(redis_client).model_version == 1
    request_swap(redis_client, "cpu0", second_model)
    result = await_swap(redis_client, "cpu0", SWAP_WAIT_S)
    assert result is not None and result.ok and result.version == 2, result
    reply = answer(redis_client)
    assert reply.model_version == 2
    assert all(p.label.startswith("second_") for p in reply.predictions)
    assert serving.info.model_version == 2 and not redis_client.exists(swap_key("cpu0"))


def test_a_model_that_does_not_load_is_refused_and_the_old_one_serves_on(
    serving, redis_client, second_model, tmp_path: Path
):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(second_model.path.read_bytes()[:1000])
    request_swap(redis_client, "cpu0", ModelChoice(broken, second_model.labels, 2))
    result = await_swap(redis_client, "cpu0", SWAP_WAIT_S)
    assert result is not None and not result.ok and "cannot load model" in result.detail, result
    reply = answer(redis_client)
    assert reply.model_version == 1 and reply.predictions[0].label.startswith("class_")


def test_a_model_loaded_after_the_tool_gave_up_is_not_taken_up(worker, redis_client, second_model):
    request_swap(redis_client, "cpu0", second_model)
    deadline = time.monotonic() + SWAP_WAIT_S
    loaded = None
    while loaded is None and time.monotonic() < deadline:
        loaded = worker.swapper.poll(worker.settings.model.version)
        time.sleep(0.05)
    assert loaded is not None, "the model was not loaded"
    assert await_swap(redis_client, "cpu0", 0.01) is None  # the tool gives up and withdraws its request
    worker.take_up(loaded)
    assert worker.settings.model.version == 1 and worker.predictor.labels[0] == "class_0"
