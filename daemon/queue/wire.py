"""The wire format between API and workers: every message that crosses Redis, typed and parsed here alone.

A job is a fixed 44-byte header followed by the already resized uint8 pixels (150,528 bytes for
224x224x3), a quarter of the float32 array the old design shipped and without base64 or JSON around it
(version 1); or, when the pixels wait in a shared-memory segment (`daemon.queue.pixel_store`), the header followed
by the segment's name, 32 hex digits (version 2): 76 bytes through Redis instead of 150,572. A job may
instead carry the upload's file bytes, still encoded, for the shard to decode (versions 3, inline, and 4, in
a segment; `daemon.images.shard_decode`): its header's height and width are the file's own, channels 0.
Replies, registry entries, heartbeats and batch records are small JSON objects; a reply to a job that asked
for every class (`top_k = ALL_CLASSES`, the KServe V2 `probabilities` output) carries the float32 vector in
base64 (4 KB for 1000 classes) instead of the ranked predictions /predict gets, whose reply is unchanged. Nothing read from Redis is
ever unpickled or evaluated: jobs are parsed with `struct`, everything else with `json`, and a malformed
message raises `WireError`. Where each message lives in Redis is `daemon.queue.keys`' business.

Deadlines and enqueue times are CLOCK_MONOTONIC seconds: on Linux that clock is host-wide (the API and the
workers run on one host) and never jumps.
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.errors import InferdError, error_from_wire

JOB_MAGIC = b"IFD1"
JOB_HEADER = struct.Struct("<4sBBHHHdd16s")
"""magic, version, channels, top_k, height, width, deadline, enqueued_at, job id."""
JOB_VERSION = 1
"""A job carrying its pixels."""
JOB_VERSION_SEGMENT = 2
"""A job naming the shared-memory segment that holds its pixels."""
JOB_VERSION_ENCODED, JOB_VERSION_ENCODED_SEGMENT = 3, 4
"""A job carrying its image file for the shard to decode, or naming the segment that holds the file."""
JOB_VERSIONS = (JOB_VERSION, JOB_VERSION_SEGMENT, JOB_VERSION_ENCODED, JOB_VERSION_ENCODED_SEGMENT)
SEGMENT_NAME = re.compile(r"[0-9a-f]{32}")
"""What a segment name may be: never a path, so a job cannot point a worker at any other file."""
ALL_CLASSES = 0
"""`Job.top_k` asking for the whole probability vector rather than ranked predictions."""


def as_text(value: bytes | str) -> str:
    """Redis hands back bytes (we never set decode_responses, since jobs are binary)."""
    return value.decode() if isinstance(value, bytes) else value


def new_job_id() -> str:
    return os.urandom(16).hex()


class WireError(ValueError):
    """Bytes from Redis that are not a job we understand."""


class PixelsGone(WireError):
    """A job whose shared-memory pixels were removed: its caller gave up (timed out) and took them along."""


SegmentReader = Callable[[str, tuple[int, int, int] | None], npt.NDArray[np.uint8]]
"""Reads a named segment's pixels in the shape given (None: its bytes as they are, an encoded file); raises
PixelsGone or WireError."""


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    deadline: float
    enqueued_at: float
    top_k: int
    """Ranked predictions wanted, or ALL_CLASSES for the full probability vector."""
    pixels: npt.NDArray[np.uint8]
    segment: str | None = None
    """The shared-memory segment holding a copy of `pixels`: then only its name crosses Redis."""
    encoded_size: tuple[int, int] | None = None
    """(width, height) from the header when `pixels` holds the image file, to decode (clamped on the wire)."""

    @property
    def encoded(self) -> bool:
        return self.encoded_size is not None

    def encode(self) -> bytes:
        if self.encoded_size is not None:
            (width, height), channels = (min(side, 0xFFFF) for side in self.encoded_size), 0
            version = JOB_VERSION_ENCODED if self.segment is None else JOB_VERSION_ENCODED_SEGMENT
        else:
            height, width, channels = self.pixels.shape
            version = JOB_VERSION if self.segment is None else JOB_VERSION_SEGMENT
        header = JOB_HEADER.pack(
            JOB_MAGIC,
            version,
            channels,
            self.top_k,
            height,
            width,
            self.deadline,
            self.enqueued_at,
            bytes.fromhex(self.job_id),
        )
        if self.segment is not None:
            return header + self.segment.encode("ascii")
        return header + np.ascontiguousarray(self.pixels, dtype=np.uint8).tobytes()

    @classmethod
    def decode(cls, payload: bytes, read_segment: SegmentReader | None = None) -> Job:
        """Parse a job; a version-2 or 4 job's pixels or file are read with `read_segment`."""
        if len(payload) < JOB_HEADER.size:
            raise WireError(f"job of {len(payload)} bytes is shorter than its header")
        magic, version, channels, top_k, height, width, deadline, enqueued_at, raw_id = (
            JOB_HEADER.unpack_from(payload)
        )
        if magic != JOB_MAGIC or version not in JOB_VERSIONS:
            raise WireError(f"not an inferd job of version 1 to 4 (magic {magic!r}, version {version})")
        job_id = raw_id.hex()
        encoded = version in (JOB_VERSION_ENCODED, JOB_VERSION_ENCODED_SEGMENT)
        size = (width, height) if encoded else None
        if version in (JOB_VERSION_SEGMENT, JOB_VERSION_ENCODED_SEGMENT):
            segment = cls._segment_name(payload)
            if read_segment is None:
                raise WireError("the job's pixels are in shared memory, and this reader has none")
            pixels = read_segment(segment, None if encoded else (height, width, channels))
            return cls(job_id, deadline, enqueued_at, top_k, pixels, segment, size)
        data = np.frombuffer(payload, dtype=np.uint8, offset=JOB_HEADER.size)
        if encoded:
            return cls(job_id, deadline, enqueued_at, top_k, data, encoded_size=size)
        if data.size != height * width * channels:
            raise WireError(f"job carries {data.size} pixel bytes, header says {height * width * channels}")
        return cls(job_id, deadline, enqueued_at, top_k, data.reshape(height, width, channels))

    @staticmethod
    def _segment_name(payload: bytes) -> str:
        segment = bytes(payload[JOB_HEADER.size :]).decode("ascii", errors="replace")
        if not SEGMENT_NAME.fullmatch(segment):
            raise WireError(f"job names segment {segment[:64]!r}, which is not a segment name")
        return segment

    @staticmethod
    def peek_id(payload: bytes) -> str:
        """The job id without copying pixels: used to fail jobs that cannot be decoded whole."""
        if len(payload) < JOB_HEADER.size:
            raise WireError("job shorter than its header")
        return bytes(payload[JOB_HEADER.size - 16 : JOB_HEADER.size]).hex()


