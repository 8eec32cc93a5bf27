"""TLS Security Policies pages: predefined policies read-only, custom ones editable."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from certificates.models import Certificate
from dataplane.config import PREDEFINED_TLS_POLICIES, TLS12_CIPHERS, TLS13_CIPHERSUITES
from listeners.forms.tlspolicies import TlsPolicyForm
from listeners.models import Listener, ServerGroup, TlsPolicy
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db

PREDEFINED = "tls_cipher_policy_1_2"


def policy_data(**overrides) -> dict:
    data = {
        "name": "my-policy",
        "min_version": "TLSv1.2",
        "max_version": "TLSv1.3",
        "ciphers": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"],
        "tls13_ciphersuites": ["TLS_AES_256_GCM_SHA384"],
        "description": "",
    }
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def ecdsa_certificate() -> Certificate:
    """A certificate row with an ECDSA key; the compatibility check reads only the metadata."""
    now = timezone.now()
    return Certificate.objects.create(
        name="ecdsa-cert",
        kind=Certificate.Kind.SERVER,
        certificate_pem="-----BEGIN CERTIFICATE-----",
        subject="CN=www.example.test",
        issuer="CN=Test CA",
        serial="01",
        fingerprint_sha256="00",
        key_algorithm="ECDSA",
        key_size=256,
        key_type="ECDSA P-256",
        not_before=now,
        not_after=now + timedelta(days=90),
    )


def https_listener(instance, server_group, policy, *, certificate=None, **fields) -> Listener:
    return make_listener(
        instance,
        server_group,
        port=443,
        protocol=Listener.Protocol.HTTPS,
        tls_policy=policy,
        default_certificate=certificate,
        **fields,
    )


# -- the form ------------------------------------------------------------------------------------


def test_form_offers_exactly_the_dataplane_suites() -> None:
    form = TlsPolicyForm()
    assert [value for value, _ in form.fields["ciphers"].choices] == list(TLS12_CIPHERS)
    assert [value for value, _ in form.fields["tls13_ciphersuites"].choices] == list(
        TLS13_CIPHERSUITES
    )
    assert form["min_version"].value() == "TLSv1.2"
    assert form["max_version"].value() == "TLSv1.2"


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (
            {"min_version": "TLSv1.3", "max_version": "TLSv1.2"},
            "max_version",
            "Maximum TLS Version must not be lower than the minimum (TLS 1.3).",
        ),
        (
            {"min_version": "TLSv1.0", "max_version": "TLSv1.2", "ciphers": None},
            "ciphers",
            "Select at least one cipher suite for TLS 1.2 and earlier: the range starts at "
            "TLS 1.0.",
        ),
        (
            {"ciphers": None},
            "ciphers",
            "Select at least one cipher suite for TLS 1.2 and earlier: the range starts at "
            "TLS 1.2.",
        ),
        (
            {"tls13_ciphersuites": None},
            "tls13_ciphersuites",
            "Select at least one TLS 1.3 cipher suite: the range includes TLS 1.3.",
        ),
        (
            {"ciphers": ["RC4-MD5"]},
            "ciphers",
            "Select a valid choice. RC4-MD5 is not one of the available choices.",
        ),
        ({"name": ""}, "name", "This field is required."),
        (
            {"name": "TLS_CIPHER_POLICY_1_2"},
            "name",
            "TLS_CIPHER_POLICY_1_2 is the name of a predefined policy.",
        ),
        ({"min_version": "SSLv3"}, "min_version", None),
    ],
)
def test_validation_rules(overrides: dict, field: str, message: str | None) -> None:
    form = TlsPolicyForm(policy_data(**overrides))
    assert not form.is_valid()
    if message is None:
        assert "Select a valid choice" in form.errors[field][0]
    else:
        assert form.errors[field] == [message]


def test_tls13_only_needs_no_tls12_cipher_and_stores_none() -> None:
    form = TlsPolicyForm(policy_data(min_version="TLSv1.3"))
    assert form.is_valid(), form.errors
    policy = form.save()
    assert policy.ciphers == []
    assert policy.tls13_ciphersuites == ["TLS_AES_256_GCM_SHA384"]


def test_suites_outside_the_range_are_dropped_and_order_is_canonical() -> None:
    form = TlsPolicyForm(policy_data(max_version="TLSv1.2"))
    assert form.is_valid(), form.errors
    policy = form.save()
    assert policy.tls13_ciphersuites == []
    assert policy.ciphers == ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"]


def test_names_are_unique_regardless_of_case(custom_tls_policy: TlsPolicy) -> None:
    form = TlsPolicyForm(policy_data(name="STRICT-custom"))
    assert form.errors["name"] == ["A TLS security policy named STRICT-custom already exists."]
    same = TlsPolicyForm(policy_data(name="strict-custom"), instance=custom_tls_policy)
    assert same.is_valid(), same.errors


# -- pages ---------------------------------------------------------------------------------------


def test_list_shows_predefined_and_custom_policies(
    admin_client: Client, custom_tls_policy: TlsPolicy
) -> None:
    response = admin_client.get(reverse("tlspolicy-list"))
    names = [policy.id for policy in response.context["policies"]]
    assert names == [*PREDEFINED_TLS_POLICIES, custom_tls_policy.id]
    content = response.content.decode()
    assert reverse("tlspolicy-edit", args=[custom_tls_policy.id]) in content
    for policy_id in PREDEFINED_TLS_POLICIES:
        assert reverse("tlspolicy-edit", args=[policy_id]) not in content
        assert reverse("tlspolicy-delete", args=[policy_id]) not in content

    custom = admin_client.get(reverse("tlspolicy-list"), {"kind": "custom"}).context["policies"]
    assert [policy.id for policy in custom] == [custom_tls_policy.id]
    found = admin_client.get(reverse("tlspolicy-list"), {"q": "strict_with"}).context["policies"]
    assert [policy.id for policy in found] == ["tls_cipher_policy_1_2_strict_with_1_3"]


def test_detail_shows_versions_and_suites(admin_client: Client) -> None:
    response = admin_client.get(reverse("tlspolicy-detail", args=[PREDEFINED]))
    assert response.status_code == 200
    assert response.context["breadcrumbs"] == [("TLS Security Policies", "tlspolicy-list")]
    content = response.content.decode()
    assert "TLS 1.2" in content
    assert "DES-CBC3-SHA" in content
    assert "Predefined policies are read-only." in content
    assert reverse("tlspolicy-edit", args=[PREDEFINED]) not in content


def test_create_custom_policy(admin_client: Client) -> None:
    response = admin_client.post(reverse("tlspolicy-create"), policy_data(description="edge"))
    policy = TlsPolicy.objects.get(name="my-policy")
    assert response.status_code == 302
    assert response["Location"] == policy.get_absolute_url()
    assert policy.predefined is False
    assert policy.id.startswith("tls-")
    assert (policy.min_version, policy.max_version) == ("TLSv1.2", "TLSv1.3")
    assert policy.ciphers == ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"]
    assert policy.tls13_ciphersuites == ["TLS_AES_256_GCM_SHA384"]
    assert policy.description == "edge"


def test_create_shows_field_errors(admin_client: Client) -> None:
    before = TlsPolicy.objects.count()
    response = admin_client.post(
        reverse("tlspolicy-create"), policy_data(min_version="TLSv1.3", max_version="TLSv1.0")
    )
    assert response.status_code == 422
    assert b"Maximum TLS Version must not be lower than the minimum (TLS 1.3)." in (
        response.content
    )
    assert TlsPolicy.objects.count() == before


def test_copy_a_predefined_policy_into_a_custom_one(admin_client: Client) -> None:
    response = admin_client.get(reverse("tlspolicy-create"), {"from": PREDEFINED})
    form = response.context["form"]
    source = TlsPolicy.objects.get(pk=PREDEFINED)
    assert form["ciphers"].value() == source.ciphers
    assert form["name"].value() == "tls_cipher_policy_1_2-custom"


def test_edit_custom_policy_bumps_listeners_using_it(
    admin_client: Client, custom_tls_policy: TlsPolicy, server_group: ServerGroup, instance
) -> None:
    # Settled: an edit reaching a Configuring listener is refused (seed 003).
    listener = https_listener(
        instance, server_group, custom_tls_policy, status=Listener.Status.RUNNING
    )
    before = instance.generation

    response = admin_client.post(
        reverse("tlspolicy-edit", args=[custom_tls_policy.id]),
        policy_data(name="strict-custom", max_version="TLSv1.2"),
    )

    assert response.status_code == 302
    custom_tls_policy.refresh_from_db()
    assert custom_tls_policy.max_version == "TLSv1.2"
    assert custom_tls_policy.tls13_ciphersuites == []
    instance.refresh_from_db()
    assert instance.generation == before + 1
    listener.refresh_from_db()
    assert listener.status == Listener.Status.CONFIGURING


def test_edit_refuses_to_strand_a_listener_certificate(
    admin_client: Client, custom_tls_policy: TlsPolicy, server_group: ServerGroup, instance
) -> None:
    certificate = ecdsa_certificate()
    listener = https_listener(instance, server_group, custom_tls_policy, certificate=certificate)

    response = admin_client.post(
        reverse("tlspolicy-edit", args=[custom_tls_policy.id]),
        policy_data(
            name="strict-custom", max_version="TLSv1.2", ciphers=["ECDHE-RSA-AES128-GCM-SHA256"]
        ),
    )

    assert response.status_code == 422
    assert response.context["form"].errors["ciphers"] == [
        f"Listener {listener.name} ({listener.id}) uses the ECDSA certificate ecdsa-cert; keep "
        "at least one ECDSA cipher suite."
    ]
    custom_tls_policy.refresh_from_db()
    assert custom_tls_policy.max_version == "TLSv1.3"


def test_predefined_policies_are_read_only(admin_client: Client) -> None:
    source = TlsPolicy.objects.get(pk=PREDEFINED)
    edit = reverse("tlspolicy-edit", args=[PREDEFINED])
    delete = reverse("tlspolicy-delete", args=[PREDEFINED])
    assert admin_client.get(edit).status_code == 403
    response = admin_client.post(edit, policy_data(name="hijacked"))
    assert response.status_code == 403
    assert b"Predefined TLS security policies are read-only." in response.content
    assert admin_client.post(delete).status_code == 403
    after = TlsPolicy.objects.get(pk=PREDEFINED)
    assert (after.name, after.ciphers, after.max_version) == (
        source.name,
        source.ciphers,
        source.max_version,
    )


def test_delete_unused_custom_policy(admin_client: Client, custom_tls_policy: TlsPolicy) -> None:
    response = admin_client.post(reverse("tlspolicy-delete", args=[custom_tls_policy.id]))
    assert response.status_code == 302
    assert response["Location"] == reverse("tlspolicy-list")
    assert not TlsPolicy.objects.filter(pk=custom_tls_policy.pk).exists()


def test_delete_is_refused_while_a_listener_uses_the_policy(
    admin_client: Client, custom_tls_policy: TlsPolicy, server_group: ServerGroup, instance
) -> None:
    listener = https_listener(instance, server_group, custom_tls_policy)
    response = admin_client.post(reverse("tlspolicy-delete", args=[custom_tls_policy.id]))
    assert response.status_code == 409
    assert response.context["blockers"] == [listener]
    assert listener.get_absolute_url().encode() in response.content
    assert TlsPolicy.objects.filter(pk=custom_tls_policy.pk).exists()


# -- viewers -------------------------------------------------------------------------------------


def test_viewer_sees_every_page(viewer_client: Client, custom_tls_policy: TlsPolicy) -> None:
    for name, args in [
        ("tlspolicy-list", []),
        ("tlspolicy-detail", [PREDEFINED]),
        ("tlspolicy-detail", [custom_tls_policy.id]),
        ("tlspolicy-create", []),
        ("tlspolicy-edit", [custom_tls_policy.id]),
        ("tlspolicy-delete", [custom_tls_policy.id]),
    ]:
        assert viewer_client.get(reverse(name, args=args)).status_code == 200, name
    listing = viewer_client.get(reverse("tlspolicy-list")).content
    assert b"Create Custom Policy" not in listing
    assert reverse("tlspolicy-edit", args=[custom_tls_policy.id]).encode() not in listing


def test_viewer_cannot_change_anything(viewer_client: Client, custom_tls_policy: TlsPolicy) -> None:
    before = TlsPolicy.objects.count()
    posts = [
        (reverse("tlspolicy-create"), policy_data()),
        (reverse("tlspolicy-edit", args=[custom_tls_policy.id]), policy_data(name="renamed")),
        (reverse("tlspolicy-delete", args=[custom_tls_policy.id]), {}),
    ]
    for url, data in posts:
        assert viewer_client.post(url, data).status_code == 403, url
    assert TlsPolicy.objects.count() == before
    custom_tls_policy.refresh_from_db()
    assert custom_tls_policy.name == "strict-custom"
