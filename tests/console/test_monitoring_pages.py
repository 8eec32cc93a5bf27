"""The Monitoring tab (SVG charts with labels, legends and a data table) and the health reasons
on the listener details page and the server group page, rendered by the real views."""

from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from console.models import DataplaneNode, TrafficSample
from listeners.models import BackendServer, Listener, ServerGroup
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import register_node

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def listener(instance, server_group) -> Listener:
    return make_listener(instance, server_group, port=8080, name="shop")


@pytest.fixture
def node(instance) -> DataplaneNode:
    return register_node(instance, "http://127.0.0.1:9", name="node-a")


def url(listener: Listener, **query: str) -> str:
    path = reverse("listener-monitoring", args=[listener.instance_id, listener.id])
    return path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")


def add_samples(listener, node, *, latency: bool) -> datetime.datetime:
    """Five minutes of a steady 10 requests per second (9 2xx, 1 5xx), 10 s apart."""
    now = timezone.now()
    for tick in range(31):
        seconds = tick * 10
        requests = 100 * tick
        histogram = None
        if latency:
            # Half the requests under 50 ms, all under 200 ms.
            histogram = {
                "buckets": [0.05, 0.2, 1.0],
                "counts": [requests // 2, requests, requests],
                "count": requests,
                "sum": requests * 0.08,
            }
        TrafficSample.objects.create(
            listener=listener,
            node=node,
            at=now - datetime.timedelta(seconds=300 - seconds),
            uptime=1000.0 + seconds,
            requests=requests,
            responses_2xx=90 * tick,
            responses_5xx=10 * tick,
            bytes_in=1000 * tick,
            bytes_out=125_000 * tick,
            total_connections=10 * tick,
            active_connections=4,
            servers=2,
            healthy_servers=1,
            latency=histogram,
        )
    return now


def charts(html: str) -> dict[str, ET.Element]:
    """Every chart's SVG, parsed as XML (so it is well formed), by its id."""
    found = {}
    for match in re.finditer(r'<svg class="chart".*?</svg>', html, re.S):
        element = ET.fromstring(match.group(0).replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))
        title = element.find(f"{SVG}title")
        found[title.get("id").removesuffix("-title")] = element
    return found


def test_the_tab_draws_every_graph_with_labels_and_a_data_table(
    admin_client, listener, node
) -> None:
    add_samples(listener, node, latency=True)

    response = admin_client.get(url(listener))

    assert response.status_code == 200
    html = response.content.decode()
    drawn = charts(html)
    assert set(drawn) == {
        "chart-requests",
        "chart-responses",
        "chart-latency",
        "chart-connections",
        "chart-bandwidth",
        "chart-servers",
    }
    requests = drawn["chart-requests"]
    assert requests.get("role") == "img"
    assert requests.find(f"{SVG}title").text == "Requests per second"
    assert "Latest: Requests 10/s" in requests.find(f"{SVG}desc").text
    # Each line is labelled at its end with its name and latest value, in text, not colour.
    labels = {text.text for text in drawn["chart-responses"].iter(f"{SVG}text")}
    assert {"2xx 9/s", "5xx 1/s", "4xx 0/s"} <= labels
    latency = {text.text for text in drawn["chart-latency"].iter(f"{SVG}text")}
    assert {"p50 50 ms", "p95 185 ms", "p99 197 ms"} <= latency
    bandwidth = {text.text for text in drawn["chart-bandwidth"].iter(f"{SVG}text")}
    assert {"In 800 bit/s", "Out 100 kbit/s"} <= bandwidth
    servers = {text.text for text in drawn["chart-servers"].iter(f"{SVG}text")}
    assert {"Healthy 1", "Servers 2"} <= servers
    # Lines differ by dash pattern as well as colour.
    dashes = [
        path.get("stroke-dasharray")
        for path in drawn["chart-responses"].iter(f"{SVG}path")
        if path.get("stroke-linejoin") == "round"
    ]
    assert len(set(dashes)) == len(dashes) >= 4
    # The legend names each series beside a sample of its line.
    assert html.count('class="swatch"') >= 13
    # The data table: newest first, every series a column.
    table = html[html.index('id="monitoring-table"') :]
    assert '<th scope="col">Requests per second: Requests</th>' in table
    assert '<th scope="col">Request duration percentiles: p99</th>' in table
    first_row = re.search(r"<tbody><tr>(.*?)</tr>", table, re.S).group(1)
    cells = re.findall(r"<td>(.*?)</td>", first_row)
    assert cells[:6] == ["10/s", "9/s", "0/s", "0/s", "1/s", "0/s"]
    assert "50 ms" in cells and "4" in cells
    # The page polls while open and offers both ranges.
    assert 'hx-trigger="every 10s"' in html
    assert "Last 24 hours" in html and 'aria-current="true">Last hour' in html


