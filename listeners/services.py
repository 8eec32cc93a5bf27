"""The console's one write path: one function per use case, for the pages and the REST API.

Every function takes keyword arguments and makes its whole change in one transaction:

1. it locks the rows it changes (``select_for_update``; on SQLite the IMMEDIATE transaction
   already serializes writers). Rows that stay are locked FOR NO KEY UPDATE: that serializes
   the use cases with each other but not with the foreign-key checks PostgreSQL makes when a
   transaction that changed a listener commits, which would otherwise deadlock with an edit
   holding the listener's server group, ACL, policy or certificate,
2. under that lock it checks the rules a concurrent change could have made false, above all
   seed 003's refusal while a listener is Configuring, and raises a ``RuleViolation`` naming the
   field it is about,
3. it writes, puts the listeners whose configuration changed in ``configuring`` and bumps the
   generations of their instances,
4. it writes the audit record of the change in its transaction (``@audited``, console/audit.py),
5. it queues the push once the transaction has committed.

Views, forms and API endpoints validate input and call these; nothing else writes. A check a form
already made is repeated here only where a concurrent change could have made it false.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from certificates.models import Certificate
from console.audit import UPDATE, audited
from console.models import Instance
from listeners import rules
from listeners.forms import passive
from listeners.models import (
    DEREGISTRATION_DELAY,
    AccessControlList,
    AclEntry,
    BackendServer,
    ErrorPage,
    ForwardingRule,
    HealthCheck,
    Listener,
    ServerGroup,
    TlsPolicy,
)

log = logging.getLogger(__name__)


# -- errors ------------------------------------------------------------------------------------
class RuleViolation(ValueError):
    """A rule refused the change; ``field`` names the input it is about (None: the whole change).

    Views show the message next to that field; the API answers with a problem document naming it.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ListenerConfiguring(RuleViolation):
    """Seed 003: the listener is Configuring, so deleting or editing it must wait."""

    def __init__(self, message: str, *, listener: Listener) -> None:
        super().__init__(message)
        self.listener = listener


class InUse(RuleViolation):
    """The object cannot be deleted while these listeners use it."""

    def __init__(self, message: str, *, blockers: list[Listener]) -> None:
        super().__init__(message)
        self.blockers = blockers


class NotFound(RuleViolation):
    """The object was deleted by a concurrent change."""


class ReadOnly(RuleViolation):
    """Predefined objects cannot be changed."""


# -- the mechanism every use case shares --------------------------------------------------------
def listeners_changed(listeners: QuerySet[Listener] | Iterable[Listener]) -> None:
    """Record that the desired configuration of these listeners changed.

    They go to ``configuring`` until every node of their instance has applied the new
    generation (seed 003: a temporary Configuring state during which edits are refused).
    The caller holds the transaction and has locked the rows (``_lock_listener``/``_reconfigure``).
    """
    listener_ids = {listener.pk for listener in listeners}
    if not listener_ids:
        return
    instance_ids = set(
        Listener.objects.filter(pk__in=listener_ids).values_list("instance_id", flat=True)
    )
    Listener.objects.filter(pk__in=listener_ids).update(
        status=Listener.Status.CONFIGURING, last_error="", configuring_since=timezone.now()
    )
    instances_changed(instance_ids)


def instances_changed(instance_ids: set[str]) -> None:
    """Bump the generations and, once committed, hand them to the push pipeline."""
    if not instance_ids:
        return
    # In id order, so two changes that reach the same instances cannot deadlock on them.
    list(_for_update(Instance).filter(pk__in=instance_ids).order_by("pk").values_list("pk"))
    Instance.bump_generations(instance_ids)
    transaction.on_commit(lambda: queue_push(instance_ids), robust=True)


# Publishing is a fast path only: if the broker is down, give up quickly and let reconcile
# (which compares every node with the database) deliver the change once the broker is back.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def queue_push(instance_ids: set[str]) -> None:
    # A broker outage is no error for the caller: PushTask.apply_async logs it once per outage.
    from console.tasks import push_instance

    for instance_id, generation in Instance.objects.filter(pk__in=instance_ids).values_list(
        "id", "generation"
    ):
        push_instance.apply_async(
            kwargs={"instance_id": instance_id, "generation": generation},
            retry=True,
            retry_policy=PUBLISH_RETRY,
        )


