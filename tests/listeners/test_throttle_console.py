"""QPS per client IP in the console: the listener-wide limit in the wizard's Advanced Settings and
Modify Listener, and a rule's own in the Forwarding Rules dialog; offered on HTTP, HTTPS and QUIC
listeners only, validated next to the field with the same message in the API, saved through the
services (audited, generation bumped), in the snapshot, shown on the details page and kept by a
backup."""

from __future__ import annotations

import copy
import html

import pytest
from django.urls import reverse

from console import backup
from console.models import AuditRecord, Instance
from console.snapshot import build_snapshot
from listeners.models import ForwardingRule, Listener
from tests.api.conftest import admin_token, api  # noqa: F401
from tests.fixtures.listeners import make_listener
from tests.listeners.test_wizard import ADVANCED_DEFAULTS, step_url, walk_http_wizard

pytestmark = pytest.mark.django_db

RANGE = "QPS per client IP must be 1-100000."
RULE_RANGE = "Throttle: QPS per client IP must be 1-100000."


def settled(listener: Listener) -> Listener:
    """As after every node applied it: Running, edits allowed."""
    Listener.objects.filter(pk=listener.pk).update(status="running", configuring_since=None)
    return Listener.objects.get(pk=listener.pk)


def modify(client, listener: Listener, **fields):
    return client.post(
        reverse("listener-modify", args=[listener.instance_id, listener.id]),
        {**ADVANCED_DEFAULTS, "name": listener.name, **fields},
    )


def rule_data(**fields) -> dict:
    return {"path": "/api/", "path_match": "prefix", "action": "fixed_response", **fields}


# -- the listener-wide limit ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["http", "https", "quic"])
def test_modify_offers_the_limit_on_layer7_listeners_with_what_it_counts(
    admin_client, instance, server_group, protocol
) -> None:
    listener = settled(make_listener(instance, server_group, protocol=protocol, port=443))
    page = admin_client.get(reverse("listener-modify", args=[instance.id, listener.id]))
    text = html.unescape(page.content.decode())
    assert 'name="qps_per_client_ip"' in text
    assert "QPS per client IP" in text
    assert "Requests per second one client IP may send" in text
    assert "the real one when Retrieve Client IP is on" in text
    assert "Blank: no limit." in text


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_layer4_listeners_neither_offer_nor_keep_it(
    admin_client, instance, server_group, protocol
) -> None:
    listener = settled(make_listener(instance, server_group, protocol=protocol, port=5300))
    page = admin_client.get(reverse("listener-modify", args=[instance.id, listener.id]))
    assert 'name="qps_per_client_ip"' not in page.content.decode()

    # A crafted POST cannot set it.
    response = modify(admin_client, listener, qps_per_client_ip="50")
    assert response.status_code == 302, response.context and response.context["form"].errors
    listener.refresh_from_db()
    assert listener.qps_per_client_ip is None


def test_modify_saves_through_the_service_into_the_snapshot(
    admin_client, instance, server_group
) -> None:
    listener = settled(make_listener(instance, server_group))
    before = Instance.objects.get(pk=instance.pk).generation

    response = modify(admin_client, listener, qps_per_client_ip="50")

    assert response.status_code == 302, response.context and response.context["form"].errors
    listener.refresh_from_db()
    assert listener.qps_per_client_ip == 50
    assert listener.status == "configuring"
    assert Instance.objects.get(pk=instance.pk).generation == before + 1
    record = AuditRecord.objects.filter(action="listener.modify", object_id=listener.id).get()
    assert record.changes["qps_per_client_ip"] == {"before": None, "after": 50}
    [compiled] = build_snapshot(Instance.objects.get(pk=instance.pk)).listeners
    assert compiled.qps_per_client_ip == 50

    settled(listener)
    detail = admin_client.get(listener.get_absolute_url()).content.decode()
    assert (
        '<dd id="qps-per-client-ip">50 requests per second per client IP; over it, 429 Too Many '
        "Requests</dd>"
    ) in detail

    # Blank again: no limit.
    response = modify(admin_client, listener, qps_per_client_ip="")
    assert response.status_code == 302
    listener.refresh_from_db()
    assert listener.qps_per_client_ip is None
    settled(listener)
    detail = admin_client.get(listener.get_absolute_url()).content.decode()
    assert '<dd id="qps-per-client-ip">No limit</dd>' in detail


@pytest.mark.parametrize("value", ["0", "100001", "-5"])
def test_out_of_range_values_are_refused_next_to_the_field_page_and_api_alike(
    admin_client,
    api,  # noqa: F811
    instance,
    server_group,
    value,
) -> None:
    listener = settled(make_listener(instance, server_group))

    page = modify(admin_client, listener, qps_per_client_ip=value)
    refused = api.send(
        "patch",
        f"/api/v1/instances/{instance.id}/listeners/{listener.id}",
        {"qps_per_client_ip": int(value)},
    )

    assert page.status_code == 422
    assert page.context["form"].errors["qps_per_client_ip"] == [RANGE]
    assert refused.status_code == 422
    [error] = refused.json()["errors"]
    assert (error["field"], error["message"]) == ("qps_per_client_ip", RANGE)
    listener.refresh_from_db()
    assert listener.qps_per_client_ip is None


