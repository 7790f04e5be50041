"""Which model the appliance serves: the settings' `[model]`, unless `inferd reload` chose another since.

`inferd reload` records its choice in `<run_dir>/model.json`, so that a worker supervisord restarts after a
swap, and the whole appliance restarted, load the model the operator last chose, not the one the settings
file names. The record also keeps the settings' own model as it was at the reload: once an operator edits
`[model]` (path, labels or version), the settings are the newer decision and the record no longer applies
(the launcher deletes it). While a swap is under way the record also names the model being replaced
(`previous`), so that the API knows the labels of both versions while the shards disagree.

The record is replaced in one rename, so a reader sees the old record or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from daemon.ops.run_dir import read_json_record, write_json_record
from daemon.queue.wire import ModelChoice, WireError
from daemon.settings import ModelSettings, Settings

log = logging.getLogger(__name__)

RECORD_NAME = "model.json"


def choice_of(model: ModelSettings) -> ModelChoice:
    return ModelChoice(path=model.path, labels=model.labels, version=model.version)


def applied(choice: ModelChoice, model: ModelSettings) -> ModelSettings:
    """`model` (input size, preprocessing, ...) with the chosen file, labels and version."""
    return dataclasses.replace(model, path=choice.path, labels=choice.labels, version=choice.version)


@dataclass(frozen=True, slots=True)
class ModelRecord:
    active: ModelChoice
    settings_model: ModelChoice
    """The settings' `[model]` when the record was written: the record holds only while it is unchanged."""
    previous: ModelChoice | None = None
    """The model being replaced, while a swap is under way."""

    def holds_for(self, settings: Settings) -> bool:
        return self.settings_model == choice_of(settings.model)


def record_path(settings: Settings) -> Path:
    return settings.paths.run_dir / RECORD_NAME


def read_record(settings: Settings) -> ModelRecord | None:
    """The record in the run dir, or None when there is none or it is unreadable (said in the log)."""
    path = record_path(settings)
    try:
        body = read_json_record(path)
        if body is None:
            return None
        previous = body.get("previous")
        return ModelRecord(
            active=ModelChoice.from_dict(body["active"]),
            settings_model=ModelChoice.from_dict(body["settings_model"]),
            previous=None if previous is None else ModelChoice.from_dict(previous),
        )
    except (OSError, ValueError, KeyError, TypeError, WireError, AttributeError) as exc:
        log.warning("model: ignoring %s, which does not read as a model record: %s", path, exc)
        return None


def write_record(settings: Settings, record: ModelRecord) -> None:
    body = {
        "active": record.active.as_dict(),
        "settings_model": record.settings_model.as_dict(),
        "previous": None if record.previous is None else record.previous.as_dict(),
    }
    write_json_record(record_path(settings), body)


def active_record(settings: Settings) -> ModelRecord | None:
    """The record, if it holds for these settings."""
    record = read_record(settings)
    return record if record is not None and record.holds_for(settings) else None


def with_active_model(settings: Settings) -> Settings:
    """`settings` with the model `inferd reload` chose in place of `[model]`'s, where a record holds."""
    record = active_record(settings)
    if record is None:
        return settings
    return dataclasses.replace(settings, model=applied(record.active, settings.model))


def forget_stale_record(settings: Settings) -> ModelChoice | None:
    """At start: delete a record the settings have overruled; returns the chosen model a record still holds."""
    record = read_record(settings)
    if record is None:
        return None
    if record.holds_for(settings):
        return record.active
    log.warning(
        "inferd: [model] in the settings changed since `inferd reload` chose %s (version %d); serving the "
        "settings' model and forgetting that choice",
        record.active.path,
        record.active.version,
    )
    record_path(settings).unlink(missing_ok=True)
    return None


class ServedVersions:
    """The API's view of the model: the version served now, and the models a shard may answer with during a
    swap. Reads the record again whenever it changes (one stat per call)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = (-1, -1)
        self._record: ModelRecord | None = None

    def _current_record(self) -> ModelRecord | None:
        try:
            # Every write is a new file renamed into place: a new inode, whatever the clock's granularity.
            found = record_path(self._settings).stat()
            stamp: tuple[int, int] | None = (found.st_ino, found.st_mtime_ns)
        except OSError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._record = active_record(self._settings) if stamp is not None else None
                self._stamp = stamp
            return self._record

    def current(self) -> ModelChoice:
        record = self._current_record()
        return choice_of(self._settings.model) if record is None else record.active

    def known(self) -> list[ModelChoice]:
        """The current model, then the one a swap under way replaces."""
        record = self._current_record()
        if record is None:
            return [choice_of(self._settings.model)]
        return [record.active] + ([record.previous] if record.previous is not None else [])

    def find(self, version: int) -> ModelChoice | None:
        return next((choice for choice in self.known() if choice.version == version), None)
