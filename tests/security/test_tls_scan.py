"""testssl.sh against an HTTPS listener for each predefined TLS security policy.

One node process serves five HTTPS listeners, one per predefined policy, with an RSA certificate
(the legacy policies' RSA key exchange suites need one). testssl.sh enumerates the suites each
listener offers per protocol; the test compares them with the policy's definition in
dataplane/tls.py. The vulnerability checks run once, against tls_cipher_policy_1_0: it offers
every protocol and suite any predefined policy offers, so it is the widest surface.

testssl.sh is slow, so every scan runs at once, each check in a process of its own, and only
127.0.0.1 is scanned: no DNS lookups, no CRL or OCSP fetches. Debian's OpenSSL 3 refuses TLS 1.0
and 1.1 as a client at its default security level; an OpenSSL configuration for the scanner's
processes lowers it, so that `--fast` (OpenSSL for every suite) still sees the old protocols.
"""

from __future__ import annotations

import json
import ssl
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import trustme

from dataplane.tls import PREDEFINED_POLICIES, PolicySpec
from tests.dataplane.conftest import certificate_entry, listener, snapshot
from tests.dataplane.test_process import DataplaneProcess
from tests.fixtures.ports import free_port
from tests.fixtures.processes import RecordingBackend

pytestmark = pytest.mark.integration

TESTSSL = "/usr/bin/testssl"
SCAN_TIMEOUT = 300
# testssl.sh's JSON names the protocols like this in its cipher ids ("cipher-tls1_2_xc02f").
PROTOCOL_IDS = {"tls1": "TLSv1.0", "tls1_1": "TLSv1.1", "tls1_2": "TLSv1.2", "tls1_3": "TLSv1.3"}
VERSIONS = ("TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")
# The vulnerability checks, split so that the slow ones run side by side.
VULNERABILITY_GROUPS = (
    ("-H", "-I", "-T", "-R", "-C", "-B", "-O", "-Z"),
    ("-BB",),
    ("-W", "-F", "-J", "-D", "-4"),
    ("-A",),
    ("-L",),
)
# What the seed's policies imply, not a fault of the node: TLS 1.0 with CBC suites is BEAST by
# definition (tls_cipher_policy_1_0 exists to offer it), and every predefined policy names CBC
# suites, which testssl.sh always calls "potentially" LUCKY13 (OpenSSL has the fix).
BY_DESIGN = {"BEAST", "BEAST_CBC_TLS1", "LUCKY13"}
# Checks whose result must be there and be OK.
MUST_BE_OK = {
    "heartbleed",
    "CCS",
    "ticketbleed",
    "ROBOT",
    "secure_renego",
    "secure_client_renego",
    "CRIME_TLS",
    "BREACH",
    "POODLE_SSL",
    "fallback_SCSV",
    "SWEET32",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "RC4",
}
OPENSSL_CLIENT_CONFIG = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1
CipherString = ALL:@SECLEVEL=0
"""


def run_testssl(port: int, checks: tuple[str, ...], out: Path, env: dict[str, str]) -> list[dict]:
    """One testssl.sh run against 127.0.0.1:port; its findings from the flat JSON file."""
    command = [
        TESTSSL,
        "--quiet",
        "--color",
        "0",
        "--warnings",
        "off",
        "--nodns",
        "none",
        "--ip",
        "127.0.0.1",
        "--openssl",
        "/usr/bin/openssl",
        "--connect-timeout",
        "10",
        "--openssl-timeout",
        "10",
        "--jsonfile",
        str(out),
        *checks,
        f"127.0.0.1:{port}",
    ]
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=SCAN_TIMEOUT, env=env, check=False
    )
    if not out.exists():
        raise AssertionError(f"testssl.sh wrote no findings:\n{completed.stdout}{completed.stderr}")
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Every scan, run once for the module: {"ciphers": {policy: findings}, "vulnerabilities"}."""
    tmp = tmp_path_factory.mktemp("tls-scan")
    backend = RecordingBackend("web").start()
    node = DataplaneProcess(tmp, tmp / "state")
    try:
        ca = trustme.CA()
        ports = {name: free_port() for name in PREDEFINED_POLICIES}
        document = snapshot(
            [
                listener(
                    port,
                    listener_id=f"lsn-policy{index}",
                    protocol="https",
                    default_certificate_id="cert-rsa",
                    tls_policy=name,
                )
                for index, (name, port) in enumerate(ports.items())
            ],
            [
                {
                    "id": "sgp-web",
                    "servers": [{"id": "srv-web", "address": "127.0.0.1", "port": backend.port}],
                    "health_check": {"enabled": False},
                }
            ],
            certificates=[
                certificate_entry(
                    "cert-rsa", ca.issue_cert("www.example.com", key_type=trustme.KeyType.RSA)
                )
            ],
        )
        status, answer = node.request("PUT", "/v1/config", document)
        assert status == 200, answer
        assert {result["status"] for result in answer["listeners"].values()} == {"running"}

        config = tmp / "openssl-client.cnf"
        config.write_text(OPENSSL_CLIENT_CONFIG)
        env = {"PATH": "/usr/bin:/bin", "OPENSSL_CONF": str(config), "HOME": str(tmp)}
        widest = ports["tls_cipher_policy_1_0"]
        with ThreadPoolExecutor(len(ports) + len(VULNERABILITY_GROUPS)) as pool:
            cipher_scans = {
                name: pool.submit(run_testssl, port, ("--fast", "-E"), tmp / f"{name}.json", env)
                for name, port in ports.items()
            }
            vulnerability_scans = [
                pool.submit(run_testssl, widest, group, tmp / f"vulnerabilities{index}.json", env)
                for index, group in enumerate(VULNERABILITY_GROUPS)
            ]
            yield {
                "ciphers": {name: scan.result() for name, scan in cipher_scans.items()},
                "vulnerabilities": [
                    finding for scan in vulnerability_scans for finding in scan.result()
                ],
            }
    finally:
        node.kill()
        backend.stop()


