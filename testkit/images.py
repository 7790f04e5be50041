"""Images encoded the way a client uploads them, for the tests and the benchmark's probes."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def encode_image(array: np.ndarray, fmt: str = "PNG", **save: Any) -> bytes:
    """`array` (height x width x 3, uint8) as the bytes of an image file in `fmt`."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **save)
    return buffer.getvalue()
