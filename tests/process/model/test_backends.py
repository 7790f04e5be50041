"""The tiny model served through a real worker on the JAX and PyTorch backends (`model.backend`), answering
as TensorFlow does. `./setup.sh test` installs both runtimes (CPU builds on a CPU box)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import requests

from daemon.images.decode import decode_image
from daemon.model.classifier import Classifier
from tests.needs import need_module

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_the_tiny_model_serves_on_each_backend_as_on_tensorflow(
    backend, start_appliance, make_settings, photo_png
):
    need_module(backend, f"the {backend} runtime")
    # An inherited KERAS_BACKEND must not win over model.backend (it would silently serve on TensorFlow).
    appliance = start_appliance(shards=1, env={"KERAS_BACKEND": "tensorflow"}, model={"backend": backend})
    answer = requests.post(f"{appliance.url}/predict?top=10", files={"image": photo_png}, timeout=30)
    assert answer.status_code == 200, answer.text
    served = {p["label"]: p["probability"] for p in answer.json()["predictions"]}

    settings = make_settings()  # the same tiny model, here on this process's TensorFlow
    expected = Classifier(settings.model).predict(
        decode_image(photo_png, settings.model, settings.api.max_image_pixels)[np.newaxis]
    )[0]
    for label, probability in served.items():
        assert probability == pytest.approx(float(expected[int(label.split("_")[1])]), abs=1e-5), label

    metrics = requests.get(f"{appliance.url}/metrics", timeout=5).text
    assert re.search(
        rf'^inferd_shard_device\{{backend="{backend}",device="CPU",fallback="0",shard="cpu0"\}} 1\.0$',
        metrics,
        re.M,
    )
    assert f"{backend} " in appliance.log_text() and "disagrees with model.backend" in appliance.log_text()
