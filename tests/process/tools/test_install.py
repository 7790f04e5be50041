"""`make install` staged into a temporary root: what it lays down, what uninstall leaves, a unit systemd accepts,
and the installed layout serving requests the way systemd starts it."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import requests

from daemon.ops.front_door import BODY_DIR
from daemon.settings import load_settings
from testkit.config import short_folder
from testkit.harness import OUTPUT_CHARS, REPO, free_port, wait_until
from testkit.images import encode_image
from tests.conftest import TINY_INPUT
from tests.needs import need_program
from tools import install

SKELETON = ("etc/systemd/system", "opt", "usr/bin", "var/lib", "var/log", "run")
"""The folders a real system already has, so that a clean uninstall can leave the root exactly as it was."""
KEPT_WITHOUT_PURGE = {"etc/inferd", "etc/inferd/settings.toml", "var/lib/inferd", "var/lib/inferd/models"}


def run_installer(root: Path, command: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "tools.install", command, "--root", str(root), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        f"installer {command} {args} exited {result.returncode}:\n{result.stdout}{result.stderr}"
    )
    return result.stdout


def tree(root: Path) -> dict[str, str]:
    """Every path under root with what it is: a folder, a link's target, or a file's digest and mode."""
    entries: dict[str, str] = {}
    for folder, dirnames, filenames in os.walk(root):  # does not descend into linked folders
        for name in dirnames + filenames:
            path = Path(folder, name)
            key = str(path.relative_to(root))
            if path.is_symlink():
                entries[key] = f"link to {os.readlink(path)}"
            elif path.is_dir():
                entries[key] = "folder"
            else:
                entries[key] = f"{hashlib.sha256(path.read_bytes()).hexdigest()} {path.stat().st_mode:o}"
    return entries


def unit_settings(unit: Path) -> dict[str, str]:
    """The unit's Key=Value lines (the last one wins, as in systemd); enough for the keys read here."""
    settings: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings[key.strip()] = value.strip()
    return settings


@pytest.fixture()
def system_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    for folder in SKELETON:
        (root / folder).mkdir(parents=True)
    (root / "etc" / "hostname").write_text("appliance\n")
    (root / "opt" / "other").mkdir()
    (root / "opt" / "other" / "keep.txt").write_text("not inferd's\n")
    return root


def test_install_lays_out_code_settings_and_unit(system_root):
    output = run_installer(system_root, "install", "--venv", sys.prefix, "--no-model")

    app = system_root / "opt/inferd/app"
    assert (app / "daemon" / "launcher.py").is_file()
    assert (
        app / "daemon" / "http" / "static" / "status.js"
    ).is_file()  # the status page's files are package data
    # The launcher finds supervisord's config beside its package, so conf/ must travel with daemon/.
    assert (app / "conf" / "supervisord.conf").read_text() == (REPO / "conf" / "supervisord.conf").read_text()
    assert not (app / "tests").exists() and not list(app.rglob("__pycache__"))
    assert os.readlink(system_root / "opt/inferd/venv") == sys.prefix
    unit = system_root / "etc/systemd/system/inferd.service"
    assert unit.read_text() == (REPO / "systemd" / "inferd.service").read_text()

    installed = load_settings(system_root / "etc/inferd/settings.toml", env={})
    bundled = load_settings(REPO / "conf" / "settings.toml", env={})
    assert installed.model.path == Path("/var/lib/inferd/models/efficientnet-lite0.keras")
    assert installed.model.labels == Path("/var/lib/inferd/models/imagenet-labels.txt")
    assert (installed.paths.run_dir, installed.paths.log_dir) == (
        Path("/run/inferd"),
        Path("/var/log/inferd"),
    )
    # Apart from those paths the operator starts from exactly the bundled defaults.
    assert dataclasses.replace(installed.model, path=bundled.model.path, labels=bundled.model.labels) == (
        bundled.model
    )
    for section in ("api", "redis", "batching", "queue", "devices"):
        assert getattr(installed, section) == getattr(bundled, section), section

    # Under --root nothing outside the root changes: the commands are shown, not run.
    assert "skipped under --root: useradd --system --user-group --home-dir /var/lib/inferd" in output
    assert "skipped under --root: systemctl daemon-reload" in output


