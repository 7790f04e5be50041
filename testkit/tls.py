"""Certificates for the tests, made with the openssl command: a private CA and leaves it signs, as a site's
own CA would issue them, named for the host as clients know it (never 127.0.0.1)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

HOST_NAME = "inferd.example"
"""The name the leaf certificates carry: not the loopback address local clients connect to."""
EC_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
LEAF_EXTENSIONS = f"subjectAltName=DNS:{HOST_NAME}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"


@dataclass(frozen=True, slots=True)
class Certificates:
    ca: Path
    chain: Path
    """The leaf, then the CA: what nginx's ssl_certificate (api.tls_cert_file) holds."""
    key: Path
    other_chain: Path
    """Another leaf for the same name from the same CA, and its chain: what an impostor could obtain."""
    other_key: Path


def _openssl(*argv: str) -> None:
    subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)


def _leaf(folder: Path, name: str, ca: Path, ca_key: Path) -> tuple[Path, Path]:
    key, request, leaf, chain = (
        folder / f"{name}{suffix}" for suffix in ("-key.pem", ".csr", ".pem", "-chain.pem")
    )
    extensions = folder / f"{name}.ext"
    extensions.write_text(LEAF_EXTENSIONS)
    _openssl("req", *EC_KEY, "-subj", f"/CN={HOST_NAME}", "-keyout", str(key), "-out", str(request))
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "2", "-extfile", str(extensions), "-out", str(leaf),
    )  # fmt: skip
    chain.write_bytes(leaf.read_bytes() + ca.read_bytes())
    return chain, key


def make_certificates(folder: Path) -> Certificates:
    folder.mkdir(parents=True, exist_ok=True)
    ca, ca_key = folder / "ca.pem", folder / "ca-key.pem"
    _openssl(
        "req", "-x509", *EC_KEY, "-days", "2", "-subj", "/CN=inferd test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        "-keyout", str(ca_key), "-out", str(ca),
    )  # fmt: skip
    chain, key = _leaf(folder, "server", ca, ca_key)
    other_chain, other_key = _leaf(folder, "impostor", ca, ca_key)
    return Certificates(ca, chain, key, other_chain, other_key)
