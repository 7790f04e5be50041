"""Decode an upload once, in the API, into the model's uint8 input (H x W x 3), or say clearly why not.

Pillow does the work: JPEG draft mode lets libjpeg decode at 1/2, 1/4 or 1/8 scale when the photo is far
larger than the model input, EXIF orientation is applied, and every mode Pillow reads (grayscale, palette,
alpha, CMYK, 16-bit) becomes 8-bit RGB. The pixel count is checked from the header, before decoding, so a
small file that claims a huge canvas (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from daemon.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from daemon.settings import ModelSettings

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO")
"""Formats Pillow may try: a short list keeps exotic decoders (and their bugs) out of reach."""

RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
"""Lets Pillow shrink very large images by an integer factor first; quality is unchanged at this gap."""

ALPHA_BACKGROUND = (255, 255, 255)
"""Transparent pixels are shown on white, as an image viewer would."""


def decode_image(data: bytes, model: ModelSettings, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Bytes of an image file to a (input_size, input_size, 3) uint8 array ready for the model."""
    if not data:
        raise BadRequest("the image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise UnsupportedMediaType(
            f"the upload is not an image in a supported format ({', '.join(ACCEPTED_FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PayloadTooLarge(f"the image has more than {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadRequest(f"the image cannot be read: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise BadRequest(f"the image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise PayloadTooLarge(f"the image is {width}x{height}, more than the {max_pixels} pixels allowed")
    try:
        return _to_model_input(image, model)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        # Truncated or corrupt data only shows when the pixels are decoded.
        raise BadRequest(f"the image is corrupt or truncated: {exc}") from None


def _to_model_input(image: Image.Image, model: ModelSettings) -> npt.NDArray[np.uint8]:
    size = model.input_size
    if image.format == "JPEG" and model.resize == "crop":
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
        raise ValueError(f"unexpected decoded shape {pixels.shape}")
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
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max(initial=0.0) > 255.0 else 255.0
        scaled = np.clip(values * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    return image.convert("RGB")
