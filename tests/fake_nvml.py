"""A stand-in for the pynvml module: the calls daemon.ops.nvml makes, answered from a list of fake boards."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

GIB = 2**30


class FakeNVMLError(Exception):
    """Stands for pynvml's NVMLError subclasses (one per NVML return code)."""


@dataclass(frozen=True)
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    uuid: str = "GPU-0000"
    total: int = 80 * GIB
    used: int = 0
    utilization: int = 0
    temperature: int = 40
    power_mw: int | None = None  # None: this board does not report power (NVML_ERROR_NOT_SUPPORTED)


class FakeNvml:
    """Answers like pynvml over `gpus`; counts starts and shutdowns so a test can see the session closed."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, gpus: list[FakeGpu], fail_init: bool = False) -> None:
        self.gpus, self.fail_init = gpus, fail_init
        self.initialised = 0
        self.shutdowns = 0

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise FakeNVMLError("NVML Shared Library Not Found")
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeGpu:
        if index >= len(self.gpus):
            raise FakeNVMLError("Invalid Argument")
        return self.gpus[index]

    def nvmlDeviceGetName(self, gpu: FakeGpu) -> bytes:
        return gpu.name.encode()  # older pynvml releases answer bytes

    def nvmlDeviceGetUUID(self, gpu: FakeGpu) -> str:
        return gpu.uuid

    def nvmlDeviceGetUtilizationRates(self, gpu: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(gpu=gpu.utilization, memory=0)

    def nvmlDeviceGetMemoryInfo(self, gpu: FakeGpu) -> SimpleNamespace:
        return SimpleNamespace(used=gpu.used, total=gpu.total, free=gpu.total - gpu.used)

    def nvmlDeviceGetTemperature(self, gpu: FakeGpu, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return gpu.temperature

    def nvmlDeviceGetPowerUsage(self, gpu: FakeGpu) -> int:
        if gpu.power_mw is None:
            raise FakeNVMLError("Not Supported")
        return gpu.power_mw


H100 = FakeGpu(utilization=87, used=10 * GIB, total=80 * GIB, temperature=61, power_mw=312_000)
"""A busy board that reports every figure."""
