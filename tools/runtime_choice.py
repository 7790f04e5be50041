"""Which ML runtime to install for `model.backend` on the hardware found: one decision for setup and install.

`read_gpus` looks through NVML (pynvml, when importable) or else `nvidia-smi`; `choose_runtime` turns the
backend and that reading into pip arguments and a one-line reason. A box with an NVIDIA GPU gets a runtime
that can use it (TensorFlow with its CUDA libraries, JAX with the CUDA plugin of the driver's major version,
a PyTorch build from the index of a CUDA version the driver runs); any other box keeps the CPU builds.

    python -m tools.runtime_choice [--backend B] [--config PATH]

prints the pip arguments one per line on stdout and the reason on stderr (setup.sh reads both). Standard
library only: tools/install.py runs it under the system python3 before any virtual environment exists.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.errors import UsageArgumentParser

TENSORFLOW = "tensorflow>=2.16"
TENSORFLOW_CUDA = "tensorflow[and-cuda]>=2.16"
JAX = "jax>=0.4.30"
TORCH = "torch==2.13.0"
"""One tested PyTorch release: the CPU and CUDA builds of a version differ only in their `+local` tag."""
TORCH_INDEX = "https://download.pytorch.org/whl/{tag}"
TORCH_CUDA_BUILDS = ((12, 6, "cu126"), (12, 8, "cu128"), (13, 0, "cu130"))
"""CUDA builds PyTorch publishes for TORCH, oldest first: a build runs on a driver of its major version
(CUDA minor-version compatibility), best on one at least as new as the build."""
JAX_CUDA_MAJORS = (12, 13)
"""CUDA major versions with a `jax[cudaNN]` plugin."""
MIN_CUDA_MAJOR = 12
"""TensorFlow 2.16+, JAX and PyTorch CUDA builds all need a driver for CUDA 12 or newer."""


@dataclass(frozen=True, slots=True)
class GpuReading:
    """NVIDIA GPUs on this box, as NVML or nvidia-smi report them."""

    gpus: tuple[str, ...] = ()
    driver: str | None = None
    cuda: tuple[int, int] | None = None
    """The newest CUDA version the driver supports (NVML's nvmlSystemGetCudaDriverVersion), as (major, minor)."""
    source: str = "none"
    """"nvml", "nvidia-smi", or "none" when neither is there."""

    def describe(self) -> str:
        cuda = f"CUDA {self.cuda[0]}.{self.cuda[1]}" if self.cuda else "CUDA version unknown"
        names = ", ".join(sorted(set(self.gpus)))
        return f"{self.source} shows {len(self.gpus)} GPU(s) ({names}), driver {self.driver or '?'} ({cuda})"


@dataclass(frozen=True, slots=True)
class RuntimeChoice:
    pip_args: tuple[str, ...]
    reason: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml(nvml: Any) -> GpuReading | None:
    """GPUs through an NVML module (pynvml or a stand-in); None when NVML cannot start (no driver)."""
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
        return None
    try:
        names = tuple(
            _text(nvml.nvmlDeviceGetName(nvml.nvmlDeviceGetHandleByIndex(i)))
            for i in range(nvml.nvmlDeviceGetCount())
        )
        version = int(nvml.nvmlSystemGetCudaDriverVersion())  # e.g. 12040 for 12.4
        driver = _text(nvml.nvmlSystemGetDriverVersion())
        return GpuReading(names, driver, (version // 1000, version % 1000 // 10), "nvml")
    finally:
        nvml.nvmlShutdown()


def read_nvidia_smi(run: Callable[[list[str]], str | None]) -> GpuReading | None:
    """GPUs from `nvidia-smi -L` and the CUDA version in `nvidia-smi`'s banner; None without the command."""
    listing = run(["nvidia-smi", "-L"])
    if not listing:
        return None
    names = tuple(found.group(1) for found in re.finditer(r"^GPU \d+: (.+?) \(UUID", listing, re.MULTILINE))
    banner = run(["nvidia-smi"]) or ""
    cuda = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", banner)
    driver = re.search(r"Driver Version:\s*([\d.]+)", banner)
    return GpuReading(
        names,
        driver.group(1) if driver else None,
        (int(cuda.group(1)), int(cuda.group(2))) if cuda else None,
        "nvidia-smi",
    )


def _run(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def read_gpus(nvml: Any = None, run: Callable[[list[str]], str | None] = _run) -> GpuReading:
    """What this box has: NVML first (pynvml, or `nvml` given), else nvidia-smi, else no GPU."""
    if nvml is None:
        try:
            import pynvml

            nvml = pynvml
        except ImportError:
            nvml = None
    reading = read_nvml(nvml) if nvml is not None else None
    if reading is None or not reading.gpus:
        reading = read_nvidia_smi(run) or reading
    return reading or GpuReading()


def torch_build(cuda: tuple[int, int]) -> str | None:
    """The PyTorch CUDA build for a driver: the newest of its major version not newer than the driver, else
    the oldest of that major (minor-version compatibility); None when PyTorch has none for that major."""
    same_major = [(major, minor, tag) for major, minor, tag in TORCH_CUDA_BUILDS if major == cuda[0]]
    fitting = [tag for major, minor, tag in same_major if (major, minor) <= cuda]
    if fitting:
        return fitting[-1]
    return same_major[0][2] if same_major else None


def choose_runtime(backend: str, reading: GpuReading) -> RuntimeChoice:
    """pip arguments for `backend`'s runtime on this hardware, and one line saying which and why."""
    cpu = {
        "tensorflow": (TENSORFLOW,),
        "jax": (JAX,),
        # PyPI's Linux torch is the CUDA build (several GB): the CPU index's `+cpu` build is the one wanted.
        # --index-url, not --extra-index-url: with two indexes pip takes the best version from either, so a
        # package of the same name on PyPI could shadow PyTorch's; the PyTorch index also carries torch's
        # own dependencies, and this pip call installs torch alone.
        "torch": (TORCH, "--index-url", TORCH_INDEX.format(tag="cpu")),
    }
    if backend not in cpu:
        raise ValueError(f"unknown backend {backend!r}; expected one of {sorted(cpu)}")
    if not reading.gpus:
        return RuntimeChoice(
            cpu[backend], f"{backend}: no NVIDIA GPU found (neither NVML nor nvidia-smi shows one): CPU build"
        )
    found = reading.describe()
    if reading.cuda is None or reading.cuda[0] < MIN_CUDA_MAJOR:
        why = (
            f"{backend}: {found}; its driver cannot run CUDA {MIN_CUDA_MAJOR}: CPU build (upgrade the driver)"
        )
        return RuntimeChoice(cpu[backend], why)
    if backend == "tensorflow":
        return RuntimeChoice((TENSORFLOW_CUDA,), f"tensorflow: {found}: TensorFlow with its CUDA libraries")
    if backend == "jax":
        major = max((m for m in JAX_CUDA_MAJORS if m <= reading.cuda[0]), default=JAX_CUDA_MAJORS[0])
        return RuntimeChoice(
            (f"jax[cuda{major}]>=0.4.30",), f"jax: {found}: JAX with its CUDA {major} plugin"
        )
    tag = torch_build(reading.cuda)
    if tag is None:
        tag = TORCH_CUDA_BUILDS[-1][2]  # a driver newer than any build runs the newest one
    return RuntimeChoice(
        (TORCH, "--index-url", TORCH_INDEX.format(tag=tag)),
        f"torch: {found}: PyTorch's {tag} build",
    )


def configured_backend(config: str | None) -> str:
    """`model.backend` of the settings (INFERD_MODEL_BACKEND or the file), as the workers will read it."""
    from daemon.settings import load_settings

    return load_settings(config).model.backend


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(
        prog="runtime_choice", description="pip arguments for the ML runtime this box should have"
    )
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), help="default: model.backend")
    parser.add_argument("--config", help="settings file (default: INFERD_CONFIG or conf/settings.toml)")
    args = parser.parse_args(argv)
    choice = choose_runtime(args.backend or configured_backend(args.config), read_gpus())
    print("\n".join(choice.pip_args))
    print(f"runtime: {choice.reason}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
