"""The old design's model server, as the tutorial wrote it: one process polling one list every 0.25 s.

Faithful on purpose (see bench/old_design/__init__.py): LRANGE up to 32 items, base64-decode and `np.vstack`
them one by one, `model.predict`, SET each answer as top-5 JSON, LTRIM, sleep 0.25 s, forever. A crash
between predict and LTRIM re-runs the batch; answers nobody reads stay in Redis. Only the wiring is ours:
the model is the same tiny Keras file inferd serves, and its labels replace ImageNet's decode_predictions.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

IMAGE_QUEUE = "image_queue"
BATCH_SIZE = 32
SERVER_SLEEP = 0.25
"""Seconds between two polls of the queue, whether or not the last one found work."""
IMAGE_DTYPE = "float32"
TOP = 5


def base64_decode_image(a: str, dtype: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    raw = bytes(a, encoding="utf-8")
    return np.frombuffer(base64.decodebytes(raw), dtype=dtype).reshape(shape)


def decode_predictions(preds: npt.NDArray[Any], labels: list[str], top: int) -> list[list[tuple[str, float]]]:
    """What keras' imagenet_utils.decode_predictions does, for the served model's own labels."""
    results = []
    for pred in preds:
        top_indices = pred.argsort()[-top:][::-1]
        results.append([(labels[i], float(pred[i])) for i in top_indices])
    return results


def classify_process(db: redis.Redis, model: Any, labels: list[str], input_size: int) -> None:
    while True:
        queue: Any = db.lrange(IMAGE_QUEUE, 0, BATCH_SIZE - 1)
        image_ids = []
        batch = None
        for q in queue:
            item = json.loads(q.decode("utf-8"))
            image = base64_decode_image(item["image"], IMAGE_DTYPE, (1, input_size, input_size, 3))
            batch = image if batch is None else np.vstack([batch, image])
            image_ids.append(item["id"])
        if len(image_ids) > 0:
            preds = model.predict(batch, verbose=0)
            for image_id, result_set in zip(image_ids, decode_predictions(preds, labels, TOP), strict=True):
                output = [{"label": label, "probability": float(prob)} for label, prob in result_set]
                db.set(image_id, json.dumps(output))
            db.ltrim(IMAGE_QUEUE, len(image_ids), -1)
        time.sleep(SERVER_SLEEP)


def main() -> int:
    import keras

    model = keras.saving.load_model(os.environ["OLD_MODEL"], compile=False)
    with open(os.environ["OLD_LABELS"], encoding="utf-8") as handle:
        labels = [line.strip() for line in handle if line.strip()]
    db = redis.StrictRedis(host="127.0.0.1", port=int(os.environ["OLD_REDIS_PORT"]), db=0)
    print("* model loaded; polling", IMAGE_QUEUE, flush=True)
    classify_process(db, model, labels, int(os.environ["OLD_INPUT_SIZE"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
