"""Phase "floors" (section (k)): what an image costs at the least, beside what the appliance spends on it.

Three uploads: the 451x300 JPEG every phase sends, the same photo as a PNG, and a 12 MP camera-size JPEG
(four scikit-image photos tiled and upscaled to 4000x3000, with sensor-like grain, quality 90: real texture,
about 4.3 MB). For each:
- the decode floor: decode, crop and resize to 224 in a tight loop on one core, CPU ms per image, with the
  appliance's decoder (`daemon.images.decode.decode_image`) and with the fastest one installed (simplejpeg with
  its fast IDCT and upsampling, torch's antialiased bicubic resize where torch is installed);
- the appliance (tiny model at 224, `inferd run` on this machine) at 1, 16, 64 and 256 wrk clients: req/s,
  p50 and the CPU ms per request of each role, read from /proc (API processes, workers, Redis, nginx).
Beside them, the HTTP floor: the same upload to gunicorn under the API's own settings with a Falcon app that
reads the multipart body and answers at once (without nginx; nginx's own share is the appliance's
"front door" column); the model floor: the tiny model's own call, offline in a process pinned as a worker
(`bench.offline`), so the workers' column can be split into the model and the rest; the decode-only app
(decode, no model, no queue) at one client, for the p50 the appliance adds; the time the shard reports for a
batch of one (`inferd_inference_seconds`) against the offline call; and the same JPEG at 64 clients with
`api.decode_in = "shard"`, the placement a GPU box takes, where the API only checks the header and forwards
the bytes.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench import wrk
from bench.decode_only import http_floor_service
from bench.frontdoor import FrontDoorPlan, measure_inferd
from bench.phases import build_tiny_model, run_offline, running_appliance, start_decode_only, tiny_env
from bench.procs import cpu_seconds
from daemon.images.decode import decode_image
from daemon.settings import ModelSettings
from testkit.harness import REPO, Appliance, free_port
from testkit.proctree import children

log = logging.getLogger(__name__)

INPUT_SIZE = 224
CAMERA_SIZE = (4000, 3000)
CAMERA_GRAIN = 11.0
"""Standard deviation of the added grain, in levels: what brings the file to a camera's 4 to 5 MB at q90."""
SECTION = "floors"
MODEL_BATCHES = (1, 32)
"""Batch sizes the model floor measures: one (the one-client case) and the largest a worker runs."""

TARGET_CLIENTS = 64
"""The load the GPU box's placement (decode in the shard) is measured at, as issue 19's targets are."""


@dataclass(frozen=True, slots=True)
class FloorsPlan:
    clients: tuple[int, ...] = (1, 16, 64, 256)
    seconds: float = 8.0
    warmup_s: float = 2.0
    decode_s: float = 3.0
    """CPU seconds each decoder runs in its tight loop."""
    model_s: float = 4.0
    """Seconds the offline model floor times each batch size."""


QUICK_PLAN = FloorsPlan(clients=(4,), seconds=1.0, warmup_s=0.0, decode_s=0.3, model_s=0.3)


