"""The worker's model: load a Keras file and its labels once, predict uint8 batches, take top-k.

Backend-neutral Keras 3 only (no `tf.*`), so the same `.keras` file serves on TensorFlow, JAX or PyTorch.
Import this module only after the worker has pinned its device.

Two things keep the request path free of host work and of compilation:
- The cast to float and the affine normalisation of `model.preprocessing` are layers in front of the model
  (`with_preprocessing`), so uint8 pixels cross to the device, a quarter of the bytes of float32, and the
  arithmetic runs there, inside the compiled function.
- A batch is padded up to a fixed size bucket (1, 2, 4, ... up to `batching.max_batch_size`), each bucket
  warmed at start, and the padding cut off the output: XLA (JAX always, TensorFlow on a GPU) compiles once
  per input shape, and an unseen batch size would otherwise cost a compilation in front of its callers.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.errors import ModelLoadError
from daemon.queue.wire import Prediction
from daemon.settings import BatchingSettings, ModelSettings, model_file_refusal

log = logging.getLogger(__name__)

IMAGENET_MEAN_RGB = np.array([123.675, 116.28, 103.53], dtype=np.float32)
IMAGENET_STD_RGB = np.array([58.395, 57.12, 57.375], dtype=np.float32)
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


AFFINE_PREPROCESSING: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]] = {
    # mode: (scale, offset) per RGB channel, so that model input = pixel * scale + offset.
    "none": (np.ones(3, np.float32), np.zeros(3, np.float32)),
    "efficientnet_lite": (np.full(3, 1 / 128, np.float32), np.full(3, -127 / 128, np.float32)),
    "tf": (np.full(3, 1 / 127.5, np.float32), np.full(3, -1.0, np.float32)),
    "torch": (
        (1 / IMAGENET_STD_RGB).astype(np.float32),
        (-IMAGENET_MEAN_RGB / IMAGENET_STD_RGB).astype(np.float32),
    ),
    "caffe": (np.ones(3, np.float32), -CAFFE_MEAN_BGR),  # applied to BGR, see normalise
}
CHANNELS_REVERSED = frozenset({"caffe"})
"""Modes whose models were trained on BGR: the channels are flipped before the affine map."""


def normalise(batch: npt.NDArray[np.uint8], mode: str) -> npt.NDArray[np.float32]:
    """uint8 RGB pixels to the float input the model was trained on (`model.preprocessing`), on the host.

    The reference for `with_preprocessing`, which does the same on the device; tests hold them together.
    """
    if mode not in AFFINE_PREPROCESSING:
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    scale, offset = AFFINE_PREPROCESSING[mode]
    pixels = batch[..., ::-1] if mode in CHANNELS_REVERSED else batch
    # Two passes over a float32 buffer, converting while multiplying: no float64 and no temporaries, which
    # matters at 16 x 224 x 224 x 3 values per batch.
    out = np.empty(batch.shape, dtype=np.float32)
    np.multiply(pixels, scale, out=out, casting="unsafe")
    np.add(out, offset, out=out)
    return out


def with_preprocessing(model: Any, mode: str, image_shape: tuple[int, int, int]) -> Any:
    """`model` behind layers that take uint8 RGB pixels and apply `model.preprocessing` on the device."""
    import keras

    if mode not in AFFINE_PREPROCESSING:
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    scale, offset = AFFINE_PREPROCESSING[mode]
    pixels = keras.Input(image_shape, dtype="uint8", name="pixels")
    x = keras.ops.cast(pixels, "float32")
    if mode in CHANNELS_REVERSED:
        x = keras.ops.flip(x, axis=-1)
    # The same float32 multiply-then-add as `normalise`, so outputs agree with the host path to rounding.
    x = keras.ops.add(keras.ops.multiply(x, scale), offset)
    return keras.Model(pixels, model(x), name=f"{model.name}_uint8")


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """The batch sizes the model ever sees: powers of two below `max_batch_size`, and that size itself."""
    sizes = [1 << power for power in range(max_batch_size.bit_length()) if 1 << power < max_batch_size]
    return (*sizes, max_batch_size)


def bucket_for(count: int, buckets: tuple[int, ...]) -> int:
    """The smallest bucket that holds `count` images (`count` is at most the largest bucket)."""
    return next(size for size in buckets if size >= count)


def load_labels(path: Path) -> list[str]:
    try:
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except OSError as exc:
        raise ModelLoadError(f"cannot read labels file {path}: {exc}") from exc
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise ModelLoadError(f"labels file {path} is empty")
    return labels


def as_probabilities(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Models that end in logits get a softmax; models that already output probabilities pass through."""
    rows = scores.astype(np.float32, copy=False)
    sums = rows.sum(axis=1)
    if rows.min() >= 0.0 and np.allclose(sums, 1.0, atol=1e-3):
        return rows
    shifted = rows - rows.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: npt.NDArray[np.float32] = exp / exp.sum(axis=1, keepdims=True)
    return result


