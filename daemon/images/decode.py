"""Decode an upload into the model's uint8 input (H x W x 3), or say clearly why not.

Two entry points: `inspect_upload` reads only the header (the API's check before it forwards the bytes to a
shard: 415, 413 and a broken header's 400 cost microseconds) and `decode_image` does the whole work (the
shard's CPU decoder, and KServe V2's). The first bytes pick the decoder: a file that does not start like one
of the accepted formats is refused (415) without Pillow looking further, and one that does but cannot be
read is corrupt (400). The pixel count is checked from the header, before decoding, so a small file that
claims a huge canvas (a decompression bomb) costs nothing (413).

JPEG goes straight through libjpeg-turbo (`daemon.images.jpeg`), reduced in the DCT domain when the photo is
far larger than the model input; anything it refuses, and every other format, goes through Pillow, which
reduces as early as each decoder allows (JPEG draft, then an integer `reduce` inside the resize). EXIF
orientation is applied, and every mode Pillow reads (grayscale, palette, alpha, CMYK, 16-bit, float)
becomes 8-bit RGB; alpha is composited after the resize, on the small image, and 16-bit is scaled in
integers, so no full-size float or RGBA copy is made.
"""

from __future__ import annotations

import io
import struct
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFile, UnidentifiedImageError

from daemon.errors import BadRequest, DeadlineExceeded, InferdError, PayloadTooLarge, UnsupportedMediaType
from daemon.images.jpeg import (
    EXIF_ORIENTATION_TAG,
    FAST_COLOUR_SPACES,
    decode_jpeg_reduced,
    exif_orientation,
    jpeg_size,
    orient,
)
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


@dataclass(frozen=True, slots=True)
class Upload:
    """What the header of an accepted upload says: enough to forward it, not yet its pixels."""

    format: str
    width: int
    height: int


def inspect_upload(data: bytes, max_pixels: int) -> Upload:
    """The upload's format and size from its header alone: 415, 413 or 400 for what is refused there."""
    claimed = _claimed_format(data)
    if claimed == "JPEG":
        size = jpeg_size(data)
        if size is not None:
            return _checked(Upload(claimed, size[0], size[1]), max_pixels)
    with _open(data, claimed, max_pixels) as image:
        width, height = image.size
    return _checked(Upload(claimed, width, height), max_pixels)


def decode_image(
    data: bytes, model: ModelSettings, max_pixels: int, deadline: float | None = None
) -> npt.NDArray[np.uint8]:
    """Bytes of an image file to a (input_size, input_size, 3) uint8 array ready for the model; past
    `deadline` (`time.monotonic()`) Pillow's decode stops at its next read of the file (504)."""
    claimed = _claimed_format(data)
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExceeded(DEADLINE_PASSED)
    if claimed == "JPEG":
        fast = _decode_jpeg_fast(data, model, max_pixels)
        if fast is not None:
            return fast
    image = _open(data, claimed, max_pixels, deadline)
    if deadline is not None and isinstance(image, ImageFile.ImageFile):
        image.decodermaxblock = DEADLINE_READ_BLOCK
    _checked(Upload(claimed, *image.size), max_pixels)
    try:
        return _to_model_input(image, model)
    except Image.DecompressionBombError as exc:
        raise _over_pixel_limit(exc, max_pixels) from None
    except CORRUPT_DATA_ERRORS as exc:
        # Truncated or corrupt data only shows when the pixels are decoded.
        raise BadRequest(f"the {claimed} image is corrupt or truncated: {exc}") from None


def _claimed_format(data: bytes) -> str:
    if not data:
        raise BadRequest("the image is empty")
    claimed = sniff_format(data)
    if claimed is None:
        raise UnsupportedMediaType(
            f"the upload is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})"
        )
    return claimed


def _checked(upload: Upload, max_pixels: int) -> Upload:
    width, height = upload.width, upload.height
    if width < 1 or height < 1:
        raise BadRequest(f"the {upload.format} image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height}, more than the {max_pixels} pixels allowed")
    return upload


