"""Validate uploaded server and CA certificates.

A pure module (cryptography and the standard library only) so the forms, the management
commands and the tests share one set of rules. Every failure is a `CertificateError` subclass
that names the form field it belongs to and carries the sentence shown next to that field.

The checks run in the order that gives the operator the most useful message first:
size, empty, DH parameters, PEM armour, block types, parsing, key type, passphrase, key match,
validity period, chain order. Each stage runs over every field before the next stage starts, so
a 1 MiB paste in the chain is reported before an unreadable certificate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519
from cryptography.x509.oid import NameOID

from certificates.pem import BOM, PemBlock, PemSyntaxError, decode_text, split_blocks

MAX_FIELD_BYTES = 64 * 1024
MAX_CHAIN_CERTIFICATES = 10
ALLOWED_KEY_TYPES = (
    "RSA 1024",
    "RSA 2048",
    "RSA 4096",
    "ECDSA P-256",
    "ECDSA P-384",
    "ECDSA P-521",
)

CERTIFICATE = "certificate"
PRIVATE_KEY = "private_key"
CHAIN = "chain"
PASSPHRASE = "passphrase"

_LABELS = {
    CERTIFICATE: "Certificate",
    PRIVATE_KEY: "Private Key",
    CHAIN: "Certificate Chain",
    PASSPHRASE: "Passphrase",
}
_CERTIFICATE_LABEL = "CERTIFICATE"
_PRIVATE_KEY_LABELS = frozenset(
    {"PRIVATE KEY", "ENCRYPTED PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY", "DSA PRIVATE KEY"}
)
# `openssl ecparam -genkey` writes this block before the key; it repeats the key's curve.
_EC_PARAMETERS_LABEL = "EC PARAMETERS"
_DH_PARAMETERS = re.compile(r"-----BEGIN (X9\.42 )?DH PARAMETERS-----")
_DH_REASON = (
    "ECDHE cipher suites already give forward secrecy, so DH parameter files "
    "(BEGIN DH PARAMETERS) are not accepted"
)
# What a misplaced block is, worded for the operator.
_BLOCK_NAMES = {
    "CERTIFICATE": "a certificate",
    "CERTIFICATE REQUEST": "a certificate signing request (CSR), not a certificate",
    "NEW CERTIFICATE REQUEST": "a certificate signing request (CSR), not a certificate",
    "PUBLIC KEY": "a public key",
    "RSA PUBLIC KEY": "a public key",
    "OPENSSH PRIVATE KEY": "an OpenSSH key; convert it with `ssh-keygen -p -m PKCS8`",
    "PKCS7": "a PKCS#7 bundle; split it with `openssl pkcs7 -print_certs`",
    "X509 CRL": "a certificate revocation list",
    "EC PARAMETERS": "EC curve parameters without an EC PRIVATE KEY",
}
_CURVE_KEY_TYPES = {
    "secp256r1": "ECDSA P-256",
    "secp384r1": "ECDSA P-384",
    "secp521r1": "ECDSA P-521",
}


class CertificateError(ValueError):
    """A rejected upload: `message` is shown next to the form field named by `field`."""

    default_field = CERTIFICATE

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field or self.default_field

    def __str__(self) -> str:
        return self.message


class EmptyField(CertificateError):
    pass


class FieldTooLarge(CertificateError):
    pass


class NotPem(CertificateError):
    pass


class DhParametersRejected(CertificateError):
    pass


class MultipleCertificates(CertificateError):
    pass


class WrongBlockType(CertificateError):
    pass


class UnsupportedKeyAlgorithm(CertificateError):
    pass


class PassphraseRequired(CertificateError):
    default_field = PASSPHRASE


class WrongPassphrase(CertificateError):
    default_field = PASSPHRASE


class KeyMismatch(CertificateError):
    default_field = PRIVATE_KEY


class ChainOrderError(CertificateError):
    default_field = CHAIN


class ChainTooLong(CertificateError):
    default_field = CHAIN


class CertificateExpired(CertificateError):
    pass


class CertificateNotYetValid(CertificateError):
    pass


class NotACaCertificate(CertificateError):
    pass


class UnreadableCertificate(CertificateError):
    pass


class UnreadableKey(CertificateError):
    default_field = PRIVATE_KEY


@dataclass(frozen=True)
class CertificateInfo:
    """What the pages show about one certificate."""

    subject: str
    issuer: str
    common_name: str | None
    sans: tuple[str, ...]
    primary_domain: str | None  # the CN if present, else the first DNS SAN
    serial: str  # uppercase hex
    fingerprint_sha256: str  # "AA:BB:..." uppercase
    not_before: datetime  # UTC aware
    not_after: datetime  # UTC aware
    # "RSA" or "ECDSA" for anything that passed validation; chain certificates are described
    # as found ("Ed25519", "DSA"), since only the leaf and CA keys are restricted.
    key_algorithm: str
    key_size: int  # bits; the curve size for EC
    key_type: str  # one of ALLOWED_KEY_TYPES for a validated leaf or CA certificate
    is_ca: bool


@dataclass(frozen=True)
class ValidatedServerCertificate:
    certificate_pem: str  # normalized: LF, no BOM, one block, trailing newline
    private_key_pem: str  # unencrypted PKCS#8; the caller encrypts it at rest
    chain_pem: str  # normalized, "" if there is no chain
    info: CertificateInfo
    chain: tuple[CertificateInfo, ...]


@dataclass(frozen=True)
class ValidatedCaCertificate:
    certificate_pem: str
    info: CertificateInfo


@dataclass(frozen=True)
class _Field:
    name: str  # the form field
    label: str  # the form label, used to start every message
    data: str | bytes | None


def validate_server_certificate(
    certificate: str | bytes,
    private_key: str | bytes,
    chain: str | bytes | None = None,
    passphrase: str | None = None,
    *,
    now: datetime | None = None,
) -> ValidatedServerCertificate:
    """Check a server certificate upload and return it normalized, or raise CertificateError."""
    cert_field = _Field(CERTIFICATE, "Certificate", certificate)
    key_field = _Field(PRIVATE_KEY, "Private Key", private_key)
    chain_field = _Field(CHAIN, "Certificate Chain", chain)
    fields = (cert_field, key_field, chain_field)

    for field in fields:
        _check_size(field)
    for field in (cert_field, key_field):
        _check_not_empty(field)
    for field in fields:
        _check_no_dh_parameters(field)
    cert_blocks = _read_blocks(cert_field)
    key_blocks = _read_blocks(key_field)
    chain_blocks = _read_blocks(chain_field) if _has_content(chain) else []

    _check_single_certificate(cert_field, cert_blocks)
    key_block = _find_private_key_block(key_field, key_blocks)
    _check_chain_blocks(chain_field, chain_blocks)

    leaf = _load_certificate(cert_field, cert_blocks[0])
    intermediates = [
        _load_certificate(chain_field, block, position)
        for position, block in enumerate(chain_blocks, start=1)
    ]
    leaf_info = _describe(cert_field, leaf)
    chain_infos = tuple(
        _describe(chain_field, cert, position)
        for position, cert in enumerate(intermediates, start=1)
    )
    key = None if key_block.is_encrypted else _load_private_key(key_field, key_block, None)

    _check_allowed_key_type(cert_field, "The Certificate's public key", leaf.public_key())
    if key is None:
        key = _decrypt_private_key(key_field, key_block, passphrase)
    _check_allowed_key_type(key_field, "The Private Key", key)

    if key.public_key() != leaf.public_key():
        _raise_key_mismatch(key, leaf)

    current = _utc(now)
    _check_validity(cert_field, leaf, current)
    for position, cert in enumerate(intermediates, start=1):
        _check_validity(chain_field, cert, current, position)
    _check_chain_order(leaf, intermediates)

    return ValidatedServerCertificate(
        certificate_pem=cert_blocks[0].to_pem(),
        private_key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        chain_pem="".join(block.to_pem() for block in chain_blocks),
        info=leaf_info,
        chain=chain_infos,
    )


def validate_ca_certificate(
    certificate: str | bytes, *, now: datetime | None = None
) -> ValidatedCaCertificate:
    """Check a CA certificate upload (used to verify client certificates)."""
    field = _Field(CERTIFICATE, "CA Certificate", certificate)
    _check_size(field)
    _check_not_empty(field)
    _check_no_dh_parameters(field)
    blocks = _read_blocks(field)
    certificate_blocks = _only_certificate_blocks(field, blocks)
    if len(certificate_blocks) > 1:
        raise MultipleCertificates(
            f"CA Certificate must hold one certificate, found {len(certificate_blocks)}; "
            "upload each CA certificate separately.",
            field=field.name,
        )
    cert = _load_certificate(field, certificate_blocks[0])
    info = _describe(field, cert)
    _check_allowed_key_type(field, "The CA Certificate's public key", cert.public_key())
    if not info.is_ca:
        raise NotACaCertificate(
            "CA Certificate is not a CA: it lacks the basicConstraints extension with CA:TRUE.",
            field=field.name,
        )
    _check_validity(field, cert, _utc(now))
    return ValidatedCaCertificate(certificate_pem=certificate_blocks[0].to_pem(), info=info)


def describe_certificate(pem: str) -> CertificateInfo:
    """Describe a stored certificate (the first block of `pem`) for the pages."""
    field = _Field(CERTIFICATE, "Certificate", pem)
    blocks = _only_certificate_blocks(field, _read_blocks(field))
    return _describe(field, _load_certificate(field, blocks[0]))


def normalize_pem_text(data: str | bytes, *, field: str = CERTIFICATE) -> str:
    """Every block of `data` re-armoured: LF line ends, no BOM, no blank lines, 64 columns.

    Raises FieldTooLarge, EmptyField or NotPem, attributed to `field`.
    """
    target = _Field(field, _LABELS.get(field, "Certificate"), data)
    _check_size(target)
    _check_not_empty(target)
    return "".join(block.to_pem() for block in _read_blocks(target))


def key_type_name(key: object) -> str:
    """How the seeds name a key: "RSA 2048", "ECDSA P-256"; others as found, e.g. "Ed25519"."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return _CURVE_KEY_TYPES.get(key.curve.name, f"EC {key.curve.name}")
    if isinstance(key, dsa.DSAPublicKey | dsa.DSAPrivateKey):
        return f"DSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey | ed448.Ed448PrivateKey):
        return "Ed448"
    if isinstance(key, x25519.X25519PublicKey | x25519.X25519PrivateKey):
        return "X25519"
    if isinstance(key, x448.X448PublicKey | x448.X448PrivateKey):
        return "X448"
    return type(key).__name__