def test_the_api_sets_reports_keeps_and_clears_it(api, instance, server_group) -> None:  # noqa: F811
    listener = settled(make_listener(instance, server_group))
    url = f"/api/v1/instances/{instance.id}/listeners/{listener.id}"
    response = api.send("patch", url, {"qps_per_client_ip": 200})
    assert response.status_code == 200, response.content
    assert response.json()["settings"]["qps_per_client_ip"] == 200
    settled(listener)
    # Fields not sent keep their value.
    response = api.send("patch", url, {"idle_timeout": 30})
    assert response.json()["settings"]["qps_per_client_ip"] == 200
    settled(listener)
    # null is "no limit".
    response = api.send("patch", url, {"qps_per_client_ip": None})
    assert response.status_code == 200, response.content
    assert response.json()["settings"]["qps_per_client_ip"] is None
    # A word is no number.
    settled(listener)
    response = api.send("patch", url, {"qps_per_client_ip": "lots"})
    assert response.status_code in (400, 422)


def test_the_openapi_document_lists_the_fields(api) -> None:  # noqa: F811
    schemas = api.get("/api/v1/openapi.json").json()["components"]["schemas"]
    assert "qps_per_client_ip" in schemas["ListenerSettings"]["properties"]
    assert "qps_per_client_ip" in schemas["RuleIn"]["properties"]


def test_the_wizard_takes_it_in_advanced_settings(admin_client, instance) -> None:
    for protocol, offered in (("quic", True), ("https", True), ("tcp", False), ("udp", False)):
        options = admin_client.get(
            reverse("listener-wizard-options", args=[instance.id]), {"protocol": protocol}
        )
        assert ('name="qps_per_client_ip"' in options.content.decode()) is offered, protocol

    confirm = walk_http_wizard(admin_client, instance, qps_per_client_ip="25")
    rows = dict(row for _, _, rows in confirm.context["summary"] for row in rows)
    assert rows["QPS per client IP"] == "25"
    created = admin_client.post(
        step_url(instance, "confirm"), {"token": confirm.context["token"], "action": "submit"}
    )
    assert created.status_code == 302
    listener = Listener.objects.get()
    assert listener.qps_per_client_ip == 25
    assert build_snapshot(instance).listeners[0].qps_per_client_ip == 25


# -- a forwarding rule's limit -------------------------------------------------------------------


def test_the_rule_dialog_offers_throttling_and_saves_it_into_the_snapshot(
    admin_client, instance, server_group
) -> None:
    listener = settled(make_listener(instance, server_group))
    url = reverse("listener-rule-create", args=[instance.id, listener.id])
    page = html.unescape(admin_client.get(url).content.decode())
    assert "Throttle: QPS per client IP" in page
    assert 'name="qps_per_client_ip"' in page
    assert "before the action runs" in page

    response = admin_client.post(url, rule_data(body="api", qps_per_client_ip="7"))

    assert response.status_code == 302, response.context and response.context["form"].errors
    rule = ForwardingRule.objects.get()
    assert rule.qps_per_client_ip == 7
    record = AuditRecord.objects.get(action="listener.save_forwarding_rule")
    [audited] = record.changes["forwarding_rules"]["after"]
    assert audited["qps_per_client_ip"] == 7
    [compiled] = build_snapshot(Instance.objects.get(pk=instance.pk)).listeners
    assert compiled.forwarding_rules[0].qps_per_client_ip == 7
    settled(listener)
    detail = admin_client.get(listener.get_absolute_url()).content.decode()
    assert "Throttle: 7 QPS per client IP" in detail
    # The edit dialog shows it again.
    edit = admin_client.get(reverse("listener-rule-edit", args=[instance.id, listener.id, rule.pk]))
    assert 'name="qps_per_client_ip" value="7"' in edit.content.decode()


def test_a_rule_without_throttling_stays_without(admin_client, instance, server_group) -> None:
    listener = settled(make_listener(instance, server_group))
    url = reverse("listener-rule-create", args=[instance.id, listener.id])
    response = admin_client.post(url, rule_data(body="api"))
    assert response.status_code == 302
    assert ForwardingRule.objects.get().qps_per_client_ip is None
    assert build_snapshot(instance).listeners[0].forwarding_rules[0].qps_per_client_ip is None