def offered(findings: list[dict]) -> dict[str, set[str]]:
    """{protocol: OpenSSL names of the suites testssl.sh found offered}."""
    suites: dict[str, set[str]] = {}
    for finding in findings:
        if not finding["id"].startswith("cipher-"):
            continue
        protocol_id = finding["id"][len("cipher-") :].rsplit("_x", 1)[0]
        # "TLS 1.2   xc02f   ECDHE-RSA-AES128-GCM-SHA256   ECDH 253 ...": the fourth word.
        name = finding["finding"].split()[3]
        suites.setdefault(PROTOCOL_IDS.get(protocol_id, protocol_id), set()).add(name)
    return suites


def openssl_has(cipher: str) -> bool:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.set_ciphers(f"{cipher}:@SECLEVEL=0")
    except ssl.SSLError:
        return False
    return True


def expected(policy: PolicySpec) -> dict[str, set[str]]:
    """The suites a policy offers per protocol with an RSA certificate, by its definition."""
    low, high = VERSIONS.index(policy.min_version), VERSIONS.index(policy.max_version)
    # An RSA certificate: no ECDSA suites. Suites this OpenSSL lacks (3DES here) are not offered.
    tls12 = {c for c in policy.ciphers if "ECDSA" not in c and openssl_has(c)}
    suites: dict[str, set[str]] = {}
    for version in VERSIONS[low : high + 1]:
        if version == "TLSv1.3":
            suites[version] = set(policy.tls13_ciphersuites)
        elif version == "TLSv1.2":
            suites[version] = tls12
        else:
            # TLS 1.0 and 1.1 have neither AEAD suites nor SHA-256/384 MACs.
            suites[version] = {c for c in tls12 if c.endswith("-SHA")}
    return {version: names for version, names in suites.items() if names}


@pytest.mark.parametrize("policy", PREDEFINED_POLICIES)
def test_policy_offers_exactly_its_protocols_and_suites(scans, policy):
    found = offered(scans["ciphers"][policy])

    assert found == expected(PREDEFINED_POLICIES[policy])
    # No SSLv2, SSLv3, nor any protocol outside the policy's range.
    assert set(found) <= set(VERSIONS)


def test_no_vulnerability_is_reported(scans):
    findings = scans["vulnerabilities"]
    severities = {finding["id"]: finding["severity"] for finding in findings}

    assert MUST_BE_OK <= set(severities), sorted(MUST_BE_OK - set(severities))
    problems = {
        finding["id"]: f"{finding['severity']}: {finding['finding']}"
        for finding in findings
        if finding["severity"] not in ("OK", "INFO") and finding["id"] not in BY_DESIGN
    }
    assert problems == {}
    assert {check: severities[check] for check in MUST_BE_OK} == dict.fromkeys(MUST_BE_OK, "OK")
