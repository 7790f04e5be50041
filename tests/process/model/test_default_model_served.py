"""The appliance with its real embedded default model (EfficientNet-Lite0) on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import requests
from PIL import Image

from testkit.images import encode_image
from tests.process.conftest import SKIMAGE_DATA, default_model_section

pytestmark = pytest.mark.slow


def test_real_photos_get_correct_imagenet_labels(start_appliance, default_model):
    appliance = start_appliance(shards=1, model=default_model_section(default_model))
    coffee = (SKIMAGE_DATA / "coffee.png").read_bytes()
    answer = requests.post(f"{appliance.url}/predict", files={"image": ("coffee.png", coffee)}, timeout=60)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert predictions[0]["label"] == "espresso"
    assert predictions[0]["probability"] > 0.8

    # A JPEG of the cat photo, rotated on disk and put upright again by its EXIF orientation tag.
    cat = np.asarray(Image.open(SKIMAGE_DATA / "chelsea.png").convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": store the pixels turned the other way
    sideways = encode_image(np.rot90(cat, k=1), "JPEG", quality=92, exif=exif.tobytes())
    answer = requests.post(
        f"{appliance.url}/predict?top=3", data=sideways, headers={"Content-Type": "image/jpeg"}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    labels = [p["label"] for p in answer.json()["predictions"]]
    assert labels[0] in {"tabby", "tiger cat", "Egyptian cat"}, labels


def test_tritonclient_gets_espresso_for_the_coffee_photo(start_appliance, default_model):
    import tritonclient.http as triton

    model_path, labels_path = default_model
    appliance = start_appliance(
        shards=1,
        model={"path": model_path, "labels": labels_path, "input_size": 224},  # named from the file
    )
    coffee = (SKIMAGE_DATA / "coffee.png").read_bytes()
    with triton.InferenceServerClient(appliance.url.removeprefix("http://")) as client:
        assert client.is_model_ready("efficientnet_lite0")
        tensor = triton.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([coffee], dtype=np.object_))
        wanted = triton.InferRequestedOutput("probabilities", class_count=5)
        top = client.infer("efficientnet_lite0", [tensor], outputs=[wanted]).as_numpy("probabilities")
    score, index, label = top[0, 0].decode().split(":", 2)
    assert (label, index) == ("espresso", "967") and float(score) > 0.8, top
