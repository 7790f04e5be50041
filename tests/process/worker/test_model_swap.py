"""`inferd reload` on a real appliance (two CPU shards, tiny models) under load from 16 clients.

A good model is swapped in one shard at a time with no failed request, every answer says which version
computed it, and the choice outlives a killed worker and a restart of the whole appliance; a broken model,
or a shard that does not take the model up in time, leaves the old model serving everywhere. The counts of
requests sent, answered and failed are printed (`pytest -s` shows them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import requests

from daemon.errors import EXIT_FAILED, EXIT_OK, EXIT_REDIS_DOWN
from daemon.model.active_model import ModelRecord, choice_of, read_record, write_record
from daemon.queue.keys import swap_key
from daemon.queue.registry import read_shards
from daemon.queue.wire import ModelChoice
from daemon.settings import load_settings
from testkit.config import write_settings
from testkit.harness import PYTHON, REPO, Appliance
from tests.conftest import tiny_sections
from tests.tiny_model import build_tiny_model
from tools.loadgen import LoadResult, LoadRun, Upload

pytestmark = pytest.mark.slow

CLIENTS = 16
SWAP_WAIT_S = 120


@pytest.fixture(scope="module")
def second_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Another tiny model, with 5 classes and labels of its own."""
    model, labels = build_tiny_model(tmp_path_factory.mktemp("second-model"), input_size=32, classes=5)
    labels.write_text("".join(f"second_{i}\n" for i in range(5)))
    return model, labels


def reload_args(appliance: Appliance, model: Path, labels: Path, *extra: str) -> list[str]:
    """`inferd reload`'s arguments for `appliance`."""
    return [
        "--config",
        str(appliance.config),
        "reload",
        "--model",
        str(model),
        "--labels",
        str(labels),
        *extra,
    ]


