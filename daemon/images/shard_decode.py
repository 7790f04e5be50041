"""Decoding in the shard: a claimed batch's image files become the model's uint8 batch, one verdict per image.

Where the decode runs, and why (`api.decode_in`; bench/RESULTS.md (k) has the figures):
- On a GPU box, here, in the shard. Its worker process waits on its device and the host has cores to spare,
  and with a GPU JPEG decoder (nvJPEG through torchvision, `daemon.images.nvjpeg`) the entropy decode and the
  resize run on the device, so the host's cost per image no longer grows with the photo. The API then does
  the least it can before the hand-off: it reads the body, checks the header
  (`daemon.images.decode.inspect_upload`: format by magic bytes, size and pixel count, microseconds) and
  forwards the file's bytes; an upload refused there is answered at once (415, 413, a broken header's 400).
- On a CPU box, in the API: the two placements measure level there, so the one with the fewer moving
  parts is kept. Tiny model at 224, the 451x300 JPEG, alternating runs: under load 20 to 30 the shard's
  decode saved no CPU (7.0 to 8.6 ms per image in all against 6.8 to 7.8) and its one worker became the
  bottleneck; on a quiet machine both gave 5.6 to 7.2 ms at 64 clients and 10.9 to 11.3 ms at one, with the
  shard a little ahead at 16 clients (docs/settings.md has each run). The CPU decoder here is the API's
  (`decode_image`).
- Errors keep their statuses whichever process finds them: a decode failure travels back as data
  (`Reply.failure` with BadRequest, PayloadTooLarge or UnsupportedMediaType) and the API answers 400, 413 or
  415, as when it decoded itself. A bad image fails only its own job. A worker that dies mid-decode has its
  claimed jobs requeued or adopted and decoded again from the same segment: nothing is lost or answered
  twice (the queue's claim protocol, `daemon.queue.faces`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
import numpy.typing as npt

from daemon.errors import InferdError, InferenceFailed
from daemon.images.decode import decode_image
from daemon.settings import ModelSettings

log = logging.getLogger(__name__)

DecodeResult = npt.NDArray[np.uint8] | InferdError
"""A model input (input_size x input_size x 3), or why this image has none."""

MAX_DECODE_THREADS = 8
"""Most threads one shard decodes with: past the batch sizes we serve, more only add switching."""


class BatchDecoder(Protocol):
    """What a shard needs to turn a batch's files into model inputs."""

    name: str

    def decode_batch(self, files: Sequence[npt.NDArray[np.uint8]]) -> list[DecodeResult]: ...


class CpuBatchDecoder:
    """`decode_image` for each file, on a few threads; every failure is the image's own verdict."""

    name = "cpu"

    def __init__(self, model: ModelSettings, max_pixels: int, threads: int = 1) -> None:
        self.model = model
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="decode") if threads > 1 else None

    def decode_batch(self, files: Sequence[npt.NDArray[np.uint8]]) -> list[DecodeResult]:
        if self._pool is None or len(files) < 2:
            return [self.decode_one(data) for data in files]
        return list(self._pool.map(self.decode_one, files))

    def decode_one(self, data: npt.NDArray[np.uint8]) -> DecodeResult:
        try:
            return decode_image(data.tobytes(), self.model, self.max_pixels)
        except InferdError as exc:
            return exc
        except Exception as exc:
            # A decoder fault of ours: this image's caller gets a 500, the batch goes on.
            log.exception("decode: unexpected failure on a %d-byte upload", data.size)
            return InferenceFailed(f"decoding failed: {type(exc).__name__}: {exc}")


def decoder_for_shard(model: ModelSettings, max_pixels: int, device: str | None, cpus: int) -> BatchDecoder:
    """The device's JPEG decoder when the shard computes on a CUDA device and one is installed (falling back
    per image to the CPU decoder), else the CPU decoder on up to `cpus` threads."""
    cpu = CpuBatchDecoder(model, max_pixels, threads=max(1, min(cpus, MAX_DECODE_THREADS)))
    if device is None or not device.startswith("cuda"):
        return cpu
    from daemon.images.nvjpeg import DeviceJpegDecoder, device_decoder_missing

    missing = device_decoder_missing(device)
    if missing is not None:
        log.warning("decode: JPEG decodes on the CPU, not on %s: %s", device, missing)
        return cpu
    return DeviceJpegDecoder(model, max_pixels, device, cpu)
