"""JPEG decoded and resized on the shard's device: nvJPEG through `torchvision.io.decode_jpeg`, in batches.

Installed only where a CUDA GPU is found (the `gpu-decode` extra: torchvision beside the CUDA build of torch),
and imported only by a shard that computes on such a device, so the CPU appliance never loads torch for it.
The batch's JPEGs go to the device in one call; the centre crop, the antialiased bicubic resize (Pillow's
filter, as torch implements it) and the EXIF turn run there too, and only the model input (150 KB at 224)
comes back. Everything else falls back to the CPU decoder per image, with the CPU decoder's answer: PNG and
the other formats, CMYK JPEGs, and any file the device decoder refuses (so a corrupt file still gets its
400 from the same code as before). With `device="cpu"` the same path runs on torchvision's libjpeg-turbo
decoder: the tests compare it with the CPU decoder on the corpus.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import simplejpeg

from daemon.errors import InferdError
from daemon.images.decode import centre_crop_box, inspect_upload
from daemon.images.jpeg import FAST_COLOUR_SPACES, exif_orientation, jpeg_size
from daemon.images.shard_decode import CpuBatchDecoder, DecodeResult
from daemon.settings import ModelSettings

log = logging.getLogger(__name__)


def device_decoder_missing(device: str) -> str | None:
    """Why JPEG cannot be decoded on `device` here, or None when it can."""
    try:
        import torch
    except ImportError as exc:
        return f"torch is not installed ({exc}); install the gpu-decode extra"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "torch sees no CUDA device"
    if device.startswith("cuda") and _torchvision_io() is None:
        return "torchvision is not usable beside this torch; install the gpu-decode extra"
    return None


def _torchvision_io() -> Any | None:
    """torchvision.io, or None when it is missing or built for another torch (its import raises then)."""
    try:
        import torchvision.io
    except Exception:  # ImportError, or RuntimeError from a torchvision built for another torch
        return None
    return torchvision.io


class DeviceJpegDecoder:
    """A batch's JPEGs through torchvision on `device`; the rest, and its refusals, through `fallback`."""

    def __init__(self, model: ModelSettings, max_pixels: int, device: str, fallback: CpuBatchDecoder) -> None:
        import torch

        self._torch: Any = torch
        self._io: Any = _torchvision_io()
        if self._io is None and device != "cpu":
            raise RuntimeError(f"torchvision is needed to decode JPEG on {device}")
        self.model = model
        self.max_pixels = max_pixels
        self.device = device
        self.fallback = fallback
        self.name = f"nvjpeg ({device})" if device.startswith("cuda") else f"device path ({device})"

    def decode_batch(self, files: Sequence[npt.NDArray[np.uint8]]) -> list[DecodeResult]:
        results: list[DecodeResult | None] = [None] * len(files)
        on_device = [index for index, data in enumerate(files) if self._suits_device(data)]
        decoded = self._decode_on_device([files[index] for index in on_device])
        for index, pixels in zip(on_device, decoded, strict=True):
            results[index] = pixels
        # PNG and the rest, CMYK, refusals by the header check or by the device: the CPU decoder's verdict.
        rest = [index for index, result in enumerate(results) if result is None]
        for index, result in zip(rest, self.fallback.decode_batch([files[i] for i in rest]), strict=True):
            results[index] = result
        return [result for result in results if result is not None]

    def _suits_device(self, data: npt.NDArray[np.uint8]) -> bool:
        """A JPEG in a colour space nvJPEG decodes like libjpeg, within the limits; the rest is the CPU's."""
        if data[:3].tobytes() != b"\xff\xd8\xff":
            return False
        raw = data.tobytes()
        header = jpeg_size(raw)
        if header is None or header[2] not in FAST_COLOUR_SPACES:
            return False
        try:
            inspect_upload(raw, self.max_pixels)
        except InferdError:
            return False  # the CPU decoder gives the refusal its usual words
        return True

    def _decode_on_device(self, files: list[npt.NDArray[np.uint8]]) -> list[npt.NDArray[np.uint8] | None]:
        """Each file's model input, None where the device decoder refused it."""
        if not files:
            return []
        if self._io is None:
            # The CPU device without torchvision (the test set-up): libjpeg-turbo decodes, and the rest of
            # the path (crop, resize, turn, one transfer back, the fallback) is the device's own.
            return self._model_inputs([self._decode_here(data) for data in files], files)
        tensors = [self._torch.from_numpy(np.array(data, dtype=np.uint8, copy=True)) for data in files]
        try:
            images = list(self._io.decode_jpeg(tensors, mode=self._io.ImageReadMode.RGB, device=self.device))
        except RuntimeError as exc:
            log.debug("decode: the batch failed on %s (%s); trying its images one by one", self.device, exc)
            images = [self._decode_single(tensor) for tensor in tensors]
        return self._model_inputs(images, files)

    def _model_inputs(
        self, images: list[Any | None], files: list[npt.NDArray[np.uint8]]
    ) -> list[npt.NDArray[np.uint8] | None]:
        inputs = [
            None if image is None else self._model_input(image, exif_orientation(data[:65536].tobytes()))
            for image, data in zip(images, files, strict=True)
        ]
        present = [tensor for tensor in inputs if tensor is not None]
        if not present:
            return [None] * len(files)
        # One transfer back for the batch: the model inputs only, never the decoded photos.
        rows = iter(self._torch.stack(present).cpu().numpy())
        return [None if tensor is None else next(rows) for tensor in inputs]

    def _decode_here(self, data: npt.NDArray[np.uint8]) -> Any | None:
        try:
            pixels = simplejpeg.decode_jpeg(data.tobytes(), colorspace="RGB", strict=True)
        except ValueError:
            return None
        return self._torch.from_numpy(pixels).permute(2, 0, 1)

    def _decode_single(self, tensor: Any) -> Any | None:
        try:
            return self._io.decode_jpeg(tensor, mode=self._io.ImageReadMode.RGB, device=self.device)
        except RuntimeError:
            return None

    def _model_input(self, image: Any, orientation: int) -> Any:
        """A decoded C x H x W image to the H x W x 3 model input: crop, resize and turn, on the device."""
        torch = self._torch
        size = self.model.input_size
        _channels, height, width = image.shape
        if self.model.resize == "crop":
            left, top, right, bottom = centre_crop_box((width, height), self.model)
            image = image[:, round(top) : round(bottom), round(left) : round(right)]
        # The CPU has a uint8 kernel for this resize (5x cheaper than float); CUDA resizes in float.
        batch = image[None] if image.device.type == "cpu" else image[None].float()
        scaled = torch.nn.functional.interpolate(
            batch, size=(size, size), mode="bicubic", antialias=True, align_corners=False
        )[0]
        if scaled.dtype != torch.uint8:
            scaled = scaled.round_().clamp_(0, 255).to(torch.uint8)
        pixels = scaled.permute(1, 2, 0)
        return _turned(torch, pixels, orientation)


def _turned(torch: Any, pixels: Any, orientation: int) -> Any:
    """`daemon.images.jpeg.orient` for a tensor on the device."""
    if orientation == 2:
        return pixels.flip(1)
    if orientation == 3:
        return pixels.flip(0, 1)
    if orientation == 4:
        return pixels.flip(0)
    if orientation == 5:
        return pixels.transpose(0, 1)
    if orientation == 6:
        return torch.rot90(pixels, -1, (0, 1))
    if orientation == 7:
        return pixels.transpose(0, 1).flip(0, 1)
    if orientation == 8:
        return torch.rot90(pixels, 1, (0, 1))
    return pixels.contiguous()
