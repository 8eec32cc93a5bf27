"""The Forwarding Rules dialog: conditions and one action, checked by dataplane.rules."""

from __future__ import annotations

import re

from django import forms

from dataplane import rules as dp_rules
from listeners.forms.ranges import state_ranges
from listeners.forwarding import to_dataplane_rule
from listeners.models import ForwardingRule, Listener, ServerGroup
from listeners.rules import compatible_backend_protocols

SPLIT = re.compile(r"[,\s]+")
# Where the dataplane's rule checks point ("rule[0].conditions[2].values[0]", "rule[0].action.port")
_CONDITION_PATH = re.compile(r"^rule\[0\]\.conditions\[(\d+)\](?:\.(\w+))?")
_ACTION_PATH = re.compile(r"^rule\[0\]\.action\.(\w+)")
# The form field behind each condition type and action attribute.
_CONDITION_FIELDS = {
    "host": "host",
    "path": "path",
    "method": "methods",
    "query": "query",
    "source_ip": "source_ip",
}
_ACTION_FIELDS = {
    "server_group_id": "server_group",
    "status_code": "status_code",
    "protocol": "redirect_protocol",
    "host": "redirect_host",
    "port": "redirect_port",
    "path": "redirect_path",
    "query": "redirect_query",
    "content_type": "content_type",
    "body": "body",
}
# Rule attributes outside the action.
_RULE_FIELDS = {"rule[0].name": "name", "rule[0].qps_per_client_ip": "qps_per_client_ip"}


def _list(text: str) -> tuple[str, ...]:
    return tuple(item for item in SPLIT.split(text or "") if item)


