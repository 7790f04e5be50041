"""Layers run one way: every import in daemon/, tools/, testkit/ and bench/ is one the layer rule allows.

The rule is the table in daemon/__init__.py's docstring (README "How it works"); LAYERS below is the same
table as data. A module belongs to the longest prefix listed, and may import the modules of its own unit and
of the units it names. Imports inside functions count too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import daemon
from testkit.harness import REPO

BASE = ("daemon.settings", "daemon.errors", "daemon.logs")
"""Root modules every part may use; they import nothing of daemon but each other."""
LAYERS: dict[str, tuple[str, ...]] = {
    **{module: BASE for module in BASE},
    "daemon.queue": BASE,
    "daemon.images": BASE,
    "daemon.model": (*BASE, "daemon.queue", "daemon.ops"),
    "daemon.ops.nvml": BASE,
    "daemon.shard": (*BASE, "daemon.ops.nvml"),
    "daemon.ops": (*BASE, "daemon.queue", "daemon.shard"),
    "daemon.metrics": (*BASE, "daemon.queue", "daemon.ops"),
    "daemon.worker": (*BASE, "daemon.queue", "daemon.model", "daemon.shard"),
    "daemon.dispatcher": (*BASE, "daemon.queue"),
    "daemon.http": (
        *BASE,
        "daemon.queue",
        "daemon.model",
        "daemon.images",
        "daemon.metrics",
        "daemon.ops",
        "daemon.dispatcher",
    ),
    "daemon.cli": (*BASE, "daemon.queue", "daemon.model", "daemon.ops"),
    # The entry modules wire the packages together; nothing in daemon/ imports them.
    "daemon.api": ("daemon",),
    "daemon.gpu_worker": ("daemon",),
    "daemon.launcher": ("daemon",),
    "daemon": (),
    "tools": ("daemon",),
    "testkit": ("daemon",),
    "bench": ("daemon", "tools", "testkit"),
}
"""Unit -> the units it may import besides itself. tests/ may import anything and is not listed."""
OURS = ("daemon", "tools", "testkit", "bench", "tests")
CHECKED = ("daemon", "tools", "testkit", "bench")


def unit_of(module: str) -> str:
    """The longest LAYERS prefix of `module` (a dotted name)."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in LAYERS:
            return prefix
    return parts[0]


def allowed(source: str, target: str) -> bool:
    own, theirs = unit_of(source), unit_of(target)
    if theirs == own or theirs.startswith(own + "."):  # its own unit, or a leaf inside it (ops.nvml)
        return True
    return any(theirs == unit or theirs.startswith(unit + ".") for unit in LAYERS[own])


def imported_modules(path: Path, module: str, root: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import of ours in `path`; `from package import name` names the
    submodule when there is one."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing module's package
                package = module.split(".")[: -node.level]
                base = ".".join([*package, base] if base else package)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                where = root / Path(*submodule.split("."))
                is_module = where.with_suffix(".py").is_file() or where.is_dir()
                found.append((node.lineno, submodule if is_module else base))
    return sorted({(line, name) for line, name in found if name.split(".")[0] in OURS})


def layer_violations(root: Path = REPO) -> list[str]:
    """One line per import the rule forbids: file:line, who imports what, and what it may import."""
    lines = []
    for top in CHECKED:
        for path in sorted((root / top).rglob("*.py")):
            relative = path.relative_to(root)
            module = ".".join(relative.with_suffix("").parts).removesuffix(".__init__")
            for line, target in imported_modules(path, module, root):
                if not allowed(module, target):
                    may = ", ".join(LAYERS[unit_of(module)]) or "nothing of ours"
                    lines.append(
                        f"{relative}:{line}: {module} imports {target}; "
                        f"{unit_of(module)} may import {may} (daemon/__init__.py)"
                    )
    return lines


def test_every_import_follows_the_layer_rule():
    violations = layer_violations()
    assert not violations, "imports that break the layer rule:\n" + "\n".join(violations)


def test_every_package_under_daemon_has_a_layer_and_a_line_in_the_rule():
    packages = sorted(p.name for p in (REPO / "daemon").iterdir() if (p / "__init__.py").is_file())
    assert packages, "no package found under daemon/"
    rule = daemon.__doc__ or ""
    for name in packages:
        assert f"daemon.{name}" in LAYERS, f"daemon/{name}/ has no layer in LAYERS: add it to the rule"
        assert f"{name}/" in rule, f"daemon/{name}/ is missing from the rule in daemon/__init__.py"


def test_the_check_names_file_and_line_of_an_upward_import(tmp_path: Path):
    """The check itself can fail: a queue module that imports the HTTP layer is reported where it is."""
    (tmp_path / "daemon" / "queue").mkdir(parents=True)
    (tmp_path / "daemon" / "queue" / "faces.py").write_text(
        "from __future__ import annotations\n\nfrom daemon.http import kserve\n"
    )
    for top in CHECKED[1:]:
        (tmp_path / top).mkdir()
    assert layer_violations(tmp_path) == [
        "daemon/queue/faces.py:3: daemon.queue.faces imports daemon.http; daemon.queue may import "
        "daemon.settings, daemon.errors, daemon.logs (daemon/__init__.py)"
    ]


def test_the_readmes_how_it_works_shows_the_tree_ls_daemon_shows():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## How it works", 1)[1].split("\n## ", 1)[0]
    block = section.split("```\ndaemon/\n", 1)[1].split("```", 1)[0]
    shown = {line.split()[0] for line in block.splitlines() if line.startswith("  ") and line.split()}
    shown = {name for name in shown if name.endswith((".py", "/"))}
    daemon_dir = REPO / "daemon"
    listed = {p.name for p in daemon_dir.glob("*.py") if p.name != "__init__.py"}
    listed |= {f"{p.name}/" for p in daemon_dir.iterdir() if (p / "__init__.py").is_file()}
    assert shown == listed, (
        f"README shows {sorted(shown - listed)} not in daemon/, misses {sorted(listed - shown)}"
    )