def test_without_request_durations_the_tab_says_so(admin_client, listener, node) -> None:
    add_samples(listener, node, latency=False)

    html = admin_client.get(url(listener)).content.decode()

    assert "No latency data" in html
    assert "chart-latency" not in charts(html)
    assert "Request duration percentiles: p50" not in html
    assert "chart-requests" in charts(html)


def test_before_any_sample_nothing_is_drawn(admin_client, listener, node) -> None:
    html = admin_client.get(url(listener)).content.decode()

    assert charts(html) == {}
    assert "No samples yet" in html
    assert "No samples in this range yet." in html


def test_24_hours_and_hostile_ranges(admin_client, listener, node) -> None:
    add_samples(listener, node, latency=True)

    day = admin_client.get(url(listener, range="24h")).content.decode()
    assert 'aria-current="true">Last 24 hours' in day
    assert 'hx-trigger="every 60s"' in day
    assert "Latest: Requests 10/s" in day
    for hostile in ("7d", "%3Cscript%3E", "1h" * 500, ""):
        page = admin_client.get(url(listener, range=hostile))
        assert page.status_code == 200
        assert 'aria-current="true">Last hour' in page.content.decode()
    duplicated = admin_client.get(url(listener) + "?range=24h&range=1h")
    assert duplicated.status_code == 200


def test_htmx_gets_the_block_only(admin_client, listener, node) -> None:
    add_samples(listener, node, latency=False)

    response = admin_client.get(url(listener), HTTP_HX_REQUEST="true")

    html = response.content.decode()
    assert "<html" not in html
    assert 'id="monitoring"' in html and 'id="monitoring-charts"' in html


def test_the_details_page_links_the_tab(admin_client, listener) -> None:
    html = admin_client.get(listener.get_absolute_url()).content.decode()

    assert f'href="{url(listener)}">Monitoring</a>' in html


def test_viewers_see_it_and_strangers_do_not(viewer_client, listener, node) -> None:
    assert viewer_client.get(url(listener)).status_code == 200
    anonymous = Client().get(url(listener))
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    assert viewer_client.post(url(listener)).status_code in (403, 405)
    other = reverse("listener-monitoring", args=["lb-nothere", listener.id])
    assert viewer_client.get(other).status_code == 404


# Health reasons, from what the node last reported.


def report(group: ServerGroup, listener: Listener) -> dict:
    fast, slow = group.servers.order_by("port")
    now = timezone.now().timestamp()
    return {
        "generation": 1,
        "uptime_seconds": 100.0,
        "listeners": {
            listener.id: {
                "status": "running",
                "server_group_id": group.id,
                "counters": {"requests": 0},
                "backends": [
                    {
                        "id": fast.server_id,
                        "address": fast.address,
                        "port": fast.port,
                        "weight": 100,
                        "healthy": False,
                        "reason": "HTTP 503 not in http_2xx",
                        "reason_code": "status_mismatch",
                        "http_status": 503,
                        "last_change": now - 90,
                        "checks": [[now - 120, True, "ok"], [now - 90, False, "status_mismatch"]],
                        "slow_start_percent": None,
                        "active": 0,
                    },
                    {
                        "id": slow.server_id,
                        "address": slow.address,
                        "port": slow.port,
                        "weight": 0,
                        "healthy": True,
                        "reason": "ok (HTTP 200)",
                        "reason_code": "ok",
                        "http_status": 200,
                        "last_change": now - 30,
                        "checks": [[now - 60, False, "timeout"], [now - 30, True, "ok"]],
                        "slow_start_percent": 40,
                        "active": 0,
                    },
                ],
            }
        },
    }


def test_the_details_page_explains_each_server(admin_client, listener, node, server_group):
    node.status_report = report(server_group, listener)
    node.status_report_at = timezone.now()
    node.save()

    html = admin_client.get(listener.get_absolute_url()).content.decode()

    health = html[html.index("Backend Server Health") :]
    assert '<span class="badge badge-failed">Unhealthy</span>' in health
    assert (
        '<span class="mono reason-code">status_mismatch</span> HTTP 503 not in http_2xx' in health
    )
    assert "Slow start 40%" in health and "Weight 0" in health
    assert re.search(r'<time datetime="[^"]+">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d</time>', health)


