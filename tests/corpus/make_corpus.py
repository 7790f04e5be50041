"""The hostile and odd upload corpus: what each file is, the HTTP status it must get, and how to make it.

`python -m tests.corpus.make_corpus` rewrites tests/corpus/files/ with the makers in tests/corpus/forge.py.
Good pictures are two flat halves of different colours, so a test can tell from the decoded array whether
alpha was composited, 16-bit was scaled, and EXIF rotation was applied. The table, CASES, is at the end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.corpus.forge import (
    BLACK,
    BLUE,
    EPS,
    GREEN,
    HTML,
    PDF,
    RED,
    RGB,
    SVG,
    WHITE,
    animated_gif,
    bad_crc_png,
    bilevel,
    bmp_claiming,
    broken_exif_jpeg,
    cmyk_jpeg,
    float_tiff,
    gif_claiming,
    gray16,
    grayscale_jpeg,
    green,
    icon,
    jpeg_claiming,
    la,
    palette,
    photo_like,
    png_bomb,
    random_bytes,
    red_blue,
    rgb16_png,
    rgba,
    truncated,
    with_orientation,
    zero_width_png,
    ztxt_bomb_png,
)

FILES = Path(__file__).resolve().parent / "files"
"""Where the corpus lives in the repository; the tests read it from here."""


@dataclass(frozen=True, slots=True)
class Case:
    """One corpus file: the status the API must answer and, for a good picture, what it must look like."""

    name: str
    status: int
    why: str
    build: Callable[[], bytes] = field(repr=False, compare=False)
    looks: tuple[tuple[str, RGB], ...] = ()
    """(region, colour) pairs the decoded model input must show; regions: all, left, right, top, bottom."""

    @property
    def path(self) -> Path:
        return FILES / self.name

    def read(self) -> bytes:
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} is missing: run `python -m tests.corpus.make_corpus`")
        return self.path.read_bytes()


def halves(left: RGB, right: RGB) -> tuple[tuple[str, RGB], ...]:
    return (("left", left), ("right", right))


CASES: tuple[Case, ...] = (
    # Pictures that must be classified (200), each in an odd mode or container.
    Case(
        "baseline.jpg",
        200,
        "plain RGB JPEG, red left / blue right",
        lambda: red_blue("JPEG", quality=95),
        halves(RED, BLUE),
    ),
    Case(
        "progressive.jpg",
        200,
        "progressive JPEG",
        lambda: red_blue("JPEG", quality=95, progressive=True),
        halves(RED, BLUE),
    ),
    Case(
        "grayscale.jpg",
        200,
        "8-bit grayscale JPEG",
        grayscale_jpeg,
        halves((64,) * 3, (192,) * 3),
    ),
    Case(
        "cmyk.jpg",
        200,
        "CMYK JPEG (Adobe), cyan left / yellow right",
        cmyk_jpeg,
        halves((0, 255, 255), (255, 255, 0)),
    ),
    Case(
        "exif_orientation_3.jpg",
        200,
        "EXIF orientation 3: shown turned 180",
        lambda: with_orientation(3),
        halves(BLUE, RED),
    ),
    Case(
        "exif_orientation_6.jpg",
        200,
        "EXIF 6: shown turned 90 clockwise",
        lambda: with_orientation(6),
        (("top", RED), ("bottom", BLUE)),
    ),
    Case(
        "exif_orientation_8.jpg",
        200,
        "EXIF 8: shown turned 90 anticlockwise",
        lambda: with_orientation(8),
        (("top", BLUE), ("bottom", RED)),
    ),
    Case(
        "broken_exif.jpg",
        200,
        "EXIF block of garbage: the picture is still good",
        broken_exif_jpeg,
        halves(RED, BLUE),
    ),
    Case(
        "gray16.png",
        200,
        "16-bit grayscale, 0x4000 / 0xC000: must not clip",
        lambda: gray16("PNG"),
        halves((64,) * 3, (191,) * 3),
    ),
    Case("rgb16.png", 200, "16-bit RGB (hand-built)", rgb16_png, halves((191, 64, 0), (0, 64, 191))),
    Case("gray16.tiff", 200, "16-bit grayscale TIFF", lambda: gray16("TIFF"), halves((64,) * 3, (191,) * 3)),
    Case(
        "float.tiff",
        200,
        "32-bit float TIFF, 0.25 / 0.75",
        float_tiff,
        halves((64,) * 3, (191,) * 3),
    ),
    Case("palette.png", 200, "palette PNG", lambda: palette(transparent=False), halves(RED, BLUE)),
    Case(
        "palette_transparent.png",
        200,
        "palette + tRNS: transparent red is white",
        lambda: palette(transparent=True),
        halves(WHITE, BLUE),
    ),
    Case(
        "rgb_colour_key.png",
        200,
        "RGB + tRNS colour key: transparent red is white",
        lambda: red_blue("PNG", transparency=RED),
        halves(WHITE, BLUE),
    ),
    Case(
        "rgba.png", 200, "transparent red / half-transparent black, on white", rgba, halves(WHITE, (127,) * 3)
    ),
    Case("la.png", 200, "gray + alpha: transparent black / opaque black", la, halves(WHITE, BLACK)),
    Case("bilevel.png", 200, "1-bit PNG, black / white", bilevel, halves(BLACK, WHITE)),
    Case(
        "animated.gif",
        200,
        "3-frame GIF (red, green, blue): the first frame counts",
        animated_gif,
        (("all", RED),),
    ),
    Case("lossless.webp", 200, "lossless WebP", lambda: red_blue("WEBP", lossless=True), halves(RED, BLUE)),
    Case(
        "lzw.tiff",
        200,
        "LZW-compressed RGB TIFF",
        lambda: red_blue("TIFF", compression="tiff_lzw"),
        halves(RED, BLUE),
    ),
    Case("plain.bmp", 200, "BMP", lambda: red_blue("BMP"), halves(RED, BLUE)),
    Case("tiny_1x1.png", 200, "a single green pixel", lambda: green(1, 1), (("all", GREEN),)),
    Case(
        "wide_10000x1.png",
        200,
        "10000x1 strip: centre crop of a 1-pixel-high image",
        lambda: green(10000, 1),
        (("all", GREEN),),
    ),
    Case("tall_1x10000.png", 200, "1x10000 strip", lambda: green(1, 10000), (("all", GREEN),)),
    # Not an image at all, or a format we do not decode: 415.
    Case("random.bin", 415, "4 KiB of random bytes", lambda: random_bytes(4, 4096)),
    Case("not_image.svg", 415, "SVG: a text format, not a raster we decode", lambda: SVG),
    Case("html_named.png", 415, "an HTML page named .png", lambda: HTML),
    Case("document.pdf", 415, "a PDF", lambda: PDF),
    Case(
        "postscript.eps",
        415,
        "EPS: Pillow would run Ghostscript on it, so it is refused by format",
        lambda: EPS,
    ),
    Case(
        "icon.ico",
        415,
        "ICO: a real image format outside the accepted list",
        icon,
    ),
    # Claims to be an image but is broken: 400.
    Case("empty.bin", 400, "zero bytes", lambda: b""),
    Case(
        "truncated.jpg", 400, "JPEG cut in the middle of its scan data", lambda: truncated(photo_like("JPEG"))
    ),
    Case("truncated.png", 400, "PNG cut in the middle of its IDAT", lambda: truncated(photo_like("PNG"))),
    Case("header_only.png", 400, "PNG signature and IHDR, no pixel data", lambda: green(4, 4)[:33]),
    Case("bad_crc.png", 400, "PNG whose IHDR checksum is wrong", bad_crc_png),
    Case(
        "zero_width.png",
        400,
        "PNG header claiming a width of 0",
        zero_width_png,
    ),
    Case(
        "soi_then_garbage.jpg",
        400,
        "a JPEG start marker followed by random bytes",
        lambda: b"\xff\xd8\xff" + random_bytes(5, 1024),
    ),
    Case(
        "ztxt_bomb.png",
        400,
        "good pixels, but a zTXt chunk inflating to 4 MB; Pillow stops at 1 MB",
        ztxt_bomb_png,
    ),
    # A small file that claims a huge canvas: 413 from the header, before any pixel is decoded.
    Case(
        "bomb_30000x30000.png",
        413,
        "valid 1-bit PNG of 900 million pixels in ~110 KB",
        lambda: png_bomb(30000),
    ),
    Case(
        "bomb_9000x9000.gif",
        413,
        "GIF header claiming 81 M pixels: over our limit, under Pillow's",
        lambda: gif_claiming(9000),
    ),
    Case("bomb_65535x65535.gif", 413, "GIF header claiming 65535x65535", lambda: gif_claiming(65535)),
    Case(
        "bomb_65500x65500.jpg",
        413,
        "JPEG whose frame header claims 65500x65500",
        lambda: jpeg_claiming(65500, 65500),
    ),
    Case("bomb_50000x50000.bmp", 413, "BMP header claiming 50000x50000", lambda: bmp_claiming(50000)),
)


def main() -> int:
    FILES.mkdir(exist_ok=True)
    for stale in FILES.iterdir():
        stale.unlink()
    total = 0
    for case in CASES:
        data = case.build()
        case.path.write_bytes(data)
        total += len(data)
    print(f"wrote {len(CASES)} files, {total} bytes, to {FILES}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
