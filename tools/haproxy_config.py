"""`haproxy_config`: print an HAProxy configuration that spreads /predict over several inferd appliances.

The choices, and why (docs/scale-out.md says the same to operators):

- `balance leastconn`: each box batches, so what it can take is how many requests it holds at once, and a box
  with more or faster GPUs answers sooner and so holds fewer; the least-connections box is the one with room.
  Round-robin would hand a small box the same share as a big one until its queue overflowed. `--weights`
  (e.g. GPU counts) scales each box's share where boxes differ in size: leastconn compares connections
  divided by weight.
- `maxconn` per server (default 32; at most what a box holds at once, the workers x threads `inferd run`
  logs): requests beyond it wait in HAProxy's queue and go to whichever box frees a slot first, instead of
  waiting unseen in one box's backlog.
- Health checks on /readyz (`option httpchk GET /readyz`, `http-check expect status 200`), fast: a box is
  out after `fall` failed checks `inter` apart. A stopping or drained appliance answers 503 there for
  `api.drain_grace_s` before it stops admitting, which must exceed fall x inter (the defaults: 3 s > 2 x 1 s).
- Retries on another box (`retries 3`, `option redispatch 1`, `retry-on` the failures where the box went
  away or refused: no connection, an empty or broken answer, no answer in time, 502, 503). /predict is
  idempotent (classifying an image twice gives the same answer and changes nothing), so replaying it is
  safe; nothing sets `http-request disable-l7-retry`. Not retried: 500 (a bug the other box has too) and 504
  (the appliance already spent api.request_timeout_s; replaying it under overload only adds load).
- `option http-buffer-request`: HAProxy reads the whole upload before it picks a box, so a slow client does
  not hold a box's thread, and the request can be replayed. A replayed request must fit in one buffer:
  `tune.bufsize` is set from `--max-retried-body` (default 1 MiB); a larger upload is still served, but sent
  once, so a box dying under it fails that request.
- A stats page (`--stats`, default 127.0.0.1:8404): each box's state, checks and queue; `/;csv` for scripts.
- Boxes whose front door speaks only TLS (`api.tls_cert_file`): `--tls-ca FILE` makes HAProxy speak TLS to
  them, requests and health checks alike, and verify each box's certificate against FILE (the CA that issued
  them, or a self-signed certificate itself); without it, HAProxy speaks plain HTTP and a TLS-only box fails
  every check (its front door answers plain HTTP with 400).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from daemon.cli.common import ToolArgumentParser
from daemon.errors import EXIT_OK, EXIT_USAGE

DEFAULT_BIND = "*:8080"
DEFAULT_STATS = "127.0.0.1:8404"
DEFAULT_MAXCONN = 32
"""Per box: api.workers x api.threads of the default settings, the requests an appliance serves at once."""
DEFAULT_MAX_RETRIED_BODY = 1 << 20
BUFFER_HEADROOM = 16 << 10
"""tune.bufsize beyond the largest retried body: request line, headers and HAProxy's rewrite reserve."""
GLOBAL_MAXCONN = 1000
"""Client connections HAProxy holds at most; with 1 MiB buffers that bounds its memory to about 2 GiB."""


@dataclass(frozen=True, slots=True)
class Box:
    host: str
    port: int
    weight: int


@dataclass(frozen=True, slots=True)
class Checks:
    inter_ms: int = 1000
    fall: int = 2
    rise: int = 2


DEFAULT_CHECKS = Checks()


def parse_box(text: str) -> tuple[str, int]:
    """HOST:PORT, or [IPV6]:PORT."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def render(
    boxes: Sequence[Box],
    bind: str,
    stats: str,
    checks: Checks,
    maxconn: int,
    max_retried_body: int,
    server_timeout_s: float,
    tls_ca: Path | None = None,
) -> str:
    tls = "" if tls_ca is None else f" ssl verify required ca-file {tls_ca}"
    servers = "\n".join(
        f"    server box{number} {box.host}:{box.port} weight {box.weight}{tls}"
        for number, box in enumerate(boxes, start=1)
    )
    return f"""\
# HAProxy in front of {len(boxes)} inferd appliance(s), from tools/haproxy_config.py (regenerate, don't edit).
# Each appliance's api.drain_grace_s must exceed fall x inter = {checks.fall * checks.inter_ms / 1000:g}s, so that
# HAProxy has marked a stopping box down before the box stops admitting.
# Each appliance counts its per-client limits (api.client_max_connections, api.client_requests_per_s) by
# address, and every client arrives from this balancer's: set api.trusted_proxies = ["<this host's address>"]
# on each appliance, so that it counts the client `option forwardfor` names instead.
global
    log stdout format raw local0 info
    maxconn {GLOBAL_MAXCONN}
    # A retried request is replayed from one buffer: uploads up to {max_retried_body} bytes can be retried.
    tune.bufsize {max_retried_body + BUFFER_HEADROOM}

