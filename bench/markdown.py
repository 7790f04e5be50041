"""The pieces every section of bench/RESULTS.md is written with: tables, numbers and load cells."""

from __future__ import annotations

import math
from typing import Any

from bench.wrk import WrkResult


def table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def load_cell(result: WrkResult | None) -> str:
    if result is None:
        return "-"
    errors = f", {result.errors} errors" if result.errors else ""
    return f"{result.rps:,.1f} ({result.p50_ms:,.0f} / {result.p99_ms:,.0f} ms{errors})"


def own_run_note(meta: dict[str, Any]) -> str:
    """The line under a section that a run of its phase alone wrote, saying which run that was."""
    return (
        f"From its own run, not the one above: `{meta.get('command', '-')}` on {meta.get('date', '-')} "
        f"({meta.get('wall_s', 0):.0f} s; {meta.get('machine', '-')}). {meta.get('sharing', '')}."
    )
