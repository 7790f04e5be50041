"""/predict, the readiness routes and the arrival deadline against a fake dispatcher: the resources alone, no
Redis and no worker."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import falcon.testing
import numpy as np
import pytest
import redis

from daemon.api import create_app, decodes_in_shard
from daemon.errors import DeadlineExceeded, InferdError, QueueFull
from daemon.http.readiness import HIDDEN_DETAIL
from daemon.ops.front_door import ARRIVED_HEADER
from daemon.queue.registry import DrainState
from daemon.queue.wire import Job, Prediction, Reply
from daemon.settings import ApiSettings, ModelSettings, Secrets, Settings
from daemon.shard import SHARDS_ENV, Shard, encode_shards
from testkit.images import encode_image
from tests.conftest import TINY_INPUT


class FakeDispatcher:
    """Answers every job with `reply`, or raises `error`; records the jobs it was given."""

    def __init__(self, reply: Reply | None = None, error: InferdError | None = None) -> None:
        self.reply = reply or Reply(shard="gpu3", predictions=(Prediction("cat", 0.9),), batch_size=7)
        self.error = error
        self.jobs: list[Job] = []
        self.status = {"gpu3": "live", "gpu4": "stuck"}
        self.failed: dict[str, str] = {}
        self.drain = DrainState()

    def dispatch(self, job: Job) -> Reply:
        self.jobs.append(job)
        if self.error is not None:
            raise self.error
        return self.reply

    def dispatch_many(self, jobs: Sequence[Job]) -> list[Reply]:
        return [self.dispatch(job) for job in jobs]

    def shard_status(self) -> dict[str, str]:
        return self.status

    def failures(self) -> dict[str, str]:
        return self.failed

    def drain_state(self) -> DrainState:
        return self.drain


@pytest.fixture()
def app():
    def build(dispatcher: FakeDispatcher, decode_in: str = "auto") -> falcon.testing.TestClient:
        settings = Settings(
            api=ApiSettings(request_timeout_s=7.0, default_top=2, decode_in=decode_in),
            model=ModelSettings(input_size=TINY_INPUT, preprocessing="tf"),
        )
        # The client is never used: /metrics is not asked for, and the dispatcher is the fake.
        nowhere = redis.Redis(unix_socket_path="/nonexistent/redis.sock")
        return falcon.testing.TestClient(create_app(settings, nowhere, dispatcher))

    return build


def photo() -> bytes:
    return encode_image(np.full((50, 80, 3), 120, dtype=np.uint8))


def test_predict_hands_one_decoded_job_to_the_dispatcher_and_shows_its_answer(app):
    dispatcher = FakeDispatcher()
    started = time.monotonic()
    result = app(dispatcher).simulate_post("/predict", body=photo(), content_type="image/png")
    assert result.status_code == 200
    assert result.json == {"success": True, "predictions": [{"label": "cat", "probability": 0.9}]}
    assert result.headers["X-Inferd-Shard"] == "gpu3" and result.headers["X-Inferd-Batch-Size"] == "7"
    (job,) = dispatcher.jobs
    assert job.pixels.shape == (TINY_INPUT, TINY_INPUT, 3) and job.top_k == 2 and not job.encoded
    assert started + 7.0 <= job.deadline <= time.monotonic() + 7.0  # the deadline is the request's


def test_with_decode_in_shard_the_checked_file_is_handed_over_as_it_came(app):
    dispatcher = FakeDispatcher()
    upload = photo()
    result = app(dispatcher, decode_in="shard").simulate_post(
        "/predict", body=upload, content_type="image/png"
    )
    assert result.status_code == 200
    (job,) = dispatcher.jobs
    assert job.encoded_size == (80, 50) and job.pixels.tobytes() == upload and job.top_k == 2


@pytest.mark.parametrize(("kinds", "expected"), [(None, False), (["cpu"], False), (["cpu", "gpu"], True)])
def test_auto_decodes_in_the_shard_only_on_a_box_with_gpu_shards(kinds: list[str] | None, expected: bool):
    shards = [Shard(f"{kind}{index}", kind, index, kind.upper()) for index, kind in enumerate(kinds or [])]
    env = {} if kinds is None else {SHARDS_ENV: encode_shards(shards)}
    assert decodes_in_shard(Settings(), env) is expected
    forced = Settings(api=ApiSettings(decode_in="api" if expected else "shard"))
    assert decodes_in_shard(forced, env) is not expected


def test_the_deadline_counts_from_the_front_doors_arrival_stamp(app):
    dispatcher = FakeDispatcher()
    arrived = time.time() - 2.0  # the request waited 2 s for a free API thread
    result = app(dispatcher).simulate_post(
        "/predict", body=photo(), content_type="image/png", headers={ARRIVED_HEADER: f"{arrived:.3f}"}
    )
    assert result.status_code == 200
    (job,) = dispatcher.jobs
    assert job.deadline <= time.monotonic() + 5.0 + 0.01  # 7 s budget, 2 s of it spent before the API


def test_a_request_that_waited_out_its_deadline_is_refused_before_any_work(app):
    dispatcher = FakeDispatcher()
    result = app(dispatcher).simulate_post(
        "/predict",
        body=photo(),
        content_type="image/png",
        headers={ARRIVED_HEADER: f"{time.time() - 8.0:.3f}"},
    )
    assert result.status_code == 503 and result.headers["Retry-After"] == "1"
    assert result.json["success"] is False and "deadline" in result.json["error"]
    assert dispatcher.jobs == []


@pytest.mark.parametrize(
    ("error", "status"),
    [(DeadlineExceeded("no answer"), 504), (QueueFull("all full"), 503)],
)
def test_dispatch_errors_become_their_status_as_json(app, error, status):
    result = app(FakeDispatcher(error=error)).simulate_post(
        "/predict", body=photo(), content_type="image/png"
    )
    assert result.status_code == status
    assert result.json == {"success": False, "error": error.message}
    assert ("Retry-After" in result.headers) == (status == 503)


def test_readyz_lists_live_and_registered_shards(app):
    dispatcher = FakeDispatcher()
    client = app(dispatcher)
    assert client.simulate_get("/readyz").json == {
        "ready": True,
        "live_shards": ["gpu3"],
        "registered_shards": ["gpu3", "gpu4"],
        "shards": {"gpu3": "live", "gpu4": "stuck"},
        "failed_shards": {},
    }
    dispatcher.status = {"gpu3": "down"}
    result = client.simulate_get("/readyz")
    assert result.status_code == 503 and result.json["ready"] is False


@pytest.mark.parametrize(
    ("drain", "reason_starts"),
    [
        (DrainState(unready="shutdown"), "draining (shutdown)"),
        (DrainState(box="operator"), "drained (operator)"),
        (DrainState(shards=frozenset({"gpu3"})), "every live shard is drained"),
    ],
)
def test_readyz_is_503_while_draining_though_shards_live(app, drain, reason_starts):
    dispatcher = FakeDispatcher()
    dispatcher.drain = drain
    result = app(dispatcher).simulate_get("/readyz")
    assert result.status_code == 503
    assert result.json["ready"] is False and result.json["live_shards"] == ["gpu3"]
    assert result.json["reason"].startswith(reason_starts)


def test_readyz_stays_200_while_another_live_shard_admits(app):
    dispatcher = FakeDispatcher()
    dispatcher.status = {"gpu3": "live", "gpu4": "live"}
    dispatcher.drain = DrainState(shards=frozenset({"gpu4"}))
    result = app(dispatcher).simulate_get("/readyz")
    assert result.status_code == 200 and result.json["draining_shards"] == ["gpu4"]


def test_probes_answer_head_as_load_balancers_send_it(app):
    dispatcher = FakeDispatcher()
    client = app(dispatcher)
    for path in ("/healthz", "/readyz"):
        result = client.simulate_head(path)
        assert result.status_code == 200 and result.content == b""
    dispatcher.status = {}
    assert client.simulate_head("/readyz").status_code == 503


def test_readyz_names_failed_shards_and_their_reasons(app):
    dispatcher = FakeDispatcher()
    dispatcher.failed = {"gpu4": "tensorflow 2.21.0 sees no GPU"}
    client = app(dispatcher)
    result = client.simulate_get("/readyz")
    assert result.status_code == 200 and result.json["failed_shards"] == dispatcher.failed
    dispatcher.status = {"gpu4": "failed"}
    result = client.simulate_get("/readyz")
    assert result.status_code == 503
    assert result.json["reason"] == "no worker is serving: gpu4: tensorflow 2.21.0 sees no GPU"


def test_with_a_token_readyz_tells_failure_reasons_only_to_its_holders():
    settings = Settings(
        api=ApiSettings(request_timeout_s=7.0), model=ModelSettings(input_size=TINY_INPUT, preprocessing="tf")
    )
    settings = dataclasses.replace(settings, secrets=Secrets(auth_token="t0ken"))
    dispatcher = FakeDispatcher()
    dispatcher.status = {"gpu4": "failed"}
    dispatcher.failed = {"gpu4": "cannot load model /srv/models/secret.keras: ValueError: bad"}
    nowhere = redis.Redis(unix_socket_path="/nonexistent/redis.sock")
    client = falcon.testing.TestClient(create_app(settings, nowhere, dispatcher))
    stranger = client.simulate_get("/readyz")
    assert (
        stranger.status_code == 503
        and "/srv/models" not in stranger.text
        and "ValueError" not in stranger.text
    )
    assert stranger.json["failed_shards"] == {"gpu4": HIDDEN_DETAIL}
    holder = client.simulate_get("/readyz", headers={"Authorization": "Bearer t0ken"})
    assert holder.status_code == 503 and holder.json["failed_shards"] == dispatcher.failed
    assert "secret.keras" in holder.json["reason"]


READY_ROUTES = ("/readyz", "/v2/health/ready", f"/v2/models/{ModelSettings().served_name}/ready")
"""The three routes a balancer or a KServe client may probe: one rule (daemon.http.readiness) answers all."""


@pytest.mark.parametrize(
    "drain",
    [
        DrainState(unready="operator"),
        DrainState(box="operator"),
        DrainState(shards=frozenset({"gpu3"})),
        DrainState(),
    ],
)
def test_every_readiness_route_gives_the_same_answer(app, drain):
    dispatcher = FakeDispatcher()
    dispatcher.drain = drain
    client = app(dispatcher)
    expected = 200 if not drain.any else 503
    answers = {path: client.simulate_get(path) for path in READY_ROUTES}
    assert {path: result.status_code for path, result in answers.items()} == dict.fromkeys(
        READY_ROUTES, expected
    )
    assert all(result.json["ready"] is (expected == 200) for result in answers.values())


def test_every_readiness_route_is_503_without_redis(app):
    dispatcher = FakeDispatcher()

    def unreachable() -> dict[str, str]:
        raise redis.ConnectionError("no socket")

    dispatcher.shard_status = unreachable  # type: ignore[method-assign]
    client = app(dispatcher)
    assert [client.simulate_get(path).status_code for path in READY_ROUTES] == [503, 503, 503]


def test_v2_infer_that_waited_out_its_deadline_gets_the_answer_predict_gives(app):
    """One arrival deadline (daemon.http.deadline): the V2 route counted from its handler's start before."""
    dispatcher = FakeDispatcher()
    client = app(dispatcher)
    late = {ARRIVED_HEADER: f"{time.time() - 8.0:.3f}"}  # 8 s at the front door, of a 7 s budget
    predict = client.simulate_post("/predict", body=photo(), content_type="image/png", headers=late)
    size = TINY_INPUT
    pixels = {
        "name": "pixels",
        "datatype": "UINT8",
        "shape": [1, size, size, 3],
        "data": [0] * size * size * 3,
    }
    v2 = client.simulate_post(
        f"/v2/models/{ModelSettings().served_name}/infer", json={"inputs": [pixels]}, headers=late
    )
    assert (v2.status_code, v2.headers["Retry-After"]) == (
        predict.status_code,
        predict.headers["Retry-After"],
    )
    assert (v2.status_code, v2.json["error"]) == (503, predict.json["error"])
    assert dispatcher.jobs == []
