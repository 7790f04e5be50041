"""Started as root with `paths.service_user`, the launcher gives the run and log dirs to that user and becomes
it, with no supplementary groups, before it execs supervisord: nothing it starts runs as root. (The whole
appliance as `nobody` needs a checkout and a Python that `nobody` can read; where the Python lives under a
0700 /root, `inferd run` stops with exit 78 and says so.)"""

from __future__ import annotations

import os
import pwd

from daemon.ops.service_user import become_service_user
from daemon.settings import PathSettings, Settings
from tests.needs import need

SERVICE_USER = "nobody"


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
