"""The old design's web tier, as the tutorial wrote it: Flask, float32 base64 JSON on one list, GET polling.

Kept faithful on purpose (see bench/old_design/__init__.py): every request sleeps 0.25 s between polls and
waits forever if its answer never comes. Only the wiring is ours: settings come from the environment and
`get_app()` builds the app for gunicorn instead of module-level globals.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import uuid
from typing import Any

import flask
import numpy as np
import numpy.typing as npt
import redis
from keras.applications import imagenet_utils
from keras.utils import img_to_array
from PIL import Image

IMAGE_QUEUE = "image_queue"
CLIENT_SLEEP = 0.25
"""Seconds between two GETs of a request's answer key."""
IMAGE_DTYPE = "float32"
PREPROCESSING_MODE = "tf"
"""keras' imagenet_utils mode for the model being served (the tiny test model is trained for 'tf')."""


def base64_encode_image(a: npt.NDArray[Any]) -> str:
    return base64.b64encode(a).decode("utf-8")  # type: ignore[arg-type]


def prepare_image(image: Image.Image, target: tuple[int, int]) -> npt.NDArray[np.float32]:
    if image.mode != "RGB":
        image = image.convert("RGB")
    image = image.resize(target)
    array = img_to_array(image)
    array = np.expand_dims(array, axis=0)
    prepared: npt.NDArray[np.float32] = imagenet_utils.preprocess_input(array, mode=PREPROCESSING_MODE)
    return prepared


def create_app(db: redis.Redis, input_size: int) -> flask.Flask:
    app = flask.Flask(__name__)

    @app.route("/predict", methods=["POST"])
    def predict() -> flask.Response:
        data: dict[str, Any] = {"success": False}
        if flask.request.files.get("image"):
            image = Image.open(io.BytesIO(flask.request.files["image"].read()))
            prepared = prepare_image(image, (input_size, input_size)).copy(order="C")
            k = str(uuid.uuid4())
            d = {"id": k, "image": base64_encode_image(prepared)}
            db.rpush(IMAGE_QUEUE, json.dumps(d))
            while True:
                output = db.get(k)
                if output is not None:
                    data["predictions"] = json.loads(output.decode("utf-8"))  # type: ignore[union-attr]
                    db.delete(k)
                    break
                time.sleep(CLIENT_SLEEP)
            data["success"] = True
        return flask.jsonify(data)

    return app


def get_app() -> flask.Flask:
    """Entry point for gunicorn: Redis on loopback TCP at OLD_REDIS_PORT, the model's input size."""
    db = redis.StrictRedis(host="127.0.0.1", port=int(os.environ["OLD_REDIS_PORT"]), db=0)
    return create_app(db, int(os.environ["OLD_INPUT_SIZE"]))