# -- text stages: size, empty, DH parameters, armour ------------------------------------------


def _has_content(data: str | bytes | None) -> bool:
    if data is None:
        return False
    if isinstance(data, bytes):
        return bool(data.removeprefix(BOM.encode("utf-8")).strip())
    return bool(data.removeprefix(BOM).strip())


def _check_size(field: _Field) -> None:
    data = field.data
    if data is None:
        return
    size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
    if size > MAX_FIELD_BYTES:
        raise FieldTooLarge(
            f"{field.label} is {_kib(size)} KiB; the limit is {MAX_FIELD_BYTES // 1024} KiB.",
            field=field.name,
        )


def _check_not_empty(field: _Field) -> None:
    if not _has_content(field.data):
        raise EmptyField(f"{field.label} is required.", field=field.name)


def _check_no_dh_parameters(field: _Field) -> None:
    if field.data is None:
        return
    if _DH_PARAMETERS.search(_loose_text(field.data)):
        raise DhParametersRejected(
            f"{field.label} contains DH parameters: {_DH_REASON}. Remove that block.",
            field=field.name,
        )


def _loose_text(data: str | bytes) -> str:
    """Best-effort text for scanning, even for uploads that are not clean UTF-8."""
    if isinstance(data, str):
        return data
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", "replace")
    return data.decode("utf-8", "replace")