def _for_update(model, *, deleting: bool = False) -> QuerySet:
    return model.objects.select_for_update(no_key=not deleting)


def _refuse_if_configuring(listener: Listener, doing: str) -> None:
    problem = rules.configuring_refusal(listener, doing)
    if problem:
        raise ListenerConfiguring(problem, listener=listener)


def _lock_listener(listener_id: str, *, doing: str, deleting: bool = False) -> Listener:
    """Lock one listener's row and refuse if it is Configuring.

    Checked under the lock, so of two requests that both saw the listener Running, the second
    waits for the first to commit and then sees the Configuring state the first left.
    """
    listener = _for_update(Listener, deleting=deleting).filter(pk=listener_id).first()
    if listener is None:
        raise NotFound(f"Listener {listener_id} no longer exists.")
    _refuse_if_configuring(listener, doing)
    return listener


def _reconfigure(listeners: QuerySet[Listener], *, doing: str) -> list[Listener]:
    """Lock every listener a shared object's change reaches, refuse if one is Configuring, and
    put them all in ``configuring``. Locked in id order, so two such changes cannot deadlock."""
    # FOR UPDATE cannot be combined with the DISTINCT or outer joins ``listeners`` may have.
    ids = set(listeners.values_list("pk", flat=True))
    locked = list(_for_update(Listener).filter(pk__in=ids).order_by("pk"))
    for listener in locked:
        _refuse_if_configuring(listener, doing)
    listeners_changed(locked)
    return locked


def _locked(model, pk: Any, label: str, *, deleting: bool = False):
    row = _for_update(model, deleting=deleting).filter(pk=pk).first()
    if row is None:
        raise NotFound(f"{label} {pk} no longer exists.")
    return row


def _blockers(listeners: QuerySet[Listener]) -> list[Listener]:
    return list(listeners.select_related("instance").order_by("name")[:50])


def started_or_stopped(arguments: dict[str, Any]) -> str:
    """The audit log's action for ``set_desired_state``."""
    return "listener.start" if arguments["desired_state"] == "running" else "listener.stop"


# -- listeners ---------------------------------------------------------------------------------
@transaction.atomic
@audited("listener.create", Listener)
def create_listener(
    instance: Instance,
    *,
    protocol: str,
    port: int,
    name: str,
    settings: dict,
    server_group: ServerGroup,
    certificates: dict | None = None,
    enabled: bool = True,
) -> Listener:
    """Create one listener in ``configuring``.

    The rules are checked again here under a row lock on the instance, so two submits racing
    for the same port or the last quota slot cannot both succeed.
    """
    _for_update(Instance).filter(pk=instance.pk).first()
    problem = rules.quota_exceeded(instance)
    if problem:
        raise RuleViolation(problem)
    problem = rules.port_conflict(instance, protocol, port)
    if problem:
        raise RuleViolation(problem, field="port")
    certificates = dict(certificates or {})
    additional = certificates.pop("additional_certificates", [])
    listener = Listener.objects.create(
        instance=instance,
        protocol=protocol,
        port=port,
        name=name,
        server_group=server_group,
        desired_state=Listener.DesiredState.RUNNING if enabled else Listener.DesiredState.STOPPED,
        status=Listener.Status.CONFIGURING,
        **settings,
        **certificates,
    )
    if additional:
        listener.additional_certificates.set(additional)
    listeners_changed([listener])
    return listener


@transaction.atomic
def create_listener_with_group(
    instance: Instance,
    *,
    server_group: ServerGroup | None = None,
    new_server_group: dict[str, Any] | None = None,
    health_check: dict[str, Any],
    **listener: Any,
) -> Listener:
    """The wizard's Submit: the listener with an existing group (whose health check it may
    edit) or with a new one (``new_server_group``: ``create_server_group``'s arguments)."""
    if new_server_group is not None:
        group = create_server_group(**new_server_group, health_check=health_check)
    elif server_group is not None:
        group = server_group
        update_health_check(group=group, values=health_check)
    else:
        raise RuleViolation("Choose a server group.", field="server_group")
    return create_listener(instance, server_group=group, **listener)


@transaction.atomic
@audited("listener.modify", Listener, key="listener_id")
def modify_listener(*, listener_id: str, name: str = "", settings: dict[str, Any]) -> Listener:
    """Modify Listener: name, description, tags and Advanced Settings (never protocol or port)."""
    listener = _lock_listener(listener_id, doing="modifying it")
    for field, value in settings.items():
        setattr(listener, field, value)
    listener.name = name or listener.name
    listener.save()
    listeners_changed([listener])
    return listener


