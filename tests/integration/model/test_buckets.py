"""Batch-size buckets on real Keras models: padding never changes an image's answer, and after warm-up no
batch size compiles again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemon.model.classifier import Classifier
from testkit.harness import REPO
from tests.tiny_model import build_counting_model


def test_padded_batches_answer_as_if_each_image_ran_alone(make_settings):
    settings = make_settings()
    classifier = Classifier(settings.model, max_batch_size=8)
    images = np.random.default_rng(5).integers(0, 256, (19, 32, 32, 3), dtype=np.uint8)
    alone = np.concatenate([classifier.predict(images[i : i + 1]) for i in range(len(images))])
    together = classifier.predict(images)  # 8 + 8 + 3 padded to 4
    assert together.shape == (19, 10)
    np.testing.assert_allclose(together, alone, atol=1e-6)


TRACE_COUNT = """
import json, sys
import numpy as np
from daemon.model.classifier import Classifier
from daemon.settings import load_settings
from tests.tiny_model import CountsTraces

classifier = Classifier(load_settings(sys.argv[1]).model, max_batch_size=8)
classifier.warm_up()
after_warm_up = CountsTraces.traces
images = np.random.default_rng(6).integers(0, 256, (19, 32, 32, 3), dtype=np.uint8)
for count in (*range(1, 9), 19):  # every size a batch can have, and one split over buckets
    classifier.predict(images[:count])
print(json.dumps({"after_warm_up": after_warm_up, "after_requests": CountsTraces.traces}))
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_after_warm_up_no_batch_size_compiles_again(make_settings, tmp_path: Path, backend: str):
    """The README: no compilation on the request path, every bucket compiled at start. The model's one custom
    layer counts the runs of its Python `call`: once per trace, as a compiled function runs without Python.
    JAX compiles per input shape (TensorFlow on a CPU relaxes the batch dimension instead)."""
    model, labels = build_counting_model(tmp_path / "model")
    settings = make_settings(model={"path": model, "labels": labels})
    result = subprocess.run(
        [sys.executable, "-c", TRACE_COUNT, str(settings.source)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": backend},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.splitlines()[-1])
    assert counts["after_warm_up"] > 0, "the counting layer never ran: the test would prove nothing"
    assert counts["after_requests"] == counts["after_warm_up"], counts
