"""Fill the certificate placeholders of an example snapshot with freshly made demo certificates.

    python -m dataplane.example docs/examples/https.json --out-dir /tmp/demo > /tmp/demo/https.json

The examples in docs/examples/ hold no key material. A server certificate is written as
"<PEM certificate for NAME NAME ...>" (its private key as "<PEM private key>"), a CA certificate for
mutual authentication as "<PEM CA certificate>". This tool issues a server certificate for those
names from a throwaway server CA, and a client certificate from a throwaway client CA whose
certificate replaces the CA placeholder. The filled snapshot goes to stdout; with --out-dir, the
files a client needs (server-ca.pem, client.pem, client.key) are written there for curl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_CERTIFICATE = re.compile(r"^<PEM certificate for (?P<names>[^>]+)>$")
_CA = "<PEM CA certificate>"


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


class DemoCa:
    """A throwaway certificate authority (ECDSA P-256, valid for 30 days)."""

    def __init__(self, common_name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
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
            .sign(self.key, hashes.SHA256())
        )
        self.pem = _pem(self.certificate)

    def issue(
        self, common_name: str, dns_names: list[str], *, client: bool = False
    ) -> tuple[str, str]:
        """(certificate PEM, private key PEM) of a new leaf certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if dns_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]),
                critical=False,
            )
        return _pem(builder.sign(self.key, hashes.SHA256())), _key_pem(key)


def fill(snapshot: dict[str, Any], out_dir: Path | None = None) -> dict[str, Any]:
    """Replace the placeholders in a snapshot (a dict from the example JSON) in place."""
    server_ca = DemoCa("Dataplane demo server CA")
    client_ca = DemoCa("Dataplane demo client CA")
    for certificate in snapshot.get("certificates", []):
        match = _CERTIFICATE.match(certificate.get("certificate_pem", ""))
        if match is None:
            continue
        names = match["names"].split()
        certificate["certificate_pem"], certificate["private_key_pem"] = server_ca.issue(
            names[0], names
        )
        certificate["chain_pem"] = server_ca.pem
    for ca_certificate in snapshot.get("ca_certificates", []):
        if ca_certificate.get("certificate_pem") == _CA:
            ca_certificate["certificate_pem"] = client_ca.pem
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        client_pem, client_key = client_ca.issue("demo-client", [], client=True)
        (out_dir / "server-ca.pem").write_text(server_ca.pem)
        (out_dir / "client.pem").write_text(client_pem)
        key_file = out_dir / "client.key"
        key_file.touch(mode=0o600)
        key_file.write_text(client_key)
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dataplane.example", description=__doc__)
    parser.add_argument("example", type=Path, help="an example snapshot from docs/examples/")
    parser.add_argument("--out-dir", type=Path, help="where to write server-ca.pem and client.*")
    args = parser.parse_args(argv)
    snapshot = fill(json.loads(args.example.read_text()), args.out_dir)
    json.dump(snapshot, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
