"""The runtime set-up installs, from stand-in NVML readings: no GPU, driver CUDA 12.4 and 13.0, nvidia-smi only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tools.runtime_choice import GpuReading, choose_runtime, read_gpus

SMI_LIST = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0a)\nGPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-1b)\n"
SMI_BANNER = "| NVIDIA-SMI 550.54.15    Driver Version: 550.54.15    CUDA Version: 12.4     |\n"


class StandinNvml:
    def __init__(self, gpus: list[str], cuda: int, fail: bool = False) -> None:
        self.gpus, self.cuda, self.fail = gpus, cuda, fail

    def nvmlInit(self):
        if self.fail:
            raise RuntimeError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle):
        return self.gpus[handle.index].encode()

    def nvmlSystemGetCudaDriverVersion(self):
        return self.cuda

    def nvmlSystemGetDriverVersion(self):
        return "580.65.06"


def no_smi(argv):
    return None


def smi(argv):
    return SMI_LIST if argv == ["nvidia-smi", "-L"] else SMI_BANNER


NO_GPU = read_gpus(StandinNvml([], 0, fail=True), no_smi)
CUDA_12_4 = read_gpus(StandinNvml(["NVIDIA H100 80GB HBM3"] * 2, 12040), no_smi)
CUDA_13_0 = read_gpus(StandinNvml(["NVIDIA B200"], 13000), no_smi)
SMI_ONLY = read_gpus(StandinNvml([], 0, fail=True), smi)


def test_readings():
    assert GpuReading() == NO_GPU
    assert CUDA_12_4.cuda == (12, 4) and CUDA_12_4.source == "nvml" and len(CUDA_12_4.gpus) == 2
    assert CUDA_13_0.cuda == (13, 0) and CUDA_13_0.driver == "580.65.06"
    assert GpuReading(("NVIDIA A100-SXM4-40GB",) * 2, "550.54.15", (12, 4), "nvidia-smi") == SMI_ONLY


@pytest.mark.parametrize(
    ("backend", "reading", "args", "reason"),
    [
        ("tensorflow", NO_GPU, ["tensorflow>=2.16"], "no NVIDIA GPU found"),
        ("jax", NO_GPU, ["jax>=0.4.30"], "CPU build"),
        (
            "torch",
            NO_GPU,
            ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"],
            "CPU",
        ),
        (
            "tensorflow",
            CUDA_12_4,
            ["tensorflow[and-cuda]>=2.16"],
            "nvml shows 2 GPU(s) (NVIDIA H100 80GB HBM3)",
        ),
        ("jax", CUDA_12_4, ["jax[cuda12]>=0.4.30"], "JAX with its CUDA 12 plugin"),
        (
            "torch",
            CUDA_12_4,
            ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cu126"],
            "cu126",
        ),
        ("jax", CUDA_13_0, ["jax[cuda13]>=0.4.30"], "driver 580.65.06 (CUDA 13.0)"),
        (
            "torch",
            CUDA_13_0,
            ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cu130"],
            "cu130",
        ),
        ("tensorflow", SMI_ONLY, ["tensorflow[and-cuda]>=2.16"], "nvidia-smi shows 2 GPU(s)"),
        (
            "torch",
            SMI_ONLY,
            ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cu126"],
            "12.4",
        ),
    ],
)
def test_choose_runtime(backend, reading, args, reason):
    choice = choose_runtime(backend, reading)
    assert list(choice.pip_args) == args
    assert reason in choice.reason and "\n" not in choice.reason


def test_a_driver_too_old_for_cuda_12_keeps_the_cpu_build_and_says_why():
    old = GpuReading(("Tesla V100",), "470.82", (11, 4), "nvml")
    choice = choose_runtime("tensorflow", old)
    assert choice.pip_args == ("tensorflow>=2.16",) and "upgrade the driver" in choice.reason
