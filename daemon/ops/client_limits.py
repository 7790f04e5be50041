"""Per-client limits at the front door, as lines of the rendered nginx.conf (daemon/ops/front_door.py).

One client address may have at most `api.client_max_connections` requests in progress and send
`api.client_requests_per_s` requests a second (with a second's burst); beyond either nginx answers 429 with
Retry-After. The client is the connection's address, or, from a balancer named in `api.trusted_proxies`, the
address its X-Forwarded-For gives; loopback is never counted.
"""

from __future__ import annotations

from daemon.settings import Settings

LIMIT_EXEMPT = ("127.0.0.0/8", "::1")
"""Client addresses the per-client limits never count: the host's own tools, probes and benchmarks (a local
user can reach the host's resources in many other ways)."""
LIMIT_ZONE = "10m"
"""Shared memory of each per-client table: about 80,000 client addresses."""


def client_limit_lines(settings: Settings) -> tuple[list[str], list[str]]:
    """(http-level, server-level) lines of the per-client limits: the client is the connection's address,
    or, from a trusted balancer, the one its X-Forwarded-For names; loopback is never counted."""
    api = settings.api
    http = [
        "    # Per-client limits (api.client_max_connections, api.client_requests_per_s): an empty key is not",
        "    # counted, so loopback (the host's own tools and probes) is exempt.",
        "    geo $inferd_limited {",
        "        default 1;",
        *(f"        {network} 0;" for network in LIMIT_EXEMPT),
        "    }",
        '    map $inferd_limited $inferd_client { 0 ""; default $binary_remote_addr; }',
    ]
    server = [f"        set_real_ip_from {proxy};" for proxy in api.trusted_proxies]
    if api.trusted_proxies:
        server += ["        real_ip_header X-Forwarded-For;", "        real_ip_recursive on;"]
    if api.client_max_connections:
        http.append(f"    limit_conn_zone $inferd_client zone=inferd_conn:{LIMIT_ZONE};")
        server += [
            f"        limit_conn inferd_conn {api.client_max_connections};",
            "        limit_conn_status 429;",
        ]
    if api.client_requests_per_s:
        rate = api.client_requests_per_s
        http.append(f"    limit_req_zone $inferd_client zone=inferd_req:{LIMIT_ZONE} rate={rate}r/s;")
        # A second's worth of burst, served at once (nodelay): a client that pauses and then sends a batch
        # is not slowed, one that keeps above the rate is refused.
        server += [
            f"        limit_req zone=inferd_req burst={rate} nodelay;",
            "        limit_req_status 429;",
        ]
    return http, server
