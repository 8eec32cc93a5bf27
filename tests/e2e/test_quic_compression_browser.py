"""Seeds 001 and 003 end to end: Chromium runs the wizard twice, for a QUIC listener and for an
HTTPS listener on the same server group with QUIC Upgrade and Brotli+Gzip compression. A real
aioquic HTTP/3 client, http.client over TLS and a `websockets` client then talk through the
dataplane to one real backend, a `websockets` server that also answers plain HTTP requests and
records every request it gets."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import http.client
import json
import socket
import ssl
import threading
from dataclasses import dataclass, field
from pathlib import Path

import brotli
import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from playwright.sync_api import Page, expect
from websockets.datastructures import Headers
from websockets.http11 import Request, Response
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import Server, ServerConnection, serve

from certificates.models import Certificate
from console.models import Instance
from listeners.models import Listener
from tests.dataplane.test_quic import H3Client
from tests.e2e.test_listener_wizard_browser import open_advanced_settings
from tests.factories.certs import make_server_cert
from tests.fixtures.nodes import register_node
from tests.fixtures.ports import free_udp_port
from tests.fixtures.processes import free_port, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]
HOST = "edge.example.test"
WAIT = 10.0

# Bodies over seed 001's 1,024-byte threshold, of a type Gzip compresses (JSON) and of one it
# does not (HTML; Brotli compresses every type), and one under the threshold.
CATALOG = json.dumps(
    [{"sku": f"sku-{n:04d}", "name": f"Item number {n}", "price": n * 7 % 101} for n in range(120)]
).encode()
PAGE = (
    "<!doctype html><html><body><ul>"
    + "".join(f"<li>Row {n}: {'lorem ipsum ' * 3}</li>" for n in range(80))
    + "</ul></body></html>"
).encode()
SMALL = json.dumps({"ok": True, "note": "well under the threshold"}).encode()
CONTENT = {
    "/catalog.json": ("application/json", CATALOG),
    "/page.html": ("text/html; charset=utf-8", PAGE),
    "/small.json": ("application/json", SMALL),
    "/": ("text/plain", b"ok"),
}


@dataclass
class WebBackend:
    """A real `websockets` server: WebSocket upgrades get an echo, other GETs get CONTENT.

    Every request is recorded with its path and headers (case-insensitive).
    """

    requests: list[dict] = field(default_factory=list)
    echoed: list[str] = field(default_factory=list)
    server: Server | None = None
    port: int = 0

    def answer(self, connection: ServerConnection, request: Request) -> Response | None:
        self.requests.append({"path": request.path, "headers": request.headers})
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None  # the handshake goes on: this is the echo server
        path = request.path.partition("?")[0]
        content_type, body = CONTENT.get(path, ("text/plain", b"not found"))
        status = 200 if path in CONTENT else 404
        headers = Headers(
            [
                ("Content-Type", content_type),
                ("Content-Length", str(len(body))),
                ("Connection", "close"),
            ]
        )
        return Response(status, "OK" if status == 200 else "Not Found", headers, body)

    def echo(self, connection: ServerConnection) -> None:
        for message in connection:
            self.echoed.append(message)
            connection.send(message)

    def start(self) -> WebBackend:
        self.server = serve(self.echo, "127.0.0.1", 0, process_request=self.answer)
        self.port = self.server.socket.getsockname()[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()

    def proxied(self, path: str) -> list[dict]:
        """The requests for ``path`` (health checks ask for /)."""
        return [r for r in self.requests if r["path"] == path]


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class EdgeConnection(http.client.HTTPSConnection):
    """HTTPS to 127.0.0.1 with SNI and certificate checks for HOST, as a client resolving HOST."""

    def connect(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), self.timeout)
        self.sock = self._context.wrap_socket(raw, server_hostname=HOST)


def https_get(
    port: int, context: ssl.SSLContext, path: str, accept_encoding: str | None
) -> tuple[int, dict[str, str], bytes]:
    connection = EdgeConnection(HOST, port, timeout=WAIT, context=context)
    try:
        headers = {"Accept-Encoding": accept_encoding} if accept_encoding else {}
        # http.client would add "Accept-Encoding: identity" on its own; send exactly ours.
        connection.putrequest("GET", path, skip_accept_encoding=True)
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        connection.close()


def http3_get(root_pem: str, port: int, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """One HTTP/3 request with aioquic's client, TLS checked against the test CA for HOST."""

    async def run() -> tuple[int, dict[bytes, bytes], bytes]:
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=list(H3_ALPN), server_name=HOST, idle_timeout=WAIT
        )
        configuration.load_verify_locations(cadata=root_pem.encode())
        async with asyncio.timeout(WAIT):
            async with quic_connect(
                "127.0.0.1", port, configuration=configuration, create_protocol=H3Client
            ) as client:
                return await client.request(b"GET", path.encode())  # type: ignore[attr-defined]

    # Playwright's sync API keeps an event loop in the test thread: run this one in another.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def upload_certificate(page: Page, base_url: str, tmp_path: Path, material) -> Certificate:
    (tmp_path / "cert.pem").write_text(material.cert_pem)
    (tmp_path / "key.pem").write_text(material.key_pem)
    page.goto(base_url + "/certificates/")
    page.get_by_role("link", name="Upload Server Certificate").click()
    dialog = page.get_by_role("dialog", name="Upload Server Certificate")
    dialog.get_by_label("Certificate Name").fill("edge")
    dialog.get_by_label("Certificate file").set_input_files(tmp_path / "cert.pem")
    dialog.get_by_label("Private Key file").set_input_files(tmp_path / "key.pem")
    dialog.get_by_role("button", name="Upload", exact=True).click()
    expect(page.get_by_text(material.fingerprint_sha256)).to_be_visible()
    return Certificate.objects.get(name="edge")