@transaction.atomic
@audited(started_or_stopped, Listener, key="listener_id")
def set_desired_state(*, listener_id: str, desired_state: str) -> Listener:
    """Start or Stop a listener."""
    verb = "starting" if desired_state == Listener.DesiredState.RUNNING else "stopping"
    listener = _lock_listener(listener_id, doing=f"{verb} it")
    listener.desired_state = desired_state
    listener.save(update_fields=["desired_state", "updated_at"])
    listeners_changed([listener])
    return listener


@transaction.atomic
@audited("listener.delete", Listener, key="listener_id", lock=UPDATE)
def delete_listener(*, listener_id: str) -> Listener:
    """Delete a listener; returns the deleted row (its id and name stay readable)."""
    listener = _lock_listener(listener_id, doing="deleting it", deleting=True)
    instance_id = listener.instance_id
    deleted_id = listener.pk
    listener.delete()
    listener.pk = deleted_id
    instances_changed({instance_id})
    return listener


@transaction.atomic
@audited("listener.change_server_group", Listener, key="listener_id")
def change_server_group(*, listener_id: str, server_group: ServerGroup) -> Listener:
    listener = _lock_listener(listener_id, doing="changing its server group")
    # The group's backend protocol is read under the group's lock: an edit of the group cannot
    # turn it incompatible between this check and the commit.
    group = _locked(ServerGroup, server_group.pk, "Server group")
    if group.backend_protocol not in rules.compatible_backend_protocols(listener.protocol):
        raise RuleViolation(
            f"{group.name} has {group.get_backend_protocol_display()} backends, which a "
            f"{listener.get_protocol_display()} listener cannot forward to.",
            field="server_group",
        )
    listener.server_group = group
    listener.save(update_fields=["server_group", "updated_at"])
    listeners_changed([listener])
    return listener


@transaction.atomic
@audited("listener.update_certificates", Listener, key="listener_id")
def update_listener_certificates(
    *,
    listener_id: str,
    default_certificate: Certificate,
    additional_certificates: Iterable[Certificate] = (),
    mutual_authentication: bool = False,
    ca_certificate: Certificate | None = None,
) -> Listener:
    """Manage Certificates: the default (and SNI) server certificates and mutual authentication."""
    listener = _lock_listener(listener_id, doing="changing its certificates")
    listener.default_certificate = default_certificate
    listener.mutual_authentication = mutual_authentication
    listener.ca_certificate = ca_certificate if mutual_authentication else None
    listener.save()
    listener.additional_certificates.set(list(additional_certificates))
    listeners_changed([listener])
    return listener


@transaction.atomic
@audited("listener.change_tls_policy", Listener, key="listener_id")
def change_tls_policy(*, listener_id: str, tls_policy: TlsPolicy) -> Listener:
    listener = _lock_listener(listener_id, doing="changing its TLS policy")
    listener.tls_policy = tls_policy
    listener.save(update_fields=["tls_policy", "updated_at"])
    listeners_changed([listener])
    return listener


# Forwarding rules: the ForwardingRule fields a rule form or API request sets.
RULE_FIELDS = (
    "name",
    "conditions",
    "action",
    "server_group",
    "status_code",
    "redirect_protocol",
    "redirect_host",
    "redirect_port",
    "redirect_path",
    "redirect_query",
    "content_type",
    "body",
    "qps_per_client_ip",
)


@transaction.atomic
@audited("listener.save_forwarding_rule", Listener, key="listener_id")
def save_forwarding_rule(
    *, listener_id: str, rule_id: int | None = None, values: dict[str, Any]
) -> ForwardingRule:
    """Add a forwarding rule at the end of the list, or edit one (``rule_id``)."""
    listener = _lock_listener(listener_id, doing="changing its forwarding rules")
    if rule_id is None:
        last = listener.rules.order_by("-position").first()
        rule = ForwardingRule(listener=listener, position=(last.position + 1) if last else 0)
    else:
        rule = listener.rules.filter(pk=rule_id).first()
        if rule is None:
            raise NotFound(f"Forwarding rule {rule_id} no longer exists.")
    for field in RULE_FIELDS:
        if field in values:
            setattr(rule, field, values[field])
    rule.save()
    listeners_changed([listener])
    return rule


