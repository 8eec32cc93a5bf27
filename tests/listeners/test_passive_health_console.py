"""Passive health checks in the console: the Modify Health Check dialog and the wizard's Health
Check step carry the group's Passive Health Check (defaults 5, 30 s, 300 s, 50%), the service
saves it on the group (audited, listeners reconfigured), the API takes and gives it, the snapshot
carries it, a backup restores it, and the pages show an ejected server's reason and return."""

from __future__ import annotations

import time

import pytest
from django.test import Client
from django.urls import reverse

from console import backup, tokens
from console.models import AuditRecord, DataplaneNode, Instance
from console.snapshot import build_snapshot
from listeners import services
from listeners.forms.listener import HealthCheckForm
from listeners.models import BackendServer, HealthCheck, Listener, ServerGroup
from listeners.wizard import summary
from tests.api.conftest import TokenClient
from tests.fixtures.listeners import make_listener
from tests.fixtures.nodes import register_node
from tests.listeners.test_wizard import upload_server_cert

pytestmark = pytest.mark.django_db

HEALTH_CHECK = {
    "enabled": "on",
    "protocol": "http",
    "path": "/",
    "interval": "5",
    "timeout": "2",
    "healthy_threshold": "3",
    "unhealthy_threshold": "3",
    "expected_codes": ["http_2xx"],
}
PASSIVE = {
    "passive_health_check": "on",
    "passive_consecutive_failures": "3",
    "passive_base_ejection_time": "10",
    "passive_max_ejection_time": "60",
    "passive_max_ejection_percent": "40",
}


@pytest.fixture
def running(instance: Instance, server_group: ServerGroup) -> Listener:
    return make_listener(instance, server_group, port=80, status=Listener.Status.RUNNING)


@pytest.fixture
def api(admin_user) -> TokenClient:
    return TokenClient(tokens.issue_token(user=admin_user, name="ci", role="admin", days=30).secret)


def dialog_url(listener: Listener) -> str:
    return reverse("listener-health-check", args=[listener.instance_id, listener.pk])


# -- the form ----------------------------------------------------------------------------------


def test_the_form_offers_the_defaults_with_their_ranges() -> None:
    form = HealthCheckForm()
    assert [str(form[name].label) for name in PASSIVE] == [
        "Passive Health Check",
        "Consecutive Failures",
        "Base Ejection Time (s)",
        "Max Ejection Time (s)",
        "Max Ejection Percentage (%)",
    ]
    assert form["passive_health_check"].value() is False
    assert [form[name].value() for name in list(PASSIVE)[1:]] == [5, 30, 300, 50]
    assert 'min="1" max="100"' in str(form["passive_consecutive_failures"])
    assert 'min="1" max="3600"' in str(form["passive_base_ejection_time"])
    assert 'min="1" max="100"' in str(form["passive_max_ejection_percent"])


def test_udp_groups_have_no_passive_checks() -> None:
    form = HealthCheckForm(backend_protocol="udp")
    assert not set(PASSIVE) & set(form.fields)


