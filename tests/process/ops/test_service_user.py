"""Started as root with `paths.service_user`, the launcher gives the run and log dirs to that user and becomes
it, with no supplementary groups, before it execs supervisord: nothing it starts runs as root (docs/security.md).

The whole appliance as `nobody` needs a checkout and a Python that `nobody` can read. Where this Python lies
under a 0700 /root (pyenv), the test runs `inferd run` in a private mount namespace whose /root is an open
folder holding only the way to that Python; the appliance itself is started and checked unchanged."""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
import sys
from pathlib import Path

import requests

from daemon.ops.service_user import become_service_user
from daemon.settings import PathSettings, Settings
from testkit.config import short_folder, write_settings
from testkit.harness import Appliance, wait_until
from testkit.proctree import descendants
from tests.conftest import tiny_sections
from tests.needs import need, need_program

SERVICE_USER = "nobody"
ROOTS_GROUPS = [0, 4]
"""Supplementary groups (root, adm) root starts with in these tests, which the service user must not keep."""


def test_become_service_user_gives_the_dirs_away_and_drops_root(tmp_path):
    need(os.geteuid() == 0, "dropping to a service user needs root", "run the tests as root")
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
            # Root as a login gives it (groups root, adm, ...); a container's root often has none, where
            # keeping them would go unseen.
            os.setgroups(ROOTS_GROUPS)
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


# -- the whole appliance, started as root with paths.service_user ------------------------------------------
ROLES = {
    "supervisord": "daemon.ops.supervise",
    "redis": "redis-server",
    "nginx master": "nginx: master",
    "nginx worker": "nginx: worker",
    "api": "gunicorn",
    "worker": "daemon.gpu_worker",
    "output relay": "daemon.launcher",
}
"""Each process of the appliance, by a piece of its command line."""


def shut_folder(path: str) -> Path | None:
    """The outermost folder above `path` that other users cannot enter (a 0700 /root holding pyenv's Python)."""
    for folder in reversed(Path(path).parents):
        if not os.stat(folder).st_mode & stat.S_IXOTH:
            return folder
    return None


def as_it_could_be_installed(argv: list[str], base: Path) -> list[str]:
    """`argv` run where the service user can reach this Python: where it lies under a folder closed to other
    users, in a private mount namespace where that folder is replaced by an open one holding only the path
    to the Python (bind-mounted, read as it is). The appliance is otherwise untouched."""
    python = os.path.realpath(sys.executable)
    shut = shut_folder(os.path.realpath(sys.prefix)) or shut_folder(python)
    if shut is None:
        return argv
    inside = Path(python).relative_to(shut).parts[0]
    stage = base / "open-root"
    (stage / inside).mkdir(parents=True)
    stage.chmod(0o755)
    script = (
        f"mount --bind {shlex.quote(str(shut / inside))} {shlex.quote(str(stage / inside))} && "
        f'mount --rbind {shlex.quote(str(stage))} {shlex.quote(str(shut))} && exec "$@"'
    )
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv]


def identities(pid: int) -> tuple[str, tuple[int, ...]] | None:
    """The command line of `pid`, and its real, effective, saved and filesystem uids, then its gids and its
    supplementary groups; None when it has gone meanwhile."""
    try:
        line = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        fields = dict(entry.split(":", 1) for entry in Path(f"/proc/{pid}/status").read_text().splitlines())
    except FileNotFoundError:
        return None
    ids = (*fields["Uid"].split(), *fields["Gid"].split(), *fields["Groups"].split())
    return line, tuple(int(number) for number in ids)


def test_started_as_root_with_service_user_every_process_runs_as_that_user(tiny_model, photo_png):
    need(os.geteuid() == 0, "starting as root with paths.service_user needs root", "run the tests as root")
    need_program("unshare", "util-linux")
    need_program("setpriv", "util-linux")
    nobody = pwd.getpwnam(SERVICE_USER)
    # Everything the service user must read, in a folder it can enter (pytest's tmp_path is root's, 0700).
    base = short_folder("su-")
    try:
        base.chmod(0o755)
        model, labels = (Path(shutil.copy(path, base)) for path in tiny_model)
        (base / "shm").mkdir(mode=0o1777)
        (base / "shm").chmod(0o1777)
        sections = tiny_sections(
            (model, labels),
            paths={"run_dir": str(base / "run"), "log_dir": str(base / "log"), "service_user": SERVICE_USER},
            queue={"shared_memory_dir": str(base / "shm")},
            devices={"cpu_workers": 1},
        )
        config = write_settings(base, sections)
        appliance = Appliance(base, config, sections["api"]["port"], base / "run", 1)
        appliance.service.argv = as_it_could_be_installed(
            ["setpriv", f"--groups={','.join(map(str, ROOTS_GROUPS))}", *appliance.service.argv], base
        )
        appliance.start()
        try:
            answer = requests.post(
                f"{appliance.url}/predict", files={"image": ("photo.png", photo_png)}, timeout=30
            )
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"], answer.text
            # supervisord's tree, and the relay of its output (orphaned at start: see relay_stdout).
            ours = set(descendants(appliance.pid)) | {
                int(entry.name)
                for entry in Path("/proc").iterdir()
                if entry.name.isdigit() and str(config) in ((identities(int(entry.name)) or ("",))[0])
            }
            seen = {pid: identities(pid) for pid in ours}
            processes = {pid: found for pid, found in seen.items() if found is not None}
            roles = {
                role: [pid for pid, (line, _) in processes.items() if piece in line]
                for role, piece in ROLES.items()
            }
            print(f"\n[service user {SERVICE_USER}] {roles}")
            assert all(roles.values()), f"every role runs: {roles}\n{processes}"
            expected = (nobody.pw_uid,) * 4 + (nobody.pw_gid,) * 4
            wrong = {pid: found for pid, found in processes.items() if found[1] != expected}
            assert not wrong, f"processes not running as {SERVICE_USER} alone (uids, gids, groups): {wrong}"
            # The job pixels' folder is the service user's, so its processes write and read it.
            folder = appliance.segment_folder()
            assert folder is not None and folder.stat().st_uid == nobody.pw_uid
            assert "cannot write to shared memory" not in appliance.log_text()
            # Every program's output still reaches the terminal (or file) root started it on.
            assert "Listening at: unix:" in appliance.log_text(), appliance.output()
            for folder in (base / "run", base / "log"):
                owners = {path: path.lstat().st_uid for path in (folder, *folder.rglob("*"))}
                assert set(owners.values()) == {nobody.pw_uid}, owners
            assert appliance.stop() == 0
            # The relay wrote the last line of all before it left.
            wait_until("the stop's last line", lambda: "inferd: stopped after" in appliance.log_text(), 10)
        finally:
            if appliance.service.proc is not None and appliance.service.proc.poll() is None:
                appliance.stop()
    finally:
        shutil.rmtree(base)
