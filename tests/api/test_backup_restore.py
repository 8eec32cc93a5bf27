"""Backup and restore: an instance exported as one JSON document and imported into a fresh one.

The round trip is proven with real traffic (a real dataplane node per instance, the real Celery
worker, a recording backend): the imported instance serves what the original served, over HTTP
and over HTTPS with the certificate and private key that travelled encrypted in the document.
The rest exercises the document as hostile input: every problem listed with its path and nothing
changed, a wrong passphrase, tampering, duplicate names, oversized and non-JSON bodies, viewers.
"""

from __future__ import annotations

import copy
import datetime
import http.client
import json
import socket
import ssl

import pytest
import requests
import trustme
from cryptography import x509
from django.db import transaction
from django.urls import reverse
from django.utils import timezone

from certificates import validation
from certificates.models import Certificate
from console import backup, tokens
from console.api.auth import API_MAX_IMPORT_BYTES
from console.models import AuditRecord, Instance
from listeners import services
from listeners.models import (
    AccessControlList,
    AclEntry,
    BackendServer,
    ForwardingRule,
    HealthCheck,
    Listener,
    ServerGroup,
    TlsPolicy,
)
from tests.fixtures.nodes import register_node
from tests.fixtures.processes import free_port, wait_until
from tests.fixtures.single_node import Stack
from tests.fixtures.users import make_user

PASSPHRASE = "correct horse battery staple"
# A bound for giving up, not a timing assertion: the machine running the tests may be busy.
CONVERGENCE = 60
MODELS = (
    Instance,
    Listener,
    ServerGroup,
    BackendServer,
    HealthCheck,
    Certificate,
    TlsPolicy,
    AccessControlList,
    AclEntry,
    ForwardingRule,
    AuditRecord,
)


def pem(blob) -> str:
    return blob.bytes().decode()


def counts() -> dict[str, int]:
    return {model.__name__: model.objects.count() for model in MODELS}


def upload(name: str, kind: str, **pems) -> Certificate:
    if kind == "server":
        checked = validation.validate_server_certificate(pems["certificate"], pems["key"])
    else:
        checked = validation.validate_ca_certificate(pems["certificate"])
    return services.upload_certificate(name=name, kind=kind, validated=checked)


class Source:
    """An instance with one of everything an instance can use, built by the service functions."""

    def __init__(self, instance: Instance, backend_port: int, *, http_port: int, https_port: int):
        self.ca = trustme.CA(organization_name="Backup CA")
        www = self.ca.issue_cert("www.example.com")
        api = self.ca.issue_cert("api.example.com")
        clients = trustme.CA(organization_name="Clients CA")
        self.clients_key = clients.private_key_pem.bytes()
        self.client_certificate = clients.issue_cert("client.example.com")
        with transaction.atomic():
            self.www = upload(
                "www",
                "server",
                certificate=pem(www.cert_chain_pems[0]),
                key=pem(www.private_key_pem),
            )
            self.api = upload(
                "api",
                "server",
                certificate=pem(api.cert_chain_pems[0]),
                key=pem(api.private_key_pem),
            )
            self.clients = upload("clients", "ca", certificate=pem(clients.cert_pem))
            self.policy = services.create_tls_policy(
                values={
                    "name": "modern-custom",
                    "min_version": "TLSv1.2",
                    "max_version": "TLSv1.3",
                    "ciphers": ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256"],
                    "tls13_ciphersuites": ["TLS_AES_128_GCM_SHA256"],
                    "description": "from the backup test",
                }
            )
            self.acl = services.create_acl(
                name="loopback",
                description="the test's clients",
                entries={"127.0.0.0/8": "loopback", "10.0.0.0/8": "office"},
            )
            self.group = services.create_server_group(
                name="web",
                backend_protocol="http",
                servers=[
                    {"address": "127.0.0.1", "port": backend_port, "weight": 100},
                    {"address": "127.0.0.1", "port": free_port(), "weight": 0, "description": "x"},
                ],
                health_check={
                    "enabled": False,
                    "protocol": "http",
                    "path": "/health",
                    "interval": 7,
                    "timeout": 3,
                    "healthy_threshold": 2,
                    "unhealthy_threshold": 4,
                    "expected_codes": ["http_2xx"],
                },
            )
            self.http = services.create_listener(
                instance,
                protocol="http",
                port=http_port,
                name="plain",
                settings={
                    "description": "HTTP in front",
                    "tags": [{"key": "env", "value": "test"}],
                    "idle_timeout": 30,
                    "http2": False,  # as the wizard stores it for HTTP
                    "header_x_forwarded_proto": True,
                    "acl_mode": "whitelist",
                    "acl": self.acl,
                },
                server_group=self.group,
            )
            # Written as the rule dialog would, in the same transaction as the listener (whose
            # own service refuses rules while it is Configuring), so one push carries both.
            ForwardingRule.objects.create(
                listener=self.http,
                name="fixed",
                conditions=[{"type": "path", "values": ["/fixed"], "match": "prefix"}],
                action="fixed_response",
                status_code=200,
                content_type="text/plain",
                body="answered by a forwarding rule",
            )
            self.https = services.create_listener(
                instance,
                protocol="https",
                port=https_port,
                name="secure",
                settings={
                    "bandwidth_mbit": 20,
                    "http2": False,
                    "header_clientcert_subjectdn": True,
                },
                server_group=self.group,
                certificates={
                    "default_certificate": self.www,
                    "additional_certificates": [self.api],
                    "tls_policy": self.policy,
                    "mutual_authentication": True,
                    "ca_certificate": self.clients,
                },
            )
            self.tcp = services.create_listener(
                instance,
                protocol="tcp",
                port=free_port(),
                name="raw",
                settings={"proxy_protocol": "v1", "http2": False},
                server_group=services.create_server_group(
                    name="tcp-pool",
                    backend_protocol="tcp",
                    servers=[{"address": "127.0.0.1", "port": backend_port}],
                    slow_start=True,
                    slow_start_duration=60,
                ),
                enabled=False,
            )


