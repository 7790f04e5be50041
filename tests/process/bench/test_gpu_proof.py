"""`make gpu-proof` in its quick CPU mode on the tiny model: the whole path runs here, and its section of the
results file is written, replacing the previous one and keeping everything else."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.gpu_proof import SECTION_END, SECTION_START, replace_section
from testkit.config import write_settings
from testkit.harness import REPO
from tests.conftest import tiny_sections


def test_replace_section_keeps_the_rest_of_the_document():
    old = f"# Results\n\nbefore\n\n{SECTION_START}\nold figures\n{SECTION_END}\nafter\n"
    new = f"{SECTION_START}\nnew figures\n{SECTION_END}\n"
    assert replace_section(old, new) == f"# Results\n\nbefore\n\n{new}after\n"
    assert replace_section("# Results\n", new) == f"# Results\n\n{new}"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_cpu_gpu_proof_writes_its_section(tmp_path, tiny_model):
    config = write_settings(tmp_path, tiny_sections(tiny_model))
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Benchmark\n\nkept\n\n{SECTION_START}\nstale\n{SECTION_END}\n")
    argv = [sys.executable, "-m", "bench.gpu_proof", "--quick", "--cpu", "--config", str(config)]
    argv += ["--results", str(results), "--work-dir", str(tmp_path / "work"), "--backend", "tensorflow"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    text = results.read_text()
    assert text.startswith("# Benchmark\n\nkept\n\n") and "stale" not in text
    assert text.count(SECTION_START) == 1 and text.rstrip().endswith(SECTION_END)
    assert "- backend: tensorflow; offline device: CPU (cpu0" in text
    assert "No GPU was at hand for this run" in text
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 4 |")]
    assert len(rows) == 4, text  # batch 1 and 4 offline, 1 and 4 clients served
    served = [line.split("|") for line in rows[2:]]
    assert all(float(cells[2]) > 0 for cells in served), text
