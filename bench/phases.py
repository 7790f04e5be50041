"""The benchmark's phases, each starting what it measures, measuring it, and stopping it again.

The machine may be shared, so figures that are compared are measured close together: (d) runs its three
systems side by side and alternates between them in rounds, keeping each one's best round, and the offline
limit of (a) is measured again after (b), keeping the better of the two.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from bench import frontdoor, offline, peers, profile, simulated, wrk
from bench.decode_only import decode_only_service
from bench.old_design import old_design_services
from bench.results import BenchResults, SoakReport
from bench.soak import SoakSampler, rss_growth
from bench.wrk import WrkResult
from daemon.launcher import redis_maxmemory_mb
from daemon.settings import Settings, load_settings
from daemon.shard import discover_shards
from testkit.config import private_paths_env
from testkit.harness import PYTHON, REPO, Appliance, free_port, redis_server, stop_all

log = logging.getLogger(__name__)

CONFIG = REPO / "conf" / "settings.toml"
"""The appliance runs with the repository's own settings; the benchmark overrides only what it must."""
MODEL_READY_LINE = "* model loaded"
"""What the old design's model server prints once it polls."""


@dataclass(frozen=True)
class Durations:
    """Seconds (or minutes) each phase measures for; `--quick` shrinks all of them."""

    offline_s: float = 3.0
    warmup_s: float = 3.0
    served_s: float = 15.0
    tiny_s: float = 5.0
    """Per round, per system."""
    tiny_warmup_s: float = 1.0
    sim_s: float = 8.0
    sim_warmup_s: float = 2.0
    profile_s: float = 10.0
    soak_minutes: float = 1.0
    soak_interval_s: float = 5.0


