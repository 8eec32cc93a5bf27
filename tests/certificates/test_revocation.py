"""Validation of uploaded certificate revocation lists (certificates/revocation.py).

Given a client CA and CRLs generated at test time, when a CRL is validated against that CA,
then a good one (PEM or DER, the CA's own or an intermediate's) comes back with what the pages
show, and a bad one raises the named error on its field with a message that says what is wrong.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from certificates import revocation as r
from tests.factories.certs import (
    CaMaterial,
    _builder,
    _name,
    as_utf16,
    garbage_in_armour,
    make_ca,
    make_server_cert,
    pem,
    private_key,
)
from tests.factories.crls import crl_der, crl_pem, make_client_cert, make_crl

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def root():
    return make_ca("Revocation Root CA")


@pytest.fixture(scope="module")
def intermediate(root):
    return make_ca("Revocation Issuing CA", issuer=root)


def test_pem_crl_of_the_ca_is_accepted_with_its_details(root) -> None:
    alice, bob = make_client_cert(root, "alice"), make_client_cert(root, "bob")
    crl = make_crl(root, revoked=[alice.cert, bob.cert], number=42)

    validated = r.validate_crl(crl_pem(crl), root.cert_pem)

    assert validated.issuer == root.subject
    assert validated.revoked_count == 2
    assert validated.crl_number == 42
    assert validated.next_update == crl.next_update_utc
    assert validated.this_update == crl.last_update_utc
    assert validated.issuer_chain_pem == ""
    assert validated.der == crl_der(crl)
    assert r.crl_pem(validated.der) == crl_pem(crl)


def test_der_upload_and_crlf_pem_text_are_accepted(root) -> None:
    crl = make_crl(root)
    assert r.validate_crl(crl_der(crl), root.cert_pem).der == crl_der(crl)
    crlf = crl_pem(crl).replace("\n", "\r\n").encode()
    assert r.validate_crl(crlf, root.cert_pem).der == crl_der(crl)


def test_intermediate_crl_is_accepted_with_its_issuer_certificate(root, intermediate) -> None:
    crl = make_crl(intermediate, revoked=[make_client_cert(intermediate, "carol").cert])

    validated = r.validate_crl(crl_pem(crl), root.cert_pem, intermediate.cert_pem)

    assert validated.issuer == intermediate.subject
    assert validated.issuer_chain_subjects == (intermediate.subject,)
    assert validated.issuer_chain_pem == intermediate.cert_pem


def test_expired_crl_is_refused_with_its_date(root) -> None:
    crl = make_crl(root, this_update=NOW - timedelta(days=10), next_update=NOW - timedelta(days=3))
    with pytest.raises(r.CrlExpired) as caught:
        r.validate_crl(crl_pem(crl), root.cert_pem)
    assert caught.value.field == "crl"
    when = crl.next_update_utc.strftime("%Y-%m-%d %H:%M UTC")
    assert caught.value.message == (
        f"CRL expired on {when} (its next update was due then); download a current CRL from the CA."
    )


def test_crl_issued_in_the_future_is_refused(root) -> None:
    crl = make_crl(root, this_update=NOW + timedelta(days=1), next_update=NOW + timedelta(days=8))
    with pytest.raises(r.CrlNotYetValid, match=r"^CRL is not valid until "):
        r.validate_crl(crl_pem(crl), root.cert_pem)


def test_foreign_crl_is_refused_naming_both_issuers(root) -> None:
    stranger = make_ca("Somebody Else's CA")
    with pytest.raises(r.ForeignCrl) as caught:
        r.validate_crl(crl_pem(make_crl(stranger)), root.cert_pem)
    assert caught.value.field == "crl"
    assert caught.value.message.startswith(
        f"CRL is issued by {stranger.subject}, not by this CA ({root.subject})."
    )


def test_intermediate_crl_without_its_issuer_certificate_is_foreign(root, intermediate) -> None:
    with pytest.raises(r.ForeignCrl, match="Issuer Certificates"):
        r.validate_crl(crl_pem(make_crl(intermediate)), root.cert_pem)


def test_crl_signed_with_another_key_of_the_same_name_is_refused(root) -> None:
    impostor = make_ca("Revocation Root CA", slot="impostor")
    assert impostor.cert.subject == root.cert.subject
    crl = make_crl(root, signing_key=impostor.key)
    with pytest.raises(r.BadCrlSignature) as caught:
        r.validate_crl(crl_pem(crl), root.cert_pem)
    assert caught.value.message.startswith(
        f"CRL names {root.subject} as its issuer, but its signature does not verify"
    )


def test_damaged_signature_is_refused(root) -> None:
    der = bytearray(crl_der(make_crl(root)))
    der[-3] ^= 0xFF  # inside the signature value
    with pytest.raises(r.BadCrlSignature):
        r.validate_crl(bytes(der), root.cert_pem)


def test_intermediate_not_signed_by_the_ca_is_refused_on_its_field(root) -> None:
    elsewhere = make_ca("Stray Issuing CA", issuer=make_ca("Stray Root CA"))
    with pytest.raises(r.IssuerChainError) as caught:
        r.validate_crl(crl_pem(make_crl(elsewhere)), root.cert_pem, elsewhere.cert_pem)
    assert caught.value.field == "issuer_chain"
    assert "is not signed by this CA" in caught.value.message


def test_issuer_that_is_not_a_ca_is_refused(root) -> None:
    leaf = make_server_cert(root=root)
    signer = CaMaterial(cert=leaf.cert, key=leaf.key)
    with pytest.raises(r.IssuerChainError, match="is not a CA certificate"):
        r.validate_crl(crl_pem(make_crl(signer)), root.cert_pem, pem(leaf.cert))


def test_ca_whose_key_usage_lacks_crl_sign_is_refused(root) -> None:
    key = private_key("ec-p256", "no-crl-sign")
    builder = _builder(
        subject=_name("Signs Certificates Only"),
        public_key=key.public_key(),
        issuer=root,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=30),
    )
    builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    usage = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    builder = builder.add_extension(x509.KeyUsage(key_cert_sign=True, **usage), critical=True)
    signer = CaMaterial(cert=builder.sign(root.key, hashes.SHA256()), key=key)

    with pytest.raises(r.BadCrlSignature) as caught:
        r.validate_crl(crl_pem(make_crl(signer)), root.cert_pem, signer.cert_pem)
    assert caught.value.message == (
        f"{signer.subject} may not sign CRLs: its certificate's Key Usage lacks cRLSign, so the "
        "node would refuse this CRL."
    )


def test_delta_crl_is_refused(root) -> None:
    crl = make_crl(root, extensions=[(x509.DeltaCRLIndicator(1), True)])
    with pytest.raises(r.UnsupportedCrl, match="delta CRL"):
        r.validate_crl(crl_pem(crl), root.cert_pem)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "CRL is required.", id="empty"),
        pytest.param(b"\x30\x82\x01\x00" + b"\x00" * 64, "CRL is not a readable", id="bad-der"),
        pytest.param(
            garbage_in_armour("X509 CRL"), "CRL is not a readable", id="garbage-in-armour"
        ),
        pytest.param(b"hello, world\n", "CRL must be PEM text", id="text"),
        pytest.param(b"\x89PNG\r\n\x1a\n\x00\x00", "CRL must be PEM text", id="binary"),
    ],
)
def test_garbage_is_refused_with_a_message(root, data, message) -> None:
    with pytest.raises(r.CrlError) as caught:
        r.validate_crl(data, root.cert_pem)
    assert caught.value.field == "crl"
    assert caught.value.message.startswith(message)


def test_utf16_text_is_refused_with_how_to_fix_it(root) -> None:
    with pytest.raises(r.UnreadableCrl, match="UTF-16"):
        r.validate_crl(as_utf16(crl_pem(make_crl(root))), root.cert_pem)


def test_a_certificate_uploaded_as_crl_is_named(root) -> None:
    with pytest.raises(r.UnreadableCrl, match="the block on line 1 is a certificate"):
        r.validate_crl(root.cert_pem, root.cert_pem)


def test_two_crls_in_one_upload_are_refused(root) -> None:
    text = crl_pem(make_crl(root)) + crl_pem(make_crl(root, number=2))
    with pytest.raises(r.UnreadableCrl, match="found 2"):
        r.validate_crl(text, root.cert_pem)


def test_oversized_upload_is_refused_before_parsing(root) -> None:
    data = crl_pem(make_crl(root)).encode() + b"\n" * r.MAX_CRL_BYTES
    with pytest.raises(r.CrlTooLarge) as caught:
        r.validate_crl(data, root.cert_pem)
    assert caught.value.message == "CRL is 1.0 MiB; the limit is 1 MiB."


def test_a_large_crl_within_the_limit_is_accepted(root) -> None:
    # 5,000 revoked serial numbers: a busy private CA.
    revoked = [
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(NOW - timedelta(days=1))
        .build()
        for serial in range(1, 5001)
    ]
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(root.cert.subject)
        .last_update(NOW - timedelta(hours=1))
        .next_update(NOW + timedelta(days=1))
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(root.key, hashes.SHA256())
    assert r.validate_crl(crl_der(crl), root.cert_pem).revoked_count == 5000
