"""`stress`: bounded load against /predict with real images, then throughput, latency, statuses and shards.

Closed loop (`-c N`: N clients, each sends its next request when the last is answered, as wrk and hey do)
or open loop (`--rate R`: requests start on schedule whatever the latency, like the old design's "one
request every 0.05 s"). It always stops by itself: after `-n` requests, after `-d` seconds, whichever first.

Without `--url` it loads the appliance on this host that `--config` names, over https when its front door
speaks TLS, trusting that appliance's own certificate (daemon/ops/local_client.py). With `--url https://...`
it trusts the system's CAs, or the one certificate in `--cacert FILE`.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import threading
from dataclasses import asdict
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from daemon.cli.common import ToolArgumentParser, settings_or_exit
from daemon.errors import EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_USAGE
from daemon.ops.local_client import client_tls, local_url, pinned_context
from tools.loadgen import LoadResult, LoadRun, LoadSummary, load_uploads

DEFAULT_REQUESTS = 200
"""Requests sent when neither -n nor -d is given."""
DURATION_CAP_S = 600.0
"""Without -d, a run still ends after this long, whatever -n says."""
RATE_MODE_MAX_IN_FLIGHT = 64
"""Default -c in open loop: how many requests may be outstanding at once before new ones start late."""
PREFLIGHT_TIMEOUT_S = 5.0
"""How long the one connection attempt before the load may take."""
BAR_WIDTH = 30
TTY_REFRESH_S = 0.2
LOG_REFRESH_S = 5.0
"""Progress line interval when stderr is not a terminal (CI logs, pipes)."""


class Progress:
    """A bar redrawn on a terminal's stderr, or a plain line every few seconds when stderr is a file."""

    def __init__(self, run: LoadRun, stream: TextIO) -> None:
        self._run, self._stream = run, stream
        self._tty = stream.isatty()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="progress", daemon=True)

    def __enter__(self) -> Progress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        if self._tty:
            self._stream.write("\r\x1b[K")
            self._stream.flush()

    def _loop(self) -> None:
        while not self._done.wait(TTY_REFRESH_S if self._tty else LOG_REFRESH_S):
            self._stream.write(("\r" + self.line() + "\x1b[K") if self._tty else self.line() + "\n")
            self._stream.flush()

    def line(self) -> str:
        run = self._run
        records, elapsed = run.records(), run.elapsed_s()
        fractions = []
        if run.requests is not None:
            fractions.append(len(records) / run.requests)
        if run.duration_s is not None:
            fractions.append(elapsed / run.duration_s)
        fraction = min(1.0, max(fractions))
        filled = round(fraction * BAR_WIDTH)
        failed = sum(1 for r in records if r.status != 200)
        return (
            f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%}  {len(records)} done  "
            f"{elapsed:5.1f}s  {len(records) / max(elapsed, 1e-9):6.1f} req/s  {failed} not 200"
        )


def report(summary: LoadSummary, images: int) -> str:
    mode = f"{summary.concurrency} concurrent"
    if summary.rate is not None:
        mode = f"{summary.rate:g} req/s open loop, at most {summary.concurrency} in flight"
    latency = "   ".join(f"{name} {value:.1f} ms" for name, value in summary.latency_ms.items())
    statuses = "   ".join(f"{status} x {count}" for status, count in summary.status_counts.items())
    ok = max(1, summary.ok)
    shards = "   ".join(f"{shard} {count} ({count / ok:.0%})" for shard, count in summary.shards.items())
    batch = "-" if summary.mean_batch_size is None else f"{summary.mean_batch_size:.2f}"
    versions = "   ".join(f"version {v} x {count}" for v, count in summary.model_versions.items())
    lines = [
        f"{summary.requests} requests to {summary.url}, {mode}, {images} image(s)",
        f"  elapsed      {summary.elapsed_s:.2f} s",
        f"  throughput   {summary.throughput_rps:.1f} req/s answered, {summary.ok_rps:.1f} req/s with 200",
        f"  latency      {latency}",
        f"  status       {statuses}",
        f"  shards       {shards or '-'}",
        f"  model        {versions or '-'}",
        f"  mean batch   {batch} images per worker batch (X-Inferd-Batch-Size, as seen by each request)",
        f"  client CPU   {summary.client_cpu_ms_per_request:.2f} ms per request",
    ]
    if summary.rate is not None:
        lines.append(
            f"  max lag      {summary.max_lag_ms:.1f} ms (how late a request started after it was due)"
        )
    if summary.errors:
        lines.append("errors (most common first):")
        lines += [f"  {count:5d} x {error}" for error, count in summary.errors.items()]
    return "\n".join(lines)


