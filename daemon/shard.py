"""Shard discovery: one shard per visible GPU found through NVML, or CPU shards when there is none.

One shard = one worker process = one Redis queue. The launcher discovers shards once, hands the list to
supervisord's workers through the environment, and each worker pins itself to its own shard.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any

from daemon.ops.nvml import GpuInfo, Nvml
from daemon.settings import Settings

log = logging.getLogger(__name__)

SHARDS_ENV = "INFERD_SHARDS"
"""JSON list of shards the launcher passes to every worker; worker N takes entry N."""


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    kind: str  # "gpu" or "cpu"
    index: int
    name: str
    uuid: str | None = None
    memory_total_bytes: int | None = None

    def pin_environment(self, cpu_threads: int | None = None, memory_limit_mb: int = 0) -> dict[str, str]:
        """Variables the worker must have before the ML runtime is imported."""
        env: dict[str, str] = {"TF_CPP_MIN_LOG_LEVEL": "2"}
        if self.kind == "gpu":
            env["CUDA_VISIBLE_DEVICES"] = self.uuid or str(self.index)
            # Memory grows on demand, so a worker holds what its batches need rather than the whole card.
            env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
            env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
            if memory_limit_mb and self.memory_total_bytes:
                # JAX takes its cap only as a fraction of the card, read once when it loads.
                fraction = min(1.0, memory_limit_mb * 2**20 / self.memory_total_bytes)
                env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{fraction:.4f}"
        else:
            env["CUDA_VISIBLE_DEVICES"] = ""
            # On a CPU shard the CUDA plugin's `failed call to cuInit` ERROR only says there is no GPU to use,
            # which is the point: errors that matter reach Python as exceptions and are logged by the worker.
            env["TF_CPP_MIN_LOG_LEVEL"] = "3"
        if cpu_threads is not None:
            env["OMP_NUM_THREADS"] = str(cpu_threads)
            env["TF_NUM_INTRAOP_THREADS"] = str(cpu_threads)
            env["TF_NUM_INTEROP_THREADS"] = "1"
        return env


def cpu_threads_per_worker(shard_count: int) -> int:
    """The cores this process may use, shared evenly between the workers on the box."""
    try:
        cores = len(os.sched_getaffinity(0))  # honours taskset and cgroup cpusets, unlike cpu_count
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, shard_count))


def use_backend(backend: str, env: MutableMapping[str, str] | None = None) -> None:
    """Make `model.backend` the Keras backend of this process, whatever KERAS_BACKEND it inherited."""
    env = os.environ if env is None else env
    inherited = env.get("KERAS_BACKEND")
    if inherited and inherited != backend:
        # The settings are the appliance's one source of truth (INFERD_MODEL_BACKEND is their override); a
        # KERAS_BACKEND left in a shell profile must neither stop the box nor silently change its runtime.
        log.warning(
            "shard: KERAS_BACKEND=%s in the environment disagrees with model.backend = %r; using %r "
            "(set INFERD_MODEL_BACKEND to choose another backend)",
            inherited,
            backend,
            backend,
        )
    env["KERAS_BACKEND"] = backend


def pin_process(shard: Shard, settings: Settings, shard_count: int) -> int:
    """Pin this process to `shard`, one of `shard_count` workers; call before Keras is imported. Returns the
    CPU threads it may use."""
    # Device visibility, thread pools and memory caps are read once, when the ML runtime loads: after that it
    # is too late. Every kind of shard gets its share of the cores: a GPU worker's runtime would otherwise
    # size its host thread pools for the whole box, once per worker.
    threads = cpu_threads_per_worker(shard_count)
    os.environ.update(shard.pin_environment(threads, settings.devices.gpu_memory_limit_mb))
    use_backend(settings.model.backend)
    return threads


def _visible_filter(env: Mapping[str, str]) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as a list of index or UUID tokens; None when unset (all visible)."""
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    tokens = [token.strip() for token in value.split(",") if token.strip()]
    # CUDA stops at the first invalid entry, so "-1" (a common way to hide every GPU) hides the rest too.
    visible: list[str] = []
    for token in tokens:
        if token.startswith("-"):
            break
        visible.append(token)
    return visible


def gpu_shard(gpu: GpuInfo) -> Shard:
    return Shard(
        shard_id=f"gpu{gpu.index}",
        kind="gpu",
        index=gpu.index,
        name=gpu.name,
        uuid=gpu.uuid,
        memory_total_bytes=gpu.memory_total_bytes,
    )


def _is_visible(gpu: Shard, visible: list[str] | None) -> bool:
    if visible is None:
        return True
    return any(token == str(gpu.index) or (gpu.uuid and gpu.uuid.startswith(token)) for token in visible)


def cpu_shards(count: int) -> list[Shard]:
    return [Shard(shard_id=f"cpu{i}", kind="cpu", index=i, name="CPU") for i in range(count)]


def discover_shards(
    settings: Settings, env: Mapping[str, str] | None = None, nvml: Any = None
) -> list[Shard]:
    """GPUs that are visible and selected by `devices.gpus`, else `devices.cpu_workers` CPU shards.

    `nvml` replaces the pynvml module (tests pass a stand-in).
    """
    env = os.environ if env is None else env
    wanted = settings.devices.gpus
    if wanted == ():
        log.info("shard: devices.gpus is none; running %d CPU shard(s)", settings.devices.cpu_workers)
        return cpu_shards(settings.devices.cpu_workers)
    visible = _visible_filter(env)
    with Nvml.open(nvml) as session:
        reason = session.unavailable_reason
        found: list[GpuInfo] = []
        if reason is None:
            try:
                found = session.gpus()
            except Exception as exc:  # NVML started but could not list its GPUs (a driver fault)
                reason = str(exc) or type(exc).__name__
    if reason is not None:
        log.info(
            "shard: NVML unavailable (%s); running %d CPU shard(s)", reason, settings.devices.cpu_workers
        )
        return cpu_shards(settings.devices.cpu_workers)
    gpus = [shard for shard in map(gpu_shard, found) if _is_visible(shard, visible)]
    if wanted is not None:
        missing = sorted(set(wanted) - {gpu.index for gpu in gpus})
        if missing:
            log.warning(
                "shard: devices.gpus asks for GPU(s) %s, which are not present or not visible", missing
            )
        gpus = [gpu for gpu in gpus if gpu.index in wanted]
    if not gpus:
        log.info("shard: no GPU visible; running %d CPU shard(s)", settings.devices.cpu_workers)
        return cpu_shards(settings.devices.cpu_workers)
    log.info("shard: %d GPU shard(s): %s", len(gpus), ", ".join(f"{g.shard_id} {g.name}" for g in gpus))
    return gpus


def encode_shards(shards: list[Shard]) -> str:
    return json.dumps([asdict(shard) for shard in shards])


def decode_shards(text: str) -> list[Shard]:
    return [Shard(**item) for item in json.loads(text)]
