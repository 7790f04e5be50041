"""Named sections of bench/RESULTS.md that separate runs own: `<!-- name:start -->` ... `<!-- name:end -->`.

`make gpu-proof` and a run of only the front-door phase each replace their own section and keep the rest of
the file; a full run rewrites the file but carries over the sections it did not measure itself.
"""

from __future__ import annotations

import re

MARKER = re.compile(r"<!-- ([a-z0-9-]+):start -->")


def start_marker(name: str) -> str:
    return f"<!-- {name}:start -->"


def end_marker(name: str) -> str:
    return f"<!-- {name}:end -->"


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        re.escape(start_marker(name)) + r".*?" + re.escape(end_marker(name)) + r"\n?", re.DOTALL
    )


def replace_section(document: str, name: str, section: str) -> str:
    """`document` with its section `name` replaced by `section` (appended when there is none)."""
    pattern = _pattern(name)
    if pattern.search(document):
        return pattern.sub(lambda _: section, document, count=1)
    return document.rstrip("\n") + "\n\n" + section


def carry_sections(previous: str, document: str) -> str:
    """`document` plus every named section of `previous` that it does not hold itself."""
    for name in MARKER.findall(previous):
        if start_marker(name) not in document:
            found = _pattern(name).search(previous)
            if found is not None:
                document = replace_section(document, name, found.group(0))
    return document
