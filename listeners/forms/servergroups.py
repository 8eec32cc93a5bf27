"""Server group forms: the group itself and its backend server rows.

The rows form is shared with the listener wizard's "Server Group" step, so it lives here with
helpers that work on plain POST data: ``add_row`` for "Add More" (which must work without
JavaScript) and ``server_rows``/``save_servers`` to move rows between a group and the form.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import forms
from django.db import transaction
from django.http import QueryDict

from listeners.forms.ranges import state_ranges
from listeners.models import ServerGroup
from listeners.rules import compatible_backend_protocols, slow_start_conflict
from listeners.services import replace_servers

DEFAULT_WEIGHT = 100
MAX_SERVERS = 500
PREFIX = "servers"


class ServerGroupForm(forms.ModelForm):
    class Meta:
        model = ServerGroup
        fields = [
            "name",
            "backend_protocol",
            "description",
            "slow_start",
            "slow_start_duration",
            "backend_ca_certificate",
        ]
        labels = {
            "name": "Server Group Name",
            "backend_protocol": "Backend Protocol",
            "description": "Description",
            "slow_start": "Slow Start",
            "slow_start_duration": "Slow Start Duration (s)",
            "backend_ca_certificate": "Backend CA Certificate",
        }
        help_texts = {
            "backend_protocol": "HTTP and HTTPS listeners forward to HTTP or HTTPS backends, "
            "QUIC listeners to HTTP, TCP and TCP SSL listeners to TCP, UDP listeners to UDP.",
            "description": "At most 255 characters.",
            "backend_ca_certificate": "HTTPS backends only. Without a CA, backend certificates "
            "are not verified.",
        }
        widgets = {"description": forms.TextInput()}

    def clean_backend_protocol(self) -> str:
        protocol = self.cleaned_data["backend_protocol"]
        if not self.instance.pk or protocol == self.instance.backend_protocol:
            return protocol
        # A group in use must stay servable by every listener that forwards to it (seed 002:
        # "if the frontend protocol is TCP, the backend protocol must be TCP").
        for listener in self.instance.listeners.order_by("name"):
            if not backend_protocol_fits(listener.protocol, protocol):
                raise forms.ValidationError(
                    f"Listener {listener.name} ({listener.id}) forwards "
                    f"{listener.get_protocol_display()} to this group, so its backend protocol "
                    f"must be {allowed_backend_protocols_label(listener.protocol)}."
                )
        return protocol

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["slow_start_duration"].required = False
        self.fields["slow_start_duration"].help_text = "30-1200 s, used when Slow Start is on."
        state_ranges(self, ServerGroup)

    def clean_backend_ca_certificate(self):
        ca = self.cleaned_data.get("backend_ca_certificate")
        if ca is not None and self.cleaned_data.get("backend_protocol") != "https":
            raise forms.ValidationError("Only HTTPS backends are verified against a CA.")
        return ca

    def clean_slow_start_duration(self) -> int:
        return self.cleaned_data.get("slow_start_duration") or 30

    def clean(self) -> dict:
        cleaned = super().clean()
        if cleaned.get("slow_start") and self.instance.pk:
            for listener in self.instance.listeners.order_by("name"):
                problem = slow_start_conflict(True, listener.scheduler)
                if problem:
                    self.add_error("slow_start", f"Listener {listener.name}: {problem}")
                    break
        return cleaned


def backend_protocol_fits(listener_protocol: str, backend_protocol: str) -> bool:
    return backend_protocol in compatible_backend_protocols(listener_protocol)


def allowed_backend_protocols_label(listener_protocol: str) -> str:
    labels = [
        ServerGroup.BackendProtocol(value).label
        for value in compatible_backend_protocols(listener_protocol)
    ]
    return " or ".join(labels)


class BackendServerForm(forms.Form):
    address = forms.GenericIPAddressField(
        label="Server Address",
        error_messages={"invalid": "Enter a valid IPv4 or IPv6 address."},
        widget=forms.TextInput(attrs={"placeholder": "192.168.0.10", "size": 22}),
    )
    port = forms.IntegerField(
        label="Port",
        min_value=1,
        max_value=65535,
        error_messages={
            "min_value": "Port must be between 1 and 65535.",
            "max_value": "Port must be between 1 and 65535.",
        },
        widget=forms.NumberInput(attrs={"size": 6}),
    )
    weight = forms.IntegerField(
        label="Weight",
        min_value=0,
        max_value=100,
        initial=DEFAULT_WEIGHT,
        error_messages={
            "min_value": "Weight must be between 0 and 100.",
            "max_value": "Weight must be between 0 and 100.",
        },
        widget=forms.NumberInput(attrs={"size": 4}),
    )
    description = forms.CharField(label="Description", max_length=255, required=False)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The rows sit in a table under one header each, so every input names its column and
        # row for screen readers and for browser tests that find inputs by label.
        row = _row_number(self.prefix)
        for field in self.fields.values():
            field.widget.attrs.setdefault("class", "inline-input")
            if row is not None:
                field.widget.attrs["aria-label"] = f"{field.label}, row {row}"


def _row_number(prefix: str | None) -> int | None:
    index = (prefix or "").rpartition("-")[2]
    return int(index) + 1 if index.isdigit() else None


class BaseBackendServerFormSet(forms.BaseFormSet):
    # Django merges this with the base class's messages.
    default_error_messages = {
        "too_many_forms": "A server group has at most %(num)d backend servers.",
    }

    @classmethod
    def get_default_prefix(cls) -> str:
        return PREFIX

    def kept_forms(self) -> list[forms.Form]:
        """Rows that will be saved: valid, filled in and not marked for removal."""
        return [
            form
            for form in self.forms
            if form.is_valid()
            and form.cleaned_data
            and not (self.can_delete and self._should_delete_form(form))
        ]

    def clean(self) -> None:
        if any(self.errors):
            return
        first_row: dict[tuple[str, int], int] = {}
        problems = []
        kept = {id(form) for form in self.kept_forms()}
        for index, form in enumerate(self.forms, start=1):
            if id(form) not in kept:
                continue
            endpoint = (form.cleaned_data["address"], form.cleaned_data["port"])
            if endpoint in first_row:
                shown = _endpoint_label(*endpoint)
                form.add_error("port", f"{shown} is already in row {first_row[endpoint]}.")
                problems.append(
                    f"Backend server {shown} is listed twice (rows {first_row[endpoint]} "
                    f"and {index})."
                )
            else:
                first_row[endpoint] = index
        if problems:
            raise forms.ValidationError(problems)
        if not first_row:
            raise forms.ValidationError("Add at least one backend server.")

    def rows(self) -> list[dict[str, Any]]:
        """The cleaned rows to save, in the order shown."""
        return [
            {key: form.cleaned_data[key] for key in ("address", "port", "weight", "description")}
            for form in self.kept_forms()
        ]


BackendServerFormSet = forms.formset_factory(
    BackendServerForm,
    formset=BaseBackendServerFormSet,
    extra=0,
    can_delete=True,
    max_num=MAX_SERVERS,
    validate_max=True,
    absolute_max=MAX_SERVERS,
)


def _endpoint_label(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def server_rows(group: ServerGroup) -> list[dict[str, Any]]:
    """Initial data for ``BackendServerFormSet(initial=...)`` from a group's servers."""
    return [
        {
            "address": server.address,
            "port": server.port,
            "weight": server.weight,
            "description": server.description,
        }
        for server in group.servers.all()
    ]