def reload(appliance: Appliance, model: Path, labels: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-m", "daemon.launcher", *reload_args(appliance, model, labels, *extra)],
        cwd=REPO,
        env=appliance.env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def start_reload(appliance: Appliance, model: Path, labels: Path, *extra: str) -> subprocess.Popen[str]:
    """`inferd reload` in the background, its output read line by line as the swap goes."""
    return subprocess.Popen(
        [PYTHON, "-m", "daemon.launcher", *reload_args(appliance, model, labels, *extra)],
        cwd=REPO,
        env=appliance.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def start_load(appliance: Appliance, photo_png: bytes) -> LoadRun:
    upload = Upload.of("photo.png", photo_png)
    run = LoadRun(f"{appliance.url}/predict", [upload], concurrency=CLIENTS, duration_s=600, timeout_s=30)
    run.start()
    appliance.wait_until("the load to get answers", lambda: run.completed() >= 50, 60)
    return run


def finish_load(appliance: Appliance, run: LoadRun, more: int = 100) -> LoadResult:
    """Let `more` requests finish after now, then stop the load and wait for what is in flight."""
    target = run.completed() + more
    appliance.wait_until(f"{more} more answers", lambda: run.completed() >= target, 60)
    run.stop()
    return run.wait(60)


def counts(name: str, result: LoadResult) -> Counter[str]:
    statuses = Counter("ok" if r.status == 200 else "failed" for r in result.records)
    versions = Counter(r.model_version for r in result.records if r.status == 200)
    print(
        f"{name}: sent {len(result.records)}, answered {statuses['ok']}, failed {statuses['failed']}, "
        f"answers by model version {dict(versions)}"
    )
    return statuses


def versions_in_registry(appliance: Appliance) -> dict[str, int | None]:
    return {
        state.shard: state.info.model_version if state.info else None
        for state in read_shards(appliance.redis())
        if state.live
    }


def predict(appliance: Appliance, photo_png: bytes) -> requests.Response:
    response = requests.post(f"{appliance.url}/predict", files={"image": photo_png}, timeout=10)
    assert response.status_code == 200, response.text
    return response


def test_a_swap_under_load_fails_no_request_and_survives_restarts(
    start_appliance, second_model, photo_png
) -> None:
    appliance = start_appliance(shards=2)
    assert versions_in_registry(appliance) == {"cpu0": 1, "cpu1": 1}
    run = start_load(appliance, photo_png)
    reload_from = run.elapsed_s()
    done = reload(appliance, *second_model, "--version", "2")
    reload_until = run.elapsed_s()
    result = finish_load(appliance, run)
    assert done.returncode == 0, done.stdout + done.stderr
    print(done.stdout)
    statuses = counts("swap under load", result)
    assert statuses["failed"] == 0, result.summary().errors
    before = {r.model_version for r in result.records if r.start_s + r.latency_s < reload_from}
    after = {r.model_version for r in result.records if r.start_s > reload_until}
    assert before == {1} and after == {2}
    assert "cpu0: serving version 2" in done.stdout and "cpu1: serving version 2" in done.stdout
    assert versions_in_registry(appliance) == {"cpu0": 2, "cpu1": 2}
    answer = predict(appliance, photo_png)
    assert answer.headers["X-Inferd-Model-Version"] == "2" and answer.json()["model_version"] == 2
    assert all(p["label"].startswith("second_") for p in answer.json()["predictions"])
    metrics = requests.get(f"{appliance.url}/metrics", timeout=10).text
    assert 'nv_inference_count{model="tiny",version="2"}' in metrics
    assert 'inferd_shard_model_version{shard="cpu0"} 2.0' in metrics
    assert 'inferd_shard_model_version{shard="cpu1"} 2.0' in metrics

    # A worker killed after the swap comes back with the new model, not the settings' one.
    worker = appliance.pid_of("worker:worker-0")
    os.kill(worker, signal.SIGKILL)
    appliance.wait_restarted("worker:worker-0", worker)
    appliance.wait_until("cpu0 live again", lambda: "cpu0" in versions_in_registry(appliance), 60)
    assert versions_in_registry(appliance)["cpu0"] == 2

    # So does the whole appliance, while [model] in the settings is unchanged.
    appliance.stop()
    appliance.start()
    assert versions_in_registry(appliance) == {"cpu0": 2, "cpu1": 2}
    assert predict(appliance, photo_png).json()["model_version"] == 2


def test_a_broken_model_is_refused_and_the_old_one_serves_on(
    start_appliance, second_model, photo_png, tmp_path
) -> None:
    appliance = start_appliance(shards=2)
    model, labels = second_model
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(model.read_bytes()[:2000])
    wrong_labels = tmp_path / "wrong-labels.txt"
    wrong_labels.write_text("".join(f"only_{i}\n" for i in range(3)))
    run = start_load(appliance, photo_png)
    refused_file = reload(appliance, truncated, labels)
    refused_labels = reload(appliance, model, wrong_labels)
    # Checked and good, but no shard takes it up in time: the reload is rolled back.
    timed_out = reload(appliance, model, labels, "--timeout", "0.001")
    result = finish_load(appliance, run)
    for name, done, reason in (
        ("truncated file", refused_file, "cannot load model"),
        ("wrong label count", refused_labels, "has 5 outputs but"),
        ("shard timeout", timed_out, "no answer within"),
    ):
        print(f"{name}: exit {done.returncode}: {done.stderr.strip()}")
        # The README: a refused reload exits 1.
        assert done.returncode == EXIT_FAILED, done.stdout + done.stderr
        assert reason in done.stderr
    # The broken files never reached a shard: the separate check refused them.
    assert "nothing was changed" in refused_file.stderr and "nothing was changed" in refused_labels.stderr
    assert "the appliance serves version 1" in timed_out.stderr
    statuses = counts("refused models under load", result)
    assert statuses["failed"] == 0, result.summary().errors
    assert {r.model_version for r in result.records if r.status == 200} == {1}
    assert versions_in_registry(appliance) == {"cpu0": 1, "cpu1": 1}
    assert not (appliance.run_dir / "model.json").exists()
    answer = predict(appliance, photo_png)
    assert answer.json()["model_version"] == 1
    assert all(p["label"].startswith("class_") for p in answer.json()["predictions"])
    assert json.loads(requests.get(f"{appliance.url}/v2/models/tiny", timeout=10).text)["versions"] == ["1"]


def test_a_shard_that_never_answers_rolls_back_the_shards_already_swapped(
    start_appliance, second_model, photo_png
) -> None:
    # Long enough a deadline for the jobs of the frozen shard, which a live shard adopts within seconds.
    appliance = start_appliance(shards=2, api={"request_timeout_s": 30.0})
    run = start_load(appliance, photo_png)
    frozen = appliance.pid_of("worker:worker-1")
    tool = start_reload(appliance, *second_model, "--version", "2", "--timeout", "15")
    assert tool.stdout is not None
    lines = [tool.stdout.readline(), tool.stdout.readline()]
    assert lines[1].startswith("cpu0: serving version 2"), lines
    os.kill(frozen, signal.SIGSTOP)  # cpu1 is asked next, and never answers
    try:
        out, err = tool.communicate(timeout=120)
    finally:
        os.kill(frozen, signal.SIGCONT)
    print(err)
    result = finish_load(appliance, run)
    assert tool.returncode == 1, "".join(lines) + out + err
    assert "cpu1: refused version 2: no answer within 15s" in err
    assert "cpu0: back on version 1" in err
    statuses = counts("a shard frozen during the swap", result)
    assert statuses["failed"] == 0, result.summary().errors
    appliance.wait_until("cpu1 live again", lambda: "cpu1" in versions_in_registry(appliance), 60)
    assert versions_in_registry(appliance) == {"cpu0": 1, "cpu1": 1}
    assert not (appliance.run_dir / "model.json").exists()
    answers = {predict(appliance, photo_png).json()["model_version"] for _ in range(6)}
    assert answers == {1}


def test_a_start_whose_chosen_model_is_gone_stops_with_exit_78(tmp_path, tiny_model, second_model) -> None:
    sections = tiny_sections(tiny_model)
    config = write_settings(tmp_path, sections)
    settings = load_settings(config, env={})
    gone = ModelChoice(tmp_path / "deleted.keras", second_model[1], 2)
    write_record(settings, ModelRecord(active=gone, settings_model=choice_of(settings.model)))
    result = subprocess.run(
        [PYTHON, "-m", "daemon.launcher", "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 78, result.stdout + result.stderr
    assert f"the model file {gone.path} that `inferd reload` chose" in result.stderr


def test_a_reload_skips_a_down_shard_counts_on_from_the_served_version_and_survives_losing_redis(
    start_appliance, second_model
) -> None:
    appliance = start_appliance(shards=2)
    assert "stopped" in appliance.supervisorctl("stop", "worker:worker-1")
    settings = load_settings(appliance.config, env=appliance.env)

    done = reload(appliance, *second_model)  # no --version: the one served (1) plus one
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    assert "cpu1: down; it loads version 2 when it starts" in done.stdout
    assert "cpu0: serving version 2" in done.stdout
    assert "started" in appliance.supervisorctl("start", "worker:worker-1")
    appliance.wait_until(
        "cpu1 to start on version 2", lambda: versions_in_registry(appliance) == {"cpu0": 2, "cpu1": 2}, 90
    )

    # Redis goes while cpu0 (frozen once the model is checked, so it cannot answer) is asked to swap to 3.
    frozen = appliance.pid_of("worker:worker-0")
    tool = start_reload(appliance, *second_model, "--timeout", "60")
    assert tool.stdout is not None
    checked = tool.stdout.readline()
    os.kill(frozen, signal.SIGSTOP)
    try:
        assert checked.startswith("checked "), checked
        client = appliance.redis()
        appliance.wait_until("the swap request to cpu0", lambda: bool(client.exists(swap_key("cpu0"))), 30)
        assert "redis: stopped" in appliance.supervisorctl("stop", "redis")
        out, err = tool.communicate(timeout=60)
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert tool.returncode == EXIT_REDIS_DOWN, out + err
    assert "lost Redis while cpu0 swapped" in err and "version 3 reached no shard" in err, err
    record = read_record(settings)
    assert record is not None and record.active.version == 2  # restarted workers load what was served
    assert "started" in appliance.supervisorctl("start", "redis")
    appliance.wait_ready(90)
