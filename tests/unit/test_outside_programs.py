"""Every outside program a test or the benchmark starts is one `./setup.sh test` installs.

The source of tests/, testkit/, bench/, tools/ and daemon/ is read with `ast` for the programs it starts: the
first element of the argv given to subprocess and os.exec*, and shutil.which("...") names. Each must be Python
run as sys.executable (its `-m` module from this repository or a dependency `test` installs), a Debian
package `./setup.sh needs test` lists, a script of a pip package it installs, or part of every Debian system.
A fresh CI machine would otherwise find the missing program only when the test that starts it fails.
"""

from __future__ import annotations

import ast
import re
import subprocess
import tomllib
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

from testkit.harness import REPO

SCANNED = ("tests", "testkit", "bench", "tools", "daemon")
OURS = {"tests", "testkit", "bench", "tools", "daemon"}
PROCESS_CALLS: dict[tuple[str, ...], int] = {
    **{("subprocess", name): 0 for name in ("run", "Popen", "call", "check_call", "check_output")},
    **{("os", name): 0 for name in ("execv", "execvp", "execve", "execvpe", "spawnv", "spawnvp")},
    ("Service",): 1,  # testkit.harness.Service(name, argv, ...)
}
"""Calls that start a program -> the position of their argv (or program) argument."""
ESSENTIAL = {"nproc", "bash"}
"""Programs of Debian's Essential packages (coreutils, bash), on every Debian and Ubuntu system."""
OPAQUE = {
    ("testkit/harness.py", "start"): "a Service's own argv: where each Service is made is scanned",
    ("tools/install.py", "run"): "operator commands on the real machine; under --root (tests) only printed",
    ("tools/install.py", "check_interpreter"): "the venv's own python",
    ("tests/process/tools/test_install.py", "test_installed_layout_serves_with_stdout_on_a_journal_socket"): (
        "the unit's ExecStart: the installed venv's python"
    ),
    ("tests/process/tools/test_tools.py", "tool"): "tools/<name>, this repository's own wrappers",
    ("tests/unit/tools/test_tool_surface.py", "tool"): "tools/<name>, this repository's own wrappers",
    (
        "tests/process/tools/test_tools.py",
        "test_flush_queues_drain_finishes_every_waiting_job_and_drops_none",
    ): ("tools/flush_queues, this repository's own wrapper"),
    ("bench/profile.py", "start_recording"): 'py-spy, found by py_spy() (shutil.which("py-spy") is scanned)',
    (
        "daemon/ops/front_door.py",
        "check_nginx_conf",
    ): 'nginx, found by nginx_binary() (shutil.which("nginx"), scanned)',
    (
        "daemon/ops/start_front_door.py",
        "main",
    ): "nginx's own command line, from supervisord.conf (INFERD_NGINX)",
    ("tests/unit/test_command_line.py", "test_setup_sh_and_the_installed_command_exit_64_on_a_usage_error"): (
        "./setup.sh and .venv/bin/inferd, this repository's own"
    ),
    (
        "tests/process/tools/test_install.py",
        "test_a_staged_venv_names_the_final_paths_so_the_tree_can_be_moved_into_place",
    ): "the base python that made the test's venv, and that venv's pip",
    ("tools/runtime_choice.py", "_run"): (
        "nvidia-smi, only where shutil.which finds it (a GPU box's driver ships it): set-up reads the GPUs"
    ),
}
"""Calls whose program is not written where they are, with what it is; a new one must be added here."""
PYTHON = "<python>"


@dataclass(frozen=True)
class Started:
    where: str
    """file:line"""
    program: str
    """A program name, PYTHON, or "<python> -m module"."""


FINDERS = frozenset({"shutil.which", "need_program"})
"""Calls that look a program up by name: a constant name there is a program the code means to start."""


def found_by_name(call: ast.Call) -> str | None:
    """The program a `shutil.which("x")` or `need_program("x", ...)` call looks up, if it names one."""
    if ast.unparse(call.func) in FINDERS and call.args and isinstance(call.args[0], ast.Constant):
        return str(call.args[0].value)
    return None


