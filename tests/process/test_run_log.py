"""`inferd run > run.log`: the log a redirected foreground appliance leaves is whole, ordered and calm, and
holds every line (the launcher's and ours log to stdout, where supervisord and its programs write).

The shell's `>` opens the file without O_APPEND. supervisord opens /dev/stdout anew (appending) for its
programs' output, while its own lines go through the shell's file description, whose offset only they move:
before the launcher set O_APPEND on it, each of supervisord's lines overwrote what the programs had written
since, and Redis's start lines were lost.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

from testkit.config import write_settings
from testkit.harness import Appliance
from tests.conftest import tiny_sections

pytestmark = pytest.mark.slow

SUPERVISORD_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (INFO|WARN|CRIT|ERRO|DEBG)")
ALARMS = re.compile(r"\bCRIT\b|\[crit\]|\[emerg\]|\[alert\]|cuInit|Traceback|Not started|WARN stopped")


def test_a_log_redirected_with_a_plain_redirect_is_whole_ordered_and_calm(tmp_path: Path, tiny_model):
    sections = tiny_sections(tiny_model, devices={"cpu_workers": 1})
    config = write_settings(tmp_path, sections)
    appliance = Appliance(tmp_path, config, sections["api"]["port"], Path(sections["paths"]["run_dir"]), 1)
    appliance.service.log_mode = "wb"  # as `inferd run > run.log` opens it ...
    appliance.service.stderr_path = tmp_path / "terminal.txt"  # ... leaving stderr on the terminal
    try:
        appliance.start()
        # Early /readyz polls happened during start (the readiness wait); one more request now.
        assert requests.get(f"{appliance.url}/readyz", timeout=5).status_code == 200
        appliance.wait_until("the ready line", lambda: "inferd: ready at" in appliance.log_path.read_text())
    finally:
        code = appliance.stop()
    assert code == 0, appliance.output()
    # Everything went into the log, ours included: nothing was left on the terminal.
    assert (tmp_path / "terminal.txt").read_text() == ""
    raw = appliance.log_path.read_bytes()
    assert b"\0" not in raw, "a writer left a hole in the log: it wrote at an offset behind the end"
    lines = raw.decode().splitlines()
    text = "\n".join(lines)

    # Whole: each program's start and stop lines are there, Redis's first among them.
    for expected in (
        "Redis is starting",
        "Server initialized",
        "ready to accept connections",
        "spawned: 'nginx'",
        "Listening at: unix:",
        "cpu0: serving on CPU",
        "Redis is now ready to exit, bye bye",
        "stopped: redis (exit status 0)",
    ):
        assert expected in text, f"{expected!r} is missing from the log:\n{text}"
    # Ordered: supervisord's own lines (every one through the shell's description) keep their time order.
    stamps = [match.group(1) for line in lines if (match := SUPERVISORD_LINE.match(line))]
    assert stamps == sorted(stamps), text
    # Calm, and ours at both ends: one line when ready (URL, shards, model), the last one when stopped.
    # supervisord's one CRIT at start, explained by a line of ours just before it (its socket needs no password).
    alarms = [line for line in lines if ALARMS.search(line) and "HTTP authentication" not in line]
    assert not alarms, text
    assert "inferd: supervisord will log CRIT that its control socket has no HTTP authentication" in text
    ready = [line for line in lines if "inferd: ready at" in line]
    assert len(ready) == 1 and f"{appliance.url}: 1 shard(s) live [cpu0], model " in ready[0], text
    assert "inferd: stopped after" in lines[-1], text
