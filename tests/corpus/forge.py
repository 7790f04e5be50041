"""Byte-level makers of odd and hostile image files, for the corpus (tests/corpus/make_corpus.py).

Pillow writes what it can; what it will not write (a 30000x30000 PNG of ~110 KB, 16-bit RGB, a garbage
EXIF block, headers claiming huge canvases) is put together here with zlib and struct.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

RGB = tuple[int, int, int]
RED: RGB = (255, 0, 0)
BLUE: RGB = (0, 0, 255)
GREEN: RGB = (0, 255, 0)
WHITE: RGB = (255, 255, 255)
BLACK: RGB = (0, 0, 0)
STORED_WIDTH, STORED_HEIGHT = 64, 48
"""Size of the two-halves pictures: not square, so a rotation that is not applied changes what is seen."""


def two_halves(left: tuple[float, ...], right: tuple[float, ...], dtype: Any = np.uint8) -> np.ndarray:
    """A STORED_HEIGHT x STORED_WIDTH picture, `left` colour in the left half and `right` in the right."""
    channels = len(left)
    pixels = np.empty((STORED_HEIGHT, STORED_WIDTH, channels), dtype=dtype)
    pixels[:, : STORED_WIDTH // 2] = left
    pixels[:, STORED_WIDTH // 2 :] = right
    return pixels[..., 0] if channels == 1 else pixels


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def red_blue(fmt: str, **options: Any) -> bytes:
    return encode(Image.fromarray(two_halves(RED, BLUE)), fmt, **options)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG from an already-compressed IDAT stream, for what Pillow cannot or will not write."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def rgb16_png() -> bytes:
    pixels = two_halves((0xC000, 0x4000, 0x0000), (0x0000, 0x4000, 0xC000), dtype=">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)  # filter type 0 on each row
    return png(STORED_WIDTH, STORED_HEIGHT, 16, 2, zlib.compress(rows, 9))


def png_bomb(side: int) -> bytes:
    """A valid, all-black 1-bit PNG of side x side, compressed a row at a time to stay cheap to build."""
    row = b"\x00" * (1 + (side + 7) // 8)
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png(side, side, 1, 0, idat)


def gray16(fmt: str) -> bytes:
    return encode(Image.fromarray(two_halves((0x4000,), (0xC000,), dtype=np.uint16)), fmt)


def float_tiff() -> bytes:
    return encode(Image.fromarray(two_halves((0.25,), (0.75,), dtype=np.float32)), "TIFF")


def grayscale_jpeg() -> bytes:
    return encode(Image.fromarray(two_halves((64,), (192,))), "JPEG", quality=95)


def cmyk_jpeg() -> bytes:
    cyan_yellow = two_halves((255, 0, 0, 0), (0, 0, 255, 0))
    return encode(Image.fromarray(cyan_yellow, mode="CMYK"), "JPEG", quality=95)


def with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # the Orientation tag
    return red_blue("JPEG", quality=95, exif=exif)


def broken_exif_jpeg() -> bytes:
    """A good JPEG with an APP1 Exif segment whose TIFF header points its first IFD far outside the block."""
    good = red_blue("JPEG", quality=95)
    garbage = random.Random(6).randbytes(64)
    body = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + garbage
    app1 = b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    return good[:2] + app1 + good[2:]


def palette(transparent: bool) -> bytes:
    image = Image.fromarray(two_halves(RED, BLUE)).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    if not transparent:
        return encode(image, "PNG")
    red_index = image.getpixel((0, 0))
    return encode(image, "PNG", transparency=red_index)


def rgba() -> bytes:
    return encode(Image.fromarray(two_halves((255, 0, 0, 0), (0, 0, 0, 128))), "PNG")


def la() -> bytes:
    return encode(Image.fromarray(two_halves((0, 0), (0, 255)), mode="LA"), "PNG")


def bilevel() -> bytes:
    return encode(Image.fromarray(two_halves((0,), (255,))).convert("1"), "PNG")


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (STORED_WIDTH, STORED_HEIGHT), colour) for colour in (RED, GREEN, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def green(width: int, height: int) -> bytes:
    return encode(Image.new("RGB", (width, height), GREEN), "PNG")


def photo_like(fmt: str) -> bytes:
    """A 256x192 noisy gradient: big enough that half the file is deep inside the pixel data."""
    rng = np.random.default_rng(3)
    ramp = np.linspace(0, 255, 256)[None, :, None] * np.ones((192, 1, 3))
    pixels = np.clip(ramp + rng.normal(0, 20, ramp.shape), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), fmt)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def icon() -> bytes:
    return encode(Image.new("RGB", (16, 16), RED), "ICO")


def zero_width_png() -> bytes:
    return png(0, 4, 8, 0, zlib.compress(b"\x00" * 4))


def bad_crc_png() -> bytes:
    data = bytearray(green(4, 4))
    data[29] ^= 0xFF  # last byte of the IHDR CRC (8 signature + 4 length + 4 type + 13 body = 29)
    return bytes(data)


def ztxt_bomb_png() -> bytes:
    """A valid green 4x4 PNG with a compressed text chunk that inflates to 4 MB of zeros before IDAT."""
    good = green(4, 4)
    ihdr_end = 8 + 12 + 13
    text = png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(b"\x00" * 4_000_000, 9))
    return good[:ihdr_end] + text + good[ihdr_end:]


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG with its SOF0 frame header rewritten to claim width x height."""
    data = bytearray(red_blue("JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def gif_claiming(side: int) -> bytes:
    header = b"GIF89a" + struct.pack("<HHBBB", side, side, 0, 0, 0)
    image = b"\x2c" + struct.pack("<HHHHB", 0, 0, side, side, 0) + b"\x02\x02\x44\x01\x00"
    return header + image + b"\x3b"


def bmp_claiming(side: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\n%%EOF\n"
SVG = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b'<rect width="10" height="10" fill="red"/></svg>\n'
)
HTML = b"<!DOCTYPE html>\n<html><body><img src=x onerror=alert(1)></body></html>\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
