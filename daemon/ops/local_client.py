"""How a program on the appliance's own host reaches its front door: the URL, and with TLS the certificate
to trust.

The notifier (daemon/ops/notify.py), `tools/stress`, and the harness the tests and `make bench` start
appliances with (testkit/harness.py) all call the API from the appliance's host. With `api.tls_cert_file`
and `api.tls_key_file` set, the front door speaks only TLS on `api.port`, so they speak https there too
(`local_url`), trusting the configured certificate (`client_tls`). They learn both from the settings, as
the running appliance applied them: `<run_dir>/appliance.json` records the TLS files with the address
(daemon/ops/run_dir.py), so a tool given only `--config` needs no flag for it.

Why https on loopback rather than a second, plain-HTTP listener on loopback for probes and tools:
- The probes test what clients use. READY=1 and the watchdog say that the TLS listener, with the
  certificate nginx really loaded, answers; a plain side door could answer while the real one is broken.
- No second door. A plain listener on 127.0.0.1 would serve every local user without TLS, and it would be a
  second address to keep apart from another appliance's, to document and to firewall.
- `tools/stress` measures what a client sees, handshakes and encryption included.

Why the certificate is pinned and its name not checked: the URL names a loopback address (or the host's own
bind address), and the certificate names the host as clients know it, so a hostname check would fail for
nearly every real certificate. It would add nothing either: only the certificate nginx presents is trusted
(the first in `api.tls_cert_file`, the leaf; OpenSSL's partial-chain flag lets it stand as its own trust
anchor), and only a server holding its private key can complete a handshake with it. Neither the system's
CAs nor the intermediates that may follow the leaf in the file are trusted: without a name check, a trusted
CA would vouch for every certificate it ever issued, to anyone.
"""

from __future__ import annotations

import re
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from daemon.settings import ApiSettings

PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


def local_url(api: ApiSettings) -> str:
    """Where a client on this machine reaches the API: https when the front door speaks TLS, and a wildcard
    bind reached on loopback."""
    scheme = "https" if api.tls_cert_file is not None else "http"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(api.host, api.host)
    return f"{scheme}://[{host}]:{api.port}" if ":" in host else f"{scheme}://{host}:{api.port}"


def pinned_context(cert_file: Path) -> ssl.SSLContext:
    """A client context that trusts the first certificate in `cert_file` and nothing else, whatever name the
    server is reached by; OSError or ValueError when the file holds no certificate."""
    found = PEM_CERTIFICATE.search(cert_file.read_bytes())
    if found is None:
        raise ValueError(f"{cert_file} holds no PEM certificate")
    context = ssl.create_default_context(cadata=found.group(0).decode("ascii"))
    context.check_hostname = False  # before verify_mode stays CERT_REQUIRED: see the module's docstring
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def client_tls(api: ApiSettings) -> ssl.SSLContext | None:
    """The context a local client reaches this API with: None for plain HTTP."""
    return None if api.tls_cert_file is None else pinned_context(api.tls_cert_file)


def fetch(url: str, tls: ssl.SSLContext | None, timeout_s: float) -> tuple[int, bytes]:
    """GET `url`: the status and body of whatever answer came, error statuses included; OSError (refused,
    a failed handshake, a timeout) when none did."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=tls) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as answer:
        with answer:
            return answer.code, answer.read()
