"""Server Groups pages and the backend server rows form shared with the wizard."""

from __future__ import annotations

import pytest
from django.http import QueryDict
from django.test import Client
from django.urls import reverse
from playwright.sync_api import expect

from console.models import Instance
from listeners.forms.servergroups import (
    BackendServerFormSet,
    ServerGroupForm,
    add_row,
    save_servers,
    server_rows,
)
from listeners.models import BackendServer, HealthCheck, Listener, ServerGroup
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


def rows_data(*rows: tuple, initial: int = 0, **extra: str) -> dict[str, str]:
    """POST data for the servers formset: rows of (address, port, weight[, DELETE])."""
    data = {
        "servers-TOTAL_FORMS": str(len(rows)),
        "servers-INITIAL_FORMS": str(initial),
        "servers-MIN_NUM_FORMS": "0",
        "servers-MAX_NUM_FORMS": "500",
        **extra,
    }
    for index, row in enumerate(rows):
        address, port, weight, *delete = row
        data[f"servers-{index}-address"] = address
        data[f"servers-{index}-port"] = str(port)
        data[f"servers-{index}-weight"] = str(weight)
        if delete:
            data[f"servers-{index}-DELETE"] = "on"
    return data


def group_data(*rows: tuple, name: str = "api", protocol: str = "http", **extra) -> dict:
    return {
        "name": name,
        "backend_protocol": protocol,
        "description": "",
        **rows_data(*rows, **extra),
    }


def stored_servers(group: ServerGroup) -> list[tuple[str, int, int]]:
    return list(group.servers.order_by("port").values_list("address", "port", "weight"))


# -- the rows form -----------------------------------------------------------------------------


def test_row_defaults_and_labels_follow_the_seed() -> None:
    formset = BackendServerFormSet(initial=[{"weight": 100}])
    row = formset.forms[0]
    assert formset.prefix == "servers"
    assert row.fields["weight"].initial == 100
    assert [row.fields[name].label for name in ("address", "port", "weight")] == [
        "Server Address",
        "Port",
        "Weight",
    ]
    assert row.fields["address"].widget.attrs["aria-label"] == "Server Address, row 1"


@pytest.mark.parametrize(
    ("row", "field", "message"),
    [
        (("10.0.0.300", 80, 100), "address", "Enter a valid IPv4 or IPv6 address."),
        (("10.0.0.1", 0, 100), "port", "Port must be between 1 and 65535."),
        (("10.0.0.1", 65536, 100), "port", "Port must be between 1 and 65535."),
        (("10.0.0.1", 80, 101), "weight", "Weight must be between 0 and 100."),
        (("10.0.0.1", 80, -1), "weight", "Weight must be between 0 and 100."),
    ],
)
def test_row_ranges(row: tuple, field: str, message: str) -> None:
    formset = BackendServerFormSet(rows_data(row, initial=1))
    assert not formset.is_valid()
    assert formset.errors[0][field] == [message]


def test_weight_zero_and_ipv6_are_accepted() -> None:
    formset = BackendServerFormSet(rows_data(("2001:db8:0::1", 443, 0), initial=1))
    assert formset.is_valid(), formset.errors
    assert formset.rows() == [
        {"address": "2001:db8::1", "port": 443, "weight": 0, "description": ""}
    ]


def test_duplicate_address_and_port_is_refused_naming_both_rows() -> None:
    formset = BackendServerFormSet(
        rows_data(("10.0.0.1", 80, 100), ("10.0.0.2", 80, 100), ("10.0.0.1", 80, 50), initial=3)
    )
    assert not formset.is_valid()
    assert formset.non_form_errors() == [
        "Backend server 10.0.0.1:80 is listed twice (rows 1 and 3)."
    ]
    assert formset.errors[2]["port"] == ["10.0.0.1:80 is already in row 1."]


def test_duplicate_written_differently_in_ipv6_is_refused() -> None:
    formset = BackendServerFormSet(
        rows_data(("2001:db8::1", 80, 100), ("2001:0db8:0:0::1", 80, 100), initial=2)
    )
    assert not formset.is_valid()
    assert formset.non_form_errors() == [
        "Backend server [2001:db8::1]:80 is listed twice (rows 1 and 2)."
    ]


def test_a_removed_row_does_not_count_as_duplicate() -> None:
    formset = BackendServerFormSet(
        rows_data(("10.0.0.1", 80, 100), ("10.0.0.1", 80, 50, "delete"), initial=2)
    )
    assert formset.is_valid(), formset.non_form_errors()
    assert [row["weight"] for row in formset.rows()] == [100]


