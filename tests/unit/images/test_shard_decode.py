"""Decoding in the shard: each file of a batch gets its own verdict, with the status the API always gave it.

The batch goes through `run_batch` as a worker runs it, with the real CPU decoder and a stand-in model; the
wire format carries the files exactly as the API forwards them.
"""

from __future__ import annotations

import numpy as np
import pytest

from daemon.errors import error_from_wire
from daemon.images.decode import inspect_upload
from daemon.images.shard_decode import CpuBatchDecoder
from daemon.queue.wire import Job, new_job_id
from daemon.settings import ApiSettings, ModelSettings
from daemon.worker.inference import run_batch
from tests.corpus.make_corpus import CASES, FILES

MODEL = ModelSettings(input_size=32)
SHAPE = (32, 32, 3)
NOW = 1000.0
MAX_PIXELS = ApiSettings().max_image_pixels


class Means:
    """A model whose scores are each image's mean colour: it shows which image reached which row."""

    def __init__(self) -> None:
        self.labels = ["red", "green", "blue"]
        self.batches: list[np.ndarray] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch)
        means = batch.reshape(len(batch), -1, 3).mean(axis=1).astype(np.float32) + 1.0
        scores: np.ndarray = means / means.sum(axis=1, keepdims=True)
        return scores


def file_job(data: bytes) -> Job:
    """The job the API builds for an upload whose header passed (or a stand-in size when it did not)."""
    try:
        upload = inspect_upload(data, MAX_PIXELS)
        size = (upload.width, upload.height)
    except Exception:
        size = (1, 1)  # the API would have refused it; the shard must still give its own verdict
    pixels = np.frombuffer(data, dtype=np.uint8)
    return Job(new_job_id(), NOW + 10, NOW - 0.1, 3, pixels, encoded_size=size)


def test_every_corpus_file_gets_the_status_the_api_gave_it_and_bad_ones_fail_only_their_job():
    decoder = CpuBatchDecoder(MODEL, MAX_PIXELS, threads=2)
    jobs = [file_job(case.read()) for case in CASES]
    model = Means()
    outcome = run_batch(
        [job.encode() for job in jobs], model, "cpu0", SHAPE, clock=lambda: NOW, decoder=decoder
    )
    good = [case for case in CASES if case.status == 200]
    assert outcome.computed == len(good) and model.batches[0].shape == (len(good), *SHAPE)
    for case, job in zip(CASES, jobs, strict=True):
        reply = outcome.replies[job.job_id]
        if case.status == 200:
            assert reply.error_kind is None and len(reply.predictions) == 3, case.name
        else:
            assert reply.error_kind is not None, case.name
            assert error_from_wire(reply.error_kind, reply.error_message or "").status == case.status, (
                f"{case.name} ({case.why}): {reply.error_kind} {reply.error_message}"
            )


def test_files_and_decoded_pixels_share_one_batch_in_order():
    red = (FILES / "baseline.jpg").read_bytes()
    pixels = Job(new_job_id(), NOW + 10, NOW, 3, np.full(SHAPE, (0, 0, 255), dtype=np.uint8))
    jobs = [file_job(red), pixels, file_job(red)]
    model = Means()
    outcome = run_batch(
        [job.encode() for job in jobs],
        model,
        "cpu0",
        SHAPE,
        clock=lambda: NOW,
        decoder=CpuBatchDecoder(MODEL, MAX_PIXELS),
    )
    assert outcome.computed == 3
    assert outcome.replies[pixels.job_id].predictions[0].label == "blue"
    (batch,) = model.batches
    assert np.array_equal(batch[0], batch[2]) and not np.array_equal(batch[0], batch[1])


def test_a_worker_without_a_decoder_answers_files_with_a_500_not_silence():
    job = file_job((FILES / "baseline.jpg").read_bytes())
    outcome = run_batch([job.encode()], Means(), "cpu0", SHAPE, clock=lambda: NOW)
    assert outcome.replies[job.job_id].error_kind == "InferenceFailed"


@pytest.mark.parametrize("segment", [False, True])
def test_a_file_job_survives_the_wire(segment: bool, tmp_path):
    data = (FILES / "progressive.jpg").read_bytes()
    job = file_job(data)
    if segment:
        (tmp_path / job.job_id).write_bytes(data)
        job = Job(job.job_id, job.deadline, job.enqueued_at, 3, job.pixels, job.job_id, job.encoded_size)

    def read_segment(name: str, shape: tuple[int, int, int] | None) -> np.ndarray:
        assert shape is None
        return np.fromfile(tmp_path / name, dtype=np.uint8)

    back = Job.decode(job.encode(), read_segment)
    assert back.encoded and back.encoded_size == job.encoded_size and back.pixels.tobytes() == data
