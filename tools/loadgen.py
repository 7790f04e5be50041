"""The stress tool's engine: bounded HTTP load against /predict, closed loop or open loop, every request recorded.

Importable on its own (`run_load`, or `start_load` to inject faults while load runs) so fault tests and the
benchmark measure with the same code as the operator's `tools/stress`.

Each thread keeps one keep-alive `http.client` connection and sends prebuilt multipart bodies: per request
it only writes bytes and parses a status line and headers, so on two cores the client is not what limits.
In open loop (`rate`), request i is due at start + i/rate whatever the latency, and its latency counts from
that due time: a request that had to wait for a free thread is late, and that lateness is the server's doing
(no coordinated omission).
"""

from __future__ import annotations

import http.client
import json
import math
import mimetypes
import resource
import select
import ssl
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
BOUNDARY = "----inferd-stress-5f0c2e"
ERROR_TEXT_CHARS = 200
"""Longest error text kept per request: enough to read the API's JSON reason."""
TOP_ERRORS = 10


@dataclass(frozen=True, slots=True)
class Upload:
    name: str
    body: bytes
    """The whole multipart/form-data body (field "image"), built once and sent as is."""

    @classmethod
    def of(cls, name: str, data: bytes) -> Upload:
        content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
        head = (
            f"--{BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        )
        return cls(name, head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode())


def load_uploads(path: Path) -> list[Upload]:
    """One image file, or every image file in a folder (sorted), as ready-to-send bodies."""
    files = (
        sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
    )
    if not files:
        raise ValueError(f"{path} holds no image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [Upload.of(p.name, p.read_bytes()) for p in files]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    start_s: float
    """When the request was due (open loop) or sent (closed loop), in seconds after the load began."""
    latency_s: float
    status: int
    """HTTP status; 0 when no HTTP answer came (refused, reset, timed out)."""
    shard: str | None = None
    batch_size: int | None = None
    error: str | None = None
    """The API's JSON `error` for a non-200 answer, or the exception when there was no answer."""
    model_version: int | None = None
    """X-Inferd-Model-Version of a 200 answer: the version of the model that computed it."""


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile (the smallest value with at least pct% of values at or below it).

    The one definition of pNN in inferd: the stress tool, the fault tests and the benchmark all use it.
    """
    if not sorted_values:
        raise ValueError("no values: a percentile of nothing is undefined")
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class LoadSummary:
    url: str
    concurrency: int
    rate: float | None
    requests: int
    ok: int
    elapsed_s: float
    throughput_rps: float
    """Answered requests (any HTTP status) per second, as wrk counts them."""
    ok_rps: float
    latency_ms: dict[str, float]
    """p50, p90, p99, max and mean over answered requests."""
    status_counts: dict[str, int]
    """HTTP status -> count; "error" for requests that got no HTTP answer."""
    shards: dict[str, int]
    model_versions: dict[str, int]
    """X-Inferd-Model-Version -> 200 answers computed by it (two while `inferd reload` runs)."""
    mean_batch_size: float | None
    """Mean X-Inferd-Batch-Size over 200 answers: the batch a typical request rode in."""
    errors: dict[str, int]
    client_cpu_ms_per_request: float
    max_lag_ms: float
    """Open loop: how late the latest request was sent after it was due (0 in closed loop)."""


@dataclass
class LoadResult:
    url: str
    concurrency: int
    rate: float | None
    elapsed_s: float
    records: list[RequestRecord]
    client_cpu_s: float
    max_lag_s: float

    def summary(self) -> LoadSummary:
        answered = sorted(r.latency_s * 1000.0 for r in self.records if r.status)
        ok = [r for r in self.records if r.status == 200]
        latency = {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
        if answered:
            latency = {f"p{p}": round(percentile(answered, p), 2) for p in (50, 90, 99)}
            latency |= {"max": round(answered[-1], 2), "mean": round(sum(answered) / len(answered), 2)}
        statuses = Counter(str(r.status) if r.status else "error" for r in self.records)
        batch_sizes = [r.batch_size for r in ok if r.batch_size is not None]
        errors = Counter(f"{r.status or 'no answer'}: {r.error}" for r in self.records if r.error)
        elapsed = max(self.elapsed_s, 1e-9)
        return LoadSummary(
            url=self.url,
            concurrency=self.concurrency,
            rate=self.rate,
            requests=len(self.records),
            ok=len(ok),
            elapsed_s=round(self.elapsed_s, 3),
            throughput_rps=round(len(answered) / elapsed, 2),
            ok_rps=round(len(ok) / elapsed, 2),
            latency_ms=latency,
            status_counts=dict(sorted(statuses.items())),
            shards=dict(sorted(Counter(r.shard for r in ok if r.shard).items())),
            model_versions=dict(sorted(Counter(str(r.model_version) for r in ok if r.model_version).items())),
            mean_batch_size=round(sum(batch_sizes) / len(batch_sizes), 2) if batch_sizes else None,
            errors=dict(errors.most_common(TOP_ERRORS)),
            client_cpu_ms_per_request=round(1000.0 * self.client_cpu_s / max(1, len(self.records)), 3),
            max_lag_ms=round(self.max_lag_s * 1000.0, 2),
        )


def _error_text(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])[:ERROR_TEXT_CHARS]
    except (ValueError, KeyError, TypeError):
        return body[:ERROR_TEXT_CHARS].decode(errors="replace")


class LoadStillRunning(TimeoutError):
    """`LoadRun.wait` timed out before the load ended: requests in flight are neither answered nor lost yet."""

    def __init__(self, in_flight: int, timeout_s: float, records: list[RequestRecord]) -> None:
        super().__init__(f"load still running after a {timeout_s:g}s wait, {in_flight} request(s) in flight")
        self.in_flight = in_flight
        self.records = records
        """What had finished by then."""


@dataclass
class _Tickets:
    """Hands out request slots until the count, the duration or a stop request ends the run."""

    requests: int | None
    duration_s: float | None
    rate: float | None
    started: float = field(default_factory=time.monotonic)
    issued: int = 0
    stopped: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[int, float] | None:
        """The next request's number and the monotonic time it is due, or None when the run is over."""
        with self.lock:
            if self.stopped.is_set() or (self.requests is not None and self.issued >= self.requests):
                return None
            due = self.started + self.issued / self.rate if self.rate else time.monotonic()
            if self.duration_s is not None and due - self.started >= self.duration_s:
                return None
            self.issued += 1
            return self.issued - 1, due


class LoadRun:
    """A load: `start()` it, `completed()` for progress, `stop()` to end early, `wait()` for the result.

    Fault tests start one, break something while it runs, then wait; `run_load` does start + wait.
    """

    def __init__(
        self,
        url: str,
        uploads: list[Upload],
        *,
        concurrency: int = 8,
        rate: float | None = None,
        requests: int | None = None,
        duration_s: float | None = None,
        timeout_s: float = 30.0,
        headers: Mapping[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if requests is None and duration_s is None:
            raise ValueError("give a number of requests, a duration, or both")
        if concurrency < 1 or (rate is not None and rate <= 0) or (requests is not None and requests < 1):
            raise ValueError("concurrency and requests must be 1 or more, rate more than 0")
        parts = urlsplit(url if "://" in url else f"http://{url}")
        path = parts.path if parts.path not in ("", "/") else "/predict"
        self._path = f"{path}?{parts.query}" if parts.query else path
        self.url = f"{parts.scheme}://{parts.netloc}{self._path}"
        self._scheme, self._host, self._port = parts.scheme, parts.hostname or "127.0.0.1", parts.port
        self._tls = tls
        """For https: whom to trust (None: the system's CAs, with the usual hostname check)."""
        self.uploads, self.concurrency, self.rate = uploads, concurrency, rate
        self.requests, self.duration_s, self.timeout_s = requests, duration_s, timeout_s
        self._headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", **(headers or {})}
        self._tickets = _Tickets(requests, duration_s, rate)
        self._records: list[RequestRecord] = []
        self._lags: list[float] = []
        self._cpu_at_start = 0.0
        self._threads = [
            threading.Thread(target=self._send_loop, name=f"stress-{i}", daemon=True)
            for i in range(concurrency)
        ]

    def start(self) -> LoadRun:
        self._cpu_at_start = _process_cpu_s()
        self._tickets.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def completed(self) -> int:
        return len(self._records)

    def records(self) -> list[RequestRecord]:
        """The records so far (a copy; appends from the sender threads are atomic under the GIL)."""
        return list(self._records)

    def elapsed_s(self) -> float:
        return time.monotonic() - self._tickets.started

    def stop(self) -> None:
        """Send no more requests; those in flight still finish (each within timeout_s)."""
        self._tickets.stopped.set()

    def in_flight(self) -> int:
        """Requests handed out (sent, or waiting for their due time) and not yet finished."""
        with self._tickets.lock:
            return self._tickets.issued - len(self._records)

    def wait(self, timeout_s: float | None = None) -> LoadResult:
        """Every request's record once all have finished; raises LoadStillRunning if some have not by then."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        if any(thread.is_alive() for thread in self._threads):
            assert timeout_s is not None
            raise LoadStillRunning(self.in_flight(), timeout_s, self.records())
        # The count of handed-out requests against records is the truth, not the joins: once, after a Ctrl-C,
        # stress reported one request fewer than the server answered (the cause was not found; a join
        # interrupted by Ctrl-C came back correctly when tried alone).
        settle_by = time.monotonic() + self.timeout_s + 1.0
        while self.in_flight() > 0 and time.monotonic() < settle_by:
            time.sleep(0.005)
        finished = max((r.start_s + r.latency_s for r in self._records), default=0.0)
        return LoadResult(
            url=self.url,
            concurrency=self.concurrency,
            rate=self.rate,
            elapsed_s=finished,
            records=sorted(self._records, key=lambda r: r.start_s),
            client_cpu_s=_process_cpu_s() - self._cpu_at_start,
            max_lag_s=max(self._lags, default=0.0),
        )

    def _connect(self) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout_s, context=self._tls
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)

    def _send_loop(self) -> None:
        connection = self._connect()
        try:
            while (ticket := self._tickets.take()) is not None:
                number, due = ticket
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                elif self.rate:
                    self._lags.append(-wait)
                upload = self.uploads[number % len(self.uploads)]
                self._records.append(self._send(connection, upload, due))
        finally:
            connection.close()

    def _send(self, connection: http.client.HTTPConnection, upload: Upload, due: float) -> RequestRecord:
        start_s = due - self._tickets.started
        if _closed_by_server(connection):
            connection.close()  # the next request opens a fresh connection
        try:
            connection.request("POST", self._path, body=upload.body, headers=self._headers)
            response = connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as exc:
            # Never resent: a request that may have reached the server counts as failed, as a client sees it.
            connection.close()
            return RequestRecord(start_s, time.monotonic() - due, 0, error=f"{type(exc).__name__}: {exc}")
        latency = time.monotonic() - due
        if response.status == 200:
            batch = response.getheader("X-Inferd-Batch-Size")
            shard = response.getheader("X-Inferd-Shard")
            version = response.getheader("X-Inferd-Model-Version")
            return RequestRecord(
                start_s,
                latency,
                200,
                shard,
                int(batch) if batch else None,
                model_version=int(version) if version else None,
            )
        return RequestRecord(start_s, latency, response.status, error=_error_text(body))


def _closed_by_server(connection: http.client.HTTPConnection) -> bool:
    """Whether the server closed this idle kept-alive connection (keep-alive timeout), as urllib3 checks."""
    if connection.sock is None:
        return False
    # Between requests the server sends nothing, so an idle socket is only readable once it is closed.
    readable, _, _ = select.select([connection.sock], [], [], 0)
    return bool(readable)


def _process_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_load(
    url: str,
    uploads: list[Upload],
    *,
    concurrency: int = 8,
    rate: float | None = None,
    requests: int | None = None,
    duration_s: float | None = None,
    timeout_s: float = 30.0,
    headers: Mapping[str, str] | None = None,
    tls: ssl.SSLContext | None = None,
) -> LoadResult:
    """Run a load to its end (`requests` sent or `duration_s` passed) and return every request's record."""
    run = LoadRun(
        url,
        uploads,
        concurrency=concurrency,
        rate=rate,
        requests=requests,
        duration_s=duration_s,
        timeout_s=timeout_s,
        headers=headers,
        tls=tls,
    )
    return run.start().wait()
