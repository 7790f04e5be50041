"""A stand-in `pynvml` module for processes: put its folder first on PYTHONPATH and the real discovery code
finds GPUs on a machine that has none, so a test can watch what a worker does when its runtime sees no GPU."""

from __future__ import annotations

from pathlib import Path

STANDIN_GPU_NAME = "NVIDIA H100 80GB HBM3 (stand-in)"

SOURCE = '''
"""Stand-in pynvml written by tests/standin_nvml.py: one GPU, as NVML would report it."""
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0
_TOTAL = 80 * 2**30


def nvmlInit():
    if not {driver_loaded!r}:
        raise RuntimeError("NVML Shared Library Not Found")
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return 1
def nvmlDeviceGetHandleByIndex(index): return index
def nvmlDeviceGetName(handle): return {name!r}
def nvmlDeviceGetUUID(handle): return "GPU-5a1d0000-0000-0000-0000-000000000000"
def nvmlDeviceGetMemoryInfo(handle): return SimpleNamespace(total=_TOTAL, used=2**30, free=_TOTAL - 2**30)
def nvmlDeviceGetUtilizationRates(handle): return SimpleNamespace(gpu=0, memory=0)
def nvmlDeviceGetTemperature(handle, sensor): return 30
def nvmlDeviceGetPowerUsage(handle): return 70000
def nvmlSystemGetDriverVersion(): return "550.54.15"
def nvmlSystemGetCudaDriverVersion(): return {cuda_driver_version!r}
'''


def write_standin_pynvml(folder: Path, cuda_driver_version: int = 12040, driver_loaded: bool = True) -> Path:
    """Write pynvml.py into `folder` and return the folder, for PYTHONPATH: a driver for CUDA
    `cuda_driver_version` (12040 is 12.4, as NVML encodes it), or, not `driver_loaded`, no NVML at all."""
    folder.mkdir(parents=True, exist_ok=True)
    source = SOURCE.format(
        name=STANDIN_GPU_NAME, cuda_driver_version=cuda_driver_version, driver_loaded=driver_loaded
    )
    (folder / "pynvml.py").write_text(source)
    return folder
