"""KServe V2 against a real appliance, spoken by the real tritonclient, as an operator's client would."""

from __future__ import annotations

import base64

import numpy as np
import pytest
import requests
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from testkit.images import encode_image
from tests.conftest import TINY_INPUT
from tests.tiny_model import TINY_LABELS

pytestmark = pytest.mark.slow

MODEL = "tiny"  # the tiny model's file is tiny.keras, and no model.name is set: the name comes from the file


def photos(count: int) -> list[bytes]:
    """`count` different small PNGs (each a different flat colour and size, so their answers differ)."""
    rng = np.random.default_rng(3)
    return [
        encode_image(rng.integers(0, 256, (20 + i % 7, 30 + i % 5, 3), dtype=np.uint8)) for i in range(count)
    ]


def predict(url: str, photo: bytes) -> list[float]:
    """The /predict answer for `photo`, as a full probability row (for comparing with V2)."""
    answer = requests.post(f"{url}/predict?top={len(TINY_LABELS)}", files={"image": photo}, timeout=30)
    assert answer.status_code == 200, answer.text
    row = [0.0] * len(TINY_LABELS)
    for p in answer.json()["predictions"]:
        row[TINY_LABELS.index(p["label"])] = p["probability"]
    return row


@pytest.fixture()
def appliance(shared_appliance):
    return shared_appliance


@pytest.fixture()
def client(appliance):
    with triton.InferenceServerClient(appliance.url.removeprefix("http://")) as client:
        yield client


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("resnet50")
    server = client.get_server_metadata()
    assert server["name"] == "inferd"
    assert {"binary_tensor_data", "classification"} <= set(server["extensions"])
    assert client.get_model_metadata(MODEL) == {
        "name": MODEL,
        "versions": ["1"],
        "platform": "keras",
        "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [-1]},
            {"name": "pixels", "datatype": "UINT8", "shape": [-1, TINY_INPUT, TINY_INPUT, 3]},
        ],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(TINY_LABELS)]}],
    }
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("resnet50")
    assert unknown.value.status() == "404" and "efficientnet" not in unknown.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_images_matches_predict(client, appliance, binary):
    images = photos(3)
    tensor = triton.InferInput("image", [3], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:  # in JSON an image file travels as base64 text
        tensor.set_data_from_numpy(
            np.array([base64.b64encode(i) for i in images], dtype=np.object_), binary_data=False
        )
    wanted = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=[wanted], request_id="r-1")
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (3, len(TINY_LABELS))
    assert result.get_response()["id"] == "r-1" and result.get_response()["model_version"] == "1"
    for row, image in zip(probabilities, images, strict=True):
        # Decoded and preprocessed exactly as /predict does it (its answer is rounded to 6 places).
        assert np.allclose(row, predict(appliance.url, image), atol=2e-6)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_pixels(client, binary):
    pixels = np.random.default_rng(5).integers(0, 256, (2, TINY_INPUT, TINY_INPUT, 3), dtype=np.uint8)
    tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    result = client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("probabilities", binary)])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, len(TINY_LABELS))
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert not np.allclose(probabilities[0], probabilities[1])  # each row is its own image's


def test_classification_extension_returns_top_k_as_score_index_label(client):
    pixels = np.random.default_rng(6).integers(0, 256, (2, TINY_INPUT, TINY_INPUT, 3), dtype=np.uint8)
    tensor = triton.InferInput("pixels", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels)
    full = client.infer(MODEL, [tensor]).as_numpy("probabilities")
    top = client.infer(
        MODEL, [tensor], outputs=[triton.InferRequestedOutput("probabilities", class_count=3)]
    ).as_numpy("probabilities")
    assert top.shape == (2, 3)
    for row, classes in zip(full, top, strict=True):
        fields = [entry.decode().split(":") for entry in classes]
        indices = [int(index) for _, index, _ in fields]
        assert indices == list(np.argsort(-row)[:3])
        assert [label for _, _, label in fields] == [TINY_LABELS[i] for i in indices]
        assert [float(score) for score, _, _ in fields] == pytest.approx(row[indices], abs=1e-6)


def images_served(url: str) -> dict[str, float]:
    """inferd_images_total per shard, from /metrics."""
    text = requests.get(f"{url}/metrics", timeout=5).text
    return {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("inferd_images_total{")
    }


def test_sixty_four_images_spread_over_the_shards_and_come_back_in_order(client, appliance):
    images = photos(64)
    tensor = triton.InferInput("image", [64, 1], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(64, 1))
    before = images_served(appliance.url)
    top = client.infer(
        MODEL, [tensor], outputs=[triton.InferRequestedOutput("probabilities", class_count=1)]
    ).as_numpy("probabilities")
    after = images_served(appliance.url)
    assert top.shape == (64, 1)
    share = {shard: after[shard] - before.get(shard, 0.0) for shard in after}
    assert sum(share.values()) == 64 and min(share.values()) >= 16, share  # both shards took a share
    # In order: rows checked against /predict of the same image.
    for row in (0, 17, 63):
        expected = int(np.argmax(predict(appliance.url, images[row])))
        assert int(top[row, 0].decode().split(":")[1]) == expected


def test_errors_take_the_protocols_form_and_predicts_statuses(client, appliance):
    url = f"{appliance.url}/v2/models/{MODEL}/infer"
    corrupt = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(b"\x89PNG\r\n\x1a\nxx").decode()],
            }
        ]
    }
    answer = requests.post(url, json=corrupt, timeout=10)
    assert answer.status_code == 400 and set(answer.json()) == {"error"}
    not_image = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["PHN2Zz4="]}]}
    assert requests.post(url, json=not_image, timeout=10).status_code == 415
    assert requests.post(url, data=b"{", timeout=10).status_code == 400
    wrong_size = triton.InferInput("pixels", [1, 8, 8, 3], "UINT8")
    wrong_size.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(InferenceServerException) as refused:
        client.infer(MODEL, [wrong_size])
    assert refused.value.status() == "400" and "pixels" in refused.value.message()
