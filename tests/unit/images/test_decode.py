"""decode_image on the whole corpus: each hostile file gets its 4xx, each odd picture looks as a viewer shows it."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from daemon.errors import InferdError
from daemon.images.decode import REDUCING_GAP, RESAMPLE, centre_crop_box, decode_image, resize_short_side
from daemon.settings import ApiSettings, ModelSettings
from tests.corpus.make_corpus import CASES, FILES, Case

MAX_PIXELS = ApiSettings().max_image_pixels
"""The shipped limit."""
MODELS = {
    "crop32": ModelSettings(input_size=32),
    "crop224": ModelSettings(input_size=224),
    "stretch32": ModelSettings(input_size=32, resize="stretch"),
}
"""The tiny test model's input, the default model's, and the other resize mode."""
TOLERANCE = 12
"""Largest per-channel difference of a region's mean colour: JPEG and resampling blur the halves' edge."""

GOOD = [case for case in CASES if case.status == 200]
BAD = [case for case in CASES if case.status != 200]


def region(pixels: np.ndarray, where: str) -> np.ndarray:
    """A half of the picture, less a margin around the middle where the two colours are blended."""
    side = pixels.shape[0]
    near, far = side // 2 - side // 8, side // 2 + side // 8
    regions = {
        "all": pixels,
        "left": pixels[:, :near],
        "right": pixels[:, far:],
        "top": pixels[:near],
        "bottom": pixels[far:],
    }
    return regions[where].reshape(-1, 3)


def test_the_committed_corpus_is_the_one_the_script_describes():
    on_disk = {path.name for path in FILES.iterdir()}
    assert on_disk == {case.name for case in CASES}, "run `python -m tests.corpus.make_corpus`"
    assert sum(path.stat().st_size for path in FILES.iterdir()) < 2_000_000


@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
@pytest.mark.parametrize("case", GOOD, ids=lambda case: case.name)
def test_odd_pictures_decode_to_what_a_viewer_shows(case: Case, model: ModelSettings):
    pixels = decode_image(case.read(), model, MAX_PIXELS)
    assert pixels.shape == (model.input_size, model.input_size, 3)
    assert pixels.dtype == np.uint8
    # Alpha on white, 16-bit scaled rather than clipped, EXIF rotation applied: each shows in the colours.
    for where, colour in case.looks:
        seen = region(pixels, where).mean(axis=0)
        assert np.abs(seen - colour).max() <= TOLERANCE, (
            f"{case.name} ({case.why}): {where} is {seen.round().tolist()}, expected {list(colour)}"
        )


@pytest.mark.parametrize("case", BAD, ids=lambda case: case.name)
def test_hostile_files_are_refused_with_their_4xx(case: Case):
    with pytest.raises(InferdError) as refused:
        decode_image(case.read(), MODELS["crop224"], MAX_PIXELS)
    assert refused.value.status == case.status, f"{case.name} ({case.why}): {refused.value.message}"
    assert refused.value.message


def test_exif_rotation_turns_the_left_half_into_the_top_half():
    upright = decode_image((FILES / "baseline.jpg").read_bytes(), MODELS["crop32"], MAX_PIXELS)
    turned = decode_image((FILES / "exif_orientation_6.jpg").read_bytes(), MODELS["crop32"], MAX_PIXELS)
    # Orientation 6 is "turn 90 degrees clockwise to view": the stored picture, rotated, is what is seen.
    assert np.abs(np.rot90(upright, k=-1).astype(int) - turned.astype(int)).mean() < 4


def test_the_pixel_limit_is_the_configured_one():
    data = (FILES / "baseline.jpg").read_bytes()  # 64 x 48 = 3072 pixels
    assert decode_image(data, MODELS["crop32"], max_pixels=3072).shape == (32, 32, 3)
    with pytest.raises(InferdError) as refused:
        decode_image(data, MODELS["crop32"], max_pixels=3071)
    assert refused.value.status == 413
    assert refused.value.message == "the image is 64x48, more than the 3071 pixels allowed"


def test_jpeg_draft_mode_gives_the_picture_a_full_decode_gives(photo_png: bytes):
    big = Image.open(io.BytesIO(photo_png)).resize((2000, 1500), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    big.save(buffer, format="JPEG", quality=90)
    photo = buffer.getvalue()
    model = MODELS["crop224"]
    with Image.open(io.BytesIO(photo)) as probe:
        probe.draft("RGB", (resize_short_side(model),) * 2)
        assert probe.size == (500, 375), "the photo is not large enough for libjpeg to decode at 1/4"

    drafted = decode_image(photo, model, MAX_PIXELS).astype(np.float64)
    full = Image.open(io.BytesIO(photo)).convert("RGB")
    box = centre_crop_box(full.size, model)
    reference = np.asarray(full.resize((224, 224), RESAMPLE, box=box, reducing_gap=REDUCING_GAP))
    error = drafted - reference
    psnr = 10 * np.log10(255.0**2 / np.mean(error**2))
    assert np.abs(error).mean() < 2.0
    assert psnr > 35.0, f"draft decode is {psnr:.1f} dB from the full decode"
