"""A missing dependency fails the suite unless a developer asks for a skip, and `./setup.sh test` never asks.

Each check runs a real pytest on a one-test file that needs a program no machine has, and reads its outcome.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from testkit.harness import REPO
from tests.needs import ALLOW_MISSING_ENV

NEEDS_A_MISSING_PROGRAM = """
from tests.needs import need_program

def test_needs_it():
    need_program("inferd-no-such-program", "it exists nowhere")
"""


def outcome_of(tmp_path: Path, env: dict[str, str]) -> str:
    """The one-line summary pytest prints for a file with one test that needs a missing program."""
    test_file = tmp_path / "test_missing.py"
    test_file.write_text(NEEDS_A_MISSING_PROGRAM)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PYTHONPATH": str(REPO)},
    )
    return result.stdout.strip().splitlines()[-1]


def test_a_missing_program_fails_by_default(tmp_path):
    env = {key: value for key, value in os.environ.items() if key not in (ALLOW_MISSING_ENV, "CI")}
    summary = outcome_of(tmp_path, env)
    assert re.search(r"\b1 failed\b", summary), summary


def test_a_developer_may_turn_it_into_a_skip(tmp_path):
    summary = outcome_of(tmp_path, {**os.environ, ALLOW_MISSING_ENV: "1"})
    assert re.search(r"\b1 skipped\b", summary), summary


def test_setup_sh_test_clears_the_developer_opt_out():
    """The line of setup.sh that runs the suite drops the opt-out, whatever the caller's environment holds."""
    [line] = [line for line in (REPO / "setup.sh").read_text().splitlines() if "-m pytest" in line]
    assert f"env -u {ALLOW_MISSING_ENV} " in line, line


def test_every_skip_in_the_suite_goes_through_needs():
    """A plain pytest.skip (or skipif, importorskip) would pass a check that never ran under ./setup.sh test."""
    found = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path.name == "needs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in ("skip", "skipif", "importorskip", "xfail"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.attr}")
    assert not found, "use tests.needs instead of:\n" + "\n".join(found)