def comparable(document: dict) -> dict:
    """What must survive a round trip: everything but where and when it was exported, and the
    ciphertexts (new salt and nonces each time)."""
    kept = copy.deepcopy(document)
    for key in ("exported_at", "source", "encryption"):
        kept.pop(key)
    for certificate in kept["certificates"]:
        certificate["private_key"] = bool(certificate["private_key"])
    kept["instance"].pop("name")
    kept["instance"].pop("bind_address")
    return kept


@pytest.fixture
def source(db, admin_user) -> Source:
    instance = Instance.objects.create(name="origin", bandwidth_mbit=100)
    return Source(instance, free_port(), http_port=free_port(), https_port=free_port())


@pytest.fixture
def document(source: Source) -> dict:
    return backup.export_instance(source.http.instance, PASSPHRASE)


@pytest.fixture
def no_push(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the console's rows: no push is queued to a broker."""
    monkeypatch.setattr("listeners.services.queue_push", lambda ids: None)


# -- the document ------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_document_holds_everything_that_defines_the_instance_and_keys_only_encrypted(
    source: Source, document: dict
) -> None:
    text = json.dumps(document)
    assert document["format"] == "ferry-instance-backup" and document["format_version"] == 1
    assert [c["name"] for c in document["certificates"]] == ["api", "clients", "www"]
    assert [p["name"] for p in document["tls_policies"]] == ["modern-custom"]
    assert document["acls"][0]["entries"] == [
        {"cidr": "127.0.0.0/8", "description": "loopback"},
        {"cidr": "10.0.0.0/8", "description": "office"},
    ]
    web = next(g for g in document["server_groups"] if g["name"] == "web")
    assert web["health_check"]["interval"] == 7 and web["health_check"]["enabled"] is False
    pool = next(g for g in document["server_groups"] if g["name"] == "tcp-pool")
    assert (pool["slow_start"], pool["slow_start_duration"]) == (True, 60)
    assert [s["weight"] for s in web["servers"]] == [100, 0]
    by_name = {listener["name"]: listener for listener in document["listeners"]}
    assert by_name["secure"]["additional_certificates"] == ["api"]
    assert by_name["secure"]["tls_policy"] == "modern-custom"
    assert by_name["plain"]["acl"] == "loopback"
    assert by_name["plain"]["forwarding_rules"][0]["body"] == "answered by a forwarding rule"
    assert by_name["raw"]["desired_state"] == "stopped"
    for excluded in ("id", "status", "created_at", "configuring_since", "private_key_token"):
        assert excluded not in by_name["secure"] and excluded not in document["certificates"][0]
    # The keys: never in clear text, nor as the console's at-rest tokens.
    www = Certificate.objects.get(pk=source.www.pk)
    assert "PRIVATE KEY" not in text
    assert www.private_key_token not in text
    assert www.private_key_pem().splitlines()[1] not in text
    assert document["encryption"]["kdf"] == "scrypt"
    assert AuditRecord.objects.filter(action="instance.export").count() == 1


@pytest.mark.django_db
def test_export_is_refused_without_a_passphrase_of_twelve_characters(source: Source) -> None:
    for passphrase in ("", "short"):
        with pytest.raises(services.RuleViolation) as refused:
            backup.export_instance(source.http.instance, passphrase)
        assert refused.value.field == "passphrase"


# -- import: the round trip in the database ------------------------------------------------------
@pytest.mark.django_db
def test_an_imported_document_exports_again_as_the_same_document(
    source: Source, document: dict, no_push
) -> None:
    imported = backup.import_instance(
        document=copy.deepcopy(document), passphrase=PASSPHRASE, name="copy"
    )

    again = backup.export_instance(imported.instance, "another passphrase!")
    assert comparable(again) == comparable(document)
    assert imported.instance.name == "copy" and imported.instance.bandwidth_mbit == 100
    # New rows throughout: the copy shares nothing with the origin but the predefined policies,
    # and the custom policy, which is a value (the same name and settings are used, not copied).
    assert not {c.pk for c in imported.certificates} & {source.www.pk, source.api.pk}
    assert not {g.pk for g in imported.server_groups} & {source.group.pk}
    assert imported.tls_policies == [source.policy]
    www = next(c for c in imported.certificates if c.name == "www")
    assert www.private_key_pem() == Certificate.objects.get(pk=source.www.pk).private_key_pem()
    assert www.private_key_token != Certificate.objects.get(pk=source.www.pk).private_key_token
    for listener in imported.listeners:
        assert listener.status == "configuring" and listener.configuring_since is not None
    actions = set(AuditRecord.objects.values_list("action", flat=True))
    assert {"instance.import", "listener.import", "certificate.import"} <= actions


