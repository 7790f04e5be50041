"""A worker's half of `inferd reload`, against a real Redis and real tiny Keras models, the loop in a thread."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import falcon.testing
import numpy as np
import numpy.typing as npt
import pytest
import redis
from PIL import Image

from daemon.api import create_app
from daemon.errors import ConfigError, ModelLoadError
from daemon.gpu_worker import Worker
from daemon.model.active_model import ModelRecord, choice_of, write_record
from daemon.model.classifier import Classifier
from daemon.queue.faces import ShardQueues, await_swap, request_swap
from daemon.queue.keys import queue_key, reply_key, swap_key
from daemon.queue.registry import DrainState
from daemon.queue.wire import Job, ModelChoice, Prediction, Reply, new_job_id
from daemon.settings import Settings, check_model_files
from daemon.shard import cpu_shards
from tests.conftest import TINY_INPUT
from tests.tiny_model import build_tiny_model

SWAP_WAIT_S = 60.0


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 40), (90, 120, 30)).save(out, format="PNG")
    return out.getvalue()


PNG = png()


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


def ask_swap(settings: Settings, client: redis.Redis, choice: ModelChoice) -> None:
    """What `inferd reload` does: record the choice in the run dir, then ask the shard."""
    write_record(settings, ModelRecord(active=choice, settings_model=choice_of(settings.model)))
    request_swap(client, "cpu0", choice)


def test_a_serving_worker_takes_up_a_checked_model_between_batches(
    serving, redis_settings, redis_client, second_model
):
    assert answer(redis_client).model_version == 1
    ask_swap(redis_settings, redis_client, second_model)
    result = await_swap(redis_client, "cpu0", SWAP_WAIT_S)
    assert result is not None and result.ok and result.version == 2, result
    reply = answer(redis_client)
    assert reply.model_version == 2
    assert all(p.label.startswith("second_") for p in reply.predictions)
    assert serving.info.model_version == 2 and not redis_client.exists(swap_key("cpu0"))


def test_a_model_that_does_not_load_is_refused_and_the_old_one_serves_on(
    serving, redis_settings, redis_client, second_model, tmp_path: Path
):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(second_model.path.read_bytes()[:1000])
    ask_swap(redis_settings, redis_client, ModelChoice(broken, second_model.labels, 2))
    result = await_swap(redis_client, "cpu0", SWAP_WAIT_S)
    assert result is not None and not result.ok and "cannot load model" in result.detail, result
    reply = answer(redis_client)
    assert reply.model_version == 1 and reply.predictions[0].label.startswith("class_")


def test_a_swap_request_the_record_does_not_name_is_refused_unloaded(
    serving, redis_settings, redis_client, second_model
):
    # Written straight into Redis, as anyone who can reach it could: the run dir's record names no such model.
    request_swap(redis_client, "cpu0", second_model)
    result = await_swap(redis_client, "cpu0", SWAP_WAIT_S)
    assert result is not None and not result.ok and "only `inferd reload` asks" in result.detail, result
    assert answer(redis_client).model_version == 1 and serving.swapper.poll(1) is None


def test_an_h5_model_is_refused_unless_the_operator_opts_in(make_settings, tmp_path: Path):
    import keras

    model = keras.Sequential(
        [keras.Input((TINY_INPUT, TINY_INPUT, 3)), keras.layers.Flatten(), keras.layers.Dense(10)]
    )
    legacy = tmp_path / "model.h5"
    model.save(legacy)
    settings = make_settings(model={"path": str(legacy)})
    with pytest.raises(ModelLoadError, match=r"legacy HDF5 .* model\.allow_legacy_h5"):
        Classifier(settings.model)
    with pytest.raises(ConfigError, match=r"model\.path = .* is not allowed"):
        check_model_files(settings)
    opted_in = make_settings(model={"path": str(legacy), "allow_legacy_h5": True})
    assert Classifier(opted_in.model).labels[0] == "class_0"


def test_a_model_loaded_after_the_tool_gave_up_is_not_taken_up(
    worker, redis_settings, redis_client, second_model
):
    ask_swap(redis_settings, redis_client, second_model)
    deadline = time.monotonic() + SWAP_WAIT_S
    loaded = None
    while loaded is None and time.monotonic() < deadline:
        loaded = worker.swapper.poll(worker.settings.model.version)
        time.sleep(0.05)
    assert loaded is not None, "the model was not loaded"
    assert await_swap(redis_client, "cpu0", 0.01) is None  # the tool gives up and withdraws its request
    worker.take_up(loaded)
    assert worker.settings.model.version == 1 and worker.predictor.labels[0] == "class_0"


class TwoModels:
    """A dispatcher in the middle of a swap: its first answer mixes versions 1 (10 classes) and 2 (5 classes),
    later ones come from version 2 alone."""

    def __init__(self) -> None:
        self.calls = 0

    def dispatch(self, job: Job) -> Reply:
        return Reply(shard="cpu1", predictions=(Prediction("second_0", 0.9),), model_version=2)

    def dispatch_many(self, jobs: Sequence[Job]) -> list[Reply]:
        self.calls += 1
        versions = [1, 2] if self.calls == 1 else [2, 2]
        return [
            Reply(shard="cpu0", probabilities=vector_of(v), model_version=v) for v in versions[: len(jobs)]
        ]

    def shard_status(self) -> dict[str, str]:
        return {"cpu0": "live", "cpu1": "live"}

    def failures(self) -> dict[str, str]:
        return {}

    def drain_state(self) -> DrainState:
        return DrainState()


def vector_of(version: int) -> npt.NDArray[np.float32]:
    vector = np.full(10 if version == 1 else 5, 0.01, np.float32)
    vector[1] = 1.0 - 0.01 * (len(vector) - 1)
    return vector


def test_answers_carry_the_version_that_computed_them_and_v2_never_mixes_two(make_settings, second_model):
    settings = make_settings(model={"name": "tiny"})
    old = choice_of(settings.model)
    write_record(settings, ModelRecord(active=second_model, settings_model=old, previous=old))
    dispatcher = TwoModels()
    nowhere = redis.Redis(unix_socket_path="/nonexistent/redis.sock")
    client = falcon.testing.TestClient(create_app(settings, nowhere, dispatcher))

    answer = client.simulate_post("/predict", body=PNG, content_type="image/png")
    assert answer.status_code == 200, answer.text
    assert answer.json["model_version"] == 2 and answer.headers["X-Inferd-Model-Version"] == "2"

    pixels = np.zeros((2, TINY_INPUT, TINY_INPUT, 3), np.uint8)
    request = {
        "inputs": [
            {
                "name": "pixels",
                "datatype": "UINT8",
                "shape": list(pixels.shape),
                "data": pixels.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
    }
    infer = client.simulate_post("/v2/models/tiny/infer", json=request)
    assert infer.status_code == 200, infer.text
    assert dispatcher.calls == 2  # the first answer met both models: asked again
    assert infer.json["model_version"] == "2"
    assert infer.json["outputs"][0]["data"] == [f"{vector_of(2)[1]:f}:1:second_1"] * 2
    assert client.simulate_get("/v2/models/tiny").json["versions"] == ["2"]
