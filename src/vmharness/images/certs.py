"""The test CA (made once, kept beside the cache) and host certificates for the guest's name.

The CA key never enters an image: only the CA certificate (trusted inside the guest) and a host
certificate + key signed by it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALID_DAYS = 3650
HOST_VALID_DAYS = 397


@dataclass(frozen=True)
class HostCredentials:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes | None  # None when the user gave their own certificate

    def fingerprint(self) -> str:
        """What identifies these credentials for the image cache key.

        A generated host certificate is new at every build, so the key follows the CA that
        signs it (and the hostname, keyed separately); user-given files are keyed by content.
        """
        basis = self.ca_pem if self.ca_pem is not None else self.cert_pem + self.key_pem
        return hashlib.sha256(basis).hexdigest()


def ensure_ca(ca_dir: Path) -> tuple[bytes, bytes]:
    """The test CA's certificate and key, made once. Safe against concurrent first use."""
    ca_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = ca_dir / "ca.pem", ca_dir / "ca.key"
    with open(ca_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cert_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "vmharness"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "vmharness test CA"),
                ]
            )
            now = dt.datetime.now(dt.UTC)
            cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=1))
                .not_valid_after(now + dt.timedelta(days=CA_VALID_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=False,
                        content_commitment=False,
                        key_encipherment=False,
                        data_encipherment=False,
                        key_agreement=False,
                        key_cert_sign=True,
                        crl_sign=True,
                        encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .add_extension(
                    x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                )
                .sign(key, hashes.SHA256())
            )
            key_bytes = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key_bytes)
            tmp = cert_path.with_suffix(".tmp")
            tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            tmp.rename(cert_path)  # last: its presence means the pair is complete
    return cert_path.read_bytes(), key_path.read_bytes()


def issue_host_cert(ca_dir: Path, hostname: str) -> HostCredentials:
    """A server certificate for `hostname`, signed by the test CA."""
    ca_cert_pem, ca_key_pem = ensure_ca(ca_dir)
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("the vmharness CA key is neither EC nor RSA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    short = hostname.split(".")[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=HOST_VALID_DAYS))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(hostname), x509.DNSName(short)]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return HostCredentials(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        ca_pem=ca_cert_pem,
    )


def user_credentials(cert_file: Path, key_file: Path) -> HostCredentials:
    return HostCredentials(
        cert_pem=cert_file.read_bytes(), key_pem=key_file.read_bytes(), ca_pem=None
    )
