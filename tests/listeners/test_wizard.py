"""The Create Listener wizard, step by step, through the test client."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from certificates.models import Certificate
from console.models import Instance
from listeners.models import Listener, ServerGroup
from tests.factories.certs import make_ca, make_server_cert
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db

ADVANCED_DEFAULTS = {
    "scheduler": "weighted_round_robin",
    "persistence": "none",
    "acl_mode": "off",
    "idle_timeout": "15",
    "request_timeout": "60",
    "response_timeout": "60",
    "x_forwarded_for": "add",
    "auto_enable": "on",
}


def step_url(instance: Instance, step: str) -> str:
    return reverse("listener-create-step", args=[instance.id, step])


def post_step(client: Client, instance: Instance, step: str, data: dict, action: str = "next"):
    return client.post(step_url(instance, step), {**data, "action": action})


def servers_data(rows: list[tuple[str, int, int]]) -> dict:
    data = {
        "servers-TOTAL_FORMS": str(len(rows)),
        "servers-INITIAL_FORMS": "0",
        "servers-MIN_NUM_FORMS": "0",
        "servers-MAX_NUM_FORMS": "1000",
    }
    for index, (address, port, weight) in enumerate(rows):
        data |= {
            f"servers-{index}-address": address,
            f"servers-{index}-port": str(port),
            f"servers-{index}-weight": str(weight),
        }
    return data


def upload_server_cert(
    client: Client, key_type: str = "ec-p256", name: str = "site"
) -> Certificate:
    material = make_server_cert(key_type)
    client.post(
        reverse("certificate-upload", args=["server"]),
        {"name": name, "certificate": material.cert_pem, "private_key": material.key_pem},
    )
    return Certificate.objects.get(name=name)


def upload_ca(client: Client) -> Certificate:
    ca = make_ca("Wizard Client CA")
    client.post(
        reverse("certificate-upload", args=["ca"]), {"name": "clients", "certificate": ca.cert_pem}
    )
    return Certificate.objects.get(name="clients")


def walk_http_wizard(client: Client, instance: Instance, **protocol_fields) -> object:
    fields = {
        "protocol": "http",
        "port": "80",
        "name": "web",
        **ADVANCED_DEFAULTS,
        **protocol_fields,
    }
    response = post_step(client, instance, "protocol", fields)
    assert response.status_code == 302, response.context["form"].errors
    assert response["Location"] == step_url(instance, "servergroup")
    response = post_step(
        client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "web-pool", "new_backend_protocol": "http"}
        | servers_data([("127.0.0.1", 8081, 3), ("127.0.0.1", 8082, 1)]),
    )
    assert response.status_code == 302, response.content[:2000]
    assert response["Location"] == step_url(instance, "healthcheck")
    response = post_step(
        client,
        instance,
        "healthcheck",
        {
            "enabled": "on",
            "protocol": "http",
            "path": "/healthz",
            "interval": "5",
            "timeout": "2",
            "healthy_threshold": "3",
            "unhealthy_threshold": "3",
            "expected_codes": ["http_2xx"],
        },
    )
    assert response.status_code == 302
    assert response["Location"] == step_url(instance, "confirm")
    return client.get(step_url(instance, "confirm"))


def test_http_wizard_creates_listener_group_and_health_check(
    admin_client: Client, instance: Instance
) -> None:
    confirm = walk_http_wizard(admin_client, instance, header_x_forwarded_proto="on")
    assert confirm.status_code == 200
    assert b"Protocol &amp; Listener" in confirm.content
    token = confirm.context["token"]
    generation = instance.generation

    response = admin_client.post(
        step_url(instance, "confirm"), {"token": token, "action": "submit"}
    )

    listener = Listener.objects.get()
    assert response.status_code == 302
    assert response["Location"] == listener.get_absolute_url()
    assert (listener.protocol, listener.port, listener.name) == ("http", 80, "web")
    assert listener.status == "configuring"
    assert listener.desired_state == "running"
    assert listener.header_x_forwarded_proto is True
    assert listener.idle_timeout == 15 and listener.request_timeout == 60
    group = listener.server_group
    assert sorted((s.port, s.weight) for s in group.servers.all()) == [(8081, 3), (8082, 1)]
    assert group.health_check.path == "/healthz"
    assert group.health_check.expected_codes == ["http_2xx"]
    instance.refresh_from_db()
    assert instance.generation == generation + 1


def test_double_submit_creates_one_listener(admin_client: Client, instance: Instance) -> None:
    confirm = walk_http_wizard(admin_client, instance)
    token = confirm.context["token"]
    first = admin_client.post(step_url(instance, "confirm"), {"token": token, "action": "submit"})
    second = admin_client.post(step_url(instance, "confirm"), {"token": token, "action": "submit"})
    assert Listener.objects.count() == 1
    assert first["Location"] == second["Location"] == Listener.objects.get().get_absolute_url()


def test_previous_keeps_what_was_typed(admin_client: Client, instance: Instance) -> None:
    fields = {"protocol": "http", "port": "8080", "name": "typed", **ADVANCED_DEFAULTS}
    post_step(admin_client, instance, "protocol", fields)
    post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "half"},
        "previous",
    )
    page = admin_client.get(step_url(instance, "protocol"))
    assert page.context["form"]["name"].value() == "typed"
    group_page = admin_client.get(step_url(instance, "servergroup"))
    assert group_page.context["form"]["new_group_name"].value() == "half"


def test_certificate_step_is_skipped_for_http_and_required_for_https(
    admin_client: Client, instance: Instance
) -> None:
    post_step(
        admin_client,
        instance,
        "protocol",
        {"protocol": "https", "port": "443", **ADVANCED_DEFAULTS},
    )
    response = post_step(
        admin_client, instance, "certificate", {"tls_policy": "tls_cipher_policy_1_0"}
    )
    assert response.status_code == 422
    assert "need a server certificate" in response.context["form"].errors["default_certificate"][0]


def test_https_wizard_with_mutual_authentication(admin_client: Client, instance: Instance) -> None:
    cert = upload_server_cert(admin_client)
    ca = upload_ca(admin_client)
    post_step(
        admin_client,
        instance,
        "protocol",
        {"protocol": "https", "port": "443", **ADVANCED_DEFAULTS},
    )
    response = post_step(
        admin_client,
        instance,
        "certificate",
        {
            "default_certificate": cert.id,
            "tls_policy": "tls_cipher_policy_1_2_strict",
            "mutual_authentication": "on",
        },
    )
    assert response.status_code == 422
    assert "needs a CA certificate" in response.context["form"].errors["ca_certificate"][0]
    response = post_step(
        admin_client,
        instance,
        "certificate",
        {
            "default_certificate": cert.id,
            "tls_policy": "tls_cipher_policy_1_2_strict",
            "mutual_authentication": "on",
            "ca_certificate": ca.id,
        },
    )
    assert response["Location"] == step_url(instance, "servergroup")
    post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "new", "new_group_name": "tls-pool", "new_backend_protocol": "http"}
        | servers_data([("127.0.0.1", 9000, 100)]),
    )
    confirm = admin_client.get(step_url(instance, "confirm"))
    assert confirm.status_code == 200, confirm.get("Location")
    admin_client.post(step_url(instance, "confirm"), {"token": confirm.context["token"]})
    listener = Listener.objects.get()
    assert listener.default_certificate == cert
    assert listener.mutual_authentication and listener.ca_certificate == ca
    assert listener.tls_policy_id == "tls_cipher_policy_1_2_strict"
    assert listener.server_group.health_check.protocol == "http"


def test_mutual_authentication_refused_on_basic_edition(
    admin_client: Client, basic_instance: Instance
) -> None:
    cert = upload_server_cert(admin_client)
    ca = upload_ca(admin_client)
    post_step(
        admin_client,
        basic_instance,
        "protocol",
        {"protocol": "https", "port": "443", **ADVANCED_DEFAULTS},
    )
    post_step(
        admin_client,
        basic_instance,
        "certificate",
        {
            "default_certificate": cert.id,
            "tls_policy": "tls_cipher_policy_1_0",
            "mutual_authentication": "on",
            "ca_certificate": ca.id,
        },
    )
    draft = admin_client.get(step_url(basic_instance, "certificate")).context["form"]
    assert draft.is_valid()
    assert draft.cleaned_data["mutual_authentication"] is False
    assert draft.cleaned_data["ca_certificate"] is None


def test_policy_must_serve_the_certificate_key(admin_client: Client, instance: Instance) -> None:
    from listeners.models import TlsPolicy

    rsa_only = TlsPolicy.objects.create(
        name="rsa-only",
        min_version="TLSv1.2",
        max_version="TLSv1.2",
        ciphers=["ECDHE-RSA-AES128-GCM-SHA256"],
    )
    cert = upload_server_cert(admin_client, "ec-p256")
    post_step(
        admin_client,
        instance,
        "protocol",
        {"protocol": "https", "port": "443", **ADVANCED_DEFAULTS},
    )
    response = post_step(
        admin_client,
        instance,
        "certificate",
        {"default_certificate": cert.id, "tls_policy": rsa_only.id},
    )
    assert response.status_code == 422
    assert "no cipher suite for a ECDSA P-256" in response.context["form"].errors["tls_policy"][0]


@pytest.mark.parametrize(
    ("existing", "new", "message"),
    [
        (("http", 80), ("http", 80), "Listeners of the same protocol need unique ports"),
        (("https", 443), ("http", 443), "HTTP and HTTPS listeners cannot use the same port"),
        (("http", 80), ("https", 80), "HTTP and HTTPS listeners cannot use the same port"),
        (("tcp", 9000), ("tcp_ssl", 9000), "cannot share a port"),
    ],
)
def test_port_rules(admin_client, instance, server_group, existing, new, message) -> None:
    make_listener(instance, server_group, protocol=existing[0], port=existing[1])
    response = post_step(
        admin_client,
        instance,
        "protocol",
        {"protocol": new[0], "port": str(new[1]), **ADVANCED_DEFAULTS},
    )
    assert response.status_code == 422
    assert message in response.context["form"].errors["port"][0]


def test_quota_is_enforced(admin_client, instance, server_group) -> None:
    instance.listener_quota = 1
    instance.save()
    make_listener(instance, server_group, port=80)
    response = post_step(
        admin_client, instance, "protocol", {"protocol": "http", "port": "81", **ADVANCED_DEFAULTS}
    )
    assert "quota of 1" in response.context["form"].non_field_errors()[0]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("port", "0", "Listener Port must be 1-65535."),
        ("port", "65536", "Listener Port must be 1-65535."),
        ("idle_timeout", "601", "Idle Connection Timeout Period must be 1-600 s."),
        ("idle_timeout", "0", "Idle Connection Timeout Period must be 1-600 s."),
        ("request_timeout", "601", "Request Timeout must be 1-600 s."),
        ("description", "x" * 256, "at most 255 characters"),
    ],
)
def test_ranges(admin_client, instance, field, value, message) -> None:
    data = {"protocol": "http", "port": "80", **ADVANCED_DEFAULTS, field: value}
    response = post_step(admin_client, instance, "protocol", data)
    assert response.status_code == 422
    assert message in response.context["form"].errors[field][0]


def test_defaults_of_step_one(admin_client, instance) -> None:
    form = admin_client.get(step_url(instance, "protocol")).context["form"]
    assert form["idle_timeout"].value() == 15
    assert form["request_timeout"].value() == 60
    assert form["x_forwarded_for"].value() == "add"
    assert form["auto_enable"].value() is True


def test_options_that_do_not_apply_are_refused_or_reset(admin_client, instance) -> None:
    data = {**ADVANCED_DEFAULTS, "protocol": "tcp", "port": "9000", "persistence": "insert_cookie"}
    response = post_step(admin_client, instance, "protocol", data)
    assert "persistence" in response.context["form"].errors
    data = {
        **ADVANCED_DEFAULTS,
        "protocol": "tcp",
        "port": "9000",
        "header_slb_id": "on",
        "x_forwarded_for": "remove",
    }
    response = post_step(admin_client, instance, "protocol", data)
    assert response.status_code == 302
    form = admin_client.get(step_url(instance, "protocol")).context["form"]
    assert form.is_valid()
    assert form.cleaned_data["header_slb_id"] is False
    assert form.cleaned_data["x_forwarded_for"] == "add"


def test_tcp_ssl_offers_wrr_and_wlc_only(admin_client, instance) -> None:
    data = {**ADVANCED_DEFAULTS, "protocol": "tcp_ssl", "port": "9443", "scheduler": "round_robin"}
    response = post_step(admin_client, instance, "protocol", data)
    assert "scheduler" in response.context["form"].errors


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("timeout", "10", "may not exceed the interval"),
        ("interval", "301", "Health Check Interval must be 1-300 s."),
        ("path", "no-slash", "starts with /"),
        ("domain", "-bad-.example.com", "at least two labels"),
        ("healthy_threshold", "1", "Healthy Threshold must be 2-10."),
    ],
)
def test_health_check_rules(admin_client, instance, field, value, message) -> None:
    data = {
        "enabled": "on",
        "protocol": "http",
        "path": "/",
        "interval": "5",
        "timeout": "2",
        "healthy_threshold": "3",
        "unhealthy_threshold": "3",
        "expected_codes": ["http_2xx"],
        field: value,
    }
    post_step(
        admin_client, instance, "protocol", {"protocol": "http", "port": "80", **ADVANCED_DEFAULTS}
    )
    response = post_step(admin_client, instance, "healthcheck", data)
    assert response.status_code == 422
    assert message in response.context["form"].errors[field][0]


def test_existing_group_and_add_more_rows(admin_client, instance, server_group) -> None:
    post_step(
        admin_client, instance, "protocol", {"protocol": "http", "port": "80", **ADVANCED_DEFAULTS}
    )
    more = admin_client.post(
        step_url(instance, "servergroup"),
        {"group_mode": "new", "add_server": "1"} | servers_data([("127.0.0.1", 1, 100)]),
    )
    assert more.context["formset"].total_form_count() == 2
    response = post_step(
        admin_client,
        instance,
        "servergroup",
        {"group_mode": "existing", "server_group": server_group.id},
    )
    assert response.status_code == 302
    page = admin_client.get(step_url(instance, "servergroup"))
    assert [row["port"] for row in page.context["existing_rows"]] == [8081, 8082]
    confirm = admin_client.get(step_url(instance, "confirm"))
    admin_client.post(step_url(instance, "confirm"), {"token": confirm.context["token"]})
    assert Listener.objects.get().server_group == server_group
    assert ServerGroup.objects.count() == 1


def test_quick_create(admin_client, instance, server_group) -> None:
    response = admin_client.post(
        reverse("listener-quick-create", args=[instance.id]),
        {
            "protocol": "http",
            "port": "8080",
            "server_group": server_group.id,
            "tls_policy": "tls_cipher_policy_1_0",
        },
    )
    listener = Listener.objects.get()
    assert response.status_code == 302
    assert (listener.name, listener.idle_timeout, listener.x_forwarded_for) == (
        "HTTP_8080",
        15,
        "add",
    )
    assert listener.default_certificate is None and listener.tls_policy is None


def test_quick_create_https_needs_a_certificate(admin_client, instance, server_group) -> None:
    response = admin_client.post(
        reverse("listener-quick-create", args=[instance.id]),
        {
            "protocol": "https",
            "port": "443",
            "server_group": server_group.id,
            "tls_policy": "tls_cipher_policy_1_0",
        },
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 422
    assert b"need a server certificate" in response.content
    assert b"<dialog" in response.content
    assert not Listener.objects.exists()


def test_viewer_cannot_run_the_wizard(viewer_client, instance) -> None:
    assert viewer_client.get(step_url(instance, "protocol")).status_code == 200
    response = post_step(
        viewer_client, instance, "protocol", {"protocol": "http", "port": "80", **ADVANCED_DEFAULTS}
    )
    assert response.status_code == 403


def test_tcp_listener_needs_no_http_only_fields(admin_client, instance) -> None:
    """The page shows no X-Forwarded-For for TCP, so the form may not require it."""
    data = {
        "protocol": "tcp",
        "port": "9000",
        "scheduler": "weighted_round_robin",
        "persistence": "none",
        "acl_mode": "off",
        "idle_timeout": "15",
    }
    response = post_step(admin_client, instance, "protocol", data)
    assert response.status_code == 302, response.context["form"].errors


def test_selected_group_servers_are_previewed(admin_client, server_group) -> None:
    response = admin_client.get(
        reverse("listener-wizard-group-preview"),
        {"server_group": server_group.id},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    assert b"8081" in response.content and b"8082" in response.content
