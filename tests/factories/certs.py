"""Certificates and keys generated at test time with cryptography.

Build a server certificate with its chain, a CA, or any of the awkward inputs operators paste
(DER, PKCS#12, UTF-16, DH parameters, encrypted keys). Nothing here is written to disk.

    material = make_server_cert("rsa-2048", sans=["www.example.test"], chain_depth=1)
    validate_server_certificate(material.cert_pem, material.key_pem, material.chain_pem)

Private keys are cached per process by (key type, slot): RSA 4096 costs a noticeable fraction of
a second, and tests that need two different keys of one type ask for two slots. A CA's slot is
its common name, so two CAs with the same name share a key and can sign for each other; give a
CA its own name when a test needs an unrelated issuer.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    PrivateKeyTypes,
)
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The six key types the seeds allow, with the names the console shows for them.
ALLOWED_KEY_TYPES = {
    "rsa-1024": "RSA 1024",
    "rsa-2048": "RSA 2048",
    "rsa-4096": "RSA 4096",
    "ec-p256": "ECDSA P-256",
    "ec-p384": "ECDSA P-384",
    "ec-p521": "ECDSA P-521",
}
# Key types an operator may try that the seeds do not allow, with the name validation reports.
REJECTED_KEY_TYPES = {
    "rsa-3072": "RSA 3072",
    "ec-secp256k1": "EC secp256k1",
    "ed25519": "Ed25519",
    "ed448": "Ed448",
    "dsa-2048": "DSA 2048",
}
PASSPHRASE = "correct horse battery staple"

# RFC 3526 group 14 (2048-bit MODP) prime, used to write a realistic DH PARAMETERS file without
# the seconds-long parameter generation.
_MODP_2048_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A0879"
    "8E3404DDEF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B"
    "0BFF5CB6F406B7EDEE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA4836"
    "1C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804"
    "F1746C08CA18217C32905E462E36CE3BE39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6"
    "955817183995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)


# -- keys ------------------------------------------------------------------------------------


@functools.cache
def private_key(key_type: str = "ec-p256", slot: str = "leaf") -> PrivateKeyTypes:
    """A private key of `key_type`, the same object for the same (key_type, slot) per process."""
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    curves = {
        "ec-p256": ec.SECP256R1,
        "ec-p384": ec.SECP384R1,
        "ec-p521": ec.SECP521R1,
        "ec-secp256k1": ec.SECP256K1,
    }
    if key_type in curves:
        return ec.generate_private_key(curves[key_type]())
    if key_type == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type == "ed448":
        return ed448.Ed448PrivateKey.generate()
    if key_type.startswith("dsa-"):
        return dsa.generate_private_key(key_size=int(key_type[4:]))
    raise ValueError(f"unknown key type {key_type!r}")


def private_key_pem(
    key: PrivateKeyTypes, *, key_format: str = "pkcs8", passphrase: str | None = None
) -> str:
    """PEM for `key`.

    key_format "pkcs8" gives BEGIN PRIVATE KEY (or ENCRYPTED PRIVATE KEY with a passphrase);
    "traditional" gives BEGIN RSA/EC/DSA PRIVATE KEY (PKCS#1 or SEC1), with a passphrase the
    OpenSSL `Proc-Type: 4,ENCRYPTED` form.
    """
    formats = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "traditional": serialization.PrivateFormat.TraditionalOpenSSL,
    }
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode())
        if passphrase
        else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, formats[key_format], encryption).decode()


# -- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True)
class CaMaterial:
    """A CA (root or intermediate) that can sign certificates."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes

    @property
    def cert_pem(self) -> str:
        return pem(self.cert)

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()


@dataclass(frozen=True)
class CertMaterial:
    """A server certificate, its key, the intermediates that issued it, and their root."""

    cert: x509.Certificate
    key: PrivateKeyTypes
    chain: tuple[x509.Certificate, ...]  # the leaf's issuer first, the root excluded
    root: CaMaterial
    intermediates: tuple[CaMaterial, ...] = field(default=())

    @property
    def cert_pem(self) -> str:
        return pem(self.cert)

    @property
    def key_pem(self) -> str:
        """Unencrypted PKCS#8."""
        return private_key_pem(self.key)

    @property
    def chain_pem(self) -> str:
        return "".join(pem(cert) for cert in self.chain)

    @property
    def root_pem(self) -> str:
        return self.root.cert_pem

    @property
    def cert_der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def fingerprint_sha256(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex(":").upper()

    def key_pem_as(self, key_format: str = "pkcs8", passphrase: str | None = None) -> str:
        return private_key_pem(self.key, key_format=key_format, passphrase=passphrase)

    def pkcs12(self, passphrase: str | None = PASSPHRASE) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase.encode())
            if passphrase
            else serialization.NoEncryption()
        )
        return pkcs12.serialize_key_and_certificates(
            b"server", self.key, self.cert, list(self.chain) or None, encryption
        )


