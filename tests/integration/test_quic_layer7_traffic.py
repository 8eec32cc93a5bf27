"""From the console's Create Listener wizard to real HTTP/3 requests: a QUIC listener with
Forwarding Rules, Gzip compression, Insert Cookie persistence and the managed headers (seed 003
lists QUIC with HTTP and HTTPS as a Layer-7 listener).

The wizard and the Forwarding Rules dialog are submitted with Django's test client as the operator's
browser would; a real Celery worker pushes the snapshot to a real dataplane node process; aioquic's
client (tests/dataplane/test_quic.py's H3Client) sends the requests; recording backends say what
reached them.
"""

from __future__ import annotations

import asyncio
import gzip
from urllib.parse import urlsplit

import pytest
from aioquic.asyncio.client import connect as quic_connect
from aioquic.h3.connection import H3_ALPN
from aioquic.quic.configuration import QuicConfiguration
from django.db import transaction
from django.test import Client
from django.urls import reverse

from certificates.models import Certificate
from console.models import Instance
from listeners.models import Listener, ServerGroup
from listeners.services import create_server_group
from tests.dataplane.test_datagram_node import free_udp_port
from tests.dataplane.test_quic import SERVER_NAME, H3Client
from tests.factories.certs import CertMaterial, make_server_cert
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import ControlPlane, RecordingBackend, wait_until
from tests.fixtures.users import make_user
from tests.listeners.test_wizard import ADVANCED_DEFAULTS, post_step, servers_data, step_url

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

WAIT = 10.0
CONVERGENCE = 30.0
# A text/plain answer over seed 001's 1,024-byte threshold: the web backends answer with their
# names, so the names are the bodies.
WEB_A = "web-a " + "the quick brown fox jumps over the lazy dog. " * 60
WEB_B = "web-b " + "pack my box with five dozen liquor jugs. " * 60


Response = tuple[int, dict[bytes, bytes], bytes]


async def _h3(port: int, root_pem: str, requests: list[tuple[str, list]]) -> list[Response]:
    configuration = QuicConfiguration(
        is_client=True, alpn_protocols=list(H3_ALPN), server_name=SERVER_NAME, idle_timeout=WAIT
    )
    configuration.load_verify_locations(cadata=root_pem.encode())
    async with asyncio.timeout(WAIT * 2):
        async with quic_connect(
            "127.0.0.1", port, configuration=configuration, create_protocol=H3Client
        ) as client:
            return [
                await client.request(b"GET", path.encode(), headers)  # type: ignore[attr-defined]
                for path, headers in requests
            ]


def h3_get(port: int, root_pem: str, *requests: tuple[str, list]) -> list[Response]:
    """GET requests, one after the other on one HTTP/3 connection."""
    return asyncio.run(_h3(port, root_pem, list(requests)))


def served_by(backend: RecordingBackend, path: str) -> list[dict]:
    """What ``backend`` received for ``path``, header names lower-cased."""
    return [
        {"path": r["path"], "headers": {k.lower(): v for k, v in r["headers"].items()}}
        for r in backend.requests
        if r["path"] == path
    ]


def settled(listener: Listener) -> Listener:
    """Wait until the nodes answered for the last change; fail with the node's reason if not
    Running."""
    wait_until(
        lambda: (
            Listener.objects.get(pk=listener.pk).configuring_since is None
            and Listener.objects.get(pk=listener.pk).status != Listener.Status.CONFIGURING
        ),
        timeout=CONVERGENCE,
    )
    listener = Listener.objects.get(pk=listener.pk)
    assert listener.status == Listener.Status.RUNNING, listener.last_error
    return listener


