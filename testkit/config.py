"""Settings files for tests, and the operator tools run against them from this checkout.

Kept apart from the process harness: a unit test that only needs a settings.toml should not import the
machinery that starts servers.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from testkit.harness import REPO, free_port

_short_base: Path | None = None


def short_folder(prefix: str = "inferd-") -> Path:
    """A new folder with a short path under /tmp, removed when this process ends (a test session, a bench run).

    Unix socket paths are limited to 107 bytes, so run dirs cannot live under pytest's deep tmp_path. Plain
    `mkdtemp` in /tmp left one folder behind per test (4,043 of them after a day of runs); these share one base
    folder per process, and the process removes it at exit. A SIGKILLed process leaves its base behind.
    """
    global _short_base
    if _short_base is None:
        _short_base = Path(tempfile.mkdtemp(prefix="inferd-runs-"))
        # Reachable by other users: the service-user tests give their folders to nobody.
        _short_base.chmod(0o755)
        atexit.register(_remove_short_base, _short_base, os.getpid())
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_short_base))


def private_paths_env(folder: Path, run_dir_prefix: str) -> dict[str, str]:
    """INFERD_* overrides that keep an appliance out of every other's way: a free port, a run dir of its own
    (short, under /tmp: unix socket paths are limited to 107 bytes) and its logs under `folder`."""
    return {
        "INFERD_API_PORT": str(free_port()),
        "INFERD_PATHS_RUN_DIR": str(short_folder(run_dir_prefix)),
        "INFERD_PATHS_LOG_DIR": str(folder / "log"),
    }


def _remove_short_base(base: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # not in a forked child that happens to exit through atexit
        shutil.rmtree(base, ignore_errors=True)


def write_settings(folder: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A settings.toml in `folder` from nested dicts (strings quoted, lists and numbers as TOML)."""

    def value(item: Any) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, str | Path):
            return '"' + str(item).replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(item, list):
            return "[" + ", ".join(value(v) for v in item) + "]"
        return str(item)

    lines = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {value(item)}" for key, item in values.items())
    path = folder / "settings.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_tool(
    name: str, config: Path, *args: str, env: dict[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m tools.NAME --config CONFIG ARGS` from the checkout, its output captured; `env` replaces the
    environment (None: this process's)."""
    return subprocess.run(
        [sys.executable, "-m", f"tools.{name}", "--config", str(config), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=env,
    )
