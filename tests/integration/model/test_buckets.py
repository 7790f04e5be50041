"""Batch-size buckets on the real tiny Keras model: padding never changes an image's answer."""

from __future__ import annotations

import numpy as np

from daemon.model.classifier import Classifier


def test_padded_batches_answer_as_if_each_image_ran_alone(make_settings):
    settings = make_settings()
    classifier = Classifier(settings.model, max_batch_size=8)
    images = np.random.default_rng(5).integers(0, 256, (19, 32, 32, 3), dtype=np.uint8)
    alone = np.concatenate([classifier.predict(images[i : i + 1]) for i in range(len(images))])
    together = classifier.predict(images)  # 8 + 8 + 3 padded to 4
    assert together.shape == (19, 10)
    np.testing.assert_allclose(together, alone, atol=1e-6)