def _read_blocks(field: _Field) -> list[PemBlock]:
    data = field.data if field.data is not None else ""
    try:
        return split_blocks(decode_text(data))
    except PemSyntaxError as error:
        raise NotPem(f"{field.label} must be PEM text: {error.reason}.", field=field.name) from None


# -- block types -----------------------------------------------------------------------------


def _check_single_certificate(field: _Field, blocks: list[PemBlock]) -> None:
    certificate_blocks = _only_certificate_blocks(field, blocks)
    if len(certificate_blocks) > 1:
        raise MultipleCertificates(
            f"Certificate must hold one certificate, found {len(certificate_blocks)}; "
            "put intermediates in the Certificate Chain field.",
            field=field.name,
        )


def _only_certificate_blocks(field: _Field, blocks: list[PemBlock]) -> list[PemBlock]:
    for block in blocks:
        if block.label != _CERTIFICATE_LABEL:
            raise WrongBlockType(
                f"{field.label} must hold only CERTIFICATE blocks; the block on line "
                f"{block.line} is {_name_block(block)}{_where_it_goes(field, block)}.",
                field=field.name,
            )
    return blocks


def _find_private_key_block(field: _Field, blocks: list[PemBlock]) -> PemBlock:
    keys = [block for block in blocks if block.label in _PRIVATE_KEY_LABELS]
    for block in blocks:
        if block.label in _PRIVATE_KEY_LABELS:
            continue
        if block.label == _EC_PARAMETERS_LABEL and any(k.label == "EC PRIVATE KEY" for k in keys):
            continue
        raise WrongBlockType(
            f"Private Key must hold only the private key; the block on line {block.line} "
            f"is {_name_block(block)}{_where_it_goes(field, block)}.",
            field=field.name,
        )
    if not keys:
        raise WrongBlockType(
            "Private Key holds no private key block (BEGIN PRIVATE KEY, RSA PRIVATE KEY or "
            "EC PRIVATE KEY).",
            field=field.name,
        )
    if len(keys) > 1:
        raise WrongBlockType(
            f"Private Key must hold one private key, found {len(keys)}.", field=field.name
        )
    return keys[0]