class Resolver:
    """Finds what an argv expression names, following names to their assignments and imports."""

    def __init__(self) -> None:
        self.modules: dict[str, ast.Module] = {}
        for folder in SCANNED:
            for path in sorted((REPO / folder).rglob("*.py")):
                self.modules[str(path.relative_to(REPO))] = ast.parse(path.read_text(), str(path))

    def program(self, module: str, scope: ast.AST, expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return Path(expr.value).name
        if isinstance(expr, ast.List | ast.Tuple) and expr.elts:
            first = expr.elts[0]
            head = self.program(module, scope, first.value if isinstance(first, ast.Starred) else first)
            if head == PYTHON and not isinstance(first, ast.Starred) and len(expr.elts) > 2:
                flag, target = expr.elts[1], expr.elts[2]
                if isinstance(flag, ast.Constant) and flag.value == "-m" and isinstance(target, ast.Constant):
                    return f"{PYTHON} -m {target.value!s}"
            return head
        if isinstance(expr, ast.Attribute) and ast.unparse(expr) == "sys.executable":
            return PYTHON
        if isinstance(expr, ast.Call) and (found := found_by_name(expr)) is not None:
            return found
        if isinstance(expr, ast.Name):
            return self.name(module, scope, expr.id)
        return None

    def name(self, module: str, scope: ast.AST, name: str) -> str | None:
        tree = self.modules[module]
        for where in (scope, tree) if scope is not tree else (tree,):
            values = [
                node.value
                for node in ast.walk(where)
                if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
            ]
            if values:
                found = {self.program(module, where, value) for value in values}
                return found.pop() if len(found) == 1 else None
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and any(a.name == name for a in node.names):
                source = node.module.replace(".", "/") + ".py"
                if source in self.modules:
                    return self.name(source, self.modules[source], name)
        return None


class CallScanner(ast.NodeVisitor):
    """Collects the programs one module starts; names are looked up in the innermost enclosing function."""

    def __init__(self, resolver: Resolver, module: str) -> None:
        self.resolver, self.module = resolver, module
        self.scopes: list[ast.AST] = [resolver.modules[module]]
        self.found: list[Started] = []
        self.opaque: list[tuple[str, str]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.scopes.append(node)
        self.generic_visit(node)
        self.scopes.pop()

    def visit_Call(self, call: ast.Call) -> None:
        self.generic_visit(call)
        target = tuple(ast.unparse(call.func).rsplit(".", 1))
        where = f"{self.module}:{call.lineno}"
        if (found := found_by_name(call)) is not None:
            self.found.append(Started(where, found))
        elif target in PROCESS_CALLS:
            position = PROCESS_CALLS[target]
            argv = call.args[position] if len(call.args) > position else call.keywords[0].value
            program = self.resolver.program(self.module, self.scopes[-1], argv)
            if program is None:
                scope = self.scopes[-1]
                self.opaque.append((self.module, scope.name if isinstance(scope, ast.FunctionDef) else ""))
            else:
                self.found.append(Started(where, program))


def started_programs() -> tuple[list[Started], set[tuple[str, str]]]:
    """What the scanned source starts, and the (file, function) of calls whose program it cannot read."""
    resolver = Resolver()
    found: list[Started] = []
    opaque: set[tuple[str, str]] = set()
    for module in resolver.modules:
        scanner = CallScanner(resolver, module)
        scanner.visit(resolver.modules[module])
        found += scanner.found
        opaque.update(scanner.opaque)
    return found, opaque


def setup_needs(action: str) -> tuple[set[str], list[str]]:
    """The programs `./setup.sh ACTION` installs with apt, and the pip extras it installs."""
    listed = subprocess.run(
        ["bash", str(REPO / "setup.sh"), "needs", action], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    programs = {line.split()[1] for line in listed if line.startswith("apt ")}
    extras = next(line.split()[1] for line in listed if line.startswith("pip-extras ")).split(",")
    return programs, extras


def pip_packages(extras: list[str]) -> set[str]:
    """Normalised names of the distributions pyproject.toml requires, plus those of `extras`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for e in extras for r in project["optional-dependencies"][e]]
    return {normalise(re.split(r"[ <>=!~;\[]", requirement, maxsplit=1)[0]) for requirement in requirements}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def scripts_of(packages: set[str]) -> set[str]:
    """Programs the installed distributions of `packages` put in the venv's bin/."""
    scripts = set()
    for package in packages:
        try:
            files = distribution(package).files or []
        except PackageNotFoundError:
            continue
        scripts |= {Path(str(f)).name for f in files if Path(str(f)).parent.name == "bin"}
        scripts |= {ep.name for ep in distribution(package).entry_points if ep.group == "console_scripts"}
    return scripts


def unsatisfied(found: list[Started], programs: set[str], extras: list[str]) -> list[Started]:
    packages = pip_packages(extras)
    scripts = scripts_of(packages)
    module_owners = packages_distributions()
    missing = []
    for started in found:
        if started.program.startswith(f"{PYTHON} -m "):
            top = started.program.split()[-1].split(".")[0]
            if top in OURS or any(normalise(d) in packages for d in module_owners.get(top, [])):
                continue
        elif started.program == PYTHON or started.program in programs | scripts | ESSENTIAL:
            continue
        missing.append(started)
    return missing


def test_every_program_the_tests_and_the_benchmark_start_is_installed_by_setup_test():
    found, opaque = started_programs()
    programs, extras = setup_needs("test")
    missing = unsatisfied(found, programs, extras)
    assert not missing, f"started but not installed by `./setup.sh test` (see programs_for): {missing}"
    assert opaque == set(OPAQUE), "a call whose program is not written where it is: add it to OPAQUE"


def test_the_scan_sees_what_it_must():
    found, _ = started_programs()
    seen = {started.program for started in found}
    # Known starts of each kind, so a scanner that found nothing could not pass the test above.
    assert {"wrk", "redis-server", "systemd-analyze", "py-spy", "nproc", "haproxy", "promtool"} <= seen
    assert {f"{PYTHON} -m daemon.launcher", f"{PYTHON} -m supervisor.supervisorctl", PYTHON} <= seen
    programs, extras = setup_needs("run")
    assert "wrk" not in programs  # the appliance alone does not need the load generator ...
    missing = {started.program for started in unsatisfied(found, programs, extras)}
    assert {"wrk", "systemd-analyze", "py-spy"} <= missing  # ... so `run` alone would leave these out