class Edge:
    """The instance, its node, the backends and the operator's signed-in browser."""

    def __init__(self, plane: ControlPlane, backends) -> None:
        self.web_a = backends(WEB_A)
        self.web_b = backends(WEB_B)
        self.api = backends("api")
        node = plane.node("edge-node")
        self.instance = Instance.objects.create(
            name="edge", edition=Instance.Edition.STANDARD, bind_address="127.0.0.1"
        )
        register_node(self.instance, node.url, name=node.name, token=node.token)
        worker = plane.worker()
        wait_until(lambda: "ready" in worker.log(), timeout=60)
        with transaction.atomic():
            self.api_group = create_server_group(
                name="api",
                backend_protocol=ServerGroup.BackendProtocol.HTTP,
                servers=[{"address": "127.0.0.1", "port": self.api.port}],
            )
        self.browser = Client()
        self.browser.force_login(make_user("operator", "Administrators"))
        self.material: CertMaterial = make_server_cert("ec-p256", sans=[SERVER_NAME])
        self.port = free_udp_port()

    def upload_certificate(self) -> Certificate:
        self.browser.post(
            reverse("certificate-upload", args=["server"]),
            {
                "name": "edge",
                "certificate": self.material.cert_pem,
                "private_key": self.material.key_pem,
            },
        )
        return Certificate.objects.get(name="edge")

    def run_wizard(self) -> Listener:
        """Create Listener: QUIC with Gzip, Insert Cookie and X-Forwarded-Proto, a new server
        group of the two web backends, no health check, Submit."""
        certificate = self.upload_certificate()
        instance, browser = self.instance, self.browser
        step1 = {
            **ADVANCED_DEFAULTS,
            "protocol": "quic",
            "port": str(self.port),
            "name": "edge-h3",
            "persistence": "insert_cookie",
            "persistence_timeout": "600",
            "compression": "gzip",
            "header_x_forwarded_proto": "on",
        }
        response = post_step(browser, instance, "protocol", step1)
        assert response.status_code == 302, response.context["form"].errors
        response = post_step(
            browser, instance, "certificate", {"default_certificate": certificate.id}
        )
        assert response.status_code == 302, response.context["form"].errors
        response = post_step(
            browser,
            instance,
            "servergroup",
            {"group_mode": "new", "new_group_name": "web", "new_backend_protocol": "http"}
            | servers_data(
                [("127.0.0.1", self.web_a.port, 100), ("127.0.0.1", self.web_b.port, 100)]
            ),
        )
        assert response.status_code == 302, response.context["form"].errors
        response = post_step(
            browser,
            instance,
            "healthcheck",
            {
                "protocol": "http",
                "path": "/",
                "interval": "5",
                "timeout": "2",
                "healthy_threshold": "3",
                "unhealthy_threshold": "3",
                "expected_codes": ["http_2xx"],
            },
        )
        assert response.status_code == 302, response.context["form"].errors
        confirm = browser.get(step_url(instance, "confirm"))
        assert confirm.status_code == 200, confirm.get("Location")
        response = browser.post(
            step_url(instance, "confirm"), {"token": confirm.context["token"], "action": "submit"}
        )
        listener = Listener.objects.get(protocol="quic")
        assert response["Location"] == listener.get_absolute_url()
        return settled(listener)

    def add_rule(self, listener: Listener, fields: dict) -> Listener:
        """The Forwarding Rules dialog's Add Rule, then wait for the nodes to apply it."""
        response = self.browser.post(
            reverse("listener-rule-create", args=[self.instance.id, listener.id]), fields
        )
        assert response.status_code == 302, response.context["form"].errors
        return settled(listener)

    def get(self, *requests: tuple[str, list]) -> list[Response]:
        return h3_get(self.port, self.material.root_pem, *requests)


@pytest.fixture
def edge(control_plane: ControlPlane, backends) -> Edge:
    return Edge(control_plane, backends)


@pytest.fixture
def quic(edge: Edge) -> Listener:
    listener = edge.run_wizard()
    listener = edge.add_rule(
        listener,
        {
            "name": "api",
            "path": "/api",
            "path_match": "prefix",
            "action": "forward",
            "server_group": edge.api_group.id,
        },
    )
    listener = edge.add_rule(
        listener,
        {
            "name": "maintenance",
            "path": "/maintenance",
            "path_match": "exact",
            "action": "fixed_response",
            "status_code": "503",
            "content_type": "text/plain",
            "body": "down for maintenance",
        },
    )
    return edge.add_rule(
        listener,
        {
            "name": "moved",
            "path": "/old",
            "path_match": "prefix",
            "action": "redirect",
            "status_code": "301",
            "redirect_path": "/new",
        },
    )


def test_forwarding_rules_forward_answer_and_redirect(edge: Edge, quic: Listener) -> None:
    """A path rule sends /api to the second server group; a fixed response and a redirect are
    answered by the node itself."""
    [(status, _, body)] = edge.get(("/api/items?page=2", []))

    assert (status, body) == (200, b"api")
    # (The api group's health check probes "/" as well.)
    assert len(served_by(edge.api, "/api/items?page=2")) == 1
    assert not served_by(edge.web_a, "/api/items?page=2")
    assert not served_by(edge.web_b, "/api/items?page=2")

    (fixed, redirect, untouched) = edge.get(
        ("/maintenance", []), ("/old/page?x=1", []), ("/maintenance/more", [])
    )

    assert fixed[0] == 503 and fixed[2] == b"down for maintenance"
    assert fixed[1][b"content-type"].startswith(b"text/plain")
    assert redirect[0] == 301
    location = urlsplit(redirect[1][b"location"].decode())
    assert (location.scheme, location.hostname, location.path, location.query) == (
        "https",
        SERVER_NAME,
        "/new",
        "x=1",
    )
    # "exact" matches /maintenance only: the longer path goes to the default server group.
    assert untouched[0] == 200 and untouched[2] in (WEB_A.encode(), WEB_B.encode())
    for backend in (edge.web_a, edge.web_b, edge.api):
        assert not served_by(backend, "/maintenance")
        assert not served_by(backend, "/old/page?x=1")