def _check_chain_blocks(field: _Field, blocks: list[PemBlock]) -> None:
    _only_certificate_blocks(field, blocks)
    if len(blocks) > MAX_CHAIN_CERTIFICATES:
        raise ChainTooLong(
            f"Certificate Chain holds {len(blocks)} certificates; the limit is "
            f"{MAX_CHAIN_CERTIFICATES}.",
            field=field.name,
        )


def _name_block(block: PemBlock) -> str:
    if block.label in _PRIVATE_KEY_LABELS:
        return "a private key"
    return _BLOCK_NAMES.get(block.label, f"a {block.label} block")


def _where_it_goes(field: _Field, block: PemBlock) -> str:
    """A hint when the block belongs in another field of the same form."""
    if block.label == _CERTIFICATE_LABEL and field.name == PRIVATE_KEY:
        return "; put it in the Certificate field"
    if block.label in _PRIVATE_KEY_LABELS and field.label in ("Certificate", "Certificate Chain"):
        return "; put it in the Private Key field"
    return ""


# -- parsing ---------------------------------------------------------------------------------


def _load_certificate(
    field: _Field, block: PemBlock, position: int | None = None
) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(block.der)
    except ValueError:
        raise UnreadableCertificate(
            f"{_where(field, position)} is not a readable X.509 certificate: the text between "
            "BEGIN and END is damaged or is not a certificate.",
            field=field.name,
        ) from None


def _load_private_key(field: _Field, block: PemBlock, password: bytes | None) -> object:
    # The block is re-armoured on its own, so the loader cannot pick up any other block.
    try:
        return serialization.load_pem_private_key(block.to_pem().encode("ascii"), password)
    except UnsupportedAlgorithm:
        raise UnreadableKey(
            "Private Key uses a key type or an encryption cipher that cannot be read.",
            field=field.name,
        ) from None
    except (ValueError, TypeError):
        raise UnreadableKey(
            f"Private Key is not a readable {block.label} block: the text between BEGIN and "
            "END is damaged or does not match its BEGIN line.",
            field=field.name,
        ) from None


def _decrypt_private_key(field: _Field, block: PemBlock, passphrase: str | None) -> object:
    if not passphrase:
        raise PassphraseRequired(
            "Passphrase is required: the Private Key is encrypted. Enter its passphrase, "
            "or upload the key unencrypted."
        )
    try:
        return serialization.load_pem_private_key(
            block.to_pem().encode("ascii"), passphrase.encode("utf-8")
        )
    except UnsupportedAlgorithm:
        raise UnreadableKey(
            "Private Key is encrypted with a cipher that cannot be read; re-export it as "
            "PKCS#8 with AES-256.",
            field=field.name,
        ) from None
    except (ValueError, TypeError):
        # cryptography reports a wrong passphrase and a damaged encrypted body alike; the block
        # is marked encrypted, so the passphrase is the likelier culprit.
        raise WrongPassphrase(
            "Passphrase does not decrypt the Private Key. Check the passphrase."
        ) from None


def _describe(
    field: _Field, cert: x509.Certificate, position: int | None = None
) -> CertificateInfo:
    try:
        public_key = cert.public_key()
    except UnsupportedAlgorithm:
        raise UnsupportedKeyAlgorithm(
            f"{_where(field, position)} has a public key of an unknown algorithm. "
            f"Allowed: {', '.join(ALLOWED_KEY_TYPES)}.",
            field=field.name,
        ) from None
    except ValueError:
        raise UnreadableCertificate(
            f"{_where(field, position)} has a malformed public key and cannot be read.",
            field=field.name,
        ) from None
    # cryptography parses extensions lazily, so a malformed extension surfaces here.
    try:
        sans = _subject_alternative_names(cert)
        is_ca = _is_ca(cert)
        common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        subject = cert.subject.rfc4514_string()
        issuer = cert.issuer.rfc4514_string()
    except ValueError:
        raise UnreadableCertificate(
            f"{_where(field, position)} has a malformed field or extension and cannot be read.",
            field=field.name,
        ) from None
    common_name = str(common_names[0].value) if common_names else None
    dns_names = [name for kind, name in sans if kind is x509.DNSName]
    algorithm, size = _key_algorithm_and_size(public_key)
    return CertificateInfo(
        subject=subject,
        issuer=issuer,
        common_name=common_name,
        sans=tuple(name for _, name in sans),
        primary_domain=common_name or (dns_names[0] if dns_names else None),
        serial=_hex_serial(cert.serial_number),
        fingerprint_sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        key_algorithm=algorithm,
        key_size=size,
        key_type=key_type_name(public_key),
        is_ca=is_ca,
    )