def top_k(probabilities: npt.NDArray[np.float32], labels: list[str], k: int) -> list[tuple[Prediction, ...]]:
    k = max(1, min(k, probabilities.shape[1]))
    # argpartition then sort only the k winners: O(n) per row instead of a full sort of 1000 classes.
    winners = np.argpartition(-probabilities, k - 1, axis=1)[:, :k]
    results = []
    for row, indices in zip(probabilities, winners, strict=True):
        ordered = indices[np.argsort(-row[indices], kind="stable")]
        results.append(tuple(Prediction(labels[i], round(float(row[i]), 6)) for i in ordered))
    return results


class Classifier:
    """A loaded Keras model with its labels and preprocessing, ready for batched prediction."""

    def __init__(
        self, settings: ModelSettings, max_batch_size: int = BatchingSettings().max_batch_size
    ) -> None:
        self.settings = settings
        self.labels = load_labels(settings.labels)
        self.buckets = batch_buckets(max_batch_size)
        refusal = model_file_refusal(settings, settings.path)
        if refusal is not None:
            raise ModelLoadError(f"cannot load model {settings.path}: {refusal}")
        try:
            import keras

            # safe_mode is Keras's default; said here so that no refactor loses it: a .keras file whose config
            # asks for arbitrary Python (a Lambda's pickled code) is refused instead of run.
            model: Any = keras.saving.load_model(settings.path, compile=False, safe_mode=True)
        except Exception as exc:  # Keras raises many types (ValueError, OSError, ...) for a bad file
            raise ModelLoadError(f"cannot load model {settings.path}: {exc}") from exc
        output_classes = int(model.outputs[0].shape[-1])
        if output_classes != len(self.labels):
            raise ModelLoadError(
                f"model {settings.path} has {output_classes} outputs but {settings.labels} has "
                f"{len(self.labels)} labels"
            )
        input_shape = tuple(model.inputs[0].shape[1:])
        expected = (settings.input_size, settings.input_size, 3)
        if any(dim is not None and dim != want for dim, want in zip(input_shape, expected, strict=False)):
            raise ModelLoadError(
                f"model {settings.path} takes input {input_shape}, but model.input_size gives {expected}"
            )
        try:
            self._model: Any = with_preprocessing(model, settings.preprocessing, expected)
        except (
            Exception
        ) as exc:  # Keras's shape inference raises ValueError and others for a graph that cannot run
            detail = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))
            raise ModelLoadError(
                f"model {settings.path} cannot run on {expected} images: {type(exc).__name__}: {detail[:400]}"
            ) from exc
        log.info("model: loaded %s (%d classes, input %s)", settings.path, output_classes, input_shape)

    def predict(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Probabilities for a batch of uint8 images: one call per largest bucket, padded to its bucket."""
        largest = self.buckets[-1]
        scores = [
            self._predict_bucket(batch[start : start + largest]) for start in range(0, len(batch), largest)
        ]
        return as_probabilities(scores[0] if len(scores) == 1 else np.concatenate(scores))

    def _predict_bucket(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        count = len(batch)
        size = bucket_for(count, self.buckets)
        if size != count:
            padded = np.zeros((size, *batch.shape[1:]), dtype=np.uint8)
            padded[:count] = batch
            batch = padded
        # predict_on_batch: one call into the compiled function, without model.predict's per-call setup.
        scores: npt.NDArray[np.float32] = np.asarray(self._model.predict_on_batch(batch))[:count]
        return scores

    def warm_up(self) -> None:
        """Compile and allocate for every bucket now, so no caller ever waits for a compilation."""
        size = self.settings.input_size
        for batch_size in self.buckets:
            self.predict(np.zeros((batch_size, size, size, 3), dtype=np.uint8))
