"""Listeners: create (every wizard setting), read, modify, start, stop, delete, and the
details page's actions (server group, certificates, TLS policy, health check).

Changes answer at once with the listener ``configuring`` and the instance generation that will
carry it; GET shows the live status derived from the nodes' reports (``Listener.observed``).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.db import IntegrityError, transaction
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status

from console.api.common import ObjectId, Strict, call_service, pk_of, set_fields, validated
from console.api.problems import ApiError, Problem, form_errors, invalid
from console.models import ClientToken, Instance
from listeners import services
from listeners.forms import passive
from listeners.forms.lifecycle import ChangeServerGroupForm, ManageCertificatesForm, TlsPolicyForm
from listeners.forms.listener import (
    CERTIFICATE,
    SETTINGS_FIELDS,
    CertificateStepForm,
    HealthCheckForm,
    ListenerSettingsForm,
    ProtocolListenerForm,
    ServerGroupStepForm,
    format_tags,
)
from listeners.forms.servergroups import BackendServerFormSet
from listeners.models import HealthCheck, Listener, ServerGroup

router = Router(tags=["Listeners"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}
DEFAULT_TLS_POLICY = "tls_cipher_policy_1_0"


# -- schemas ---------------------------------------------------------------------------------
class Tag(Strict):
    key: str
    value: str = ""


class ListenerSettings(Strict):
    """Name, description, tags and the Advanced Settings (Modify Listener). Omitted fields keep
    their value (on create: the wizard's default)."""

    name: str | None = None
    description: str | None = None
    tags: list[Tag] | None = None
    scheduler: str | None = None
    persistence: str | None = None
    persistence_timeout: int | None = None
    cookie_name: str | None = None
    acl_mode: str | None = None
    acl: ObjectId | None = None
    idle_timeout: int | None = None
    request_timeout: int | None = None
    response_timeout: int | None = None
    http2: bool | None = None
    x_forwarded_for: str | None = None
    header_x_forwarded_proto: bool | None = None
    header_x_forwarded_port: bool | None = None
    header_x_forwarded_host: bool | None = None
    header_x_forwarded_client_srcport: bool | None = None
    header_slb_id: bool | None = None
    header_slb_ip: bool | None = None
    header_x_forwarded_elb_ip: bool | None = None
    header_clientcert_subjectdn: bool | None = None
    header_clientcert_issuerdn: bool | None = None
    header_clientcert_fingerprint: bool | None = None
    header_clientcert_clientverify: bool | None = None
    retrieve_client_ip: bool | None = None
    trusted_proxies: str | None = None
    compression: str | None = None
    bandwidth_mbit: int | None = None
    proxy_protocol: str | None = None
    quic_listener: ObjectId | None = None
    retries: int | None = None
    retry_budget_percent: int | None = None
    qps_per_client_ip: int | None = None


class BackendServerIn(Strict):
    address: str
    port: int
    weight: int = 100
    description: str = ""


class NewServerGroup(Strict):
    name: str
    backend_protocol: str
    slow_start: bool = False
    slow_start_duration: int = 30
    servers: list[BackendServerIn] = Field(..., max_length=500)


class HealthCheckIn(Strict):
    enabled: bool | None = None
    protocol: str | None = None
    domain: str | None = None
    port: int | None = None
    path: str | None = None
    interval: int | None = None
    timeout: int | None = None
    healthy_threshold: int | None = None
    unhealthy_threshold: int | None = None
    expected_codes: list[str] | None = None
    udp_request: str | None = None
    udp_expected: str | None = None
    # The group's Passive Health Check (listeners.forms.passive); not for UDP groups.
    passive_health_check: bool | None = None
    passive_consecutive_failures: int | None = None
    passive_base_ejection_time: int | None = None
    passive_max_ejection_time: int | None = None
    passive_max_ejection_percent: int | None = None


class CertificatesIn(Strict):
    default_certificate: ObjectId
    additional_certificates: list[ObjectId] = []
    mutual_authentication: bool = False
    ca_certificate: ObjectId | None = None


class ListenerCreate(ListenerSettings):
    protocol: str
    port: int
    enabled: bool = True
    server_group: ObjectId | None = None
    new_server_group: NewServerGroup | None = None
    health_check: HealthCheckIn | None = None
    default_certificate: ObjectId | None = None
    additional_certificates: list[ObjectId] = []
    tls_policy: ObjectId | None = None
    mutual_authentication: bool = False
    ca_certificate: ObjectId | None = None
    client_token: str | None = Field(
        None,
        max_length=64,
        description="Idempotency key (the cloud APIs' ClientToken): a retried create with the "
        "same key and body returns the listener the first request created.",
    )


class ServerGroupChange(Strict):
    server_group: ObjectId


class TlsPolicyChange(Strict):
    tls_policy: ObjectId


class AdditionalCertificates(Strict):
    certificates: list[ObjectId] = Field(..., min_length=1, max_length=100)


class ListenerOut(Schema):
    id: str
    instance: str
    generation: int = Field(description="The instance generation that carries the last change.")
    name: str
    description: str
    tags: list[dict[str, str]]
    protocol: str
    port: int
    desired_state: str
    status: str = Field(description="configuring, running, stopped or failed (derived live).")
    last_error: str
    server_group: ObjectId
    settings: dict[str, Any]
    default_certificate: str | None
    additional_certificates: list[str]
    tls_policy: str | None
    mutual_authentication: bool
    ca_certificate: str | None
    forwarding_rules: list[int]
    created_at: str
    updated_at: str


def listener_out(listener: Listener) -> dict[str, Any]:
    listener = Listener.objects.select_related("instance").get(pk=listener.pk)
    observed = listener.observed
    return {
        "id": listener.id,
        "instance": listener.instance_id,
        "generation": listener.instance.generation,
        "name": listener.name,
        "description": listener.description,
        "tags": listener.tags,
        "protocol": listener.protocol,
        "port": listener.port,
        "desired_state": listener.desired_state,
        "status": observed.status,
        "last_error": observed.reason,
        "server_group": listener.server_group_id,
        "settings": {name: pk_of(getattr(listener, name)) for name in SETTINGS_FIELDS},
        "default_certificate": listener.default_certificate_id,
        "additional_certificates": sorted(
            listener.additional_certificates.values_list("pk", flat=True)
        ),
        "tls_policy": listener.tls_policy_id,
        "mutual_authentication": listener.mutual_authentication,
        "ca_certificate": listener.ca_certificate_id,
        "forwarding_rules": list(listener.rules.values_list("pk", flat=True)),
        "created_at": listener.created_at.isoformat(),
        "updated_at": listener.updated_at.isoformat(),
    }


# -- helpers ---------------------------------------------------------------------------------
def _listener(instance_id: ObjectId, listener_id: ObjectId) -> Listener:
    return get_object_or_404(
        Listener.objects.select_related("instance", "server_group"),
        pk=listener_id,
        instance_id=instance_id,
    )


def _settings_data(current: dict[str, Any], sent: dict[str, Any]) -> dict[str, Any]:
    """Form data: the current (or default) values with what the client sent on top."""
    data = {name: pk_of(value) for name, value in current.items()}
    for name, value in sent.items():
        data[name] = format_tags(value) if name == "tags" else value
    return data


def _model_defaults() -> dict[str, Any]:
    defaults = {}
    for name in SETTINGS_FIELDS:
        field = Listener._meta.get_field(name)
        defaults[name] = field.get_default()
    return {**defaults, "name": "", "description": "", "tags": ""}


def _health_check_data(check: HealthCheck | None, backend: str, sent: dict) -> dict[str, Any]:
    source = check or HealthCheck(**services.default_health_check(backend))
    data = {name: getattr(source, name) for name in HealthCheckForm.Meta.fields}
    data["expected_codes"] = list(data["expected_codes"])
    if passive.applies(backend):
        data.update(passive.values_of(check.group if check is not None else None))
    data.update({name: value for name, value in sent.items() if value is not None})
    return data


# -- endpoints -------------------------------------------------------------------------------
@router.get("/instances/{instance_id}/listeners", response=list[ListenerOut])
def list_listeners(request: HttpRequest, instance_id: ObjectId, tag: str = ""):
    instance = get_object_or_404(Instance, pk=instance_id)
    listeners = instance.listeners.all()
    key, _, value = tag.partition("=")
    return [
        listener_out(listener)
        for listener in listeners
        if not tag
        or any(t["key"] == key and (not value or t["value"] == value) for t in listener.tags)
    ]


@router.get(
    "/instances/{instance_id}/listeners/{listener_id}", response={200: ListenerOut, 404: Problem}
)
def get_listener(request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId):
    return listener_out(_listener(instance_id, listener_id))


@router.post(
    "/instances/{instance_id}/listeners",
    response={201: ListenerOut, **ERRORS},
    summary="CreateListener",
)
def create_listener(request: HttpRequest, instance_id: ObjectId, payload: ListenerCreate):
    instance = get_object_or_404(Instance, pk=instance_id)
    sent = set_fields(payload)
    if payload.new_server_group is not None:
        # Nested defaults (a server's weight 100) count as given.
        sent["new_server_group"] = payload.new_server_group.model_dump()
    key = sent.pop("client_token", None)
    if key:
        digest = hashlib.sha256(json.dumps(sent, sort_keys=True).encode()).hexdigest()
        earlier = ClientToken.objects.filter(user=request.user, key=key).first()
        if earlier is not None:
            return Status(201, _replay(earlier, digest))
    listener = _create(instance, sent)
    if key:
        try:
            with transaction.atomic():
                ClientToken.objects.create(
                    user=request.user, key=key, request_hash=digest, listener_id=listener.pk
                )
        except IntegrityError:
            # The same key raced this request; the listener it made is the answer.
            pass
    return Status(201, listener_out(listener))


def _replay(earlier: ClientToken, digest: str) -> dict[str, Any]:
    if earlier.request_hash != digest:
        raise ApiError(
            409,
            "This client_token was used with a different request; use a new token.",
            errors=[{"field": "client_token", "message": "Used with a different request."}],
        )
    listener = Listener.objects.filter(pk=earlier.listener_id).first()
    if listener is None:
        raise ApiError(
            409,
            f"The listener {earlier.listener_id} this client_token created has "
            "been deleted; use a new token.",
        )
    return listener_out(listener)


def _create(instance: Instance, sent: dict[str, Any]) -> Listener:
    errors: list[dict[str, Any]] = []
    listener_data = _settings_data(_model_defaults(), sent)
    listener_data["auto_enable"] = sent.get("enabled", True)
    form = ProtocolListenerForm(listener_data, instance=instance)
    errors += form_errors(form)
    protocol = sent["protocol"]
    cleaned = form.cleaned_data if form.is_valid() else {}

    certificates = None
    if protocol in CERTIFICATE:
        cert_form = CertificateStepForm(
            {
                "default_certificate": sent.get("default_certificate"),
                "additional_certificates": sent.get("additional_certificates", []),
                "tls_policy": sent.get("tls_policy") or DEFAULT_TLS_POLICY,
                "mutual_authentication": sent.get("mutual_authentication", False),
                "ca_certificate": sent.get("ca_certificate"),
            },
            instance=instance,
            protocol=protocol,
        )
        errors += form_errors(cert_form)
        if cert_form.is_valid():
            certificates = cert_form.certificate_values()
    else:
        for name in ("default_certificate", "tls_policy", "ca_certificate"):
            if sent.get(name):
                errors.append({"field": name, "message": f"A {protocol} listener has no {name}."})

    new_group = sent.get("new_server_group")
    if bool(new_group) == bool(sent.get("server_group")):
        errors.append(
            {"field": "server_group", "message": "Give server_group or new_server_group (one)."}
        )
        raise invalid(errors)
    group_form = ServerGroupStepForm(
        {
            "group_mode": "new" if new_group else "existing",
            "server_group": sent.get("server_group"),
            "new_group_name": (new_group or {}).get("name"),
            "new_backend_protocol": (new_group or {}).get("backend_protocol"),
            "new_slow_start": (new_group or {}).get("slow_start", False),
            "new_slow_start_duration": (new_group or {}).get("slow_start_duration", 30),
        },
        protocol=protocol,
        scheduler=cleaned.get("scheduler") or listener_data.get("scheduler"),
        settings=cleaned or listener_data,
    )
    rename = {
        "new_group_name": "new_server_group.name",
        "new_backend_protocol": "new_server_group.backend_protocol",
        "new_slow_start": "new_server_group.slow_start",
        "new_slow_start_duration": "new_server_group.slow_start_duration",
    }
    errors += form_errors(group_form, rename)
    servers: list[dict] = []
    existing = None
    if new_group:
        formset = _servers_formset(new_group["servers"])
        errors += form_errors(formset, at="new_server_group.servers")
        if formset.is_valid():
            servers = formset.rows()
        backend = new_group["backend_protocol"]
    else:
        existing = ServerGroup.objects.filter(pk=sent["server_group"]).first()
        backend = existing.backend_protocol if existing else "http"
    check = getattr(existing, "health_check", None) if existing else None
    check_form = HealthCheckForm(
        _health_check_data(check, backend, sent.get("health_check") or {}),
        instance=check,
        backend_protocol=backend,
    )
    errors += form_errors(check_form, at="health_check")
    if errors:
        raise invalid(errors)
    group_values = group_form.cleaned_data
    return call_service(
        services.create_listener_with_group,
        instance=instance,
        server_group=group_values["server_group"] if existing else None,
        new_server_group=(
            {
                "name": group_values["new_group_name"],
                "backend_protocol": group_values["new_backend_protocol"],
                "slow_start": bool(group_values["new_slow_start"]),
                "slow_start_duration": group_values["new_slow_start_duration"] or 30,
                "servers": servers,
            }
            if new_group
            else None
        ),
        health_check=check_form.cleaned_data,
        protocol=cleaned["protocol"],
        port=cleaned["port"],
        name=cleaned["name"],
        settings=form.settings_values(),
        certificates=certificates,
        enabled=cleaned["auto_enable"],
    )


def _servers_formset(rows: list[dict]) -> BackendServerFormSet:
    data: dict[str, Any] = {
        "servers-TOTAL_FORMS": str(len(rows)),
        "servers-INITIAL_FORMS": "0",
        "servers-MIN_NUM_FORMS": "0",
        "servers-MAX_NUM_FORMS": "500",
    }
    for index, row in enumerate(rows):
        for name, value in row.items():
            data[f"servers-{index}-{name}"] = value
    return BackendServerFormSet(data, prefix="servers")


def _refuse_if_configuring(listener: Listener, doing: str) -> None:
    """Checked before the form, as the pages do; the service checks again under the lock."""
    from listeners import rules

    problem = rules.configuring_refusal(listener, doing)
    if problem:
        raise ApiError(409, problem)


@router.patch(
    "/instances/{instance_id}/listeners/{listener_id}",
    response={200: ListenerOut, **ERRORS},
    summary="UpdateListenerAttribute",
)
def modify_listener(
    request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId, payload: ListenerSettings
):
    """Modify Listener: name, description, tags and Advanced Settings. Protocol and port cannot
    change (create another listener)."""
    listener = _listener(instance_id, listener_id)
    _refuse_if_configuring(listener, "modifying it")
    sent = set_fields(payload)
    form = validated(
        ListenerSettingsForm(
            _settings_data(ListenerSettingsForm.initial_from(listener), sent),
            instance=listener.instance,
            protocol=listener.protocol,
            listener=listener,
        )
    )
    listener = call_service(
        services.modify_listener,
        listener_id=listener.pk,
        name=form.cleaned_data["name"],
        settings=form.settings_values(),
    )
    return listener_out(listener)


def _set_state(instance_id: ObjectId, listener_id: ObjectId, state: str) -> dict[str, Any]:
    listener = _listener(instance_id, listener_id)
    verb = "starting" if state == Listener.DesiredState.RUNNING else "stopping"
    _refuse_if_configuring(listener, f"{verb} it")
    return listener_out(
        call_service(services.set_desired_state, listener_id=listener.pk, desired_state=state)
    )


@router.post(
    "/instances/{instance_id}/listeners/{listener_id}/start",
    response={200: ListenerOut, **ERRORS},
    summary="StartListener",
)
def start_listener(request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId):
    return _set_state(instance_id, listener_id, Listener.DesiredState.RUNNING)


@router.post(
    "/instances/{instance_id}/listeners/{listener_id}/stop",
    response={200: ListenerOut, **ERRORS},
    summary="StopListener",
)
def stop_listener(request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId):
    return _set_state(instance_id, listener_id, Listener.DesiredState.STOPPED)


@router.delete(
    "/instances/{instance_id}/listeners/{listener_id}",
    response={204: None, **ERRORS},
    summary="DeleteListener",
)
def delete_listener(request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId):
    listener = _listener(instance_id, listener_id)
    _refuse_if_configuring(listener, "deleting it")
    call_service(services.delete_listener, listener_id=listener.pk)
    return Status(204, None)


@router.put(
    "/instances/{instance_id}/listeners/{listener_id}/server-group",
    response={200: ListenerOut, **ERRORS},
)
def change_server_group(
    request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId, payload: ServerGroupChange
):
    listener = _listener(instance_id, listener_id)
    _refuse_if_configuring(listener, "changing its server group")
    form = validated(ChangeServerGroupForm(set_fields(payload), listener=listener))
    return listener_out(
        call_service(
            services.change_server_group,
            listener_id=listener.pk,
            server_group=form.cleaned_data["server_group"],
        )
    )


def _update_certificates(listener: Listener, values: dict[str, Any]) -> dict[str, Any]:
    _refuse_if_configuring(listener, "changing its certificates")
    data = {**values, "tls_policy": listener.tls_policy_id or DEFAULT_TLS_POLICY}
    form = validated(ManageCertificatesForm(data, listener=listener))
    cleaned = form.cleaned_data
    return listener_out(
        call_service(
            services.update_listener_certificates,
            listener_id=listener.pk,
            default_certificate=cleaned["default_certificate"],
            additional_certificates=cleaned.get("additional_certificates") or [],
            mutual_authentication=bool(cleaned.get("mutual_authentication")),
            ca_certificate=cleaned.get("ca_certificate"),
        )
    )


def _current_certificates(listener: Listener) -> dict[str, Any]:
    if not listener.needs_certificate:
        raise ApiError(
            409, f"A {listener.get_protocol_display()} listener has no server certificates."
        )
    return {
        "default_certificate": listener.default_certificate_id,
        "additional_certificates": list(
            listener.additional_certificates.values_list("pk", flat=True)
        ),
        "mutual_authentication": listener.mutual_authentication,
        "ca_certificate": listener.ca_certificate_id,
    }


@router.put(
    "/instances/{instance_id}/listeners/{listener_id}/certificates",
    response={200: ListenerOut, **ERRORS},
)
def update_certificates(
    request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId, payload: CertificatesIn
):
    """Manage Certificates: the default and additional (SNI) certificates, mutual TLS."""
    listener = _listener(instance_id, listener_id)
    _current_certificates(listener)
    return _update_certificates(listener, payload.model_dump())


@router.post(
    "/instances/{instance_id}/listeners/{listener_id}/additional-certificates",
    response={200: ListenerOut, **ERRORS},
    summary="AssociateAdditionalCertificatesWithListener",
)
def associate_certificates(
    request: HttpRequest,
    instance_id: ObjectId,
    listener_id: ObjectId,
    payload: AdditionalCertificates,
):
    listener = _listener(instance_id, listener_id)
    values = _current_certificates(listener)
    for certificate in payload.certificates:
        if certificate not in values["additional_certificates"]:
            values["additional_certificates"].append(certificate)
    return _update_certificates(listener, values)


@router.delete(
    "/instances/{instance_id}/listeners/{listener_id}/additional-certificates",
    response={200: ListenerOut, **ERRORS},
    summary="DissociateAdditionalCertificatesFromListener",
)
def dissociate_certificates(
    request: HttpRequest,
    instance_id: ObjectId,
    listener_id: ObjectId,
    payload: AdditionalCertificates,
):
    listener = _listener(instance_id, listener_id)
    values = _current_certificates(listener)
    missing = [c for c in payload.certificates if c not in values["additional_certificates"]]
    if missing:
        raise invalid(
            [
                {"field": "certificates", "message": f"{c} is not an additional certificate."}
                for c in missing
            ]
        )
    values["additional_certificates"] = [
        c for c in values["additional_certificates"] if c not in payload.certificates
    ]
    return _update_certificates(listener, values)


@router.put(
    "/instances/{instance_id}/listeners/{listener_id}/tls-policy",
    response={200: ListenerOut, **ERRORS},
)
def change_tls_policy(
    request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId, payload: TlsPolicyChange
):
    listener = _listener(instance_id, listener_id)
    if not listener.uses_tls:
        raise ApiError(
            409, f"A {listener.get_protocol_display()} listener has no TLS security policy."
        )
    _refuse_if_configuring(listener, "changing its TLS policy")
    form = validated(TlsPolicyForm(set_fields(payload), listener=listener))
    return listener_out(
        call_service(
            services.change_tls_policy,
            listener_id=listener.pk,
            tls_policy=form.cleaned_data["tls_policy"],
        )
    )
