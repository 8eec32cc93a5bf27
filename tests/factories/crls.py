"""Certificate revocation lists and client certificates generated at test time.

    root = make_ca("Client Root CA")
    client = make_client_cert(root, "alice")
    crl = make_crl(root, revoked=[client.cert])

CAs come from tests/factories/certs.py; nothing here is written to disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.factories.certs import CaMaterial, _builder, _name, pem, private_key, private_key_pem


@dataclass(frozen=True)
class ClientMaterial:
    """A client certificate for mutual TLS, its key, and the intermediates it was issued under."""

    cert: x509.Certificate
    key: object
    chain: tuple[x509.Certificate, ...] = ()  # the issuer first, the trusted CA excluded

    def bundle_pem(self) -> str:
        """Certificate, intermediates and key in one PEM text, as ssl.load_cert_chain reads it."""
        return pem(self.cert) + "".join(pem(c) for c in self.chain) + private_key_pem(self.key)


def make_client_cert(
    issuer: CaMaterial,
    common_name: str,
    *,
    chain: Sequence[CaMaterial] = (),
    key_type: str = "ec-p256",
) -> ClientMaterial:
    """A client certificate (clientAuth) signed by `issuer`; `chain` lists the intermediates
    the client sends, its issuer first."""
    now = datetime.now(UTC)
    key = private_key(key_type, f"client:{common_name}")
    builder = _builder(
        subject=_name(common_name),
        public_key=key.public_key(),
        issuer=issuer,
        not_before=now - timedelta(days=1),
        not_after=now + timedelta(days=90),
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )
    cert = builder.sign(issuer.key, hashes.SHA256())
    return ClientMaterial(cert=cert, key=key, chain=tuple(ca.cert for ca in chain))


def make_crl(
    issuer: CaMaterial,
    *,
    revoked: Sequence[x509.Certificate] = (),
    this_update: datetime | None = None,
    next_update: datetime | None = None,
    number: int | None = 1,
    signing_key: CertificateIssuerPrivateKeyTypes | None = None,
    extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
) -> x509.CertificateRevocationList:
    """A CRL naming `issuer`, valid from an hour ago for a week unless told otherwise.

    `signing_key` signs it with another key (a forged or damaged CRL)."""
    now = datetime.now(UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(this_update or now - timedelta(hours=1))
    )
    builder = builder.next_update(next_update or now + timedelta(days=7))
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - timedelta(minutes=30))
            .build()
        )
    return builder.sign(signing_key or issuer.key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> str:
    return crl.public_bytes(serialization.Encoding.PEM).decode()


def crl_der(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.DER)
