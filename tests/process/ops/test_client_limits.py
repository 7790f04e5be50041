"""Per-client limits at the front door: one client address over its request rate or its requests in progress
gets 429 in the API's JSON shape with Retry-After, while other clients, and loopback, are served. Behind a
trusted balancer the client is the one its X-Forwarded-For names."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import requests

from testkit.harness import Appliance

RATE = 5
CONNECTIONS = 2


def limited_appliance(start_appliance: Callable[..., Appliance]) -> Appliance:
    return start_appliance(
        shards=1,
        api={
            "client_requests_per_s": RATE,
            "client_max_connections": CONNECTIONS,
            # The test's "balancer" is loopback: what it forwards is counted per forwarded client.
            "trusted_proxies": ["127.0.0.1"],
        },
    )


def burst(url: str, client: str | None, count: int) -> list[requests.Response]:
    headers = {"X-Forwarded-For": client} if client else {}
    with requests.Session() as session:
        return [session.get(f"{url}/healthz", headers=headers, timeout=10) for _ in range(count)]


def held_request(port: int, client: str) -> socket.socket:
    """A request whose headers are in and whose body never comes: it stays in progress at the front door."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        f"POST /predict HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {client}\r\n"
        "Content-Type: image/png\r\nContent-Length: 1000\r\n\r\n".encode()
    )
    return sock


def test_one_client_over_its_rate_or_connections_gets_429_and_others_are_served(start_appliance):
    appliance = limited_appliance(start_appliance)
    url = appliance.url

    answers = burst(url, "10.9.9.9", 4 * RATE)
    statuses = [a.status_code for a in answers]
    assert statuses[: RATE + 1] == [200] * (RATE + 1), statuses  # the rate's burst, served at once
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) >= RATE, statuses
    assert refused[0].headers["Retry-After"] == "1"
    assert "too many requests from this client" in refused[0].json()["error"]

    # Another client, and loopback itself (the host's tools and probes), are not affected.
    assert {a.status_code for a in burst(url, "10.9.9.10", RATE)} == {200}
    assert {a.status_code for a in burst(url, None, 4 * RATE)} == {200}

    time.sleep(1.5)  # the rate's allowance comes back
    held = [held_request(appliance.port, "10.7.7.7") for _ in range(CONNECTIONS)]
    try:
        time.sleep(0.3)
        over = requests.get(f"{url}/healthz", headers={"X-Forwarded-For": "10.7.7.7"}, timeout=10)
        assert over.status_code == 429, over.text
        beside = requests.get(f"{url}/healthz", headers={"X-Forwarded-For": "10.7.7.8"}, timeout=10)
        assert beside.status_code == 200
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)
    again = requests.get(f"{url}/healthz", headers={"X-Forwarded-For": "10.7.7.7"}, timeout=10)
    assert again.status_code == 200


def test_without_a_trusted_balancer_a_forwarded_address_is_not_believed(start_appliance):
    appliance = start_appliance(shards=1, api={"client_requests_per_s": RATE})
    # From loopback, whatever X-Forwarded-For says: exempt, because nginx counts the connection's address.
    assert {a.status_code for a in burst(appliance.url, "10.9.9.9", 4 * RATE)} == {200}
