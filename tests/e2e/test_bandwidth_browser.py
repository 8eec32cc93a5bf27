"""Seed 000 bandwidth end to end on a UDP listener: Chromium runs the wizard with a limit, the
Confirm step warns that it leaves another listener no share, the push pipeline applies it, a real
UDP server sends twice the limit and the client receives the limit; the other listener is Failed,
inaccessible, as the seed says."""

from __future__ import annotations

import socket
import time

import pytest
from playwright.sync_api import Page, expect

from console.models import Instance
from listeners.models import HealthCheck, Listener, ServerGroup
from tests.dataplane.test_bandwidth_datagram import SKIP, Blaster, rate_after
from tests.e2e.test_listener_wizard_browser import open_advanced_settings
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import free_port

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]
LIMIT_MBIT = 8
LIMIT_BYTES = LIMIT_MBIT * 1_000_000 / 8


def receive_blast(port: int) -> float:
    """Ask the UDP listener to start the blast; bytes per second received after the burst."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        client.settimeout(1.0)
        client.sendto(b"go", ("127.0.0.1", port))
        arrivals: list[tuple[float, int]] = []
        received = 0
        while True:
            try:
                received += len(client.recv(65536))
            except TimeoutError:
                break
            arrivals.append((time.monotonic(), received))
    return rate_after(arrivals, SKIP)


def test_wizard_udp_bandwidth_limit_holds_and_the_other_listener_is_cut_off(
    signed_in_page: Page, live_server, control_plane
) -> None:
    page = signed_in_page
    instance = Instance.objects.create(name="udp-edge", bandwidth_mbit=LIMIT_MBIT)
    node = control_plane.node("node-1")
    register_node(instance, node.url, name="node-1", token=node.token)
    control_plane.worker()
    # A listener without a limit of its own, there before the new one takes all the bandwidth.
    tcp_group = ServerGroup.objects.create(name="legacy-pool", backend_protocol="tcp")
    HealthCheck.objects.create(group=tcp_group, protocol="tcp", enabled=False)
    legacy = Listener.objects.create(
        instance=instance,
        server_group=tcp_group,
        protocol="tcp",
        port=free_port(),
        name="legacy",
    )
    blaster = Blaster(rate=2 * LIMIT_BYTES, seconds=3.0)
    port = free_port()
    try:
        page.goto(f"{live_server.url}/instances/{instance.id}/listeners/")
        page.get_by_role("link", name="Create Listener", exact=True).click()
        page.get_by_label("Listener Protocol", exact=True).select_option("UDP")
        # The fields re-render for UDP (no HTTP header fields) before anything is typed.
        expect(page.get_by_text("Additional HTTP Header Fields")).to_have_count(0)
        page.get_by_label("Listener Port", exact=True).fill(str(port))
        page.get_by_label("Listener Name", exact=True).fill("stream-udp")
        open_advanced_settings(page)
        expect(page.locator("#bandwidth-share")).to_contain_text(
            f"This instance's bandwidth is {LIMIT_MBIT} Mbit/s"
        )
        page.get_by_label("Bandwidth Throttling (Mbit/s)", exact=True).fill(str(LIMIT_MBIT))
        page.get_by_role("button", name="Next").last.click()
        page.get_by_label("Create Server Group").check()
        page.get_by_label("Server Group Name", exact=True).fill("stream-pool")
        page.get_by_label("Server Address, row 1", exact=True).fill("127.0.0.1")
        page.get_by_label("Port, row 1", exact=True).fill(str(blaster.port))
        page.get_by_role("button", name="Next").last.click()
        # The blaster answers its first datagram with a flood: no probes for it.
        page.get_by_label("Enable Health Check", exact=True).uncheck()
        page.get_by_role("button", name="Next").last.click()
        expect(page.locator("#bandwidth-warning")).to_contain_text(
            f"legacy (TCP:{legacy.port}) has no bandwidth left and will be inaccessible"
        )
        page.get_by_role("button", name="Submit").click()

        expect(page.locator("#listener-status")).to_contain_text("Running", timeout=20_000)
        expect(page.get_by_text("has no bandwidth left")).to_be_visible()
        listener = Listener.objects.get(name="stream-udp")
        assert (listener.protocol, listener.bandwidth_mbit) == ("udp", LIMIT_MBIT)

        rate = receive_blast(port)
        assert rate == pytest.approx(LIMIT_BYTES, rel=0.10)

        page.goto(live_server.url + legacy.get_absolute_url())
        expect(page.locator("#listener-status")).to_contain_text("Failed", timeout=20_000)
        # The listener's Last Error carries the node's reason.
        reason = page.locator("dd", has_text="inaccessible: the other listeners' bandwidth limits")
        expect(reason).to_be_visible()
    finally:
        blaster.close()
