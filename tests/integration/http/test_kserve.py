"""The KServe V2 resources on `create_app` with a fake dispatcher: routing, the model's name and version,
the images reaching the dispatcher as one job each, and errors in the protocol's form."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

import falcon.testing
import numpy as np
import pytest
import redis

from daemon.api import create_app
from daemon.errors import ConfigError, QueueFull
from daemon.queue.registry import DrainState
from daemon.queue.wire import ALL_CLASSES, Job, Reply
from testkit.images import encode_image
from tests.conftest import TINY_INPUT
from tests.tiny_model import TINY_LABELS


class VectorDispatcher:
    """Answers each job with a vector whose winning class is the job's first pixel value (mod classes)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.batches: list[list[Job]] = []
        self.error = error

    def dispatch(self, job: Job) -> Reply:
        raise AssertionError("V2 infer must hand all its images over at once")

    def dispatch_many(self, jobs: Sequence[Job]) -> list[Reply]:
        self.batches.append(list(jobs))
        if self.error is not None:
            raise self.error
        replies = []
        for job in jobs:
            vector = np.full(len(TINY_LABELS), 0.01, np.float32)
            vector[int(job.pixels[0, 0, 0]) % len(TINY_LABELS)] = 0.91
            replies.append(Reply(shard="cpu0", probabilities=vector))
        return replies

    def shard_status(self) -> dict[str, str]:
        return {"cpu0": "live"}

    def failures(self) -> dict[str, str]:
        return {}

    def drain_state(self) -> DrainState:
        return DrainState()


@pytest.fixture()
def v2(make_settings, tmp_path):
    def build(dispatcher: VectorDispatcher, **api: object) -> falcon.testing.TestClient:
        settings = make_settings(model={"name": "shapes", "version": 3}, api=dict(api))
        nowhere = redis.Redis(unix_socket_path="/nonexistent/redis.sock")
        return falcon.testing.TestClient(create_app(settings, nowhere, dispatcher))

    return build


def pixels_request(values: list[int]) -> dict[str, Any]:
    count = len(values)
    data = np.zeros((count, TINY_INPUT, TINY_INPUT, 3), np.uint8)
    data[:, 0, 0, 0] = values
    shape = [count, TINY_INPUT, TINY_INPUT, 3]
    return {
        "inputs": [{"name": "pixels", "datatype": "UINT8", "shape": shape, "data": data.ravel().tolist()}]
    }


def test_the_model_is_served_under_its_name_and_version(v2):
    client = v2(VectorDispatcher())
    assert client.simulate_get("/v2/models/shapes").json["versions"] == ["3"]
    assert client.simulate_get("/v2/models/shapes/versions/3/ready").status_code == 200
    missing = client.simulate_get("/v2/models/shapes/versions/1")
    assert missing.status_code == 404 and missing.json == {
        "error": "model 'shapes' has no version '1'; it serves version 3"
    }
    assert client.simulate_get("/v2/models/other/ready").status_code == 404


def test_each_image_is_one_all_classes_job_handed_over_together_and_answered_in_order(v2):
    dispatcher = VectorDispatcher()
    request = pixels_request([4, 1, 7])
    request["outputs"] = [{"name": "probabilities", "parameters": {"classification": 1}}]
    result = v2(dispatcher).simulate_post("/v2/models/shapes/versions/3/infer", json=request)
    assert result.status_code == 200, result.text
    (batch,) = dispatcher.batches
    assert [job.top_k for job in batch] == [ALL_CLASSES] * 3
    assert len({job.deadline for job in batch}) == 1  # one request, one deadline
    assert result.json["outputs"] == [
        {
            "name": "probabilities",
            "datatype": "BYTES",
            "shape": [3, 1],
            "data": ["0.910000:4:class_4", "0.910000:1:class_1", "0.910000:7:class_7"],
        }
    ]


def test_dispatch_errors_keep_their_status_in_the_protocols_form(v2):
    result = v2(VectorDispatcher(QueueFull("all full"))).simulate_post(
        "/v2/models/shapes/infer", json=pixels_request([1])
    )
    assert result.status_code == 503 and result.json == {"error": "all full"}
    assert result.headers["Retry-After"] == "1"


