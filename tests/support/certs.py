"""A throwaway PKI for TLS tests, made with the ``openssl`` command line.

One CA signs: a server certificate for ``localhost`` / ``127.0.0.1`` (subjectAltName), a
server certificate for a host name the tests never connect to, and a client certificate.
EC P-256 keys keep generation fast (well under a second for the whole set).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

WRONG_HOST = "wrong-host.invalid"

# Also the request config for every certificate: nothing is read from the system openssl.cnf.
_CA_CNF = """\
[req]
distinguished_name = dn
x509_extensions = v3_ca
prompt = no
[dn]
CN = iot-bridge test CA
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""

_LEAF_EXT = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyAgreement
extendedKeyUsage = {usage}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid, issuer
{san}
"""


@dataclass(frozen=True)
class Pair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (what clients and the broker trust)
    server: Pair  # for localhost and 127.0.0.1
    wrong_server: Pair  # for WRONG_HOST only
    client: Pair  # signed by the same CA, for require_certificate


def _openssl(*args: str | Path, cwd: Path) -> None:
    out = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {out.stderr.decode(errors='replace')}")


def _key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", path, cwd=path.parent)
    path.chmod(0o600)


def _leaf(directory: Path, serial: int, name: str, cn: str, usage: str, san: str) -> Pair:
    ca, ca_key, cnf = directory / "ca.crt", directory / "ca.key", directory / "ca.cnf"
    key, csr, cert, ext = (directory / f"{name}{s}" for s in (".key", ".csr", ".crt", ".ext"))
    _key(key)
    _openssl("req", "-new", "-config", cnf, "-key", key, "-subj", f"/CN={cn}", "-out", csr,
             cwd=directory)
    ext.write_text(_LEAF_EXT.format(usage=usage, san=f"subjectAltName = {san}" if san else ""))
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-set_serial",
             str(serial), "-days", "2", "-sha256",
             "-extfile", ext, "-out", cert, cwd=directory)
    return Pair(cert, key)


def make_pki(directory: Path) -> Pki:
    """Create the CA and the three certificates in ``directory`` (created if needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key, cnf = directory / "ca.crt", directory / "ca.key", directory / "ca.cnf"
    _key(ca_key)
    cnf.write_text(_CA_CNF)
    _openssl("req", "-new", "-x509", "-config", cnf, "-key", ca_key, "-days", "2", "-sha256",
             "-out", ca, cwd=directory)
    return Pki(
        ca=ca,
        server=_leaf(directory, 2, "server", "localhost", "serverAuth", "DNS:localhost, IP:127.0.0.1"),
        wrong_server=_leaf(directory, 3, "wrong", WRONG_HOST, "serverAuth", f"DNS:{WRONG_HOST}"),
        client=_leaf(directory, 4, "client", "iot-bridge", "clientAuth", ""),
    )


def broker_tls_listener(port: int, pki: Pki, server: Pair | None = None, *,
                        require_certificate: bool = False) -> str:
    """mosquitto.conf lines for an extra TLS listener on 127.0.0.1:``port``."""
    server = server or pki.server
    lines = [
        f"listener {port} 127.0.0.1",
        f"cafile {pki.ca}",
        f"certfile {server.cert}",
        f"keyfile {server.key}",
        f"require_certificate {'true' if require_certificate else 'false'}",
    ]
    return "\n".join(lines) + "\n"


def client_tls_options(pki: Pki, client: Pair | None = None) -> list[str]:
    """``mosquitto_rr/pub/sub`` options to reach a TLS listener (host name ``localhost``)."""
    options = ["-h", "localhost", "--cafile", str(pki.ca)]
    if client is not None:
        options += ["--cert", str(client.cert), "--key", str(client.key)]
    return options
