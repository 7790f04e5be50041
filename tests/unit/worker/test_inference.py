"""The triage-and-classify step on its own: no Redis, no Keras, a stand-in model and a fixed clock."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.queue.wire import ALL_CLASSES, Job, Reply, new_job_id
from daemon.worker.inference import run_batch

SHAPE = (4, 4, 3)
NOW = 1000.0


class Scores:
    """A model that scores class i of image j as (i + 1) * (j + 1), and remembers the batches it saw."""

    def __init__(self) -> None:
        self.labels = ["a", "b", "c"]
        self.batches: list[np.ndarray] = []

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.batches.append(batch)
        rows = np.arange(1, len(batch) + 1, dtype=np.float32)[:, None] * np.array([1, 2, 3], np.float32)
        probabilities: np.ndarray = rows / rows.sum(axis=1, keepdims=True)
        return probabilities


def job(top: int = 3, deadline: float = NOW + 10, shape: tuple[int, ...] = SHAPE) -> Job:
    return Job(new_job_id(), deadline, NOW - 0.25, top, np.zeros(shape, dtype=np.uint8))


def test_each_caller_gets_its_own_top_k_from_one_model_call():
    model = Scores()
    jobs = [job(top=1), job(top=3)]
    outcome = run_batch([j.encode() for j in jobs], model, "gpu0", SHAPE, clock=lambda: NOW)
    assert len(model.batches) == 1 and model.batches[0].shape == (2, *SHAPE)
    first, second = (outcome.replies[j.job_id] for j in jobs)
    assert [p.label for p in first.predictions] == ["c"]
    assert [p.label for p in second.predictions] == ["c", "b", "a"]
    assert first.batch_size == second.batch_size == outcome.computed == 2
    assert first.queue_ms == pytest.approx(250.0)


def test_expired_jobs_are_skipped_and_bad_ones_answered_with_an_error():
    model = Scores()
    expired, wrong, good = job(deadline=NOW - 1), job(shape=(5, 5, 3)), job()
    payloads = [expired.encode(), wrong.encode(), good.encode(), b"not a job"]
    outcome = run_batch(payloads, model, "gpu0", SHAPE, clock=lambda: NOW)
    assert expired.job_id not in outcome.replies  # its caller already has a 504
    assert outcome.replies[wrong.job_id].error_kind == "InferenceFailed"
    assert outcome.replies[good.job_id].predictions
    assert outcome.computed == 1 and model.batches[0].shape == (1, *SHAPE)


def test_a_failing_model_answers_every_live_caller_with_the_failure():
    class Broken(Scores):
        def predict(self, batch: np.ndarray) -> np.ndarray:
            raise RuntimeError("device lost")

    jobs = [job(), job()]
    outcome = run_batch([j.encode() for j in jobs], Broken(), "gpu0", SHAPE, clock=lambda: NOW)
    assert outcome.computed == 0
    assert {(r.error_kind, r.error_message) for r in outcome.replies.values()} == {
        ("InferenceFailed", "inference failed: RuntimeError: device lost")
    }


def test_nothing_left_to_compute_never_calls_the_model():
    model = Scores()
    outcome = run_batch([job(deadline=NOW).encode()], model, "gpu0", SHAPE, clock=lambda: NOW)
    assert outcome.replies == {} and outcome.computed == 0 and model.batches == []


def test_a_job_asking_for_all_classes_gets_the_whole_vector_through_the_wire_and_others_do_not():
    model = Scores()
    everything, ranked = job(top=ALL_CLASSES), job(top=2)
    outcome = run_batch([everything.encode(), ranked.encode()], model, "gpu0", SHAPE, clock=lambda: NOW)
    whole = Reply.decode(outcome.replies[everything.job_id].encode())
    assert whole.predictions == () and whole.probabilities is not None
    assert whole.probabilities.tolist() == pytest.approx([1 / 6, 2 / 6, 3 / 6])
    top = Reply.decode(outcome.replies[ranked.job_id].encode())
    assert top.probabilities is None and [p.label for p in top.predictions] == ["c", "b"]
    assert b"probabilities" not in outcome.replies[ranked.job_id].encode()  # /predict's reply is unchanged
    assert outcome.queue_s == pytest.approx(0.5)  # two jobs, each queued 0.25 s
