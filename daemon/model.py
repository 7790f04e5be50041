"""The worker's model: load a Keras file and its labels once, normalise uint8 batches, predict, take top-k.

Backend-neutral Keras 3 only (no `tf.*`), so the same `.keras` file serves on TensorFlow here and on JAX
or PyTorch on a GPU box. Import this module only after the worker has pinned its device.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.errors import ModelLoadError
from daemon.settings import ModelSettings
from daemon.wire import Prediction

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


def normalise(batch: npt.NDArray[np.uint8], mode: str) -> npt.NDArray[np.float32]:
    """uint8 RGB pixels to the float input the model was trained on (`model.preprocessing`)."""
    if mode not in AFFINE_PREPROCESSING:
        raise ValueError(f"unknown preprocessing mode {mode!r}")
    scale, offset = AFFINE_PREPROCESSING[mode]
    pixels = batch[..., ::-1] if mode == "caffe" else batch
    # Two passes over a float32 buffer, converting while multiplying: no float64 and no temporaries, which
    # matters at 16 x 224 x 224 x 3 values per batch.
    out = np.empty(batch.shape, dtype=np.float32)
    np.multiply(pixels, scale, out=out, casting="unsafe")
    np.add(out, offset, out=out)
    return out


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

    def __init__(self, settings: ModelSettings) -> None:
        self.settings = settings
        self.labels = load_labels(settings.labels)
        try:
            import keras

            self._model: Any = keras.saving.load_model(settings.path, compile=False)
        except Exception as exc:  # Keras raises many types (ValueError, OSError, ...) for a bad file
            raise ModelLoadError(f"cannot load model {settings.path}: {exc}") from exc
        output_classes = int(self._model.outputs[0].shape[-1])
        if output_classes != len(self.labels):
            raise ModelLoadError(
                f"model {settings.path} has {output_classes} outputs but {settings.labels} has "
                f"{len(self.labels)} labels"
            )
        input_shape = tuple(self._model.inputs[0].shape[1:])
        expected = (settings.input_size, settings.input_size, 3)
        if any(dim is not None and dim != want for dim, want in zip(input_shape, expected, strict=False)):
            raise ModelLoadError(
                f"model {settings.path} takes input {input_shape}, but model.input_size gives {expected}"
            )
        log.info("model: loaded %s (%d classes, input %s)", settings.path, output_classes, input_shape)

    def predict(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Probabilities for a batch of uint8 images, one batched call (no `model.predict` overhead)."""
        scores = self._model.predict_on_batch(normalise(batch, self.settings.preprocessing))
        return as_probabilities(np.asarray(scores))

    def warm_up(self, max_batch_size: int) -> None:
        """Trace and allocate for the batch sizes we will see, so the first caller does not pay for it."""
        size = self.settings.input_size
        for batch_size in sorted({1, 2, max_batch_size}):
            self.predict(np.zeros((batch_size, size, size, 3), dtype=np.uint8))