@transaction.atomic
@audited("listener.delete_forwarding_rule", Listener, key="listener_id")
def delete_forwarding_rule(*, listener_id: str, rule_id: int) -> ForwardingRule:
    listener = _lock_listener(listener_id, doing="changing its forwarding rules")
    rule = listener.rules.filter(pk=rule_id).first()
    if rule is None:
        raise NotFound(f"Forwarding rule {rule_id} no longer exists.")
    rule.delete()
    listeners_changed([listener])
    return rule


@transaction.atomic
@audited("listener.move_forwarding_rule", Listener, key="listener_id")
def move_forwarding_rule(*, listener_id: str, rule_id: int, direction: str) -> None:
    """Swap a rule with its neighbour: rules are tried in order, the first match wins."""
    listener = _lock_listener(listener_id, doing="reordering its forwarding rules")
    ordered = list(listener.rules.order_by("position", "pk"))
    index = next((i for i, rule in enumerate(ordered) if rule.pk == rule_id), None)
    if index is None:
        raise NotFound(f"Forwarding rule {rule_id} no longer exists.")
    other = index - 1 if direction == "up" else index + 1
    if not 0 <= other < len(ordered):
        return
    ordered[index], ordered[other] = ordered[other], ordered[index]
    for position, rule in enumerate(ordered):
        ForwardingRule.objects.filter(pk=rule.pk).update(position=position)
    listeners_changed([listener])


# -- error pages (issue 20) -------------------------------------------------------------------
@transaction.atomic
@audited("listener.set_error_page", Listener, key="listener_id")
def set_error_page(*, listener_id: str, status: str, content_type: str, body: str) -> ErrorPage:
    """Add or replace the listener's page for one status (502, 503, 504 or maintenance)."""
    listener = _lock_listener(listener_id, doing="changing its error pages")
    if listener.protocol not in Listener.LAYER7_PROTOCOLS:
        raise RuleViolation(
            "Only HTTP, HTTPS and QUIC listeners serve error pages.", field="status"
        )
    if status not in ErrorPage.Status.values:
        raise RuleViolation("Choose 502, 503, 504 or Maintenance.", field="status")
    if content_type not in ErrorPage.ContentType.values:
        raise RuleViolation(
            "The content type must be text/html, text/plain or application/json.",
            field="content_type",
        )
    page, _ = ErrorPage.objects.update_or_create(
        listener=listener, status=status, defaults={"content_type": content_type, "body": body}
    )
    listeners_changed([listener])
    return page


@transaction.atomic
@audited("listener.remove_error_page", Listener, key="listener_id")
def remove_error_page(*, listener_id: str, status: str) -> ErrorPage:
    """Go back to the node's plain answer for one status."""
    listener = _lock_listener(listener_id, doing="changing its error pages")
    page = listener.error_pages.filter(status=status).first()
    if page is None:
        label = ErrorPage.Status(status).label if status in ErrorPage.Status.values else status
        raise NotFound(f"The {label} page no longer exists.")
    page.delete()
    listeners_changed([listener])
    return page


# -- server groups and health checks -----------------------------------------------------------
def default_health_check(backend_protocol: str) -> dict[str, Any]:
    """The health check a new group starts with, wherever it is created: one that speaks the
    backends' protocol, so a server that hangs or answers 500 leaves the rotation.

    gRPC servers answer only HTTP/2, which the HTTP probe does not speak, so they get TCP.
    """
    protocol = {
        ServerGroup.BackendProtocol.HTTP: HealthCheck.Protocol.HTTP,
        ServerGroup.BackendProtocol.HTTPS: HealthCheck.Protocol.HTTPS,
        ServerGroup.BackendProtocol.UDP: HealthCheck.Protocol.UDP,
    }.get(backend_protocol, HealthCheck.Protocol.TCP)
    return {"protocol": protocol, "expected_codes": ["http_2xx", "http_3xx"]}


def listeners_of_group(group: ServerGroup) -> QuerySet[Listener]:
    """May repeat a listener: add ``.distinct()`` to list them."""
    # Listeners forward to a group as their default or through a forwarding rule.
    return Listener.objects.filter(Q(server_group=group) | Q(rules__server_group=group))


