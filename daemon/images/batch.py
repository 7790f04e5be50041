"""Decode the many images of one request (KServe V2) at a bounded cost: a pixel budget checked from the files'
headers before any pixel is decoded, a small pool shared by the process, and the request's deadline.

Invariants:
- The sum of the pixels the headers declare is at most `api.max_request_pixels`, or the request gets 413
  and nothing was decoded. Each image on its own stays under `api.max_image_pixels` (`decode_image`).
- At most `DecodePool.threads` images of one API process decode at once, whatever the number of requests,
  so a request of many large images takes that many cores of the API, never all of its threads.
- A request whose deadline passes gets 504 at once; its images not yet started are never decoded, and those
  under way (at most one per pool thread) are the only work that outlives it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import numpy as np
import numpy.typing as npt

from daemon.errors import DeadlineExceeded, InferdError, PayloadTooLarge
from daemon.images.decode import inspect_upload

DECODE_THREADS = 2
"""Images one API process decodes at once for V2 requests. Pillow releases the GIL while it inflates and
resizes, so two threads use two cores; more would let one request starve /predict's decoding."""

Pixels = npt.NDArray[np.uint8]


def declared_pixels(data: bytes, max_image_pixels: int) -> int:
    """Width x height as the file's header states it, read without decoding a pixel; 0 when the header is
    refused (the decoder then refuses the file with its reason)."""
    try:
        upload = inspect_upload(data, max_image_pixels)
    except InferdError:
        return 0
    return upload.width * upload.height


def check_request_pixels(blobs: Sequence[bytes], max_image_pixels: int, max_request_pixels: int) -> None:
    """413 when the images' headers declare more pixels in all than one request may decode."""
    total = 0
    for data in blobs:
        total += declared_pixels(data, max_image_pixels)
        if total > max_request_pixels:
            raise PayloadTooLarge(
                f"the {len(blobs)} images declare more than the {max_request_pixels} pixels one request may "
                "decode (api.max_request_pixels); send them in smaller requests"
            )


class DecodePool:
    """The process's V2 decode threads, created on first use (so none exists in a gunicorn master before it
    forks)."""

    def __init__(self, threads: int = DECODE_THREADS) -> None:
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="v2-decode")
        return self._executor

    def decode_all(
        self, blobs: Sequence[bytes], decode: Callable[[bytes], Pixels], deadline: float
    ) -> list[Pixels]:
        """Every blob decoded, in order; the first decode error fails the request, as does the deadline
        (`time.monotonic()`), and either way the images not yet started are dropped."""
        results: list[Pixels | None] = [None] * len(blobs)
        running: dict[Future[Pixels], int] = {}
        following = 0
        try:
            while following < len(blobs) or running:
                # Only as many images in flight as there are threads: the rest wait here, where the deadline
                # is looked at before each one starts, not in the executor's queue.
                while following < len(blobs) and len(running) < self.threads:
                    _check_deadline(deadline, following, len(blobs))
                    running[self._pool().submit(decode, blobs[following])] = following
                    following += 1
                done, _ = wait(
                    running, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED
                )
                if not done:
                    _check_deadline(deadline, following - len(running), len(blobs))
                for future in done:
                    results[running.pop(future)] = future.result()
        finally:
            for future in running:
                future.cancel()
        return [pixels for pixels in results if pixels is not None]


def _check_deadline(deadline: float, decoded: int, total: int) -> None:
    if time.monotonic() >= deadline:
        raise DeadlineExceeded(
            f"the request's deadline passed after {decoded} of its {total} images were decoded; "
            "send fewer or smaller images per request"
        )
