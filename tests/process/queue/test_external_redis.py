"""An appliance on an operator's own Redis (`redis.managed = false`) that requires a password
(`redis.password_file`): served with the right one; with a wrong one, not ready, and saying why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from testkit.harness import Appliance, redis_server
from tests.conftest import standin_model

pytestmark = pytest.mark.slow

PASSWORD = "operator-redis-secret"


@pytest.fixture()
def locked_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    # Its own short folder: a unix socket path may not pass 107 bytes.
    with redis_server(tmp_path_factory.mktemp("ext-redis"), password=PASSWORD) as sock:
        yield sock


def external(start_appliance, tmp_path: Path, sock: Path, password: str, ready: bool = True) -> Appliance:
    secret = tmp_path / "redis-password"
    secret.write_text(f"{password}\n")
    secret.chmod(0o600)
    redis_section = {"managed": False, "socket": str(sock), "password_file": str(secret)}
    model = {"path": standin_model(tmp_path, 5)}
    appliance: Appliance = start_appliance(shards=1, ready=ready, model=model, redis=redis_section)
    return appliance


def test_the_appliance_serves_on_a_password_protected_external_redis(
    start_appliance, tmp_path, locked_redis, photo_png
):
    appliance = external(start_appliance, tmp_path, locked_redis, PASSWORD)
    answer = requests.post(f"{appliance.url}/predict", files={"image": photo_png}, timeout=30)
    assert answer.status_code == 200, answer.text
    # It is the operator's Redis that carries the appliance (the managed one never started).
    client = redis.Redis(unix_socket_path=str(locked_redis), password=PASSWORD)
    assert client.hkeys("inferd:shards") == [b"cpu0"]
    assert not (appliance.run_dir / "redis.sock").exists()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(unix_socket_path=str(locked_redis)).ping()  # and it does require the password


def test_a_wrong_password_leaves_the_appliance_not_ready_and_saying_why(
    start_appliance, tmp_path, locked_redis, photo_png
):
    appliance = external(start_appliance, tmp_path, locked_redis, "not-the-password", ready=False)
    appliance.service.wait_http(f"{appliance.url}/healthz", 90)  # the API process is up ...
    ready = requests.get(f"{appliance.url}/readyz", timeout=10)
    assert ready.status_code == 503  # ... but not ready: it cannot reach its queues
    assert ready.json() == {"ready": False, "reason": "Redis unreachable"}
    answer = requests.post(f"{appliance.url}/predict", files={"image": photo_png}, timeout=30)
    assert answer.status_code == 503 and answer.json()["success"] is False
    assert answer.headers["Retry-After"]
    # The operator reading the log learns the cause: the worker keeps retrying, naming it.
    appliance.wait_until(
        "the worker to log why it cannot reach Redis",
        lambda: "cpu0: Redis unreachable" in appliance.log_text() and "password" in appliance.log_text(),
        60,
    )
    client = redis.Redis(unix_socket_path=str(locked_redis), password=PASSWORD)
    assert client.keys("inferd:*") == []  # nothing of the appliance got in
