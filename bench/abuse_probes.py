"""`python -m bench.abuse_probes`: slow, silent and hostile clients and faults against the front door of a
real appliance on the tiny model (the figures behind the README's "Front door" section).

Each probe prints one line of figures: latency of a normal /predict and of /healthz while slow and silent
sockets are held open, while 10,000 idle keep-alive connections are held, what `requests` sees on an
oversized upload, `Expect: 100-continue`, a short body and a chunked upload, an overload past the request
deadline (how many answers were computed for callers already gone), and a SIGKILL of the API's gunicorn
master under 16 clients. Slow machines give slow figures: read them against the targets in the README.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests

from daemon.errors import UsageArgumentParser
from testkit.config import short_folder, write_settings
from testkit.harness import REPO, Appliance, free_port
from testkit.images import encode_image
from testkit.slow_clients import Attack, SlowClients
from tools.loadgen import LoadRun, Upload, percentile

TINY_INPUT = 32
IMAGE = encode_image(np.full((64, 64, 3), 120, dtype=np.uint8))


def timed(call: Callable[[], requests.Response]) -> tuple[float, str]:
    started = time.monotonic()
    try:
        status = str(call().status_code)
    except requests.RequestException as exc:
        status = type(exc).__name__
    return time.monotonic() - started, status


def predict(url: str, timeout_s: float = 90) -> requests.Response:
    return requests.post(f"{url}/predict", files={"image": ("x.png", IMAGE, "image/png")}, timeout=timeout_s)


def normal_and_probe(url: str, rounds: int = 5) -> str:
    predicts = [timed(lambda: predict(url)) for _ in range(rounds)]
    healths = [timed(lambda: requests.get(f"{url}/healthz", timeout=30)) for _ in range(rounds)]
    return (
        f"predict max {max(t for t, _ in predicts):.3f}s {Counter(s for _, s in predicts)}; "
        f"healthz max {max(t for t, _ in healths) * 1000:.0f}ms {Counter(s for _, s in healths)}"
    )


def probe_slow_clients(appliance: Appliance) -> None:
    attack = Attack(slow_headers=60, slow_bodies=60, silent=300)
    with SlowClients(appliance.port, attack, duration_s=90) as clients:
        time.sleep(3)
        figures = normal_and_probe(appliance.url)
        print(f"[slow 60/60/300] {figures}; sockets open {clients.open_count()}, reopened {clients.reopened}")


def probe_idle(appliance: Appliance, count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with SlowClients(appliance.port, Attack(idle_keepalive=count), duration_s=120) as clients:
        figures = normal_and_probe(appliance.url)
        print(
            f"[idle {count}] answered {clients.idle_answered}, failed connects {clients.failed_connects}; "
            f"{figures}; still open {clients.open_count()}"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def raw_exchange(port: int, head: bytes, body: bytes = b"", wait_s: float = 30) -> tuple[float, bytes]:
    """Send `head` (and `body`), then read what comes back within `wait_s`: (seconds, bytes)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(head + body)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            data += f"<{type(exc).__name__}>".encode()
    return time.monotonic() - started, data


def first_line(data: bytes) -> bytes:
    return data.split(b"\r\n", 1)[0]


def probe_uploads(appliance: Appliance, max_body: int) -> None:
    try:
        response = requests.post(
            f"{appliance.url}/predict",
            data=b"\0" * (max_body + 1_000_000),
            timeout=60,
            headers={"Content-Type": "image/png"},
        )
        print(f"[413 requests] {response.status_code} {response.text[:100]!r}")
    except requests.RequestException as exc:
        print(f"[413 requests] {type(exc).__name__}: {str(exc)[:100]}")
    head = (
        f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {max_body * 2}\r\n"
        "Expect: 100-continue\r\n\r\n"
    ).encode()
    seconds, data = raw_exchange(appliance.port, head, wait_s=10)
    print(f"[100-continue] {seconds:.2f}s first line {first_line(data)!r}, a 100 sent: {b' 100 ' in data}")
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    seconds, data = raw_exchange(appliance.port, head, b"\x89PNG", wait_s=60)
    print(f"[short body] {seconds:.2f}s -> {first_line(data)!r} body {data[-120:]!r}")
    chunked = requests.post(
        f"{appliance.url}/predict",
        data=iter([IMAGE[:100], IMAGE[100:]]),
        timeout=30,
        headers={"Content-Type": "image/png"},
    )
    print(f"[chunked] {chunked.status_code} {chunked.text[:100]!r}")