def plot(result: LoadResult, path: Path) -> None:
    """Latency over time (one dot per request, failures in red) and a latency histogram, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on an appliance
    import matplotlib.pyplot as plt

    summary = result.summary()
    ok = [r for r in result.records if r.status == 200]
    failed = [r for r in result.records if r.status != 200]
    figure, (over_time, histogram) = plt.subplots(1, 2, figsize=(12, 4.5))
    over_time.scatter([r.start_s for r in ok], [r.latency_s * 1000 for r in ok], s=4, label="200")
    if failed:
        over_time.scatter(
            [r.start_s for r in failed], [r.latency_s * 1000 for r in failed], s=6, c="red", label="not 200"
        )
    over_time.set(xlabel="request start (s)", ylabel="latency (ms)", title="latency over time")
    over_time.legend(loc="upper right")
    histogram.hist([r.latency_s * 1000 for r in result.records if r.status], bins=50)
    for name in ("p50", "p99"):
        histogram.axvline(summary.latency_ms[name], color="black", linestyle="--", linewidth=1)
        histogram.annotate(name, (summary.latency_ms[name], histogram.get_ylim()[1] * 0.95))
    histogram.set(xlabel="latency (ms)", ylabel="requests", title="latency histogram")
    figure.suptitle(f"{summary.requests} requests, {summary.throughput_rps:.1f} req/s, {summary.url}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def unreachable(url: str, tls: ssl.SSLContext | None) -> str | None:
    """Why a request to `url` cannot succeed (nothing listens, or its certificate is not trusted), or None
    when a connection opens (with its TLS handshake, for https).

    Checked once before the load: against a closed port every request fails in microseconds, and a run
    would send a hundred thousand of them to say one thing (wrk and hey stop at once too).
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PREFLIGHT_TIMEOUT_S) as sock:
            if parts.scheme == "https":
                context = tls or ssl.create_default_context()
                context.wrap_socket(sock, server_hostname=host).close()
    except ssl.SSLCertVerificationError as exc:
        return (
            f"{url} presents a certificate this client does not trust ({exc.verify_message}): leave out --url "
            "to load the appliance on this host (its certificate is trusted from --config), or pass "
            "--cacert with the appliance's api.tls_cert_file"
        )
    except ssl.SSLError as exc:
        return f"the TLS handshake with {url} failed: {exc.reason or exc}"
    except OSError as exc:
        return f"nothing answers at {url}: {exc.strerror or exc}"
    return None


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not 'Name: value'")
    return name.strip(), value.strip()


def build_parser() -> ToolArgumentParser:
    parser = ToolArgumentParser(
        "stress",
        "Bounded load against inferd's POST /predict with real images (multipart field 'image'), then "
        "throughput, p50/p90/p99/max latency, status codes, which shard answered (X-Inferd-Shard) and the "
        "mean worker batch size (X-Inferd-Batch-Size). Stops after -n requests or -d seconds, whichever "
        f"comes first (without -d, after {DURATION_CAP_S:g}s at most; with neither, -n {DEFAULT_REQUESTS}).",
        exit_codes=(EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CONFIG),
    )
    parser.add_argument("images", type=Path, help="an image file, or a folder of them (sent in turn)")
    parser.add_argument(
        "--url",
        help="the appliance (http[s]://host:port) or its /predict URL (default: the appliance --config names, "
        "over https with its own certificate trusted when it speaks TLS)",
    )
    parser.add_argument(
        "--cacert",
        type=Path,
        metavar="FILE",
        help="with an https --url: trust the (first) certificate in FILE, e.g. the appliance's "
        "api.tls_cert_file, whatever name the URL uses, instead of the system's CAs",
    )
    parser.add_argument("--rate", type=float, metavar="R", help="open loop: start R requests per second")
    parser.add_argument(
        "-c",
        "--concurrency",
        type=int,
        metavar="N",
        help=f"closed loop: N clients (default 8); with --rate: most in flight (default {RATE_MODE_MAX_IN_FLIGHT})",
    )
    parser.add_argument("-n", "--requests", type=int, metavar="N", help="stop after N requests")
    parser.add_argument("-d", "--duration", type=float, metavar="SECONDS", help="stop after SECONDS")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="SECONDS", help="per request (default 30)"
    )
    parser.add_argument(
        "-H",
        "--header",
        type=parse_header,
        action="append",
        default=[],
        help="extra header, e.g. 'Authorization: Bearer ...'",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="draw latency over time and a histogram"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("concurrency", "requests"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be 1 or more")
    if any(value is not None and value <= 0 for value in (args.rate, args.duration, args.timeout)):
        parser.error("--rate, --duration and --timeout must be more than 0")
    try:
        uploads = load_uploads(args.images)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if args.cacert is not None and args.url is None:
        parser.error("--cacert goes with --url: without it, the appliance's own certificate is trusted")
    if args.url is None:
        api = settings_or_exit(parser.prog, args.config).api
        url, tls = f"{local_url(api)}/predict", client_tls(api)
    else:
        url = args.url
        try:
            tls = None if args.cacert is None else pinned_context(args.cacert)
        except (OSError, ValueError) as exc:
            parser.error(f"--cacert {args.cacert}: {exc}")
    requests = args.requests if args.requests or args.duration else DEFAULT_REQUESTS
    run = LoadRun(
        url,
        uploads,
        concurrency=args.concurrency or (RATE_MODE_MAX_IN_FLIGHT if args.rate else 8),
        rate=args.rate,
        requests=requests,
        duration_s=args.duration or DURATION_CAP_S,
        timeout_s=args.timeout,
        headers=dict(args.header),
        tls=tls,
    )
    refused = unreachable(run.url, tls)
    if refused is not None:
        print(f"stress: {refused}", file=sys.stderr)
        return EXIT_FAILED
    with Progress(run, sys.stderr):
        run.start()
        try:
            result = run.wait()
        except KeyboardInterrupt:
            # First Ctrl-C: send nothing more, let requests in flight finish, report what was measured.
            run.stop()
            result = run.wait()
    summary = result.summary()
    print(json.dumps(asdict(summary), indent=2) if args.json else report(summary, len(uploads)))
    if args.plot is not None:
        try:
            plot(result, args.plot)
        except ImportError:
            print("stress: --plot needs matplotlib (pip install 'inferd[tools]')", file=sys.stderr)
            return EXIT_FAILED
        print(f"plot written to {args.plot}", file=sys.stderr)
    return EXIT_OK if summary.ok == summary.requests and summary.requests > 0 else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
