"""Server groups with their backend servers and health check."""

from __future__ import annotations

import datetime
from typing import Any

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status

from console.api.common import ObjectId, Strict, call_service, pk_of, set_fields, validated
from console.api.listeners import (
    BackendServerIn,
    HealthCheckIn,
    _health_check_data,
    _servers_formset,
)
from console.api.problems import ApiError, Problem, form_errors, invalid
from listeners import services
from listeners.forms import passive
from listeners.forms.listener import HealthCheckForm
from listeners.forms.servergroups import ServerGroupForm
from listeners.forms.serverstates import ServerStateForm
from listeners.models import BackendServer, HealthCheck, ServerGroup

router = Router(tags=["Server groups"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}
GROUP_FIELDS = ServerGroupForm.Meta.fields


class ServerGroupCreate(Strict):
    name: str
    backend_protocol: str = "http"
    description: str = ""
    slow_start: bool = False
    slow_start_duration: int = 30
    backend_ca_certificate: ObjectId | None = None
    servers: list[BackendServerIn] = Field(..., max_length=500)
    health_check: HealthCheckIn | None = None


class ServerGroupChange(Strict):
    """Omitted fields keep their value; ``servers``, when given, replaces every server."""

    name: str | None = None
    backend_protocol: str | None = None
    description: str | None = None
    slow_start: bool | None = None
    slow_start_duration: int | None = None
    backend_ca_certificate: ObjectId | None = None
    servers: list[BackendServerIn] | None = Field(None, max_length=500)


class ServerOut(Schema):
    server_id: str
    address: str
    port: int
    weight: int
    description: str
    state: str
    deregistration_delay: int
    draining_since: datetime.datetime | None
    drain_seconds_left: int | None


class ServerStateChange(Strict):
    """Enable, drain or put in maintenance; ``deregistration_delay`` (0-3600 s) replaces the
    server's own, which is kept for its next drain."""

    state: str
    deregistration_delay: int | None = None


class ServerGroupOut(Schema):
    id: str
    name: str
    backend_protocol: str
    description: str
    slow_start: bool
    slow_start_duration: int
    backend_ca_certificate: str | None
    servers: list[ServerOut]
    health_check: dict[str, Any] | None
    listeners: list[str]


def group_out(group: ServerGroup) -> dict[str, Any]:
    group = ServerGroup.objects.get(pk=group.pk)
    check = HealthCheck.objects.filter(group=group).first()
    return {
        **{name: pk_of(getattr(group, name)) for name in GROUP_FIELDS},
        "id": group.id,
        "servers": [server_out(server) for server in group.servers.all()],
        "health_check": (
            {
                **{name: getattr(check, name) for name in HealthCheckForm.Meta.fields},
                # The group's passive health check is set with its health check.
                **(passive.values_of(group) if passive.applies(group.backend_protocol) else {}),
            }
            if check
            else None
        ),
        "listeners": sorted(set(services.listeners_of_group(group).values_list("pk", flat=True))),
    }


def server_out(server: BackendServer) -> dict[str, Any]:
    return {
        "server_id": server.server_id,
        "address": server.address,
        "port": server.port,
        "weight": server.weight,
        "description": server.description,
        "state": server.state,
        "deregistration_delay": server.deregistration_delay,
        "draining_since": server.draining_since,
        "drain_seconds_left": server.drain_seconds_left(),
    }


def _servers(rows: list[dict]) -> list[dict]:
    formset = _servers_formset(rows)
    if not formset.is_valid():
        raise invalid(form_errors(formset, at="servers"))
    return formset.rows()


@router.get("/server-groups", response=list[ServerGroupOut])
def list_groups(request: HttpRequest):
    return [group_out(group) for group in ServerGroup.objects.all()]


@router.get("/server-groups/{group_id}", response={200: ServerGroupOut, 404: Problem})
def get_group(request: HttpRequest, group_id: ObjectId):
    return group_out(get_object_or_404(ServerGroup, pk=group_id))


@router.post("/server-groups", response={201: ServerGroupOut, **ERRORS})
def create_group(request: HttpRequest, payload: ServerGroupCreate):
    data = payload.model_dump()
    form = ServerGroupForm({name: data[name] for name in GROUP_FIELDS})
    errors = form_errors(form)
    formset = _servers_formset(data["servers"])
    errors += form_errors(formset, at="servers")
    check = None
    if payload.health_check is not None:
        check = HealthCheckForm(
            _health_check_data(None, data["backend_protocol"], set_fields(payload.health_check)),
            backend_protocol=data["backend_protocol"],
        )
        errors += form_errors(check, at="health_check")
    if errors:
        raise invalid(errors)
    group = call_service(
        services.create_server_group,
        **{name: form.cleaned_data[name] for name in GROUP_FIELDS},
        servers=formset.rows(),
        health_check=check.cleaned_data if check else None,
    )
    return Status(201, group_out(group))


@router.patch("/server-groups/{group_id}", response={200: ServerGroupOut, **ERRORS})
def modify_group(request: HttpRequest, group_id: ObjectId, payload: ServerGroupChange):
    group = get_object_or_404(ServerGroup, pk=group_id)
    sent = set_fields(payload)
    servers = sent.pop("servers", None)
    if payload.servers is not None:
        servers = _servers([row.model_dump() for row in payload.servers])
    data = {name: pk_of(getattr(group, name)) for name in GROUP_FIELDS}
    data.update(sent)
    form = validated(ServerGroupForm(data, instance=group))
    group = call_service(
        services.update_server_group,
        group_id=group.pk,
        values={name: form.cleaned_data[name] for name in GROUP_FIELDS},
        servers=servers,
    )
    return group_out(group)


@router.put("/server-groups/{group_id}/health-check", response={200: ServerGroupOut, **ERRORS})
def modify_health_check(request: HttpRequest, group_id: ObjectId, payload: HealthCheckIn):
    """Modify Health Check; every listener that forwards to the group is reconfigured."""
    group = get_object_or_404(ServerGroup, pk=group_id)
    check = HealthCheck.objects.filter(group=group).first()
    form = validated(
        HealthCheckForm(
            _health_check_data(check, group.backend_protocol, set_fields(payload)),
            instance=check,
            backend_protocol=group.backend_protocol,
        )
    )
    call_service(services.update_health_check, group=group, values=form.cleaned_data)
    return group_out(group)


@router.put(
    "/server-groups/{group_id}/servers/{server_id}/state", response={200: ServerOut, **ERRORS}
)
def change_server_state(
    request: HttpRequest, group_id: ObjectId, server_id: ObjectId, payload: ServerStateChange
):
    """Enable a backend server, drain it (no new requests or connections; what remains is closed
    after its deregistration delay) or put it in maintenance (out at once). Every listener that
    forwards to the group is reconfigured."""
    pk = server_id.removeprefix("srv-")
    if not pk.isdigit():
        raise ApiError(404, f"No backend server {server_id} in server group {group_id}.")
    server = BackendServer.objects.filter(pk=int(pk), group_id=group_id).first()
    if server is None:
        raise ApiError(404, f"No backend server {server_id} in server group {group_id}.")
    data = {
        "state": payload.state,
        "deregistration_delay": (
            server.deregistration_delay
            if payload.deregistration_delay is None
            else payload.deregistration_delay
        ),
    }
    form = validated(ServerStateForm(data, instance=server))
    server = call_service(
        services.set_server_state,
        server_pk=server.pk,
        state=form.cleaned_data["state"],
        deregistration_delay=form.cleaned_data["deregistration_delay"],
    )
    return server_out(BackendServer.objects.get(pk=server.pk))


@router.delete("/server-groups/{group_id}", response={204: None, **ERRORS})
def delete_group(request: HttpRequest, group_id: ObjectId):
    group = get_object_or_404(ServerGroup, pk=group_id)
    call_service(services.delete_server_group, group_id=group.pk)
    return Status(204, None)