def blank_rows() -> list[dict[str, Any]]:
    """Initial data for a new group: one empty row with the default weight."""
    return [{"weight": DEFAULT_WEIGHT}]


def save_servers(group: ServerGroup, formset: BaseBackendServerFormSet) -> None:
    """Make the group's servers exactly the formset's rows (``services.replace_servers``).

    The caller decides whether listeners need a push (``listeners_changed``).
    """
    with transaction.atomic():
        replace_servers(group, formset.rows())


def add_row(data: QueryDict | Mapping[str, Any], prefix: str = PREFIX) -> dict[str, Any]:
    """The same POST data plus one empty row (weight 100), for "Add More".

    Multi-valued keys (checkbox lists elsewhere in the form) keep all their values.
    """
    if isinstance(data, QueryDict):
        copied: dict[str, Any] = {
            key: values if len(values) > 1 else values[0] for key, values in data.lists()
        }
    else:
        copied = dict(data)
    total_key = f"{prefix}-TOTAL_FORMS"
    try:
        total = max(int(copied.get(total_key, 0)), 0)
    except (TypeError, ValueError):
        total = 0
    total = min(total, MAX_SERVERS - 1)
    copied.setdefault(f"{prefix}-INITIAL_FORMS", "0")
    copied.setdefault(f"{prefix}-MIN_NUM_FORMS", "0")
    copied.setdefault(f"{prefix}-MAX_NUM_FORMS", str(MAX_SERVERS))
    copied[total_key] = str(total + 1)
    copied[f"{prefix}-{total}-weight"] = str(DEFAULT_WEIGHT)
    for field in ("address", "port", "description"):
        copied.pop(f"{prefix}-{total}-{field}", None)
    copied.pop(f"{prefix}-{total}-DELETE", None)
    return copied
