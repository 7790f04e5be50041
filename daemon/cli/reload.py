"""`inferd reload`: change the model without downtime, one shard at a time, all or nothing.

1. Check the new model in a process of its own (`python -m daemon.worker.model_swap`): it loads, its label count is
   its output width, it takes the configured input size, every batch size runs and gives finite
   probabilities. A model that fails is refused in one line; no shard is touched.
2. Record the choice in the run dir (daemon.model.active_model), so a worker restarted from now on loads it.
3. Ask each live shard in turn to swap (daemon.worker.model_swap: load beside the old model, check, switch between
   two batches) and wait for its answer before the next. While one shard loads, the others serve.
4. If a shard refuses or does not answer in time, put the shards already swapped back on the old model,
   restore the record, and say so: the appliance serves the old model everywhere, as before the command.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import subprocess
import sys
import time
from pathlib import Path

import redis

from daemon.cli.common import connect_redis
from daemon.errors import EXIT_FAILED, EXIT_OK, EXIT_REDIS_DOWN, EXIT_SHARD_DOWN, EXIT_USAGE
from daemon.model.active_model import ModelRecord, active_record, choice_of, record_path, write_record
from daemon.queue.faces import await_swap, request_swap
from daemon.queue.registry import read_shards
from daemon.queue.wire import ModelChoice, SwapResult
from daemon.settings import HOME, Settings

DEFAULT_SHARD_TIMEOUT_S = 300.0
"""How long a shard may take to load, warm and check the new model before the reload is rolled back."""
CHECK_TIMEOUT_S = 600.0
"""How long the separate check of the new model may take."""


def add_reload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="the new model file (.keras)")
    parser.add_argument("--labels", required=True, type=Path, help="its labels file, one label a line")
    parser.add_argument(
        "--version", type=int, help="the version answers will carry (default: the current version + 1)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_SHARD_TIMEOUT_S,
        metavar="SECONDS",
        help=f"how long each shard may take to load and check the model (default {DEFAULT_SHARD_TIMEOUT_S:g})",
    )


def check_model(prog: str, settings: Settings, choice: ModelChoice) -> bool:
    """Step 1, in a separate process: True if the model passed every check (and says what was checked)."""
    argv = [
        sys.executable,
        "-m",
        "daemon.worker.model_swap",
        "--model",
        str(choice.path),
        "--labels",
        str(choice.labels),
    ]
    if settings.source is not None:
        argv += ["--config", str(settings.source)]
    env = {**os.environ, "INFERD_LOG_LEVEL": "ERROR"}
    result = subprocess.run(argv, cwd=HOME, env=env, capture_output=True, text=True, timeout=CHECK_TIMEOUT_S)
    try:
        verdict = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        verdict = {"ok": False, "reason": f"the check process failed (exit {result.returncode}): {tail}"}
    if not verdict.get("ok"):
        print(f"{prog}: refused {choice.path}: {verdict['reason']}; nothing was changed", file=sys.stderr)
        return False
    sizes = ",".join(map(str, verdict["batch_sizes"]))
    print(
        f"checked {choice.path}: {verdict['classes']} classes, input {verdict['input_size']}x"
        f"{verdict['input_size']}x3, batch sizes {sizes} give finite probabilities ({verdict['seconds']}s)"
    )
    return True


def swap(client: redis.Redis, shard: str, choice: ModelChoice, timeout_s: float) -> SwapResult:
    request_swap(client, shard, choice)
    answer = await_swap(client, shard, timeout_s)
    return answer or SwapResult(choice.version, False, f"no answer within {timeout_s:g}s; request withdrawn")


def root_refusal(settings: Settings, euid: int) -> str | None:
    """Why user `euid` may not run the check, or None. The check loads a model file, which is code to some
    degree; as root, where the appliance runs as another user, it would hold more power than the appliance
    ever gives the file. Where the appliance itself runs as root (its run dir is root's), its workers load
    the model as root in any case, and refusing would protect nothing."""
    if euid != 0:
        return None
    try:
        owner = settings.paths.run_dir.stat().st_uid
    except OSError:
        owner = -1  # no run dir: no appliance of root's to reload either
    if owner == 0:
        return None
    try:
        user = pwd.getpwuid(owner).pw_name
    except KeyError:
        user = f"uid {owner}" if owner >= 0 else "the appliance's user"
    return (
        f"refusing to run as root: the check loads the new model, and the appliance runs as {user}; "
        f"run it as that user (sudo -u {user} inferd reload ...)"
    )


def run_reload(prog: str, settings: Settings, args: argparse.Namespace) -> int:
    refusal = root_refusal(settings, os.geteuid())
    if refusal is not None:
        print(f"{prog}: {refusal}; nothing was changed", file=sys.stderr)
        return EXIT_USAGE
    record = active_record(settings)
    old = choice_of(settings.model) if record is None else record.active
    new = ModelChoice(
        path=args.model.resolve(),
        labels=args.labels.resolve(),
        version=old.version + 1 if args.version is None else args.version,
    )
    if new.version == old.version:
        print(f"{prog}: version {new.version} is the version served now; give another", file=sys.stderr)
        return EXIT_USAGE
    if not check_model(prog, settings, new):
        return EXIT_FAILED
    client = connect_redis(settings)
    try:
        states = read_shards(client)
    except redis.RedisError as exc:
        print(f"{prog}: Redis unreachable ({exc}); nothing was changed", file=sys.stderr)
        return EXIT_REDIS_DOWN
    live = [state.shard for state in states if state.live]
    if not live:
        print(f"{prog}: no shard is live; nothing was changed", file=sys.stderr)
        return EXIT_SHARD_DOWN
    settings_model = choice_of(settings.model)
    write_record(settings, ModelRecord(active=new, settings_model=settings_model, previous=old))
    for state in states:
        if not state.live:
            print(f"{state.shard}: down; it loads version {new.version} when it starts")
    swapped: list[str] = []
    for shard in live:
        started = time.monotonic()
        try:
            result = swap(client, shard, new, args.timeout)
        except redis.RedisError as exc:
            restore_record(settings, old)
            print(
                f"{prog}: lost Redis while {shard} swapped ({exc}); version {new.version} reached "
                f"{', '.join(swapped) or 'no shard'}; the record names version {old.version} again, so "
                f"restarted workers load it; run `inferd reload` again once Redis is back",
                file=sys.stderr,
            )
            return EXIT_REDIS_DOWN
        if not result.ok:
            print(f"{shard}: refused version {new.version}: {result.detail}", file=sys.stderr)
            roll_back(prog, settings, client, swapped, old, new, args.timeout)
            return EXIT_FAILED
        swapped.append(shard)
        print(f"{shard}: serving version {new.version} ({result.detail}; {time.monotonic() - started:.1f}s)")
    write_record(settings, ModelRecord(active=new, settings_model=settings_model))
    print(
        f"all {len(live)} live shard(s) serve {new.path.name} version {new.version}; recorded in {record_path(settings)}"
    )
    return EXIT_OK


def restore_record(settings: Settings, old: ModelChoice) -> None:
    """The record as it was before the reload: none when the settings' [model] was served."""
    settings_model = choice_of(settings.model)
    if old == settings_model:
        record_path(settings).unlink(missing_ok=True)
    else:
        write_record(settings, ModelRecord(active=old, settings_model=settings_model))


def roll_back(
    prog: str,
    settings: Settings,
    client: redis.Redis,
    swapped: list[str],
    old: ModelChoice,
    new: ModelChoice,
    timeout_s: float,
) -> None:
    """Put the shards already swapped back on `old` and the record as it was: all or nothing."""
    restore_record(settings, old)
    for shard in reversed(swapped):
        result = swap(client, shard, old, timeout_s)
        state = "back on" if result.ok else "COULD NOT GO BACK to"
        print(f"{shard}: {state} version {old.version}: {result.detail}", file=sys.stderr)
    print(
        f"{prog}: version {new.version} was not taken up; the appliance serves version {old.version}",
        file=sys.stderr,
    )
