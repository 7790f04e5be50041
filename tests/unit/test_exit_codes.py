"""One table of exit codes (daemon.errors): supervisord's config, the tools and the daemon all follow it."""

from __future__ import annotations

import ast
import configparser

from daemon import errors
from daemon.errors import EXIT_MEANINGS, WORKER_FINAL_EXITS
from testkit.harness import REPO

SUPERVISORD_CONF = REPO / "conf" / "supervisord.conf"


def supervisord_exitcodes() -> dict[str, tuple[int, ...]]:
    """[program:x] -> its `exitcodes=`, for every program that sets them."""
    # supervisord's own format: ';' comments, %(ENV_X)s expanded by supervisord, not by us.
    config = configparser.RawConfigParser(inline_comment_prefixes=(";",), strict=False)
    config.read(SUPERVISORD_CONF)
    return {
        section: tuple(int(code) for code in config.get(section, "exitcodes").split(","))
        for section in config.sections()
        if config.has_option(section, "exitcodes")
    }


def test_supervisord_lets_a_worker_stay_down_exactly_on_the_tables_final_exits():
    assert supervisord_exitcodes() == {"program:worker": WORKER_FINAL_EXITS}


def test_every_exit_code_is_in_the_table_once_with_its_meaning():
    codes = {name: value for name, value in vars(errors).items() if name.startswith("EXIT_")}
    codes.pop("EXIT_MEANINGS")
    assert sorted(codes.values()) == sorted(set(codes.values())), f"two names for one code: {codes}"
    assert set(EXIT_MEANINGS) == set(codes.values())


def test_no_module_keeps_exit_codes_of_its_own():
    """An `EXIT_* = <number>` outside daemon/errors.py is a second table (tools/install.py had one)."""
    own = []
    for top in ("daemon", "tools"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path == REPO / "daemon" / "errors.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, int)
                    and any(isinstance(t, ast.Name) and t.id.startswith("EXIT_") for t in node.targets)
                ):
                    own.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert own == [], f"exit codes defined outside daemon/errors.py: {own}"