def test_grpc_groups_have_passive_checks(admin_client: Client, instance: Instance) -> None:
    """The node judges gRPC calls too (dataplane.protocols.grpc): the dialog offers the fields,
    saves them on the group, the pages show them and the snapshot carries them."""
    form = HealthCheckForm(backend_protocol="grpc")
    assert set(PASSIVE) <= set(form.fields)

    group = ServerGroup.objects.create(name="rpc", backend_protocol="grpc")
    BackendServer.objects.create(group=group, address="127.0.0.1", port=50051, weight=100)
    HealthCheck.objects.create(group=group, protocol="tcp")
    listener = make_listener(
        instance,
        group,
        port=443,
        protocol="https",
        default_certificate=upload_server_cert(admin_client),
        tls_policy_id="tls_cipher_policy_1_0",
        http2=True,
        status=Listener.Status.RUNNING,
    )
    page = admin_client.get(dialog_url(listener)).content.decode()
    assert 'name="passive_health_check"' in page
    assert 'name="passive_max_ejection_percent" value="50"' in page

    saved = admin_client.post(dialog_url(listener), {**HEALTH_CHECK, "protocol": "tcp", **PASSIVE})
    assert saved.status_code in (200, 302), saved.content.decode()
    group.refresh_from_db()
    assert (
        group.passive_health_check,
        group.passive_consecutive_failures,
        group.passive_base_ejection_time,
        group.passive_max_ejection_time,
        group.passive_max_ejection_percent,
    ) == (True, 3, 10, 60, 40)
    for url in (
        reverse("listener-detail", args=[listener.instance_id, listener.pk]),
        group.get_absolute_url(),
    ):
        shown = admin_client.get(url).content.decode()
        assert "<dt>Passive Health Check</dt><dd>Enabled</dd>" in shown
        assert "<dd>10 s / 60 s</dd>" in shown

    snapshot = build_snapshot(instance)
    carried = snapshot.server_group(group.pk)
    assert carried is not None
    assert carried.backend_protocol == "grpc"
    passive = carried.passive_health_check
    assert (
        passive.enabled,
        passive.consecutive_failures,
        passive.base_ejection_time,
        passive.max_ejection_time,
        passive.max_ejection_percent,
    ) == (True, 3, 10, 60, 40)
    snapshot.validate()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("passive_consecutive_failures", "0", "Consecutive Failures must be 1-100."),
        ("passive_consecutive_failures", "101", "Consecutive Failures must be 1-100."),
        ("passive_base_ejection_time", "3601", "Base Ejection Time must be 1-3600 s."),
        ("passive_max_ejection_time", "0", "Max Ejection Time must be 1-3600 s."),
        ("passive_max_ejection_percent", "101", "Max Ejection Percentage must be 1-100 %."),
        ("passive_max_ejection_time", "5", "Max Ejection Time must be at least the Base "),
        ("passive_consecutive_failures", "many", "Enter a whole number."),
    ],
)
def test_bad_values_are_named_on_their_field(field: str, value: str, message: str) -> None:
    form = HealthCheckForm(data={**HEALTH_CHECK, **PASSIVE, field: value})
    assert not form.is_valid()
    assert form.errors[field][0].startswith(message)
    assert set(form.errors) == {field}


# -- the service ---------------------------------------------------------------------------------


def test_the_service_saves_the_group_audits_and_reconfigures(running, server_group) -> None:
    before = running.instance.generation
    form = HealthCheckForm(
        data={**HEALTH_CHECK, **PASSIVE},
        instance=server_group.health_check,
        backend_protocol="http",
    )
    assert form.is_valid(), form.errors
    services.update_health_check(group=server_group, values=form.cleaned_data)
    server_group.refresh_from_db()
    assert (
        server_group.passive_health_check,
        server_group.passive_consecutive_failures,
        server_group.passive_base_ejection_time,
        server_group.passive_max_ejection_time,
        server_group.passive_max_ejection_percent,
    ) == (True, 3, 10, 60, 40)
    running.refresh_from_db()
    assert running.status == Listener.Status.CONFIGURING
    assert running.instance.generation == before + 1
    record = AuditRecord.objects.get(action="server_group.modify_health_check")
    assert record.changes["passive_health_check"] == {"before": False, "after": True}

    # The snapshot carries it to the nodes.
    snapshot = build_snapshot(running.instance)
    group = snapshot.server_group(server_group.pk)
    assert group is not None
    passive = group.passive_health_check
    assert (passive.enabled, passive.consecutive_failures, passive.base_ejection_time) == (
        True,
        3,
        10,
    )
    assert (passive.max_ejection_time, passive.max_ejection_percent) == (60, 40)
    snapshot.validate()


def test_the_same_values_change_nothing(running, server_group) -> None:
    server_group.passive_health_check = True
    server_group.save()
    form = HealthCheckForm(
        data={**HEALTH_CHECK, "passive_health_check": "on"}, instance=server_group.health_check
    )
    assert form.is_valid(), form.errors
    # Empty numbers keep the group's values.
    assert form.cleaned_data["passive_consecutive_failures"] == 5
    check = server_group.health_check
    for name, value in form.cleaned_data.items():
        if not name.startswith("passive_"):
            setattr(check, name, value)
    check.save()
    services.update_health_check(group=server_group, values=form.cleaned_data)
    running.refresh_from_db()
    assert running.status == Listener.Status.RUNNING


# -- the pages -----------------------------------------------------------------------------------


