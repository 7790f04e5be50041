"""A request's many images: the pixel budget read from headers, the bounded pool and the deadline."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from daemon.errors import BadRequest, DeadlineExceeded, PayloadTooLarge
from daemon.images.batch import DecodePool, check_request_pixels, declared_pixels
from daemon.images.decode import decode_image
from daemon.settings import ModelSettings
from testkit.images import encode_image

SMALL = encode_image(np.full((40, 30, 3), 90, np.uint8))


def big_png(side: int) -> bytes:
    """A one-colour PNG: a few kilobytes that declare side x side pixels."""
    return encode_image(np.asarray(Image.new("RGB", (side, side), (10, 200, 30))))


def test_declared_pixels_come_from_the_header():
    assert declared_pixels(SMALL, 10**6) == 1200
    assert declared_pixels(b"not an image", 10**6) == 0
    assert declared_pixels(SMALL[:20], 10**6) == 0  # a broken header: the decoder says why, later


def test_a_request_over_the_pixel_budget_is_refused_before_decoding():
    blobs = [big_png(2000)] * 5  # 20 MP in all, a few kilobytes each
    check_request_pixels(blobs, 10**7, 20_000_000)
    with pytest.raises(PayloadTooLarge, match=r"api\.max_request_pixels"):
        check_request_pixels(blobs, 10**7, 19_999_999)


def test_images_come_back_in_order():
    model = ModelSettings(input_size=8)
    blobs = [encode_image(np.full((20, 20, 3), value, np.uint8)) for value in (10, 20, 30, 40, 50)]
    pixels = DecodePool(2).decode_all(
        blobs, lambda data: decode_image(data, model, 10**6), time.monotonic() + 30
    )
    assert [int(p[0, 0, 0]) for p in pixels] == [10, 20, 30, 40, 50]


def test_one_bad_image_fails_the_request_and_stops_the_rest():
    started: list[bytes] = []

    def decode(data: bytes) -> np.ndarray:
        started.append(data)
        if data == b"bad":
            raise BadRequest("the image is corrupt")
        time.sleep(0.05)
        return np.zeros((2, 2, 3), np.uint8)

    blobs = [b"bad"] + [b"good"] * 50
    with pytest.raises(BadRequest):
        DecodePool(2).decode_all(blobs, decode, time.monotonic() + 30)
    time.sleep(0.2)
    assert len(started) <= 3


def test_past_the_deadline_the_remaining_images_are_never_decoded():
    decoding = threading.Semaphore(0)
    started: list[float] = []
    lock = threading.Lock()

    def slow_decode(data: bytes) -> np.ndarray:
        with lock:
            started.append(time.monotonic())
        decoding.release()
        time.sleep(0.3)
        return np.zeros((2, 2, 3), np.uint8)

    pool = DecodePool(2)
    deadline = time.monotonic() + 1.0
    with pytest.raises(DeadlineExceeded, match="of its 40 images"):
        pool.decode_all([b"x"] * 40, slow_decode, deadline)
    answered = time.monotonic()
    assert answered - deadline < 0.1
    time.sleep(0.8)  # what was under way finishes; nothing new starts
    assert len(started) <= 10
    assert max(started) < deadline


def test_a_huge_image_stops_decoding_soon_after_the_deadline():
    model = ModelSettings(input_size=8)
    png = big_png(5000)  # 25 MP of one colour: a few hundred milliseconds to inflate, in 64 KB reads
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        decode_image(png, model, 50_000_000, deadline=started + 0.05)
    whole = time.monotonic()
    decode_image(png, model, 50_000_000)
    # Given up at a block's read, not at the end of the image.
    assert whole - started < (time.monotonic() - whole) / 2
    with pytest.raises(DeadlineExceeded):
        decode_image(png, model, 50_000_000, deadline=time.monotonic() - 1)
