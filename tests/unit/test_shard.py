"""Shard discovery with NVML present (a stand-in NVML module), absent, and CUDA_VISIBLE_DEVICES applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from daemon.settings import Settings, load_settings
from daemon.shard import Shard, decode_shards, discover_shards, encode_shards
from testkit.config import write_settings
from tests.fake_nvml import FakeGpu, FakeNvml

FOUR_GPUS = [FakeGpu(name=f"NVIDIA H100 80GB HBM3 #{i}", uuid=f"GPU-{i}aaa-bbbb") for i in range(4)]


def device_settings(folder: Path, **devices: Any) -> Settings:
    """Settings with these [devices] values; discovery reads nothing else (no model file is needed)."""
    return load_settings(write_settings(folder, {"devices": devices}), env={})


@pytest.fixture()
def auto_settings(tmp_path):
    return device_settings(tmp_path, gpus="auto", cpu_workers=2)


def test_every_nvml_gpu_becomes_a_pinned_shard(auto_settings):
    nvml = FakeNvml(FOUR_GPUS)
    shards = discover_shards(auto_settings, env={}, nvml=nvml)
    assert [s.shard_id for s in shards] == ["gpu0", "gpu1", "gpu2", "gpu3"]
    assert shards[1].name == "NVIDIA H100 80GB HBM3 #1" and shards[1].uuid == "GPU-1aaa-bbbb"
    assert shards[1].memory_total_bytes == 80 * 2**30
    assert nvml.shutdowns == 1
    pin = shards[2].pin_environment()
    assert pin["CUDA_VISIBLE_DEVICES"] == "GPU-2aaa-bbbb" and pin["TF_FORCE_GPU_ALLOW_GROWTH"] == "true"


def test_cuda_visible_devices_by_index_and_uuid(auto_settings):
    shards = discover_shards(
        auto_settings, env={"CUDA_VISIBLE_DEVICES": "3,GPU-1aaa"}, nvml=FakeNvml(FOUR_GPUS)
    )
    assert [s.shard_id for s in shards] == ["gpu1", "gpu3"]


def test_cuda_visible_devices_empty_or_minus_one_hides_every_gpu(auto_settings):
    for value in ("", "-1", "-1,0"):
        shards = discover_shards(auto_settings, env={"CUDA_VISIBLE_DEVICES": value}, nvml=FakeNvml(FOUR_GPUS))
        assert [s.shard_id for s in shards] == ["cpu0", "cpu1"], value


def test_explicit_gpu_list_selects_and_ignores_missing(tmp_path, caplog):
    settings = device_settings(tmp_path, gpus=[0, 2, 7])
    shards = discover_shards(settings, env={}, nvml=FakeNvml(FOUR_GPUS))
    assert [s.shard_id for s in shards] == ["gpu0", "gpu2"]
    assert "GPU(s) [7]" in caplog.text


def test_no_nvml_library_or_no_gpu_means_cpu_shards_said_once(auto_settings, caplog):
    caplog.set_level("INFO")
    assert [s.kind for s in discover_shards(auto_settings, env={}, nvml=FakeNvml([], fail_init=True))] == [
        "cpu"
    ] * 2
    assert caplog.text.count("NVML unavailable") == 1
    assert [s.shard_id for s in discover_shards(auto_settings, env={}, nvml=FakeNvml([]))] == ["cpu0", "cpu1"]


def test_gpus_none_never_asks_nvml(tmp_path):
    nvml = FakeNvml(FOUR_GPUS, fail_init=True)
    shards = discover_shards(device_settings(tmp_path, gpus="none", cpu_workers=3), env={}, nvml=nvml)
    assert [s.shard_id for s in shards] == ["cpu0", "cpu1", "cpu2"]
    assert shards[0].pin_environment(1)["CUDA_VISIBLE_DEVICES"] == ""


def test_shard_list_round_trips_through_the_environment():
    shards = [Shard("gpu0", "gpu", 0, "H100", "GPU-x", 1), Shard("cpu0", "cpu", 0, "CPU")]
    assert decode_shards(encode_shards(shards)) == shards