def test_wizard_quic_listener_then_https_with_quic_upgrade_compression_and_websocket(
    signed_in_page: Page, live_server, control_plane, tmp_path: Path, monkeypatch
) -> None:
    page = signed_in_page
    instance = Instance.objects.create(name="edge")
    node = control_plane.node("node-1")
    register_node(instance, node.url, name="node-1", token=node.token)
    worker = control_plane.worker()
    wait_until(lambda: "ready" in worker.log(), timeout=30)
    # H3Client sends the module's SERVER_NAME as :authority; this client asks for HOST.
    monkeypatch.setattr("tests.dataplane.test_quic.SERVER_NAME", HOST)
    backend = WebBackend().start()
    material = make_server_cert("ec-p256", sans=[HOST])
    client = ssl.create_default_context(cadata=material.root_pem)
    quic_port, https_port = free_udp_port(), free_port()
    try:
        edge = upload_certificate(page, live_server.url, tmp_path, material)

        # --- Wizard 1: a QUIC listener with a new HTTP server group. ---------------------------
        page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")
        page.get_by_role("link", name="Create Listener", exact=True).click()
        page.get_by_label("Listener Protocol", exact=True).select_option("QUIC")
        # The fields re-render for QUIC (port 443 suggested) before anything is typed.
        expect(page.get_by_label("Listener Port", exact=True)).to_have_value("443")
        page.get_by_label("Listener Port", exact=True).fill(str(quic_port))
        page.get_by_label("Listener Name", exact=True).fill("edge-quic")
        open_advanced_settings(page)
        # QUIC carries HTTP/3, a Layer-7 listener (seed 003): the header options and Data
        # Compression apply.
        expect(page.get_by_label("Data Compression", exact=True)).to_be_visible()
        page.get_by_label("X-Forwarded-Proto: Retrieve Listener Protocol", exact=True).check()
        page.get_by_role("button", name="Next").last.click()
        # Seed 003: a QUIC listener needs a server certificate and nothing else.
        expect(page.get_by_label("TLS Security Policy", exact=True)).to_have_count(0)
        expect(page.get_by_role("group", name="Mutual Authentication")).to_have_count(0)
        page.get_by_label("Server Certificate", exact=True).select_option(value=edge.id)
        page.get_by_role("button", name="Next").last.click()
        page.get_by_label("Create Server Group").check()
        page.get_by_label("Server Group Name", exact=True).fill("edge-web")
        protocol = page.get_by_label("Backend Protocol", exact=True)
        expect(protocol.locator("option")).to_have_text(["HTTP"])
        page.get_by_label("Server Address, row 1", exact=True).fill("127.0.0.1")
        page.get_by_label("Port, row 1", exact=True).fill(str(backend.port))
        page.get_by_role("button", name="Next").last.click()
        page.get_by_role("button", name="Next").last.click()
        page.get_by_role("button", name="Submit").click()

        expect(page.locator("#listener-status")).to_contain_text("Running", timeout=20_000)
        quic = Listener.objects.get(name="edge-quic")
        assert (quic.protocol, quic.port, quic.default_certificate_id) == (
            "quic",
            quic_port,
            edge.id,
        )

        # A real HTTP/3 request reaches the backend with the forwarded headers.
        status, head, body = http3_get(material.root_pem, quic_port, "/catalog.json?via=h3")
        assert (status, body) == (200, CATALOG), node.log()[-3000:]
        assert head[b"content-type"] == b"application/json"
        [seen] = backend.proxied("/catalog.json?via=h3")
        assert seen["headers"].get("X-Forwarded-For") == "127.0.0.1"
        assert seen["headers"].get("X-Forwarded-Proto") == "https"

        # --- Wizard 2: HTTPS on the same group, QUIC Upgrade and Brotli+Gzip. ------------------
        page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")
        page.get_by_role("link", name="Create Listener", exact=True).click()
        page.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
        expect(page.get_by_label("Listener Port", exact=True)).to_have_value("443")
        page.get_by_label("Listener Port", exact=True).fill(str(https_port))
        page.get_by_label("Listener Name", exact=True).fill("edge-https")
        open_advanced_settings(page)
        page.get_by_label("Data Compression", exact=True).select_option("Brotli and Gzip")
        page.get_by_label("QUIC Upgrade: Associated QUIC Listener", exact=True).select_option(
            value=quic.id
        )
        page.get_by_label("X-Forwarded-Proto: Retrieve Listener Protocol", exact=True).check()
        page.get_by_role("button", name="Next").last.click()
        page.get_by_label("Server Certificate", exact=True).select_option(value=edge.id)
        page.get_by_role("button", name="Next").last.click()
        page.get_by_label("Select Server Group", exact=True).select_option(
            value=quic.server_group_id
        )
        expect(page.get_by_role("table", name="Servers of the selected group")).to_contain_text(
            str(backend.port)
        )
        page.get_by_role("button", name="Next").last.click()
        page.get_by_role("button", name="Next").last.click()
        page.get_by_role("button", name="Submit").click()

        expect(page.locator("#listener-status")).to_contain_text("Running", timeout=20_000)
        expect(page.locator("dt:text-is('Data Compression') + dd")).to_have_text("Brotli and Gzip")
        expect(page.get_by_text(f"(port {quic_port}, advertised with Alt-Svc)")).to_be_visible()
        https = Listener.objects.get(name="edge-https")
        assert (https.compression, https.quic_listener_id, https.server_group_id) == (
            "brotli_gzip",
            quic.id,
            quic.server_group_id,
        )
        assert wait_until(lambda: accepting(https_port), timeout=10), node.log()[-3000:]

        # Brotli wins when the client takes both; the body decodes to the backend's bytes.
        status, headers, body = https_get(https_port, client, "/catalog.json", "gzip, br")
        assert status == 200
        assert headers.get("content-encoding") == "br"
        assert brotli.decompress(body) == CATALOG
        assert headers.get("alt-svc") == f'h3=":{quic_port}"; ma=86400'
        [seen] = backend.proxied("/catalog.json")
        assert seen["headers"].get("X-Forwarded-For") == "127.0.0.1"
        assert seen["headers"].get("X-Forwarded-Proto") == "https"

        # Gzip only: JSON is on the Gzip list.
        status, headers, body = https_get(https_port, client, "/catalog.json", "gzip")
        assert (status, headers.get("content-encoding")) == (200, "gzip")
        assert gzip.decompress(body) == CATALOG
        assert headers.get("alt-svc") == f'h3=":{quic_port}"; ma=86400'

        # HTML: Brotli compresses every type, Gzip does not take text/html (seed 001).
        status, headers, body = https_get(https_port, client, "/page.html", "br, gzip")
        assert (status, headers.get("content-encoding")) == (200, "br")
        assert brotli.decompress(body) == PAGE
        status, headers, body = https_get(https_port, client, "/page.html", "gzip")
        assert (status, headers.get("content-encoding"), body) == (200, None, PAGE)

        # Under 1,024 bytes nothing is compressed, whatever the client accepts.
        status, headers, body = https_get(https_port, client, "/small.json", "gzip, br")
        assert (status, headers.get("content-encoding"), body) == (200, None, SMALL)
        assert headers.get("alt-svc") == f'h3=":{quic_port}"; ma=86400'

        # Without Accept-Encoding the body comes as the backend sent it.
        status, headers, body = https_get(https_port, client, "/catalog.json", None)
        assert (status, headers.get("content-encoding"), body) == (200, None, CATALOG)

        # The Alt-Svc advertisement is true: HTTP/3 on the advertised port works.
        status, _, body = http3_get(material.root_pem, quic_port, "/page.html")
        assert (status, body) == (200, PAGE)

        # --- WebSocket pass-through over wss (seed 003, on by default). ------------------------
        messages = ["hello", "ferry " * 400, "last"]
        with ws_connect(
            f"wss://{HOST}:{https_port}/chat",
            sock=socket.create_connection(("127.0.0.1", https_port), timeout=WAIT),
            ssl=client,
            open_timeout=WAIT,
            close_timeout=WAIT,
        ) as websocket:
            replies = []
            for message in messages:
                websocket.send(message)
                replies.append(websocket.recv(timeout=WAIT))
        assert replies == messages
        assert backend.echoed == messages
        [upgrade] = backend.proxied("/chat")
        assert upgrade["headers"].get("Upgrade", "").lower() == "websocket"
        assert upgrade["headers"].get("X-Forwarded-For") == "127.0.0.1"
        assert upgrade["headers"].get("X-Forwarded-Proto") == "https"

        # --- Only a running QUIC listener is advertised: stop it, then start it again. --------
        page.get_by_role("link", name="edge-quic").click()
        expect(page.get_by_role("heading", name="edge-quic")).to_be_visible()
        page.get_by_role("link", name="Stop").first.click()
        page.get_by_role("dialog", name="Stop Listener").get_by_role("button", name="OK").click()
        expect(page.locator("#listener-status")).to_contain_text("Stopped", timeout=20_000)
        status, headers, _ = https_get(https_port, client, "/small.json", None)
        assert status == 200
        assert "alt-svc" not in headers
        page.get_by_role("link", name="Start").first.click()
        page.get_by_role("dialog", name="Start Listener").get_by_role("button", name="OK").click()
        expect(page.locator("#listener-status")).to_contain_text("Running", timeout=20_000)
        status, headers, _ = https_get(https_port, client, "/small.json", None)
        assert headers.get("alt-svc") == f'h3=":{quic_port}"; ma=86400'
        assert http3_get(material.root_pem, quic_port, "/small.json")[::2] == (200, SMALL)

        # --- Modify Listener: seed 000's Gzip only, QUIC Upgrade off. --------------------------
        page.goto(live_server.url + https.get_absolute_url())
        page.get_by_role("link", name="Modify Listener").click()
        dialog = page.get_by_role("dialog", name="Modify Listener")
        compression = dialog.get_by_label("Data Compression", exact=True)
        expect(compression).to_have_value("brotli_gzip")
        compression.select_option("Gzip")
        dialog.get_by_label("QUIC Upgrade: Associated QUIC Listener", exact=True).select_option(
            "Off"
        )
        dialog.get_by_role("button", name="Save").click()
        expect(page.get_by_text("Listener edge-https modified.")).to_be_visible()
        expect(page.locator("#listener-status")).to_contain_text("Running", timeout=20_000)
        expect(page.locator("dt:text-is('Data Compression') + dd")).to_have_text("Gzip")
        expect(page.locator("dt:text-is('QUIC Upgrade') + dd")).to_have_text("Off")
        https.refresh_from_db()
        assert (https.compression, https.quic_listener_id) == ("gzip", None)
        # A client taking both now gets Gzip, and HTTP/3 is no longer advertised.
        status, headers, body = https_get(https_port, client, "/catalog.json", "gzip, br")
        assert (status, headers.get("content-encoding")) == (200, "gzip")
        assert gzip.decompress(body) == CATALOG
        assert "alt-svc" not in headers
        # Gzip alone never takes HTML, and never Brotli.
        status, headers, body = https_get(https_port, client, "/page.html", "br, gzip")
        assert (status, headers.get("content-encoding"), body) == (200, None, PAGE)
    finally:
        backend.stop()