@transaction.atomic
@audited("server_group.create", ServerGroup)
def create_server_group(
    *,
    name: str,
    backend_protocol: str,
    servers: list[dict],
    health_check: dict | None = None,
    slow_start: bool = False,
    slow_start_duration: int = 30,
    description: str = "",
    backend_ca_certificate: Certificate | None = None,
) -> ServerGroup:
    """A new group with its backend servers and its health check (the protocol's default unless
    ``health_check`` gives the values)."""
    group = ServerGroup.objects.create(
        name=name,
        backend_protocol=backend_protocol,
        slow_start=slow_start,
        slow_start_duration=slow_start_duration,
        description=description,
        backend_ca_certificate=backend_ca_certificate,
    )
    replace_servers(group, servers)
    check, passive_check = passive.split(health_check or default_health_check(backend_protocol))
    if passive_check:
        # The Passive Health Check fields of the health check form are the group's.
        ServerGroup.objects.filter(pk=group.pk).update(**passive_check)
        for field, value in passive_check.items():
            setattr(group, field, value)
    HealthCheck.objects.create(group=group, **check)
    return group


@transaction.atomic
@audited("server_group.modify", ServerGroup, key="group_id")
def update_server_group(
    *, group_id: str, values: dict[str, Any], servers: list[dict] | None = None
) -> ServerGroup:
    """Edit a group (``values``: its ServerGroup fields) and make its servers ``servers``."""
    group = _locked(ServerGroup, group_id, "Server group")
    affected = _reconfigure(listeners_of_group(group), doing="editing its server group")
    protocol = values.get("backend_protocol", group.backend_protocol)
    for listener in affected:
        if protocol not in rules.compatible_backend_protocols(listener.protocol):
            raise RuleViolation(
                f"Listener {listener.name} ({listener.id}) forwards "
                f"{listener.get_protocol_display()} to this group, so its backend protocol "
                f"cannot be {ServerGroup.BackendProtocol(protocol).label}.",
                field="backend_protocol",
            )
    for field, value in values.items():
        setattr(group, field, value)
    group.save()
    if servers is not None:
        replace_servers(group, servers)
    return group


def replace_servers(group: ServerGroup, rows: list[dict]) -> None:
    """Make the group's servers exactly ``rows`` (address, port, weight, description).

    Rows that match an existing server by address and port update it in place, so its server
    ID (and the dataplane's health state keyed by it) survives a weight change. Part of
    ``create_server_group``/``update_server_group``, which hold the transaction and the locks.
    """
    wanted = {(row["address"], row["port"]): row for row in rows}
    existing = {(s.address, s.port): s for s in group.servers.select_for_update()}
    stale = [server.pk for key, server in existing.items() if key not in wanted]
    BackendServer.objects.filter(pk__in=stale).delete()
    for key, row in wanted.items():
        weight = row.get("weight", 100)
        description = row.get("description", "")
        server = existing.get(key)
        if server is None:
            BackendServer.objects.create(
                group=group,
                address=row["address"],
                port=row["port"],
                weight=weight,
                description=description,
            )
        elif (server.weight, server.description) != (weight, description):
            server.weight = weight
            server.description = description
            server.save(update_fields=["weight", "description"])


def _server_state_action(arguments: dict[str, Any]) -> str:
    """The audit log's action for ``set_server_state``: backend_server.drain and so on."""
    return {
        BackendServer.State.ENABLED: "backend_server.enable",
        BackendServer.State.DRAINING: "backend_server.drain",
        BackendServer.State.MAINTENANCE: "backend_server.maintenance",
    }.get(arguments.get("state"), "backend_server.set_state")


def _lock_server_and_group(arguments: dict[str, Any]) -> None:
    """``set_server_state``'s locks in its order (the group, then the server), for its audit."""
    server = BackendServer.objects.filter(pk=arguments["server_pk"]).first()
    if server is not None:
        _for_update(ServerGroup).filter(pk=server.group_id).first()
        _for_update(BackendServer).filter(pk=server.pk).first()


