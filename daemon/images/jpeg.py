"""JPEG straight through libjpeg-turbo (simplejpeg), reduced in the DCT domain, and the EXIF orientation read
without Pillow.

Pillow's JPEG path costs about 1.5x simplejpeg's on the bench photo, and Pillow's `draft` may pick a 7/8 or
3/4 scale whose IDCT libjpeg-turbo has no SIMD for (slower than the full decode). Here only the 1/2, 1/4 and
1/8 reductions are asked for, and only when the short side still covers what the resize needs. Anything
libjpeg-turbo refuses or warns about (truncated or corrupt data, CMYK, an odd header) returns None: Pillow
then decodes it, and Pillow's verdict (400, 413) is the one users have always had.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt
import simplejpeg
from PIL import Image

DCT_REDUCTIONS = (8, 4, 2)
"""Power-of-two scales libjpeg-turbo decodes with SIMD, largest first."""
FAST_COLOUR_SPACES = ("YCbCr", "Gray")
"""Colour spaces decoded here; CMYK and YCCK (Adobe's inverted inks) go to Pillow, which knows their quirks."""
FAST_DCT = True
"""libjpeg-turbo's fast integer IDCT: 10% cheaper, off by at most a few levels, below what changes a label."""
EXIF_ORIENTATION_TAG = 0x0112
MAX_MARKERS_BEFORE_SCAN = 64
"""How many segments are walked looking for EXIF: a real file has a handful before its scan."""


def jpeg_size(data: bytes) -> tuple[int, int, str] | None:
    """(width, height, colour space) from the header, or None when libjpeg-turbo cannot read it."""
    try:
        height, width, colour_space, _subsampling = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    return int(width), int(height), str(colour_space)


def dct_reduction(width: int, height: int, short_side: int) -> int:
    """The largest SIMD-fast DCT reduction whose result still has `short_side` pixels on its short side."""
    return next((factor for factor in DCT_REDUCTIONS if min(width, height) // factor >= short_side), 1)


def decode_jpeg_reduced(
    data: bytes, width: int, height: int, short_side: int
) -> npt.NDArray[np.uint8] | None:
    """RGBX pixels (H x W x 4) at the cheapest reduction that keeps `short_side`; None for anything to leave
    to Pillow. RGBX is Pillow's own layout for RGB, so `Image.frombuffer` wraps it without a copy."""
    factor = dct_reduction(width, height, short_side)
    try:
        pixels: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(
            data,
            colorspace="RGBX",
            fastdct=FAST_DCT,
            fastupsample=False,
            # Exactly 1/factor of each side: libjpeg-turbo picks the smallest scale at least this large.
            min_height=-(-height // factor),
            min_width=-(-width // factor),
            strict=True,
        )
    except ValueError:
        return None
    return pixels


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation (1 to 8) of a JPEG's APP1 segment, 1 when it has none or it cannot be read."""
    position = 2
    for _ in range(MAX_MARKERS_BEFORE_SCAN):
        if position + 4 > len(data) or data[position] != 0xFF:
            return 1
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0xDA or 0xD0 <= marker <= 0xD9:  # the scan (or a bare marker): no EXIF before it
            return 1
        (length,) = struct.unpack_from(">H", data, position + 2)
        if marker == 0xE1 and data[position + 4 : position + 10] == b"Exif\x00\x00":
            return _orientation_of(data[position + 4 : position + 2 + length])
        position += 2 + length
    return 1


def _orientation_of(segment: bytes) -> int:
    exif = Image.Exif()
    try:
        exif.load(segment)
        value = int(exif.get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block shows the picture as stored, as Pillow does
        return 1
    return value if 1 <= value <= 8 else 1


def orient(pixels: npt.NDArray[np.uint8], orientation: int) -> npt.NDArray[np.uint8]:
    """The picture as a viewer shows it. Centre crop and resize commute with these turns and flips, so they
    are applied to the small model input rather than to the decoded photo."""
    # Only the one view asked for: np.rot90 is not free, and this runs for every JPEG.
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return pixels.transpose(1, 0, 2)
    if orientation == 6:
        return np.rot90(pixels, k=-1)
    if orientation == 7:
        return pixels.transpose(1, 0, 2)[::-1, ::-1]
    if orientation == 8:
        return np.rot90(pixels, k=1)
    return pixels