def test_oversized_compressed_and_unknown_encodings(v2):
    import gzip

    client = v2(VectorDispatcher(), max_body_bytes=2048)
    body = gzip.compress(b" " * 5000 + b"{}")  # small on the wire, over the limit once inflated
    assert (
        client.simulate_post(
            "/v2/models/shapes/infer", body=body, headers={"Content-Encoding": "gzip"}
        ).status_code
        == 413
    )
    small = gzip.compress(b'{"inputs": []}')
    answer = client.simulate_post("/v2/models/shapes/infer", body=small, headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 400 and "inputs" in answer.json["error"]
    assert (
        client.simulate_post(
            "/v2/models/shapes/infer", body=b"{}", headers={"Content-Encoding": "br"}
        ).status_code
        == 415
    )


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compressed_request_is_answered_as_the_plain_one(v2, encoding):
    # docs/kserve.md: gzip and deflate request bodies work (deflate is zlib framing, as tritonclient sends it).
    import gzip
    import zlib

    compress = gzip.compress if encoding == "gzip" else zlib.compress
    body = json.dumps(pixels_request([4, 1])).encode()
    plain = v2(VectorDispatcher()).simulate_post("/v2/models/shapes/infer", body=body)
    dispatcher = VectorDispatcher()
    packed = v2(dispatcher).simulate_post(
        "/v2/models/shapes/infer", body=compress(body), headers={"Content-Encoding": encoding}
    )
    assert plain.status_code == 200, plain.text
    assert packed.status_code == 200, packed.text
    assert packed.json == plain.json
    assert [int(job.pixels[0, 0, 0]) for job in dispatcher.batches[0]] == [4, 1]
    # A bomb stops at the limit once inflated, whichever the encoding.
    bomb = compress(b" " * 5000 + b"{}")
    small = v2(VectorDispatcher(), max_body_bytes=2048)
    answer = small.simulate_post("/v2/models/shapes/infer", body=bomb, headers={"Content-Encoding": encoding})
    assert answer.status_code == 413


def test_probes_stay_open_when_a_token_is_set(v2, tmp_path):
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    token.chmod(0o600)
    client = v2(VectorDispatcher(), auth_token_file=str(token))
    assert client.simulate_get("/v2/health/live").status_code == 200
    assert client.simulate_get("/v2/health/ready").status_code == 200
    refused = client.simulate_get("/v2/models/shapes")
    assert refused.status_code == 401 and refused.json == {"error": "missing or wrong bearer token"}


def test_the_served_name_comes_from_the_file_unless_set(make_settings):
    assert make_settings().model.served_name == "tiny"
    assert (
        make_settings(model={"path": "/m/efficientnet-lite0.keras"}).model.served_name == "efficientnet_lite0"
    )
    assert make_settings(model={"name": "mine-2.b"}).model.served_name == "mine-2.b"
    with pytest.raises(ConfigError, match=r"model\.name = 'a/b'"):
        make_settings(model={"name": "a/b"})
    with pytest.raises(ConfigError, match=r"model\.version = 0"):
        make_settings(model={"version": 0})


def image_request(*files: bytes) -> dict[str, Any]:
    data = [base64.b64encode(f).decode() for f in files]
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)], "data": data}]}


def test_a_request_declaring_more_pixels_than_its_budget_is_413_before_any_decode(v2):
    dispatcher = VectorDispatcher()
    client = v2(dispatcher, max_image_pixels=4_000_000, max_request_pixels=10_000_000)
    one_colour = encode_image(np.full((2000, 2000, 3), 7, np.uint8))  # 4 MP declared, ~12 KB sent
    answer = client.simulate_post("/v2/models/shapes/infer", json=image_request(*[one_colour] * 3))
    assert answer.status_code == 413 and "api.max_request_pixels" in answer.json["error"]
    assert dispatcher.batches == []
    accepted = client.simulate_post("/v2/models/shapes/infer", json=image_request(one_colour, one_colour))
    assert accepted.status_code == 200 and len(dispatcher.batches[0]) == 2


@pytest.mark.parametrize("shape", [[18446744073709551616, 0], [2**40, 0, 3], [0, 18446744073709551616]])
def test_absurd_shapes_are_400_never_500(v2, shape):
    client = v2(VectorDispatcher())
    for datatype in ("UINT8", "BYTES"):
        request = {"inputs": [{"name": "image", "datatype": datatype, "shape": shape, "data": []}]}
        answer = client.simulate_post("/v2/models/shapes/infer", json=request)
        assert answer.status_code == 400 and "shape" in answer.json["error"], answer.text