def test_the_dialog_saves_and_shows_errors_by_field(admin_client: Client, running, server_group):
    page = admin_client.get(dialog_url(running)).content.decode()
    assert "Passive Health Check" in page
    assert 'name="passive_max_ejection_percent" value="50"' in page

    bad = admin_client.post(
        dialog_url(running),
        {**HEALTH_CHECK, **PASSIVE, "passive_base_ejection_time": "4000"},
    )
    assert bad.status_code == 422
    assert "Base Ejection Time must be 1-3600 s." in bad.content.decode()
    server_group.refresh_from_db()
    assert server_group.passive_health_check is False

    admin_client.post(dialog_url(running), {**HEALTH_CHECK, **PASSIVE})
    server_group.refresh_from_db()
    assert server_group.passive_health_check is True
    assert server_group.passive_max_ejection_percent == 40

    for url in (
        reverse("listener-detail", args=[running.instance_id, running.pk]),
        server_group.get_absolute_url(),
    ):
        shown = admin_client.get(url).content.decode()
        assert "<dt>Passive Health Check</dt><dd>Enabled</dd>" in shown
        assert "<dd>10 s / 60 s</dd>" in shown
        assert "<dd>40%</dd>" in shown


def test_the_wizard_step_shows_the_defaults(admin_client: Client, instance: Instance) -> None:
    url = reverse("listener-create-step", args=[instance.id, "healthcheck"])
    page = admin_client.get(url).content.decode()
    assert "Passive Health Check" in page
    assert 'name="passive_consecutive_failures" value="5"' in page
    assert 'name="passive_base_ejection_time" value="30"' in page
    assert 'name="passive_max_ejection_time" value="300"' in page
    assert 'name="passive_max_ejection_percent" value="50"' in page


@pytest.mark.parametrize(("switch", "numbers_shown"), [("on", True), ("", False)])
def test_confirm_lists_the_numbers_only_while_the_switch_is_on(
    switch: str, numbers_shown: bool
) -> None:
    form = HealthCheckForm(data={**HEALTH_CHECK, **PASSIVE, "passive_health_check": switch})
    assert form.is_valid(), form.errors
    [(_, _, rows)] = summary({"healthcheck": {"form": form}})
    labels = [str(label) for label, _ in rows]
    assert "Passive Health Check" in labels
    numbers = {"Consecutive Failures", "Base Ejection Time (s)", "Max Ejection Time (s)"}
    assert (numbers <= set(labels)) is numbers_shown
    assert ("Max Ejection Percentage (%)" in labels) is numbers_shown


def test_a_new_group_takes_the_wizards_passive_check(instance: Instance) -> None:
    form = HealthCheckForm(data={**HEALTH_CHECK, **PASSIVE})
    assert form.is_valid(), form.errors
    group = services.create_server_group(
        name="fresh",
        backend_protocol="http",
        servers=[{"address": "10.0.0.1", "port": 80, "weight": 100, "description": ""}],
        health_check=form.cleaned_data,
    )
    group.refresh_from_db()
    assert group.passive_health_check is True
    assert group.passive_base_ejection_time == 10
    assert group.health_check.interval == 5


def ejected_report(group: ServerGroup, listener: Listener, until: float) -> dict:
    server = group.servers.order_by("pk").first()
    return {
        "listeners": {
            listener.pk: {
                "status": "running",
                "server_group_id": group.pk,
                "backends": [
                    {
                        "id": server.server_id,
                        "address": server.address,
                        "port": server.port,
                        "weight": server.weight,
                        "healthy": False,
                        "reason": "ok (HTTP 200)",
                        "reason_code": "ok",
                        "ejected": True,
                        "ejections": 2,
                        "ejection_reason": "passive: 5 consecutive 5xx",
                        "ejection_code": "5xx",
                        "ejected_until": until,
                        "ejection_seconds_left": 42.0,
                    }
                ],
            }
        }
    }


def test_the_pages_show_an_ejected_server_with_its_reason_and_return(
    admin_client: Client, running, server_group
) -> None:
    node: DataplaneNode = register_node(running.instance, "http://127.0.0.1:9")
    until = time.time() + 42
    node.status_report = ejected_report(server_group, running, until)
    node.save()
    for url in (
        server_group.get_absolute_url(),
        reverse("listener-detail", args=[running.instance_id, running.pk]),
    ):
        page = admin_client.get(url).content.decode()
        assert ">Ejected</span>" in page
        assert "passive: 5 consecutive 5xx" in page
        assert "returns at <time" in page


