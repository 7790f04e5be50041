"""Run the appliance as `paths.service_user` when started as root: its run and log dirs given to that user first."""

from __future__ import annotations

import logging
import os
import pwd

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
    os.environ.update({"HOME": user.pw_dir, "USER": name, "LOGNAME": name})
    log.info("inferd: running as %s (uid %d), not root", name, user.pw_uid)
