"""The one reader of NVML: find the library, start it once, list GPUs, read a GPU's figures, shut it down.

Shard discovery, the `/metrics` GPU gauges and `tools/gpu_status` all read GPUs through `Nvml`. It takes
the NVML module as an argument (pynvml, or the stand-in a test passes). A machine without the library or
the driver is normal, not an error: the session is then not `available` and reads nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """What identifies a GPU; it does not change while the machine runs."""

    index: int
    name: str
    uuid: str
    memory_total_bytes: int


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU's figures now; a figure the GPU does not report (NVML_ERROR_NOT_SUPPORTED) is None."""

    utilization_pct: int | None
    memory_used_bytes: int | None
    memory_total_bytes: int | None
    temperature_c: int | None
    power_w: float | None


def load_pynvml() -> Any | None:
    """The pynvml module (from nvidia-ml-py) when importable; None means no NVML at all."""
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


def _text(value: Any) -> str:
    # Older pynvml releases return bytes for names and UUIDs, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


def _or_none(read: Callable[[], Any]) -> Any:
    try:
        return read()
    except Exception:  # pynvml raises a class per NVML return code; any of them means "no figure"
        return None


class Nvml:
    """An NVML session over `module` (pynvml or a stand-in; None: no library), started in the constructor."""

    def __init__(self, module: Any | None) -> None:
        self._nvml: Any = module
        self.available = False
        self.unavailable_reason: str | None = "no NVML library (pynvml is not installed)"
        if module is None:
            return
        try:
            module.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            self.unavailable_reason = str(exc) or type(exc).__name__
            return
        self.available = True
        self.unavailable_reason = None

    @classmethod
    def open(cls, module: Any | None = None) -> Nvml:
        """A session over `module`, or over pynvml when it is None."""
        return cls(load_pynvml() if module is None else module)

    def gpus(self) -> list[GpuInfo]:
        """Every GPU NVML reports, in NVML index order; NVML's own error if it cannot list them."""
        if not self.available:
            return []
        nvml = self._nvml
        found = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            found.append(
                GpuInfo(
                    index=index,
                    name=_text(nvml.nvmlDeviceGetName(handle)),
                    uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
                    memory_total_bytes=int(nvml.nvmlDeviceGetMemoryInfo(handle).total),
                )
            )
        return found

    def gpu_count(self) -> int:
        """How many GPUs NVML reports; 0 without NVML or when it cannot tell."""
        count = _or_none(self._nvml.nvmlDeviceGetCount) if self.available else None
        return int(count) if count is not None else 0

    def read(self, index: int) -> GpuReading | None:
        """GPU `index`'s figures now; None without NVML or for an index NVML does not know."""
        if not self.available:
            return None
        nvml = self._nvml
        handle = _or_none(lambda: nvml.nvmlDeviceGetHandleByIndex(index))
        if handle is None:
            return None
        memory = _or_none(lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        power_mw = _or_none(lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        return GpuReading(
            utilization_pct=_or_none(lambda: int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)),
            memory_used_bytes=None if memory is None else int(memory.used),
            memory_total_bytes=None if memory is None else int(memory.total),
            temperature_c=_or_none(
                lambda: int(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU))
            ),
            power_w=None if power_mw is None else power_mw / 1000.0,
        )

    def __enter__(self) -> Nvml:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Shut NVML down; reading afterwards finds nothing. Safe to call twice."""
        if self.available:
            _or_none(self._nvml.nvmlShutdown)
            self.available = False
