"""The device's decode path (daemon/images/nvjpeg.py) against the CPU decoder, on its CPU device.

On a GPU box the same class decodes with nvJPEG (`make gpu-proof` measures it there). Here it runs on the CPU
device: with torchvision's decoder where the gpu-decode extra is installed, else with libjpeg-turbo in its
place; the crop, resize, EXIF turn, batching and the per-image fallback are the device path's own either way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from daemon.errors import error_from_wire
from daemon.images.nvjpeg import DeviceJpegDecoder, device_decoder_missing
from daemon.images.shard_decode import CpuBatchDecoder
from daemon.model.classifier import Classifier
from daemon.settings import ApiSettings, ModelSettings
from tests.corpus.make_corpus import CASES, Case
from tests.needs import need_module

need_module("torch", "the torch extra")

MAX_PIXELS = ApiSettings().max_image_pixels
TOP = 5


def files(cases: Sequence[Case]) -> list[np.ndarray]:
    return [np.frombuffer(case.read(), dtype=np.uint8) for case in cases]


@pytest.fixture(scope="module")
def decoders(tiny_model: tuple[Path, Path]) -> tuple[CpuBatchDecoder, DeviceJpegDecoder, ModelSettings]:
    assert device_decoder_missing("cpu") is None
    model_path, labels_path = tiny_model
    model = ModelSettings(path=model_path, labels=labels_path, input_size=32, preprocessing="tf")
    cpu = CpuBatchDecoder(model, MAX_PIXELS)
    return cpu, DeviceJpegDecoder(model, MAX_PIXELS, "cpu", cpu), model


def test_the_decoders_give_the_same_top_5_on_the_corpus(decoders, photo_png: bytes):
    cpu, device, model = decoders
    good = [case for case in CASES if case.status == 200]
    batch = files(good)
    on_cpu, on_device = cpu.decode_batch(batch), device.decode_batch(batch)
    classifier = Classifier(model)
    probabilities = [classifier.predict(np.stack(pixels)) for pixels in (on_cpu, on_device)]
    for case, first, second, a, b in zip(good, *probabilities, on_cpu, on_device, strict=True):
        # Same picture to within resampling rounding, and the model ranks the same five classes.
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0, case.name
        assert list(np.argsort(-first)[:TOP]) == list(np.argsort(-second)[:TOP]), case.name


def test_what_the_device_refuses_falls_back_to_the_cpu_decoder_with_its_answer(decoders):
    cpu, device, _model = decoders
    # PNG, GIF, CMYK JPEG never reach the device; a truncated JPEG is refused by it: all take the CPU's way.
    batch = files(CASES)
    for case, mine, reference in zip(CASES, device.decode_batch(batch), cpu.decode_batch(batch), strict=True):
        if case.status == 200:
            assert isinstance(mine, np.ndarray) and isinstance(reference, np.ndarray), case.name
            continue
        assert not isinstance(mine, np.ndarray), case.name
        assert error_from_wire(type(mine).__name__, "").status == case.status, (case.name, mine)
        assert type(mine) is type(reference) and mine.message == reference.message, case.name


def test_the_fallback_is_taken_per_image_inside_one_batch(decoders):
    cpu, device, _model = decoders
    jpeg = next(case for case in CASES if case.name == "progressive.jpg")
    broken = next(case for case in CASES if case.name == "truncated.jpg")
    png = next(case for case in CASES if case.name == "rgba.png")
    decoded = device.decode_batch(files([jpeg, broken, png, jpeg]))
    assert isinstance(decoded[0], np.ndarray) and np.array_equal(decoded[0], decoded[3])
    assert error_from_wire(type(decoded[1]).__name__, "").status == 400
    assert np.array_equal(decoded[2], cpu.decode_batch(files([png]))[0])
