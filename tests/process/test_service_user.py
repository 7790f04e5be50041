"""Started as root with `paths.service_user`, no process of the appliance runs as root: supervisord, Redis,
nginx (master and workers), both gunicorn instances and the workers all run as that user, and it serves."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from daemon.launcher import become_service_user
from daemon.settings import PathSettings, Settings
from testkit.harness import Appliance, write_settings
from testkit.images import encode_image
from testkit.proctree import descendants
from tests.conftest import tiny_sections

SERVICE_USER = "nobody"


def user_can_run_python(user: str) -> bool:
    try:
        return subprocess.run([sys.executable, "-c", "pass"], user=user, timeout=60).returncode == 0
    except PermissionError:
        return False


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="dropping to a service user needs root")


def test_become_service_user_gives_the_dirs_away_and_drops_root(tmp_path):
    run_dir, log_dir = tmp_path / "run", tmp_path / "log"
    (run_dir / "nginx").mkdir(parents=True)
    log_dir.mkdir()
    (run_dir / "redis.conf").write_text("x")
    settings = Settings(paths=PathSettings(run_dir=run_dir, log_dir=log_dir, service_user=SERVICE_USER))
    nobody = pwd.getpwnam(SERVICE_USER)
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            become_service_user(settings)
            os.write(writer, f"{os.getuid()} {os.geteuid()} {os.getgid()} {len(os.getgroups())}".encode())
        finally:
            os._exit(0)
    os.close(writer)
    _, status = os.waitpid(child, 0)
    reported = os.read(reader, 100).decode()
    assert os.waitstatus_to_exitcode(status) == 0
    assert reported == f"{nobody.pw_uid} {nobody.pw_uid} {nobody.pw_gid} 0"
    for path in (run_dir, run_dir / "nginx", run_dir / "redis.conf", log_dir):
        assert path.stat().st_uid == nobody.pw_uid, path


def uids(pid: int) -> tuple[int, int]:
    """(real, effective) uid of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            real, effective = line.split()[1:3]
            return int(real), int(effective)
    raise AssertionError(f"no Uid line for {pid}")


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:80]
    except OSError:
        return "(gone)"


@pytest.fixture()
def readable_folder() -> Iterator[Path]:
    """A folder the service user can read: the settings and the model live there (pytest's are root's 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="inferd-user-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(
    os.geteuid() == 0 and not user_can_run_python(SERVICE_USER),
    reason=f"{SERVICE_USER} cannot run this Python ({sys.executable} is in a folder closed to it)",
)
def test_started_as_root_every_process_runs_as_the_service_user(readable_folder, tiny_model):
    model = [Path(shutil.copy(path, readable_folder)) for path in tiny_model]
    for path in model:
        path.chmod(0o644)
    sections = tiny_sections((model[0], model[1]), paths={"service_user": SERVICE_USER, "log_dir": "log"})
    config = write_settings(readable_folder, sections)
    config.chmod(0o644)
    appliance = Appliance(
        readable_folder, config, sections["api"]["port"], Path(sections["paths"]["run_dir"]), 1
    )
    try:
        appliance.start()
        answer = requests.post(
            f"{appliance.url}/predict",
            files={"image": ("x.png", encode_image(np.full((40, 40, 3), 9, np.uint8)), "image/png")},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        nobody = pwd.getpwnam(SERVICE_USER).pw_uid
        tree = descendants(appliance.pid)
        roles = [command(pid) for pid in tree]
        assert any("redis-server" in role for role in roles) and any("nginx" in role for role in roles), roles
        as_root = [(pid, command(pid)) for pid in tree if uids(pid) != (nobody, nobody)]
        assert as_root == [], as_root
        assert Path(sections["paths"]["run_dir"]).stat().st_uid == nobody
    finally:
        appliance.stop()