@pytest.mark.parametrize("value", ["0", "100001"])
def test_a_rules_limit_out_of_range_is_refused_next_to_the_field_page_and_api_alike(
    admin_client,
    api,  # noqa: F811
    instance,
    server_group,
    value,
) -> None:
    listener = settled(make_listener(instance, server_group))
    page = admin_client.post(
        reverse("listener-rule-create", args=[instance.id, listener.id]),
        rule_data(body="api", qps_per_client_ip=value),
    )
    refused = api.send(
        "post",
        f"/api/v1/instances/{instance.id}/listeners/{listener.id}/rules",
        {"path": "/api/", "action": "fixed_response", "qps_per_client_ip": int(value)},
    )
    assert page.status_code == 422
    assert page.context["form"].errors["qps_per_client_ip"] == [RULE_RANGE]
    assert refused.status_code == 422
    [error] = refused.json()["errors"]
    assert (error["field"], error["message"]) == ("qps_per_client_ip", RULE_RANGE)
    assert not ForwardingRule.objects.exists()


def test_the_rules_api_sets_and_reports_it(api, instance, server_group) -> None:  # noqa: F811
    listener = settled(make_listener(instance, server_group))
    path = f"/api/v1/instances/{instance.id}/listeners/{listener.id}/rules"
    created = api.send(
        "post",
        path,
        {
            "path": "/api/",
            "action": "forward",
            "server_group": server_group.id,
            "qps_per_client_ip": 12,
        },
    )
    assert created.status_code == 201, created.content
    assert created.json()["qps_per_client_ip"] == 12
    assert api.get(path).json()[0]["qps_per_client_ip"] == 12
    assert ForwardingRule.objects.get().qps_per_client_ip == 12


def test_a_backup_keeps_both_limits(instance, server_group) -> None:
    listener = make_listener(instance, server_group, qps_per_client_ip=30)
    make_listener(instance, server_group, port=81)
    ForwardingRule.objects.create(
        listener=listener,
        name="api",
        conditions=[{"type": "path", "values": ["/api/"], "match": "prefix"}],
        action="fixed_response",
        body="api",
        qps_per_client_ip=9,
    )
    document = backup.export_instance(instance, "a passphrase of length")
    exported = {item["port"]: item for item in document["listeners"]}
    assert exported[80]["qps_per_client_ip"] == 30
    assert exported[80]["forwarding_rules"][0]["qps_per_client_ip"] == 9

    imported = backup.import_instance(
        document=document, passphrase="a passphrase of length", name="copy"
    )

    kept = {item.port: item for item in imported.listeners}
    assert (kept[80].qps_per_client_ip, kept[81].qps_per_client_ip) == (30, None)
    assert kept[80].rules.get().qps_per_client_ip == 9


def test_a_backup_with_an_out_of_range_limit_is_refused_by_path(instance, server_group) -> None:
    listener = make_listener(instance, server_group, qps_per_client_ip=30)
    ForwardingRule.objects.create(
        listener=listener,
        conditions=[{"type": "path", "values": ["/api/"], "match": "prefix"}],
        action="fixed_response",
        qps_per_client_ip=9,
    )
    document = backup.export_instance(instance, "a passphrase of length")

    def problems(listener_qps: object, rule_qps: object) -> list[str]:
        broken = copy.deepcopy(document)
        broken["listeners"][0]["qps_per_client_ip"] = listener_qps
        broken["listeners"][0]["forwarding_rules"][0]["qps_per_client_ip"] = rule_qps
        with pytest.raises(backup.BackupInvalid) as invalid:
            backup.import_instance(
                document=broken, passphrase="a passphrase of length", name="never"
            )
        return [f"{p['field']}: {p['message']}" for p in invalid.value.problems]

    assert f"listeners[0].qps_per_client_ip: {RANGE}" in problems(0, 9)
    assert f"listeners[0].forwarding_rules[0].qps_per_client_ip: {RULE_RANGE}" in problems(
        30, 200_000
    )
    assert Listener.objects.count() == 1


# -- in the browser --------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_sets_the_limit_from_the_listener_page(signed_in_page, live_server) -> None:
    from playwright.sync_api import expect

    from listeners.models import ServerGroup

    instance = Instance.objects.create(name="shop")
    group = ServerGroup.objects.create(name="web")
    listener = settled(make_listener(instance, group))
    page = signed_in_page
    page.goto(live_server.url + listener.get_absolute_url())
    expect(page.locator("#qps-per-client-ip")).to_have_text("No limit")

    page.get_by_role("link", name="Modify Listener").click()
    dialog = page.get_by_role("dialog")
    qps = dialog.get_by_label("QPS per client IP")
    expect(qps).to_have_value("")
    expect(qps).to_have_attribute("max", "100000")
    # The server's own message, next to the field, for what the browser's range would stop.
    qps.evaluate("field => field.removeAttribute('min')")
    qps.fill("0")
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_contain_text(RANGE)

    dialog = page.get_by_role("dialog")
    dialog.get_by_label("QPS per client IP").fill("40")
    dialog.get_by_role("button", name="Save").click()
    expect(page.locator("#qps-per-client-ip")).to_have_text(
        "40 requests per second per client IP; over it, 429 Too Many Requests"
    )
    listener.refresh_from_db()
    assert listener.qps_per_client_ip == 40
