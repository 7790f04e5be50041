"""Every corpus file and every odd request shape through POST /predict, answered by a real worker, with the
upload decoded in the API and in the shard (`api.decode_in`).

The API is the real Falcon app on the session's redis-server; the worker is the real `Worker` loop on the
tiny model, run in a thread of this process (once per module, so the model loads once). Each hostile
request must get its 4xx as {"success": false, "error": ...}, never a 5xx, and the next good request must
still be classified.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import falcon.testing
import numpy as np
import pytest
import redis
from urllib3 import encode_multipart_formdata

from daemon.api import create_app
from daemon.gpu_worker import IDLE_BLOCK_S, Worker
from daemon.model.classifier import Classifier
from daemon.queue.faces import ShardQueues
from daemon.queue.pixel_store import create_folder, remove_folder
from daemon.settings import Settings, load_settings
from daemon.shard import cpu_shards
from testkit.config import write_settings
from testkit.images import encode_image
from tests.conftest import tiny_sections
from tests.corpus.make_corpus import CASES, FILES, Case
from tests.tiny_model import TINY_LABELS

BODY_LIMIT = 256 * 1024
"""api.max_body_bytes for these tests: small, so an over-limit upload is cheap to make, yet above every
corpus file, so the corpus bombs reach the pixel check."""
GOOD_JPEG = (FILES / "baseline.jpg").read_bytes()
OVER_LIMIT_PNG = encode_image(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
"""A real, valid picture of noise (about 480 KB) that is larger than BODY_LIMIT."""


@dataclass
class Served:
    settings: Settings
    worker: Worker
    thread: threading.Thread


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Path], redis_socket: Path
) -> Iterator[Served]:
    sections = tiny_sections(
        tiny_model,
        redis={"managed": False, "socket": str(redis_socket)},
        api={"max_body_bytes": BODY_LIMIT, "request_timeout_s": 5.0},
        # One request at a time never fills a batch; not waiting for more keeps each answer prompt.
        batching={"max_wait_ms": 0},
    )
    settings = load_settings(write_settings(tmp_path_factory.mktemp("api-input"), sections), env={})
    folder = create_folder(settings)  # as `inferd run` does at start
    client = redis.Redis(unix_socket_path=str(redis_socket))
    queues = ShardQueues(client, "cpu0", settings)
    # Signals stay pytest's: the loop runs in a thread and is stopped through its flag.
    worker = Worker(settings, cpu_shards(1)[0], queues, Classifier(settings.model), handle_signals=False)
    thread = threading.Thread(target=worker.work, name="worker-cpu0", daemon=True)
    thread.start()
    yield Served(settings, worker, thread)
    worker.request_stop()
    thread.join(timeout=IDLE_BLOCK_S + 5.0)
    client.close()
    if folder is not None:
        remove_folder(folder)  # its run dir was a throwaway one
    assert not thread.is_alive(), "the worker thread did not stop within its idle wait"


@pytest.fixture(params=["api", "shard"], ids=lambda place: f"decode-in-{place}")
def api(
    served: Served, redis_client: redis.Redis, request: pytest.FixtureRequest
) -> falcon.testing.TestClient:
    # Each test starts on a flushed Redis: register the worker again at once rather than at its next beat.
    served.worker.beat()
    assert served.thread.is_alive(), "the worker thread has died"
    # Whichever process decodes (api.decode_in), every upload gets the same answer.
    settings = dataclasses.replace(
        served.settings, api=dataclasses.replace(served.settings.api, decode_in=request.param)
    )
    return falcon.testing.TestClient(create_app(settings, redis_client))


def post_multipart(api: falcon.testing.TestClient, fields: dict[str, Any], query: str = "") -> Any:
    body, content_type = encode_multipart_formdata(fields)
    return api.simulate_post("/predict", body=body, content_type=content_type, query_string=query)


def assert_classified(result: Any, top: int = 5) -> None:
    assert result.status_code == 200, result.text
    assert result.json["success"] is True
    predictions = result.json["predictions"]
    assert len(predictions) == top
    assert all(p["label"] in TINY_LABELS for p in predictions)


def assert_refused(result: Any, status: int, *words: str) -> None:
    """The JSON error shape, the status, and a message that says what was wrong."""
    assert result.status_code == status, result.text
    assert result.headers["Content-Type"].startswith("application/json")
    assert set(result.json) == {"success", "error"}
    assert result.json["success"] is False
    message = result.json["error"]
    assert isinstance(message, str) and message and not message.startswith("internal error")
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def assert_still_serving(api: falcon.testing.TestClient) -> None:
    assert_classified(post_multipart(api, {"image": ("next.jpg", GOOD_JPEG, "image/jpeg")}))


EXPECTED_WORDS = {400: (), 413: ("pixels",), 415: ("not an image in a supported format",)}
"""What each refusal's message must say; 400s vary ("empty", "corrupt", "cannot be read")."""


