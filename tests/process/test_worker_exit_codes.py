"""Exit codes that tell supervisord and systemd to stop retrying: 78 for bad settings, 79 for a model that
cannot load or run; each with one line that says why. The launcher and the worker run as real processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.errors import EXIT_CONFIG, EXIT_MODEL_LOAD, EXIT_OK
from testkit.config import write_settings
from testkit.harness import INFERD, REPO, Appliance
from tests.conftest import tiny_sections
from tests.tiny_model import build_model_failing_warm_up

pytestmark = pytest.mark.slow

BAD_SETTINGS = {
    "out of range": (
        {"batching": {"max_batch_size": 0}},
        "batching.max_batch_size = 0 is not allowed: from 1 to 1024",
    ),
    "wrong type": (
        {"api": {"request_timeout_s": "soon"}},
        "api.request_timeout_s = 'soon' is not allowed: expected a number",
    ),
}


def run_worker(config, extra_env=None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon.gpu_worker", "--config", str(config), "--shard-index", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", **(extra_env or {})},
    )


def test_bad_settings_exit_78_with_one_line(tmp_path, tiny_model):
    config = write_settings(tmp_path, tiny_sections(tiny_model, batching={"max_batch_size": 0}))
    result = run_worker(config)
    assert result.returncode == EXIT_CONFIG
    assert "batching.max_batch_size = 0 is not allowed" in result.stderr


def test_a_model_that_cannot_load_exits_79(tmp_path, tiny_model):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"this is not a keras archive")
    config = write_settings(tmp_path, tiny_sections(tiny_model, model={"path": broken}))
    result = run_worker(config)
    assert result.returncode == EXIT_MODEL_LOAD
    assert f"cannot load model {broken}" in result.stderr


def test_labels_that_do_not_match_the_model_exit_79(tmp_path, tiny_model):
    labels = tmp_path / "three.txt"
    labels.write_text("a\nb\nc\n")
    config = write_settings(tmp_path, tiny_sections(tiny_model, model={"labels": labels}))
    result = run_worker(config)
    assert result.returncode == EXIT_MODEL_LOAD
    assert "has 10 outputs but" in result.stderr and "has 3 labels" in result.stderr


def test_supervisord_leaves_a_worker_that_cannot_load_stopped(tmp_path, tiny_model):
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"PK\x03\x04 not really")
    sections = tiny_sections(tiny_model, model={"path": broken})
    appliance = Appliance(
        tmp_path, write_settings(tmp_path, sections), sections["api"]["port"], sections["paths"]["run_dir"], 1
    )
    appliance.launch()  # never ready: its one worker cannot load the model
    try:
        appliance.wait_until(
            "the worker to exit with 79",
            lambda: "worker:worker-0                  EXITED" in appliance.supervisorctl("status"),
            90,
        )
        # "expected" is supervisord's decision not to restart (autorestart=unexpected): logged as it decides.
        appliance.wait_until(
            "supervisord to take exit 79 as final",
            lambda: "exited: worker-0 (exit status 79; expected)" in appliance.log_text(),
        )
        status = appliance.supervisorctl("status")
        assert "worker:worker-0                  EXITED" in status, status
        assert appliance.log_text().count("spawned: 'worker-0'") == 1
    finally:
        appliance.stop()


def run_inferd(config: Path, command: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`inferd --config CONFIG COMMAND` in its own process group, so that a launcher which wrongly goes on
    to start the appliance is killed with everything it spawned instead of outliving the test."""
    proc = subprocess.Popen(
        [*INFERD, "--config", str(config), command],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(
            f"inferd {command} still running after {timeout_s}s:\n{stderr[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


ERROR_LINE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ ERROR (.*)$")
"""An ERROR line in the worker's log format; TensorFlow's own stderr noise (`E0000 ... ERROR (303)`) is not."""


def error_messages(stderr: str) -> list[str]:
    """The messages of the worker's ERROR log lines (a traceback may follow one)."""
    return [match[1] for line in stderr.splitlines() if (match := ERROR_LINE.match(line))]


@pytest.mark.parametrize("command", ["run", "check"])
@pytest.mark.parametrize("bad", BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_the_launcher_exits_78_with_one_line_before_anything_starts(tmp_path, tiny_model, command, bad):
    overrides, message = bad
    sections = tiny_sections(tiny_model, **overrides)
    result = run_inferd(write_settings(tmp_path, sections), command)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stderr.splitlines() == [f"inferd: configuration error: {message}"]
    assert result.stdout == ""
    # Nothing was prepared, so nothing was started: the run directory (Redis config, sockets) is untouched.
    assert os.listdir(sections["paths"]["run_dir"]) == []


@pytest.mark.parametrize("command", ["run", "check"])
def test_a_missing_model_file_exits_78_naming_it(tmp_path, tiny_model, command):
    missing = tmp_path / "no-such-model.keras"
    sections = tiny_sections(tiny_model, model={"path": missing})
    result = run_inferd(write_settings(tmp_path, sections), command)
    assert result.returncode == EXIT_CONFIG, result.stderr
    assert result.stderr.splitlines() == [
        f"inferd: configuration error: model.path = {str(missing)!r} does not exist; build the embedded "
        "default with `inferd build-default-model` or point it at your own file"
    ]
    assert os.listdir(sections["paths"]["run_dir"]) == []


def test_check_lists_the_cpu_shards_and_exits_0(tmp_path, tiny_model):
    sections = tiny_sections(tiny_model, devices={"gpus": "none", "cpu_workers": 3})
    config = write_settings(tmp_path, sections)
    result = run_inferd(config, "check", timeout_s=180)  # four processes load the runtime
    assert result.returncode == EXIT_OK, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"settings OK: {config.resolve()}"
    # The model is loaded and checked as `inferd reload` checks one.
    assert lines[1].startswith(f"checked {tiny_model[0]}: 10 classes, input 32x32x3, batch sizes 1,"), lines
    shards = [line.split("\t-> ")[0] for line in lines[2:]]
    assert shards == ["cpu0\tcpu\tCPU", "cpu1\tcpu\tCPU", "cpu2\tcpu\tCPU"]
    # Each shard says what its runtime would compute on, as its pinned worker would see it.
    assert all(line.split("\t-> ")[1].startswith("CPU (tensorflow ") for line in lines[2:]), lines
    assert os.listdir(sections["paths"]["run_dir"]) == []


def test_check_loads_the_model_so_a_label_count_mismatch_shows_before_run(tmp_path, tiny_model):
    labels = tmp_path / "five-labels.txt"
    labels.write_text("".join(f"class {i}\n" for i in range(5)))
    sections = tiny_sections(tiny_model, model={"labels": labels})
    result = run_inferd(write_settings(tmp_path, sections), "check", timeout_s=180)
    assert result.returncode == EXIT_MODEL_LOAD, result.stdout + result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"inferd check: refused {tiny_model[0]}: model {tiny_model[0]} has 10 outputs but {labels} has 5 labels; "
        "nothing was changed"
    )
    assert os.listdir(sections["paths"]["run_dir"]) == []


def test_a_model_whose_input_size_differs_from_the_setting_exits_79(tmp_path, tiny_model):
    config = write_settings(tmp_path, tiny_sections(tiny_model, model={"input_size": 48}))
    result = run_worker(config)
    assert result.returncode == EXIT_MODEL_LOAD, result.stderr
    assert error_messages(result.stderr) == [
        f"cpu0: cannot serve (exit 79): model {tiny_model[0]} takes input (32, 32, 3), "
        "but model.input_size gives (48, 48, 3)"
    ]


def test_a_model_that_loads_but_fails_its_warm_up_batch_exits_79(tmp_path):
    model, labels = build_model_failing_warm_up(tmp_path / "model", kernel=64)
    sections = tiny_sections((model, labels))  # 32-pixel images: smaller than the 64-pixel kernel
    result = run_worker(write_settings(tmp_path, sections))
    assert result.returncode == EXIT_MODEL_LOAD, result.stderr
    (message,) = error_messages(result.stderr)
    # Refused when the model is first prepared to run (before any request), saying which input and why.
    assert message.startswith(f"cpu0: cannot serve (exit 79): model {model} cannot run on (32, 32, 3) images")
    assert "kernel shape=(64, 64, 3, 4)" in message
