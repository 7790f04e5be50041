"""How local clients reach the appliance: the URL's scheme, and a TLS trust pinned to the configured leaf.

The servers are real TLS sockets on 127.0.0.1 (a thread each), presenting certificates that name
`inferd.example`, signed by a CA made for the test (testkit/tls.py).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from daemon.ops.local_client import local_url, pinned_context
from daemon.ops.run_dir import ApplianceRecord, read_record, write_record
from daemon.settings import ApiSettings, Settings
from testkit.tls import Certificates, make_certificates


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@contextmanager
def tls_server(chain: Path, key: Path) -> Iterator[int]:
    """A TLS listener on loopback presenting `chain`; yields its port. Each connection gets one handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(chain, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        try:
            raw, _ = listener.accept()
        except OSError:
            return
        # A client that refuses us ends the handshake with an error: what some tests want.
        with raw, suppress(OSError):
            context.wrap_socket(raw, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join(5)


def handshake(port: int, context: ssl.SSLContext) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        context.wrap_socket(raw, server_hostname="127.0.0.1").close()


def test_the_url_says_https_when_the_front_door_speaks_tls(tmp_path):
    plain = ApiSettings(host="0.0.0.0", port=8443)
    assert local_url(plain) == "http://127.0.0.1:8443"
    tls = dataclasses.replace(
        plain, host="::", tls_cert_file=tmp_path / "c.pem", tls_key_file=tmp_path / "k.pem"
    )
    assert local_url(tls) == "https://[::1]:8443"


def test_the_configured_leaf_is_trusted_by_loopback_address_though_it_names_the_host(certificates):
    with tls_server(certificates.chain, certificates.key) as port:
        handshake(port, pinned_context(certificates.chain))


def test_the_system_trust_with_its_name_check_refuses_the_same_server(certificates):
    # What a default client (urllib, requests, tools/stress before this change) does: it cannot connect.
    with (
        tls_server(certificates.chain, certificates.key) as port,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        handshake(port, ssl.create_default_context())


def test_another_certificate_from_the_same_ca_is_refused(certificates):
    # Without a name check, trusting the CA in the chain file would let any certificate it issued through.
    with (
        tls_server(certificates.other_chain, certificates.other_key) as port,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        handshake(port, pinned_context(certificates.chain))


def test_a_file_without_a_certificate_is_named(tmp_path):
    empty = tmp_path / "cert.pem"
    empty.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        pinned_context(empty)


def test_the_record_carries_the_certificate_to_the_tools(tmp_path, certificates):
    api = ApiSettings(port=9443, tls_cert_file=certificates.chain, tls_key_file=certificates.key)
    started = Settings(api=api, paths=dataclasses.replace(Settings().paths, run_dir=tmp_path))
    write_record(tmp_path, ApplianceRecord.of(started, os.getpid()))
    record = read_record(tmp_path)
    assert record is not None
    seen = record.applied_to(Settings())  # a tool's settings file that says nothing of TLS
    assert local_url(seen.api) == "https://127.0.0.1:9443"
    assert seen.api.tls_cert_file == certificates.chain