def test_a_hostile_ejection_report_is_shown_escaped(admin_client: Client, running, server_group):
    node = register_node(running.instance, "http://127.0.0.1:9")
    report = ejected_report(server_group, running, 1e300)
    entry = report["listeners"][running.pk]["backends"][0]
    entry["ejection_reason"] = "<script>alert(1)</script>" * 50
    node.status_report = report
    node.save()
    page = admin_client.get(server_group.get_absolute_url())
    assert page.status_code == 200
    assert "<script>alert(1)" not in page.content.decode()
    assert "returns at" not in page.content.decode()


# -- the API and backups -------------------------------------------------------------------------


def test_the_api_sets_and_reports_the_passive_check(api, running, server_group) -> None:
    url = f"/api/v1/server-groups/{server_group.pk}/health-check"
    response = api.send(
        "put", url, {"passive_health_check": True, "passive_consecutive_failures": 7}
    )
    assert response.status_code == 200, response.content
    check = response.json()["health_check"]
    assert check["passive_health_check"] is True
    assert check["passive_consecutive_failures"] == 7
    assert check["passive_max_ejection_time"] == 300
    assert AuditRecord.objects.get(action="server_group.modify_health_check").via == "api"

    Listener.objects.filter(pk=running.pk).update(status=Listener.Status.RUNNING)
    bad = api.send(
        "put", url, {"passive_base_ejection_time": 400, "passive_max_ejection_time": 100}
    )
    assert bad.status_code == 422
    problem = bad.json()
    assert "passive_max_ejection_time" in str(problem)
    assert "at least the Base Ejection Time" in str(problem)
    server_group.refresh_from_db()
    assert server_group.passive_base_ejection_time == 30


def test_a_backup_restores_the_passive_check(running, server_group, monkeypatch) -> None:
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None)
    ServerGroup.objects.filter(pk=server_group.pk).update(
        passive_health_check=True,
        passive_consecutive_failures=9,
        passive_base_ejection_time=15,
        passive_max_ejection_time=900,
        passive_max_ejection_percent=25,
    )
    passphrase = "correct horse battery staple"
    document = backup.export_instance(running.instance, passphrase)
    imported = backup.import_instance(document=document, passphrase=passphrase, name="copy")
    copy = imported.server_groups[0]
    copy.refresh_from_db()
    assert copy.pk != server_group.pk
    assert (
        copy.passive_health_check,
        copy.passive_consecutive_failures,
        copy.passive_base_ejection_time,
        copy.passive_max_ejection_time,
        copy.passive_max_ejection_percent,
    ) == (True, 9, 15, 900, 25)

    # A document whose times contradict each other is refused by the form's own message.
    group = document["server_groups"][0]
    group["passive_max_ejection_time"] = 5
    with pytest.raises(backup.BackupInvalid) as refused:
        backup.import_instance(document=document, passphrase=passphrase, name="other")
    problems = [f"{p['field']}: {p['message']}" for p in refused.value.problems]
    assert any(
        line.startswith("server_groups[0].health_check.passive_max_ejection_time: Max Ejection")
        for line in problems
    ), problems


# -- in the browser ------------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_turns_passive_checks_on_and_sees_an_ejection(signed_in_page, live_server) -> None:
    from playwright.sync_api import expect

    instance = Instance.objects.create(name="shop")
    group = ServerGroup.objects.create(name="web")
    BackendServer.objects.create(group=group, address="10.0.0.7", port=8080)
    HealthCheck.objects.create(group=group)
    listener = make_listener(instance, group, status=Listener.Status.RUNNING)
    page = signed_in_page
    page.goto(live_server.url + listener.get_absolute_url())

    page.get_by_role("heading", name="Health Check").get_by_role("link", name="Modify").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("Passive Health Check").check()
    failures = dialog.get_by_label("Consecutive Failures")
    expect(failures).to_have_value("5")
    expect(failures).to_have_attribute("max", "100")
    dialog.get_by_label("Base Ejection Time (s)").fill("60")
    dialog.get_by_label("Max Ejection Time (s)").fill("30")
    dialog.get_by_role("button", name="Save").click()
    # The server's own message, next to the field.
    expect(page.get_by_role("dialog")).to_contain_text(
        "Max Ejection Time must be at least the Base Ejection Time (60 s)."
    )
    page.get_by_role("dialog").get_by_label("Max Ejection Time (s)").fill("600")
    page.get_by_role("dialog").get_by_role("button", name="Save").click()
    expect(page.locator("#hc-heading").locator("..")).to_contain_text("60 s / 600 s")
    group.refresh_from_db()
    assert (group.passive_health_check, group.passive_base_ejection_time) == (True, 60)

    # A node reports the server ejected: the group page says why and when it returns.
    node = register_node(instance, "http://127.0.0.1:9")
    node.status_report = ejected_report(group, listener, time.time() + 42)
    node.save()
    page.goto(live_server.url + group.get_absolute_url())
    # The health section's row of this server as node-a sees it.
    row = page.get_by_role("row").filter(has_text="node-a")
    expect(row).to_contain_text("10.0.0.7:8080")
    expect(row).to_contain_text("Ejected")
    expect(row).to_contain_text("passive: 5 consecutive 5xx")
    expect(row).to_contain_text("returns at")