def probe_overload(appliance: Appliance, clients: int, duration_s: float, timeout_s: float) -> None:
    run = LoadRun(
        f"{appliance.url}/predict",
        [Upload.of("x.png", IMAGE)],
        concurrency=clients,
        duration_s=duration_s,
        timeout_s=timeout_s * 6,
    )
    result = run.start().wait()
    time.sleep(2)
    leftover = sum(1 for _ in appliance.redis().scan_iter(match="inferd:reply:*", count=1000))
    answered = sorted(r.latency_s for r in result.records if r.status)
    statuses = Counter(r.status for r in result.records)
    p99 = percentile(answered, 99) if answered else float("nan")
    print(
        f"[overload {clients} clients, timeout {timeout_s:g}s] p99 {p99:.2f}s max {answered[-1]:.2f}s, "
        f"statuses {dict(statuses)}, answers computed for no one {leftover}"
    )


def probe_master_kill(appliance: Appliance) -> None:
    run = LoadRun(
        f"{appliance.url}/predict", [Upload.of("x.png", IMAGE)], concurrency=16, duration_s=25, timeout_s=30
    ).start()
    time.sleep(5)
    master = appliance.pid_of("api")
    os.kill(master, signal.SIGKILL)
    result = run.wait(90)
    statuses = Counter(r.status for r in result.records)
    failed = sum(n for status, n in statuses.items() if status != 200)
    slowest = max(r.latency_s for r in result.records)
    print(
        f"[kill -9 gunicorn master, 16 clients] sent {len(result.records)}, failed {failed} {dict(statuses)}, slowest {slowest:.1f}s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = UsageArgumentParser(description=__doc__)
    parser.add_argument("--probes", default="slow,idle,uploads,overload,kill")
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--overload-clients", type=int, default=300)
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=3.0, help="api.request_timeout_s")
    parser.add_argument(
        "--default-model",
        action="store_true",
        help="serve the embedded EfficientNet-Lite0, not the tiny model",
    )
    args = parser.parse_args(argv)
    probes = set(args.probes.split(","))
    folder = Path(tempfile.mkdtemp(prefix="inferd-probe-"))
    # Kept after the run: the appliance's log there is what explains a probe that went wrong.
    print(f"[work folder] {folder} (settings, the tiny model and the appliance's logs; kept)", flush=True)
    subprocess.run([sys.executable, "-m", "tests.tiny_model", str(folder)], cwd=REPO, check=True)
    timeout_s = args.timeout
    port = free_port()
    sections: dict[str, dict[str, Any]] = {
        "api": {"port": port, "request_timeout_s": timeout_s},
        "model": {
            "path": folder / "tiny.keras",
            "labels": folder / "tiny-labels.txt",
            "input_size": TINY_INPUT,
            "preprocessing": "tf",
        },
        "devices": {"gpus": "none", "cpu_workers": 2},
        "paths": {"run_dir": str(short_folder("probe-run-")), "log_dir": str(folder / "log")},
    }
    if args.default_model:
        sections["model"] = {"path": REPO / "var/models/efficientnet-lite0.keras"}
        sections["model"]["labels"] = REPO / "var/models/imagenet-labels.txt"
    config = write_settings(folder, sections)
    appliance = Appliance(folder, config, port, Path(sections["paths"]["run_dir"]), 2)
    appliance.start()
    try:
        if "slow" in probes:
            probe_slow_clients(appliance)
        if "idle" in probes:
            probe_idle(appliance, args.idle)
        if "uploads" in probes:
            probe_uploads(appliance, 20_000_000)
        if "overload" in probes:
            probe_overload(appliance, args.overload_clients, args.overload_seconds, timeout_s)
        if "kill" in probes:
            appliance.wait_ready(60)
            probe_master_kill(appliance)
    finally:
        appliance.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
