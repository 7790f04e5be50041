"""Tests and the bench look for a logged line in the whole log (`log_text`), never in `output`, which is only
the log's last OUTPUT_CHARS for a failure message.

CI once failed test_shared_memory's sweep check this way: the sweep had logged its line, but the 504s and
respawned API workers logged after it pushed that line out of the end the test searched.
"""

from __future__ import annotations

import re
from pathlib import Path

from testkit.harness import REPO

SEARCH_IN_THE_END = re.compile(
    r"\bin \w+\.output\(\)"  # "line" in appliance.output()
    r"|\w+\.output\(\)\.(count|index|find|splitlines)\("  # appliance.output().count("line")
    r"|\(\w+\.output\(\)\)"  # PATTERN.findall(appliance.output())
    r"|= \w+\.output\(\)$"  # log = appliance.output(), then searched
)


def searches_in_the_end(source: str) -> list[str]:
    return [line.strip() for line in source.splitlines() if SEARCH_IN_THE_END.search(line)]


def test_the_pattern_sees_each_way_of_searching_the_end():
    assert searches_in_the_end('    assert "swept" in appliance.output()') != []
    assert searches_in_the_end('    assert "x" not in worker.output(), worker.output()') != []
    assert searches_in_the_end("    n = appliance.output().count('spawned')") != []
    assert searches_in_the_end("    found = PATTERN.findall(appliance.output())") != []
    assert searches_in_the_end("    log = appliance.output()") != []
    # Showing the end in a failure message is what `output` is for.
    assert searches_in_the_end("    assert code == 0, appliance.output()") == []
    assert searches_in_the_end("    wait_until('ready', ready, 30, appliance.output)") == []
    assert searches_in_the_end('    assert "swept" in appliance.log_text(), appliance.output()') == []


def test_no_test_or_bench_searches_only_the_end_of_a_log():
    found = {
        f"{path.relative_to(REPO)}: {line}"
        for folder in ("tests", "bench", "testkit", "tools")
        for path in (REPO / folder).rglob("*.py")
        if path != Path(__file__)
        for line in searches_in_the_end(path.read_text())
    }
    assert found == set(), "search log_text() (the whole log); output() is the end, for failure messages"
