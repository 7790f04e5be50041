"""Run the appliance as `paths.service_user` when started as root: its run and log dirs given to that user first."""

from __future__ import annotations

import logging
import os
import pwd
import signal
import stat

from daemon.settings import Settings

log = logging.getLogger(__name__)


def become_service_user(settings: Settings) -> None:
    """Started as root with `paths.service_user` set: give the run and log dirs to that user and become it,
    so supervisord and everything it starts run without root. As root without it, say what that means."""
    if os.geteuid() != 0:
        return
    name = settings.paths.service_user
    if not name:
        log.warning(
            "inferd: running as root: Redis, nginx, the API and the workers all run as root; set "
            "paths.service_user (e.g. nobody, or the inferd user `make install` makes) to run them as that user"
        )
        return
    user = pwd.getpwnam(name)
    for folder in (settings.paths.run_dir, settings.paths.log_dir):
        for path in (folder, *folder.rglob("*")):
            os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    os.setgroups([])
    os.setgid(user.pw_gid)
    os.setuid(user.pw_uid)
    # INFERD_UID is supervisord's `user`: left at root's 0, supervisord (now this user) refuses to start.
    os.environ.update({"HOME": user.pw_dir, "USER": name, "LOGNAME": name, "INFERD_UID": str(user.pw_uid)})
    log.info("inferd: running as %s (uid %d), not root", name, user.pw_uid)
    relay_stdout()


def relay_stdout() -> None:
    """Put a pipe of this user's on stdout and stderr, copied to the real stdout by a process of this user.

    supervisord opens /dev/stdout anew for its programs' output, and nginx opens stderr by name: on root's
    terminal, or a file root made (`inferd run > run.log`), that open fails with EACCES once root is dropped,
    and no program starts. The descriptor root opened stays writable after the drop, so one process keeps it
    and copies; it leaves when the last writer (supervisord and its programs) has closed the pipe."""
    if stat.S_ISSOCK(os.fstat(1).st_mode):
        return  # systemd's journal: the programs log to syslog and nothing reopens stdout
    sys_stdout = os.dup(1)
    readable, writable = os.pipe()
    go_between = os.fork()
    if go_between == 0 and os.fork() != 0:  # pragma: no cover - a go-between that leaves at once
        os._exit(0)
    if go_between == 0:  # pragma: no cover - the relay, until end of file
        # Orphaned at once, so it is no child of supervisord's: when supervisord has exited, nothing of its
        # tree is left, while the relay still writes the last lines out and leaves.
        os.close(writable)
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)  # a Ctrl-C stops the appliance; its last lines still arrive
        try:
            while chunk := os.read(readable, 65536):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(sys_stdout, view) :]
        finally:
            os._exit(0)
    os.waitpid(go_between, 0)
    os.close(readable)
    os.close(sys_stdout)
    os.dup2(writable, 1)
    os.dup2(writable, 2)
    os.close(writable)