@transaction.atomic
@audited(_server_state_action, BackendServer, key="server_pk", lock=_lock_server_and_group)
def set_server_state(
    *, server_pk: int, state: str, deregistration_delay: int | None = None
) -> BackendServer:
    """Enable a backend server, drain it or put it in maintenance.

    Draining starts the server's deregistration delay now (``deregistration_delay`` replaces the
    server's own when given): the nodes send it nothing new and close what remains once the delay
    has passed. Draining a server that already drains only changes its delay, counted from when
    the drain began. The group's listeners are reconfigured, so none of them may be Configuring.
    """
    if state not in BackendServer.State.values:
        raise RuleViolation(
            f"The state must be one of {', '.join(BackendServer.State.values)}.", field="state"
        )
    low, high = DEREGISTRATION_DELAY
    if deregistration_delay is not None and not low <= deregistration_delay <= high:
        raise RuleViolation(
            f"The deregistration delay must be {low}-{high} seconds.",
            field="deregistration_delay",
        )
    group_id = BackendServer.objects.filter(pk=server_pk).values_list("group_id", flat=True).first()
    if group_id is None:
        raise NotFound(f"Backend server srv-{server_pk} no longer exists.")
    # The group first, as editing the group locks it before its servers: no deadlock between them.
    group = _locked(ServerGroup, group_id, "Server group")
    server = _locked(BackendServer, server_pk, "Backend server")
    if server.group_id != group.pk:
        raise NotFound(f"Backend server {server.server_id} no longer exists.")
    delay = server.deregistration_delay if deregistration_delay is None else deregistration_delay
    draining_since = None
    if state == BackendServer.State.DRAINING:
        already = server.state == BackendServer.State.DRAINING and server.draining_since
        draining_since = server.draining_since if already else timezone.now()
    if (server.state, server.deregistration_delay, server.draining_since) == (
        state,
        delay,
        draining_since,
    ):
        return server
    _reconfigure(listeners_of_group(group), doing=f"changing the state of server {server.name}")
    server.state = state
    server.deregistration_delay = delay
    server.draining_since = draining_since
    server.save(update_fields=["state", "deregistration_delay", "draining_since"])
    return server


@transaction.atomic
@audited("server_group.modify_health_check", ServerGroup, key="group")
def update_health_check(*, group: ServerGroup, values: dict[str, Any]) -> HealthCheck:
    """Save the group's health check; its listeners are reconfigured only if it changed."""
    group = _locked(ServerGroup, group.pk, "Server group")
    check = HealthCheck.objects.filter(group=group).first()
    # The Passive Health Check fields (listeners.forms.passive) are the group's own.
    values, passive_check = passive.split(values)
    if (
        check is not None
        and all(getattr(check, name) == value for name, value in values.items())
        and all(getattr(group, name) == value for name, value in passive_check.items())
    ):
        return check
    _reconfigure(listeners_of_group(group), doing="modifying its health check")
    if passive_check:
        for name, value in passive_check.items():
            setattr(group, name, value)
        group.save(update_fields=list(passive_check))
    check, _ = HealthCheck.objects.update_or_create(group=group, defaults=values)
    return check


@transaction.atomic
@audited("server_group.delete", ServerGroup, key="group_id", lock=UPDATE)
def delete_server_group(*, group_id: str) -> ServerGroup:
    # Locked, so a listener or rule cannot start using the group between the check and the delete.
    group = _locked(ServerGroup, group_id, "Server group", deleting=True)
    blockers = _blockers(listeners_of_group(group).distinct())
    if blockers:
        raise InUse(f"Server group {group.name} is used by listeners.", blockers=blockers)
    group.delete()
    return group


# -- access control lists ------------------------------------------------------------------------
@transaction.atomic
@audited("acl.create", AccessControlList)
def create_acl(*, name: str, description: str = "", entries: dict[str, str]) -> AccessControlList:
    """``entries``: CIDR to description."""
    acl = AccessControlList.objects.create(name=name, description=description)
    _replace_acl_entries(acl, entries)
    return acl


@transaction.atomic
@audited("acl.modify", AccessControlList, key="acl_id")
def update_acl(
    *, acl_id: str, name: str, description: str = "", entries: dict[str, str]
) -> AccessControlList:
    acl = _locked(AccessControlList, acl_id, "IP address group")
    # Whitelists and blacklists are enforced by the dataplane from the snapshot.
    _reconfigure(acl.listeners.all(), doing="editing its IP address group")
    acl.name = name
    acl.description = description
    acl.save()
    _replace_acl_entries(acl, entries)
    return acl


def _replace_acl_entries(acl: AccessControlList, entries: dict[str, str]) -> None:
    existing = {entry.cidr: entry for entry in acl.entries.all()}
    AclEntry.objects.filter(acl=acl).exclude(cidr__in=entries).delete()
    new = []
    for cidr, description in entries.items():
        entry = existing.get(cidr)
        if entry is None:
            new.append(AclEntry(acl=acl, cidr=cidr, description=description))
        elif entry.description != description:
            entry.description = description
            entry.save(update_fields=["description"])
    AclEntry.objects.bulk_create(new)


