"""Instances and their dataplane nodes: the write path for them, as listeners/services.py is for
listeners (one function per use case, one transaction, rows locked, push queued on commit)."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from console.audit import UPDATE, audited
from console.models import DataplaneNode, Instance
from listeners.services import InUse, NotFound, RuleViolation, instances_changed


def _locked_instance(instance_id: str, *, deleting: bool = False) -> Instance:
    instance = (
        Instance.objects.select_for_update(no_key=not deleting).filter(pk=instance_id).first()
    )
    if instance is None:
        raise NotFound(f"Instance {instance_id} no longer exists.")
    return instance


@transaction.atomic
@audited("instance.create", Instance)
def create_instance(
    *,
    name: str,
    edition: str = Instance.Edition.STANDARD,
    bind_address: str = "127.0.0.1",
    listener_quota: int = 50,
    bandwidth_mbit: int | None = None,
) -> Instance:
    return Instance.objects.create(
        name=name,
        edition=edition,
        bind_address=bind_address,
        listener_quota=listener_quota,
        bandwidth_mbit=bandwidth_mbit,
    )


@transaction.atomic
@audited("instance.delete", Instance, key="instance_id", lock=UPDATE)
def delete_instance(*, instance_id: str) -> Instance:
    # Locked, so no listener is created on it between the check and the delete.
    instance = _locked_instance(instance_id, deleting=True)
    blockers = list(instance.listeners.order_by("name")[:20])
    if blockers:
        raise InUse(f"Instance {instance.name} still has listeners.", blockers=blockers)
    instance.delete()
    return instance


@transaction.atomic
@audited("node.add", DataplaneNode)
def add_node(*, instance_id: str, name: str, control_url: str, token: str) -> DataplaneNode:
    """Register a dataplane node; the instance's configuration is pushed to it on commit."""
    instance = _locked_instance(instance_id)
    if instance.nodes.filter(name=name).exists():
        raise RuleViolation(f"This instance already has a node named {name}.", field="name")
    node = DataplaneNode(instance=instance, name=name, control_url=control_url)
    node.token = token
    node.save()
    instances_changed({instance.pk})
    return node


def _lock_instance_and_node(arguments: dict[str, Any]) -> None:
    """``remove_node``'s locks in its order (the instance, then the node), for its audit."""
    _locked_instance(arguments["instance_id"])
    DataplaneNode.objects.select_for_update().filter(pk=arguments["node_id"]).first()


@transaction.atomic
@audited("node.remove", DataplaneNode, key="node_id", lock=_lock_instance_and_node)
def remove_node(*, instance_id: str, node_id: int) -> DataplaneNode:
    """Listener status is then computed over the remaining nodes, hence the new generation."""
    _locked_instance(instance_id)
    node = DataplaneNode.objects.select_for_update().filter(pk=node_id, instance_id=instance_id)
    node = node.first()
    if node is None:
        raise NotFound(f"Node {node_id} no longer exists.")
    node.delete()
    instances_changed({instance_id})
    return node
