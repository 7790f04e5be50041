"""`systemctl stop` waits as long as supervisord may take to stop everything, and the README says how long.

supervisord stops its groups one at a time, highest priority first, and gives each up to its `stopwaitsecs`
before SIGKILL (supervisord.Supervisor.ordered_stop_groups_phase_1); the processes of one group stop together.
The worst case is the sum over groups, which the unit's TimeoutStopSec must cover.
"""

from __future__ import annotations

import configparser

from daemon.launcher import DRAIN_STOP_SLACK_S
from daemon.settings import ApiSettings
from testkit.harness import REPO


def worst_stop_s() -> int:
    conf = configparser.RawConfigParser()
    conf.read(REPO / "conf" / "supervisord.conf")
    env = {"%(ENV_INFERD_DRAIN_STOPWAIT_S)s": str(int(ApiSettings().drain_grace_s) + DRAIN_STOP_SLACK_S)}
    waits = [
        int(env.get(conf[section]["stopwaitsecs"], conf[section]["stopwaitsecs"]))
        for section in conf.sections()
        if section.startswith(("program:", "eventlistener:"))
    ]
    return sum(waits)


def unit_setting(name: str) -> str:
    for line in (REPO / "systemd" / "inferd.service").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"no {name}= in systemd/inferd.service")


def test_the_unit_waits_as_long_as_supervisord_may_take_to_stop():
    assert int(unit_setting("TimeoutStopSec")) >= worst_stop_s()


def test_the_documentation_gives_the_same_worst_case():
    texts = [path.read_text() for path in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]]
    assert any(f"(up to {worst_stop_s()} s" in text for text in texts), worst_stop_s()
