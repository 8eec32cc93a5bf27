"""The Create Listener wizard's draft: one entry per step, kept in the session.

Like django-formtools, each step stores what was posted (valid or not), so Next, Previous and a
reload keep what was typed, and Submit re-validates every step from the stored data before
anything is created.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.http import HttpRequest, QueryDict

from console.models import Instance
from listeners.forms import passive
from listeners.forms.listener import (
    CERTIFICATE,
    CertificateStepForm,
    HealthCheckForm,
    ProtocolListenerForm,
    ServerGroupStepForm,
)
from listeners.forms.servergroups import BackendServerFormSet, blank_rows, server_rows
from listeners.models import HealthCheck, ServerGroup
from listeners.services import default_health_check


@dataclass(frozen=True)
class Step:
    name: str
    label: str


STEPS = (
    Step("protocol", "Protocol & Listener"),
    Step("certificate", "SSL Certificate"),
    Step("servergroup", "Server Group"),
    Step("healthcheck", "Health Check"),
    Step("confirm", "Confirm"),
)
STEP_NAMES = tuple(step.name for step in STEPS)
IGNORED_KEYS = {"csrfmiddlewaretoken", "action", "token"}
DONE_KEY = "listener-wizard-done"


class Draft:
    def __init__(self, request: HttpRequest, instance: Instance) -> None:
        self.request = request
        self.instance = instance
        self.key = f"listener-wizard:{instance.pk}"
        stored = request.session.get(self.key)
        if not stored:
            stored = {"steps": {}, "token": secrets.token_urlsafe(16)}
            request.session[self.key] = stored
        self.stored = stored

    # -- storage ---------------------------------------------------------------------------
    @property
    def token(self) -> str:
        return self.stored["token"]

    def data(self, step: str) -> QueryDict | None:
        raw = self.stored["steps"].get(step)
        if raw is None:
            return None
        query = QueryDict(mutable=True)
        for key, values in raw.items():
            query.setlist(key, values)
        return query

    def save(self, step: str, posted: QueryDict) -> None:
        self.stored["steps"][step] = {
            key: values for key, values in posted.lists() if key not in IGNORED_KEYS
        }
        self.request.session.modified = True

    def reset(self) -> None:
        self.request.session.pop(self.key, None)

    def finish(self, listener_id: str) -> None:
        done = self.request.session.get(DONE_KEY, {})
        done[self.token] = listener_id
        # A handful is enough to answer a double submit; older ones are dropped.
        self.request.session[DONE_KEY] = dict(list(done.items())[-10:])
        self.reset()

    def created_for(self, token: str) -> str | None:
        return self.request.session.get(DONE_KEY, {}).get(token)

    # -- steps -----------------------------------------------------------------------------
    def protocol(self) -> str:
        data = self.data("protocol")
        value = data.get("protocol") if data else None
        return value or "http"

    def active_steps(self) -> list[Step]:
        needs_certificate = self.protocol() in CERTIFICATE
        return [step for step in STEPS if step.name != "certificate" or needs_certificate]

    def neighbour(self, step: str, offset: int) -> str | None:
        names = [s.name for s in self.active_steps()]
        index = names.index(step) + offset
        return names[index] if 0 <= index < len(names) else None

    def completed(self) -> set[str]:
        return set(self.stored["steps"])

    # -- forms -----------------------------------------------------------------------------
    def forms_for(self, step: str, data: QueryDict | None = None) -> dict[str, object]:
        """The bound (or initial) forms of one step; ``data`` overrides the stored data."""
        if data is None:
            data = self.data(step)
        if step == "protocol":
            return {"form": ProtocolListenerForm(data, instance=self.instance)}
        if step == "certificate":
            return {
                "form": CertificateStepForm(data, instance=self.instance, protocol=self.protocol())
            }
        if step == "servergroup":
            step1 = self.data("protocol")
            scheduler = (step1.get("scheduler") if step1 else None) or "weighted_round_robin"
            form = ServerGroupStepForm(
                data, protocol=self.protocol(), scheduler=scheduler, settings=step1 or {}
            )
            formset = BackendServerFormSet(
                data, prefix="servers", initial=None if data else blank_rows()
            )
            return {
                "form": form,
                "formset": formset,
                "groups": form.fields["server_group"].queryset,
            }
        if step == "healthcheck":
            group = self.selected_group()
            backend = self.backend_protocol()
            initial_check = getattr(group, "health_check", None) if group else None
            if data is None and initial_check is None:
                form = HealthCheckForm(
                    initial=default_health_check(backend), backend_protocol=backend, group=group
                )
                return {"form": form, "group": group}
            form = HealthCheckForm(
                data, instance=initial_check, backend_protocol=backend, group=group
            )
            return {"form": form, "group": group}
        return {}

    def selected_group(self) -> ServerGroup | None:
        data = self.data("servergroup")
        if not data or data.get("group_mode") != "existing" or not data.get("server_group"):
            return None
        return ServerGroup.objects.filter(pk=data.get("server_group")).first()

    def backend_protocol(self) -> str:
        group = self.selected_group()
        if group:
            return group.backend_protocol
        data = self.data("servergroup")
        return (data.get("new_backend_protocol") if data else None) or "http"

    def validate_all(self) -> tuple[dict[str, dict], str | None]:
        """Re-validate every active step; return the forms and the first invalid step."""
        result: dict[str, dict] = {}
        for step in self.active_steps():
            if step.name == "confirm":
                continue
            if self.data(step.name) is None and step.name != "healthcheck":
                return result, step.name
            forms = self.forms_for(step.name)
            if step.name == "healthcheck" and self.data(step.name) is None:
                forms = self.forms_for(step.name, self._health_check_data())
            result[step.name] = forms
            if not self.step_valid(step.name, forms):
                return result, step.name
        return result, None

    @staticmethod
    def step_valid(step: str, forms: dict) -> bool:
        form = forms["form"]
        if not form.is_valid():
            return False
        if step == "servergroup" and form.cleaned_data["group_mode"] == "new":
            return forms["formset"].is_valid()
        return True

    def _health_check_data(self) -> QueryDict:
        """Health Check is optional to visit (seed 000): unvisited, it keeps its defaults."""
        group = self.selected_group()
        check = getattr(group, "health_check", None) if group else None
        query = QueryDict(mutable=True)
        source = check or HealthCheck(**default_health_check(self.backend_protocol()))
        udp = self.backend_protocol() == "udp"
        for name in HealthCheckForm.Meta.fields:
            if name.startswith("udp_") and not udp:
                continue
            value = getattr(source, name)
            if name == "expected_codes":
                query.setlist(name, list(value))
            elif isinstance(value, bool):
                if value:
                    query[name] = "on"
            elif value is not None:
                query[name] = str(value)
        if passive.applies(self.backend_protocol()):
            # The group's Passive Health Check as it is (a new group's defaults).
            for name, value in passive.values_of(group).items():
                if value is not False:
                    query[name] = "on" if value is True else str(value)
        return query

    def server_rows_for_existing(self) -> list[dict]:
        group = self.selected_group()
        return server_rows(group) if group else []


def _display(field, value) -> str:
    if value in (None, "", []):
        return "—"
    if isinstance(value, bool):
        return "On" if value else "Off"
    choices = dict(getattr(field, "choices", []) or [])
    if isinstance(value, list | tuple) or hasattr(value, "all"):
        items = list(value.all()) if hasattr(value, "all") else list(value)
        return ", ".join(str(choices.get(item, item)) for item in items) or "—"
    if isinstance(value, str) and value in choices:
        return str(choices[value])
    return str(value)


def summary(forms: dict[str, dict]) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """Every setting, grouped by step, as (step name, step label, [(label, value)])."""
    groups = []
    for step in STEPS:
        if step.name not in forms:
            continue
        step_forms = forms[step.name]
        form = step_forms["form"]
        rows = []
        skipped = form.not_applicable() if hasattr(form, "not_applicable") else set()
        for name, field in form.fields.items():
            if field.widget.is_hidden or field.disabled or name in skipped:
                continue
            value = form.cleaned_data.get(name)
            if name == "tags":
                value = ", ".join(f"{t['key']}={t['value']}" for t in value) or None
            rows.append((field.label, _display(field, value)))
        if step.name == "servergroup" and form.cleaned_data.get("group_mode") == "new":
            for row in step_forms["formset"].cleaned_data:
                if row and not row.get("DELETE"):
                    rows.append(
                        ("Backend Server", f"{row['address']}:{row['port']} weight {row['weight']}")
                    )
        groups.append((step.name, step.label, rows))
    return groups
