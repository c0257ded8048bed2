"""A throwaway certificate authority and certificates it signs, written as PEM files: a server
certificate for 127.0.0.1, and for mutual TLS a client certificate too; and a CA that signed none of
them, to see a peer refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class ServerCertificate:
    ca_file: Path  # what a client trusts (and, for mutual TLS, what the server trusts)
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class MutualTls:
    server: ServerCertificate
    client_cert_file: Path
    client_key_file: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=2))


def _authority(path: Path, cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate written to `path`, and its key (kept in memory only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_pem(ca))
    return ca, key


def _issue(
    folder: Path, stem: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, server: bool, cn: str = ""
) -> tuple[Path, Path]:
    """A certificate for a server (127.0.0.1 and localhost) or a client, signed by `ca`: written as
    `<stem>.crt` and `<stem>.key` in `folder`; its common name `cn`, localhost when empty."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _validity(x509.CertificateBuilder())
        .subject_name(_name(cn or "localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
    cert_file, key_file = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_file.write_bytes(_pem(builder.sign(ca_key, hashes.SHA256())))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_file.chmod(0o600)
    return cert_file, key_file


def server_certificate(folder: Path) -> ServerCertificate:
    ca, ca_key = _authority(folder / "ca.crt", "imx test CA")
    return ServerCertificate(folder / "ca.crt", *_issue(folder, "server", ca, ca_key, server=True))


def mutual_tls(folder: Path, client_cn: str = "imx test client") -> MutualTls:
    """A server and a client certificate (common name `client_cn`, which a server may check) signed by
    one CA, which each side trusts for the other."""
    ca, ca_key = _authority(folder / "ca.crt", "imx test CA")
    server = ServerCertificate(folder / "ca.crt", *_issue(folder, "server", ca, ca_key, server=True))
    return MutualTls(server, *_issue(folder, "client", ca, ca_key, server=False, cn=client_cn))


def other_ca(path: Path) -> Path:
    """A CA certificate at `path` that signed none of the certificates here."""
    _authority(path, "someone else's CA")
    return path