@dataclass(frozen=True)
class Plan:
    """What to measure: the levels and sizes of every phase."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    recheck_offline: bool = True
    served_clients: tuple[int, ...] = (1, 16, 64, 256)
    tiny_clients: tuple[int, ...] = (10, 50, 64)
    tiny_images: tuple[str, ...] = ("png", "jpeg")
    tiny_rounds: int = 2
    shard_counts: tuple[int, ...] = (1, 2, 4, 8)
    sim_base_ms: float = 50.0
    sim_per_image_ms: float = 1.0
    sim_batch: int = 8
    sim_clients_per_shard: int = 24
    policy_shards: int = 4
    policy_slowdown: float = 3.0
    soak_clients: int = 64


def appliance_env(
    folder: Path, model: Path, labels: Path, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """INFERD_* overrides of conf/settings.toml: a free port, a private run dir, the model under test."""
    return {
        **private_paths_env(folder, "bench-"),
        "INFERD_MODEL_PATH": str(model),
        "INFERD_MODEL_LABELS": str(labels),
        **(extra or {}),
    }


def tiny_env(folder: Path, model: Path, labels: Path, input_size: int) -> dict[str, str]:
    extra = {"INFERD_MODEL_INPUT_SIZE": str(input_size), "INFERD_MODEL_PREPROCESSING": "tf"}
    return appliance_env(folder, model, labels, extra)


def effective_settings(env: dict[str, str]) -> Settings:
    return load_settings(CONFIG, env=env)


@contextmanager
def running_appliance(folder: Path, env: dict[str, str]) -> Iterator[tuple[Appliance, Settings]]:
    """`inferd run` with conf/settings.toml plus `env`, ready (every shard live) until the block ends."""
    settings = effective_settings(env)
    shards = len(discover_shards(settings))
    folder.mkdir(parents=True, exist_ok=True)
    appliance = Appliance(folder, CONFIG, settings.api.port, settings.paths.run_dir, shards, env)
    try:
        appliance.start(timeout_s=180)
        yield appliance, settings
    finally:
        appliance.stop()


# -- (a) ---------------------------------------------------------------------------------------------------
def run_offline(
    env: dict[str, str], photo: Path, batch_sizes: tuple[int, ...], seconds: float, rounds: int
) -> tuple[str, list[offline.OfflinePoint]]:
    """bench.offline in its own process (Keras never loads into the driver, which forks later)."""
    argv = [PYTHON, "-m", "bench.offline", "--config", str(CONFIG), "--image", str(photo)]
    argv += [
        "--batch-sizes",
        ",".join(map(str, batch_sizes)),
        "--seconds",
        str(seconds),
        "--rounds",
        str(rounds),
    ]
    done = subprocess.run(
        argv, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(offline.RESULT_PREFIX)), None)
    if line is None:
        raise RuntimeError(f"offline benchmark failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    body = json.loads(line[len(offline.RESULT_PREFIX) :])
    return str(body["device"]), [offline.OfflinePoint(**raw) for raw in body["points"]]


def measure_offline(
    results: BenchResults,
    env: dict[str, str],
    photo: Path,
    batch_sizes: tuple[int, ...],
    seconds: float,
    rounds: int = 3,
) -> None:
    """Run bench.offline in its own process; merge with earlier points, keeping the better figure of each."""
    device, points = run_offline(env, photo, batch_sizes, seconds, rounds)
    results.offline_device = device
    earlier = {point.batch_size: point for point in results.offline}
    for point in points:
        before = earlier.get(point.batch_size)
        if before is not None:
            point = offline.OfflinePoint(
                point.batch_size,
                max(point.images_per_s, before.images_per_s),
                min(point.batch_p50_ms, before.batch_p50_ms),
                point.calls + before.calls,
                min(point.cpu_ms_per_image, before.cpu_ms_per_image),
            )
        earlier[point.batch_size] = point
    results.offline = sorted(earlier.values(), key=lambda p: p.batch_size)


def recheck_offline(results: BenchResults, env: dict[str, str], photo: Path, seconds: float) -> None:
    """Measure batch 1 and the best batch size again, so a noisy first sweep does not flatter (c) or (f)."""
    best = results.offline_best()
    sizes = tuple(sorted({1, best.batch_size})) if best else (1,)
    measure_offline(results, env, photo, sizes, seconds)


# -- (b), (g) --------------------------------------------------------------------------------------------
def measure_served(
    results: BenchResults,
    appliance: Appliance,
    settings: Settings,
    photo: Path,
    plan: Plan,
    d: Durations,
    folder: Path,
) -> None:
    """(b) at each client count, then a py-spy profile and (g) the soak, on one running appliance."""
    url = f"{appliance.url}/predict"
    for clients in plan.served_clients:
        results.served.append(wrk.measure("inferd", url, "jpeg", photo, clients, d.served_s, d.warmup_s))
    if d.profile_s > 0:
        profile_appliance(results, appliance, url, photo, folder, d.profile_s)
    if d.soak_minutes > 0:
        results.soak = soak(appliance, settings, url, photo, plan.soak_clients, d)


def profile_appliance(
    results: BenchResults, appliance: Appliance, url: str, photo: Path, folder: Path, seconds: float
) -> None:
    """py-spy on the API (master and workers) and on each model worker, under the 64-client load."""
    targets = {"api": appliance.pid_of("api")}
    for line in appliance.supervisorctl("status").splitlines():
        if line.startswith("worker:") and "pid" in line:
            targets[line.split()[0].split(":")[1]] = appliance.pid_of(line.split()[0])
    recordings = {
        name: profile.start_recording(name, pid, seconds, folder / f"profile-{name}.txt")
        for name, pid in targets.items()
    }
    wrk.run_wrk(url, photo, 64, seconds + 2)
    for name, proc in recordings.items():
        summary = profile.finish_recording(name, proc, folder / f"profile-{name}.txt")
        if summary is not None:
            results.profiles.append(summary)


def soak(
    appliance: Appliance, settings: Settings, url: str, photo: Path, clients: int, d: Durations
) -> SoakReport:
    seconds = d.soak_minutes * 60.0
    warmup_s = min(60.0, seconds / 4)
    client = appliance.redis()
    sampler = SoakSampler(appliance.pid, client, d.soak_interval_s).start()
    try:
        raw = wrk.run_wrk(url, photo, clients, seconds)
    finally:
        samples = sampler.stop()
        client.close()
    bound = redis_maxmemory_mb(settings, appliance.shards)
    report = SoakReport(
        clients=clients,
        minutes=d.soak_minutes,
        warmup_s=warmup_s,
        rps=(raw["requests"] - raw["status_errors"]) / raw["duration_s"],
        p50_ms=raw["p50_ms"],
        p99_ms=raw["p99_ms"],
        errors=wrk.error_count(raw),
        growth=rss_growth(samples, warmup_s),
        samples=samples,
        redis_bound_mb=bound,
        redis_peak_mb=max(samples.redis_used, default=0) / 2**20,
    )
    log.info(
        "bench: soak %.1f min: %.1f req/s, Redis peak %.1f MB of %d MB",
        d.soak_minutes,
        report.rps,
        report.redis_peak_mb,
        bound,
    )
    return report


# -- (d) ---------------------------------------------------------------------------------------------------
def build_tiny_model(folder: Path, input_size: int | None = None) -> tuple[Path, Path]:
    """tests.tiny_model in its own process, so Keras never loads into the driver (which forks later)."""
    argv = [PYTHON, "-m", "tests.tiny_model", str(folder), *([str(input_size)] if input_size else [])]
    subprocess.run(argv, cwd=REPO, check=True, capture_output=True)
    return folder / "tiny.keras", folder / "tiny-labels.txt"


def measure_tiny(
    results: BenchResults,
    folder: Path,
    env: dict[str, str],
    photos: dict[str, Path],
    plan: Plan,
    d: Durations,
    inferd_url: str | None = None,
) -> None:
    """inferd, the decode-only ceiling and the old design side by side, loaded in alternating rounds.

    All three run at once (idle, each costs next to nothing) so that each load level is measured on every
    system within seconds of the others; each keeps its best round, the one least disturbed by whatever
    else shares the machine. `inferd_url` reuses an appliance that already serves the tiny model.
    """
    with ExitStack() as stack:
        urls: dict[str, str] = {}
        if inferd_url is None:
            appliance, _ = stack.enter_context(running_appliance(folder / "inferd", env))
            inferd_url = f"{appliance.url}/predict"
        urls["inferd"] = inferd_url
        urls["decode-only"] = start_decode_only(stack, folder, env)
        urls["old design"] = start_old_design(stack, folder / "old", effective_settings(env))
        for image in plan.tiny_images:
            for clients in plan.tiny_clients:
                rounds: dict[str, list[WrkResult]] = {system: [] for system in urls}
                for _ in range(plan.tiny_rounds):
                    for system, url in urls.items():
                        rounds[system].append(
                            wrk.measure(system, url, image, photos[image], clients, d.tiny_s, d.tiny_warmup_s)
                        )
                results.tiny += [max(runs, key=lambda run: run.rps) for runs in rounds.values()]


def start_decode_only(stack: ExitStack, folder: Path, env: dict[str, str]) -> str:
    port = free_port()
    ceiling = stack.enter_context(decode_only_service(CONFIG, {**env, "INFERD_API_PORT": str(port)}, folder))
    ceiling.wait_http(f"http://127.0.0.1:{port}/")
    return f"http://127.0.0.1:{port}/predict"


def start_old_design(stack: ExitStack, folder: Path, settings: Settings) -> str:
    model, labels, size = settings.model.path, settings.model.labels, settings.model.input_size
    redis_port, web_port = free_port(), free_port()
    services = old_design_services(folder, model, labels, size, redis_port, web_port)
    stack.callback(stop_all, services)
    server, model_server, web = services
    server.start().wait_until("PING", lambda: bool(redis.Redis(port=redis_port).ping()), 20)
    # Both load Keras for seconds; started together, their start-ups overlap.
    model_server.start()
    web.start()
    model_server.wait_until("the model", lambda: MODEL_READY_LINE in model_server.log_text(), 120)
    web.wait_http(f"http://127.0.0.1:{web_port}/", 120)
    return f"http://127.0.0.1:{web_port}/predict"


# -- (e) ---------------------------------------------------------------------------------------------------
def measure_simulated(results: BenchResults, folder: Path, plan: Plan, d: Durations) -> None:
    cost = (plan.sim_base_ms, plan.sim_per_image_ms)
    slow = (plan.sim_base_ms * plan.policy_slowdown, plan.sim_per_image_ms * plan.policy_slowdown)
    with redis_server(folder / "redis") as sock:
        for shards in plan.shard_counts:
            results.scaling.append(
                simulated.run_shards(
                    "scaling",
                    folder / f"scale{shards}",
                    sock,
                    [cost] * shards,
                    "round_robin",
                    plan.sim_batch,
                    shards * plan.sim_clients_per_shard,
                    d.sim_warmup_s,
                    d.sim_s,
                )
            )
        fast = plan.policy_shards - plan.policy_shards // 2
        costs = [cost] * fast + [slow] * (plan.policy_shards - fast)
        for policy in ("round_robin", "shortest_queue"):
            results.policies.append(
                simulated.run_shards(
                    "unequal speeds",
                    folder / f"policy-{policy}",
                    sock,
                    costs,
                    policy,
                    plan.sim_batch,
                    plan.policy_shards * plan.sim_clients_per_shard,
                    d.sim_warmup_s,
                    d.sim_s,
                )
            )


# -- (h) ---------------------------------------------------------------------------------------------------
def measure_frontdoor(
    results: BenchResults, folder: Path, photo: Path, plan: frontdoor.FrontDoorPlan
) -> None:
    """The whole front door against stand-in shards at the model's real input size (224)."""
    standin = folder / "standin"  # bench.frontdoor writes the stand-in file and labels here
    env = appliance_env(folder, standin, standin, {"INFERD_MODEL_INPUT_SIZE": "224"})
    results.frontdoor += frontdoor.measure_frontdoor(folder, CONFIG, env, photo, plan)