@pytest.mark.parametrize("send", ["multipart", "raw"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_every_corpus_file_gets_its_status_and_the_next_request_is_served(api, case: Case, send: str):
    data = case.read()
    if send == "multipart":
        result = post_multipart(api, {"image": (case.name, data, "application/octet-stream")})
    else:
        result = api.simulate_post("/predict", body=data, content_type="application/octet-stream")
    if case.status == 200:
        assert_classified(result)
    else:
        assert_refused(result, case.status, *EXPECTED_WORDS[case.status])
    assert_still_serving(api)


@dataclass(frozen=True)
class Odd:
    """A request shape rather than a file: how it is sent, the status and words its answer must have."""

    name: str
    status: int
    words: tuple[str, ...] = ()
    method: str = "POST"
    body: bytes | None = None
    content_type: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    query: str = ""


ODD_REQUESTS = (
    Odd("no body at all", 400, ("no body", "'image'")),
    Odd("only a top field", 400, ("'image' is missing",), fields={"top": "3"}),
    Odd("the file under another name", 400, ("'image' is missing",), fields={"file": ("a.jpg", GOOD_JPEG)}),
    Odd("an empty image field", 400, ("empty",), fields={"image": ("a.jpg", b"")}),
    Odd("raw body, empty", 400, ("empty",), body=b"", content_type="image/jpeg"),
    Odd(
        "application/json",
        415,
        ("application/json",),
        body=b'{"image": "aGVsbG8="}',
        content_type="application/json",
    ),
    Odd("text/plain", 415, ("text/plain",), body=b"hello", content_type="text/plain"),
    Odd("multipart without a boundary", 400, body=b"--x\r\n", content_type="multipart/form-data"),
    Odd(
        "multipart that is not",
        400,
        ("multipart",),
        body=b"junk",
        content_type="multipart/form-data; boundary=xyz",
    ),
    Odd("raw upload over the limit", 413, ("limit",), body=OVER_LIMIT_PNG, content_type="image/png"),
    Odd("multipart upload over the limit", 413, ("limit",), fields={"image": ("big.png", OVER_LIMIT_PNG)}),
    Odd("top is not a number", 400, ("top=",), fields={"image": ("a.jpg", GOOD_JPEG)}, query="top=abc"),
    Odd("top out of range", 400, ("top=",), fields={"image": ("a.jpg", GOOD_JPEG)}, query="top=1000"),
    Odd("GET /predict", 405, method="GET"),
)


def send_odd(api: falcon.testing.TestClient, odd: Odd) -> Any:
    if odd.fields:
        return post_multipart(api, odd.fields, odd.query)
    return api.simulate_request(
        odd.method, "/predict", body=odd.body, content_type=odd.content_type, query_string=odd.query
    )


@pytest.mark.parametrize("odd", ODD_REQUESTS, ids=lambda odd: odd.name)
def test_odd_requests_get_a_clear_4xx_and_the_next_request_is_served(api, odd: Odd):
    assert_refused(send_odd(api, odd), odd.status, *odd.words)
    assert_still_serving(api)


def test_the_declared_content_type_does_not_decide_the_format(api):
    result = api.simulate_post("/predict", body=GOOD_JPEG, content_type="image/png")
    assert_classified(result)


def test_a_second_image_field_is_ignored(api):
    body, content_type = encode_multipart_formdata(
        [("image", ("first.jpg", GOOD_JPEG)), ("image", ("second.bin", b"not an image"))]
    )
    assert_classified(api.simulate_post("/predict", body=body, content_type=content_type))


def test_top_from_the_form_field(api):
    assert_classified(post_multipart(api, {"image": ("a.jpg", GOOD_JPEG), "top": "3"}), top=3)


def test_a_chunked_upload_is_asked_for_its_length(api):
    # Without a Content-Length the size limit cannot be checked before reading, so the upload is refused.
    result = api.simulate_post(
        "/predict", headers={"Transfer-Encoding": "chunked", "Content-Type": "image/jpeg"}
    )
    assert_refused(result, 411, "Content-Length")
    assert_still_serving(api)