def test_the_step_indicator_follows_the_protocol_select_for_quic(
    signed_in_page: Page, live_server
) -> None:
    """On step 1 the indicator follows the Listener Protocol select. QUIC listeners have an SSL
    Certificate step (seed 003: a server certificate), so the indicator must list it, as it
    does for HTTPS, before Next is pressed; and a protocol without one must not."""
    page = signed_in_page
    instance = Instance.objects.create(name="steps")
    page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")
    page.get_by_role("link", name="Create Listener", exact=True).click()
    steps = page.get_by_role("list", name="Wizard steps").locator("li:visible")
    with_certificate = [
        "Protocol & Listener",
        "SSL Certificate",
        "Server Group",
        "Health Check",
        "Confirm",
    ]
    page.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("443")
    expect(steps).to_have_text(with_certificate)
    page.get_by_label("Listener Protocol", exact=True).select_option("UDP")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("5353")
    expect(steps).to_have_text([s for s in with_certificate if s != "SSL Certificate"])
    page.get_by_label("Listener Protocol", exact=True).select_option("QUIC")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("443")
    expect(steps).to_have_text(with_certificate)
    # And Next leads to exactly that step.
    page.get_by_role("button", name="Next").last.click()
    current = page.get_by_role("list", name="Wizard steps").locator("[aria-current=step]")
    expect(current).to_have_text("SSL Certificate")
    # Back on step 1 with QUIC in the draft, UDP has no certificate step.
    page.get_by_role("link", name="Protocol & Listener").click()
    page.get_by_label("Listener Protocol", exact=True).select_option("UDP")
    expect(page.get_by_label("Listener Port", exact=True)).to_have_value("5353")
    expect(steps).to_have_text([s for s in with_certificate if s != "SSL Certificate"])
