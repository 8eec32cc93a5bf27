"""Passive Health Check fields of the health check forms (wizard step 4, Modify Health Check and
the API's health check): per server group, eject a server after consecutive 5xx answers or
connect failures (dataplane.outlier).

The values are the server group's, not the HealthCheck row's; they travel in the health check's
form because that is where an operator decides how servers are judged, and
``services.update_health_check`` saves each part where it belongs. UDP groups have no passive
checks (a datagram has no outcome to judge), so their forms carry none of these fields. gRPC
groups have them: the node (dataplane.protocols.grpc) counts a call as failed on a 5xx head, a
grpc-status of UNKNOWN, INTERNAL, UNAVAILABLE or DATA_LOSS, a reset or close before the response
head, no head within the response timeout, or a failed connect.
"""

from __future__ import annotations

from typing import Any

from django import forms

from dataplane import config as schema
from listeners.models import ServerGroup

ENABLED = "passive_health_check"
NUMBERS = (
    "passive_consecutive_failures",
    "passive_base_ejection_time",
    "passive_max_ejection_time",
    "passive_max_ejection_percent",
)
PASSIVE_FIELDS = (ENABLED, *NUMBERS)
# The defaults of a new group, as the model and dataplane.config.PassiveHealthCheck have them.
DEFAULTS: dict[str, Any] = {
    name: ServerGroup._meta.get_field(name).default for name in PASSIVE_FIELDS
}


def applies(backend_protocol: str) -> bool:
    """Whether a group of this backend protocol can have passive health checks: every one but
    UDP, as dataplane.node builds an outlier detector for every group but a UDP one."""
    return backend_protocol != ServerGroup.BackendProtocol.UDP


def values_of(group: ServerGroup | None) -> dict[str, Any]:
    """A group's passive health check (a new group's defaults without one)."""
    if group is None:
        return dict(DEFAULTS)
    return {name: getattr(group, name) for name in PASSIVE_FIELDS}


def split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Health check form values as (HealthCheck fields, ServerGroup passive fields)."""
    check = {name: value for name, value in values.items() if name not in PASSIVE_FIELDS}
    passive = {name: value for name, value in values.items() if name in PASSIVE_FIELDS}
    return check, passive


def add_fields(form: forms.BaseForm, group: ServerGroup | None, backend_protocol: str) -> None:
    """Give a health check form the Passive Health Check switch and its four numbers, showing
    ``group``'s values (a new group's defaults without one)."""
    if not applies(backend_protocol):
        return
    current = values_of(group)
    consecutive = schema.PASSIVE_CONSECUTIVE_FAILURES
    ejection = schema.PASSIVE_EJECTION_TIME
    percent = schema.PASSIVE_MAX_EJECTION_PERCENT
    form.fields[ENABLED] = forms.BooleanField(
        label="Passive Health Check",
        required=False,
        help_text="Eject a server from rotation after consecutive 5xx responses or connection "
        "failures in live traffic; it returns by itself after its ejection time.",
    )
    numbers = (
        ("passive_consecutive_failures", "Consecutive Failures", consecutive, ""),
        (
            "passive_base_ejection_time",
            "Base Ejection Time (s)",
            ejection,
            " Grows with each repeated ejection of the same server.",
        ),
        (
            "passive_max_ejection_time",
            "Max Ejection Time (s)",
            ejection,
            " At least the base ejection time.",
        ),
        (
            "passive_max_ejection_percent",
            "Max Ejection Percentage (%)",
            percent,
            " Never more "
            "of the group's servers ejected at once: past it, failing servers stay in (fail open).",
        ),
    )
    for name, label, (low, high), more in numbers:
        form.fields[name] = forms.IntegerField(
            label=label,
            required=False,
            min_value=low,
            max_value=high,
            help_text=f"{low}-{high}, used when Passive Health Check is on; default "
            f"{DEFAULTS[name]}.{more}",
        )
    for name in PASSIVE_FIELDS:
        form.initial.setdefault(name, current[name])
    # An empty number keeps the value the group has.
    form.passive_current = current  # type: ignore[attr-defined]


def not_applicable(form: forms.BaseForm) -> set[str]:
    """The numbers, while the switch is off: the wizard's Confirm step leaves them out, as the
    page hides them (console.css) and the details pages do."""
    if ENABLED not in form.fields or form.cleaned_data.get(ENABLED):
        return set()
    return set(NUMBERS)


def clean(form: forms.BaseForm, cleaned: dict[str, Any]) -> None:
    """Empty numbers keep their current values; the maximum ejection time is at least the
    base, as the dataplane requires."""
    if ENABLED not in form.fields:
        return
    current = form.passive_current  # type: ignore[attr-defined]
    for name in NUMBERS:
        if name in cleaned and cleaned[name] is None:
            cleaned[name] = current[name]
    base = cleaned.get("passive_base_ejection_time")
    maximum = cleaned.get("passive_max_ejection_time")
    if base is not None and maximum is not None and maximum < base:
        form.add_error(
            "passive_max_ejection_time",
            f"Max Ejection Time must be at least the Base Ejection Time ({base} s).",
        )
