"""Property tests of the decoder: whatever bytes arrive, decode_image answers a model input or a 4xx.

Any other exception (a KeyError from a plugin, a MemoryError, a crash) would be a 500 in the API, so the
properties only let InferdError with a 4xx status through. Bounded to a few hundred examples each.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from daemon.errors import InferdError
from daemon.images.decode import TIFF_SIGNATURES, decode_image
from daemon.settings import ModelSettings
from tests.corpus.make_corpus import CASES

MODEL = ModelSettings(input_size=32)
MAX_PIXELS = 1_000_000
"""Low, so a mutated header that claims a large canvas is refused rather than decoded slowly."""
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIGNATURES = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"RIFF\x00\x00\x00\x00WEBPVP8 ",
    b"BM",
    *TIFF_SIGNATURES,
)
"""Random bytes behind a real signature get past sniffing and into each decoder's parser."""

SEEDS = tuple(case.read() for case in CASES if case.status == 200 and len(case.read()) < 16_384)
"""Small valid files of every accepted format, to mutate."""

WRITABLE_MODES: dict[str, tuple[str, ...]] = {
    "PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"),
    "JPEG": ("L", "RGB", "CMYK"),
    "GIF": ("L", "P", "RGB"),
    "WEBP": ("RGB", "RGBA"),
    "BMP": ("1", "L", "P", "RGB"),
    "TIFF": ("1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
}
"""What Pillow can write in each accepted format: the generated images are all valid."""


def decodes_or_refuses(data: bytes) -> np.ndarray | None:
    """The decoded model input, or None if it was refused with a 4xx; anything else fails the test."""
    try:
        pixels = decode_image(data, MODEL, MAX_PIXELS)
    except InferdError as exc:
        assert 400 <= exc.status < 500, f"{type(exc).__name__} {exc.status}: {exc.message}"
        assert exc.message
        return None
    assert pixels.shape == (MODEL.input_size, MODEL.input_size, 3)
    assert pixels.dtype == np.uint8
    return pixels


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_are_refused_or_decoded(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(st.sampled_from(SIGNATURES), st.binary(max_size=4096))
def test_a_real_signature_before_garbage_is_refused_with_4xx(signature: bytes, tail: bytes) -> None:
    assert decodes_or_refuses(signature + tail) is None


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid small file with bytes flipped, a slice cut out, bytes inserted, or its end cut off."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(0, len(data) - 1)))
        edit = draw(st.sampled_from(("flip", "delete", "insert", "truncate")))
        if edit == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        else:
            del data[at:]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_valid_files_are_refused_or_decoded(data: bytes) -> None:
    decodes_or_refuses(data)


@dataclass(frozen=True)
class ImageSpec:
    """A valid image to generate: small to print when hypothesis reports a failing example."""

    fmt: str
    mode: str
    width: int
    height: int
    resize: str

    def encode(self) -> bytes:
        """A left-to-right ramp from black to white with some noise, in this format and mode."""
        ramp = np.linspace(0.0, 1.0, self.width)[None, :] * np.ones((self.height, 1))
        noise = np.random.default_rng(self.width * 1000 + self.height).normal(0.0, 0.04, ramp.shape)
        gray = np.clip(ramp + noise, 0.0, 1.0)
        if self.mode == "I;16":
            image = Image.fromarray((gray * 65535).astype(np.uint16))
        elif self.mode == "I":
            image = Image.fromarray((gray * 65535).astype(np.int32))
        elif self.mode == "F":
            image = Image.fromarray(gray.astype(np.float32))
        else:
            rgb = np.repeat((gray * 255).astype(np.uint8)[..., None], 3, axis=2)
            image = Image.fromarray(rgb).convert(self.mode)
        buffer = io.BytesIO()
        image.save(buffer, format=self.fmt, **({"quality": 90} if self.fmt == "JPEG" else {}))
        return buffer.getvalue()


@st.composite
def image_specs(draw: st.DrawFn) -> ImageSpec:
    fmt = draw(st.sampled_from(sorted(WRITABLE_MODES)))
    return ImageSpec(
        fmt=fmt,
        mode=draw(st.sampled_from(WRITABLE_MODES[fmt])),
        width=draw(st.integers(1, 400)),
        height=draw(st.integers(1, 400)),
        resize=draw(st.sampled_from(("crop", "stretch"))),
    )


@FUZZ
@given(image_specs())
def test_every_valid_image_of_any_size_and_mode_decodes(spec: ImageSpec) -> None:
    model = ModelSettings(input_size=MODEL.input_size, resize=spec.resize)
    pixels = decode_image(spec.encode(), model, MAX_PIXELS)
    assert pixels.shape == (model.input_size, model.input_size, 3)
    assert pixels.dtype == np.uint8
    if spec.resize == "stretch" and spec.width >= 8:
        # The whole ramp is kept: a mode that was clipped, mis-scaled or flattened would lose it.
        third = model.input_size // 3
        left, right = pixels[:, :third].mean(), pixels[:, -third:].mean()
        assert right - left > 100, f"{spec}: left third {left:.0f}, right third {right:.0f}"


@pytest.mark.parametrize("signature", SIGNATURES)
def test_each_signature_alone_is_a_4xx(signature: bytes) -> None:
    assert decodes_or_refuses(signature) is None