def _subject_alternative_names(cert: x509.Certificate) -> list[tuple[type, str]]:
    """DNS names and IP addresses, in certificate order, each with its GeneralName type."""
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return [
        (type(name), str(name.value))
        for name in extension.value
        if isinstance(name, x509.DNSName | x509.IPAddress)
    ]


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca


def _key_algorithm_and_size(public_key: object) -> tuple[str, int]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return "RSA", public_key.key_size
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ECDSA", public_key.curve.key_size
    if isinstance(public_key, dsa.DSAPublicKey):
        return "DSA", public_key.key_size
    name = key_type_name(public_key)
    sizes = {"Ed25519": 256, "Ed448": 456, "X25519": 256, "X448": 448}
    return name, sizes.get(name, 0)


def _hex_serial(serial: int) -> str:
    digits = f"{serial:X}"
    return digits.zfill(len(digits) + len(digits) % 2)


# -- key type, validity, chain ---------------------------------------------------------------


def _check_allowed_key_type(field: _Field, subject: str, key: object) -> None:
    found = key_type_name(key)
    if found not in ALLOWED_KEY_TYPES:
        raise UnsupportedKeyAlgorithm(
            f"{subject} is {found}, which is not supported. "
            f"Allowed: {', '.join(ALLOWED_KEY_TYPES)}.",
            field=field.name,
        )


def _raise_key_mismatch(key: object, leaf: x509.Certificate) -> None:
    key_type, cert_key_type = key_type_name(key), key_type_name(leaf.public_key())
    detail = (
        f"the key is {key_type} but the Certificate's key is {cert_key_type}"
        if key_type != cert_key_type
        else "it belongs to a different certificate"
    )
    raise KeyMismatch(f"Private Key does not match the Certificate: {detail}.")


def _check_validity(
    field: _Field, cert: x509.Certificate, now: datetime, position: int | None = None
) -> None:
    if now > cert.not_valid_after_utc:
        raise CertificateExpired(
            f"{_where(field, position)} expired on {_when(cert.not_valid_after_utc)}.",
            field=field.name,
        )
    if now < cert.not_valid_before_utc:
        raise CertificateNotYetValid(
            f"{_where(field, position)} is not valid until {_when(cert.not_valid_before_utc)}.",
            field=field.name,
        )


def _check_chain_order(leaf: x509.Certificate, chain: list[x509.Certificate]) -> None:
    """Each certificate must be signed by the next: leaf by chain[0], chain[0] by chain[1]..."""
    path = [leaf, *chain]
    for index in range(1, len(path)):
        child, parent = path[index - 1], path[index]
        if parent == leaf:
            raise ChainOrderError(
                f"Certificate Chain position {index} is the Certificate itself; the chain holds "
                "only the intermediates that issued it."
            )
        if _issued_by(child, parent):
            continue
        child_name = "the Certificate" if index == 1 else f"position {index - 1}"
        actual = next(
            (position for position, cert in enumerate(chain, 1) if _issued_by(child, cert)), None
        )
        hint = (
            f" It was issued by position {actual}; order the chain from the Certificate's "
            "issuer up to the root."
            if actual is not None
            else " Each certificate must be followed by the one that signed it."
        )
        raise ChainOrderError(
            f"Certificate Chain is out of order: position {index} ({_subject(parent)}) did "
            f"not sign {child_name} ({_subject(child)}).{hint}"
        )


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


# -- wording ---------------------------------------------------------------------------------


def _where(field: _Field, position: int | None) -> str:
    return field.label if position is None else f"{field.label} position {position}"


def _subject(cert: x509.Certificate) -> str:
    try:
        return cert.subject.rfc4514_string() or "empty subject"
    except ValueError:
        return "unreadable subject"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _kib(size: int) -> str:
    return f"{size / 1024:.0f}" if size >= 10 * 1024 else f"{size / 1024:.1f}"


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise TypeError("now must be timezone-aware")
    return now.astimezone(UTC)