@pytest.mark.django_db
def test_an_import_into_an_empty_instance_keeps_its_name_address_and_nodes(
    document: dict, no_push
) -> None:
    target = Instance.objects.create(name="standby", bind_address="127.0.0.2", bandwidth_mbit=5)
    register_node(target, "http://127.0.0.1:9", name="standby-node")
    before = target.generation

    imported = backup.import_instance(
        document=document, passphrase=PASSPHRASE, instance_id=target.pk
    )

    target.refresh_from_db()
    assert imported.instance.pk == target.pk
    assert (target.name, target.bind_address, target.bandwidth_mbit) == (
        "standby",
        "127.0.0.2",
        100,
    )
    assert target.nodes.get().name == "standby-node"
    assert target.generation == before + 1
    assert target.listeners.count() == 3


@pytest.mark.django_db
def test_an_instance_with_listeners_is_refused_and_unchanged(
    source: Source, document: dict, no_push
) -> None:
    before = counts()
    with pytest.raises(backup.TargetNotEmpty, match="has 3 listener"):
        backup.import_instance(
            document=document, passphrase=PASSPHRASE, instance_id=source.http.instance_id
        )
    assert counts() == before


@pytest.mark.django_db
def test_rows_that_configure_a_certificate_travel_with_it(source: Source, no_push) -> None:
    """Revocation lists and ACME issuances are carried field by field (console/backup.py's
    CERTIFICATE_CHILDREN), whichever of those models this console has."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization
    from django.apps import apps

    children = {model._meta.label: key for key, model, _ in backup.certificate_children()}
    if not children:
        pytest.skip("this console has neither revocation lists nor ACME issuances")
    # Whole seconds, as a CRL's dates are: the import stores the dates the CRL itself carries.
    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    if "certificates.CertificateRevocationList" in children:
        ca = x509.load_pem_x509_certificate(source.clients.certificate_pem.encode())
        crl = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca.subject)
            .last_update(now - datetime.timedelta(hours=1))
            .next_update(now + datetime.timedelta(days=7))
            .sign(serialization.load_pem_private_key(source.clients_key, None), hashes.SHA256())
        )
        apps.get_model("certificates.CertificateRevocationList").objects.create(
            ca_certificate=source.clients,
            issuer=ca.subject.rfc4514_string(),
            der=crl.public_bytes(serialization.Encoding.DER),
            fingerprint_sha256=crl.fingerprint(hashes.SHA256()).hex(":").upper(),
            this_update=now - datetime.timedelta(hours=1),
            next_update=now + datetime.timedelta(days=7),
            revoked_count=0,
        )
    if "certificates.AcmeIssuance" in children:
        apps.get_model("certificates.AcmeIssuance").objects.create(
            name="www by ACME",
            certificate=source.www,
            domains=["www.example.com"],
            directory_url="https://acme.example.com/directory",
            email="ops@example.com",
            challenge="http-01",
            instance=source.http.instance,
        )
    document = backup.export_instance(source.http.instance, PASSPHRASE)

    imported = backup.import_instance(
        document=copy.deepcopy(document), passphrase=PASSPHRASE, name="copy"
    )

    again = backup.export_instance(imported.instance, PASSPHRASE)
    assert comparable(again) == comparable(document)
    carried = [c for c in again["certificates"] for key in children.values() if c.get(key)]
    assert len(carried) == len(children)
    acme = [c.get("acme") for c in again["certificates"] if c.get("acme")]
    if acme:
        assert acme[0][0]["instance"] == "this instance"
        issuance = apps.get_model("certificates.AcmeIssuance").objects.get(
            certificate__in=imported.certificates
        )
        assert issuance.instance_id == imported.instance.pk

    broken = copy.deepcopy(document)
    for certificate in broken["certificates"]:
        for key in children.values():
            for row in certificate.get(key, []):
                row["colour"] = "blue"
    problems = refused(broken)
    assert len([p for p in problems if p.endswith("Unknown field colour.")]) == len(children)


@pytest.mark.django_db
def test_imported_revocation_lists_are_validated_against_the_imported_ca(
    source: Source, no_push
) -> None:
    """A CRL in a document passes the upload's validation (signature against the imported CA
    and its intermediates, currency); each failure is a problem at its JSON path."""
    import base64
    import datetime

    from cryptography.hazmat.primitives import serialization

    from certificates import revocation
    from certificates.models import CertificateRevocationList
    from tests.factories.certs import CaMaterial, make_ca
    from tests.factories.crls import crl_der, make_crl

    now = datetime.datetime.now(datetime.UTC)
    clients = CaMaterial(
        cert=x509.load_pem_x509_certificate(source.clients.certificate_pem.encode()),
        key=serialization.load_pem_private_key(source.clients_key, None),
    )
    issuing = make_ca("Backup Issuing CA", issuer=clients)
    for crl, chain in ((make_crl(clients), None), (make_crl(issuing), issuing.cert_pem)):
        # Applied, so the CA's revocation lists may change (a Configuring listener refuses it).
        Listener.objects.update(status=Listener.Status.RUNNING)
        with transaction.atomic():
            checked = revocation.validate_crl(crl_der(crl), source.clients.certificate_pem, chain)
            revocation.upload_crl(certificate_id=source.clients.pk, validated=checked)
    document = backup.export_instance(source.http.instance, PASSPHRASE)
    [key] = [
        k for k, model, _ in backup.certificate_children() if model is CertificateRevocationList
    ]
    names = [c["name"] for c in document["certificates"]]
    ca_at, www_at = names.index("clients"), names.index("www")
    rows = document["certificates"][ca_at][key]
    own = next(i for i, row in enumerate(rows) if row["issuer"] == clients.subject)
    below = 1 - own
    at = f"certificates[{ca_at}].{key}"

    # What the document says of a CRL is not trusted: the CRL's own fields are stored.
    lying = copy.deepcopy(document)
    lying["certificates"][ca_at][key][own].update(
        next_update="2099-01-01T00:00:00+00:00", revoked_count=999, issuer_chain_subjects=["x"]
    )
    imported = backup.import_instance(document=lying, passphrase=PASSPHRASE, name="copy")
    [ca] = [c for c in imported.certificates if c.name == "clients"]
    stored = {crl.issuer: crl for crl in ca.revocation_lists.all()}
    assert set(stored) == {clients.subject, issuing.subject}
    assert stored[clients.subject].next_update < now + datetime.timedelta(days=8)
    assert stored[clients.subject].revoked_count == 0
    assert stored[clients.subject].issuer_chain_subjects == []
    assert [line["issuer"] for line in ca.crl_summary] == sorted(stored)

    def with_crl(document: dict, index: int, crl) -> dict:
        changed = copy.deepcopy(document)
        changed["certificates"][ca_at][key][index]["der"] = base64.b64encode(crl_der(crl)).decode()
        return changed

    forged = with_crl(document, own, make_crl(clients, signing_key=make_ca("Backup Forger").key))
    forged["certificates"][ca_at][key][below]["issuer_chain_pem"] = ""
    forged["certificates"][www_at][key] = [copy.deepcopy(rows[own])]
    problems = refused(forged)
    assert any(p.startswith(f"{at}[{own}].der: ") and "signature" in p for p in problems)
    assert any(p.startswith(f"{at}[{below}].der: ") for p in problems), problems
    assert f"certificates[{www_at}].{key}[0]: Only CA certificates carry revocation lists." in (
        problems
    )

    expired = with_crl(
        document,
        own,
        make_crl(
            clients,
            this_update=now - datetime.timedelta(days=8),
            next_update=now - datetime.timedelta(hours=1),
        ),
    )
    problems = refused(expired)
    assert (
        [p for p in problems if p.startswith(f"{at}[{own}].der: ")]
        == [p for p in problems if "expired" in p.lower() or "next update" in p.lower()]
        != []
    )

    foreign_chain = copy.deepcopy(document)
    foreign_chain["certificates"][ca_at][key][below]["issuer_chain_pem"] = make_ca(
        "Backup Unrelated CA"
    ).cert_pem
    problems = refused(foreign_chain)
    assert any(p.startswith(f"{at}[{below}].") for p in problems), problems


@pytest.mark.django_db(transaction=True)
def test_two_imports_racing_for_one_empty_instance_leave_one_copy(no_push, document: dict) -> None:
    import threading

    from django.db import connection

    target = Instance.objects.create(name="contested")
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt() -> None:
        try:
            barrier.wait()
            backup.import_instance(
                document=copy.deepcopy(document), passphrase=PASSPHRASE, instance_id=target.pk
            )
            outcomes.append("imported")
        except backup.TargetNotEmpty:
            outcomes.append("refused")
        finally:
            connection.close()

    threads = [threading.Thread(target=attempt) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(outcomes) == ["imported", "refused"]
    assert target.listeners.count() == 3


# -- import: hostile documents -----------------------------------------------------------------
def refused(document, passphrase: str = PASSPHRASE) -> list[str]:
    """Import ``document``; it must fail and change nothing. Returns "path: message" lines."""
    before = counts()
    with pytest.raises(backup.BackupInvalid) as invalid:
        backup.import_instance(document=document, passphrase=passphrase, name="never")
    assert counts() == before
    return [f"{p['field']}: {p['message']}" for p in invalid.value.problems]


@pytest.mark.django_db
def test_a_document_with_many_problems_lists_every_one_and_changes_nothing(
    document: dict, no_push
) -> None:
    broken = copy.deepcopy(document)
    listeners = broken["listeners"]
    listeners[0]["port"] = 70000
    listeners[1]["idle_timeout"] = "soon"
    listeners[2]["scheduler"] = "random"
    listeners[2]["colour"] = "blue"
    web = next(g for g in broken["server_groups"] if g["name"] == "web")
    web["servers"][1]["address"] = "not-an-address"
    web["health_check"]["timeout"] = 30  # longer than the interval (7)
    broken["acls"][0]["entries"].append({"cidr": "10.0.0.1/8", "description": ""})
    broken["tls_policies"][0]["max_version"] = "TLSv1.0"
    broken["instance"]["listener_quota"] = 500

    problems = refused(broken)

    def has(prefix: str) -> bool:
        return any(line.startswith(prefix) for line in problems)

    assert has("listeners[0].port: ")
    assert has("listeners[1].idle_timeout: idle_timeout must be a whole number")
    assert has("listeners[2].scheduler: ")
    assert "listeners[2].colour: Unknown field colour." in problems
    index = broken["server_groups"].index(web)
    assert has(f"server_groups[{index}].servers[1].address: Enter a valid IPv4 or IPv6")
    assert has(f"server_groups[{index}].health_check.timeout: The response timeout may not")
    assert has("acls[0].entries: Line 3: “10.0.0.1/8” has host bits set")
    assert has("tls_policies[0].max_version: ")
    assert has("instance.listener_quota: Listener Quota must be between 1 and 100.")
    assert len(problems) >= 9


@pytest.mark.django_db
def test_rules_that_need_the_rows_being_built_are_checked_across_the_document(
    document: dict, no_push
) -> None:
    broken = copy.deepcopy(document)
    https = next(item for item in broken["listeners"] if item["protocol"] == "https")
    clone = copy.deepcopy(https)
    clone["name"] = "same port"
    broken["listeners"].append(clone)
    broken["instance"]["bandwidth_mbit"] = 30

    problems = refused(broken)

    assert any(
        line.startswith("listeners[3].port: Port")
        and "already used by HTTPS listener secure" in line
        for line in problems
    ), problems
    assert any(
        "listeners[3].bandwidth_mbit: The listeners would be given 40" in p for p in problems
    )


@pytest.mark.django_db
def test_a_basic_instance_refuses_what_only_standard_ones_have(document: dict, no_push) -> None:
    basic = copy.deepcopy(document)
    basic["instance"]["edition"] = "basic"
    secure = next(i for i, item in enumerate(basic["listeners"]) if item["name"] == "secure")
    assert (
        f"listeners[{secure}].mutual_authentication: Basic edition instances do not support "
        "this option." in refused(basic)
    )


@pytest.mark.django_db
def test_a_wrong_passphrase_is_said_on_the_passphrase_and_changes_nothing(
    document: dict, no_push
) -> None:
    problems = refused(document, passphrase="not the passphrase")
    assert problems == [
        "passphrase: This passphrase does not decrypt the document's private keys: enter the "
        "passphrase given when it was exported."
    ]
    assert refused(document, passphrase="") == [
        "passphrase: Enter the passphrase that encrypts the private keys in the document."
    ]


@pytest.mark.django_db
def test_tampered_keys_and_certificates_are_caught(document: dict, no_push) -> None:
    altered_key = copy.deepcopy(document)
    www = next(i for i, c in enumerate(altered_key["certificates"]) if c["name"] == "www")
    sealed = bytearray(altered_key["certificates"][www]["private_key"].encode())
    sealed[-5] = ord("A") if sealed[-5] != ord("A") else ord("B")
    altered_key["certificates"][www]["private_key"] = sealed.decode()
    assert refused(altered_key) == [
        f"certificates[{www}].private_key: Does not decrypt with this passphrase: the document "
        "was altered."
    ]

    swapped = copy.deepcopy(document)
    api = next(i for i, c in enumerate(swapped["certificates"]) if c["name"] == "api")
    swapped["certificates"][www]["private_key"] = document["certificates"][api]["private_key"]
    [problem] = refused(swapped)
    assert problem.startswith(f"certificates[{www}].private_key: ")
    assert "does not match" in problem.lower()

    garbled = copy.deepcopy(document)
    garbled["certificates"][www]["certificate_pem"] = "-----BEGIN CERTIFICATE-----\nAAAA\n"
    [problem] = refused(garbled)
    assert problem.startswith(f"certificates[{www}].certificate_pem: ")


@pytest.mark.django_db
def test_duplicate_names_and_unknown_references_are_listed(document: dict, no_push) -> None:
    broken = copy.deepcopy(document)
    broken["server_groups"].append(copy.deepcopy(broken["server_groups"][0]))
    broken["listeners"][0]["server_group"] = "nowhere"
    broken["listeners"][1]["additional_certificates"] = ["missing"]

    problems = refused(broken)

    name = broken["server_groups"][0]["name"]
    assert (
        f"server_groups[2].name: {name} is also the name of server_groups[0]; names are unique "
        "in a document, as references use them." in problems
    )
    assert "listeners[0].server_group: nowhere is not in server_groups of the document." in problems
    assert (
        "listeners[1].additional_certificates: missing is not in certificates of the document."
        in problems
    )


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([], "None: The document must be a JSON object."),
        ({"format": "something else"}, "format: This is not a Ferry instance backup"),
        (
            {"format": "ferry-instance-backup", "format_version": 99},
            "format_version: Format version 99 is not supported",
        ),
        (
            {"format": "ferry-instance-backup", "format_version": 1, "listeners": {"a": 1}},
            "listeners: Must be a list.",
        ),
        (
            {"format": "ferry-instance-backup", "format_version": 1, "listeners": [1] * 101},
            "listeners: At most 100 entries.",
        ),
        (
            {
                "format": "ferry-instance-backup",
                "format_version": 1,
                "instance": {"name": "x"},
                "encryption": {
                    "kdf": "scrypt",
                    "cipher": "AES-256-GCM",
                    "salt": "AAAA",
                    "n": 2**30,
                    "r": 8,
                    "p": 1,
                },
            },
            "encryption.salt: 16 to 64 bytes",
        ),
    ],
)
def test_malformed_documents_are_refused_by_name(raw, expected, no_push) -> None:
    problems = refused(raw)
    assert any(line.startswith(expected) for line in problems), problems


@pytest.mark.django_db
def test_expensive_scrypt_parameters_are_refused_before_deriving(document: dict, no_push) -> None:
    costly = copy.deepcopy(document)
    for n in (2**24, 32768.0, "32768"):
        costly["encryption"]["n"] = n
        problems = refused(costly)
        assert problems[0].startswith("encryption: scrypt n must be one of"), n


# -- the API -----------------------------------------------------------------------------------
@pytest.mark.django_db
def test_api_export_then_import_into_a_new_instance(api, source: Source, no_push) -> None:
    instance = source.http.instance
    exported = api.send(
        "post", f"/api/v1/instances/{instance.pk}/export", {"passphrase": PASSPHRASE}
    )
    assert exported.status_code == 200, exported.content
    assert exported["Content-Disposition"] == f'attachment; filename="origin-{instance.pk}.json"'
    assert exported["Cache-Control"] == "no-store"

    created = api.send(
        "post",
        "/api/v1/instances/import",
        {"passphrase": PASSPHRASE, "document": exported.json(), "name": "restored"},
    )

    assert created.status_code == 201, created.content
    body = created.json()
    assert body["name"] == "restored" and len(body["listeners"]) == 3
    assert Instance.objects.get(pk=body["instance"]).listeners.count() == 3


@pytest.mark.django_db
def test_api_problems_name_the_document_path(api, document: dict, no_push) -> None:
    document["listeners"][0]["port"] = 0
    answer = api.send(
        "post", "/api/v1/instances/import", {"passphrase": PASSPHRASE, "document": document}
    )
    assert answer.status_code == 422
    assert answer["Content-Type"] == "application/problem+json"
    assert [e["field"] for e in answer.json()["errors"]] == ["document.listeners[0].port"]

    wrong = api.send(
        "post", "/api/v1/instances/import", {"passphrase": "nope", "document": document}
    )
    assert wrong.json()["errors"][0]["field"] == "passphrase"


@pytest.mark.django_db
def test_api_refuses_a_non_empty_target_an_override_and_a_short_passphrase(
    api, source: Source, document: dict, no_push
) -> None:
    instance_id = source.http.instance_id
    busy = api.send(
        "post",
        f"/api/v1/instances/{instance_id}/import",
        {"passphrase": PASSPHRASE, "document": document},
    )
    assert busy.status_code == 409 and "has 3 listener(s)" in busy.json()["detail"]

    empty = Instance.objects.create(name="empty")
    override = api.send(
        "post",
        f"/api/v1/instances/{empty.pk}/import",
        {"passphrase": PASSPHRASE, "document": document, "name": "other"},
    )
    assert override.status_code == 422
    assert override.json()["errors"] == [
        {"field": "name", "message": "Only for an import into a new instance."}
    ]

    short = api.send("post", f"/api/v1/instances/{instance_id}/export", {"passphrase": "short"})
    assert short.status_code == 422 and short.json()["errors"][0]["field"] == "passphrase"
    missing = api.send("post", f"/api/v1/instances/{instance_id}/export", {})
    assert missing.status_code == 422
    gone = api.send("post", "/api/v1/instances/lb-missing/export", {"passphrase": PASSPHRASE})
    assert gone.status_code == 404


@pytest.mark.django_db
def test_viewers_neither_export_nor_import(viewer_api, source: Source, document: dict) -> None:
    before = counts()
    exported = viewer_api.send(
        "post", f"/api/v1/instances/{source.http.instance_id}/export", {"passphrase": PASSPHRASE}
    )
    imported = viewer_api.send(
        "post", "/api/v1/instances/import", {"passphrase": PASSPHRASE, "document": document}
    )
    assert (exported.status_code, imported.status_code) == (403, 403)
    assert "Viewer" in imported.json()["detail"]
    assert counts() == before


@pytest.mark.django_db
def test_api_refuses_oversized_and_non_json_bodies(api, no_push) -> None:
    before = counts()
    big = {"passphrase": PASSPHRASE, "document": {"pad": "x" * API_MAX_IMPORT_BYTES}}
    oversized = api.send("post", "/api/v1/instances/import", big)
    assert oversized.status_code == 413
    garbage = api.generic(
        "POST", "/api/v1/instances/import", b"{not json", content_type="application/json"
    )
    assert garbage.status_code in (400, 422)
    assert garbage["Content-Type"] == "application/problem+json"
    not_object = api.send(
        "post", "/api/v1/instances/import", {"passphrase": PASSPHRASE, "document": [1, 2]}
    )
    assert not_object.status_code == 422
    assert counts() == before


# -- the console pages ---------------------------------------------------------------------------
@pytest.mark.django_db
def test_export_page_asks_twice_and_downloads_the_document(admin_client, source: Source) -> None:
    url = reverse("instance-export", args=[source.http.instance_id])
    page = admin_client.get(url)
    assert page.status_code == 200
    assert b'type="password"' in page.content

    mismatch = admin_client.post(url, {"passphrase": PASSPHRASE, "confirm": PASSPHRASE + "!"})
    assert mismatch.status_code == 422
    assert b"The passphrases differ" in mismatch.content

    download = admin_client.post(url, {"passphrase": PASSPHRASE, "confirm": PASSPHRASE})
    assert download.status_code == 200
    assert download["Content-Disposition"].startswith('attachment; filename="origin-')
    assert json.loads(download.content)["format"] == "ferry-instance-backup"


@pytest.mark.django_db
def test_import_page_creates_the_instance_from_the_file(
    admin_client, document: dict, no_push
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    url = reverse("instance-import")
    assert admin_client.get(url).status_code == 200
    upload_file = SimpleUploadedFile("backup.json", json.dumps(document).encode())
    answer = admin_client.post(
        url, {"document": upload_file, "passphrase": PASSPHRASE, "name": "from the page"}
    )
    assert answer.status_code == 302
    created = Instance.objects.get(name="from the page")
    assert answer["Location"] == reverse("instance-listeners", args=[created.pk])
    assert created.listeners.count() == 3


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\x00\x01 not json", "The file is not JSON"),
        (b'{"format": "a", "format": "b"}', "The key format appears twice"),
        (b"x" * (backup.MAX_DOCUMENT_BYTES + 1), "larger than"),
    ],
)
def test_import_page_lists_problems_next_to_the_file(
    admin_client, content: bytes, expected: str, no_push
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    before = counts()
    answer = admin_client.post(
        reverse("instance-import"),
        {"document": SimpleUploadedFile("b.json", content), "passphrase": PASSPHRASE},
    )
    assert answer.status_code == 422
    assert expected in answer.content.decode()
    assert counts() == before


@pytest.mark.django_db
def test_import_page_lists_every_problem_of_the_document(
    admin_client, document: dict, no_push
) -> None:
    from django.core.files.uploadedfile import SimpleUploadedFile

    document["listeners"][0]["port"] = 0
    document["listeners"][1]["colour"] = "blue"
    target = Instance.objects.create(name="spare")
    before = counts()
    answer = admin_client.post(
        reverse("instance-import-into", args=[target.pk]),
        {
            "document": SimpleUploadedFile("b.json", json.dumps(document).encode()),
            "passphrase": PASSPHRASE,
        },
    )
    assert answer.status_code == 422
    text = answer.content.decode()
    assert "listeners[0].port: " in text and "listeners[1].colour: Unknown field colour." in text
    assert 'id="id_document_errors"' in text
    assert counts() == before


@pytest.mark.django_db
def test_viewers_see_the_pages_disabled_and_cannot_post(viewer_client, source: Source) -> None:
    url = reverse("instance-export", args=[source.http.instance_id])
    page = viewer_client.get(url)
    assert page.status_code == 200 and b"disabled" in page.content
    assert (
        viewer_client.post(url, {"passphrase": PASSPHRASE, "confirm": PASSPHRASE}).status_code
        == 403
    )
    assert viewer_client.post(reverse("instance-import"), {}).status_code == 403


@pytest.mark.django_db
def test_the_instance_pages_offer_export_and_import(admin_client, source: Source) -> None:
    tab = admin_client.get(reverse("instance-listeners", args=[source.http.instance_id]))
    assert reverse("instance-export", args=[source.http.instance_id]).encode() in tab.content
    empty = Instance.objects.create(name="empty")
    empty_tab = admin_client.get(reverse("instance-listeners", args=[empty.pk]))
    assert reverse("instance-import-into", args=[empty.pk]).encode() in empty_tab.content
    listing = admin_client.get(reverse("instance-list"))
    assert reverse("instance-import").encode() in listing.content


# -- real traffic -------------------------------------------------------------------------------
def get_http(host: str, port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def get_https(host: str, port: int, server_name: str, origin: Source) -> tuple[bytes, bytes]:
    """(the response, the certificate the listener presented for ``server_name``, DER), as a
    client with a certificate of the CA that mutual authentication trusts."""
    context = ssl.create_default_context()
    origin.ca.configure_trust(context)
    origin.client_certificate.configure_cert(context)
    with socket.create_connection((host, port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(
                f"GET /secure HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode()
            )
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
            return answer, tls.getpeercert(binary_form=True)


@pytest.mark.integration
@pytest.mark.django_db(transaction=True)
def test_export_then_import_into_a_fresh_instance_serves_the_same_traffic(
    stack: Stack, live_server
) -> None:
    stack.start_pipeline()
    origin = Source(
        stack.instance, stack.backend.port, http_port=free_port(), https_port=free_port()
    )
    user = make_user("restorer", "Administrators")
    secret = tokens.issue_token(user=user, name="backup", role="admin", days=1).secret
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {secret}"
    base = f"{live_server.url}/api/v1"

    def listeners_of(instance_id: str) -> list[dict]:
        return api.get(f"{base}/instances/{instance_id}/listeners").json()

    def settled(instance_id: str) -> bool:
        states = {item["name"]: item["status"] for item in listeners_of(instance_id)}
        return states == {"plain": "running", "secure": "running", "raw": "stopped"}

    def wait_settled(instance_id: str) -> None:
        try:
            wait_until(lambda: settled(instance_id), timeout=CONVERGENCE)
        except AssertionError as gave_up:
            states = [(i["name"], i["status"], i["last_error"]) for i in listeners_of(instance_id)]
            raise AssertionError(f"{gave_up}; listeners: {states}") from None

    wait_settled(stack.instance.id)

    def traffic(host: str) -> dict:
        answers = {
            "plain": get_http(host, origin.http.port, "/through-plain"),
            "rule": get_http(host, origin.http.port, "/fixed"),
        }
        for name in ("www.example.com", "api.example.com"):
            response, der = get_https(host, origin.https.port, name, origin)
            answers[name] = (response.split(b"\r\n", 1)[0], response.rsplit(b"\r\n", 1)[1], der)
        return answers

    served = traffic("127.0.0.1")
    assert served["plain"] == (200, stack.backend.name.encode())
    assert served["rule"] == (200, b"answered by a forwarding rule")
    assert served["www.example.com"][0] == b"HTTP/1.1 200 OK"
    assert served["www.example.com"][2] != served["api.example.com"][2]  # SNI picks "api"

    # When: the instance is exported, and imported into a fresh instance served by its own node
    # on another address (both run side by side, on the same ports).
    exported = api.post(
        f"{base}/instances/{stack.instance.id}/export", json={"passphrase": PASSPHRASE}
    )
    assert exported.status_code == 200, exported.text
    fresh = Instance.objects.create(name="fresh", bind_address="127.0.0.2")
    second = stack.plane.node("second")
    register_node(fresh, second.url, name=second.name, token=second.token)
    imported = api.post(
        f"{base}/instances/{fresh.pk}/import",
        json={"passphrase": PASSPHRASE, "document": exported.json()},
    )
    assert imported.status_code == 200, imported.text
    wait_settled(fresh.pk)

    # Then: the same requests get the same answers there, with the same certificates, and the
    # backend got the requests the copy forwarded.
    before = len(stack.backend.requests)
    assert traffic("127.0.0.2") == served
    forwarded = stack.backend.requests[before:]
    assert [r["path"] for r in forwarded] == ["/through-plain", "/secure", "/secure"]
    assert forwarded[0]["headers"]["X-Forwarded-Proto"] == "http"
    subject = x509.load_pem_x509_certificate(
        origin.client_certificate.cert_chain_pems[0].bytes()
    ).subject.rfc4514_string()
    assert forwarded[1]["headers"]["X-Forwarded-Clientcert-subjectdn"] == subject
    with pytest.raises(OSError):
        get_http("127.0.0.2", origin.tcp.port, "/stopped-in-the-copy-too")


@pytest.mark.django_db
def test_server_states_travel_with_their_servers(source: Source, no_push) -> None:
    """A draining server stays draining (with its delay and start) and one in maintenance stays
    out: a restore must not put back into service what the operator took out."""
    first, second = source.group.servers.order_by("pk")[:2]
    began = timezone.now() - datetime.timedelta(seconds=30)
    first.__class__.objects.filter(pk=first.pk).update(
        state="draining", deregistration_delay=600, draining_since=began
    )
    second.__class__.objects.filter(pk=second.pk).update(state="maintenance")
    document = backup.export_instance(source.http.instance, PASSPHRASE)

    imported = backup.import_instance(document=document, passphrase=PASSPHRASE, name="copy")

    [group] = [g for g in imported.server_groups if g.name == source.group.name]
    by_address = {(s.address, s.port): s for s in group.servers.all()}
    drained = by_address[(first.address, first.port)]
    assert (drained.state, drained.deregistration_delay) == ("draining", 600)
    assert abs((drained.draining_since - began).total_seconds()) < 1
    assert by_address[(second.address, second.port)].state == "maintenance"