PASSIVE_NUMBERS = (
    "Consecutive Failures",
    "Base Ejection Time (s)",
    "Max Ejection Time (s)",
    "Max Ejection Percentage (%)",
)


def expect_numbers(scope, *, visible: bool) -> None:
    from playwright.sync_api import expect

    for label in PASSIVE_NUMBERS:
        field = scope.get_by_label(label, exact=True)
        if visible:
            expect(field).to_be_visible()
        else:
            expect(field).to_be_hidden()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_shows_the_passive_numbers_only_while_the_switch_is_on(
    signed_in_page, live_server
) -> None:
    from playwright.sync_api import expect

    instance = Instance.objects.create(name="shop")
    group = ServerGroup.objects.create(name="web")
    BackendServer.objects.create(group=group, address="10.0.0.7", port=8080)
    HealthCheck.objects.create(group=group)
    listener = make_listener(instance, group, status=Listener.Status.RUNNING)
    page = signed_in_page

    # The wizard's Health Check step.
    page.goto(live_server.url + reverse("listener-create-step", args=[instance.id, "healthcheck"]))
    form = page.locator("#wizard-form")
    switch = form.get_by_label("Passive Health Check")
    expect(switch).not_to_be_checked()
    expect_numbers(form, visible=False)
    switch.check()
    expect_numbers(form, visible=True)
    expect(form.get_by_label("Consecutive Failures")).to_have_value("5")
    switch.uncheck()
    expect_numbers(form, visible=False)

    # The Modify Health Check dialog.
    page.goto(live_server.url + listener.get_absolute_url())
    page.get_by_role("heading", name="Health Check").get_by_role("link", name="Modify").click()
    dialog = page.get_by_role("dialog")
    switch = dialog.get_by_label("Passive Health Check")
    expect(switch).not_to_be_checked()
    expect_numbers(dialog, visible=False)
    switch.check()
    expect_numbers(dialog, visible=True)

    # A server's error on a number stays in sight with the switch off.
    dialog.get_by_label("Base Ejection Time (s)").fill("60")
    dialog.get_by_label("Max Ejection Time (s)").fill("30")
    switch.uncheck()
    expect_numbers(dialog, visible=False)
    dialog.get_by_role("button", name="Save").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Max Ejection Time must be at least the Base Ejection Time")
    expect(dialog.get_by_label("Passive Health Check")).not_to_be_checked()
    expect(dialog.get_by_label("Max Ejection Time (s)")).to_be_visible()
    expect(dialog.get_by_label("Consecutive Failures")).to_be_hidden()

    # Put it right and save with the switch off; the field with the error stays in sight until
    # the answer to this save replaces it.
    dialog.get_by_label("Max Ejection Time (s)").fill("600")
    expect(dialog.get_by_label("Base Ejection Time (s)")).to_be_hidden()
    dialog.get_by_role("button", name="Save").click()
    expect(page.get_by_role("dialog")).to_have_count(0)
    expect(page.get_by_text("Health check of web modified.")).to_be_visible()
    expect(page.locator(".field.has-error")).to_have_count(0)
    section = page.locator("#hc-heading").locator("..")
    expect(section).to_contain_text("Passive Health Check")
    expect(section).to_contain_text("Disabled")
    expect(section).not_to_contain_text("Consecutive Failures")
    group.refresh_from_db()
    # Off, with the numbers kept for when it is turned on again.
    assert group.passive_health_check is False
    assert (group.passive_base_ejection_time, group.passive_max_ejection_time) == (60, 600)
