"""`python -m bench.run`: measure what every benchmark target needs in one run, write bench/RESULTS.md and a plot.

Phases, each with the machine to itself: (a) the default model offline; (b) the whole appliance with it at
1/16/64/256 clients, then a py-spy profile and (g) a soak; (d) the tiny model behind inferd, the decode-only
ceiling and the old design; (e) simulated shards; (h) the front door; (i) inferd beside LitServe and BentoML
(where the bench-peers extra is installed). (c) and (f) are derived. The default run takes about
18 minutes on two cores (the peers phase about 6 of them); `--quick` shrinks every phase to a smoke test of the
whole pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench import floors, frontdoor, peers, phases
from bench.floors_report import floors_section
from bench.phases import Durations, Plan
from bench.procs import machine_busy_s, own_cpu_s
from bench.report import (
    summary,
    write_frontdoor_section,
    write_own_section,
    write_peers_section,
    write_report,
)
from bench.results import BenchResults
from bench.wrk import write_photos
from daemon.errors import UsageArgumentParser
from daemon.settings import gpu_selection_text
from testkit.harness import PYTHON, REPO

log = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = REPO / "var" / "models"
MODEL_FILE = "efficientnet-lite0.keras"
LABELS_FILE = "imagenet-labels.txt"
TINY_INPUT = 32
"""The tiny model's input side, as the tests use it."""
PHASES = ("offline", "served", "tiny", "simulated", "frontdoor", "peers", "floors")


def write_floors_section(results: BenchResults, markdown: Path) -> None:
    """Section (k), when the floors phase ran (its figures are plain data in the run's meta)."""
    found = results.meta.get("floors")
    if found:
        write_own_section(markdown, floors.SECTION, floors_section(found))


ALONE: dict[str, Callable[[BenchResults, Path], None]] = {
    "frontdoor": write_frontdoor_section,
    "peers": write_peers_section,
    "floors": write_floors_section,
}
"""Phases that, run alone, need no model built here and write only their own section of RESULTS.md."""

QUICK_DURATIONS = Durations(
    offline_s=0.3,
    warmup_s=0.0,
    served_s=1.0,
    tiny_s=2.0,
    tiny_warmup_s=0.0,
    sim_s=1.0,
    sim_warmup_s=0.3,
    profile_s=0.0,
    soak_minutes=0.05,
    soak_interval_s=0.5,
)
QUICK_PLAN = Plan(
    batch_sizes=(1, 4),
    recheck_offline=False,
    tiny_rounds=1,
    served_clients=(1, 4),
    tiny_clients=(4,),
    tiny_images=("png",),
    shard_counts=(1, 2),
    policy_shards=2,
    soak_clients=4,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = Durations()
    parser = UsageArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and the tiny model: a smoke test")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"subset of {','.join(PHASES)}")
    parser.add_argument(
        "--soak-minutes", type=float, default=None, help=f"soak length (default {d.soak_minutes:g})"
    )
    parser.add_argument(
        "--served-seconds", type=float, default=None, help=f"per client count (default {d.served_s:g})"
    )
    parser.add_argument(
        "--tiny-seconds", type=float, default=None, help=f"per load in (d) (default {d.tiny_s:g})"
    )
    parser.add_argument(
        "--sim-seconds", type=float, default=None, help=f"per shard setup (default {d.sim_s:g})"
    )
    parser.add_argument(
        "--offline-seconds", type=float, default=None, help=f"per batch size (default {d.offline_s:g})"
    )
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=None,
        help=f"py-spy window, 0: none (default {d.profile_s:g})",
    )
    parser.add_argument(
        "--model-dir", type=Path, default=DEFAULT_MODEL_DIR, help="where the default model is cached"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=BENCH_DIR, help="where RESULTS.md, results.png/json go"
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="logs and scratch (default: a new tmp dir)"
    )
    return parser.parse_args(argv)


def durations_from(args: argparse.Namespace) -> Durations:
    base = QUICK_DURATIONS if args.quick else Durations()
    overrides = {
        "soak_minutes": args.soak_minutes,
        "served_s": args.served_seconds,
        "tiny_s": args.tiny_seconds,
        "sim_s": args.sim_seconds,
        "offline_s": args.offline_seconds,
        "profile_s": args.profile_seconds,
    }
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


def ensure_default_model(folder: Path) -> tuple[Path, Path]:
    model, labels = folder / MODEL_FILE, folder / LABELS_FILE
    if not (model.is_file() and labels.is_file()):
        log.info("bench: building the default model into %s", folder)
        subprocess.run(
            [PYTHON, "-m", "daemon.model.default_model", "--out", str(folder)], cwd=REPO, check=True
        )
    return model, labels


