"""Saving desired state: every change bumps its instance's generation in the same transaction.

Views and forms validate; these functions write. Callers run them inside
``transaction.atomic()`` so that the listener rows, their status and the instance generation move
together, and work for the dataplane is queued only once the transaction has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone
from kombu.exceptions import OperationalError

from console.models import Instance
from listeners import rules
from listeners.models import BackendServer, HealthCheck, Listener, ServerGroup

log = logging.getLogger(__name__)


def listeners_changed(listeners: QuerySet[Listener] | Iterable[Listener]) -> None:
    """Record that the desired configuration of these listeners changed.

    They go to ``configuring`` until every node of their instance has applied the new
    generation (seed 003: a temporary Configuring state during which edits are refused).
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
    Instance.bump_generations(instance_ids)
    transaction.on_commit(lambda: queue_push(instance_ids), robust=True)


# Publishing is a fast path only: if the broker is down, give up quickly and let reconcile
# (which compares every node with the database) deliver the change once the broker is back.
PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}


def queue_push(instance_ids: set[str]) -> None:
    from console.tasks import push_instance

    for instance_id, generation in Instance.objects.filter(pk__in=instance_ids).values_list(
        "id", "generation"
    ):
        try:
            push_instance.apply_async(
                kwargs={"instance_id": instance_id, "generation": generation},
                retry=True,
                retry_policy=PUBLISH_RETRY,
            )
        except (OperationalError, OSError):
            # The change is saved; a broker outage must not turn that into an error page.
            log.warning(
                "cannot queue the push; reconcile will deliver it",
                exc_info=True,
                extra={"instance_id": instance_id, "generation": generation},
            )


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
    """Create one listener in ``configuring``; the caller holds a transaction.

    The rules are checked again here under a row lock on the instance, so two submits racing
    for the same port or the last quota slot cannot both succeed.
    """
    Instance.objects.select_for_update().filter(pk=instance.pk).first()
    problem = rules.quota_exceeded(instance) or rules.port_conflict(instance, protocol, port)
    if problem:
        raise RuleViolation(problem)
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


def create_server_group(
    *,
    name: str,
    backend_protocol: str,
    servers: list[dict],
    health_check: dict | None = None,
    slow_start: bool = False,
    slow_start_duration: int = 30,
) -> ServerGroup:
    group = ServerGroup.objects.create(
        name=name,
        backend_protocol=backend_protocol,
        slow_start=slow_start,
        slow_start_duration=slow_start_duration,
    )
    BackendServer.objects.bulk_create(
        BackendServer(
            group=group,
            address=row["address"],
            port=row["port"],
            weight=row.get("weight", 100),
            description=row.get("description", ""),
        )
        for row in servers
    )
    HealthCheck.objects.create(group=group, **(health_check or default_health_check(group)))
    return group


def default_health_check(group: ServerGroup) -> dict:
    protocol = {
        ServerGroup.BackendProtocol.HTTP: HealthCheck.Protocol.HTTP,
        ServerGroup.BackendProtocol.UDP: HealthCheck.Protocol.UDP,
    }.get(group.backend_protocol, HealthCheck.Protocol.TCP)
    return {
        "protocol": protocol,
        "expected_codes": ["http_2xx", "http_3xx"],
    }


def update_health_check(group: ServerGroup, values: dict) -> HealthCheck:
    """Save the group's health check; its listeners are reconfigured only if it changed."""
    check = HealthCheck.objects.filter(group=group).first()
    if check is not None and all(getattr(check, name) == value for name, value in values.items()):
        return check
    check, _ = HealthCheck.objects.update_or_create(group=group, defaults=values)
    listeners_changed(group.listeners.all())
    return check


class RuleViolation(ValueError):
    """A seed rule that a concurrent change made false after the form was validated."""
