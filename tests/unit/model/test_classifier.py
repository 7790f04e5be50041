"""The worker's pure model helpers: preprocessing, probabilities, top-k."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.model.classifier import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    as_probabilities,
    batch_buckets,
    bucket_for,
    normalise,
    top_k,
    with_preprocessing,
)
from daemon.settings import PREPROCESSING_MODES

PIXELS = np.random.default_rng(3).integers(0, 256, (2, 5, 7, 3), dtype=np.uint8)
AS_FLOAT = PIXELS.astype(np.float64)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("none", AS_FLOAT),
        ("efficientnet_lite", (AS_FLOAT - 127) / 128),
        ("tf", AS_FLOAT / 127.5 - 1),
        ("torch", (AS_FLOAT - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB),
        ("caffe", AS_FLOAT[..., ::-1] - CAFFE_MEAN_BGR),
    ],
)
def test_preprocessing_modes_match_their_definitions(mode, expected):
    result = normalise(PIXELS, mode)
    assert result.dtype == np.float32 and result.shape == PIXELS.shape
    np.testing.assert_allclose(result, expected, atol=1e-4)


def test_unknown_preprocessing_is_refused():
    with pytest.raises(ValueError, match="unknown preprocessing"):
        normalise(PIXELS, "magic")


def test_logits_get_a_softmax_and_probabilities_pass_through():
    probabilities = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    assert as_probabilities(probabilities) is probabilities
    logits = np.array([[2.0, 1.0, -1.0]], dtype=np.float32)
    softmax = as_probabilities(logits)
    np.testing.assert_allclose(softmax.sum(axis=1), 1.0, rtol=1e-6)
    assert softmax[0].argmax() == 0 and (softmax > 0).all()


def test_top_k_is_ordered_and_bounded_by_the_class_count():
    rows = np.array([[0.1, 0.5, 0.05, 0.35], [0.4, 0.1, 0.3, 0.2]], dtype=np.float32)
    labels = ["a", "b", "c", "d"]
    first, second = top_k(rows, labels, 3)
    assert [p.label for p in first] == ["b", "d", "a"]
    assert [p.label for p in second] == ["a", "c", "d"]
    assert [p.probability for p in first] == [0.5, 0.35, 0.1]
    assert len(top_k(rows, labels, 10)[0]) == 4


@pytest.mark.parametrize("mode", PREPROCESSING_MODES)
def test_preprocessing_on_the_device_gives_the_host_path_s_outputs(mode):
    import keras

    keras.utils.set_random_seed(11)
    # Raw scores of a linear model: every input value reaches the output, channel order included.
    model = keras.Sequential([keras.Input((5, 7, 3)), keras.layers.Flatten(), keras.layers.Dense(6)])
    on_host = np.asarray(model.predict_on_batch(normalise(PIXELS, mode)))
    on_device = np.asarray(with_preprocessing(model, mode, (5, 7, 3)).predict_on_batch(PIXELS))
    assert np.abs(on_host).max() > 1.0
    np.testing.assert_allclose(on_device, on_host, atol=1e-5, rtol=0)


def test_batch_buckets_are_powers_of_two_up_to_the_largest_batch():
    assert batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert batch_buckets(24) == (1, 2, 4, 8, 16, 24)
    assert batch_buckets(1) == (1,)
    assert [bucket_for(n, batch_buckets(24)) for n in (1, 3, 5, 16, 17, 24)] == [1, 4, 8, 16, 24, 24]
