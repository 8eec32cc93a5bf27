"""Forwarding rules of an HTTP, HTTPS or QUIC listener: ordered, the first match wins."""

from __future__ import annotations

from typing import Any, Literal

from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Router, Schema, Status

from console.api.common import ObjectId, RowId, Strict, call_service, validated
from console.api.listeners import ListenerOut, _listener, _refuse_if_configuring, listener_out
from console.api.problems import Problem
from listeners import services
from listeners.forms.rules import ForwardingRuleForm
from listeners.models import ForwardingRule

router = Router(tags=["Forwarding rules"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}
RULES = "/instances/{instance_id}/listeners/{listener_id}/rules"


class RuleIn(Strict):
    """The Forwarding Rules dialog's fields: conditions (at least one) and one action."""

    name: str = ""
    host: list[str] = []
    path: str = ""
    path_match: Literal["prefix", "exact", "regex"] = "prefix"
    methods: list[str] = []
    header_name: str = ""
    header_values: list[str] = []
    query: list[str] = []
    source_ip: list[str] = []
    action: str = "forward"
    server_group: ObjectId | None = None
    status_code: int | None = None
    redirect_protocol: str = ""
    redirect_host: str = "${host}"
    redirect_port: int | None = None
    redirect_path: str = "${path}"
    redirect_query: str = "${query}"
    content_type: str = "text/plain"
    body: str = ""
    qps_per_client_ip: int | None = None


class RuleOut(Schema):
    id: int
    position: int
    name: str
    conditions: list[dict[str, Any]]
    action: str
    server_group: str | None
    status_code: int | None
    redirect_protocol: str
    redirect_host: str
    redirect_port: int | None
    redirect_path: str
    redirect_query: str
    content_type: str
    body: str
    qps_per_client_ip: int | None


class Move(Strict):
    direction: Literal["up", "down"]


def rule_out(rule: ForwardingRule) -> dict[str, Any]:
    return {
        "id": rule.pk,
        "position": rule.position,
        "name": rule.name,
        "conditions": rule.conditions,
        **rule.action_fields(),
    }


def _save(listener, rule_id: int | None, payload: RuleIn) -> ForwardingRule:
    _refuse_if_configuring(listener, "changing its forwarding rules")
    data = payload.model_dump()
    for name in ("host", "header_values", "query", "source_ip"):
        data[name] = ", ".join(data[name])
    form = validated(ForwardingRuleForm(data, listener=listener))
    scratch = ForwardingRule(listener=listener)
    form.apply_to(scratch)
    return call_service(
        services.save_forwarding_rule,
        listener_id=listener.pk,
        rule_id=rule_id,
        values={name: getattr(scratch, name) for name in services.RULE_FIELDS},
    )


@router.get(RULES, response={200: list[RuleOut], 404: Problem})
def list_rules(request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId):
    return [rule_out(rule) for rule in _listener(instance_id, listener_id).rules.all()]


@router.post(RULES, response={201: RuleOut, **ERRORS})
def add_rule(request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId, payload: RuleIn):
    return Status(201, rule_out(_save(_listener(instance_id, listener_id), None, payload)))


@router.put(RULES + "/{rule_id}", response={200: RuleOut, **ERRORS})
def replace_rule(
    request: HttpRequest,
    instance_id: ObjectId,
    listener_id: ObjectId,
    rule_id: RowId,
    payload: RuleIn,
):
    listener = _listener(instance_id, listener_id)
    get_object_or_404(ForwardingRule, pk=rule_id, listener=listener)
    return rule_out(_save(listener, rule_id, payload))


@router.delete(RULES + "/{rule_id}", response={204: None, **ERRORS})
def delete_rule(request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId, rule_id: RowId):
    listener = _listener(instance_id, listener_id)
    get_object_or_404(ForwardingRule, pk=rule_id, listener=listener)
    _refuse_if_configuring(listener, "changing its forwarding rules")
    call_service(services.delete_forwarding_rule, listener_id=listener.pk, rule_id=rule_id)
    return Status(204, None)


@router.post(RULES + "/{rule_id}/move", response={200: ListenerOut, **ERRORS})
def move_rule(
    request: HttpRequest,
    instance_id: ObjectId,
    listener_id: ObjectId,
    rule_id: RowId,
    payload: Move,
):
    """Swap the rule with its neighbour above or below."""
    listener = _listener(instance_id, listener_id)
    get_object_or_404(ForwardingRule, pk=rule_id, listener=listener)
    _refuse_if_configuring(listener, "reordering its forwarding rules")
    call_service(
        services.move_forwarding_rule,
        listener_id=listener.pk,
        rule_id=rule_id,
        direction=payload.direction,
    )
    return listener_out(listener)