# -- (i) ---------------------------------------------------------------------------------------------------
def measure_peers(results: BenchResults, folder: Path, photo: Path, plan: peers.PeersPlan) -> None:
    """inferd and every installed peer serving the tiny model at 224, loaded in turn (bench/peers.py); a
    missing peer is named in one line, and with none installed the phase is skipped."""
    installed = []
    for peer in peers.PEERS:
        missing = peers.missing(peer)
        if missing is None:
            installed.append(peer)
        else:
            log.info("bench: peers: %s left out: %s", peer.name, missing)
            results.meta.setdefault("peers_missing", []).append(missing)
    if not installed:
        log.info("bench: phase peers skipped: no peer is installed")
        results.meta["peers_skipped"] = "; ".join(results.meta["peers_missing"])
        return
    model, labels = build_tiny_model(folder / "tiny-model", peers.INPUT_SIZE)
    env = tiny_env(folder, model, labels, peers.INPUT_SIZE)
    s = effective_settings(env)
    results.meta["peers_setup"] = (
        f"batching.max_batch_size={s.batching.max_batch_size}, batching.max_wait_ms={s.batching.max_wait_ms:g} "
        f"(LitServe's batch timeout too); inferd api.workers={s.api.workers}, "
        f"devices.cpu_workers={s.devices.cpu_workers}, model.backend={s.model.backend}"
    )
    results.meta["peers_software"] = {peer.name: peers.software(peer) for peer in installed}
    with ExitStack() as stack:
        appliance, _ = stack.enter_context(running_appliance(folder / "inferd", env))
        contenders = [
            peers.Contender(
                "inferd", f"{appliance.url}/predict", lambda: frontdoor.cpu_by_group(appliance.pid)
            )
        ]
        for peer in installed:
            contenders.append(peers.start_peer(stack, peer, CONFIG, env, folder / peer.name, photo))
        results.peers += peers.measure_peers(contenders, photo, plan)