def machine_description() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=False).stdout.strip()
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"nproc {nproc}, {cpu}, {memory_gb:.0f} GiB RAM, Linux {platform.release()}"


def software_description() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {platform.python_version()}"]
    for package in ("tensorflow", "keras", "falcon", "gunicorn", "redis", "pillow", "flask"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    parts.append(redis_version.stdout.split(" sha=")[0].strip())
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    parts.append(
        (wrk.stdout or wrk.stderr).splitlines()[0].split(" [")[0] if (wrk.stdout or wrk.stderr) else "wrk"
    )
    return ", ".join(parts)


def settings_description(env: dict[str, str]) -> str:
    s = phases.effective_settings(env)
    return (
        f"api.workers={s.api.workers}, api.threads={s.api.threads or 'auto'} (gunicorn gthread), "
        f"batching.max_batch_size={s.batching.max_batch_size}, batching.max_wait_ms={s.batching.max_wait_ms:g}, "
        f"queue.max_depth={s.queue.max_depth}, queue.dispatch={s.queue.dispatch}, devices.gpus={gpu_selection_text(s.devices.gpus)}, "
        f"devices.cpu_workers={s.devices.cpu_workers}, model.backend={s.model.backend}; overrides: port, run/log "
        f"dirs, model.path/labels (tiny: model.input_size={TINY_INPUT}, model.preprocessing=tf)"
    )


def run_phase(name: str, results: BenchResults, body: Callable[[], None]) -> None:
    """Run one phase; a failure is recorded and reported, and the remaining phases still run."""
    started, busy, own = time.monotonic(), machine_busy_s(), own_cpu_s()
    log.info("bench: phase %s", name)
    try:
        body()
    except Exception:
        # The other phases' figures are still worth writing; the run exits non-zero at the end.
        log.error("bench: phase %s failed:\n%s", name, traceback.format_exc())
        results.meta.setdefault("failures", []).append(f"{name}: {traceback.format_exc(limit=1).strip()}")
    elapsed = time.monotonic() - started
    results.meta.setdefault("phase_s", {})[name] = round(elapsed, 1)
    results.meta.setdefault("phase_others_pct", {})[name] = round(others_share(busy, own, elapsed), 1)


def others_share(busy_before: float, own_before: float, elapsed_s: float) -> float:
    """Percent of the machine's cores that processes other than ours used since the given readings."""
    # Our children are all waited for by the end of a phase, so their CPU time is in own_cpu_s().
    others = max(0.0, (machine_busy_s() - busy_before) - (own_cpu_s() - own_before))
    return 100.0 * others / (max(elapsed_s, 1e-6) * (os.cpu_count() or 1))


def describe_run(results: BenchResults, argv: list[str], d: Durations, plan: Plan, work: Path) -> None:
    results.meta.update(
        date=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        commit=floors.commit(),
        machine=machine_description(),
        software=software_description(),
        command=" ".join(["python -m bench.run", *map(shlex.quote, argv)]),
        durations=f"{dataclasses.asdict(d)}; plan {dataclasses.asdict(plan)}",
        soak_interval_s=d.soak_interval_s,
        work_dir=str(work),
        simulated=(
            f"Each shard runs daemon.gpu_worker.Worker with a model that sleeps {plan.sim_base_ms:g} ms + "
            f"{plan.sim_per_image_ms:g} ms per image per batch (batching.max_batch_size={plan.sim_batch}); "
            f"{plan.sim_clients_per_shard} closed-loop clients per shard push jobs through "
            "daemon.queue.faces.ApiQueues (submit, await_reply) from 2 processes (HTTP bypassed, so the "
            "load generator is not the bottleneck); efficiency = jobs/s / (n x one shard's jobs/s)."
        ),
        policies=(
            f"{plan.policy_shards} shards, {plan.policy_shards // 2} of them {plan.policy_slowdown:g}x slower "
            f"(sleep {plan.sim_base_ms * plan.policy_slowdown:g} ms + "
            f"{plan.sim_per_image_ms * plan.policy_slowdown:g} ms per image), "
            f"{plan.policy_shards * plan.sim_clients_per_shard} closed-loop clients."
        ),
        tiny_method=(
            f"All three run side by side; each load is measured in {plan.tiny_rounds} round(s) that alternate "
            "between the systems, and each system's best round is kept."
        ),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    d = durations_from(args)
    plan = QUICK_PLAN if args.quick else Plan()
    wanted = set(args.phases.split(","))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="inferd-bench-work-"))
    work.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    started, busy0, own0 = time.monotonic(), machine_busy_s(), own_cpu_s()
    load_before = os.getloadavg()[0]

    results = BenchResults()
    describe_run(results, argv if argv is not None else sys.argv[1:], d, plan, work)
    photos = write_photos(work / "photos")
    alone = next(iter(wanted)) if len(wanted) == 1 and next(iter(wanted)) in ALONE else None
    if alone:
        # Each builds what it serves itself (the stand-in, the tiny model at 224): nothing is built here.
        tiny_model = tiny_labels = args.model_dir / MODEL_FILE
    else:
        tiny_model, tiny_labels = phases.build_tiny_model(work / "tiny-model")
    tiny_env = phases.tiny_env(work / "tiny", tiny_model, tiny_labels, TINY_INPUT)
    if args.quick or alone:
        # The smoke test must stay short: the tiny model stands in for the default one everywhere.
        served_env = tiny_env
        results.meta["served_model"] = "tiny model (--quick)"
    else:
        model, labels = ensure_default_model(args.model_dir)
        served_env = phases.appliance_env(work / "served", model, labels)
        results.meta["served_model"] = "default model (EfficientNet-Lite0)"
    results.meta["settings"] = settings_description(served_env)

    def served(also_tiny: bool) -> None:
        with phases.running_appliance(work / "served", served_env) as (appliance, settings):
            phases.measure_served(results, appliance, settings, photos["jpeg"], plan, d, work / "served")
            if also_tiny:  # --quick: the served appliance already runs the tiny model; no second start
                phases.measure_tiny(
                    results, work / "tiny", tiny_env, photos, plan, d, f"{appliance.url}/predict"
                )

    if "offline" in wanted:
        run_phase(
            "offline",
            results,
            lambda: phases.measure_offline(
                results, served_env, photos["jpeg"], plan.batch_sizes, d.offline_s
            ),
        )
    if args.quick and {"served", "tiny"} <= wanted:
        run_phase("served+tiny", results, lambda: served(also_tiny=True))
    else:
        if "served" in wanted:
            run_phase("served", results, lambda: served(also_tiny=False))
        if "offline" in wanted and plan.recheck_offline:
            run_phase(
                "offline again",
                results,
                lambda: phases.recheck_offline(results, served_env, photos["jpeg"], d.offline_s),
            )
        if "tiny" in wanted:
            run_phase(
                "tiny",
                results,
                lambda: phases.measure_tiny(results, work / "tiny", tiny_env, photos, plan, d),
            )
    if "simulated" in wanted:
        run_phase(
            "simulated", results, lambda: phases.measure_simulated(results, work / "simulated", plan, d)
        )

    if "frontdoor" in wanted:
        plan_h = frontdoor.QUICK_PLAN if args.quick else frontdoor.FrontDoorPlan()
        run_phase(
            "frontdoor",
            results,
            lambda: phases.measure_frontdoor(results, work / "frontdoor", photos["jpeg"], plan_h),
        )
    if "peers" in wanted:
        plan_i = peers.QUICK_PLAN if args.quick else peers.PeersPlan()
        run_phase(
            "peers", results, lambda: phases.measure_peers(results, work / "peers", photos["jpeg"], plan_i)
        )

    if "floors" in wanted:
        plan_k = floors.QUICK_PLAN if args.quick else floors.FloorsPlan()
        run_phase(
            "floors",
            results,
            lambda: results.meta.update(floors=floors.measure_floors(work / "floors", photos, plan_k)),
        )

    wall = time.monotonic() - started
    share = others_share(busy0, own0, wall)
    results.meta["wall_s"] = wall
    results.meta["sharing"] = (
        f"processes other than the benchmark's used {share:.0f}% of the {os.cpu_count()} cores during the run "
        f"(load average {load_before:.2f} at the start)"
        + (": figures are from a shared machine" if share > 5 else "")
    )
    if alone:
        # One phase alone: its own section and figures; the rest of RESULTS.md stays as its run wrote it.
        results.to_json(args.out_dir / f"results-{alone}.json")
        ALONE[alone](results, args.out_dir / "RESULTS.md")
    else:
        results.to_json(args.out_dir / "results.json")
        write_report(results, args.out_dir / "RESULTS.md", args.out_dir / "results.png")
        write_floors_section(results, args.out_dir / "RESULTS.md")
    print(summary(results))
    print(
        f"\nwrote {args.out_dir / 'RESULTS.md'} and {args.out_dir / 'results.png'} in {wall:.0f} s (logs in {work})"
    )
    failures = results.meta.get("failures", [])
    for failure in failures:
        print(f"FAILED phase {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