def test_unit_names_the_paths_the_installer_lays_down(system_root):
    run_installer(system_root, "install", "--no-venv", "--no-model")
    unit = unit_settings(system_root / "etc/systemd/system/inferd.service")

    command = shlex.split(unit["ExecStart"])
    assert command[0] == str(install.VENV_DIR / "bin" / "python")
    assert command[command.index("--config") + 1] == str(install.CONFIG_FILE)
    assert unit["WorkingDirectory"] == str(install.APP_DIR)
    assert (unit["User"], unit["Group"]) == (install.SERVICE_USER, install.SERVICE_USER)
    settings = load_settings(system_root / "etc/inferd/settings.toml", env={})
    assert Path("/run", unit["RuntimeDirectory"]) == settings.paths.run_dir
    assert Path("/var/log", unit["LogsDirectory"]) == settings.paths.log_dir
    assert unit["RuntimeDirectoryMode"] == "0700"  # the launcher's Redis and supervisord sockets live there
    # A config error (exit 78) is final; a crash restarts; supervisord alone gets SIGTERM and stops the rest.
    assert (unit["Restart"], unit["RestartPreventExitStatus"], unit["KillMode"]) == (
        "on-failure",
        "78",
        "mixed",
    )
    # A private /dev would hide the NVIDIA device nodes from the workers.
    assert unit.get("PrivateDevices", "no") == "no" and "DevicePolicy" not in unit
    # The front door's spilled bodies go to a bounded tmpfs of the unit's own, not the host's /run.
    spill, options = unit["TemporaryFileSystem"].split(":", 1)
    assert Path(spill) == settings.paths.run_dir / BODY_DIR and "size=" in options


def test_uninstall_leaves_the_root_as_it_was_apart_from_settings_until_purge(system_root):
    before = tree(system_root)
    run_installer(system_root, "install", "--venv", sys.prefix, "--no-model")
    assert set(tree(system_root)) > set(before)

    output = run_installer(system_root, "uninstall")
    after = tree(system_root)
    assert set(after) - set(before) == KEPT_WITHOUT_PURGE
    assert {key: value for key, value in after.items() if key in before} == before
    assert "kept /etc/inferd, /var/lib/inferd and /var/log/inferd" in output
    assert "skipped under --root: systemctl disable --now inferd.service" in output
    # The linked environment is this test run's own: removing the link must not touch what it points to.
    assert Path(sys.prefix, "bin", "python").exists()

    output = run_installer(system_root, "uninstall", "--purge")
    assert tree(system_root) == before
    assert "skipped under --root: userdel inferd" in output


def test_reinstall_replaces_code_and_keeps_settings_and_model(system_root):
    run_installer(system_root, "install", "--no-venv", "--no-model")
    settings = system_root / "etc/inferd/settings.toml"
    settings.write_text(settings.read_text().replace("port = 8000", "port = 9000"))
    model = system_root / "var/lib/inferd/models/efficientnet-lite0.keras"
    model.write_bytes(b"the operator's model")
    stale = system_root / "opt/inferd/app/daemon/removed_in_new_version.py"
    stale.write_text("")

    output = run_installer(system_root, "install", "--no-venv", "--no-model")

    assert load_settings(settings, env={}).api.port == 9000
    assert model.read_bytes() == b"the operator's model"
    assert not stale.exists()
    assert "kept the existing" in output and "kept the model" in output


def test_unit_passes_systemd_analyze_verify_and_security(system_root, tmp_path):
    need_program("systemd-analyze", "apt-get install systemd")
    run_installer(system_root, "install", "--no-venv", "--no-model")
    # verify checks that ExecStart's program exists; outside a real install only the venv's python does not,
    # so it is pointed at this interpreter and nothing else changes.
    installed = (system_root / "etc/systemd/system/inferd.service").read_text()
    unit = tmp_path / "inferd.service"
    unit.write_text(installed.replace(str(install.VENV_DIR / "bin" / "python"), sys.executable))

    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert (verify.returncode, verify.stdout + verify.stderr) == (0, "")

    # `systemd-analyze security` scores exposure from 0 (locked down) to 10; the sandboxing keeps it under 2.5.
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=25", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout + security.stderr


