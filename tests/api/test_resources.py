"""Each resource through the API: what a create answers, what a change does to the listeners
that use it, and what a delete refuses; every write goes through listeners/services.py."""

from __future__ import annotations

import pytest

from console.models import Instance
from listeners.models import AccessControlList, Listener, ServerGroup, TlsPolicy
from tests.factories.certs import make_ca, make_server_cert
from tests.fixtures.listeners import make_listener

pytestmark = pytest.mark.django_db


def settled(listener: Listener) -> Listener:
    Listener.objects.filter(pk=listener.pk).update(status="running", configuring_since=None)
    return Listener.objects.get(pk=listener.pk)


def upload(api, name: str, material=None) -> dict:
    material = material or make_server_cert()
    response = api.send(
        "post",
        "/api/v1/certificates",
        {
            "name": name,
            "kind": "server",
            "certificate": material.cert_pem,
            "private_key": material.key_pem,
        },
    )
    assert response.status_code == 201, response.content
    return response.json()


def test_server_group_lifecycle_reconfigures_its_listeners(api, instance):
    created = api.send(
        "post",
        "/api/v1/server-groups",
        {
            "name": "api-group",
            "backend_protocol": "http",
            "servers": [
                {"address": "10.0.0.1", "port": 8080},
                {"address": "10.0.0.2", "port": 8080, "weight": 0},
            ],
            "health_check": {"protocol": "http", "path": "/healthz", "interval": 10},
        },
    )
    assert created.status_code == 201, created.content
    group = created.json()
    assert [(s["address"], s["weight"]) for s in group["servers"]] == [
        ("10.0.0.1", 100),
        ("10.0.0.2", 0),
    ]
    assert group["health_check"]["path"] == "/healthz"
    listener = settled(make_listener(instance, ServerGroup.objects.get(pk=group["id"]), port=80))
    generation = Instance.objects.get(pk=instance.pk).generation

    changed = api.send(
        "patch",
        f"/api/v1/server-groups/{group['id']}",
        {"servers": [{"address": "10.0.0.3", "port": 9090}]},
    )
    checked = api.send("put", f"/api/v1/server-groups/{group['id']}/health-check", {"timeout": 5})

    assert changed.status_code == 200
    assert [s["address"] for s in changed.json()["servers"]] == ["10.0.0.3"]
    assert changed.json()["listeners"] == [listener.id]
    assert Listener.objects.get(pk=listener.pk).status == "configuring"
    assert Instance.objects.get(pk=instance.pk).generation == generation + 1
    # The listener is Configuring now: its group's health check waits, as on the page.
    assert checked.status_code == 409
    assert api.delete(f"/api/v1/server-groups/{group['id']}").status_code == 409


def test_duplicate_backend_servers_get_the_forms_message_on_the_row(api):
    refused = api.send(
        "post",
        "/api/v1/server-groups",
        {
            "name": "dup",
            "servers": [{"address": "10.0.0.1", "port": 80}, {"address": "10.0.0.1", "port": 80}],
        },
    )

    assert refused.status_code == 422
    assert {"field": "servers[1].port", "message": "10.0.0.1:80 is already in row 1."} in (
        refused.json()["errors"]
    )