@dataclass(frozen=True, slots=True)
class Prediction:
    label: str
    probability: float


@dataclass(frozen=True, slots=True)
class Reply:
    """What a worker hands back for one job: predictions (or every class's probability), or an error as data."""

    shard: str
    predictions: tuple[Prediction, ...] = ()
    probabilities: npt.NDArray[np.float32] | None = None
    """Every class's probability, in class order: only for a job with top_k = ALL_CLASSES."""
    error_kind: str | None = None
    error_message: str | None = None
    batch_size: int = 0
    queue_ms: float = 0.0
    infer_ms: float = 0.0
    model_version: int | None = None
    """The version of the model that computed the answer (absent from errors and from older workers)."""

    def encode(self) -> bytes:
        body: dict[str, Any] = {"shard": self.shard}
        if self.error_kind is None:
            if self.model_version is not None:
                body["model_version"] = self.model_version
            body["predictions"] = [[p.label, p.probability] for p in self.predictions]
            if self.probabilities is not None:
                vector = np.ascontiguousarray(self.probabilities, dtype="<f4").tobytes()
                body["probabilities"] = base64.b64encode(vector).decode("ascii")
            body["batch_size"] = self.batch_size
            body["queue_ms"] = round(self.queue_ms, 3)
            body["infer_ms"] = round(self.infer_ms, 3)
        else:
            body["error"] = {"kind": self.error_kind, "message": self.error_message}
        return json.dumps(body, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Reply:
        body = json.loads(payload)
        error = body.get("error")
        if error is not None:
            return cls(
                shard=body["shard"], error_kind=str(error["kind"]), error_message=str(error["message"])
            )
        vector = body.get("probabilities")
        version = body.get("model_version")
        return cls(
            shard=body["shard"],
            predictions=tuple(Prediction(str(label), float(p)) for label, p in body["predictions"]),
            probabilities=None if vector is None else np.frombuffer(base64.b64decode(vector), dtype="<f4"),
            batch_size=int(body.get("batch_size", 0)),
            queue_ms=float(body.get("queue_ms", 0.0)),
            infer_ms=float(body.get("infer_ms", 0.0)),
            model_version=None if version is None else int(version),
        )

    @classmethod
    def failure(cls, shard: str, error: InferdError) -> Reply:
        return cls(shard=shard, error_kind=type(error).__name__, error_message=error.message)

    def raise_if_error(self) -> None:
        if self.error_kind is not None:
            raise error_from_wire(self.error_kind, self.error_message or "")


def _json_object(payload: bytes | str, what: str) -> dict[str, Any]:
    try:
        body = json.loads(payload)
    except ValueError as exc:
        raise WireError(f"{what} is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise WireError(f"{what} is not a JSON object: {body!r}")
    return body


SERVING, FAILED, STUCK = "serving", "failed", "stuck"
"""A registered shard's states: its worker serves (live while its heartbeat is fresh), refused to start, or
left because its model call hung (supervisord restarts it)."""
LIVE, DOWN = "live", "down"
"""A shard's status as /readyz, /shards, /metrics and gpu_status show it: live (a fresh heartbeat), down (none,
and the registry says it serves), or the registry's FAILED or STUCK."""
SHARD_STATUSES = (LIVE, DOWN, STUCK, FAILED)
"""Every status a shard can show, in the order the OpenAPI document lists them."""


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """A shard's entry in the registry: what device it serves, as discovery named it and as its runtime saw it.

    Written by its worker on every beat, and once with state "failed" and the reason when the worker refuses
    to start (no GPU where one was expected, a model that cannot load). Entries written before these fields
    existed decode with their defaults.
    """

    kind: str
    """"gpu" or "cpu"."""
    index: int
    name: str
    """The device as discovery named it (NVML's name for a GPU, "CPU" otherwise)."""
    state: str = SERVING
    reason: str | None = None
    """Why the shard failed, or why it serves on the CPU in place of its GPU; None when all is as planned."""
    device: str | None = None
    """The device the ML runtime computes on, as the runtime reports it; None before it was asked."""
    fallback: bool = False
    """True when a GPU shard serves on the CPU because its runtime sees no GPU (`devices.cpu_fallback`)."""
    backend: str | None = None
    runtime_version: str | None = None
    cuda_version: str | None = None
    memory_total_bytes: int | None = None
    """The device memory the runtime reports (or NVML's figure), None for the CPU."""
    model_version: int | None = None
    """The version of the model the shard computes with now (`inferd reload` changes it); None before it
    loaded one."""
    since: float | None = None
    """When the state began (unix time): for "stuck", when the wedged batch went into the model."""

    @property
    def failed(self) -> bool:
        return self.state == FAILED

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, payload: bytes | str) -> ShardInfo:
        body = _json_object(payload, "shard registry entry")
        try:
            memory = body.get("memory_total_bytes")
            version = body.get("model_version")
            return cls(
                kind=str(body["kind"]),
                index=int(body["index"]),
                name=str(body["name"]),
                state=str(body.get("state") or SERVING),
                reason=_optional_text(body.get("reason")),
                device=_optional_text(body.get("device")),
                fallback=bool(body.get("fallback", False)),
                backend=_optional_text(body.get("backend")),
                runtime_version=_optional_text(body.get("runtime_version")),
                cuda_version=_optional_text(body.get("cuda_version")),
                memory_total_bytes=None if memory is None else int(memory),
                model_version=None if version is None else int(version),
                since=None if body.get("since") is None else float(body["since"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"shard registry entry {body!r} is incomplete: {exc}") from None


def _optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """What a live worker says about itself; the key's expiry, not its content, is what makes it live."""

    pid: int
    batch_s: float | None = None
    """Moving average of the seconds a batch takes, once the worker has run one: the API estimates from it
    how long a job would wait in this shard's queue. Absent from heartbeats of older workers."""

    def encode(self) -> str:
        body: dict[str, Any] = {"pid": self.pid}
        if self.batch_s is not None:
            body["batch_s"] = round(self.batch_s, 5)
        return json.dumps(body)

    @classmethod
    def decode(cls, payload: bytes | str) -> Heartbeat:
        body = _json_object(payload, "heartbeat")
        try:
            batch_s = body.get("batch_s")
            return cls(pid=int(body["pid"]), batch_s=None if batch_s is None else float(batch_s))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"heartbeat {body!r} is incomplete: {exc}") from None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One batch a worker ran: when it finished (unix time, for humans and rates) and how many images."""

    finished_at: float
    size: int

    def encode(self) -> str:
        return json.dumps({"t": round(self.finished_at, 3), "n": self.size})

    @classmethod
    def decode(cls, payload: bytes | str) -> BatchRecord:
        body = _json_object(payload, "batch record")
        try:
            return cls(finished_at=float(body["t"]), size=int(body["n"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"batch record {body!r} is incomplete: {exc}") from None


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """A model the appliance may serve: its file, its labels and the version answers carry.

    What `inferd reload` asks a shard to swap to, and what `<run_dir>/model.json` records (daemon.model.active_model).
    """

    path: Path
    labels: Path
    version: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "labels": str(self.labels), "version": self.version}

    def encode(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def from_dict(cls, body: Any) -> ModelChoice:
        try:
            return cls(path=Path(body["path"]), labels=Path(body["labels"]), version=int(body["version"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"model choice {body!r} is incomplete: {exc}") from None

    @classmethod
    def decode(cls, payload: bytes | str) -> ModelChoice:
        return cls.from_dict(_json_object(payload, "model choice"))


@dataclass(frozen=True, slots=True)
class SwapResult:
    """A shard's answer to a swap request: it serves `version` now, or it refused it and keeps its model."""

    version: int
    ok: bool
    detail: str
    """What the shard checked and how long it took, or why it refused."""

    def encode(self) -> str:
        return json.dumps({"version": self.version, "ok": self.ok, "detail": self.detail})

    @classmethod
    def decode(cls, payload: bytes | str) -> SwapResult:
        body = _json_object(payload, "swap result")
        try:
            return cls(version=int(body["version"]), ok=bool(body["ok"]), detail=str(body["detail"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"swap result {body!r} is incomplete: {exc}") from None
