"""The process harness stops whole trees: children in sessions of their own, and parents that ignore SIGTERM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.harness import OUTPUT_CHARS, Service, wait_until
from testkit.proctree import ProcessId, alive, read_stat, tree

# A child in a session (so a process group) of its own, as supervisord starts each program.
START_CHILD = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
)
IGNORE_TERM = "import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); "


def started_with_child(tmp_path: Path, code: str) -> Service:
    service = Service("parent", [sys.executable, "-c", code + "time.sleep(600)"], tmp_path / "parent.log")
    service.start().wait_until("its child", lambda: len(tree(service.pid)) == 2, 30)
    return service


def test_stop_kills_what_the_group_signal_missed_and_says_so(tmp_path):
    service = started_with_child(tmp_path, START_CHILD)
    processes = set(tree(service.pid))
    assert service.stop(10) == -15  # the parent left on SIGTERM ...
    assert not service.killed
    (child,) = {p for p in processes if p.pid != service.pid}
    assert service.leftovers == [child.pid]  # ... its child, in another group, did not see it
    assert alive(processes) == set()


def test_a_hung_stop_kills_the_whole_tree(tmp_path):
    service = started_with_child(tmp_path, IGNORE_TERM + START_CHILD)
    processes = set(tree(service.pid))
    assert service.stop(1) == -9
    assert service.killed
    assert alive(processes) == set()


def test_a_wait_fails_loudly_with_the_log_when_the_process_exits(tmp_path):
    service = Service(
        "quitter", [sys.executable, "-c", "print('bad settings'); raise SystemExit(78)"], tmp_path / "q.log"
    )
    with service, pytest.raises(AssertionError, match="quitter exited with 78:\nbad settings"):
        service.wait_until("never", lambda: False, 30)
    with pytest.raises(AssertionError, match=r"timed out after 0\.3s waiting for nothing"):
        wait_until("nothing", lambda: False, 0.3)


def test_a_line_logged_early_is_found_after_a_long_log_and_a_failure_shows_only_the_end(tmp_path):
    """A test that looks for a line reads the whole log; a failure message shows its end (CI once failed
    a test whose sweep line had scrolled out of the end it searched)."""
    code = f"print('the early line'); print('x' * {OUTPUT_CHARS * 2})"
    with Service("talker", [sys.executable, "-c", code], tmp_path / "t.log") as service:
        assert service.wait_exit(30) == 0
    assert "the early line" in service.log_text()
    assert len(service.log_text()) > OUTPUT_CHARS * 2
    assert service.output() == service.log_text()[-OUTPUT_CHARS:]
    assert service.log_text().index("the early line") < len(service.log_text()) - OUTPUT_CHARS  # not shown


def test_a_wait_that_times_out_shows_the_error_its_polls_hit():
    """The errors a wait rides over while the thing starts are kept: the last one is the failure's cause."""
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, never listening: every connect is refused
    port = refused.getsockname()[1]
    with refused, pytest.raises(AssertionError) as failure:
        wait_until("a port that refuses", lambda: bool(socket.create_connection(("127.0.0.1", port))), 0.3)
    assert "last error: ConnectionRefusedError(111, 'Connection refused')" in str(failure.value)
    assert isinstance(failure.value.__cause__, ConnectionRefusedError)


def test_the_stat_reader_survives_a_command_name_with_spaces_and_parentheses():
    """The one /proc/<pid>/stat reader (testkit.proctree.read_stat) that the harness, the benchmark's CPU
    figures and the tests share: a name such as nginx's "nginx: worker process" cannot shift its fields."""
    rename = "open('/proc/self/comm', 'w').write('a) b (c'); print(flush=True); import time; time.sleep(600)"
    child = subprocess.Popen([sys.executable, "-c", rename], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"\n"  # renamed by now
        assert Path(f"/proc/{child.pid}/comm").read_text() == "a) b (c\n"
        stat = read_stat(child.pid)
        assert stat is not None and stat.parent == os.getpid() and stat.state in "RSD"
        assert stat.started > 0 and stat.cpu_s >= 0.0
        assert ProcessId(child.pid, stat.started) in tree(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert read_stat(child.pid) is None