def test_at_least_one_server_is_needed() -> None:
    formset = BackendServerFormSet(rows_data(("10.0.0.1", 80, 100, "delete"), initial=1))
    assert not formset.is_valid()
    assert formset.non_form_errors() == ["Add at least one backend server."]


def test_add_row_appends_an_empty_row_with_weight_100() -> None:
    data = QueryDict(mutable=True)
    data.update(rows_data(("10.0.0.1", 80, 30), initial=1))
    data.setlist("tags", ["a", "b"])

    added = add_row(data)

    assert added["servers-TOTAL_FORMS"] == "2"
    assert added["servers-1-weight"] == "100"
    assert "servers-1-address" not in added
    assert added["servers-0-weight"] == "30"
    assert added["tags"] == ["a", "b"]
    # The untouched new row is ignored, so the data still validates as one server.
    formset = BackendServerFormSet(added)
    assert formset.is_valid(), formset.errors
    assert len(formset.rows()) == 1


def test_save_servers_replaces_rows_and_keeps_ids_of_unchanged_endpoints(server_group) -> None:
    kept = server_group.servers.get(port=8081)
    formset = BackendServerFormSet(
        rows_data(("127.0.0.1", 8081, 10), ("127.0.0.1", 8083, 100), initial=2)
    )
    assert formset.is_valid(), formset.errors

    save_servers(server_group, formset)

    assert stored_servers(server_group) == [("127.0.0.1", 8081, 10), ("127.0.0.1", 8083, 100)]
    assert server_group.servers.get(port=8081).pk == kept.pk


def test_server_rows_round_trip(server_group) -> None:
    assert server_rows(server_group) == [
        {"address": "127.0.0.1", "port": 8081, "weight": 100, "description": ""},
        {"address": "127.0.0.1", "port": 8082, "weight": 50, "description": ""},
    ]
    formset = BackendServerFormSet(initial=server_rows(server_group))
    assert formset.total_form_count() == 2


# -- create ------------------------------------------------------------------------------------


def test_create_page_offers_one_row_with_weight_100(admin_client: Client) -> None:
    response = admin_client.get(reverse("servergroup-create"))
    assert response.status_code == 200
    formset = response.context["formset"]
    assert formset.total_form_count() == 1
    assert formset.forms[0]["weight"].value() == 100
    assert b'name="add_server"' in response.content
    assert b">Reset</button>" in response.content


def test_create_group_with_servers_and_a_default_health_check(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("servergroup-create"),
        group_data(("192.168.0.10", 8080, 100), ("192.168.0.11", 8080, 0), initial=1),
    )
    group = ServerGroup.objects.get(name="api")
    assert response.status_code == 302
    assert response["Location"] == group.get_absolute_url()
    assert group.backend_protocol == "http"
    assert list(group.servers.values_list("address", "port", "weight")) == [
        ("192.168.0.10", 8080, 100),
        ("192.168.0.11", 8080, 0),
    ]
    check = HealthCheck.objects.get(group=group)
    # The HTTP backends get an HTTP check, as in the wizard: a server answering 500 leaves.
    assert (check.enabled, check.protocol, check.interval, check.timeout) == (True, "http", 5, 2)


def test_create_refuses_duplicates_and_stores_nothing(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("servergroup-create"),
        group_data(("10.0.0.1", 80, 100), ("10.0.0.1", 80, 100), initial=1),
    )
    assert response.status_code == 422
    assert response.context["formset"].non_form_errors() == [
        "Backend server 10.0.0.1:80 is listed twice (rows 1 and 2)."
    ]
    assert b"is listed twice" in response.content
    assert not ServerGroup.objects.exists()


def test_create_needs_a_name(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("servergroup-create"), group_data(("10.0.0.1", 80, 100), name="")
    )
    assert response.status_code == 422
    assert response.context["form"].errors["name"] == ["This field is required."]
    assert not ServerGroup.objects.exists()


def test_add_more_without_javascript_renders_one_more_row(admin_client: Client) -> None:
    data = group_data(("10.0.0.1", 80, 100), initial=1, add_server="1")
    response = admin_client.post(reverse("servergroup-create"), data)
    assert response.status_code == 200
    formset = response.context["formset"]
    assert formset.total_form_count() == 2
    assert formset.forms[1]["weight"].value() == "100"
    assert b'name="servers-1-address"' in response.content
    assert not ServerGroup.objects.exists()


def test_add_more_with_htmx_answers_with_the_rows_table(admin_client: Client) -> None:
    data = group_data(("", "", 100), initial=1, add_server="1")
    response = admin_client.post(
        reverse("servergroup-create"), data, headers={"HX-Request": "true"}
    )
    assert response.status_code == 200
    assert b'id="server-rows"' in response.content
    assert b'name="servers-1-weight"' in response.content
    # Half-typed rows are not flagged while the operator is still adding rows.
    assert b"This field is required." not in response.content


