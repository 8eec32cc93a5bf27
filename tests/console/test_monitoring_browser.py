"""In Chromium: a request made through a real node during the test shows on the listener's
Monitoring tab, in the graph and in the data table, and the open tab updates itself."""

from __future__ import annotations

import datetime
import http.client
import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from console import pipeline, sampling
from console.models import TrafficSample
from listeners.models import BackendServer, HealthCheck
from tests.fixtures.processes import free_port, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]


def request_through(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/seen-in-the-graph")
        response = connection.getresponse()
        assert (response.status, response.read()) == (200, b"backend")
    finally:
        connection.close()


def test_a_request_made_now_shows_in_the_graph_and_the_table(
    signed_in_page: Page, live_server, stack, eager_celery
) -> None:
    page = signed_in_page
    port = free_port()
    listener = stack.add_listener(port, "shop")
    # Two samples 10 s apart (the tick times are given), with one request between them.
    tick = timezone.now()
    sampling.take_samples(now=tick - datetime.timedelta(seconds=10))
    request_through(port)
    sampling.take_samples(now=tick)

    page.goto(live_server.url + listener.get_absolute_url())
    page.get_by_role("navigation", name="Listener").get_by_role("link", name="Monitoring").click()

    expect(page).to_have_url(re.compile(r"/monitoring/$"))
    chart = page.get_by_role("img", name=re.compile(r"^Requests per second"))
    # One request in 10 s, read from the chart's own description and its line's label.
    expect(chart).to_have_accessible_name(re.compile(r"Latest: Requests 0\.1/s"))
    expect(chart.locator("text").filter(has_text="Requests 0.1/s")).to_have_count(1)
    responses = page.get_by_role("img", name=re.compile(r"^Responses by class"))
    expect(responses).to_have_accessible_name(re.compile(r"2xx 0\.1/s; 3xx 0/s; 4xx 0/s"))
    latency = page.get_by_role("img", name=re.compile(r"^Request duration percentiles"))
    if TrafficSample.objects.filter(listener=listener, latency__isnull=False).exists():
        expect(latency).to_have_accessible_name(re.compile(r"Latest: p50 \d"))
    else:
        # The nodes report no request durations yet: said, not drawn as zeros.
        expect(page.get_by_text("No latency data")).to_be_visible()
        expect(latency).to_have_count(0)

    # The numbers as a table, newest first.
    page.get_by_text("Data table").click()
    table = page.get_by_role("table", name=re.compile(r"shop: Last hour"))
    first = table.get_by_role("row").nth(1)
    expect(first.get_by_role("cell").nth(0)).to_have_text("0.1/s")
    expect(first.get_by_role("cell").nth(1)).to_have_text("0.1/s")

    # While the tab is open it asks again: three more requests show without a reload, and the
    # open table stays open.
    for _ in range(3):
        request_through(port)
    sampling.take_samples()
    expect(chart).not_to_have_accessible_name(
        re.compile(r"Latest: Requests 0\.1/s"), timeout=20_000
    )
    expect(page.locator("details.chart-table")).to_have_attribute("open", "")
    expect(first.get_by_role("cell").nth(0)).not_to_have_text("0.1/s")

    # The 24-hour range shows the same requests.
    page.get_by_role("link", name="Last 24 hours").click()
    expect(page).to_have_url(re.compile(r"\?range=24h$"))
    day = page.get_by_role("img", name=re.compile(r"^Requests per second"))
    expect(day).to_have_accessible_name(re.compile(r"Latest: Requests \d"))
    expect(day).not_to_have_accessible_name(re.compile(r"Latest: Requests (0/s|—)"))


def test_the_group_page_explains_a_server_a_real_node_finds_down(
    signed_in_page: Page, live_server, stack, eager_celery
) -> None:
    page = signed_in_page
    # Given the group checked over HTTP every second, and a second server nobody listens on.
    HealthCheck.objects.update_or_create(
        group=stack.group,
        defaults={
            "enabled": True,
            "protocol": "http",
            "interval": 1,
            "timeout": 1,
            "healthy_threshold": 2,
            "unhealthy_threshold": 1,
            "expected_codes": ["http_2xx"],
        },
    )
    dead = BackendServer.objects.create(group=stack.group, address="127.0.0.1", port=free_port())
    listener = stack.add_listener(free_port(), "shop")

    # When the node has checked both and the console has read its status.
    def checked() -> bool:
        entry = stack.node.status()["listeners"][listener.id]
        return all(backend.get("reason_code") for backend in entry["backends"])

    wait_until(checked, timeout=15)
    pipeline.collect(stack.instance)

    page.goto(live_server.url + stack.group.get_absolute_url())
    section = page.get_by_role("region", name="Backend Server Health")
    down = section.get_by_role("row").filter(has_text=f"127.0.0.1:{dead.port}")
    expect(down.get_by_role("cell").nth(2)).to_have_text("Unhealthy")
    expect(down.get_by_role("cell").nth(3)).to_have_text("refused connection refused")
    expect(down.get_by_role("list")).to_contain_text("failed: refused")
    up = section.get_by_role("row").filter(has_text=f"127.0.0.1:{stack.backend.port}")
    expect(up.get_by_role("cell").nth(3)).to_have_text("ok ok (HTTP 200)")
    expect(up.get_by_role("list")).to_contain_text("passed")

    # And the listener's details page says the same next to each server.
    page.goto(live_server.url + listener.get_absolute_url())
    health = page.get_by_role("region", name="Current Counters")
    expect(health.get_by_role("row").filter(has_text=f":{dead.port}")).to_contain_text("Unhealthy")
