"""The console examples of README.md and docs/*.md, run against a default appliance: their output keeps its shape.

Every ```console block is read; each `$ command` in it runs in a shell from the checkout, against an
appliance started as `./setup.sh run` starts one (the embedded model, one CPU shard), with `localhost:8000`
and the run dir made the test's. What it prints is compared with the lines the document shows under it:
- a JSON line must have the same keys, the same types and the same strings (numbers may differ);
- any other line must read the same with every number masked and runs of spaces made one;
- the shown lines must appear in order; for a `curl -i` the others (headers left out) may come between.
A command that cannot run here (another machine, a reload that takes minutes, writing /etc) is listed in
SKIPPED with the reason, so that a new example is either checked or knowingly left out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testkit.harness import REPO
from tests.process.conftest import default_model_section

pytestmark = pytest.mark.slow

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SKIPPED = {
    "tools/haproxy_config gpu-a.lan:8000 gpu-b.lan:8000 --weights 8,2 > /etc/haproxy/haproxy.cfg": (
        "writes /etc; test_the_haproxy_example_is_what_the_tool_prints runs it without the redirect"
    ),
    "inferd reload --model /tmp/msdemo/models-v2/efficientnet-lite0.keras --labels "
    "/tmp/msdemo/models-v2/imagenet-labels.txt": "minutes per shard on a CPU; tests/process/test_model_swap.py",
    "inferd reload --model /tmp/msdemo/broken.keras --labels /tmp/msdemo/models-v2/imagenet-labels.txt": (
        "part of the reload example above"
    ),
    "inferd reload --model /tmp/msdemo/models-v2/efficientnet-lite0.keras --labels /tmp/msdemo/five-labels.txt": (
        "part of the reload example above"
    ),
    "curl -si -F image=@samples/coffee.jpg localhost:8000/predict": "answers version 2 after the reload above",
    "curl -s localhost:8000/metrics | grep ^inferd_shard_model_version": "two shards after the reload above",
}
"""Commands not run, each with the reason."""
UNORDERED = {
    "curl -s localhost:8000/metrics | grep ^nv_": "families come in the order the API's processes made them",
}
"""Commands whose lines may come in any order, each with the reason."""
NUMBER = re.compile(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?")


@dataclass(frozen=True)
class Example:
    document: str
    command: str
    shown: list[str]


def examples() -> Iterator[Example]:
    """Every `$ command` of every console block, with the lines shown under it."""
    for document in DOCUMENTS:
        block: list[str] | None = None
        for line in document.read_text().splitlines():
            if block is None:
                block = [] if line.strip() == "```console" else None
            elif line.strip() == "```":
                yield from commands_of(document.relative_to(REPO).as_posix(), block)
                block = None
            else:
                block.append(line)


def commands_of(document: str, block: list[str]) -> Iterator[Example]:
    current: Example | None = None
    for line in (line.strip() for line in block):  # a block in a list item is indented
        if line.startswith("$ "):
            if current is not None:
                yield current
            current = Example(document, line[2:], [])
        elif current is not None and line.strip():
            current.shown.append(line)
    if current is not None:
        yield current


def masked(line: str) -> str:
    return " ".join(NUMBER.sub("#", line).split())


def same_shape(shown: Any, got: Any) -> bool:
    if isinstance(shown, dict):
        return (
            isinstance(got, dict)
            and shown.keys() == got.keys()
            and all(same_shape(shown[key], got[key]) for key in shown)
        )
    if isinstance(shown, list):
        if not isinstance(got, list):
            return False
        if len(shown) == len(got):
            return all(same_shape(a, b) for a, b in zip(shown, got, strict=True))
        return bool(shown) and all(same_shape(shown[0], item) for item in got)
    if isinstance(shown, bool) or shown is None:
        return shown is got
    if isinstance(shown, int | float):
        return isinstance(got, int | float) and not isinstance(got, bool)
    return isinstance(got, str) and masked(shown) == masked(got)


def line_matches(shown: str, got: str) -> bool:
    if shown.lstrip().startswith(("{", "[")):
        try:
            return same_shape(json.loads(shown), json.loads(got))
        except ValueError:
            pass
    return masked(shown).lower() == masked(got).lower()


def mismatch(example: Example, output: str) -> str | None:
    """Why the output does not have the shape the document shows, or None when it does."""
    got = [line for line in output.splitlines() if line.strip()]
    if example.command in UNORDERED:
        unmatched = [shown for shown in example.shown if not any(line_matches(shown, line) for line in got)]
        if len(got) != len(example.shown) or unmatched:
            return f"{len(got)} line(s), the document shows {len(example.shown)}; none like {unmatched}"
        return None
    with_headers = " -si " in f" {example.command} " or " -i " in f" {example.command} "
    if not with_headers and len(got) != len(example.shown):
        return f"{len(got)} line(s), the document shows {len(example.shown)}"
    position = 0
    for shown in example.shown:
        while position < len(got) and not line_matches(shown, got[position]):
            if not with_headers:
                return f"expected {shown!r}, got {got[position]!r}"
            position += 1
        if position == len(got):
            return f"no line like {shown!r}"
        position += 1
    return None


def test_every_console_example_of_the_docs_still_holds(start_appliance, default_model, tmp_path):
    appliance = start_appliance(shards=1, model=default_model_section(default_model))
    port = str(appliance.port)
    # curl shows a progress meter on stderr when its output is not a terminal; a reader at one sees none.
    (tmp_path / ".curlrc").write_text("no-progress-meter\n")
    env = {
        **appliance.env,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "INFERD_CONFIG": str(appliance.config),
        "CURL_HOME": str(tmp_path),
    }
    found = list(examples())
    assert len(found) > 20, "the console blocks were not found"
    failures = []
    ran = last_code = 0
    try:
        for example in found:
            if example.command in SKIPPED:
                continue
            command = (
                example.command.replace("localhost:8000", f"localhost:{port}")
                .replace("127.0.0.1:8000", f"127.0.0.1:{port}")
                .replace("INFERD_RUN_DIR=var/run", f"INFERD_RUN_DIR={appliance.run_dir}")
            )
            if command == "echo $?":  # each command runs in a shell of its own: the code is the last one's
                output = f"{last_code}\n"
            else:
                done = subprocess.run(
                    ["bash", "-c", f"{command} 2>&1"],
                    cwd=REPO,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=180,
                )
                output, last_code = done.stdout, done.returncode
            ran += 1
            why = mismatch(example, output)
            if why is not None:
                failures.append(f"{example.document}: $ {example.command}\n  {why}\n  output:\n{output}")
    finally:
        (REPO / "req.json").unlink(missing_ok=True)  # the V2 example's request body
    assert not failures, f"{len(failures)} of {ran} example(s) no longer hold:\n\n" + "\n\n".join(failures)
    unused = (set(SKIPPED) | set(UNORDERED)) - {example.command for example in found}
    assert not unused, f"SKIPPED or UNORDERED names commands the documents no longer show: {sorted(unused)}"


def test_the_haproxy_example_is_what_the_tool_prints():
    text = (REPO / "docs" / "scale-out.md").read_text()
    shown = text.split("```haproxy\n", 1)[1].split("```", 1)[0]
    args = ["gpu-a.lan:8000", "gpu-b.lan:8000", "--weights", "8,2"]
    assert f"$ tools/haproxy_config {' '.join(args)} > /etc/haproxy/haproxy.cfg" in text
    argv = [sys.executable, "-m", "tools.haproxy_config", *args]  # what the tools/haproxy_config wrapper runs
    printed = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=True).stdout
    assert printed == shown
