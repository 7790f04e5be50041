"""No module passes 400 lines without saying why at its top (STYLE: a file that passes 400 lines is asking to
be split)."""

from __future__ import annotations

from testkit.harness import REPO

LIMIT = 400
REASON = "Why past 400 lines:"
"""The phrase a long module's docstring uses to give its reason."""


def test_every_long_module_says_why_it_is_long():
    unexplained = []
    for top in ("daemon", "tools", "testkit", "bench", "tests"):
        for path in sorted((REPO / top).rglob("*.py")):
            text = path.read_text()
            if text.count("\n") > LIMIT and REASON not in text[:3000]:
                unexplained.append(f"{path.relative_to(REPO)}: {text.count(chr(10))} lines")
    assert unexplained == [], f"over {LIMIT} lines with no '{REASON}' at the top: {unexplained}"
