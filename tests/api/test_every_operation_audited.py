"""Every write operation of the API, walked once in order, leaves its audit record.

One walk covers every POST, PUT, PATCH and DELETE of the served OpenAPI document, through the
token API only (besides settling a listener as a node acknowledgement would): each call answers
2xx and writes exactly one record of its action, naming the token. The last check compares the
operations walked with the document, so an endpoint added without a walk step fails here.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings

from certificates.acme_models import AcmeAttempt
from console.models import AuditRecord
from listeners.models import Listener
from tests.api.conftest import TokenClient
from tests.factories.certs import make_ca, make_server_cert
from tests.factories.crls import crl_pem, make_crl

pytestmark = pytest.mark.django_db
PASSPHRASE = "audited walk passphrase"
WRITES = {"post", "put", "patch", "delete"}


@pytest.fixture(autouse=True)
def no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """This is about the records: no push or ACME attempt reaches a broker."""
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None)
    monkeypatch.setattr("certificates.renewal._queue_attempt", lambda attempt: None)


class Walk:
    """Calls the API and checks that each call wrote one record of its action."""

    def __init__(self, api: TokenClient) -> None:
        self.api = api
        self.walked: set[tuple[str, str]] = set()

    def __call__(
        self, method: str, template: str, body: Any = None, *, action: str, **ids: Any
    ) -> Any:
        path = "/api/v1" + template.format(**ids)
        before = AuditRecord.objects.filter(action=action).count()
        answer = self.api.send(method, path, body)
        assert answer.status_code in (200, 201, 202, 204), (method, path, answer.content[:800])
        records = AuditRecord.objects.filter(action=action)
        assert records.count() == before + 1, (method, template, action)
        record = records.order_by("-at", "-id").first()
        assert (record.via, record.actor.startswith("alice (token ci, ferry_")) == ("api", True)
        self.walked.add((method, "/api/v1" + template))
        return answer.json() if answer.content else None


def settled(listener_id: str) -> None:
    """What the nodes' acknowledgement does: the listener leaves Configuring."""
    Listener.objects.filter(pk=listener_id).update(status="running", configuring_since=None)