def test_the_group_page_shows_reasons_and_the_timeline(admin_client, listener, node, server_group):
    node.status_report = report(server_group, listener)
    node.status_report_at = timezone.now()
    node.save()

    html = admin_client.get(server_group.get_absolute_url()).content.decode()

    section = html[html.index('id="server-health"') :]
    rows = re.findall(r"<tr><td class=\"mono\">(.*?)</tr>", section, re.S)
    assert len(rows) == 2
    failing, ramping = rows
    assert "127.0.0.1:8081" in failing and "node-a" in failing
    assert "status_mismatch" in failing and "HTTP 503 not in http_2xx" in failing
    assert re.findall(r'class="(check-ok|check-failed)"', failing) == ["check-ok", "check-failed"]
    assert "failed: status_mismatch" in failing
    assert ">✓<" in failing and ">✗<" in failing
    assert "Slow start 40%" in ramping and "Weight 0" in ramping
    assert "failed: timeout" in ramping


@pytest.mark.parametrize("carrier", [0, 1])
def test_the_timeline_given_in_one_listener_entry_only_is_shown(
    admin_client, instance, listener, node, server_group, carrier
):
    # A node gives a server's last checks in one listener entry of its group (dataplane.node);
    # the stored document's key order is the database's, so either entry may be read first.
    second = make_listener(instance, server_group, port=8081, name="shop-2")
    document = report(server_group, listener)
    entry = document["listeners"][listener.id]
    without = {**entry, "backends": [{**b} for b in entry["backends"]]}
    for backend in without["backends"]:
        del backend["checks"]
    ids = [listener.id, second.id]
    document["listeners"] = {
        ids[0]: entry if carrier == 0 else without,
        ids[1]: entry if carrier == 1 else without,
    }
    node.status_report = document
    node.status_report_at = timezone.now()
    node.save()

    html = admin_client.get(server_group.get_absolute_url()).content.decode()

    section = html[html.index('id="server-health"') :]
    rows = re.findall(r"<tr><td class=\"mono\">(.*?)</tr>", section, re.S)
    assert len(rows) == 2
    assert re.findall(r'class="(check-ok|check-failed)"', rows[0]) == ["check-ok", "check-failed"]
    assert "failed: timeout" in rows[1]
    assert "No checks reported" not in section


def test_a_server_no_node_reported_says_so(admin_client, server_group):
    BackendServer.objects.create(group=server_group, address="10.0.0.9", port=80)

    html = admin_client.get(server_group.get_absolute_url()).content.decode()

    section = html[html.index('id="server-health"') :]
    assert section.count("No node has reported this server") == 3


def test_hostile_reports_do_not_break_the_pages(admin_client, listener, node, server_group):
    healthy = report(server_group, listener)
    backends = healthy["listeners"][listener.id]["backends"]
    backends[0].update(
        last_change="yesterday",
        checks=[["x", 1, 2], [1e30, True, "ok"], "junk", [None]],
        reason_code=["not", "a", "code"],
        slow_start_percent="lots",
        reason="<script>alert(1)</script>",
    )
    backends.append({"id": backends[1]["id"], "healthy": True})  # duplicated server
    node.status_report = healthy
    node.status_report_at = timezone.now()
    node.save()

    for page in (listener.get_absolute_url(), server_group.get_absolute_url()):
        response = admin_client.get(page)
        assert response.status_code == 200
        assert "<script>alert(1)</script>" not in response.content.decode()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in response.content.decode()


def test_a_tcp_listener_counts_connections_and_has_no_http_graphs(admin_client, instance, node):
    group = ServerGroup.objects.create(name="tcp-pool", backend_protocol="tcp")
    tcp = make_listener(instance, group, port=5432, name="db", protocol=Listener.Protocol.TCP)
    add_samples(tcp, node, latency=False)

    drawn = charts(admin_client.get(url(tcp)).content.decode())

    assert set(drawn) == {"chart-requests", "chart-connections", "chart-bandwidth", "chart-servers"}
    assert drawn["chart-requests"].find(f"{SVG}title").text == "Connections per second"
    assert "Latest: Connections 10/s" in drawn["chart-requests"].find(f"{SVG}desc").text
