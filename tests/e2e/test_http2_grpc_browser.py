"""Issue 8 end to end: the wizard creates an HTTPS listener with HTTP/2 and a gRPC server group,
the push pipeline applies it, and a real grpcio client's calls reach real grpcio servers, while
an HTTP/2 client on the same listener is refused nothing it should get."""

from __future__ import annotations

import socket
from pathlib import Path

import grpc
import pytest
from playwright.sync_api import Page, expect

from certificates.models import Certificate
from console.models import Instance
from listeners.models import Listener
from tests.dataplane.test_grpc import SERVICE, EchoServer
from tests.e2e.test_listener_wizard_browser import open_advanced_settings
from tests.factories.certs import make_server_cert
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import free_port, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]
HOST = "rpc.example.test"


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_wizard_to_grpc_calls(
    signed_in_page: Page, live_server, control_plane, tmp_path: Path
) -> None:
    page = signed_in_page
    instance = Instance.objects.create(name="rpc-edge")
    node = control_plane.node("node-1")
    register_node(instance, node.url, name="node-1", token=node.token)
    worker = control_plane.worker()
    wait_until(lambda: "ready" in worker.log(), timeout=30)
    servers = [EchoServer("rpc-a"), EchoServer("rpc-b")]
    material = make_server_cert("ec-p256", sans=[HOST])
    Path(tmp_path / "cert.pem").write_text(material.cert_pem)
    Path(tmp_path / "key.pem").write_text(material.key_pem)
    port = free_port()
    try:
        page.goto(live_server.url + "/certificates/")
        page.get_by_role("link", name="Upload Server Certificate").click()
        dialog = page.get_by_role("dialog", name="Upload Server Certificate")
        dialog.get_by_label("Certificate Name").fill("rpc")
        dialog.get_by_label("Certificate file").set_input_files(tmp_path / "cert.pem")
        dialog.get_by_label("Private Key file").set_input_files(tmp_path / "key.pem")
        dialog.get_by_role("button", name="Upload", exact=True).click()
        expect(page.get_by_text(material.fingerprint_sha256)).to_be_visible()

        page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")
        page.get_by_role("link", name="Create Listener", exact=True).click()
        page.get_by_label("Listener Protocol", exact=True).select_option("HTTPS")
        # The fields re-render for HTTPS (port 443 suggested) before anything is typed.
        expect(page.get_by_label("Listener Port", exact=True)).to_have_value("443")
        page.get_by_label("Listener Port", exact=True).fill(str(port))
        page.get_by_label("Listener Name", exact=True).fill("rpc-https")
        open_advanced_settings(page)
        # Seed 003: HTTP/2 is on by default for HTTPS, and gRPC needs it.
        expect(page.get_by_label("Enable HTTP/2", exact=True)).to_be_checked()
        page.get_by_label("Response Timeout (s)", exact=True).fill("20")
        page.get_by_role("button", name="Next").last.click()
        rpc = Certificate.objects.get(name="rpc")
        page.get_by_label("Server Certificate", exact=True).select_option(value=rpc.id)
        page.get_by_role("button", name="Next").last.click()
        page.get_by_label("Create Server Group").check()
        page.get_by_label("Server Group Name", exact=True).fill("rpc-backends")
        page.get_by_label("Backend Protocol", exact=True).select_option("gRPC")
        for row, server in enumerate(servers, start=1):
            if row > 1:
                page.get_by_role("button", name="Add More").click()
            page.get_by_label(f"Server Address, row {row}", exact=True).fill("127.0.0.1")
            page.get_by_label(f"Port, row {row}", exact=True).fill(str(server.port))
        page.get_by_role("button", name="Next").last.click()
        # An HTTP/1.1 probe cannot check a gRPC server: TCP is the only choice.
        protocol = page.get_by_label("Health Check Protocol", exact=True)
        expect(protocol.locator("option")).to_have_count(1)
        page.get_by_role("button", name="Next").last.click()
        page.get_by_role("button", name="Submit").click()

        expect(page.locator("#listener-status")).to_contain_text("Running", timeout=20_000)
        listener = Listener.objects.get(name="rpc-https")
        assert (listener.port, listener.http2, listener.response_timeout) == (port, True, 20)
        expect(page.get_by_text("gRPC server group: calls are relayed over HTTP/2")).to_be_visible()

        assert wait_until(lambda: accepting(port), timeout=10), node.log()[-3000:]
        credentials = grpc.ssl_channel_credentials(root_certificates=material.root_pem.encode())
        with grpc.secure_channel(
            f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", HOST)]
        ) as channel:
            say = channel.unary_unary(f"/{SERVICE}/Say")
            replies = [say.with_call(b"hi", timeout=10, wait_for_ready=True) for _ in range(10)]
        served = sorted(reply.split(b":")[0].decode() for reply, _ in replies)
        assert served == ["rpc-a"] * 5 + ["rpc-b"] * 5
        assert all(call.code() == grpc.StatusCode.OK for _, call in replies)
        trailers = [dict(call.trailing_metadata())["served-by"] for _, call in replies]
        assert sorted(trailers) == sorted(served)

        # Turning HTTP/2 off would strand the gRPC group: refused next to the field.
        page.get_by_role("link", name="Modify Listener").click()
        dialog = page.get_by_role("dialog", name="Modify Listener")
        dialog.get_by_label("Enable HTTP/2", exact=True).uncheck()
        dialog.get_by_role("button", name="Save").click()
        expect(dialog.get_by_text("gRPC backends need HTTP/2")).to_be_visible()
        listener.refresh_from_db()
        assert listener.http2 is True
    finally:
        for server in servers:
            server.stop()
