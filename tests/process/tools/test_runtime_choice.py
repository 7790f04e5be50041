"""PyTorch from the cu126/cu128/cu130 index the driver runs (docs/gpu.md), as setup.sh asks for it: the real
`python -m tools.runtime_choice --backend torch` command, its driver's CUDA version read through NVML (a
stand-in pynvml first on PYTHONPATH) or, without NVML, from an `nvidia-smi` executable on PATH."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from testkit.harness import REPO
from tests.standin_nvml import write_standin_pynvml

INDEX = "https://download.pytorch.org/whl/"


def runtime_choice(tmp_path: Path, path: Path, nvml_cuda: int | None) -> tuple[list[str], str]:
    """What setup.sh reads from the command: the pip arguments (stdout, one a line) and the reason (stderr).
    `nvml_cuda`: the CUDA version NVML reports (12080 is 12.8), or None for a box without NVML."""
    standin = write_standin_pynvml(
        tmp_path / "nvml", cuda_driver_version=nvml_cuda or 0, driver_loaded=nvml_cuda is not None
    )
    result = subprocess.run(
        [sys.executable, "-m", "tools.runtime_choice", "--backend", "torch"],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": f"{standin}{os.pathsep}{REPO}",
            "PATH": str(path),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines(), result.stderr.strip()


def fake_nvidia_smi(folder: Path, cuda: str) -> Path:
    """A folder holding an `nvidia-smi` that prints what a driver for CUDA `cuda` prints (`-L`, and the banner)."""
    folder.mkdir()
    program = folder / "nvidia-smi"
    program.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "-L" ]; then\n'
        "  echo 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5a1d0000-0000-0000-0000-000000000000)'\n"
        "  exit 0\n"
        "fi\n"
        "echo '+-----------------------------------------------------------------------------------------+'\n"
        f"echo '| NVIDIA-SMI 570.86.15     Driver Version: 570.86.15     CUDA Version: {cuda}     |'\n"
        "echo '|-----------------------------------------+------------------------+----------------------+'\n"
    )
    program.chmod(program.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


@pytest.mark.parametrize(
    ("nvml_cuda", "build"),
    [
        (12040, "cu126"),  # older than every build of its major: the oldest, by minor-version compatibility
        (12060, "cu126"),
        (12080, "cu128"),
        (12090, "cu128"),  # the newest build not newer than the driver
        (13000, "cu130"),
        (13020, "cu130"),
        (14000, "cu130"),  # newer than any build: the newest
    ],
)
def test_the_driver_cuda_version_through_nvml_picks_the_torch_index(tmp_path, nvml_cuda, build):
    args, reason = runtime_choice(tmp_path, tmp_path, nvml_cuda)
    assert args == ["torch==2.13.0", "--index-url", INDEX + build]
    cuda = f"CUDA {nvml_cuda // 1000}.{nvml_cuda % 1000 // 10}"
    assert (
        reason.startswith("runtime: torch: nvml shows 1 GPU(s)")
        and f"({cuda}): PyTorch's {build} build" in reason
    )


@pytest.mark.parametrize(("cuda", "build"), [("12.6", "cu126"), ("12.8", "cu128"), ("13.0", "cu130")])
def test_without_nvml_the_cuda_version_nvidia_smi_prints_picks_the_torch_index(tmp_path, cuda, build):
    args, reason = runtime_choice(tmp_path, fake_nvidia_smi(tmp_path / "bin", cuda), None)
    assert args == ["torch==2.13.0", "--index-url", INDEX + build]
    assert f"nvidia-smi shows 1 GPU(s) (NVIDIA H100 80GB HBM3), driver 570.86.15 (CUDA {cuda})" in reason


def test_a_driver_older_than_cuda_12_or_no_gpu_keeps_the_cpu_build(tmp_path):
    old_args, old_reason = runtime_choice(tmp_path, fake_nvidia_smi(tmp_path / "bin", "11.8"), None)
    assert old_args == ["torch==2.13.0", "--index-url", INDEX + "cpu"]
    assert "(CUDA 11.8); its driver cannot run CUDA 12: CPU build (upgrade the driver)" in old_reason
    # An empty PATH: no nvidia-smi, and no NVML either.
    none_args, none_reason = runtime_choice(tmp_path, tmp_path / "nowhere", None)
    assert none_args == old_args
    assert "no NVIDIA GPU found" in none_reason
