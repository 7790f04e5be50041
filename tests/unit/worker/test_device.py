"""Device truth as pure decisions (`judge_device`), the real TensorFlow probe here, and the pinning it needs."""

from __future__ import annotations

import pytest

from daemon.shard import Shard, cpu_shards, cpu_threads_per_worker, use_backend
from daemon.worker.device import RuntimeReport, is_out_of_memory, judge_device

GPU = Shard("gpu1", "gpu", 1, "NVIDIA H100 80GB HBM3", uuid="GPU-1abc", memory_total_bytes=80 * 2**30)


def report(*gpus: str, backend: str = "tensorflow", cuda: str | None = None) -> RuntimeReport:
    return RuntimeReport(backend, "9.9", gpus, cuda)


def test_a_gpu_shard_serves_on_the_one_gpu_its_runtime_sees():
    verdict = judge_device(GPU, report("NVIDIA H100 80GB HBM3", cuda="12.5"), cpu_fallback=False)
    assert verdict.serve and verdict.device == "NVIDIA H100 80GB HBM3" and not verdict.fallback
    assert verdict.reason is None


@pytest.mark.parametrize(
    ("backend", "fix"),
    [("tensorflow", "tensorflow[and-cuda]"), ("jax", "jax[cuda12]"), ("torch", "CUDA build of PyTorch")],
)
def test_a_gpu_shard_whose_runtime_sees_no_gpu_refuses_naming_cause_and_fix(backend, fix):
    verdict = judge_device(GPU, report(backend=backend), cpu_fallback=False)
    assert not verdict.serve
    assert verdict.reason is not None
    assert f"{backend} 9.9, a build without CUDA, sees no GPU, but NVML lists GPU 1" in verdict.reason
    assert fix in verdict.reason and "devices.cpu_fallback = true" in verdict.reason


def test_cpu_fallback_serves_on_the_cpu_and_names_it_so():
    verdict = judge_device(GPU, report(cuda="12.5"), cpu_fallback=True)
    assert verdict.serve and verdict.fallback
    assert verdict.device == "CPU (fallback for GPU 1: NVIDIA H100 80GB HBM3)"
    assert verdict.reason is not None and "built for CUDA 12.5" in verdict.reason


def test_a_runtime_that_sees_several_gpus_was_not_pinned_and_refuses_even_with_fallback():
    verdict = judge_device(GPU, report("A", "B"), cpu_fallback=True)
    assert not verdict.serve and verdict.reason is not None and "sees 2 GPUs" in verdict.reason


def test_cpu_shards_serve_on_the_cpu():
    verdict = judge_device(cpu_shards(1)[0], report(), cpu_fallback=False)
    assert verdict.serve and verdict.device == "CPU" and not verdict.fallback


def test_out_of_memory_is_recognised_for_each_runtime():
    class ResourceExhaustedError(Exception):
        pass

    class OutOfMemoryError(RuntimeError):
        pass

    assert is_out_of_memory(ResourceExhaustedError("OOM when allocating tensor"))
    assert is_out_of_memory(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 123 bytes"))
    assert is_out_of_memory(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(ValueError("shapes (1, 3) and (4,) are incompatible"))


def test_model_backend_wins_over_an_inherited_keras_backend(caplog):
    env = {"KERAS_BACKEND": "jax"}
    use_backend("torch", env)
    assert env["KERAS_BACKEND"] == "torch"
    assert "KERAS_BACKEND=jax in the environment disagrees with model.backend = 'torch'" in caplog.text


def test_every_shard_kind_gets_its_share_of_the_cores(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert cpu_threads_per_worker(4) == 4 and cpu_threads_per_worker(32) == 1
    gpu_env = GPU.pin_environment(cpu_threads=4, memory_limit_mb=20 * 1024)
    assert gpu_env["OMP_NUM_THREADS"] == "4" and gpu_env["TF_NUM_INTRAOP_THREADS"] == "4"
    assert gpu_env["CUDA_VISIBLE_DEVICES"] == "GPU-1abc"
    assert gpu_env["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.2500"
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in GPU.pin_environment(4)