class ForwardingRuleForm(forms.Form):
    name = forms.CharField(label="Rule Name", max_length=64, required=False)
    host = forms.CharField(
        label="Domain Name", required=False, help_text="Names or wildcards, comma-separated."
    )
    path = forms.CharField(label="Path", required=False, help_text="e.g. /api/ or ^/v[0-9]+/")
    path_match = forms.ChoiceField(
        label="Path Match",
        choices=[("prefix", "Prefix"), ("exact", "Exact"), ("regex", "Regular expression")],
        initial="prefix",
    )
    methods = forms.MultipleChoiceField(
        label="HTTP Request Method",
        choices=[(m, m) for m in dp_rules.HTTP_METHODS],
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    header_name = forms.CharField(label="HTTP Header", required=False, max_length=64)
    header_values = forms.CharField(
        label="Header Values", required=False, help_text="Comma-separated; * matches anything."
    )
    query = forms.CharField(
        label="Query String", required=False, help_text="key=value pairs, comma-separated."
    )
    source_ip = forms.CharField(
        label="Source IP (CIDR Block)", required=False, help_text="Comma-separated."
    )
    action = forms.ChoiceField(label="Action", choices=ForwardingRule.Action.choices)
    server_group = forms.ModelChoiceField(
        label="Forward to Server Group", queryset=ServerGroup.objects.none(), required=False
    )
    status_code = forms.IntegerField(
        label="Status Code",
        required=False,
        help_text="Redirect: 301, 302, 303, 307 or 308 (default 302). Fixed response: 2xx, 4xx "
        "or 5xx (default 200).",
    )
    redirect_protocol = forms.ChoiceField(
        label="Redirect Protocol",
        choices=[("", "Keep"), ("http", "HTTP"), ("https", "HTTPS")],
        required=False,
    )
    redirect_host = forms.CharField(label="Redirect Domain Name", initial="${host}", required=False)
    redirect_port = forms.IntegerField(
        label="Redirect Port", min_value=1, max_value=65535, required=False
    )
    redirect_path = forms.CharField(label="Redirect Path", initial="${path}", required=False)
    redirect_query = forms.CharField(label="Redirect Query", initial="${query}", required=False)
    content_type = forms.ChoiceField(
        label="Content Type",
        choices=[(t, t) for t in dp_rules.FIXED_RESPONSE_CONTENT_TYPES],
        required=False,
    )
    body = forms.CharField(
        label="Response Body", widget=forms.Textarea(attrs={"rows": 3}), required=False
    )
    # Seeds 001/003: "Throttle: N requests per second per client IP" (dataplane.throttle).
    qps_per_client_ip = forms.IntegerField(
        label="Throttle: QPS per client IP",
        min_value=dp_rules.QPS_PER_CLIENT_IP[0],
        max_value=dp_rules.QPS_PER_CLIENT_IP[1],
        required=False,
        help_text="Optional. Requests per second one client IP may send that match this rule; "
        "over it, the load balancer answers 429 Too Many Requests before the action runs. "
        "The client IP is the real one when Retrieve Client IP is on; an IPv6 client counts by "
        "its /64. Blank: no limit.",
    )

    def __init__(self, *args, listener: Listener, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.listener = listener
        state_ranges(self)
        # Rules forward HTTP requests; a gRPC group takes whole HTTP/2 streams instead.
        self.fields["server_group"].queryset = ServerGroup.objects.filter(
            backend_protocol__in=compatible_backend_protocols(listener.protocol)
        ).exclude(backend_protocol=ServerGroup.BackendProtocol.GRPC)
        self.rule: dp_rules.ForwardingRule | None = None

    def conditions(self) -> list[dict]:
        data = self.cleaned_data
        found: list[dict] = []
        if _list(data.get("host")):
            found.append({"type": "host", "values": list(_list(data["host"]))})
        if data.get("path"):
            found.append({"type": "path", "values": [data["path"]], "match": data["path_match"]})
        if data.get("methods"):
            found.append({"type": "method", "values": list(data["methods"])})
        if data.get("header_name"):
            values = list(_list(data.get("header_values"))) or ["*"]
            found.append({"type": "header", "name": data["header_name"], "values": values})
        if _list(data.get("query")):
            found.append({"type": "query", "values": list(_list(data["query"]))})
        if _list(data.get("source_ip")):
            found.append({"type": "source_ip", "values": list(_list(data["source_ip"]))})
        return found

    def clean(self) -> dict:
        cleaned = super().clean()
        if self.listener.protocol not in Listener.LAYER7_PROTOCOLS:
            # Seed 003: forwarding rules belong to the Layer-7 listeners (HTTP, HTTPS, QUIC).
            raise forms.ValidationError(
                f"A {self.listener.get_protocol_display()} listener has no forwarding rules: "
                "they are for HTTP, HTTPS and QUIC listeners."
            )
        if self.errors:
            return cleaned
        if self.listener.server_group.is_grpc:
            raise forms.ValidationError(
                f"Server group {self.listener.server_group.name} is gRPC: every call goes to it "
                "over HTTP/2, so this listener has no forwarding rules."
            )
        conditions = self.conditions()
        if not conditions:
            raise forms.ValidationError("Add at least one condition.")
        self.rule = to_dataplane_rule("rule-new", cleaned.get("name") or "", conditions, cleaned)
        group_ids = {g.id for g in self.fields["server_group"].queryset}
        problems = dp_rules.validate_rules(
            [self.rule],
            path="rule",
            server_group_ids=group_ids,
            listener_protocol=self.listener.protocol,
        )
        for problem in problems:
            self.add_error(self._field_of(problem.path, conditions), problem.message)
        return cleaned

    @staticmethod
    def _field_of(path: str, conditions: list[dict]) -> str | None:
        """The form field a dataplane rule problem is about, so the error shows next to it."""
        found = _CONDITION_PATH.match(path)
        if found:
            index, attribute = int(found.group(1)), found.group(2)
            if index >= len(conditions):
                return None
            kind = conditions[index]["type"]
            if kind == "header":
                return "header_name" if attribute == "name" else "header_values"
            return "path_match" if attribute == "match" else _CONDITION_FIELDS.get(kind)
        found = _ACTION_PATH.match(path)
        if found:
            return _ACTION_FIELDS.get(found.group(1))
        return _RULE_FIELDS.get(path)

    def apply_to(self, rule: ForwardingRule) -> None:
        data = self.cleaned_data
        rule.name = data.get("name") or ""
        rule.conditions = self.conditions()
        rule.action = data["action"]
        rule.server_group = data.get("server_group") if data["action"] == "forward" else None
        rule.status_code = data.get("status_code")
        rule.redirect_protocol = data.get("redirect_protocol") or ""
        rule.redirect_host = data.get("redirect_host") or "${host}"
        rule.redirect_port = data.get("redirect_port")
        rule.redirect_path = data.get("redirect_path") or "${path}"
        rule.redirect_query = data.get("redirect_query") or "${query}"
        rule.content_type = data.get("content_type") or "text/plain"
        rule.body = data.get("body") or ""
        rule.qps_per_client_ip = data.get("qps_per_client_ip")

    @classmethod
    def initial_from(cls, rule: ForwardingRule) -> dict:
        initial = {"name": rule.name, **rule.action_fields()}
        for condition in rule.conditions:
            values = ", ".join(condition.get("values", []))
            kind = condition["type"]
            if kind == "path":
                initial["path"], initial["path_match"] = values, condition.get("match", "prefix")
            elif kind == "method":
                initial["methods"] = condition.get("values", [])
            elif kind == "header":
                initial["header_name"] = condition.get("name", "")
                initial["header_values"] = values
            else:
                initial[kind] = values
        return initial
