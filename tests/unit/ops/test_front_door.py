"""The front door's pure parts: the arrival deadline, the rendered nginx.conf, the API instances' shares."""

from __future__ import annotations

import dataclasses
import re
import subprocess
from pathlib import Path

import pytest

from daemon.errors import ConfigError
from daemon.ops.front_door import (
    ARRIVED_HEADER,
    BODY_DIR,
    TLS12_CIPHERS,
    api_socket,
    check_tls_files,
    deadline_from_arrival,
    instance_workers,
    render_nginx_conf,
    token_pattern,
    write_nginx_conf,
)
from daemon.queue.wire import Heartbeat
from daemon.settings import ApiSettings, PathSettings, Secrets, Settings


def test_the_deadline_counts_from_the_arrival_stamp():
    # Arrived 2.5 s ago by the wall clock: 7.5 s of a 10 s budget are left on the monotonic clock.
    assert deadline_from_arrival("1000.000", 10.0, wall_now=1002.5, mono_now=50.0) == pytest.approx(57.5)


@pytest.mark.parametrize("stamp", [None, "", "soon", "nan", "inf"])
def test_no_usable_stamp_counts_from_now(stamp):
    assert deadline_from_arrival(stamp, 10.0, wall_now=1000.0, mono_now=50.0) == 60.0


def test_a_stamp_is_clamped_to_the_budget():
    # From the future (a wall clock stepped back): no more than the whole budget.
    assert deadline_from_arrival("2000", 10.0, wall_now=1000.0, mono_now=50.0) == 60.0
    # From long ago: the deadline is now, never earlier.
    assert deadline_from_arrival("0", 10.0, wall_now=1000.0, mono_now=50.0) == 50.0


def test_api_workers_are_shared_between_the_two_instances():
    assert [instance_workers(total, 0) + instance_workers(total, 1) for total in (1, 2, 3, 4)] == [2, 2, 3, 4]
    assert (instance_workers(3, 0), instance_workers(3, 1)) == (2, 1)


def settings(tmp_path: Path, **api: object) -> Settings:
    return Settings(api=ApiSettings(**api), paths=PathSettings(run_dir=tmp_path, log_dir=tmp_path))  # type: ignore[arg-type]


def test_nginx_conf_carries_the_limits_and_overwrites_the_arrival_stamp(tmp_path):
    conf = render_nginx_conf(settings(tmp_path, max_body_bytes=123_456, client_timeout_s=4.0), 20_000)
    assert "client_max_body_size 123456;" in conf
    assert "client_header_timeout 4s;" in conf and "client_body_timeout 4s;" in conf
    assert f"proxy_set_header {ARRIVED_HEADER} $msec;" in conf
    assert "proxy_request_buffering on;" in conf
    assert "daemon off;" in conf and "error_log stderr" in conf
    for instance in (0, 1):
        assert f"server 'unix:{api_socket(tmp_path, instance)}'" in conf
    assert "listen 127.0.0.1:8000 backlog" in conf and " ssl" not in conf
    # Only /predict is retried on the other instance despite being a POST.
    assert conf.count("non_idempotent") == 1
    assert re.search(r"location = /predict \{[^}]*non_idempotent", conf)
    # nginx's own errors are the API's JSON shape.
    assert (
        """return 413 '{"success": false, "error": "the request body is larger than the 123456-byte limit"}';"""
        in conf
    )


def test_nginx_conf_holds_no_more_connections_than_descriptors(tmp_path):
    conf = render_nginx_conf(settings(tmp_path, max_connections=16384), 4096)
    assert "worker_connections 3072;" in conf and "worker_rlimit_nofile 4096;" in conf


