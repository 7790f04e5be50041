"""Decode an upload once, in the API, into the model's uint8 input (H x W x 3), or say clearly why not.

The first bytes pick the decoder: a file that does not start like one of the accepted formats is refused
(415) without Pillow looking further, and one that does but cannot be read is corrupt (400). The pixel
count is checked from the header, before decoding, so a small file that claims a huge canvas (a
decompression bomb) costs nothing (413). Pillow then does the work: JPEG draft mode lets libjpeg decode at
1/2, 1/4 or 1/8 scale when the photo is far larger than the model input, EXIF orientation is applied, and
every mode Pillow reads (grayscale, palette, alpha, CMYK, 16-bit, float) becomes 8-bit RGB.
"""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from daemon.errors import BadRequest, DeadlineExceeded, InferdError, PayloadTooLarge, UnsupportedMediaType
from daemon.settings import ModelSettings

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF")
"""Formats we decode: a short list keeps exotic decoders (and their bugs) out of reach. MPO photos are
JPEGs to Pillow and come in as such."""

TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
"""Little- and big-endian TIFF, and BigTIFF."""

CORRUPT_DATA_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    TypeError,
    struct.error,
)
"""What a Pillow decoder raises on bytes that break its format: the I/O family for truncation, and the
errors Image.open itself takes to mean "this file does not parse". Each is a corrupt upload (400); anything
else is a fault of ours and is left to surface as one."""

RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
"""Lets Pillow shrink very large images by an integer factor first; quality is unchanged at this gap."""

ALPHA_BACKGROUND = (255, 255, 255)
"""Transparent pixels are shown on white, as an image viewer would."""


def decode_image(
    data: bytes, model: ModelSettings, max_pixels: int, deadline: float | None = None
) -> npt.NDArray[np.uint8]:
    """Bytes of an image file to a (input_size, input_size, 3) uint8 array ready for the model; past
    `deadline` (`time.monotonic()`) the decode stops at its next read of the file (504)."""
    if not data:
        raise BadRequest("the image is empty")
    claimed = sniff_format(data)
    if claimed is None:
        raise UnsupportedMediaType(
            f"the upload is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})"
        )
    image = _open(data, claimed, max_pixels, deadline)
    if deadline is not None and isinstance(image, ImageFile.ImageFile):
        image.decodermaxblock = DEADLINE_READ_BLOCK
    width, height = image.size
    if width < 1 or height < 1:
        raise BadRequest(f"the {claimed} image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height}, more than the {max_pixels} pixels allowed")
    try:
        return _to_model_input(image, model)
    except Image.DecompressionBombError as exc:
        raise _over_pixel_limit(exc, max_pixels) from None
    except CORRUPT_DATA_ERRORS as exc:
        # Truncated or corrupt data only shows when the pixels are decoded.
        raise BadRequest(f"the {claimed} image is corrupt or truncated: {exc}") from None


def sniff_format(data: bytes) -> str | None:
    """The accepted format the file's first bytes announce, or None if they announce none of them."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith(TIFF_SIGNATURES):
        return "TIFF"
    return None


DEADLINE_READ_BLOCK = 8192
"""Bytes a decoder reads at a time when a deadline is watched (Pillow's default is 64 KB): a one-colour PNG
inflates 64 KB into tens of megabytes, a third of a second of work; 8 KB keeps that a few tens of ms."""


class _DeadlineReader(io.BytesIO):
    """The file as Pillow reads it: each read past the deadline raises instead, so a huge canvas is given
    up within one block's work of the deadline, not at the end of the image."""

    def __init__(self, data: bytes, deadline: float) -> None:
        super().__init__(data)
        self._deadline = deadline

    def read(self, size: int | None = -1, /) -> bytes:
        if time.monotonic() >= self._deadline:
            raise DeadlineExceeded("the request's deadline passed while its image was being decoded")
        return super().read(size)


def _open(data: bytes, claimed: str, max_pixels: int, deadline: float | None = None) -> Image.Image:
    """Read the header with the one decoder the signature named; pixels are decoded later."""
    source = io.BytesIO(data) if deadline is None else _DeadlineReader(data, deadline)
    try:
        return Image.open(source, formats=(claimed,))
    except UnidentifiedImageError:
        # Pillow swallows the plugin's reason; the signature matched, so the file is a broken one.
        raise BadRequest(f"the upload starts like a {claimed} file but its header is corrupt") from None
    except Image.DecompressionBombError as exc:
        # Pillow's own ceiling (2 x Image.MAX_IMAGE_PIXELS), met before our header check can run.
        raise _over_pixel_limit(exc, max_pixels) from None
    except CORRUPT_DATA_ERRORS as exc:
        raise BadRequest(f"the {claimed} image cannot be read: {exc}") from None


def _over_pixel_limit(exc: Image.DecompressionBombError, max_pixels: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the image is larger than the {max_pixels} pixels allowed: {exc}")


def _to_model_input(image: Image.Image, model: ModelSettings) -> npt.NDArray[np.uint8]:
    size = model.input_size
    if image.format in ("JPEG", "MPO") and model.resize == "crop":
        # Ask libjpeg for the smallest power-of-two reduction whose short side still covers the resize.
        image.draft("RGB", (resize_short_side(model), resize_short_side(model)))
    image = ImageOps.exif_transpose(image) or image
    rgb = to_rgb(image)
    if model.resize == "stretch":
        resized = rgb.resize((size, size), RESAMPLE, reducing_gap=REDUCING_GAP)
    else:
        resized = rgb.resize(
            (size, size), RESAMPLE, box=centre_crop_box(rgb.size, model), reducing_gap=REDUCING_GAP
        )
    pixels = np.asarray(resized, dtype=np.uint8)
    if pixels.shape != (size, size, 3):
        raise InferdError(f"the decoder produced {pixels.shape}, not the model input {(size, size, 3)}")
    return pixels


def resize_short_side(model: ModelSettings) -> int:
    """Short side the image is scaled to before the centre crop (256 for 224 at the usual 0.875)."""
    return round(model.input_size / model.crop_fraction)


def centre_crop_box(image_size: tuple[int, int], model: ModelSettings) -> tuple[float, float, float, float]:
    """The source region that 'resize short side, then centre-crop' keeps, so one resize does both."""
    width, height = image_size
    side = min(width, height) * model.crop_fraction
    left = (width - side) / 2.0
    top = (height - side) / 2.0
    return (left, top, left + side, top + side)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha composited on white, 16-bit and float scaled, CMYK converted."""
    mode = image.mode
    if mode in ("P", "L", "RGB") and "transparency" in image.info:
        # A palette entry or a colour key marked transparent: shown on white like real alpha.
        image, mode = image.convert("RGBA"), "RGBA"
    if mode == "RGB":
        return image
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(scale_to_8_bit(image), mode="L").convert("RGB")
    return image.convert("RGB")


def scale_to_8_bit(image: Image.Image) -> npt.NDArray[np.uint8]:
    """Pixels of a 16-bit, 32-bit integer or float image, scaled (not clipped) onto 0..255."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max(initial=0.0))
    if image.mode.startswith("I;16"):
        top = 65535.0
    elif image.mode == "F" and peak <= 1.0:
        top = 1.0  # float pictures are conventionally 0..1
    else:
        # 32-bit integer or float: take the smallest usual range that holds the data, else its own peak.
        top = next((limit for limit in (255.0, 65535.0) if peak <= limit), peak)
    scaled: npt.NDArray[np.uint8] = np.rint(np.clip(values * (255.0 / top), 0, 255)).astype(np.uint8)
    return scaled