@pytest.mark.slow
def test_installed_layout_serves_with_stdout_on_a_journal_socket(system_root, tiny_model, tmp_path):
    """ExecStart, run from the staged install with its stdout on a unix socket as journald gives it."""
    run_installer(system_root, "install", "--venv", sys.prefix, "--no-model")
    unit = unit_settings(system_root / "etc/systemd/system/inferd.service")
    staged = str(system_root / install.PREFIX.relative_to("/"))
    command = [arg.replace(str(install.PREFIX), staged) for arg in shlex.split(unit["ExecStart"])]
    command[command.index("--config") + 1] = str(system_root / "etc/inferd/settings.toml")
    port = free_port()
    model_path, labels_path = tiny_model
    # What an operator would put in `systemctl edit inferd` (Environment=) to run a small model on CPUs.
    overrides = {
        "INFERD_MODEL_PATH": str(model_path),
        "INFERD_MODEL_LABELS": str(labels_path),
        "INFERD_MODEL_INPUT_SIZE": str(TINY_INPUT),
        "INFERD_MODEL_PREPROCESSING": "tf",
        "INFERD_DEVICES_GPUS": "none",
        "INFERD_DEVICES_CPU_WORKERS": "1",
        "INFERD_API_PORT": str(port),
        "INFERD_PATHS_RUN_DIR": str(short_folder()),  # unix socket paths must stay short
        "INFERD_PATHS_LOG_DIR": str(tmp_path / "log"),
    }
    journal, service_end = socket.socketpair()
    received: list[bytes] = []
    reader = threading.Thread(
        target=lambda: received.extend(iter(lambda: journal.recv(65536), b"")), daemon=True
    )
    reader.start()
    service = subprocess.Popen(
        command,
        cwd=unit["WorkingDirectory"].replace(str(install.PREFIX), staged),
        env={**os.environ, **overrides},
        stdout=service_end.fileno(),
        stderr=service_end.fileno(),
        start_new_session=True,
    )
    service_end.close()

    def journal_text() -> str:
        return b"".join(received).decode(errors="replace")

    def journal_end() -> str:
        return journal_text()[-OUTPUT_CHARS:]

    def settled() -> bool:
        # Stop waiting as soon as the outcome is known (wait_until retries through exceptions): the shard
        # is live, the service exited, or supervisord gave up on a program.
        if service.poll() is not None or "entered FATAL state" in journal_text():
            return True
        live: list[str] = (
            requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json().get("live_shards", [])
        )
        return live == ["cpu0"]

    try:
        wait_until("the installed service's shard cpu0 to be live", settled, 90, journal_end)
        assert service.poll() is None, f"the service exited with {service.returncode}:\n{journal_end()}"
        assert "entered FATAL state" not in journal_text(), journal_end()
        image = encode_image(np.full((40, 60, 3), 128, dtype=np.uint8), "JPEG")
        response = requests.post(
            f"http://127.0.0.1:{port}/predict", data=image, headers={"Content-Type": "image/jpeg"}, timeout=30
        )
        assert response.status_code == 200, response.text
        # KillMode=mixed: SIGTERM to the main process only, which must stop everything within TimeoutStopSec.
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=int(unit["TimeoutStopSec"])) == 0, journal_end()
        reader.join(timeout=10)
        assert "success: api entered RUNNING state" in journal_text()
    finally:
        if service.poll() is None:
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()
        journal.close()


def test_a_staged_venv_names_the_final_paths_so_the_tree_can_be_moved_into_place(system_root):
    """`make install DESTDIR=...`: pip writes the staging folder into the venv; relocation makes it /opt/inferd."""
    target = install.Target(system_root)
    install.install_app(target)
    venv = target.path(install.VENV_DIR)
    base_python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base_python, "-m", "venv", str(venv)], check=True, timeout=120)
    app = target.path(install.APP_DIR)
    pip = [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--editable", str(app)]
    subprocess.run(pip, check=True, timeout=300)
    staged = str(target.path(install.PREFIX))
    script = venv / "bin" / "inferd"
    assert script.read_text().startswith(f"#!{staged}/venv/bin/python")  # what pip wrote: the staging folder

    rewritten = install.relocate_venv(target)
    assert script in rewritten and os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/opt/inferd/venv/bin/python")
    finder = next(venv.glob("lib/python*/site-packages/__editable___*_finder.py"))
    assert "'/opt/inferd/app/daemon'" in finder.read_text()
    leftovers = [
        str(path.relative_to(venv))
        for path in venv.rglob("*")
        if path.is_file()
        and not path.is_symlink()
        and "__pycache__" not in path.parts
        and staged.encode() in path.read_bytes()
    ]
    assert leftovers == []
