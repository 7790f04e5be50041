"""What a test needs from outside the project: missing is a skip on a developer's box, a failure under CI.

`./setup.sh test` installs every module and program the suite uses, so on a machine set up that way nothing is
ever missing; where something is (a box set up by hand), the test says what to install and is skipped. Under
CI (the `CI` environment variable set, as every CI service sets it) a missing tool fails the test instead: a
skip there would pass a check that never ran.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest


def _missing(what: str, hint: str) -> None:
    message = f"{what} is not installed ({hint}); ./setup.sh test installs it"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; under CI a missing tool is a failure, not a skip", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def need_module(name: str, hint: str) -> None:
    """Skip (fail under CI) unless the Python module `name` can be imported."""
    if importlib.util.find_spec(name) is None:
        _missing(f"Python module {name}", hint)


def need_program(name: str, hint: str) -> str:
    """The path of the program `name`; skip (fail under CI) when it is not on PATH."""
    path = shutil.which(name)
    if path is None:
        _missing(f"program {name}", hint)
    assert path is not None
    return path
