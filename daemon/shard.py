"""Shard discovery: one shard per visible GPU found through NVML, or CPU shards when there is none.

One shard = one worker process = one Redis queue. The launcher discovers shards once, hands the list to
supervisord's workers through the environment, and each worker pins itself to its own shard.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from daemon.nvml import GpuInfo, Nvml
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

    def pin_environment(self, cpu_threads: int | None = None) -> dict[str, str]:
        """Variables the worker must have before the ML runtime is imported."""
        if self.kind == "gpu":
            return {
                "CUDA_VISIBLE_DEVICES": self.uuid or str(self.index),
                "TF_FORCE_GPU_ALLOW_GROWTH": "true",
                "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
            }
        env = {"CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
        if cpu_threads is not None:
            env["OMP_NUM_THREADS"] = str(cpu_threads)
        return env


def pin_process(shard: Shard, settings: Settings) -> int | None:
    """Pin this process to `shard`; call before Keras is imported. Returns the CPU threads it may use."""
    # Device visibility and thread pools are read once, when the ML runtime loads: after that it is too late.
    cores = os.cpu_count() or 1
    threads = max(1, cores // settings.devices.cpu_workers) if shard.kind == "cpu" else None
    os.environ.update(shard.pin_environment(threads))
    os.environ.setdefault("KERAS_BACKEND", settings.model.backend)
    if threads is not None:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
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
