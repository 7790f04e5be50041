"""`make gpu-proof`'s decode figures: host CPU per image on the shard's CPU decoder and on its device decoder.

Batches of BATCH uploads go through each decoder as a shard hands them over (`decode_batch`), for the 451x300
JPEG and the 12 MP camera JPEG of bench/floors.py. The CPU figure is the process's whole CPU time (every thread,
the CUDA driver's included) per image: on the GPU path it should not grow with the photo.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.floors import write_camera_photo
from bench.wrk import write_photos
from daemon.images.shard_decode import BatchDecoder, CpuBatchDecoder
from daemon.settings import ModelSettings

BATCH = 32
MAX_PIXELS = 50_000_000


def cost(decoder: BatchDecoder, batch: list[np.ndarray], seconds: float) -> dict[str, float]:
    """CPU ms and wall ms per image, and images/s, over about `seconds` of batches after one warm-up."""
    decoder.decode_batch(batch)
    images, cpu0, wall0 = 0, time.process_time(), time.monotonic()
    while time.monotonic() - wall0 < seconds or images == 0:
        results = decoder.decode_batch(batch)
        assert all(isinstance(result, np.ndarray) for result in results), results
        images += len(batch)
    wall = time.monotonic() - wall0
    return {
        "cpu_ms": 1000.0 * (time.process_time() - cpu0) / images,
        "wall_ms": 1000.0 * wall / images,
        "images_per_s": images / wall,
    }


def measure_decoders(work: Path, device: str, seconds: float) -> list[dict[str, Any]]:
    """Each photo through the CPU decoder (one thread) and the device decoder on `device`."""
    from daemon.images.nvjpeg import DeviceJpegDecoder, device_decoder_missing

    missing = device_decoder_missing(device)
    if missing is not None:
        return [{"photo": "-", "decoder": f"device decoder unavailable: {missing}"}]
    model = ModelSettings(input_size=224)
    photos = {"451x300 JPEG": write_photos(work / "photos")["jpeg"], "12 MP JPEG": write_camera_photo(work)}
    cpu = CpuBatchDecoder(model, MAX_PIXELS)
    on_device = DeviceJpegDecoder(model, MAX_PIXELS, device, cpu)
    decoders: dict[str, BatchDecoder] = {"cpu, 1 thread": cpu, on_device.name: on_device}
    rows = []
    for photo, path in photos.items():
        batch = [np.frombuffer(path.read_bytes(), dtype=np.uint8)] * BATCH
        for name, decoder in decoders.items():
            rows.append({"photo": photo, "decoder": name, **cost(decoder, batch, seconds)})
    return rows


def render_rows(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        f"Decoding in the shard, batches of {BATCH} (bench/decode_proof.py): host CPU per image, all threads.",
        "",
        "| photo | decoder | CPU ms/image | wall ms/image | images/s |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for row in rows:
        if "cpu_ms" not in row:
            lines.append(f"| {row['photo']} | {row['decoder']} | - | - | - |")
            continue
        lines.append(
            f"| {row['photo']} | {row['decoder']} | {row['cpu_ms']:.2f} | {row['wall_ms']:.2f} | "
            f"{row['images_per_s']:.0f} |"
        )
    return lines
