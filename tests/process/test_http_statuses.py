"""503 and 504 as a client sees them over real HTTP, from an appliance whose only worker is frozen (SIGSTOP).

A long heartbeat TTL keeps the frozen worker "live", so jobs queue behind it instead of being refused as
"no live worker"; one shard makes the outcome deterministic. Every test resumes the worker in `finally`,
so the appliance can stop cleanly whatever failed.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
import requests

from daemon.queue.keys import processing_key, queue_key
from testkit.harness import Appliance, wait_until
from testkit.images import encode_image
from tests.conftest import TINY_INPUT

pytestmark = pytest.mark.slow

FROZEN_BUT_LIVE = {"heartbeat_ttl_s": 60}
IMAGE = encode_image(np.full((TINY_INPUT, TINY_INPUT, 3), 128, dtype=np.uint8))


@contextmanager
def frozen_worker(appliance: Appliance) -> Iterator[None]:
    """SIGSTOP the shard's worker for the block and always SIGCONT it after."""
    pid = appliance.pid_of("worker:worker-0")
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def classify(appliance: Appliance) -> requests.Response:
    files = {"image": ("grey.png", IMAGE, "image/png")}
    return requests.post(f"{appliance.url}/predict", files=files, timeout=60)


def jobs_held(appliance: Appliance) -> int:
    """Jobs queued for cpu0 plus those its (frozen) worker had claimed."""
    client = appliance.redis()
    return int(client.llen(queue_key("cpu0"))) + int(client.llen(processing_key("cpu0")))


def queued_or_answered(
    appliance: Appliance, future: Future[requests.Response], held_before: int
) -> Callable[[], bool]:
    return lambda: future.done() or jobs_held(appliance) > held_before


def test_a_stuck_worker_gets_the_caller_a_504_json_after_the_request_timeout(start_appliance):
    appliance = start_appliance(shards=1, api={"request_timeout_s": 1.0}, queue=FROZEN_BUT_LIVE)
    with frozen_worker(appliance):
        started = time.monotonic()
        response = classify(appliance)
        elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json() == {
        "success": False,
        "error": "no answer from shard cpu0 within 1s; the appliance is overloaded or a worker is stuck",
    }
    # Not before the deadline, and not long after it: generous, for a loaded two-core CI machine.
    assert 0.9 <= elapsed < 8.0, elapsed
    # The resumed worker serves again (the stale job is skipped, not answered late).
    wait_until("a 200 after the worker resumes", lambda: classify(appliance).status_code == 200, 30)


def test_a_full_queue_gets_the_caller_a_503_json_with_retry_after(start_appliance):
    appliance = start_appliance(
        shards=1, api={"request_timeout_s": 30.0}, queue={"max_depth": 1, **FROZEN_BUT_LIVE}
    )
    pool = ThreadPoolExecutor(max_workers=3)
    held: list[Future[requests.Response]] = []
    refused: requests.Response | None = None
    try:
        with frozen_worker(appliance):
            # A worker frozen inside its blocking claim still gets one job moved to it by Redis, so the
            # queue is full after one or two jobs; send one at a time until the refusal comes.
            for _ in range(3):
                future = pool.submit(classify, appliance)
                wait_until(
                    "the request to be queued or refused",
                    queued_or_answered(appliance, future, len(held)),
                    20,
                    appliance.output,
                )
                if future.done():
                    refused = future.result()
                    break
                held.append(future)
            assert refused is not None, "three jobs were taken with queue.max_depth = 1 and the worker frozen"
            assert 1 <= len(held) <= 2
            assert appliance.redis().llen(queue_key("cpu0")) == 1
    finally:
        pool.shutdown(wait=True)  # after the resume: the held callers get their answers
    assert refused.status_code == 503, refused.text
    assert refused.json() == {
        "success": False,
        "error": "all 1 shard queue(s) are full (1 jobs each); retry shortly",
    }
    assert int(refused.headers["Retry-After"]) >= 1
    # Backpressure refused the newcomer; it did not drop the jobs already taken.
    assert [future.result().status_code for future in held] == [200] * len(held)
