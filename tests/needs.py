"""What a test needs from outside the project: missing is a failure, a skip only where a developer asks for one.

`./setup.sh test` installs every module and program the suite uses, so on a machine set up that way nothing is
ever missing; where something is, the test fails and says what to install: a skip would pass a check that never
ran. A developer on a box set up by hand may set INFERD_TESTS_ALLOW_MISSING=1 to skip such tests instead;
`./setup.sh test` clears it, so the suite it runs can never skip. Every skip in the suite goes through here
(tests/unit/test_needs.py holds that).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pytest

ALLOW_MISSING_ENV = "INFERD_TESTS_ALLOW_MISSING"
"""Set to 1 to turn a missing module, program or capability into a skip (a developer's choice, never CI's)."""


def _missing(what: str, hint: str) -> None:
    message = f"{what} ({hint})"
    if os.environ.get(ALLOW_MISSING_ENV) == "1":
        pytest.skip(f"{message}; skipped because {ALLOW_MISSING_ENV}=1", allow_module_level=True)
    pytest.fail(
        f"{message}; a missing dependency is a failure, not a skip ({ALLOW_MISSING_ENV}=1 skips instead)",
        pytrace=False,
    )


def need_module(name: str, hint: str) -> None:
    """Fail (skip where allowed) unless the Python module `name` can be imported."""
    if importlib.util.find_spec(name) is None:
        _missing(f"Python module {name} is not installed", f"{hint}; ./setup.sh test installs it")


def need_program(name: str, hint: str) -> str:
    """The path of the program `name`; fail (skip where allowed) when it is not on PATH."""
    path = shutil.which(name)
    if path is None:
        _missing(f"program {name} is not installed", f"{hint}; ./setup.sh test installs it")
    assert path is not None
    return path


def need(available: bool, what: str, hint: str) -> None:
    """Fail (skip where allowed) unless a capability of the machine is there: `what` is missing, `hint` says how."""
    if not available:
        _missing(what, hint)
