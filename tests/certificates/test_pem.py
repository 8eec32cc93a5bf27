"""The PEM block splitter (certificates/pem.py): every block is found, nothing is skipped."""

from __future__ import annotations

import pytest

from certificates.pem import PemSyntaxError, decode_text, describe_binary, split_blocks
from tests.factories.certs import (
    PASSPHRASE,
    as_utf16,
    dh_parameters_pem,
    make_server_cert,
    with_blank_lines,
    with_bom,
)


def test_every_block_is_returned_in_order_with_its_line() -> None:
    material = make_server_cert(chain_depth=1)
    text = material.cert_pem + material.key_pem + dh_parameters_pem()

    blocks = split_blocks(text)

    assert [block.label for block in blocks] == ["CERTIFICATE", "PRIVATE KEY", "DH PARAMETERS"]
    assert blocks[0].line == 1
    assert blocks[1].line == material.cert_pem.count("\n") + 1
    assert blocks[0].der == material.cert_der


def test_to_pem_reproduces_the_canonical_armour() -> None:
    material = make_server_cert("rsa-2048", chain_depth=2)

    blocks = split_blocks(with_blank_lines(material.chain_pem))

    assert "".join(block.to_pem() for block in blocks) == material.chain_pem


def test_traditional_encrypted_key_keeps_its_headers() -> None:
    key_pem = make_server_cert("ec-p256").key_pem_as("traditional", PASSPHRASE)

    (block,) = split_blocks(key_pem)

    assert block.label == "EC PRIVATE KEY"
    assert block.headers[0] == ("Proc-Type", "4,ENCRYPTED")
    assert block.headers[1][0] == "DEK-Info"
    assert block.is_encrypted
    assert block.to_pem() == key_pem


def test_pkcs8_encrypted_key_is_marked_encrypted_and_plain_key_is_not() -> None:
    material = make_server_cert()

    (encrypted,) = split_blocks(material.key_pem_as("pkcs8", PASSPHRASE))
    (plain,) = split_blocks(material.key_pem)

    assert encrypted.is_encrypted
    assert not plain.is_encrypted


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no -----BEGIN ...----- line was found"),
        ("\n\n", "no -----BEGIN ...----- line was found"),
        ("hello\n", "line 1 is outside any BEGIN/END block"),
        ("-----END CERTIFICATE-----\n", "line 1 has an END line without its BEGIN line"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n", "starting on line 1 has no END line"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END X509 CRL-----\n", "ends with X509 CRL"),
        ("-----BEGIN CERTIFICATE-----\nAA*A\n-----END CERTIFICATE-----\n", "not valid base64"),
        ("-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n", "not valid base64"),
        ("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n", "is empty"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----BEGIN CERTIFICATE-----\n", "has no END line"),
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\nsubject=CN=x\n", "line 4"),
    ],
    ids=[
        "empty",
        "blank",
        "prose",
        "end-without-begin",
        "no-end",
        "label-mismatch",
        "bad-character",
        "bad-padding",
        "empty-block",
        "nested-begin",
        "text-after-block",
    ],
)
def test_malformed_text_names_the_problem(text: str, reason: str) -> None:
    with pytest.raises(PemSyntaxError) as raised:
        split_blocks(text)

    assert reason in raised.value.reason


def test_decode_text_strips_bom_and_normalizes_line_ends() -> None:
    cert_pem = make_server_cert().cert_pem
    old_mac = cert_pem.replace("\n", "\r")

    assert decode_text(with_bom(cert_pem.replace("\n", "\r\n"))) == cert_pem
    assert decode_text("\ufeff" + old_mac) == cert_pem


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (as_utf16("-----BEGIN CERTIFICATE-----\n"), "UTF-16"),
        ("-----BEGIN CERTIFICATE-----\n".encode("utf-16-le"), "UTF-16"),
        (b"\x00\x01\x02\x03binary", "binary data"),
        (b"\xff\xd8\xff\xe0 a JPEG", "binary data"),
        ("text with a \x00 NUL", "binary data"),
    ],
    ids=["utf-16-bom", "utf-16-le-no-bom", "nul-bytes", "invalid-utf-8", "nul-in-str"],
)
def test_decode_text_refuses_what_is_not_text(data: str | bytes, reason: str) -> None:
    with pytest.raises(PemSyntaxError) as raised:
        decode_text(data)

    assert reason in raised.value.reason


def test_describe_binary_tells_der_from_pkcs12() -> None:
    material = make_server_cert("rsa-2048")

    assert describe_binary(material.cert_der) == "it is binary DER data"
    assert describe_binary(material.pkcs12()) == "it is a PKCS#12 (.pfx/.p12) bundle"
    assert describe_binary(material.pkcs12(passphrase=None)) == (
        "it is a PKCS#12 (.pfx/.p12) bundle"
    )
    assert describe_binary(b"\x7fELF") == "it is binary data, not text"
