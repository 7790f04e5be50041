"""The benchmark end to end at tiny sizes: every component starts and answers, and the report is written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.frontdoor import FrontDoorPoint
from bench.offline import OfflinePoint
from bench.report import render_markdown, summary, write_frontdoor_section, write_report
from bench.results import BenchResults
from bench.run import PHASES
from bench.sections import end_marker, start_marker
from bench.simulated import SimResult
from bench.wrk import WrkResult
from testkit.harness import REPO


@pytest.mark.slow
@pytest.mark.timeout(360)
def test_quick_benchmark_runs_every_phase_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "bench.run",
        "--quick",
        # The peers phase needs the bench-peers extra, which `./setup.sh test` does not install: its own
        # tests (tests/unit/bench/test_peers.py) cover it, and a box that has it runs no slower here.
        "--phases",
        # The floors phase has its own smoke test (tests/process/bench/test_floors.py).
        ",".join(phase for phase in PHASES if phase not in ("peers", "floors")),
        "--out-dir",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=340, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    results = json.loads((out / "results.json").read_text())

    assert [p["batch_size"] for p in results["offline"]] == [1, 4]
    assert all(p["images_per_s"] > 0 for p in results["offline"])
    assert [s["clients"] for s in results["served"]] == [1, 4]
    assert {t["system"] for t in results["tiny"]} == {"inferd", "decode-only", "old design"}
    for load in results["served"] + results["tiny"]:
        assert load["rps"] > 0 and load["errors"] == 0, load
    assert [s["shards"] for s in results["scaling"]] == [1, 2]
    assert {p["policy"] for p in results["policies"]} == {"round_robin", "shortest_queue"}
    for sim in results["scaling"] + results["policies"]:
        assert sim["jobs_per_s"] > 0 and sim["failed"] == 0, sim
        assert len(sim["per_shard"]) == sim["shards"], sim
    roles = {g["role"] for g in results["soak"]["growth"]}
    assert {"supervisord", "redis", "api-master", "api-worker-0", "worker-0"} <= roles
    assert results["soak"]["redis_bound_mb"] > results["soak"]["redis_peak_mb"] > 0

    assert [(p["shards"], p["clients"]) for p in results["frontdoor"]] == [(1, 4), (2, 4), (2, 16)]
    for point in results["frontdoor"]:
        assert point["inferd"]["rps"] > 0 and point["inferd"]["errors"] == 0, point
        assert point["ceiling"]["rps"] > 0 and point["api_threads"] >= 16, point
        assert len(point["mean_batch"]) == point["shards"], point
        assert {"api", "redis", "workers"} <= set(point["cpu_ms_per_request"]), point
        assert point["cpu_ms_per_request"]["redis"] > 0 and point["redis_us_per_request"], point

    markdown = (out / "RESULTS.md").read_text()
    for heading in ("## Targets", "## (a)", "## (b)", "## (f)", "## (d)", "## (e)", "## (g)", "## (h)"):
        assert heading in markdown
    assert "| clients | req/s | p50 (ms) |" in markdown
    assert (out / "results.png").read_bytes().startswith(b"\x89PNG")
    assert "inferd benchmark summary" in done.stdout
    assert "added latency at 1 client" in done.stdout
    assert "one Redis's projected jobs/s" in done.stdout


def test_a_full_report_keeps_the_sections_other_runs_wrote(tmp_path):
    markdown = tmp_path / "RESULTS.md"
    kept = f"{start_marker('gpu-proof')}\nGPU figures\n{end_marker('gpu-proof')}\n"
    markdown.write_text(f"# old report\n\n{kept}")
    write_report(BenchResults(meta={"date": "today"}), markdown, tmp_path / "results.png")
    text = markdown.read_text()
    assert "# old report" not in text and text.count(kept) == 1


def test_a_frontdoor_run_replaces_only_its_own_section(tmp_path):
    markdown = tmp_path / "RESULTS.md"
    markdown.write_text(
        f"# report\n\nkept\n\n{start_marker('frontdoor')}\nstale\n{end_marker('frontdoor')}\n"
    )
    results = BenchResults(meta={"date": "today", "command": "python -m bench.run --phases frontdoor"})
    results.frontdoor = [
        FrontDoorPoint(
            8,
            64,
            "auto",
            256,
            _load("inferd", "jpeg", 64, 900.0),
            _load("decode-only", "jpeg", 64, 1000.0),
            7000.0,
            {"cpu0": 3.0},
            {"api": 2.0, "redis": 0.25},
        )
    ]
    write_frontdoor_section(results, markdown)
    text = markdown.read_text()
    assert text.startswith("# report\n\nkept\n") and "stale" not in text
    assert "From its own run, not the one above: `python -m bench.run --phases frontdoor`" in text
    assert "| 8 | 64 | auto (256) | 900 | 1,000 | 90% | 56,000 | 1,000 |" in text
    assert "one Redis core would carry about **4,000 jobs/s**" in text


def _load(system: str, image: str, clients: int, rps: float) -> WrkResult:
    return WrkResult(system, image, clients, 10.0, int(rps * 10), 0, rps, 10.0, 12.0, 15.0, 11.0)


def _sim(shards: int, jobs_per_s: float) -> SimResult:
    per_shard = {f"sim{i}": int(jobs_per_s) for i in range(shards)}
    return SimResult("scaling", shards, "round_robin", 24 * shards, jobs_per_s, 80.0, 140.0, per_shard, 0, 0)


def test_report_judges_each_target_from_its_figures():
    results = BenchResults(meta={"date": "today", "machine": "test"})
    results.offline = [OfflinePoint(1, 60.0, 16.0, 100), OfflinePoint(8, 110.0, 72.0, 100)]
    results.served = [_load("inferd", "jpeg", 1, 50.0), _load("inferd", "jpeg", 64, 100.0)]
    results.served[0] = WrkResult("inferd", "jpeg", 1, 10.0, 500, 0, 50.0, 19.0, 20.0, 22.0, 19.5)
    results.tiny = [
        _load("inferd", "png", 64, 240.0),
        _load("decode-only", "png", 64, 300.0),
        _load("old design", "png", 64, 30.0),
    ]
    results.scaling = [_sim(1, 260.0), _sim(8, 2000.0)]

    lines = summary(results).splitlines()

    assert (
        "[PASS] default model served at 64 clients / offline best: 100.0 / 110.0 img/s = 90.9% (goal >= 90%)"
        in lines
    )
    assert "[PASS] tiny model PNG at 64 clients / decode-only ceiling: 80.0% (goal >= 75%)" in lines
    assert "[FAIL] tiny model PNG at 64 clients / old design: 8.0x (goal >= 10x)" in lines
    assert "[ n/a] tiny model JPEG at 64 clients / old design: not measured (goal >= 10x)" in lines
    assert "[PASS] added latency at 1 client (served p50 - batch-1 inference): 3.0 ms (goal <= 5 ms)" in lines
    assert "[PASS] 8 simulated shards / 8x one shard: 96.2% (goal >= 90%)" in lines
    markdown = render_markdown(results, "results.png")
    assert "| 64 | 240.0 (10 / 15 ms) | 300.0 (10 / 15 ms) | 30.0 (10 / 15 ms) | 80% | 8.0x |" in markdown
    assert "| 8 | 192 | 2,000.0 | 2,080.0 | 96% | 80.0 | 140.0 | 0 |" in markdown