def write_camera_photo(folder: Path) -> Path:
    from skimage import data

    rng = np.random.default_rng(0)
    half = (CAMERA_SIZE[0] // 2, CAMERA_SIZE[1] // 2)
    photos: list[Callable[[], Any]] = [data.astronaut, data.chelsea, data.coffee, data.rocket]
    tiles = [np.asarray(Image.fromarray(photo()).resize(half, Image.Resampling.BICUBIC)) for photo in photos]
    picture = np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    grainy = np.clip(picture + rng.normal(0, CAMERA_GRAIN, picture.shape), 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "camera-4000x3000.jpg"
    buffer = io.BytesIO()
    Image.fromarray(grainy).save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return path


def cpu_ms_per_call(call: Callable[[], object], budget_s: float) -> float:
    """CPU ms per call of `call` in a tight loop on this thread, run for about `budget_s` of CPU."""
    call()
    calls, started = 0, time.thread_time()
    while time.thread_time() - started < budget_s or calls < 3:
        call()
        calls += 1
    return 1000.0 * (time.thread_time() - started) / calls


def fastest_decode(data: bytes, model: ModelSettings) -> Callable[[], object]:
    """The cheapest decode and resize installed here, for the floor (not the appliance's: it trades accuracy)."""
    import simplejpeg

    from daemon.images.decode import centre_crop_box
    from daemon.images.jpeg import dct_reduction

    def decoded() -> np.ndarray:
        if data.startswith(b"\xff\xd8"):
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            factor = dct_reduction(width, height, round(INPUT_SIZE / model.crop_fraction))
            return np.asarray(
                simplejpeg.decode_jpeg(
                    data,
                    fastdct=True,
                    fastupsample=True,
                    min_height=-(-height // factor),
                    min_width=-(-width // factor),
                )
            )
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    try:
        import torch
    except ImportError:

        def with_pillow() -> object:
            pixels = decoded()
            box = centre_crop_box((pixels.shape[1], pixels.shape[0]), model)
            return Image.fromarray(pixels).resize(
                (INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, box=box
            )

        return with_pillow
    torch.set_num_threads(1)

    def with_torch() -> object:
        pixels = decoded()
        left, top, right, bottom = centre_crop_box((pixels.shape[1], pixels.shape[0]), model)
        crop = torch.from_numpy(pixels).permute(2, 0, 1)[
            None, :, round(top) : round(bottom), round(left) : round(right)
        ]
        return torch.nn.functional.interpolate(
            crop, size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic", antialias=True
        )

    return with_torch


def decode_floors(photos: dict[str, Path], budget_s: float) -> dict[str, dict[str, float]]:
    model = ModelSettings(input_size=INPUT_SIZE)
    floors: dict[str, dict[str, float]] = {}
    for name, path in photos.items():
        data = path.read_bytes()
        floors[name] = {
            "bytes": len(data),
            "appliance_ms": cpu_ms_per_call(partial(decode_image, data, model, 50_000_000), budget_s),
            "fastest_ms": cpu_ms_per_call(fastest_decode(data, model), budget_s),
        }
        log.info("bench: decode floor %-7s %s", name, floors[name])
    return floors


def http_floor(
    folder: Path, env: dict[str, str], photo: Path, clients: int, plan: FloorsPlan
) -> dict[str, float]:
    """CPU ms per request of gunicorn (master and workers) reading the upload and answering at once."""
    port = free_port()
    with ExitStack() as stack:
        service = stack.enter_context(http_floor_service(env | {"INFERD_API_PORT": str(port)}, folder))
        service.wait_http(f"http://127.0.0.1:{port}/")
        url = f"http://127.0.0.1:{port}/predict"
        if plan.warmup_s:
            wrk.run_wrk(url, photo, clients, plan.warmup_s)
        pids = [service.pid, *(child.pid for child in children(service.pid))]
        before = sum(cpu_seconds(pid) or 0.0 for pid in pids)
        result = wrk.measure("http floor", url, "jpeg", photo, clients, plan.seconds, 0.0)
        after = sum(cpu_seconds(pid) or 0.0 for pid in pids)
    served = max(1, round(result.rps * result.duration_s))
    return {
        "clients": clients,
        "rps": result.rps,
        "p50_ms": result.p50_ms,
        "cpu_ms": 1000.0 * (after - before) / served,
    }


def measure_floors(work: Path, photos: dict[str, Path], plan: FloorsPlan) -> dict[str, Any]:
    """The whole phase: decode floors, the HTTP floor, the appliance by role; plain data for the report."""
    photos = {"jpeg": photos["jpeg"], "png": photos["png"], "camera": write_camera_photo(work)}
    found: dict[str, Any] = {"commit": commit(), "load_before": os.getloadavg()[0]}
    found["decode"] = decode_floors(photos, plan.decode_s)
    model, labels = build_tiny_model(work / "tiny224", INPUT_SIZE)
    env = tiny_env(work / "appliance", model, labels, INPUT_SIZE)
    found["http"] = http_floor(work / "http-floor", env, photos["jpeg"], 64, plan)
    found["model"] = model_floor(env, photos["jpeg"], plan)
    found["decode_only"] = decode_only_p50(work / "decode-only", env, photos["jpeg"], plan)
    rounds: list[dict[str, Any]] = []
    with running_appliance(work / "appliance", env) as (appliance, _settings):
        for image, path in photos.items():
            for clients in plan.clients:
                rounds.append(appliance_round(appliance, image, path, clients, plan))
    found["appliance"] = rounds
    # The GPU box's placement, measured here on the CPU: the API checks the header, the shard decodes.
    shard_env = {**env, "INFERD_API_DECODE_IN": "shard"}
    with running_appliance(work / "appliance-shard-decode", shard_env) as (appliance, _settings):
        found["shard_decode"] = appliance_round(appliance, "jpeg", photos["jpeg"], TARGET_CLIENTS, plan)
    found["plan"] = asdict(plan)
    found["load_after"] = os.getloadavg()[0]
    return found


def appliance_round(
    appliance: Appliance, image: str, path: Path, clients: int, plan: FloorsPlan
) -> dict[str, Any]:
    """One wrk round as plain data: req/s, p50, CPU per request by role, and the shard's own time per batch."""
    measured = measure_inferd(
        appliance, path, clients, FrontDoorPlan(seconds=plan.seconds, warmup_s=plan.warmup_s)
    )
    point = {
        "image": image,
        "clients": clients,
        "rps": measured.result.rps,
        "served": round(measured.result.rps * measured.result.duration_s),
        "p50_ms": measured.result.p50_ms,
        "errors": measured.result.errors,
        "cpu_ms": measured.cpu_ms_per_request,
        "mean_batch": measured.mean_batch,
        "infer_ms_per_batch": measured.infer_ms_per_batch,
    }
    log.info("bench: floors %-6s c=%-3d %s", image, clients, point)
    return point


def model_floor(env: dict[str, str], photo: Path, plan: FloorsPlan) -> dict[str, Any]:
    """The tiny model's call alone, offline, pinned as a worker: batch 1's p50, CPU per image by batch size."""
    device, points = run_offline(env, photo, MODEL_BATCHES, plan.model_s, 2)
    return {
        "device": device,
        "batch1_p50_ms": next(p.batch_p50_ms for p in points if p.batch_size == 1),
        "cpu_ms_per_image": {str(p.batch_size): p.cpu_ms_per_image for p in points},
    }


def decode_only_p50(folder: Path, env: dict[str, str], photo: Path, plan: FloorsPlan) -> dict[str, float]:
    """The decode-only app (the API's decode and nothing after it) at one client: the p50 to add to."""
    with ExitStack() as stack:
        url = start_decode_only(stack, folder, env)
        result = wrk.measure("decode-only", url, "jpeg", photo, 1, plan.seconds, plan.warmup_s)
    return {"p50_ms": result.p50_ms, "rps": result.rps}


def commit() -> str:
    """The checkout's commit, marked when the tree has changes the commit does not hold."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (
        " (with local changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    )