def _decode_jpeg_fast(data: bytes, model: ModelSettings, max_pixels: int) -> npt.NDArray[np.uint8] | None:
    """The model input through libjpeg-turbo, or None to let Pillow judge the file."""
    header = jpeg_size(data)
    if header is None or header[2] not in FAST_COLOUR_SPACES:
        return None
    width, height, _colour_space = header
    _checked(Upload("JPEG", width, height), max_pixels)
    orientation = exif_orientation(data)
    # A turn by 90 degrees swaps the sides, and the square centre crop and resize do not care.
    needed = resize_short_side(model) if model.resize == "crop" else model.input_size
    pixels = decode_jpeg_reduced(data, width, height, needed)
    if pixels is None:
        return None
    decoded = Image.frombuffer("RGBX", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "RGBX", 0, 1)
    resized = _resize(decoded, model)
    # Pillow packs RGBX to RGB in a tenth of the time numpy takes to copy a strided [:, :, :3] view.
    rgb = np.frombuffer(resized.tobytes("raw", "RGB"), np.uint8).reshape(resized.height, resized.width, 3)
    return _as_model_input(orient(rgb, orientation), model)


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
DEADLINE_PASSED = "the request's deadline passed while its image was being decoded"


class _DeadlineReader(io.BytesIO):
    """The file as Pillow reads it: each read past the deadline raises instead, so a huge canvas is given
    up within one block's work of the deadline, not at the end of the image."""

    def __init__(self, data: bytes, deadline: float) -> None:
        super().__init__(data)
        self._deadline = deadline

    def read(self, size: int | None = -1, /) -> bytes:
        if time.monotonic() >= self._deadline:
            raise DeadlineExceeded(DEADLINE_PASSED)
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
    if image.format in ("JPEG", "MPO") and model.resize == "crop":
        # Ask libjpeg for the smallest power-of-two reduction whose short side still covers the resize.
        image.draft("RGB", (resize_short_side(model), resize_short_side(model)))
    orientation = _pillow_orientation(image)
    small = _resize(reducible(image), model)
    return _as_model_input(orient(np.asarray(finish_rgb(small)), orientation), model)


def _pillow_orientation(image: Image.Image) -> int:
    try:
        value = int(image.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block shows the picture as stored (exif_transpose did too)
        return 1
    return value if 1 <= value <= 8 else 1


def _resize(image: Image.Image, model: ModelSettings) -> Image.Image:
    size = model.input_size
    box = None if model.resize == "stretch" else centre_crop_box(image.size, model)
    return image.resize((size, size), RESAMPLE, box=box, reducing_gap=REDUCING_GAP)


def _as_model_input(pixels: npt.NDArray[np.uint8], model: ModelSettings) -> npt.NDArray[np.uint8]:
    size = model.input_size
    if pixels.shape != (size, size, 3):
        raise InferdError(f"the decoder produced {pixels.shape}, not the model input {(size, size, 3)}")
    return np.ascontiguousarray(pixels, dtype=np.uint8)


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


def reducible(image: Image.Image) -> Image.Image:
    """The image in the narrowest mode the resize keeps exact, RGB, RGBA (composited later) or L: CMYK,
    palette and bilevel are converted, 16-bit and float scaled; alpha and grey stay until the image is small."""
    mode = image.mode
    if mode in ("P", "L", "RGB") and "transparency" in image.info:
        # A palette entry or a colour key marked transparent: shown on white like real alpha.
        return image.convert("RGBA")
    if mode in ("RGB", "RGBA", "L"):
        return image
    if mode in ("LA", "PA", "RGBa", "La", "P"):
        return image.convert("RGBA" if mode != "P" else "RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(scale_to_8_bit(image), mode="L")
    if mode == "1":
        return image.convert("L")
    return image.convert("RGB")


def finish_rgb(image: Image.Image) -> Image.Image:
    """A resized RGB, RGBA or L image as 8-bit RGB, alpha composited on white as an image viewer shows it."""
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def scale_to_8_bit(image: Image.Image) -> npt.NDArray[np.uint8]:
    """Pixels of a 16-bit, 32-bit integer or float image, scaled (not clipped) onto 0..255."""
    if image.mode.startswith("I;16"):
        # 65535 = 255 x 257: rounding v / 257 is exact in integers, with no float copy of the picture.
        wide = np.asarray(image).astype(np.uint32)
        return ((wide + 128) // 257).astype(np.uint8)
    values = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(values.max(initial=0.0))
    if image.mode == "F" and peak <= 1.0:
        top = 1.0  # float pictures are conventionally 0..1
    else:
        # 32-bit integer or float: take the smallest usual range that holds the data, else its own peak.
        top = next((limit for limit in (255.0, 65535.0) if peak <= limit), peak)
    np.multiply(values, np.float32(255.0 / top), out=values)
    np.clip(values, 0, 255, out=values)
    scaled: npt.NDArray[np.uint8] = np.rint(values, out=values).astype(np.uint8)
    return scaled
