"""One exception tree for the whole appliance, each error knowing the HTTP status it maps to, and the one table
of exit codes."""

from __future__ import annotations

# The one table of exit codes: the appliance's processes, the operator tools, and supervisord's `exitcodes=`
# (tests/unit/test_exit_codes.py holds conf/supervisord.conf to WORKER_FINAL_EXITS and every module to this table).
EXIT_OK = 0
EXIT_FAILED = 1
"""An operator tool ran, but what it checked or did was not all good (a request failed, ...)."""
EXIT_SHARD_DOWN = 2
"""A registered shard has no live worker (or no shard is registered at all)."""
EXIT_REDIS_DOWN = 3
"""The appliance's Redis could not be reached, so nothing could be checked."""
EXIT_USAGE = 64
"""Bad command line (sysexits EX_USAGE); argparse's own 2 would collide with EXIT_SHARD_DOWN."""
EXIT_STUCK = 70
"""A worker whose model call hung leaves with this (EX_SOFTWARE): supervisord restarts it."""
EXIT_ALREADY_RUNNING = 75
"""Exit code of `inferd run` when another appliance holds the run directory (sysexits EX_TEMPFAIL)."""
EXIT_NOT_ROOT = 77
"""`make install` without root (sysexits EX_NOPERM)."""
EXIT_CONFIG = 78
"""Exit code for "the configuration is wrong" (sysexits EX_CONFIG): supervisord must not retry."""
EXIT_MODEL_LOAD = 79
"""Exit code for "the model failed to load": retrying cannot help, so supervisord must not retry."""
EXIT_DEVICE = 80
"""Exit code for "the ML runtime does not see this shard's GPU": a wrong install or driver, not a hiccup,
so supervisord must not retry."""

EXIT_MEANINGS = {
    EXIT_OK: "all good",
    EXIT_FAILED: "the tool ran but found or caused failures",
    EXIT_SHARD_DOWN: "a shard is down, or no shard is registered",
    EXIT_REDIS_DOWN: "Redis is unreachable",
    EXIT_USAGE: "bad command line",
    EXIT_STUCK: "a worker's model call hung (supervisord restarts it)",
    EXIT_ALREADY_RUNNING: "another appliance holds the run directory",
    EXIT_NOT_ROOT: "not root (use sudo, or --root DIR)",
    EXIT_CONFIG: "the settings file is invalid",
    EXIT_MODEL_LOAD: "the model failed to load",
    EXIT_DEVICE: "the ML runtime does not see the shard's GPU",
}
"""What each exit code means, for the --help of the tools and for the documentation."""
WORKER_FINAL_EXITS = (EXIT_OK, EXIT_CONFIG, EXIT_MODEL_LOAD, EXIT_DEVICE)
"""A worker's exits that supervisord must not answer with a restart: conf/supervisord.conf's `exitcodes=`
of [program:worker]. Anything else (EXIT_STUCK, a crash, a kill) is restarted."""


class InferdError(Exception):
    """Root of the tree: a message a client can read and the HTTP status that goes with it."""

    status = 500
    retry_after_s: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(InferdError):
    """Settings are invalid; raised at start, never while serving."""


class ModelLoadError(InferdError):
    """The model file or its labels could not be loaded."""


class DeviceUnavailable(InferdError):
    """The ML runtime does not see the device a shard was given (no GPU, or not exactly its one GPU)."""


class BadRequest(InferdError):
    status = 400


class Unauthorized(InferdError):
    status = 401


class LengthRequired(InferdError):
    status = 411


class PayloadTooLarge(InferdError):
    status = 413


class UnsupportedMediaType(InferdError):
    status = 415


class Unavailable(InferdError):
    """The appliance cannot take the job now; the client may retry after `retry_after_s`."""

    status = 503
    retry_after_s: float | None = 1.0


class NoLiveWorker(Unavailable):
    pass


class QueueFull(Unavailable):
    pass


class RedisUnavailable(Unavailable):
    pass


class Overloaded(Unavailable):
    """The request would not be answered before its deadline: too much work queued ahead of it, or it waited
    too long to reach the API. Retry-After says when the work ahead should be done."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Draining(Unavailable):
    """An operator drained the box or every live shard: it admits nothing new until `inferd undrain`."""

    retry_after_s: float | None = 5.0


class JobDropped(Unavailable):
    """An operator flushed the queue or the worker shut down before the job ran."""


class DeadlineExceeded(InferdError):
    status = 504


class InferenceFailed(InferdError):
    status = 500


ERRORS_BY_NAME: dict[str, type[InferdError]] = {
    cls.__name__: cls
    for cls in (
        BadRequest,
        PayloadTooLarge,
        UnsupportedMediaType,
        Unavailable,
        NoLiveWorker,
        QueueFull,
        RedisUnavailable,
        Draining,
        JobDropped,
        DeadlineExceeded,
        InferenceFailed,
    )
}
"""Errors that may travel from a worker to the API as data (type name + message), never pickled."""


def error_from_wire(kind: str, message: str) -> InferdError:
    """Rebuild an error sent as data; unknown kinds become a 500 rather than trusting the name."""
    return ERRORS_BY_NAME.get(kind, InferenceFailed)(message)