def test_tls_listens_with_the_given_files(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    conf = render_nginx_conf(
        settings(tmp_path, host="::1", port=8443, tls_cert_file=cert, tls_key_file=key), 20_000
    )
    assert "listen [::1]:8443 ssl backlog" in conf
    assert f"ssl_certificate '{cert}';" in conf and f"ssl_certificate_key '{key}';" in conf


def test_unreadable_tls_files_name_their_key(tmp_path):
    cert = tmp_path / "c.pem"
    cert.write_text("x")
    missing = settings(tmp_path, tls_cert_file=cert, tls_key_file=tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match=r"api\.tls_key_file = '.*nope\.pem' cannot be read"):
        check_tls_files(missing)
    check_tls_files(dataclasses.replace(missing, api=dataclasses.replace(missing.api, tls_key_file=cert)))


def test_without_a_token_there_is_no_gate_and_bodies_spill_in_their_own_folder(tmp_path):
    conf = render_nginx_conf(settings(tmp_path), 20_000)
    assert "$inferd_refused" not in conf
    assert f"client_body_temp_path '{tmp_path / BODY_DIR}';" in conf


def test_with_a_token_every_proxying_location_refuses_a_body_without_it(tmp_path):
    token = "to.k+en/='x\\"
    authed = dataclasses.replace(settings(tmp_path), secrets=Secrets(auth_token=token))
    conf = render_nginx_conf(authed, 20_000)
    # One gate per location that proxies, none in the error pages (which would then refuse themselves).
    assert conf.count("if ($inferd_refused)") == conf.count("proxy_pass http://inferd_api;") == 3
    assert '"0:GET:" 0;' in conf and '"0:HEAD:" 0;' in conf and '"~^1:" 0;' in conf
    assert "add_header WWW-Authenticate Bearer always;" in conf
    written = write_nginx_conf(authed, 20_000)
    assert oct(written.stat().st_mode & 0o777) == "0o600", "the config holds the token"


@pytest.mark.parametrize(
    ("header", "accepted"),
    [
        ("Bearer to.k+en/='x\\", True),
        ("bEaReR \t to.k+en/='x\\  ", True),
        ("Bearer TO.K+EN/='X\\", False),  # the token is case-sensitive, as the API's check
        ("Bearer to.k+en/='x\\y", False),
        ("Bearer toXk+en/='x\\", False),  # a dot is a dot, not any character
        ("Basic to.k+en/='x\\", False),
    ],
)
def test_the_token_pattern_accepts_what_the_api_accepts(header, accepted):
    # nginx's regex is PCRE; for this pattern's features Python's re reads it the same.
    pattern = token_pattern("to.k+en/='x\\").removeprefix("~")
    assert bool(re.match(pattern, header.strip())) is accepted


def test_a_heartbeat_carries_the_batch_time_when_known():
    assert Heartbeat.decode(Heartbeat(7, batch_s=0.0421).encode()) == Heartbeat(7, batch_s=0.0421)
    assert Heartbeat.decode(Heartbeat(7).encode()) == Heartbeat(7)
    assert Heartbeat.decode('{"pid": 7}') == Heartbeat(7, batch_s=None)  # from a worker of an older release


def test_tls_1_2_offers_only_forward_secret_aead_ciphers(tmp_path):
    conf = render_nginx_conf(
        settings(tmp_path, tls_cert_file=tmp_path / "c.pem", tls_key_file=tmp_path / "k.pem"), 20_000
    )
    assert f"ssl_ciphers {TLS12_CIPHERS};" in conf
    # What the list means to the OpenSSL nginx links: every suite AEAD with an ephemeral key exchange.
    listed = subprocess.run(
        ["openssl", "ciphers", "-v", TLS12_CIPHERS], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    tls12 = [line.split() for line in listed if " TLSv1.2 " in line]
    assert len(tls12) == 6
    assert all("Mac=AEAD" in fields and "Kx=ECDH" in fields for fields in tls12), listed


def test_per_client_limits_and_trusted_balancers(tmp_path):
    conf = render_nginx_conf(settings(tmp_path), 20_000)
    assert "limit_conn inferd_conn 256;" in conf and "limit_req zone=inferd_req burst=1000 nodelay;" in conf
    assert "limit_conn_status 429;" in conf and "limit_req_status 429;" in conf
    assert "127.0.0.0/8 0;" in conf  # the host's own tools are never counted
    assert "set_real_ip_from" not in conf  # nobody's X-Forwarded-For is believed by default
    assert re.search(r"location = /_inferd/error/429 \{[^}]*Retry-After 1", conf)
    balanced = render_nginx_conf(
        settings(tmp_path, client_max_connections=0, client_requests_per_s=0, trusted_proxies=("10.0.0.5",)),
        20_000,
    )
    assert "limit_conn " not in balanced and "limit_req " not in balanced
    assert "set_real_ip_from 10.0.0.5;" in balanced and "real_ip_header X-Forwarded-For;" in balanced
