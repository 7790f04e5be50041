"""Benchmark phase (i), inferd beside its peers: pausing idle systems, CPU by role, targets and its section.

LitServe and BentoML are a bench-only extra (`./setup.sh bench`), so nothing here starts them: the processes
are plain Python trees standing in for a running system, and the figures are written by hand.
"""

from __future__ import annotations

import sys

import pytest

from bench import peers, phases
from bench.peers import Contender, Peer, PeerResult, alone, peer_cpu_by_role
from bench.report import render_markdown, summary, write_peers_section
from bench.results import BenchResults
from bench.sections import end_marker, start_marker
from bench.wrk import WrkResult
from testkit.harness import Service
from testkit.proctree import read_stat, tree

TWO_CHILDREN = (
    "import subprocess, sys, time; "
    "[subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']) for _ in range(2)]; "
    "time.sleep(600)"
)


@pytest.fixture
def system_tree(tmp_path):
    """A parent with two children, as LitServe's launcher with its spawned servers and workers."""
    service = Service("system", [sys.executable, "-c", TWO_CHILDREN], tmp_path / "system.log")
    service.start().wait_until("its children", lambda: len(tree(service.pid)) == 3, 30)
    yield service
    service.stop(10)


def states(root: int) -> list[str]:
    """The /proc state letter of every process in the tree ('T': stopped)."""
    return [stat.state for p in tree(root) if (stat := read_stat(p.pid)) is not None]


def no_cpu() -> dict[int, tuple[str, float]]:
    return {}


def test_the_idle_peer_is_stopped_while_inferd_is_measured_and_runs_in_its_own_turn(system_tree):
    inferd = Contender("inferd", "http://127.0.0.1:1/predict", no_cpu)
    peer = Contender("litserve", "http://127.0.0.1:2/predict", no_cpu, pause_root=system_tree.pid)
    with alone(inferd, [inferd, peer]):
        assert states(system_tree.pid) == ["T", "T", "T"]
    assert "T" not in states(system_tree.pid)
    with alone(peer, [inferd, peer]):
        assert "T" not in states(system_tree.pid)


def test_the_peers_cpu_is_split_into_its_inference_workers_its_api_servers_and_the_launcher(
    system_tree, tmp_path
):
    launcher, first, second = (p.pid for p in tree(system_tree.pid))
    pids = tmp_path / "worker-pids"
    pids.mkdir()
    (pids / str(second)).touch()  # as each model worker does once its model is warm
    roles = {pid: role for pid, (role, _seconds) in peer_cpu_by_role(launcher, pids).items()}
    assert roles == {launcher: "other", first: "api", second: "workers"}


def _load(system: str, clients: int, rps: float) -> WrkResult:
    return WrkResult(system, "jpeg", clients, 10.0, int(rps * 10), 0, rps, 10.0, 12.0, 15.0, 11.0)


def test_inferd_must_be_ahead_of_each_peer_at_every_client_count_and_the_section_shows_why():
    results = BenchResults(meta={"date": "today", "peers_software": {"litserve": "litserve 0.2.19"}})
    cpu = {"api": 3.0, "redis": 0.5, "workers": 2.0}
    for clients, ours, theirs in ((1, 60.0, 50.0), (16, 200.0, 250.0), (64, 250.0, 250.0)):
        results.peers += [
            PeerResult(_load("inferd", clients, ours), cpu),
            PeerResult(_load("litserve", clients, theirs), {"api": 2.0, "workers": 4.5, "other": 0.0}),
            PeerResult(_load("bentoml", clients, 100.0), {"workers": 9.0, "other": 0.1}),
        ]

    lines = summary(results).splitlines()

    assert (
        "[PASS] tiny model at 224, 1 client(s): inferd / litserve req/s: 60.0 / 50.0 req/s = 1.20x (goal > 1x)"
        in lines
    )
    assert (
        "[FAIL] tiny model at 224, 16 client(s): inferd / litserve req/s: 200.0 / 250.0 req/s = 0.80x (goal > 1x)"
        in lines
    )
    assert (
        "[FAIL] tiny model at 224, 64 client(s): inferd / litserve req/s: 250.0 / 250.0 req/s = 1.00x (goal > 1x)"
        in lines
    )
    assert (
        "[PASS] tiny model at 224, 64 client(s): inferd / bentoml req/s: 250.0 / 100.0 req/s = 2.50x (goal > 1x)"
        in lines
    )
    markdown = render_markdown(results, "results.png")
    assert "## (i) inferd beside LitServe and BentoML on the same work" in markdown
    assert "| clients | inferd | litserve | bentoml | inferd / litserve | inferd / bentoml |" in markdown
    assert "| 16 | 200.0 (10 / 15 ms) | 250.0 (10 / 15 ms) | 100.0 (10 / 15 ms) | 0.80x | 2.00x |" in markdown
    assert "| system | clients | api | workers | redis | other | all | cores used |" in markdown
    assert "| inferd | 64 | 3.00 | 2.00 | 0.50 | - | 5.50 | 1.38 |" in markdown
    assert "| litserve | 1 | 2.00 | 4.50 | - | 0.00 | 6.50 | 0.33 |" in markdown
    assert "| bentoml | 16 | - | 9.00 | - | 0.10 | 9.10 | 0.91 |" in markdown


def test_a_missing_peer_is_left_out_in_one_line_and_without_any_the_phase_is_skipped(tmp_path, monkeypatch):
    absent = Peer("inferd_no_such_peer_package", "bench.no_such_module", "/health", (), "-")
    monkeypatch.setattr(peers, "PEERS", (absent,))
    missing = peers.missing(absent)
    assert missing is not None and missing.startswith("inferd_no_such_peer_package is not installed")
    assert "bench-peers" in missing

    results = BenchResults(meta={"date": "today", "command": "python -m bench.run --phases peers"})
    phases.measure_peers(results, tmp_path / "peers", tmp_path / "photo.jpg", peers.QUICK_PLAN)
    assert results.peers == [] and results.meta["peers_missing"] == [missing]

    assert f"[ n/a] tiny model at 224: inferd / each peer's req/s: {missing} (goal > 1x)" in summary(results)
    markdown = tmp_path / "RESULTS.md"
    markdown.write_text(f"# report\n\nkept\n\n{start_marker('peers')}\nstale\n{end_marker('peers')}\n")
    write_peers_section(results, markdown)
    text = markdown.read_text()
    assert text.startswith("# report\n\nkept\n") and "stale" not in text
    assert f"Left out: {missing}." in text and "Skipped: no peer is installed." in text
    assert "From its own run, not the one above: `python -m bench.run --phases peers`" in text
