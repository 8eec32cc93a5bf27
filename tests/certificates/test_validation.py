"""Validation of uploaded server and CA certificates (certificates/validation.py).

Given material generated at test time, when it is validated, then a bad upload raises the
named error on the right field with a message that says what is wrong, and a good upload comes
back normalized with the details the pages show.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from certificates import validation as v
from tests.factories.certs import (
    ALLOWED_KEY_TYPES,
    PASSPHRASE,
    REJECTED_KEY_TYPES,
    CertMaterial,
    as_utf16,
    dh_parameters_pem,
    garbage_in_armour,
    make_ca,
    make_expired_server_cert,
    make_not_yet_valid_server_cert,
    make_server_cert,
    one_mib_blob,
    pem,
    private_key,
    with_blank_lines,
    with_bom,
    with_crlf,
)

LABELS = {
    "certificate": "Certificate",
    "private_key": "Private Key",
    "chain": "Certificate Chain",
    "passphrase": "Passphrase",
}


@functools.cache
def material() -> CertMaterial:
    """One good ECDSA server certificate with one intermediate, shared by the bad cases."""
    return make_server_cert("ec-p256", chain_depth=1)


def upload(**changes: object) -> dict:
    """The good upload with some fields replaced."""
    good = material()
    fields = {
        "certificate": good.cert_pem,
        "private_key": good.key_pem,
        "chain": good.chain_pem,
        "passphrase": None,
    }
    return fields | changes


def material_upload(other: CertMaterial) -> dict:
    """The upload of another certificate, its key and its chain."""
    return {"certificate": other.cert_pem, "private_key": other.key_pem, "chain": other.chain_pem}


def with_key_type(key_type: str) -> dict:
    return material_upload(make_server_cert(key_type))


def csr_pem() -> str:
    key = private_key("ec-p256")
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")]))
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.PEM).decode()


def public_key_pem() -> str:
    return (
        private_key("ec-p256")
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def expired_intermediate() -> dict:
    now = datetime.now(UTC)
    root = make_ca("Test Root CA")
    old = make_ca(
        "Old Intermediate CA",
        issuer=root,
        not_before=now - timedelta(days=400),
        not_after=now - timedelta(days=2),
    )
    leaf = make_server_cert(root=old)
    return {"certificate": leaf.cert_pem, "private_key": leaf.key_pem, "chain": old.cert_pem}


def reversed_chain() -> dict:
    leaf = make_server_cert(chain_depth=2)
    return {
        "certificate": leaf.cert_pem,
        "private_key": leaf.key_pem,
        "chain": "".join(pem(cert) for cert in reversed(leaf.chain)),
    }


def foreign_chain() -> dict:
    stranger = make_ca("Other Intermediate CA", issuer=make_ca("Other Root CA"))
    return upload(chain=stranger.cert_pem)


def eleven_certificate_chain() -> dict:
    return material_upload(make_server_cert(chain_depth=11))


def mislabelled_key() -> str:
    # PKCS#8 content under a PKCS#1 label: the armour is fine, the content is not what it says.
    return (
        material()
        .key_pem.replace("BEGIN PRIVATE KEY", "BEGIN RSA PRIVATE KEY")
        .replace("END PRIVATE KEY", "END RSA PRIVATE KEY")
    )


@dataclass(frozen=True)
class BadUpload:
    name: str
    build: Callable[[], dict]  # keyword arguments for validate_server_certificate
    error: type[v.CertificateError]
    field: str
    message: str  # a stable part of the message


BAD_SERVER_UPLOADS = [
    # size
    BadUpload(
        "1 MiB blob as certificate",
        lambda: upload(certificate=one_mib_blob()),
        v.FieldTooLarge,
        "certificate",
        "the limit is 64 KiB",
    ),
    BadUpload(
        "1 MiB blob as private key",
        lambda: upload(private_key=one_mib_blob()),
        v.FieldTooLarge,
        "private_key",
        "the limit is 64 KiB",
    ),
    BadUpload(
        "chain over 64 KiB (200 certificates)",
        lambda: upload(chain=material().chain_pem * 200),
        v.FieldTooLarge,
        "chain",
        "the limit is 64 KiB",
    ),
    # empty
    BadUpload(
        "empty certificate", lambda: upload(certificate=""), v.EmptyField, "certificate", "required"
    ),
    BadUpload(
        "whitespace-only certificate",
        lambda: upload(certificate=" \r\n\t\n"),
        v.EmptyField,
        "certificate",
        "Certificate is required",
    ),
    BadUpload(
        "BOM-only private key",
        lambda: upload(private_key=b"\xef\xbb\xbf\r\n"),
        v.EmptyField,
        "private_key",
        "Private Key is required",
    ),
    # DH parameters, anywhere
    BadUpload(
        "DH parameters as certificate",
        lambda: upload(certificate=dh_parameters_pem()),
        v.DhParametersRejected,
        "certificate",
        "forward secrecy",
    ),
    BadUpload(
        "certificate followed by DH parameters",
        lambda: upload(certificate=material().cert_pem + dh_parameters_pem()),
        v.DhParametersRejected,
        "certificate",
        "DH parameter files (BEGIN DH PARAMETERS) are not accepted",
    ),
    BadUpload(
        "DH parameters followed by certificate",
        lambda: upload(certificate=dh_parameters_pem() + material().cert_pem),
        v.DhParametersRejected,
        "certificate",
        "ECDHE cipher suites already give forward secrecy",
    ),
    BadUpload(
        "private key followed by DH parameters",
        lambda: upload(private_key=material().key_pem + dh_parameters_pem()),
        v.DhParametersRejected,
        "private_key",
        "forward secrecy",
    ),
    BadUpload(
        "X9.42 DH parameters in the chain",
        lambda: upload(chain=material().chain_pem + dh_parameters_pem("X9.42 DH PARAMETERS")),
        v.DhParametersRejected,
        "chain",
        "forward secrecy",
    ),
    # not PEM at all
    BadUpload(
        "DER certificate",
        lambda: upload(certificate=material().cert_der),
        v.NotPem,
        "certificate",
        "must be PEM text: it is binary DER data",
    ),
    BadUpload(
        "PKCS#12 bundle",
        lambda: upload(certificate=material().pkcs12()),
        v.NotPem,
        "certificate",
        "must be PEM text: it is a PKCS#12",
    ),
    BadUpload(
        "DER private key",
        lambda: upload(
            private_key=material().key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        ),
        v.NotPem,
        "private_key",
        "must be PEM text: it is binary DER data",
    ),
    BadUpload(
        "UTF-16 file",
        lambda: upload(certificate=as_utf16(material().cert_pem)),
        v.NotPem,
        "certificate",
        "must be PEM text: it is UTF-16 text",
    ),
    BadUpload(
        "binary junk",
        lambda: upload(chain=bytes(range(128, 256)) * 4),
        v.NotPem,
        "chain",
        "must be PEM text: it is binary data",
    ),
    BadUpload(
        "prose instead of PEM",
        lambda: upload(certificate="my certificate is attached\n"),
        v.NotPem,
        "certificate",
        "must be PEM text: line 1 is outside any BEGIN/END block",
    ),
    BadUpload(
        "certificate without its END line",
        lambda: upload(certificate=material().cert_pem.split("-----END")[0]),
        v.NotPem,
        "certificate",
        "has no END line",
    ),
    BadUpload(
        "damaged base64",
        lambda: upload(certificate=material().cert_pem.replace("M", "*", 3)),
        v.NotPem,
        "certificate",
        "is not valid base64",
    ),
    # a block in the wrong field
    BadUpload(
        "private key in the certificate field",
        lambda: upload(certificate=material().key_pem),
        v.WrongBlockType,
        "certificate",
        "is a private key; put it in the Private Key field",
    ),
    BadUpload(
        "key followed by certificate in the key field",
        lambda: upload(private_key=material().key_pem + material().cert_pem),
        v.WrongBlockType,
        "private_key",
        "is a certificate; put it in the Certificate field",
    ),
    BadUpload(
        "certificate signing request as certificate",
        lambda: upload(certificate=csr_pem()),
        v.WrongBlockType,
        "certificate",
        "certificate signing request (CSR)",
    ),
    BadUpload(
        "public key as private key",
        lambda: upload(private_key=public_key_pem()),
        v.WrongBlockType,
        "private_key",
        "is a public key",
    ),
    BadUpload(
        "two private keys",
        lambda: upload(private_key=material().key_pem * 2),
        v.WrongBlockType,
        "private_key",
        "must hold one private key, found 2",
    ),
    BadUpload(
        "private key in the chain field",
        lambda: upload(chain=material().chain_pem + material().key_pem),
        v.WrongBlockType,
        "chain",
        "put it in the Private Key field",
    ),
    BadUpload(
        "full chain in the certificate field",
        lambda: upload(certificate=material().cert_pem + material().chain_pem),
        v.MultipleCertificates,
        "certificate",
        "found 2; put intermediates in the Certificate Chain field",
    ),
    BadUpload(
        "chain of 11 certificates",
        eleven_certificate_chain,
        v.ChainTooLong,
        "chain",
        "holds 11 certificates; the limit is 10",
    ),
    # armour fine, content junk
    BadUpload(
        "garbage inside certificate armour",
        lambda: upload(certificate=garbage_in_armour("CERTIFICATE")),
        v.UnreadableCertificate,
        "certificate",
        "is not a readable X.509 certificate",
    ),
    BadUpload(
        "garbage inside chain armour",
        lambda: upload(chain=garbage_in_armour("CERTIFICATE")),
        v.UnreadableCertificate,
        "chain",
        "Certificate Chain position 1 is not a readable X.509 certificate",
    ),
    BadUpload(
        "garbage inside private key armour",
        lambda: upload(private_key=garbage_in_armour("PRIVATE KEY")),
        v.UnreadableKey,
        "private_key",
        "is not a readable PRIVATE KEY block",
    ),
    BadUpload(
        "PKCS#8 key under an RSA PRIVATE KEY label",
        lambda: upload(private_key=mislabelled_key()),
        v.UnreadableKey,
        "private_key",
        "is not a readable RSA PRIVATE KEY block",
    ),
    # key algorithms outside the allowed list
    *[
        BadUpload(
            f"{name} certificate",
            functools.partial(with_key_type, key_type),
            v.UnsupportedKeyAlgorithm,
            "certificate",
            f"public key is {name}, which is not supported. Allowed: RSA 1024, RSA 2048, "
            "RSA 4096, ECDSA P-256, ECDSA P-384, ECDSA P-521.",
        )
        for key_type, name in REJECTED_KEY_TYPES.items()
    ],
    BadUpload(
        "RSA 3072 private key with an allowed certificate",
        lambda: upload(private_key=make_server_cert("rsa-3072").key_pem),
        v.UnsupportedKeyAlgorithm,
        "private_key",
        "The Private Key is RSA 3072, which is not supported",
    ),
    # passphrases
    BadUpload(
        "encrypted PKCS#8 key without a passphrase",
        lambda: upload(private_key=material().key_pem_as("pkcs8", PASSPHRASE)),
        v.PassphraseRequired,
        "passphrase",
        "the Private Key is encrypted",
    ),
    BadUpload(
        "encrypted PKCS#8 key with a wrong passphrase",
        lambda: upload(
            private_key=material().key_pem_as("pkcs8", PASSPHRASE), passphrase="wrong horse"
        ),
        v.WrongPassphrase,
        "passphrase",
        "does not decrypt the Private Key",
    ),
    BadUpload(
        "traditional Proc-Type: 4,ENCRYPTED key without a passphrase",
        lambda: upload(private_key=material().key_pem_as("traditional", PASSPHRASE)),
        v.PassphraseRequired,
        "passphrase",
        "the Private Key is encrypted",
    ),
    BadUpload(
        "traditional Proc-Type: 4,ENCRYPTED key with a wrong passphrase",
        lambda: upload(
            private_key=material().key_pem_as("traditional", PASSPHRASE), passphrase="wrong"
        ),
        v.WrongPassphrase,
        "passphrase",
        "does not decrypt the Private Key",
    ),
    # key and certificate
    BadUpload(
        "key of another certificate",
        lambda: upload(private_key=make_server_cert(slot="other").key_pem),
        v.KeyMismatch,
        "private_key",
        "does not match the Certificate",
    ),
    BadUpload(
        "RSA key with an ECDSA certificate",
        lambda: upload(private_key=make_server_cert("rsa-2048").key_pem),
        v.KeyMismatch,
        "private_key",
        "the key is RSA 2048 but the Certificate's key is ECDSA P-256",
    ),
    # validity period
    BadUpload(
        "expired certificate",
        lambda: material_upload(make_expired_server_cert()),
        v.CertificateExpired,
        "certificate",
        "Certificate expired on",
    ),
    BadUpload(
        "certificate not yet valid",
        lambda: material_upload(make_not_yet_valid_server_cert()),
        v.CertificateNotYetValid,
        "certificate",
        "Certificate is not valid until",
    ),
    BadUpload(
        "expired intermediate",
        expired_intermediate,
        v.CertificateExpired,
        "chain",
        "Certificate Chain position 1 expired on",
    ),
    # chain order
    BadUpload(
        "chain in reverse order",
        reversed_chain,
        v.ChainOrderError,
        "chain",
        "position 1 (CN=Test Intermediate CA 2,O=Example Test CA) did not sign the Certificate",
    ),
    BadUpload(
        "chain of another certificate",
        foreign_chain,
        v.ChainOrderError,
        "chain",
        "Each certificate must be followed by the one that signed it",
    ),
    BadUpload(
        "the certificate repeated in the chain",
        lambda: upload(chain=material().cert_pem + material().chain_pem),
        v.ChainOrderError,
        "chain",
        "position 1 is the Certificate itself",
    ),
]


@pytest.mark.parametrize("case", BAD_SERVER_UPLOADS, ids=lambda case: case.name)
def test_bad_server_upload_is_rejected_on_its_field(case: BadUpload) -> None:
    fields = case.build()

    with pytest.raises(v.CertificateError) as raised:
        v.validate_server_certificate(**fields)

    error = raised.value
    assert type(error) is case.error, error.message
    assert error.field == case.field
    assert case.message in error.message
    assert LABELS[case.field] in error.message
    assert str(error) == error.message


def test_bad_corpus_covers_every_rejection() -> None:
    covered = {case.error for case in [*BAD_SERVER_UPLOADS, *BAD_CA_UPLOADS]}
    every_error = {
        cls
        for cls in vars(v).values()
        if isinstance(cls, type) and issubclass(cls, v.CertificateError)
    }
    assert every_error - covered == {v.CertificateError}
    assert len(BAD_SERVER_UPLOADS) + len(BAD_CA_UPLOADS) >= 30


def ca_with(basic_constraints: str) -> str:
    return make_ca("Not Really A CA", basic_constraints=basic_constraints).cert_pem


BAD_CA_UPLOADS = [
    BadUpload(
        "CA without basicConstraints",
        lambda: {"certificate": ca_with("absent")},
        v.NotACaCertificate,
        "certificate",
        "lacks the basicConstraints extension with CA:TRUE",
    ),
    BadUpload(
        "CA with CA:FALSE",
        lambda: {"certificate": ca_with("not-ca")},
        v.NotACaCertificate,
        "certificate",
        "CA Certificate is not a CA",
    ),
    BadUpload(
        "server certificate uploaded as CA",
        lambda: {"certificate": material().cert_pem},
        v.NotACaCertificate,
        "certificate",
        "CA:TRUE",
    ),
    BadUpload(
        "two CA certificates",
        lambda: {"certificate": material().root_pem + material().chain_pem},
        v.MultipleCertificates,
        "certificate",
        "upload each CA certificate separately",
    ),
    BadUpload(
        "RSA 3072 CA",
        lambda: {"certificate": make_ca("Big Root", "rsa-3072").cert_pem},
        v.UnsupportedKeyAlgorithm,
        "certificate",
        "The CA Certificate's public key is RSA 3072",
    ),
    BadUpload(
        "expired CA",
        lambda: {
            "certificate": make_ca(
                "Old Root",
                not_before=datetime.now(UTC) - timedelta(days=900),
                not_after=datetime.now(UTC) - timedelta(days=1),
            ).cert_pem
        },
        v.CertificateExpired,
        "certificate",
        "CA Certificate expired on",
    ),
    BadUpload(
        "CA followed by DH parameters",
        lambda: {"certificate": material().root_pem + dh_parameters_pem()},
        v.DhParametersRejected,
        "certificate",
        "forward secrecy",
    ),
    BadUpload(
        "empty CA", lambda: {"certificate": "\n"}, v.EmptyField, "certificate", "is required"
    ),
    BadUpload(
        "CA as DER",
        lambda: {"certificate": material().root.cert.public_bytes(serialization.Encoding.DER)},
        v.NotPem,
        "certificate",
        "CA Certificate must be PEM",
    ),
]


@pytest.mark.parametrize("case", BAD_CA_UPLOADS, ids=lambda case: case.name)
def test_bad_ca_upload_is_rejected(case: BadUpload) -> None:
    with pytest.raises(v.CertificateError) as raised:
        v.validate_ca_certificate(**case.build())

    error = raised.value
    assert type(error) is case.error, error.message
    assert error.field == case.field
    assert case.message in error.message
    assert error.message.startswith("CA Certificate") or "CA Certificate" in error.message


# -- good inputs -----------------------------------------------------------------------------


def assert_accepted(result: v.ValidatedServerCertificate, expected: CertMaterial) -> None:
    """The result is normalized and describes `expected` the way the pages need it."""
    assert result.certificate_pem == expected.cert_pem
    assert result.chain_pem == expected.chain_pem
    assert result.private_key_pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    stored_key = serialization.load_pem_private_key(
        result.private_key_pem.encode(), None, unsafe_skip_rsa_key_validation=True
    )
    assert stored_key.public_key() == expected.cert.public_key()

    info = result.info
    assert info.fingerprint_sha256 == expected.cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert info.serial == f"{expected.cert.serial_number:X}".zfill(len(info.serial))
    assert int(info.serial, 16) == expected.cert.serial_number
    assert info.subject == expected.cert.subject.rfc4514_string()
    assert info.issuer == expected.cert.issuer.rfc4514_string()
    assert info.not_before == expected.cert.not_valid_before_utc
    assert info.not_after == expected.cert.not_valid_after_utc
    assert info.is_ca is False
    assert [c.subject for c in result.chain] == [c.subject.rfc4514_string() for c in expected.chain]
    assert all(c.is_ca for c in result.chain)


KEY_SIZES = {
    "rsa-1024": ("RSA", 1024),
    "rsa-2048": ("RSA", 2048),
    "rsa-4096": ("RSA", 4096),
    "ec-p256": ("ECDSA", 256),
    "ec-p384": ("ECDSA", 384),
    "ec-p521": ("ECDSA", 521),
}


@pytest.mark.parametrize("chain_depth", [0, 1, 2], ids=["no-chain", "1-intermediate", "2-deep"])
@pytest.mark.parametrize("key_type", list(ALLOWED_KEY_TYPES))
def test_every_allowed_key_type_is_accepted(key_type: str, chain_depth: int) -> None:
    sans = ["www.example.test", "example.test", "192.0.2.10"]
    expected = make_server_cert(key_type, sans=sans, chain_depth=chain_depth)

    result = v.validate_server_certificate(
        expected.cert_pem, expected.key_pem, expected.chain_pem or None
    )

    assert_accepted(result, expected)
    assert result.info.key_type == ALLOWED_KEY_TYPES[key_type]
    assert (result.info.key_algorithm, result.info.key_size) == KEY_SIZES[key_type]
    assert result.info.sans == tuple(sans)
    assert result.info.common_name == "www.example.test"
    assert result.info.primary_domain == "www.example.test"
    assert len(result.chain) == chain_depth


@pytest.mark.parametrize(
    ("key_type", "key_format", "passphrase", "marker"),
    [
        ("rsa-2048", "traditional", None, "-----BEGIN RSA PRIVATE KEY-----"),
        ("rsa-4096", "traditional", None, "-----BEGIN RSA PRIVATE KEY-----"),
        ("ec-p384", "traditional", None, "-----BEGIN EC PRIVATE KEY-----"),
        ("ec-p521", "pkcs8", None, "-----BEGIN PRIVATE KEY-----"),
        ("rsa-2048", "pkcs8", PASSPHRASE, "-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        ("ec-p256", "pkcs8", PASSPHRASE, "-----BEGIN ENCRYPTED PRIVATE KEY-----"),
        ("rsa-1024", "traditional", PASSPHRASE, "Proc-Type: 4,ENCRYPTED"),
        ("ec-p256", "traditional", PASSPHRASE, "Proc-Type: 4,ENCRYPTED"),
    ],
    ids=[
        "pkcs1-rsa2048",
        "pkcs1-rsa4096",
        "sec1-p384",
        "pkcs8-p521",
        "pkcs8-encrypted-rsa",
        "pkcs8-encrypted-ec",
        "proc-type-encrypted-rsa",
        "proc-type-encrypted-ec",
    ],
)
def test_key_formats_are_accepted_and_stored_as_plain_pkcs8(
    key_type: str, key_format: str, passphrase: str | None, marker: str
) -> None:
    expected = make_server_cert(key_type, chain_depth=1)
    key_pem = expected.key_pem_as(key_format, passphrase)
    assert marker in key_pem

    result = v.validate_server_certificate(
        expected.cert_pem, key_pem, expected.chain_pem, passphrase
    )

    assert_accepted(result, expected)
    assert "ENCRYPTED" not in result.private_key_pem


@pytest.mark.parametrize(
    "dress",
    [with_crlf, with_bom, with_blank_lines, str.encode, lambda text: with_bom(with_crlf(text))],
    ids=["crlf", "bom", "blank-lines", "bytes", "bom-and-crlf"],
)
def test_pasted_text_is_accepted_and_normalized(dress: Callable[[str], str | bytes]) -> None:
    expected = make_server_cert("rsa-2048", chain_depth=2)

    result = v.validate_server_certificate(
        dress(expected.cert_pem), dress(expected.key_pem), dress(expected.chain_pem)
    )

    assert_accepted(result, expected)
    assert "\r" not in result.certificate_pem + result.chain_pem + result.private_key_pem
    assert result.certificate_pem.endswith("-----END CERTIFICATE-----\n")


def test_openssl_ecparam_output_with_ec_parameters_block_is_accepted() -> None:
    expected = make_server_cert("ec-p384")
    ec_parameters = "-----BEGIN EC PARAMETERS-----\nBgUrgQQAIg==\n-----END EC PARAMETERS-----\n"
    key_pem = ec_parameters + expected.key_pem_as("traditional")

    result = v.validate_server_certificate(expected.cert_pem, key_pem)

    assert_accepted(result, expected)


def test_primary_domain_falls_back_to_first_dns_san_without_common_name() -> None:
    expected = make_server_cert(
        common_name=None, sans=["192.0.2.1", "api.example.test", "*.example.test"]
    )

    info = v.validate_server_certificate(expected.cert_pem, expected.key_pem).info

    assert info.common_name is None
    assert info.primary_domain == "api.example.test"
    assert info.sans == ("192.0.2.1", "api.example.test", "*.example.test")


def test_chain_may_end_with_the_root() -> None:
    expected = make_server_cert(chain_depth=1)

    result = v.validate_server_certificate(
        expected.cert_pem, expected.key_pem, expected.chain_pem + expected.root_pem
    )

    assert [c.subject for c in result.chain] == [
        "CN=Test Intermediate CA 1,O=Example Test CA",
        "CN=Test Root CA,O=Example Test CA",
    ]


def test_passphrase_is_ignored_for_an_unencrypted_key() -> None:
    expected = make_server_cert()

    result = v.validate_server_certificate(
        expected.cert_pem, expected.key_pem, "", passphrase="not needed"
    )

    assert_accepted(result, expected)
    assert result.chain == ()


def test_validity_is_checked_against_the_given_clock() -> None:
    expected = make_server_cert()
    after_expiry = expected.cert.not_valid_after_utc + timedelta(seconds=1)
    before_start = expected.cert.not_valid_before_utc - timedelta(seconds=1)

    with pytest.raises(v.CertificateExpired):
        v.validate_server_certificate(expected.cert_pem, expected.key_pem, now=after_expiry)
    with pytest.raises(v.CertificateNotYetValid):
        v.validate_server_certificate(expected.cert_pem, expected.key_pem, now=before_start)
    accepted = v.validate_server_certificate(
        expected.cert_pem, expected.key_pem, now=expected.cert.not_valid_after_utc
    )
    assert accepted.info.not_after == expected.cert.not_valid_after_utc


@pytest.mark.parametrize(
    ("key_type", "issuer_depth"),
    [("ec-p384", 0), ("rsa-4096", 0), ("ec-p256", 1)],
    ids=["root-p384", "root-rsa4096", "intermediate-p256"],
)
def test_ca_certificate_is_accepted(key_type: str, issuer_depth: int) -> None:
    issuer = make_ca("Test Root CA") if issuer_depth else None
    ca = make_ca("Client CA", key_type, issuer=issuer, slot=f"ca-test:{key_type}")

    result = v.validate_ca_certificate(with_crlf(ca.cert_pem))

    assert result.certificate_pem == ca.cert_pem
    assert result.info.is_ca is True
    assert result.info.key_type == {"ec-p384": "ECDSA P-384", "rsa-4096": "RSA 4096"}.get(
        key_type, "ECDSA P-256"
    )
    assert result.info.common_name == "Client CA"
    assert result.info.primary_domain == "Client CA"
    assert result.info.sans == ()


def test_describe_certificate_matches_validation() -> None:
    expected = make_server_cert("ec-p521", chain_depth=1)
    validated = v.validate_server_certificate(
        expected.cert_pem, expected.key_pem, expected.chain_pem
    )

    assert v.describe_certificate(validated.certificate_pem) == validated.info
    assert v.describe_certificate(expected.chain_pem) == validated.chain[0]


def test_describe_certificate_names_keys_outside_the_allowed_list() -> None:
    # Chain certificates are not restricted, so the pages must describe any key they carry.
    info = v.describe_certificate(make_server_cert("ed25519").cert_pem)

    assert (info.key_algorithm, info.key_type) == ("Ed25519", "Ed25519")


def test_normalize_pem_text_rewrites_every_block() -> None:
    expected = make_server_cert(chain_depth=2)
    messy = with_bom(with_crlf(with_blank_lines(expected.chain_pem)))

    assert v.normalize_pem_text(messy) == expected.chain_pem


def test_normalize_pem_text_attributes_errors_to_the_given_field() -> None:
    with pytest.raises(v.NotPem) as raised:
        v.normalize_pem_text(material().cert_der, field="chain")

    assert raised.value.field == "chain"
    assert raised.value.message.startswith("Certificate Chain must be PEM")
    with pytest.raises(v.EmptyField):
        v.normalize_pem_text("\r\n")