@transaction.atomic
@audited("acl.delete", AccessControlList, key="acl_id", lock=UPDATE)
def delete_acl(*, acl_id: str) -> AccessControlList:
    acl = _locked(AccessControlList, acl_id, "IP address group", deleting=True)
    blockers = _blockers(acl.listeners.all())
    if blockers:
        raise InUse(f"IP address group {acl.name} is used by listeners.", blockers=blockers)
    acl.delete()
    return acl


# -- TLS security policies -----------------------------------------------------------------------
@transaction.atomic
@audited("tls_policy.create", TlsPolicy)
def create_tls_policy(*, values: dict[str, Any]) -> TlsPolicy:
    """A custom policy; ``values``: its TlsPolicy fields."""
    return TlsPolicy.objects.create(**values, predefined=False)


def _custom_policy(policy_id: str, *, deleting: bool = False) -> TlsPolicy:
    policy = _locked(TlsPolicy, policy_id, "TLS security policy", deleting=deleting)
    if policy.predefined:
        raise ReadOnly(f"{policy.name} is predefined and read-only.")
    return policy


@transaction.atomic
@audited("tls_policy.modify", TlsPolicy, key="policy_id")
def update_tls_policy(*, policy_id: str, values: dict[str, Any]) -> TlsPolicy:
    policy = _custom_policy(policy_id)
    _reconfigure(policy.listeners.all(), doing="editing its TLS security policy")
    for field, value in values.items():
        setattr(policy, field, value)
    policy.save()
    return policy


@transaction.atomic
@audited("tls_policy.delete", TlsPolicy, key="policy_id", lock=UPDATE)
def delete_tls_policy(*, policy_id: str) -> TlsPolicy:
    policy = _custom_policy(policy_id, deleting=True)
    blockers = _blockers(policy.listeners.all())
    if blockers:
        raise InUse(f"TLS security policy {policy.name} is used by listeners.", blockers=blockers)
    policy.delete()
    return policy


# -- certificates --------------------------------------------------------------------------------
def listeners_using_certificate(certificate: Certificate) -> QuerySet[Listener]:
    """Listeners whose configuration holds the certificate: as default, SNI or client CA, or as
    the CA their server groups (default or through a rule) verify HTTPS backends with."""
    return Listener.objects.filter(
        Q(default_certificate=certificate)
        | Q(additional_certificates=certificate)
        | Q(ca_certificate=certificate)
        | Q(server_group__backend_ca_certificate=certificate)
        | Q(rules__server_group__backend_ca_certificate=certificate)
    ).distinct()


@transaction.atomic
@audited("certificate.upload", Certificate)
def upload_certificate(*, name: str, kind: str, validated: Any) -> Certificate:
    """``validated``: the result of certificates.validation for ``kind``."""
    certificate = Certificate(name=name, kind=kind)
    certificate.apply_validated(validated)
    certificate.save()
    return certificate


@transaction.atomic
@audited("certificate.replace", Certificate, key="certificate_id")
def replace_certificate(*, certificate_id: str, validated: Any) -> Certificate:
    certificate = _locked(Certificate, certificate_id, "Certificate")
    # Listeners that use it pick up the new certificate on their instance's next push.
    _reconfigure(listeners_using_certificate(certificate), doing="replacing its certificate")
    certificate.apply_validated(validated)
    certificate.save()
    return certificate


@transaction.atomic
@audited("certificate.delete", Certificate, key="certificate_id", lock=UPDATE)
def delete_certificate(*, certificate_id: str) -> Certificate:
    certificate = _locked(Certificate, certificate_id, "Certificate", deleting=True)
    blockers = _blockers(listeners_using_certificate(certificate))
    if blockers:
        raise InUse(f"Certificate {certificate.name} is used by listeners.", blockers=blockers)
    groups = ", ".join(group.name for group in certificate.backend_ca_for_groups.all())
    if groups:
        raise InUse(
            f"Certificate {certificate.name} verifies the backends of server group {groups}; "
            "choose another Backend CA Certificate there first.",
            blockers=[],
        )
    certificate.delete()
    return certificate
