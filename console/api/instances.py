"""Load balancer instances, their dataplane nodes (added and removed as on the instance's Nodes
page) and their push history (read only)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status

from console import pipeline
from console import services as console_services
from console.api.common import ObjectId, RowId, Strict, call_service, validated
from console.api.problems import Problem
from console.forms import DataplaneNodeForm, InstanceForm
from console.models import DataplaneNode, Instance

router = Router(tags=["Instances and nodes"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}
FIELDS = InstanceForm.Meta.fields


class InstanceIn(Strict):
    name: str
    edition: str = Instance.Edition.STANDARD
    bind_address: str = "127.0.0.1"
    listener_quota: int = 50
    bandwidth_mbit: int | None = None


class InstanceOut(Schema):
    id: str
    name: str
    edition: str
    bind_address: str
    listener_quota: int
    bandwidth_mbit: int | None
    generation: int
    listeners: list[str]
    created_at: str


class NodeIn(Strict):
    name: str = Field(..., description="Unique within the instance.")
    control_url: str = Field(..., description="The node's control API, e.g. http://10.0.0.5:9901")
    token: str = Field(
        ...,
        description="The node's --token-file contents (at least 16 characters). Stored "
        "encrypted; never returned.",
    )


class NodeOut(Schema):
    id: int
    name: str
    control_url: str
    reachable: bool
    applied_generation: int | None
    last_contact: str | None
    last_error: str


class PushOut(Schema):
    node: str
    generation: int
    started_at: str
    duration_ms: int
    result: str
    detail: str


def instance_out(instance: Instance) -> dict[str, Any]:
    return {
        **{name: getattr(instance, name) for name in FIELDS},
        "id": instance.id,
        "generation": instance.generation,
        "listeners": list(instance.listeners.values_list("pk", flat=True)),
        "created_at": instance.created_at.isoformat(),
    }


def _when(moment) -> str | None:
    return moment.isoformat() if moment else None


@router.get("/instances", response=list[InstanceOut])
def list_instances(request: HttpRequest):
    return [instance_out(instance) for instance in Instance.objects.all()]


@router.get("/instances/{instance_id}", response={200: InstanceOut, 404: Problem})
def get_instance(request: HttpRequest, instance_id: ObjectId):
    return instance_out(get_object_or_404(Instance, pk=instance_id))


@router.post("/instances", response={201: InstanceOut, **ERRORS})
def create_instance(request: HttpRequest, payload: InstanceIn):
    form = validated(InstanceForm(payload.model_dump()))
    instance = call_service(
        console_services.create_instance, **{name: form.cleaned_data[name] for name in FIELDS}
    )
    return Status(201, instance_out(instance))


@router.delete("/instances/{instance_id}", response={204: None, **ERRORS})
def delete_instance(request: HttpRequest, instance_id: ObjectId):
    instance = get_object_or_404(Instance, pk=instance_id)
    call_service(console_services.delete_instance, instance_id=instance.pk)
    return Status(204, None)


def node_out(node: DataplaneNode) -> dict[str, Any]:
    return {
        "id": node.pk,
        "name": node.name,
        "control_url": node.control_url,
        "reachable": node.reachable,
        "applied_generation": node.applied_generation,
        "last_contact": _when(node.last_contact),
        "last_error": node.last_error,
    }


@router.get("/instances/{instance_id}/nodes", response={200: list[NodeOut], 404: Problem})
def list_nodes(request: HttpRequest, instance_id: ObjectId):
    instance = get_object_or_404(Instance, pk=instance_id)
    return [node_out(node) for node in instance.nodes.all()]


@router.post("/instances/{instance_id}/nodes", response={201: NodeOut, **ERRORS})
def add_node(request: HttpRequest, instance_id: ObjectId, payload: NodeIn):
    """Register a dataplane node (Add Dataplane Node); the instance's configuration is pushed to
    it at once. The token is checked and stored as the page does, and never returned."""
    instance = get_object_or_404(Instance, pk=instance_id)
    form = validated(DataplaneNodeForm(payload.model_dump(), instance_obj=instance))
    node = call_service(
        console_services.add_node,
        instance_id=instance.pk,
        name=form.cleaned_data["name"],
        control_url=form.cleaned_data["control_url"],
        token=form.cleaned_data["token"],
    )
    return Status(201, node_out(node))


@router.delete("/instances/{instance_id}/nodes/{node_id}", response={204: None, **ERRORS})
def remove_node(request: HttpRequest, instance_id: ObjectId, node_id: RowId):
    """Remove a node from the instance; its listeners' status is then computed over the rest."""
    node = get_object_or_404(DataplaneNode, pk=node_id, instance_id=instance_id)
    call_service(console_services.remove_node, instance_id=node.instance_id, node_id=node.pk)
    return Status(204, None)


@router.get("/instances/{instance_id}/push-history", response={200: list[PushOut], 404: Problem})
def push_history(request: HttpRequest, instance_id: ObjectId, limit: int = 50):
    instance = get_object_or_404(Instance, pk=instance_id)
    return [
        {
            "node": attempt.node.name,
            "generation": attempt.generation,
            "started_at": attempt.started_at.isoformat(),
            "duration_ms": attempt.duration_ms,
            "result": attempt.result,
            "detail": attempt.detail,
        }
        for attempt in pipeline.recent_attempts(instance, limit=max(1, min(limit, 500)))
    ]
