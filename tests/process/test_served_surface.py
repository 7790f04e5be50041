"""What a user can check on a running appliance behind the real gunicorn, with auth on: the 0700 run dir, the
timing headers, and every hostile corpus file answered with its status, never a 5xx.

One appliance serves the module (the tests only read from it); its model is a stand-in that spends a known
time per batch, so the infer-time header has a value to be compared with.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testkit.config import write_settings
from testkit.harness import Appliance
from tests.conftest import standin_model, tiny_sections
from tests.corpus.make_corpus import CASES

pytestmark = pytest.mark.slow

TOKEN = "surface-token-5678"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BATCH_MS = 150.0
GOOD = next(case for case in CASES if case.status == 200)


@pytest.fixture(scope="module")
def appliance(tmp_path_factory: pytest.TempPathFactory, tiny_model: tuple[Path, Path]) -> Iterator[Appliance]:
    folder = tmp_path_factory.mktemp("surface")
    token_file = folder / "token"
    token_file.write_text(f"{TOKEN}\n")
    token_file.chmod(0o600)
    sections = tiny_sections(
        tiny_model,
        model={"path": standin_model(folder, BATCH_MS)},
        api={"auth_token_file": token_file},
        batching={"max_wait_ms": 0},
        devices={"cpu_workers": 1},
    )
    config = write_settings(folder, sections)
    served = Appliance(folder, config, sections["api"]["port"], Path(sections["paths"]["run_dir"]), 1)
    served.start()
    yield served
    served.stop()


def predict(appliance: Appliance, name: str, data: bytes, auth: bool = True) -> requests.Response:
    files = {"image": (name, data, "application/octet-stream")}
    return requests.post(f"{appliance.url}/predict", files=files, headers=AUTH if auth else {}, timeout=30)


def test_the_run_dir_and_its_sockets_are_the_appliances_alone(appliance):
    for path in (appliance.run_dir, appliance.run_dir / "redis.sock", appliance.run_dir / "supervisor.sock"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}: group or others may use it"
    assert stat.S_IMODE(appliance.run_dir.stat().st_mode) == 0o700


def test_timing_headers_say_how_long_the_job_waited_and_computed(appliance):
    answer = predict(appliance, GOOD.name, GOOD.read())
    assert answer.status_code == 200, answer.text
    queue_ms = float(answer.headers["X-Inferd-Queue-Ms"])
    infer_ms = float(answer.headers["X-Inferd-Infer-Ms"])
    assert queue_ms >= 0
    # The stand-in sleeps BATCH_MS per batch: never less, and on a loaded machine not wildly more.
    assert BATCH_MS <= infer_ms < 4 * BATCH_MS, infer_ms
    assert answer.headers["X-Inferd-Shard"] == "cpu0" and answer.headers["X-Inferd-Batch-Size"] == "1"


def test_every_corpus_file_gets_its_status_through_the_real_server(appliance):
    refused = predict(appliance, GOOD.name, GOOD.read(), auth=False)
    assert refused.status_code == 401  # auth is on: what follows passed it
    wrong: dict[str, str] = {}
    for case in CASES:
        answer = predict(appliance, case.name, case.read())
        body = answer.json()
        expected_shape = body["success"] is True if case.status == 200 else set(body) == {"success", "error"}
        if answer.status_code != case.status or not expected_shape:
            wrong[case.name] = f"expected {case.status}, got {answer.status_code}: {answer.text[:200]}"
    assert wrong == {}
    assert predict(appliance, GOOD.name, GOOD.read()).status_code == 200  # and it still serves