def test_acl_lifecycle(api, instance, server_group):
    created = api.send(
        "post",
        "/api/v1/acls",
        {
            "name": "office",
            "entries": [{"cidr": "10.0.0.0/8", "description": "lan"}, {"cidr": "192.168.1.10"}],
        },
    )
    assert created.status_code == 201, created.content
    acl = created.json()
    assert [e["cidr"] for e in acl["entries"]] == ["10.0.0.0/8", "192.168.1.10/32"]
    bad = api.send(
        "put", f"/api/v1/acls/{acl['id']}", {"name": "office", "entries": [{"cidr": "10.0.0.300"}]}
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "entries"
    make_listener(
        instance,
        server_group,
        port=80,
        acl_mode="whitelist",
        acl=AccessControlList.objects.get(pk=acl["id"]),
    )
    assert api.delete(f"/api/v1/acls/{acl['id']}").status_code == 409


def test_tls_policies_custom_editable_predefined_read_only(api):
    created = api.send(
        "post",
        "/api/v1/tls-policies",
        {
            "name": "api-strict",
            "min_version": "TLSv1.2",
            "max_version": "TLSv1.3",
            "ciphers": ["ECDHE-ECDSA-AES128-GCM-SHA256"],
            "tls13_ciphersuites": ["TLS_AES_128_GCM_SHA256"],
        },
    )
    assert created.status_code == 201, created.content
    predefined = TlsPolicy.objects.filter(predefined=True).first()

    renamed = api.send(
        "patch", f"/api/v1/tls-policies/{created.json()['id']}", {"description": "x"}
    )
    refused = api.send("patch", f"/api/v1/tls-policies/{predefined.id}", {"description": "x"})

    assert renamed.status_code == 200
    assert renamed.json()["description"] == "x"
    assert refused.status_code == 403
    assert "read-only" in refused.json()["detail"]
    assert api.delete(f"/api/v1/tls-policies/{created.json()['id']}").status_code == 204


def test_additional_certificates_are_associated_and_dissociated(api, instance, server_group):
    default = upload(api, "www")
    shop = upload(api, "shop", make_server_cert(common_name="shop.example.com"))
    listener = settled(
        make_listener(
            instance,
            server_group,
            port=443,
            protocol="https",
            default_certificate_id=default["id"],
            tls_policy_id="tls_cipher_policy_1_0",
        )
    )
    path = f"/api/v1/instances/{instance.id}/listeners/{listener.id}"

    associated = api.send("post", f"{path}/additional-certificates", {"certificates": [shop["id"]]})
    assert associated.status_code == 200, associated.content
    assert associated.json()["additional_certificates"] == [shop["id"]]
    settled(listener)
    again = api.send("post", f"{path}/additional-certificates", {"certificates": [default["id"]]})
    assert again.status_code == 422
    assert again.json()["errors"][0]["field"] == "additional_certificates"
    dissociated = api.send(
        "delete", f"{path}/additional-certificates", {"certificates": [shop["id"]]}
    )
    assert dissociated.status_code == 200
    assert dissociated.json()["additional_certificates"] == []
    settled(listener)
    policy = api.send("put", f"{path}/tls-policy", {"tls_policy": "tls_cipher_policy_1_2_strict"})
    assert policy.status_code == 200
    assert policy.json()["tls_policy"] == "tls_cipher_policy_1_2_strict"
    assert api.delete(f"/api/v1/certificates/{default['id']}").status_code == 409


def test_forwarding_rules_are_added_reordered_and_deleted(api, instance, server_group):
    listener = settled(make_listener(instance, server_group, port=80))
    path = f"/api/v1/instances/{instance.id}/listeners/{listener.id}/rules"

    first = api.send(
        "post", path, {"path": "/api/", "action": "forward", "server_group": server_group.id}
    )
    settled(listener)
    second = api.send(
        "post",
        path,
        {
            "host": ["www.example.com"],
            "action": "fixed_response",
            "status_code": 404,
            "body": "gone",
        },
    )
    settled(listener)
    empty = api.send("post", path, {"action": "forward", "server_group": server_group.id})
    moved = api.send("post", f"{path}/{second.json()['id']}/move", {"direction": "up"})

    assert first.status_code == second.status_code == 201
    assert first.json()["conditions"] == [{"type": "path", "values": ["/api/"], "match": "prefix"}]
    assert empty.status_code == 422
    assert empty.json()["detail"] == "Add at least one condition."
    assert moved.status_code == 200
    assert [r["id"] for r in api.get(path).json()] == [second.json()["id"], first.json()["id"]]
    settled(listener)
    assert api.delete(f"{path}/{first.json()['id']}").status_code == 204
    assert [r["id"] for r in api.get(path).json()] == [second.json()["id"]]


def test_a_listener_with_a_new_server_group_and_every_wizard_step(api, instance, acl):
    created = api.send(
        "post",
        f"/api/v1/instances/{instance.id}/listeners",
        {
            "protocol": "http",
            "port": 8080,
            "name": "shop",
            "tags": [{"key": "team", "value": "shop"}],
            "scheduler": "weighted_least_connections",
            "persistence": "insert_cookie",
            "persistence_timeout": 600,
            "acl_mode": "blacklist",
            "acl": acl.id,
            "header_x_forwarded_proto": True,
            "new_server_group": {
                "name": "shop-backends",
                "backend_protocol": "http",
                "servers": [{"address": "10.1.0.1", "port": 8000}],
            },
            "health_check": {"protocol": "http", "path": "/ready"},
        },
    )

    assert created.status_code == 201, created.content
    listener = Listener.objects.get(pk=created.json()["id"])
    assert (listener.scheduler, listener.persistence, listener.persistence_timeout) == (
        "weighted_least_connections",
        "insert_cookie",
        600,
    )
    assert (listener.acl_mode, listener.acl_id, listener.header_x_forwarded_proto) == (
        "blacklist",
        acl.id,
        True,
    )
    assert listener.server_group.name == "shop-backends"
    assert listener.server_group.health_check.path == "/ready"
    assert [s.address for s in listener.server_group.servers.all()] == ["10.1.0.1"]


def test_an_https_listener_needs_a_certificate_as_in_the_wizard(api, instance, server_group):
    refused = api.send(
        "post",
        f"/api/v1/instances/{instance.id}/listeners",
        {"protocol": "https", "port": 443, "server_group": server_group.id},
    )

    assert refused.status_code == 422
    assert {
        "field": "default_certificate",
        "message": "HTTPS, TCP SSL and QUIC listeners need a server certificate.",
    } in refused.json()["errors"]


def test_instances_push_history_and_node_lists_read(api, viewer_api, instance):
    assert viewer_api.get("/api/v1/instances").json()[0]["id"] == instance.id
    assert viewer_api.get(f"/api/v1/instances/{instance.id}/nodes").json() == []
    assert viewer_api.get(f"/api/v1/instances/{instance.id}/push-history").json() == []
    assert api.delete(f"/api/v1/instances/{instance.id}").status_code == 204
    assert not Instance.objects.filter(pk=instance.pk).exists()


def test_ca_certificate_kinds_are_listed_apart(api):
    api.send(
        "post",
        "/api/v1/certificates",
        {"name": "ca", "kind": "ca", "certificate": make_ca().cert_pem},
    )
    upload(api, "www")

    assert [c["kind"] for c in api.get("/api/v1/certificates?kind=ca").json()] == ["ca"]


def test_nodes_are_added_and_removed_with_the_pages_rules(api, viewer_api, instance, monkeypatch):
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None)
    path = f"/api/v1/instances/{instance.id}/nodes"
    body = {"name": "node-a", "control_url": "http://10.0.0.5:9901", "token": "s" * 32}

    added = api.send("post", path, body)
    again = api.send("post", path, body)
    short = api.send("post", path, {**body, "name": "node-b", "token": "short"})
    by_viewer = viewer_api.send("post", path, {**body, "name": "node-c"})

    assert added.status_code == 201, added.content
    assert "token" not in added.json() and "s" * 32 not in added.content.decode()
    assert again.status_code == 422
    assert again.json()["errors"] == [
        {"field": "name", "message": "This instance already has a node named node-a."}
    ]
    assert short.status_code == 422 and short.json()["errors"][0]["field"] == "token"
    assert by_viewer.status_code == 403
    assert [n["name"] for n in viewer_api.get(path).json()] == ["node-a"]
    node = f"{path}/{added.json()['id']}"
    assert api.delete(node).status_code == 204
    assert api.delete(node).status_code == 404
    assert instance.nodes.count() == 0
