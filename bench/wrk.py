"""HTTP load from wrk, the benchmark's C client (bench/multipart.lua posting one real photo), and the test
photos themselves. tools/loadgen.py is the one load engine of the tools and tests; wrk drives `make bench`.

wrk is C and event-driven, so on two cores it stays far cheaper than the servers it loads; each run is
preceded by a warm-up run whose figures are thrown away (connections, caches, JIT traces).
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image

log = logging.getLogger(__name__)

LUA_SCRIPT = Path(__file__).resolve().parent / "multipart.lua"
PHOTO_SIZE = (451, 300)
"""The size of the photo every phase uploads: one size in every run, so runs and phases compare."""
JPEG_QUALITY = 90
WRK_TIMEOUT_S = 30
"""Far above any latency we expect, so a slow design is measured as slow rather than as timed out."""
RESULT_PREFIX = "bench-json "


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk-measured load level against one server (its percentiles are wrk's, from 1 µs buckets)."""

    system: str
    image: str
    clients: int
    duration_s: float
    requests: int
    errors: int
    rps: float
    """Successful responses per second (error responses are excluded)."""
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float


NO_RESULT = WrkResult("", "", 0, 0.0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0)
"""Stands in for a phase's missing point (a bar drawn at zero, a figure shown as 0)."""


def write_photos(folder: Path) -> dict[str, Path]:
    """scikit-image's astronaut at 451x300 as JPEG and PNG: a natural photo, not a synthetic pattern."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    astronaut: Callable[[], npt.NDArray[np.uint8]] = data.astronaut
    photo = Image.fromarray(np.asarray(astronaut())).resize(PHOTO_SIZE, Image.Resampling.LANCZOS)
    paths: dict[str, Path] = {}
    for name, fmt, options in (("jpeg", "JPEG", {"quality": JPEG_QUALITY}), ("png", "PNG", {})):
        buffer = io.BytesIO()
        photo.save(buffer, format=fmt, **options)
        paths[name] = folder / f"astronaut-451x300.{'jpg' if name == 'jpeg' else 'png'}"
        paths[name].write_bytes(buffer.getvalue())
    return paths


def wrk_threads(clients: int) -> int:
    # Two event loops are enough for one server on two cores; more would only steal its CPU.
    return max(1, min(2, clients))


def run_wrk(url: str, image: Path, clients: int, seconds: float) -> dict[str, float]:
    """One wrk run; the raw figures bench/multipart.lua prints."""
    argv = [
        "wrk",
        f"-t{wrk_threads(clients)}",
        f"-c{clients}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    done = subprocess.run(
        argv,
        env={**os.environ, "WRK_IMAGE": str(image)},
        capture_output=True,
        text=True,
        timeout=seconds + WRK_TIMEOUT_S + 30,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            figures: dict[str, float] = json.loads(line[len(RESULT_PREFIX) :])
            return figures
    raise RuntimeError(f"wrk gave no result (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")


def error_count(raw: dict[str, float]) -> int:
    """Failed requests of a wrk run: socket errors, timeouts and HTTP 4xx/5xx answers."""
    kinds = ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    return int(sum(raw[kind] for kind in kinds))


def measure(
    system: str, url: str, image_name: str, image: Path, clients: int, seconds: float, warmup_s: float
) -> WrkResult:
    """Warm up, then measure `clients` concurrent closed-loop clients for `seconds`."""
    if warmup_s > 0:
        run_wrk(url, image, clients, warmup_s)
    raw = run_wrk(url, image, clients, seconds)
    errors = error_count(raw)
    requests = int(raw["requests"])
    ok = max(0, requests - int(raw["status_errors"]))
    result = WrkResult(
        system=system,
        image=image_name,
        clients=clients,
        duration_s=raw["duration_s"],
        requests=requests,
        errors=errors,
        rps=ok / raw["duration_s"] if raw["duration_s"] else 0.0,
        p50_ms=raw["p50_ms"],
        p90_ms=raw["p90_ms"],
        p99_ms=raw["p99_ms"],
        mean_ms=raw["mean_ms"],
    )
    log.info(
        "bench: %-12s %-4s c=%-3d %7.1f req/s  p50 %7.1f ms  p99 %7.1f ms  errors %d",
        system,
        image_name,
        clients,
        result.rps,
        result.p50_ms,
        result.p99_ms,
        errors,
    )
    return result
