"""The console's one write path: every use case refuses a Configuring listener under its row lock.

Two requests that both saw a listener Running race: the first changes it (it is now
Configuring), the second must wait on the first's row lock and then see Configuring and be
refused. Each race runs on two real PostgreSQL connections, and the test watches the second
connection wait on a lock before it lets the first commit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse

from certificates.models import Certificate
from certificates.validation import validate_server_certificate
from listeners import services
from listeners.models import AccessControlList, Listener, ServerGroup, TlsPolicy
from listeners.predefined import ensure_predefined_policies
from tests.factories.certs import make_server_cert
from tests.fixtures.listeners import make_listener

WAIT = 10.0


@dataclass
class Scene:
    listener: Listener
    group: ServerGroup
    other_group: ServerGroup
    acl: AccessControlList
    policy: TlsPolicy
    certificate: Certificate


def _server_certificate(name: str) -> Certificate:
    material = make_server_cert()
    return services.upload_certificate(
        name=name,
        kind=Certificate.Kind.SERVER,
        validated=validate_server_certificate(material.cert_pem, material.key_pem),
    )


@pytest.fixture
def scene(instance, server_group, acl, custom_tls_policy) -> Scene:
    """A Running HTTPS listener that uses a group, an ACL, a custom policy and a certificate."""
    # Transactional tests flush the rows migrations made.
    ensure_predefined_policies()
    certificate = _server_certificate("site")
    listener = make_listener(
        instance,
        server_group,
        port=443,
        protocol=Listener.Protocol.HTTPS,
        status=Listener.Status.RUNNING,
        acl=acl,
        acl_mode="whitelist",
        tls_policy=custom_tls_policy,
        default_certificate=certificate,
    )
    other = services.create_server_group(
        name="other", backend_protocol="http", servers=[{"address": "127.0.0.1", "port": 9}]
    )
    return Scene(listener, server_group, other, acl, custom_tls_policy, certificate)


def _replacement(scene: Scene):
    material = make_server_cert(sans=("new.example.test",), common_name="new.example.test")
    return validate_server_certificate(material.cert_pem, material.key_pem)


# Every use case that changes a listener's configuration, called as a view or the API would.
USE_CASES: dict[str, Callable[[Scene], object]] = {
    "modify": lambda s: services.modify_listener(
        listener_id=s.listener.pk, name="renamed", settings={"idle_timeout": 30}
    ),
    "start": lambda s: services.set_desired_state(
        listener_id=s.listener.pk, desired_state=Listener.DesiredState.RUNNING
    ),
    "delete": lambda s: services.delete_listener(listener_id=s.listener.pk),
    "change server group": lambda s: services.change_server_group(
        listener_id=s.listener.pk, server_group=s.other_group
    ),
    "certificates": lambda s: services.update_listener_certificates(
        listener_id=s.listener.pk, default_certificate=_server_certificate("other")
    ),
    "TLS policy": lambda s: services.change_tls_policy(
        listener_id=s.listener.pk, tls_policy=TlsPolicy.objects.get(pk="tls_cipher_policy_1_2")
    ),
    "health check": lambda s: services.update_health_check(group=s.group, values={"interval": 10}),
    "forwarding rule": lambda s: services.save_forwarding_rule(
        listener_id=s.listener.pk,
        values={
            "conditions": [{"type": "path", "values": ["/api"], "match": "prefix"}],
            "action": "fixed_response",
            "status_code": 503,
        },
    ),
    "server group edit": lambda s: services.update_server_group(
        group_id=s.group.pk,
        values={"name": "renamed"},
        servers=[{"address": "127.0.0.1", "port": 8081, "weight": 1}],
    ),
    "ACL edit": lambda s: services.update_acl(
        acl_id=s.acl.pk, name="office", entries={"192.0.2.0/24": ""}
    ),
    "TLS policy edit": lambda s: services.update_tls_policy(
        policy_id=s.policy.pk, values={"description": "changed"}
    ),
    "certificate replace": lambda s: services.replace_certificate(
        certificate_id=s.certificate.pk, validated=_replacement(s)
    ),
}


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _waits_on_a_lock(pid: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("use_case", USE_CASES)
def test_second_change_waits_for_the_lock_then_is_refused(scene: Scene, use_case: str) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serializes whole transactions")
    instance = scene.listener.instance
    instance.refresh_from_db()
    before = instance.generation
    first_holds_lock = threading.Event()
    commit_first = threading.Event()
    second_pid: list[int] = []
    outcome: dict[str, object] = {}

    def first() -> None:
        # Stop the listener and keep the transaction open until the second request waits.
        try:
            with transaction.atomic():
                services.set_desired_state(
                    listener_id=scene.listener.pk, desired_state=Listener.DesiredState.STOPPED
                )
                first_holds_lock.set()
                commit_first.wait(WAIT)
        finally:
            connection.close()

    def second() -> None:
        try:
            first_holds_lock.wait(WAIT)
            second_pid.append(_backend_pid())
            USE_CASES[use_case](scene)
            outcome["result"] = "accepted"
        except services.ListenerConfiguring as refusal:
            outcome["result"] = refusal
        except Exception as error:  # the assertion below shows what went wrong
            outcome["result"] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + WAIT
    waited = False
    while time.monotonic() < deadline and not waited:
        waited = bool(second_pid) and _waits_on_a_lock(second_pid[0])
        time.sleep(0.02)
    commit_first.set()
    for thread in threads:
        thread.join(WAIT)

    assert waited, f"{use_case}: the second change did not wait on the first's lock"
    refusal = outcome["result"]
    assert isinstance(refusal, services.ListenerConfiguring), refusal
    assert refusal.listener.pk == scene.listener.pk
    assert "is Configuring" in str(refusal)
    # Only the first change was saved: one generation, the listener as the first left it.
    instance.refresh_from_db()
    assert instance.generation == before + 1
    listener = Listener.objects.get(pk=scene.listener.pk)
    assert (listener.name, listener.desired_state, listener.server_group_id) == (
        scene.listener.name,
        Listener.DesiredState.STOPPED,
        scene.group.pk,
    )
    assert listener.status == Listener.Status.CONFIGURING


@pytest.mark.django_db
@pytest.mark.parametrize("use_case", USE_CASES)
def test_every_use_case_refuses_a_configuring_listener(scene: Scene, use_case: str) -> None:
    Listener.objects.filter(pk=scene.listener.pk).update(status=Listener.Status.CONFIGURING)
    instance = scene.listener.instance
    instance.refresh_from_db()
    before = instance.generation
    with pytest.raises(services.ListenerConfiguring, match="is Configuring"):
        USE_CASES[use_case](scene)
    instance.refresh_from_db()
    assert instance.generation == before
    assert Listener.objects.filter(pk=scene.listener.pk, name=scene.listener.name).exists()


@pytest.mark.django_db
@pytest.mark.parametrize("use_case", USE_CASES)
def test_every_use_case_bumps_the_generation_once(scene: Scene, use_case: str) -> None:
    instance = scene.listener.instance
    instance.refresh_from_db()
    before = instance.generation
    USE_CASES[use_case](scene)
    instance.refresh_from_db()
    assert instance.generation == before + 1
    if use_case != "delete":
        assert Listener.objects.get(pk=scene.listener.pk).status == Listener.Status.CONFIGURING


# -- the views only validate and call the service ------------------------------------------------
def _configuring_after_validation(monkeypatch, form_class, listener: Listener) -> None:
    """Another request's change lands between this request's form validation and its save."""
    validate = form_class.is_valid

    def is_valid(self) -> bool:
        valid = validate(self)
        Listener.objects.filter(pk=listener.pk).update(status=Listener.Status.CONFIGURING)
        return valid

    monkeypatch.setattr(form_class, "is_valid", is_valid)


@pytest.mark.django_db
def test_modify_view_is_refused_when_configuring_lands_after_validation(
    admin_client: Client, scene: Scene, monkeypatch
) -> None:
    from listeners.forms.listener import ListenerSettingsForm
    from tests.listeners.test_wizard import ADVANCED_DEFAULTS

    _configuring_after_validation(monkeypatch, ListenerSettingsForm, scene.listener)
    response = admin_client.post(
        reverse("listener-modify", args=[scene.listener.instance_id, scene.listener.pk]),
        {**ADVANCED_DEFAULTS, "name": "renamed", "acl_mode": "off"},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 409
    assert b"is Configuring" in response.content
    assert Listener.objects.get(pk=scene.listener.pk).name == scene.listener.name


@pytest.mark.django_db
def test_server_group_edit_is_refused_when_configuring_lands_after_validation(
    admin_client: Client, scene: Scene, monkeypatch
) -> None:
    from listeners.forms.servergroups import ServerGroupForm
    from tests.listeners.test_servergroups import group_data

    _configuring_after_validation(monkeypatch, ServerGroupForm, scene.listener)
    response = admin_client.post(
        reverse("servergroup-edit", args=[scene.group.pk]),
        group_data(("127.0.0.1", 8081, 7), name="web-backends", initial=2),
    )
    assert response.status_code == 409
    assert b"is Configuring" in response.content
    assert scene.group.servers.get(port=8081).weight == 100