def make_ca(
    common_name: str = "Test Root CA",
    key_type: str = "ec-p256",
    *,
    issuer: CaMaterial | None = None,
    basic_constraints: str = "ca",
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    slot: str | None = None,
) -> CaMaterial:
    """A root CA (no issuer) or an intermediate signed by `issuer`.

    basic_constraints: "ca" (CA:TRUE), "not-ca" (CA:FALSE) or "absent" (no extension), the
    last two for testing CA uploads that are not CAs.
    """
    now = datetime.now(UTC)
    key = private_key(key_type, slot or f"ca:{common_name}")
    builder = _builder(
        subject=_name(common_name, organization="Example Test CA"),
        public_key=key.public_key(),
        issuer=issuer,
        not_before=not_before or now - timedelta(days=30),
        not_after=not_after or now + timedelta(days=3650),
    )
    if basic_constraints != "absent":
        builder = builder.add_extension(
            x509.BasicConstraints(ca=basic_constraints == "ca", path_length=None), critical=True
        )
    if basic_constraints == "ca":
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
    signer = issuer.key if issuer else key
    return CaMaterial(cert=builder.sign(signer, hashes.SHA256()), key=key)


def make_server_cert(
    key_type: str = "ec-p256",
    *,
    sans: Sequence[str] = ("www.example.test",),
    common_name: str | None = "www.example.test",
    chain_depth: int = 0,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    root: CaMaterial | None = None,
    ca_key_type: str = "ec-p256",
    slot: str = "leaf",
) -> CertMaterial:
    """A server certificate issued through `chain_depth` intermediates below a root.

    `sans` may mix DNS names and IP addresses. `common_name=None` leaves the CN out, so the
    primary domain comes from the first DNS SAN. `slot` picks a different cached key of the same
    type (e.g. "other" for a key that does not match).
    """
    now = datetime.now(UTC)
    root = root or make_ca("Test Root CA", ca_key_type)
    intermediates: list[CaMaterial] = []
    issuer = root
    for level in range(chain_depth, 0, -1):
        issuer = make_ca(f"Test Intermediate CA {level}", ca_key_type, issuer=issuer)
        intermediates.append(issuer)
    key = private_key(key_type, slot)
    builder = _builder(
        subject=_name(common_name),
        public_key=key.public_key(),
        issuer=issuer,
        not_before=not_before or now - timedelta(days=1),
        not_after=not_after or now + timedelta(days=90),
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
    builder = builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
    )
    if sans:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(name) for name in sans]), critical=False
        )
    cert = builder.sign(issuer.key, hashes.SHA256())
    # The chain lists the leaf's issuer first, so reverse the order they were made in.
    ordered = tuple(reversed(intermediates))
    return CertMaterial(
        cert=cert,
        key=key,
        chain=tuple(ca.cert for ca in ordered),
        root=root,
        intermediates=ordered,
    )


def make_expired_server_cert(key_type: str = "ec-p256", **options: object) -> CertMaterial:
    """Valid for 90 days, ending yesterday."""
    now = datetime.now(UTC)
    return make_server_cert(
        key_type, not_before=now - timedelta(days=91), not_after=now - timedelta(days=1), **options
    )


def make_not_yet_valid_server_cert(key_type: str = "ec-p256", **options: object) -> CertMaterial:
    """Valid from tomorrow for 90 days."""
    now = datetime.now(UTC)
    return make_server_cert(
        key_type, not_before=now + timedelta(days=1), not_after=now + timedelta(days=91), **options
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _builder(
    *,
    subject: x509.Name,
    public_key: object,
    issuer: CaMaterial | None,
    not_before: datetime,
    not_after: datetime,
) -> x509.CertificateBuilder:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    return builder


def _name(common_name: str | None, organization: str = "Example Test") -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


# -- awkward uploads -------------------------------------------------------------------------


def dh_parameters_pem(label: str = "DH PARAMETERS") -> str:
    """What `openssl dhparam 2048` writes: PKCS#3 DHParameter ::= SEQUENCE { p, g }."""
    body = _der_integer(_MODP_2048_PRIME) + _der_integer(2)
    return _armour(label, _der_tlv(0x30, body))


def garbage_in_armour(label: str = "CERTIFICATE", size: int = 600) -> str:
    """Valid PEM armour around bytes that are not DER."""
    return _armour(label, bytes((index * 37 + 11) % 251 for index in range(size)))


def with_crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


def with_bom(text: str) -> bytes:
    return b"\xef\xbb\xbf" + text.encode()


def with_blank_lines(text: str) -> str:
    """Blank lines and stray spaces around and between blocks, as pasted from an e-mail."""
    blocks = text.replace("-----\n-----", "-----\n\n  \n-----")
    return "\n\n   \n" + blocks.replace("-----BEGIN", "  -----BEGIN") + "\n\n\t\n"


def one_mib_blob() -> bytes:
    """1 MiB of binary data, far over the 64 KiB field limit."""
    return bytes(range(256)) * 4096


def as_utf16(text: str) -> bytes:
    """UTF-16 with a BOM, as Windows Notepad saves "Unicode" files."""
    return text.encode("utf-16")


def _armour(label: str, der: bytes) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n"


def _der_integer(value: int) -> bytes:
    content = value.to_bytes(value.bit_length() // 8 + 1, "big")
    return _der_tlv(0x02, content)


def _der_tlv(tag: int, content: bytes) -> bytes:
    length = len(content)
    if length < 0x80:
        encoded_length = bytes([length])
    else:
        octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
        encoded_length = bytes([0x80 | len(octets)]) + octets
    return bytes([tag]) + encoded_length + content
