"""The NVML reader through a stand-in NVML module: listing, figures, missing figures, no NVML at all."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics.inferd import GpuCollector
from daemon.ops.nvml import GpuInfo, GpuReading, Nvml
from tests.fake_nvml import GIB, H100, FakeGpu, FakeNvml

NO_POWER = FakeGpu(name="NVIDIA A10", uuid="GPU-a10", utilization=3, used=GIB, total=24 * GIB, temperature=40)


def test_reader_lists_gpus_and_reads_each_figure_leaving_unsupported_ones_empty():
    nvml = FakeNvml([H100, NO_POWER])
    with Nvml(nvml) as reader:
        assert reader.available and reader.unavailable_reason is None
        assert reader.gpus() == [
            GpuInfo(0, "NVIDIA H100 80GB HBM3", "GPU-0000", 80 * GIB),
            GpuInfo(1, "NVIDIA A10", "GPU-a10", 24 * GIB),
        ]
        assert reader.gpu_count() == 2
        assert reader.read(0) == GpuReading(87, 10 * GIB, 80 * GIB, 61, 312.0)
        assert reader.read(1) == GpuReading(3, GIB, 24 * GIB, 40, None)
        assert reader.read(7) is None  # a GPU index NVML does not know (e.g. the board was removed)
    assert nvml.initialised == 0 and nvml.shutdowns == 1
    reader.close()  # a second close does not shut NVML down twice
    assert nvml.shutdowns == 1


def test_without_a_working_nvml_nothing_is_read_and_the_reason_is_kept():
    missing = Nvml(None)
    assert not missing.available and "no NVML library" in (missing.unavailable_reason or "")
    broken = Nvml(FakeNvml([H100], fail_init=True))
    assert not broken.available and broken.unavailable_reason == "NVML Shared Library Not Found"
    for reader in (missing, broken):
        assert reader.read(0) is None and reader.gpus() == [] and reader.gpu_count() == 0


def scrape(collector: GpuCollector) -> dict[tuple[str, str], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        (sample.name, sample.labels.get("gpu", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_gauges_come_from_the_same_reader():
    samples = scrape(GpuCollector(FakeNvml([H100, NO_POWER])))
    assert samples[("inferd_gpu_utilization_percent", "0")] == 87
    assert samples[("inferd_gpu_memory_used_bytes", "1")] == GIB
    assert samples[("inferd_gpu_memory_total_bytes", "0")] == 80 * GIB
    assert scrape(GpuCollector(FakeNvml([H100], fail_init=True))) == {}
