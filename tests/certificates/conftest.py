"""A real ACME CA for the ACME tests: Debian's pebble, with pebble-challtestsrv as its DNS.

Every name resolves to 127.0.0.1, and pebble validates HTTP-01 and TLS-ALPN-01 on the ports the
test's listeners use (its httpPort and tlsPort), which the console is told through its
ACME_HTTP01_PORT and ACME_TLS_ALPN01_PORT settings. Pebble serves its directory over HTTPS with a
certificate made here by trustme, so nothing with a key is committed.
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from tests.fixtures.processes import free_port, wait_until

PEBBLE = shutil.which("pebble") or "/usr/bin/pebble"
CHALLTESTSRV = shutil.which("pebble-challtestsrv") or "/usr/bin/pebble-challtestsrv"


@dataclass
class Pebble:
    directory_url: str
    management_url: str
    ca_bundle: Path
    http_port: int
    tls_port: int
    dns_management_url: str
    log: Path

    def _get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=str(self.ca_bundle))
        with urllib.request.urlopen(url, context=context, timeout=10) as response:
            return response.read()

    def root_pem(self) -> str:
        """The root the issued chains lead to (pebble makes a new one at every start)."""
        return self._get(f"{self.management_url}/roots/0").decode()

    def dns(self, command: str, **body: object) -> None:
        """pebble-challtestsrv's management API: add-a, set-servfail, clear-a..."""
        request = urllib.request.Request(
            f"{self.dns_management_url}/{command}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


@pytest.fixture
def pebble(tmp_path: Path, settings) -> Iterator[Pebble]:
    if not (Path(PEBBLE).exists() and Path(CHALLTESTSRV).exists()):
        pytest.fail("pebble is not installed: make chromium installs it (apt-get install pebble)")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, bundle = tmp_path / "pebble.pem", tmp_path / "pebble.key", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(bundle))
    listen, management, dns, dns_management = (free_port() for _ in range(4))
    http_port, tls_port = free_port(), free_port()
    config = tmp_path / "pebble-config.json"
    config.write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{listen}",
                    "managementListenAddress": f"127.0.0.1:{management}",
                    "certificate": str(cert),
                    "privateKey": str(key),
                    "httpPort": http_port,
                    "tlsPort": tls_port,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    log = tmp_path / "pebble.log"
    env = {
        "PATH": "/usr/bin:/bin",
        # No random validation delays, no refused nonces, and every order validated afresh.
        "PEBBLE_VA_NOSLEEP": "1",
        "PEBBLE_WFE_NONCEREJECT": "0",
        "PEBBLE_AUTHZREUSE": "0",
    }
    with log.open("ab") as out:
        dns_server = subprocess.Popen(
            [
                CHALLTESTSRV,
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                f"127.0.0.1:{dns}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{dns_management}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
        server = subprocess.Popen(
            [PEBBLE, "-config", str(config), "-dnsserver", f"127.0.0.1:{dns}"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=tmp_path,
        )
    ca_ = Pebble(
        directory_url=f"https://127.0.0.1:{listen}/dir",
        management_url=f"https://127.0.0.1:{management}",
        ca_bundle=bundle,
        http_port=http_port,
        tls_port=tls_port,
        dns_management_url=f"http://127.0.0.1:{dns_management}",
        log=log,
    )

    def ready() -> bool:
        try:
            ca_._get(ca_.directory_url)
            ca_.dns("clear-a", host="probe.test")
        except OSError:
            return False
        return True

    try:
        wait_until(ready, timeout=20, interval=0.1)
        settings.ACME_CA_BUNDLE = str(bundle)
        settings.ACME_HTTP01_PORT = http_port
        settings.ACME_TLS_ALPN01_PORT = tls_port
        settings.ACME_ORDER_TIMEOUT = 60
        yield ca_
    finally:
        for process in (server, dns_server):
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
