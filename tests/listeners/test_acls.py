"""Access Control pages: IP address groups and their CIDR entries."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from listeners.forms.acls import AccessControlListForm, parse_entries
from listeners.models import AccessControlList, AclEntry, Listener
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


def acl_data(entries: str, *, name: str = "partners", description: str = "") -> dict:
    return {"name": name, "description": description, "entries": entries}


def stored_entries(acl: AccessControlList) -> list[tuple[str, str]]:
    return list(acl.entries.order_by("cidr").values_list("cidr", "description"))


# -- parsing -------------------------------------------------------------------------------------


def test_entries_with_descriptions_and_bare_addresses() -> None:
    entries, errors = parse_entries(
        "10.0.0.0/8 office\n\n  192.168.1.10   front desk printer \n2001:DB8::/32\n::1\n"
    )
    assert errors == []
    assert [(entry.cidr, entry.description) for entry in entries] == [
        ("10.0.0.0/8", "office"),
        ("192.168.1.10/32", "front desk printer"),
        ("2001:db8::/32", ""),
        ("::1/128", ""),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "10.0.0.1/8",
            "Line 1: “10.0.0.1/8” has host bits set after the /8 prefix; did you mean 10.0.0.0/8?",
        ),
        (
            "2001:db8::1/32 lab",
            "Line 1: “2001:db8::1/32” has host bits set after the /32 prefix; did you mean "
            "2001:db8::/32?",
        ),
        ("10.0.0.0/33", "Line 1: “10.0.0.0/33” is not an IPv4 or IPv6 address or CIDR block."),
        ("300.1.1.1", "Line 1: “300.1.1.1” is not an IPv4 or IPv6 address or CIDR block."),
        ("office 10.0.0.0/8", "Line 1: “office” is not an IPv4 or IPv6 address or CIDR block."),
        ("10.0.0.0/8\n10.0.0.0/8", "Line 2: 10.0.0.0/8 is already listed on line 1."),
        ("::1\n::1/128", "Line 2: ::1/128 is already listed on line 1."),
        ("192.168.0.1\n192.168.0.1/32", "Line 2: 192.168.0.1/32 is already listed on line 1."),
        (
            "10.0.0.0/8 " + "x" * 256,
            "Line 1: the description is longer than 255 characters.",
        ),
    ],
)
def test_each_bad_line_is_named(text: str, message: str) -> None:
    form = AccessControlListForm(acl_data(text))
    assert not form.is_valid()
    assert form.errors["entries"] == [message]


def test_every_bad_line_is_reported_at_once() -> None:
    form = AccessControlListForm(acl_data("10.0.0.0/8\nnope\n10.0.0.0/8\n172.16.0.1/12"))
    assert form.errors["entries"] == [
        "Line 2: “nope” is not an IPv4 or IPv6 address or CIDR block.",
        "Line 3: 10.0.0.0/8 is already listed on line 1.",
        "Line 4: “172.16.0.1/12” has host bits set after the /12 prefix; did you mean "
        "172.16.0.0/12?",
    ]


def test_at_most_1000_entries() -> None:
    lines = [f"10.{n // 256}.{n % 256}.0/24" for n in range(1001)]
    form = AccessControlListForm(acl_data("\n".join(lines)))
    assert form.errors["entries"] == [
        "An IP address group holds at most 1000 entries; this has 1001."
    ]
    assert AccessControlListForm(acl_data("\n".join(lines[:1000]))).is_valid()


def test_an_empty_group_is_allowed() -> None:
    # Seed 000: a whitelist or blacklist with no entries forwards every request.
    form = AccessControlListForm(acl_data(""))
    assert form.is_valid(), form.errors
    assert form.parsed_entries == []


# -- pages ---------------------------------------------------------------------------------------


def test_create_group(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("acl-create"),
        acl_data("10.0.0.0/8 office\n192.168.1.10\n2001:db8::/32 lab", description="Partners"),
    )
    acl = AccessControlList.objects.get(name="partners")
    assert response.status_code == 302
    assert response["Location"] == acl.get_absolute_url()
    assert acl.id.startswith("acl-")
    assert acl.description == "Partners"
    assert stored_entries(acl) == [
        ("10.0.0.0/8", "office"),
        ("192.168.1.10/32", ""),
        ("2001:db8::/32", "lab"),
    ]


def test_create_with_a_bad_line_stores_nothing(admin_client: Client) -> None:
    response = admin_client.post(reverse("acl-create"), acl_data("10.0.0.0/8\n10.0.0.1/8"))
    assert response.status_code == 422
    assert "Line 2: “10.0.0.1/8” has host bits set" in response.content.decode()
    assert not AccessControlList.objects.exists()
    assert not AclEntry.objects.exists()


def test_create_in_a_dialog_with_htmx(admin_client: Client) -> None:
    response = admin_client.get(reverse("acl-create"), headers={"HX-Request": "true"})
    assert b"<dialog" in response.content
    response = admin_client.post(
        reverse("acl-create"), acl_data("10.0.0.0/8"), headers={"HX-Request": "true"}
    )
    acl = AccessControlList.objects.get()
    assert response["HX-Redirect"] == acl.get_absolute_url()


def test_list_counts_and_search(admin_client: Client, acl: AccessControlList) -> None:
    AccessControlList.objects.create(name="empty")
    response = admin_client.get(reverse("acl-list"))
    counts = {row.name: row.entry_count for row in response.context["acls"]}
    assert counts == {"office": 2, "empty": 0}
    found = admin_client.get(reverse("acl-list"), {"q": "2001:db8"}).context["acls"]
    assert [row.name for row in found] == ["office"]
    by_id = admin_client.get(reverse("acl-list"), {"q": acl.id}).context["acls"]
    assert [row.name for row in by_id] == ["office"]


def test_detail_lists_entries_and_listeners(
    admin_client: Client, acl: AccessControlList, server_group, instance
) -> None:
    listener = make_listener(
        instance, server_group, acl=acl, acl_mode=Listener.AclMode.WHITELIST, name="shop"
    )
    response = admin_client.get(acl.get_absolute_url())
    assert response.status_code == 200
    assert response.context["breadcrumbs"] == [("Access Control", "acl-list")]
    content = response.content.decode()
    assert "10.0.0.0/8" in content and "2001:db8::/32" in content
    assert listener.get_absolute_url() in content
    assert "Whitelist" in content


def test_edit_starts_from_the_stored_entries(admin_client: Client, acl: AccessControlList) -> None:
    form = admin_client.get(reverse("acl-edit", args=[acl.id])).context["form"]
    assert form["entries"].value() == "10.0.0.0/8 office\n2001:db8::/32 lab"


def test_edit_replaces_entries_and_bumps_listeners(
    admin_client: Client, acl: AccessControlList, server_group, instance
) -> None:
    listener = make_listener(instance, server_group, acl=acl, acl_mode=Listener.AclMode.BLACKLIST)
    Listener.objects.filter(pk=listener.pk).update(status=Listener.Status.RUNNING)
    kept = acl.entries.get(cidr="10.0.0.0/8")
    before = instance.generation

    response = admin_client.post(
        reverse("acl-edit", args=[acl.id]),
        acl_data("10.0.0.0/8 head office\n172.16.0.0/12", name="office"),
    )

    assert response.status_code == 302
    assert stored_entries(acl) == [("10.0.0.0/8", "head office"), ("172.16.0.0/12", "")]
    assert acl.entries.get(cidr="10.0.0.0/8").pk == kept.pk
    instance.refresh_from_db()
    listener.refresh_from_db()
    assert instance.generation == before + 1
    assert listener.status == Listener.Status.CONFIGURING


def test_edit_with_a_duplicate_changes_nothing(
    admin_client: Client, acl: AccessControlList
) -> None:
    before = stored_entries(acl)
    response = admin_client.post(
        reverse("acl-edit", args=[acl.id]), acl_data("::1\n::1/128", name="office")
    )
    assert response.status_code == 422
    assert response.context["form"].errors["entries"] == [
        "Line 2: ::1/128 is already listed on line 1."
    ]
    assert stored_entries(acl) == before


def test_delete_unused_group(admin_client: Client, acl: AccessControlList) -> None:
    response = admin_client.post(reverse("acl-delete", args=[acl.id]))
    assert response.status_code == 302
    assert response["Location"] == reverse("acl-list")
    assert not AccessControlList.objects.exists()
    assert not AclEntry.objects.exists()


def test_delete_is_refused_while_a_listener_uses_the_group(
    admin_client: Client, acl: AccessControlList, server_group, instance
) -> None:
    listener = make_listener(
        instance, server_group, acl=acl, acl_mode=Listener.AclMode.WHITELIST, name="shop"
    )
    response = admin_client.post(reverse("acl-delete", args=[acl.id]))
    assert response.status_code == 409
    assert response.context["blockers"] == [listener]
    assert listener.get_absolute_url().encode() in response.content
    assert AccessControlList.objects.filter(pk=acl.pk).exists()


# -- viewers -------------------------------------------------------------------------------------


def test_viewer_sees_every_page(viewer_client: Client, acl: AccessControlList) -> None:
    for name, args in [
        ("acl-list", []),
        ("acl-detail", [acl.id]),
        ("acl-create", []),
        ("acl-edit", [acl.id]),
        ("acl-delete", [acl.id]),
    ]:
        assert viewer_client.get(reverse(name, args=args)).status_code == 200, name
    listing = viewer_client.get(reverse("acl-list")).content
    assert b"Create IP Address Group" not in listing
    assert reverse("acl-edit", args=[acl.id]).encode() not in listing


def test_viewer_cannot_change_anything(viewer_client: Client, acl: AccessControlList) -> None:
    before = stored_entries(acl)
    posts = [
        (reverse("acl-create"), acl_data("10.0.0.0/8")),
        (reverse("acl-edit", args=[acl.id]), acl_data("192.168.0.0/16", name="renamed")),
        (reverse("acl-delete", args=[acl.id]), {}),
    ]
    for url, data in posts:
        assert viewer_client.post(url, data).status_code == 403, url
    assert list(AccessControlList.objects.values_list("name", flat=True)) == ["office"]
    assert stored_entries(acl) == before