# -- list and detail -----------------------------------------------------------------------------


def test_list_shows_counts_and_listeners_and_searches(
    admin_client: Client, server_group: ServerGroup, instance: Instance
) -> None:
    listener = make_listener(instance, server_group, name="shop")
    ServerGroup.objects.create(name="other")

    response = admin_client.get(reverse("servergroup-list"))
    groups = {group.name: group for group in response.context["groups"]}
    assert groups["web-backends"].server_count == 2
    assert groups["web-backends"].listener_count == 1
    assert listener.get_absolute_url().encode() in response.content

    found = admin_client.get(reverse("servergroup-list"), {"q": "web"}).context["groups"]
    assert [group.name for group in found] == ["web-backends"]
    by_address = admin_client.get(reverse("servergroup-list"), {"q": "127.0.0"}).context["groups"]
    assert [group.name for group in by_address] == ["web-backends"]


def test_detail_shows_servers_health_check_and_listeners(
    admin_client: Client, server_group: ServerGroup, instance: Instance
) -> None:
    listener = make_listener(instance, server_group, name="shop")
    response = admin_client.get(server_group.get_absolute_url())
    assert response.status_code == 200
    assert response.context["breadcrumbs"] == [("Server Groups", "servergroup-list")]
    assert response.context["title"] == "web-backends"
    content = response.content.decode()
    assert "8081" in content and "8082" in content
    assert "Healthy Threshold" in content
    assert listener.get_absolute_url() in content


# -- edit ----------------------------------------------------------------------------------------


def test_edit_page_starts_from_the_stored_servers(
    admin_client: Client, server_group: ServerGroup
) -> None:
    response = admin_client.get(reverse("servergroup-edit", args=[server_group.id]))
    formset = response.context["formset"]
    assert [form["port"].value() for form in formset.forms] == [8081, 8082]
    assert [form["weight"].value() for form in formset.forms] == [100, 50]


def test_edit_weights_remove_and_add_servers(
    admin_client: Client, server_group: ServerGroup
) -> None:
    data = group_data(
        ("127.0.0.1", 8081, 100, "delete"),
        ("127.0.0.1", 8082, 75),
        ("::1", 8083, 100),
        name="web-backends",
        initial=2,
    )
    response = admin_client.post(reverse("servergroup-edit", args=[server_group.id]), data)
    assert response.status_code == 302
    assert stored_servers(server_group) == [("127.0.0.1", 8082, 75), ("::1", 8083, 100)]


def test_edit_of_a_group_in_use_bumps_the_generation(
    admin_client: Client, server_group: ServerGroup, instance: Instance
) -> None:
    listener = make_listener(instance, server_group)
    Listener.objects.filter(pk=listener.pk).update(status=Listener.Status.RUNNING)
    before = instance.generation

    data = group_data(
        ("127.0.0.1", 8081, 100), ("127.0.0.1", 8082, 10), name="web-backends", initial=2
    )
    response = admin_client.post(reverse("servergroup-edit", args=[server_group.id]), data)

    assert response.status_code == 302
    instance.refresh_from_db()
    listener.refresh_from_db()
    assert instance.generation == before + 1
    assert listener.status == Listener.Status.CONFIGURING
    assert server_group.servers.get(port=8082).weight == 10


def test_edit_of_an_unused_group_leaves_instances_alone(
    admin_client: Client, server_group: ServerGroup, instance: Instance
) -> None:
    before = instance.generation
    data = group_data(("127.0.0.1", 8081, 1), name="web-backends", initial=1)
    admin_client.post(reverse("servergroup-edit", args=[server_group.id]), data)
    instance.refresh_from_db()
    assert instance.generation == before


def test_backend_protocol_must_suit_the_listeners_using_the_group(
    admin_client: Client, server_group: ServerGroup, instance: Instance
) -> None:
    listener = make_listener(instance, server_group, name="shop")
    data = group_data(
        ("127.0.0.1", 8081, 100),
        ("127.0.0.1", 8082, 50),
        name="web-backends",
        protocol="tcp",
        initial=2,
    )
    response = admin_client.post(reverse("servergroup-edit", args=[server_group.id]), data)
    assert response.status_code == 422
    assert response.context["form"].errors["backend_protocol"] == [
        f"Listener shop ({listener.id}) forwards HTTP to this group, so its backend protocol "
        "must be HTTP or HTTPS."
    ]
    server_group.refresh_from_db()
    assert server_group.backend_protocol == "http"