def test_gzip_and_the_managed_headers(edge: Edge, quic: Listener) -> None:
    [(status, head, body), (plain_status, plain_head, plain)] = edge.get(
        ("/big", [(b"accept-encoding", b"gzip")]), ("/big", [])
    )

    assert status == 200
    assert head[b"content-encoding"] == b"gzip"
    assert gzip.decompress(body) in (WEB_A.encode(), WEB_B.encode())
    assert len(body) < len(WEB_A) // 4
    # A client that did not offer gzip gets the backend's bytes as they are.
    assert plain_status == 200 and b"content-encoding" not in plain_head
    assert plain in (WEB_A.encode(), WEB_B.encode())

    check_forwarded_headers(edge)


def test_insert_cookie_is_set_and_honoured(edge: Edge, quic: Listener) -> None:
    first = edge.get(*[("/cart", [])] * 4)
    # Without the cookie the scheduler spreads requests over both servers...
    assert {body for _, _, body in first} == {WEB_A.encode(), WEB_B.encode()}
    status, head, body = first[0]
    assert status == 200
    cookie = head[b"set-cookie"].decode()
    assert cookie.startswith("SERVERID=") and "Max-Age=600" in cookie
    pair = cookie.split(";")[0].encode()
    pinned = edge.web_a if body == WEB_A.encode() else edge.web_b
    other = edge.web_b if pinned is edge.web_a else edge.web_a
    before_pinned, before_other = len(served_by(pinned, "/cart")), len(served_by(other, "/cart"))

    # ...with it, every request goes to the server that set it.
    again = edge.get(*[("/cart", [(b"cookie", pair + b"; theme=dark")])] * 6)

    assert [(s, b) for s, _, b in again] == [(200, body)] * 6
    assert len(served_by(pinned, "/cart")) == before_pinned + 6
    assert len(served_by(other, "/cart")) == before_other
    # The persistence cookie is the load balancer's: the backend sees only the application's.
    assert served_by(pinned, "/cart")[-1]["headers"]["cookie"] == "theme=dark"

    check_hostile_cookies(edge)


def check_hostile_cookies(edge: Edge) -> None:
    """A forged, oversized or repeated SERVERID is balanced as usual and never reaches a
    backend."""
    forged = [(b"cookie", b"SERVERID=" + b"f" * 300)]
    duplicated = [(b"cookie", b"SERVERID=nope; SERVERID=; SERVERID=%00%0d%0a")]
    answers = edge.get(("/forged", forged), ("/duplicated", duplicated))

    for status, head, body in answers:
        assert status == 200 and body in (WEB_A.encode(), WEB_B.encode())
        # The client is pointed at the server that answered, with a well-formed cookie.
        assert head[b"set-cookie"].startswith(b"SERVERID=")
        assert len(head[b"set-cookie"].split(b";")[0]) < 64
    for backend in (edge.web_a, edge.web_b):
        for request in served_by(backend, "/forged") + served_by(backend, "/duplicated"):
            assert "SERVERID" not in request["headers"].get("cookie", "")


def check_forwarded_headers(edge: Edge) -> None:
    """X-Forwarded-For and X-Forwarded-Proto: https at the backend; what a client says about
    itself is not what the backend is told."""
    spoofed = [(b"x-forwarded-proto", b"http"), (b"x-forwarded-for", b"203.0.113.9")]
    [(status, _, _), (spoofed_status, _, _)] = edge.get(("/who", []), ("/who-spoofed", spoofed))

    assert status == spoofed_status == 200
    [plain] = served_by(edge.web_a, "/who") + served_by(edge.web_b, "/who")
    assert plain["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert plain["headers"]["x-forwarded-proto"] == "https"
    [spoofed_request] = served_by(edge.web_a, "/who-spoofed") + served_by(
        edge.web_b, "/who-spoofed"
    )
    assert spoofed_request["headers"]["x-forwarded-proto"] == "https"
    # "Add" appends the real peer to what came in; the last entry is the one to trust.
    forwarded = [part.strip() for part in spoofed_request["headers"]["x-forwarded-for"].split(",")]
    assert forwarded[-1] == "127.0.0.1"