def test_every_write_operation_is_recorded_in_the_audit_log(api: TokenClient) -> None:
    walk = Walk(api)

    # Instances and nodes.
    lb = walk("post", "/instances", {"name": "walk"}, action="instance.create")["id"]
    node = walk(
        "post",
        "/instances/{lb}/nodes",
        {"name": "node-a", "control_url": "http://127.0.0.1:1", "token": "t" * 24},
        action="node.add",
        lb=lb,
    )

    # Certificates and a CA's revocation list.
    www, renewed = make_server_cert(), make_server_cert()
    shop = make_server_cert(common_name="shop.example.com")
    ca = make_ca("Walk Clients CA")
    cert_id = walk(
        "post",
        "/certificates",
        {"name": "www", "kind": "server", "certificate": www.cert_pem, "private_key": www.key_pem},
        action="certificate.upload",
    )["id"]
    shop_id = walk(
        "post",
        "/certificates",
        {
            "name": "shop",
            "kind": "server",
            "certificate": shop.cert_pem,
            "private_key": shop.key_pem,
        },
        action="certificate.upload",
    )["id"]
    ca_id = walk(
        "post",
        "/certificates",
        {"name": "clients", "kind": "ca", "certificate": ca.cert_pem},
        action="certificate.upload",
    )["id"]
    walk(
        "put",
        "/certificates/{c}",
        {"certificate": renewed.cert_pem, "private_key": renewed.key_pem},
        action="certificate.replace",
        c=cert_id,
    )
    crl = walk(
        "post",
        "/certificates/{c}/crls",
        {"crl": crl_pem(make_crl(ca))},
        action="certificate.upload_crl",
        c=ca_id,
    )
    walk(
        "delete",
        "/certificates/{c}/crls/{crl}",
        action="certificate.delete_crl",
        c=ca_id,
        crl=crl["id"],
    )

    # ACLs and TLS policies.
    acl = walk(
        "post",
        "/acls",
        {"name": "office", "entries": [{"cidr": "10.0.0.0/8"}]},
        action="acl.create",
    )["id"]
    walk(
        "put",
        "/acls/{a}",
        {"name": "office", "entries": [{"cidr": "10.0.0.0/8"}, {"cidr": "192.168.0.0/16"}]},
        action="acl.modify",
        a=acl,
    )
    policy = walk(
        "post",
        "/tls-policies",
        {
            "name": "walk-strict",
            "min_version": "TLSv1.2",
            "max_version": "TLSv1.3",
            "ciphers": ["ECDHE-ECDSA-AES128-GCM-SHA256"],
            "tls13_ciphersuites": ["TLS_AES_128_GCM_SHA256"],
        },
        action="tls_policy.create",
    )["id"]
    walk("patch", "/tls-policies/{p}", {"description": "x"}, action="tls_policy.modify", p=policy)

    # Server groups, their health checks and their servers' states.
    group_body = {"backend_protocol": "http", "servers": [{"address": "10.0.0.1", "port": 80}]}
    group = walk(
        "post", "/server-groups", {"name": "web", **group_body}, action="server_group.create"
    )
    other = walk(
        "post", "/server-groups", {"name": "web-2", **group_body}, action="server_group.create"
    )["id"]
    walk(
        "patch",
        "/server-groups/{g}",
        {"description": "front"},
        action="server_group.modify",
        g=group["id"],
    )
    walk(
        "put",
        "/server-groups/{g}/health-check",
        {"timeout": 5},
        action="server_group.modify_health_check",
        g=group["id"],
    )
    walk(
        "put",
        "/server-groups/{g}/servers/{s}/state",
        {"state": "draining", "deregistration_delay": 60},
        action="backend_server.drain",
        g=group["id"],
        s=group["servers"][0]["server_id"],
    )

    # An HTTP listener on the ACME HTTP-01 port: its lifecycle, rules and error pages.
    http = walk(
        "post",
        "/instances/{lb}/listeners",
        {"protocol": "http", "port": settings.ACME_HTTP01_PORT, "server_group": group["id"]},
        action="listener.create",
        lb=lb,
    )["id"]
    listener = "/instances/{lb}/listeners/{l}"
    settled(http)
    walk("patch", listener, {"idle_timeout": 42}, action="listener.modify", lb=lb, l=http)
    settled(http)
    walk("post", listener + "/stop", action="listener.stop", lb=lb, l=http)
    settled(http)
    walk("post", listener + "/start", action="listener.start", lb=lb, l=http)
    settled(http)
    walk(
        "put",
        listener + "/server-group",
        {"server_group": other},
        action="listener.change_server_group",
        lb=lb,
        l=http,
    )
    settled(http)
    rules = listener + "/rules"
    rule_body = {"path": "/api/", "action": "forward", "server_group": group["id"]}
    first = walk("post", rules, rule_body, action="listener.save_forwarding_rule", lb=lb, l=http)[
        "id"
    ]
    settled(http)
    second = walk(
        "post",
        rules,
        {"path": "/old/", "action": "fixed_response", "status_code": 410, "body": "gone"},
        action="listener.save_forwarding_rule",
        lb=lb,
        l=http,
    )["id"]
    settled(http)
    walk(
        "put",
        rules + "/{r}",
        {**rule_body, "path": "/v2/"},
        action="listener.save_forwarding_rule",
        lb=lb,
        l=http,
        r=first,
    )
    settled(http)
    walk(
        "post",
        rules + "/{r}/move",
        {"direction": "up"},
        action="listener.move_forwarding_rule",
        lb=lb,
        l=http,
        r=second,
    )
    settled(http)
    walk("delete", rules + "/{r}", action="listener.delete_forwarding_rule", lb=lb, l=http, r=first)
    settled(http)
    pages = listener + "/error-pages/{status}"
    walk(
        "put",
        pages,
        {"body": "<h1>Back soon</h1>"},
        action="listener.set_error_page",
        lb=lb,
        l=http,
        status="503",
    )
    settled(http)
    walk("delete", pages, action="listener.remove_error_page", lb=lb, l=http, status="503")
    settled(http)

    # An HTTPS listener: certificates, mutual TLS, SNI certificates and its TLS policy.
    https = walk(
        "post",
        "/instances/{lb}/listeners",
        {
            "protocol": "https",
            "port": 443,
            "server_group": group["id"],
            "default_certificate": cert_id,
        },
        action="listener.create",
        lb=lb,
    )["id"]
    settled(https)
    walk(
        "put",
        listener + "/certificates",
        {"default_certificate": cert_id, "mutual_authentication": True, "ca_certificate": ca_id},
        action="listener.update_certificates",
        lb=lb,
        l=https,
    )
    settled(https)
    sni = listener + "/additional-certificates"
    walk(
        "post",
        sni,
        {"certificates": [shop_id]},
        action="listener.update_certificates",
        lb=lb,
        l=https,
    )
    settled(https)
    walk(
        "delete",
        sni,
        {"certificates": [shop_id]},
        action="listener.update_certificates",
        lb=lb,
        l=https,
    )
    settled(https)
    walk(
        "put",
        listener + "/tls-policy",
        {"tls_policy": policy},
        action="listener.change_tls_policy",
        lb=lb,
        l=https,
    )
    settled(https)

    # ACME: an order (the attempt's outcome set as the worker would), renew now, delete.
    order = walk(
        "post",
        "/acme/orders",
        {
            "name": "site",
            "domains": ["www.example.test"],
            "directory": "custom",
            "directory_url": "https://127.0.0.1:1/directory",
            "email": "ops@example.org",
            "challenge": "http-01",
            "instance": lb,
            "key_algorithm": "ec-p256",
            "agree": True,
        },
        action="certificate.acme_request",
    )
    order_id = order["id"]
    AcmeAttempt.objects.filter(issuance_id=order_id).update(state="failed", message="walk")
    walk("post", "/acme/orders/{o}/renew", action="certificate.acme_renew", o=order_id)
    AcmeAttempt.objects.filter(issuance_id=order_id).update(state="failed", message="walk")
    walk("delete", "/acme/orders/{o}", action="certificate.acme_delete", o=order_id)

    # Backup and restore: export, import as a new instance, import into an empty one.
    document = walk(
        "post",
        "/instances/{lb}/export",
        {"passphrase": PASSPHRASE},
        action="instance.export",
        lb=lb,
    )
    walk(
        "post",
        "/instances/import",
        {"passphrase": PASSPHRASE, "document": document, "name": "walk copy"},
        action="instance.import",
    )
    empty = walk("post", "/instances", {"name": "walk empty"}, action="instance.create")["id"]
    walk(
        "post",
        "/instances/{lb}/import",
        {"passphrase": PASSPHRASE, "document": document},
        action="instance.import",
        lb=empty,
    )

    # Deletes, each once nothing uses what it deletes.
    walk("delete", "/instances/{lb}/nodes/{n}", action="node.remove", lb=lb, n=node["id"])
    walk("delete", listener, action="listener.delete", lb=lb, l=http)
    walk("delete", listener, action="listener.delete", lb=lb, l=https)
    walk("delete", "/server-groups/{g}", action="server_group.delete", g=other)
    walk("delete", "/acls/{a}", action="acl.delete", a=acl)
    # The imported copies use the same custom policy (a policy is a value, reused by name).
    spare = walk(
        "post",
        "/tls-policies",
        {
            "name": "walk-spare",
            "min_version": "TLSv1.2",
            "max_version": "TLSv1.2",
            "ciphers": ["ECDHE-ECDSA-AES128-GCM-SHA256"],
        },
        action="tls_policy.create",
    )["id"]
    walk("delete", "/tls-policies/{p}", action="tls_policy.delete", p=spare)
    walk("delete", "/certificates/{c}", action="certificate.delete", c=shop_id)
    walk("delete", "/instances/{lb}", action="instance.delete", lb=lb)

    # Every write operation of the served document was walked.
    schema = api.get("/api/v1/openapi.json").json()
    documented = {
        (method, normalized(path))
        for path, operations in schema["paths"].items()
        for method in operations
        if method in WRITES
    }
    assert len(documented) >= 40
    assert documented == {(method, normalized(path)) for method, path in walk.walked}


def normalized(path: str) -> str:
    """The path with every parameter written {}: the walk names them shortly."""
    parts = path.split("/")
    return "/".join("{}" if part.startswith("{") else part for part in parts)
