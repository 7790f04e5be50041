"""Settings files for tests, and the operator tools run against them from this checkout.

Kept apart from the process harness: a unit test that only needs a settings.toml should not import the
machinery that starts servers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from testkit.harness import REPO


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
