"""The model `inferd reload` chose: recorded in the run dir, honoured while the settings' [model] is unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from daemon.errors import ModelLoadError
from daemon.model.active_model import (
    ModelRecord,
    ServedVersions,
    choice_of,
    forget_stale_record,
    record_path,
    with_active_model,
    write_record,
)
from daemon.queue.wire import ModelChoice, Reply, SwapResult
from daemon.settings import Settings, load_settings
from daemon.worker.model_swap import check_answers
from testkit.config import write_settings


def settings_in(folder: Path, version: int = 1) -> Settings:
    run_dir = folder / "run"
    run_dir.mkdir(exist_ok=True)
    model = {"path": "old.keras", "labels": "old.txt", "version": version}
    return load_settings(write_settings(folder, {"model": model, "paths": {"run_dir": str(run_dir)}}), env={})


def test_a_recorded_choice_replaces_the_settings_model_while_they_are_unchanged(tmp_path):
    settings = settings_in(tmp_path)
    new = ModelChoice(tmp_path / "new.keras", tmp_path / "new.txt", 2)
    write_record(settings, ModelRecord(active=new, settings_model=choice_of(settings.model)))
    chosen = with_active_model(settings).model
    assert (chosen.path, chosen.labels, chosen.version) == (new.path, new.labels, 2)
    assert chosen.input_size == settings.model.input_size  # only file, labels and version change
    assert forget_stale_record(settings) == new and record_path(settings).exists()


def test_an_edit_of_the_settings_model_overrules_the_record(tmp_path):
    settings = settings_in(tmp_path)
    new = ModelChoice(tmp_path / "new.keras", tmp_path / "new.txt", 2)
    write_record(settings, ModelRecord(active=new, settings_model=choice_of(settings.model)))
    edited = settings_in(tmp_path, version=3)
    assert with_active_model(edited).model == edited.model
    assert forget_stale_record(edited) is None
    assert not record_path(edited).exists()


def test_the_api_knows_both_versions_while_a_swap_is_under_way(tmp_path):
    settings = settings_in(tmp_path)
    versions = ServedVersions(settings)
    assert [c.version for c in versions.known()] == [1]
    old, new = choice_of(settings.model), ModelChoice(tmp_path / "new.keras", tmp_path / "new.txt", 2)
    write_record(settings, ModelRecord(active=new, settings_model=old, previous=old))
    assert versions.current() == new and versions.find(1) == old
    write_record(settings, ModelRecord(active=new, settings_model=old))
    assert versions.find(1) is None and versions.find(2) == new


def test_messages_of_a_swap_round_trip():
    choice = ModelChoice(Path("/m/a.keras"), Path("/m/a.txt"), 7)
    assert ModelChoice.decode(choice.encode()) == choice
    result = SwapResult(7, False, "cannot load model")
    assert SwapResult.decode(result.encode()) == result
    assert Reply.decode(Reply("cpu0", model_version=7).encode()).model_version == 7
    assert Reply.decode(Reply("cpu0").encode()).model_version is None


class Fixed:
    def __init__(self, classes: int, value: float, width: int | None = None) -> None:
        self.labels = [f"c{i}" for i in range(classes)]
        self.value, self.width = value, width or classes

    def predict(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        return np.full((len(batch), self.width), self.value, dtype=np.float32)


@pytest.mark.parametrize(
    ("predictor", "complaint"),
    [
        (Fixed(4, float("nan")), "not finite"),
        (Fixed(4, 0.25, width=5), "shape"),
        (Fixed(4, 0.5), "do not sum to 1"),
    ],
)
def test_sample_answers_that_are_not_probabilities_over_the_labels_are_refused(predictor, complaint):
    with pytest.raises(ModelLoadError, match=complaint):
        check_answers(predictor, 8, (1, 2, 4))


def test_sample_answers_that_are_probabilities_pass():
    check_answers(Fixed(4, 0.25), 8, (1, 2, 4))