defaults
    mode http
    log global
    option httplog
    option http-buffer-request
    option forwardfor
    timeout connect 2s
    timeout client 30s
    timeout http-request 30s
    # Longer than api.request_timeout_s, which answers 504 itself: this only fires for a box that froze.
    timeout server {server_timeout_s:g}s
    timeout queue 10s
    timeout check 2s
    # /predict is idempotent: a request whose box died, refused or went away is replayed on another box.
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response junk-response response-timeout 0rtt-rejected 502 503

frontend inferd
    bind {bind}
    default_backend appliances

backend appliances
    # Each box's in-flight count tracks its capacity (batching boxes answer in proportion to their GPUs).
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server check inter {checks.inter_ms}ms fastinter {max(100, checks.inter_ms // 2)}ms downinter {checks.inter_ms}ms fall {checks.fall} rise {checks.rise} maxconn {maxconn}
{servers}

listen stats
    bind {stats}
    stats enable
    stats uri /
    stats refresh 5s
    stats show-legends
"""


def build_parser() -> ToolArgumentParser:
    parser = ToolArgumentParser(
        "haproxy_config",
        "Print an haproxy.cfg that balances inferd appliances: leastconn, health checks on /readyz, "
        "buffered requests retried on another box when theirs fails, and a stats page.",
        exit_codes=(EXIT_OK, EXIT_USAGE),
    )
    parser.add_argument("boxes", nargs="+", type=parse_box, metavar="BOX:PORT", help="an appliance's API")
    parser.add_argument(
        "--weights", metavar="W1,W2,...", help="one integer per box, e.g. its GPU count (default: all 1)"
    )
    parser.add_argument(
        "--bind", default=DEFAULT_BIND, help=f"where clients connect (default {DEFAULT_BIND})"
    )
    parser.add_argument(
        "--stats", default=DEFAULT_STATS, help=f"stats page address (default {DEFAULT_STATS})"
    )
    parser.add_argument(
        "--inter-ms", type=int, default=DEFAULT_CHECKS.inter_ms, help="health check interval (1000)"
    )
    parser.add_argument(
        "--fall", type=int, default=DEFAULT_CHECKS.fall, help="failed checks before a box is out (2)"
    )
    parser.add_argument(
        "--rise", type=int, default=DEFAULT_CHECKS.rise, help="passed checks before it is back (2)"
    )
    parser.add_argument(
        "--maxconn", type=int, default=DEFAULT_MAXCONN, help=f"requests per box at once ({DEFAULT_MAXCONN})"
    )
    parser.add_argument(
        "--max-retried-body",
        type=int,
        default=DEFAULT_MAX_RETRIED_BODY,
        metavar="BYTES",
        help=f"largest upload that can be replayed on another box ({DEFAULT_MAX_RETRIED_BODY})",
    )
    parser.add_argument(
        "--server-timeout",
        type=float,
        default=15.0,
        metavar="SECONDS",
        help="above api.request_timeout_s (15)",
    )
    parser.add_argument(
        "--tls-ca",
        type=Path,
        metavar="FILE",
        help="the boxes speak TLS (api.tls_cert_file): connect and check over TLS, verifying their "
        "certificates against FILE (their CA, or a self-signed certificate itself)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    weights = [1] * len(args.boxes)
    if args.weights:
        try:
            weights = [int(part) for part in args.weights.split(",")]
        except ValueError:
            parser.error(f"--weights {args.weights!r}: integers separated by commas")
        if len(weights) != len(args.boxes) or not all(1 <= weight <= 256 for weight in weights):
            parser.error(f"--weights needs one integer from 1 to 256 per box ({len(args.boxes)})")
    numbers = (args.inter_ms, args.fall, args.rise, args.maxconn, args.max_retried_body)
    if min(numbers) < 1 or args.server_timeout <= 0:
        parser.error(
            "--inter-ms, --fall, --rise, --maxconn, --max-retried-body and --server-timeout must be positive"
        )
    boxes = [Box(host, port, weight) for (host, port), weight in zip(args.boxes, weights, strict=True)]
    checks = Checks(args.inter_ms, args.fall, args.rise)
    if args.tls_ca is not None and not args.tls_ca.is_file():
        parser.error(f"--tls-ca {args.tls_ca}: no such file")
    tls_ca = None if args.tls_ca is None else args.tls_ca.resolve()
    print(
        render(
            boxes,
            args.bind,
            args.stats,
            checks,
            args.maxconn,
            args.max_retried_body,
            args.server_timeout,
            tls_ca,
        ),
        end="",
    )
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