def test_https_backend_is_fine_for_an_http_listener(
    server_group: ServerGroup, instance: Instance
) -> None:
    make_listener(instance, server_group)
    form = ServerGroupForm(
        {"name": "web-backends", "backend_protocol": "https", "description": ""},
        instance=server_group,
    )
    assert form.is_valid(), form.errors


# -- delete --------------------------------------------------------------------------------------


def test_delete_unused_group(admin_client: Client, server_group: ServerGroup) -> None:
    response = admin_client.post(reverse("servergroup-delete", args=[server_group.id]))
    assert response.status_code == 302
    assert response["Location"] == reverse("servergroup-list")
    assert not ServerGroup.objects.exists()
    assert not BackendServer.objects.exists()
    assert not HealthCheck.objects.exists()


def test_delete_is_refused_while_a_listener_uses_the_group(
    admin_client: Client, server_group: ServerGroup, instance: Instance
) -> None:
    listener = make_listener(instance, server_group, name="shop")
    response = admin_client.post(reverse("servergroup-delete", args=[server_group.id]))
    assert response.status_code == 409
    assert response.context["blockers"] == [listener]
    assert listener.get_absolute_url().encode() in response.content
    assert b"cannot be deleted while listeners use it" in response.content
    assert ServerGroup.objects.filter(pk=server_group.pk).exists()


def test_delete_dialog_with_htmx(admin_client: Client, server_group: ServerGroup) -> None:
    url = reverse("servergroup-delete", args=[server_group.id])
    response = admin_client.get(url, headers={"HX-Request": "true"})
    assert b"<dialog" in response.content
    response = admin_client.post(url, headers={"HX-Request": "true"})
    assert response["HX-Redirect"] == reverse("servergroup-list")


# -- viewers -------------------------------------------------------------------------------------


def test_viewer_sees_every_page_without_change_buttons(
    viewer_client: Client, server_group: ServerGroup
) -> None:
    for name, args in [
        ("servergroup-list", []),
        ("servergroup-detail", [server_group.id]),
        ("servergroup-create", []),
        ("servergroup-edit", [server_group.id]),
        ("servergroup-delete", [server_group.id]),
    ]:
        assert viewer_client.get(reverse(name, args=args)).status_code == 200, name
    listing = viewer_client.get(reverse("servergroup-list")).content
    assert b"Create Server Group" not in listing
    assert b"Edit Servers" not in listing


def test_viewer_cannot_change_anything(viewer_client: Client, server_group: ServerGroup) -> None:
    before = stored_servers(server_group)
    posts = [
        (reverse("servergroup-create"), group_data(("10.0.0.1", 80, 100))),
        (
            reverse("servergroup-edit", args=[server_group.id]),
            group_data(("10.0.0.1", 80, 100), name="renamed"),
        ),
        (reverse("servergroup-delete", args=[server_group.id]), {}),
    ]
    for url, data in posts:
        assert viewer_client.post(url, data).status_code == 403, url
    assert list(ServerGroup.objects.values_list("name", flat=True)) == ["web-backends"]
    assert stored_servers(server_group) == before


# -- in a browser: the parts that need JavaScript ------------------------------------------------


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_browser_reset_add_more_and_delete(signed_in_page, live_server) -> None:
    page = signed_in_page
    page.goto(live_server.url + reverse("servergroup-create"))
    page.get_by_label("Server Group Name").fill("clicked")
    page.get_by_label("Server Address, row 1").fill("10.0.0.1")
    page.get_by_label("Port, row 1").fill("80")
    page.get_by_label("Weight, row 1").fill("30")

    page.get_by_role("button", name="Reset weight of row 1 to 100").click()
    expect(page.get_by_label("Weight, row 1")).to_have_value("100")

    page.get_by_role("button", name="Add More").click()
    expect(page.get_by_label("Weight, row 2")).to_have_value("100")
    expect(page.get_by_label("Server Address, row 1")).to_have_value("10.0.0.1")
    page.get_by_label("Server Address, row 2").fill("10.0.0.2")
    page.get_by_label("Port, row 2").fill("80")
    page.get_by_label("Weight, row 2").fill("0")
    # Enter submits the form itself, not "Add More" (the first submit button in the rows).
    page.get_by_label("Port, row 2").press("Enter")

    expect(page.get_by_role("heading", name="clicked")).to_be_visible()
    group = ServerGroup.objects.get(name="clicked")
    assert list(group.servers.values_list("address", "port", "weight")) == [
        ("10.0.0.1", 80, 100),
        ("10.0.0.2", 80, 0),
    ]

    page.get_by_role("link", name="Delete").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Delete server group clicked")
    dialog.get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Server Groups")).to_be_visible()
    assert not ServerGroup.objects.exists()
