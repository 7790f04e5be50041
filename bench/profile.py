"""py-spy profiles of running processes, summarised as the functions that hold the CPU.

py-spy samples from outside (ptrace), so the profiled processes run unmodified; it is optional: without it
the benchmark runs and says the profile was skipped.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 100
TOP_FUNCTIONS = 12


@dataclass(frozen=True, slots=True)
class ProfileSummary:
    name: str
    samples: int
    raw_path: str
    top_self: list[tuple[str, float]]
    """(function (file:line), share of samples in percent) where the CPU was, most first."""


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def start_recording(name: str, pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes] | None:
    """Start py-spy on `pid` and its children for `seconds`; None if py-spy is not installed."""
    tool = py_spy()
    if tool is None:
        log.warning("bench: py-spy not installed; no profile of %s", name)
        return None
    argv = [tool, "record", "--pid", str(pid), "--subprocesses", "--duration", str(max(1, round(seconds)))]
    argv += ["--rate", str(SAMPLE_RATE_HZ), "--format", "raw", "--nonblocking", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_recording(name: str, proc: subprocess.Popen[bytes] | None, out: Path) -> ProfileSummary | None:
    if proc is None:
        return None
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode != 0 or not out.exists():
        log.warning(
            "bench: py-spy on %s failed (%s): %s", name, proc.returncode, stderr.decode(errors="replace")
        )
        return None
    return summarise(name, out)


def summarise(name: str, folded: Path) -> ProfileSummary:
    """Self samples per leaf frame from py-spy's folded stacks ('frame;frame;leaf count' per line)."""
    leaves: Counter[str] = Counter()
    total = 0
    for line in folded.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        leaves[shorten(leaf)] += int(count)
        total += int(count)
    top = (
        [(leaf, 100.0 * count / total) for leaf, count in leaves.most_common(TOP_FUNCTIONS)] if total else []
    )
    return ProfileSummary(name=name, samples=total, raw_path=str(folded), top_self=top)


def shorten(frame: str) -> str:
    """'func (/long/path/site-packages/pkg/mod.py:12)' -> 'func (pkg/mod.py:12)'."""
    function, _, where = frame.partition(" (")
    parts = where.rstrip(")").split("/")
    return f"{function} ({'/'.join(parts[-2:])})" if where else function
