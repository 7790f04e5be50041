"""Device truth: after pinning, ask the ML runtime what it sees, and decide whether this shard may serve.

Discovery (NVML) says which GPUs the box has; only the runtime knows whether it can use them. A TensorFlow
wheel without its CUDA libraries, a CPU build of PyTorch or JAX without its CUDA plugin all import fine and
compute on the CPU without a word. So each worker, once its runtime is loaded, asks it (`probe_runtime`) and
`judge_device` decides: a GPU shard whose runtime sees exactly its one GPU serves; one that sees none refuses
(exit 80), unless `devices.cpu_fallback` lets it serve on the CPU, shown as such; one that sees several was
not pinned and refuses. Import the runtime only through `probe_runtime`, after `shard.pin_process`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from daemon.errors import DeviceUnavailable
from daemon.shard import Shard

log = logging.getLogger(__name__)

INSTALL_HINT = {
    "tensorflow": "install TensorFlow with its CUDA libraries (pip install 'tensorflow[and-cuda]'; ./setup.sh "
    "and tools/install.py do this on a box whose NVML shows a GPU)",
    "jax": "install JAX's CUDA plugin (pip install 'jax[cuda12]' or 'jax[cuda13]' for the driver's CUDA; "
    "./setup.sh does this on a GPU box)",
    "torch": "install a CUDA build of PyTorch for the driver's CUDA version (./setup.sh picks the index URL)",
}
"""What to do when a backend's runtime sees no GPU, by `model.backend`."""
FALLBACK_HINT = "or set devices.cpu_fallback = true to serve on the CPU"


@dataclass(frozen=True, slots=True)
class RuntimeReport:
    """What the loaded ML runtime says it can compute on."""

    backend: str
    runtime_version: str
    gpus: tuple[str, ...]
    """Names of the GPUs the runtime sees (after CUDA_VISIBLE_DEVICES): exactly one on a pinned GPU shard."""
    cuda_version: str | None = None
    """The CUDA version the runtime was built for, where it says (None for a CPU build)."""
    memory_total_bytes: int | None = None
    """Memory of the first GPU, where the runtime reports it."""


@dataclass(frozen=True, slots=True)
class DeviceVerdict:
    """Whether a shard serves, on what (as every surface shows it), and why when not as planned."""

    serve: bool
    device: str
    fallback: bool = False
    reason: str | None = None


def judge_device(shard: Shard, report: RuntimeReport, cpu_fallback: bool) -> DeviceVerdict:
    """A CPU shard serves on the CPU; a GPU shard serves only where its runtime sees exactly its one GPU."""
    if shard.kind != "gpu":
        return DeviceVerdict(serve=True, device="CPU")
    if len(report.gpus) == 1:
        return DeviceVerdict(serve=True, device=report.gpus[0])
    runtime = f"{report.backend} {report.runtime_version}"
    if report.gpus:
        reason = (
            f"{runtime} sees {len(report.gpus)} GPUs, not just GPU {shard.index} ({shard.name}): "
            "CUDA_VISIBLE_DEVICES was not applied before the runtime loaded; start workers through `inferd run`"
        )
        return DeviceVerdict(serve=False, device="?", reason=reason)
    build = f"built for CUDA {report.cuda_version}" if report.cuda_version else "a build without CUDA"
    cause = f"{runtime}, {build}, sees no GPU, but NVML lists GPU {shard.index} ({shard.name})"
    if cpu_fallback:
        return DeviceVerdict(
            serve=True,
            device=f"CPU (fallback for GPU {shard.index}: {shard.name})",
            fallback=True,
            reason=f"{cause}; serving on the CPU (devices.cpu_fallback = true)",
        )
    hint = INSTALL_HINT.get(report.backend, "install a GPU build of the runtime")
    return DeviceVerdict(serve=False, device="?", reason=f"{cause}: {hint}, {FALLBACK_HINT}")


def probe_runtime(backend: str) -> RuntimeReport:
    """Import the runtime of Keras backend `backend` and list the GPUs it sees (call after pinning)."""
    probes = {"tensorflow": _probe_tensorflow, "jax": _probe_jax, "torch": _probe_torch}
    try:
        return probes[backend]()
    except ImportError as exc:
        raise DeviceUnavailable(
            f"model.backend = {backend!r} but its runtime is not installed ({exc}); "
            f"INFERD_MODEL_BACKEND={backend} ./setup.sh installs it"
        ) from None


def _probe_tensorflow() -> RuntimeReport:
    import tensorflow as tf

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        names.append(str(details.get("device_name", gpu.name)))
    build = tf.sysconfig.get_build_info()
    cuda = build.get("cuda_version") if build.get("is_cuda_build") else None
    return RuntimeReport("tensorflow", tf.__version__, tuple(names), cuda)


def _probe_jax() -> RuntimeReport:
    import jax

    gpus = [device for device in jax.devices() if device.platform in ("gpu", "cuda", "rocm")]
    memory = None
    if gpus:
        stats: Any = gpus[0].memory_stats() or {}
        memory = stats.get("bytes_limit")
    # e.g. "cuda 12080" on a CUDA build; the CPU client says nothing useful.
    cuda = str(getattr(gpus[0].client, "platform_version", "")) or None if gpus else None
    return RuntimeReport("jax", jax.__version__, tuple(str(d.device_kind) for d in gpus), cuda, memory)


def _probe_torch() -> RuntimeReport:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    names = tuple(torch.cuda.get_device_name(i) for i in range(count))
    memory = int(torch.cuda.get_device_properties(0).total_memory) if count else None
    return RuntimeReport("torch", str(torch.__version__), names, torch.version.cuda, memory)


def limit_gpu_memory(backend: str, limit_mb: int, total_bytes: int | None) -> None:
    """Cap this worker's device memory at `limit_mb` (0 = no cap) on a GPU its runtime sees.

    JAX's cap is set before it loads (`Shard.pin_environment`); TensorFlow and PyTorch take it here, after the
    probe and before the model allocates anything.
    """
    if not limit_mb:
        return
    if backend == "tensorflow":
        import tensorflow as tf

        gpu = tf.config.list_physical_devices("GPU")[0]
        # A logical device with a memory limit replaces memory growth (TF refuses both on one device).
        tf.config.experimental.set_memory_growth(gpu, False)
        tf.config.set_logical_device_configuration(
            gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit_mb)]
        )
    elif backend == "torch" and total_bytes:
        import torch

        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_mb * 2**20 / total_bytes), 0)
    log.info("device: memory capped at %d MB (devices.gpu_memory_limit_mb)", limit_mb)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for each runtime's way of saying the device ran out of memory."""
    text = f"{type(exc).__name__}: {exc}"
    return any(mark in text for mark in ("ResourceExhausted", "RESOURCE_EXHAUSTED", "OutOfMemory")) or (
        "out of memory" in text.lower()
    )
