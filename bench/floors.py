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
"front door" column).
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
from bench.phases import build_tiny_model, running_appliance, tiny_env
from bench.procs import cpu_seconds
from bench.sections import end_marker, start_marker
from daemon.images.decode import decode_image
from daemon.settings import ModelSettings
from testkit.harness import REPO, free_port
from testkit.proctree import children

log = logging.getLogger(__name__)

INPUT_SIZE = 224
CAMERA_SIZE = (4000, 3000)
CAMERA_GRAIN = 11.0
"""Standard deviation of the added grain, in levels: what brings the file to a camera's 4 to 5 MB at q90."""
SECTION = "floors"


@dataclass(frozen=True, slots=True)
class FloorsPlan:
    clients: tuple[int, ...] = (1, 16, 64, 256)
    seconds: float = 8.0
    warmup_s: float = 2.0
    decode_s: float = 3.0
    """CPU seconds each decoder runs in its tight loop."""


QUICK_PLAN = FloorsPlan(clients=(4,), seconds=1.0, warmup_s=0.0, decode_s=0.3)


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
    rounds: list[dict[str, Any]] = []
    front = FrontDoorPlan(seconds=plan.seconds, warmup_s=plan.warmup_s)
    with running_appliance(work / "appliance", env) as (appliance, _settings):
        for image, path in photos.items():
            for clients in plan.clients:
                measured = measure_inferd(appliance, path, clients, front)
                rounds.append(
                    {
                        "image": image,
                        "clients": clients,
                        "rps": measured.result.rps,
                        "served": round(measured.result.rps * measured.result.duration_s),
                        "p50_ms": measured.result.p50_ms,
                        "errors": measured.result.errors,
                        "cpu_ms": measured.cpu_ms_per_request,
                        "mean_batch": measured.mean_batch,
                    }
                )
                log.info("bench: floors %-6s c=%-3d %s", image, clients, rounds[-1])
    found["appliance"] = rounds
    found["plan"] = asdict(plan)
    found["load_after"] = os.getloadavg()[0]
    return found


def commit() -> str:
    """The checkout's commit, marked when the tree has changes the commit does not hold."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", *argv], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (
        " (with local changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    )


def floors_section(found: dict[str, Any]) -> str:
    """Markdown for section (k)."""
    out = [
        start_marker(SECTION),
        "## (k) Floors: what an image costs at the least, and what the appliance spends on it",
        "",
        "CPU ms per image. Decode floor: decode, centre crop and resize to 224 in a tight loop on one core. "
        "Appliance: the tiny model at 224 under `inferd run`, wrk closed-loop clients, CPU from /proc per role "
        f"(`python -m bench.run --phases floors`). Commit {found.get('commit', '?')}; load average "
        f"{found.get('load_before', 0.0):.1f} before and {found.get('load_after', 0.0):.1f} after, on a shared machine: "
        "req/s follows the share of the cores the appliance got, CPU per image is the figure. A row marked * "
        "served fewer requests than it had clients: its CPU includes uploads still in flight and is no per-image figure.",
        "",
        "| image | bytes | decode floor, appliance's decoder | decode floor, fastest installed |",
        "| --- | ---: | ---: | ---: |",
    ]
    for image, floor in found["decode"].items():
        out.append(
            f"| {image} | {floor['bytes']:,} | {floor['appliance_ms']:.2f} | {floor['fastest_ms']:.2f} |"
        )
    http = found["http"]
    out += [
        "",
        f"HTTP floor (gunicorn with the API's settings, a handler that reads the multipart upload and answers at "
        f"once, no nginx), 451x300 JPEG at {http['clients']} clients: **{http['cpu_ms']:.2f} ms** per request, "
        f"{http['rps']:.0f} req/s, p50 {http['p50_ms']:.1f} ms.",
        "",
        "| image | clients | req/s | p50 ms | errors | api | workers | redis | front door | all-in | all-in / decode floor |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for point in found["appliance"]:
        cpu = point["cpu_ms"]
        total = sum(cpu.values())
        floor = found["decode"][point["image"]]["appliance_ms"]
        partial = "*" if point.get("served", point["clients"]) < point["clients"] else ""
        out.append(
            f"| {point['image']} | {point['clients']}{partial} | {point['rps']:.0f} | {point['p50_ms']:.1f} | {point['errors']} | "
            f"{cpu.get('api', 0.0):.2f} | {cpu.get('workers', 0.0):.2f} | {cpu.get('redis', 0.0):.2f} | "
            f"{cpu.get('front door', 0.0):.2f} | {total:.2f} | {total / floor:.2f} |"
        )
    out.append(end_marker(SECTION))
    return "\n".join(out) + "\n"
