"""The audit log: every change from the console or the API, recorded by its service function.

``@audited`` goes between ``@transaction.atomic`` and a service function, so the record is
written in the transaction of the change: both commit or neither does. It reads the object before
the change under the row lock the service takes (so a change committed while this one waited is
not counted as this one's) and after it, and keeps the fields that differ, secrets redacted. Who
made the change comes from the request being served (``AuditActorMiddleware``): a user, or a
user's API token; outside a request (bootstrap, management commands) the actor is "system".
"""

from __future__ import annotations

import contextvars
import datetime
import functools
import hashlib
from collections.abc import Callable
from typing import Any

from django.db import models
from django.http import HttpRequest, HttpResponse

REDACTED = "[redacted]"
# Never written to the log, only whether they changed.
SECRET_FIELDS = frozenset({"private_key_token", "token_encrypted", "key_hash"})
# What the pipeline observes rather than what an operator chose.
RUNTIME_FIELDS = frozenset(
    {
        "status",
        "last_error",
        "configuring_since",
        "created_at",
        "updated_at",
        "generation",
        "applied_generation",
        "reachable",
        "last_contact",
        "unreachable_since",
        "checked_at",
        "acked_generation",
        "listener_results",
        "results_at",
        "status_report",
        "status_report_at",
        "previous_report",
        "previous_report_at",
        "certificate_pem",
        "chain_pem",
    }
)

_request: contextvars.ContextVar[HttpRequest | None] = contextvars.ContextVar(
    "audit_request", default=None
)


class AuditActorMiddleware:
    """Makes the request being served known to the service functions it calls."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        reset = _request.set(request)
        try:
            return self.get_response(request)
        finally:
            _request.reset(reset)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, models.Model):
        return value.pk
    return value


def snapshot(row: models.Model | None) -> dict[str, Any]:
    """The operator-chosen state of ``row`` as plain values, with what hangs off it."""
    if row is None:
        return {}
    state: dict[str, Any] = {}
    for field in row._meta.concrete_fields:
        if field.name in RUNTIME_FIELDS:
            continue
        value = getattr(row, field.attname)
        state[field.name] = REDACTED if field.name in SECRET_FIELDS else _plain(value)
    for field in row._meta.many_to_many:
        state[field.name] = sorted(getattr(row, field.name).values_list("pk", flat=True))
    state.update(_related(row))
    return state


def _related(row: models.Model) -> dict[str, Any]:
    from console.models import Instance
    from listeners.models import AccessControlList, HealthCheck, Listener, ServerGroup

    if isinstance(row, Instance):
        # An import into an empty instance may leave its own fields as they were: its record
        # then says which listeners it brought (each also has its own listener.import record).
        return {"listeners": sorted(row.listeners.values_list("pk", flat=True))}
    if isinstance(row, Listener):
        return {
            "forwarding_rules": [
                {"id": rule.pk, "name": rule.name, "conditions": rule.conditions}
                | {key: _plain(value) for key, value in rule.action_fields().items()}
                for rule in row.rules.order_by("position", "pk")
            ],
            # A page may be 64 KiB: its size and digest say that it changed, not the page twice.
            "error_pages": {
                page.status: f"{page.content_type}, {len(page.body.encode())} bytes, sha256 "
                + hashlib.sha256(page.body.encode()).hexdigest()[:16]
                for page in row.error_pages.all()
            },
        }
    if isinstance(row, ServerGroup):
        check = HealthCheck.objects.filter(group=row).first()
        return {
            "servers": [
                f"{s.address}:{s.port} weight {s.weight}" for s in row.servers.order_by("pk")
            ],
            "health_check": {k: v for k, v in snapshot(check).items() if k != "group"},
        }
    if isinstance(row, AccessControlList):
        return {"entries": [f"{e.cidr} {e.description}".strip() for e in row.entries.all()]}
    return {}


def diff(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: {"before": before.get(name), "after": after.get(name)}
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    }


def _actor() -> dict[str, Any]:
    request = _request.get()
    token = getattr(request, "api_token", None) if request is not None else None
    user = getattr(request, "user", None) if request is not None else None
    if token is not None:
        return {
            "actor": f"{token.user.get_username()} (token {token.name}, {token.prefix}…)",
            "user": token.user,
            "token": token,
            "via": "api",
        }
    if user is not None and user.is_authenticated:
        via = "api" if request.path.startswith("/api/") else "console"
        return {"actor": user.get_username(), "user": user, "token": None, "via": via}
    return {"actor": "system", "user": None, "token": None, "via": "system"}


def record(
    action: str,
    row: models.Model,
    before: dict[str, Any],
    after: dict[str, Any],
    *,
    object_id: Any = None,
) -> None:
    from console.models import AuditRecord

    AuditRecord.objects.create(
        **_actor(),
        action=action,
        object_type=row._meta.model_name,
        object_id=str(object_id if object_id is not None else row.pk),
        object_name=str(getattr(row, "name", "") or "")[:255],
        changes=diff(before, after),
    )


# How ``@audited`` locks the row it reads "before" from: in the mode the service function locks it
# (FOR NO KEY UPDATE for a row that stays, FOR UPDATE for one it deletes), or with a function of
# the call's keyword arguments that takes the service's locks in the service's own order.
NO_KEY_UPDATE = "no key update"
UPDATE = "update"
Lock = str | Callable[[dict[str, Any]], None]


def _read_locked(
    model: type[models.Model], pk: Any, lock: Lock, arguments: dict[str, Any]
) -> models.Model | None:
    """The row as it is once this transaction holds the service's lock on it.

    Read under the lock, so a change committed while this call waited for the lock is in
    "before", and the diff holds only what this call changes. Taking the lock first is safe: the
    service takes the same lock next (a no-op in the same transaction), in the same order.
    """
    if callable(lock):
        lock(arguments)
        return model.objects.filter(pk=pk).first()
    rows = model.objects.select_for_update(no_key=lock == NO_KEY_UPDATE)
    return rows.filter(pk=pk).first()


def audited(
    action: str | Callable[[dict[str, Any]], str],
    model: type[models.Model],
    key: str | None = None,
    *,
    created: Callable[[Any], models.Model] | None = None,
    lock: Lock = NO_KEY_UPDATE,
) -> Callable:
    """Record the change a service function makes to the ``model`` row named by its keyword
    argument ``key`` (an id or the row), or to the row it creates and returns (``created``
    finds it in what the function returns, if that is not the row itself).

    The row named by ``key`` is locked as ``lock`` says before it is read (``_read_locked``);
    the decorator must sit under ``@transaction.atomic`` so the lock lasts to the commit."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def audited_call(*args: Any, **kwargs: Any) -> Any:
            named = kwargs.get(key) if key else None
            pk = getattr(named, "pk", named)
            before = snapshot(_read_locked(model, pk, lock, kwargs)) if pk is not None else {}
            result = function(*args, **kwargs)
            row = created(result) if created else result
            row = row if isinstance(row, model) else None
            if pk is None and row is not None:
                pk = row.pk
            current = model.objects.filter(pk=pk).first() if pk is not None else None
            after = snapshot(current)
            if before == after:
                return result  # nothing changed (a health check saved as it was)
            shown = current or row or model.objects.filter(pk=pk).first()
            if shown is None:
                shown = model(pk=pk)
                for name in ("name",):
                    if name in before:
                        setattr(shown, name, before[name])
            name = action(kwargs) if callable(action) else action
            record(name, shown, before, after, object_id=pk)
            return result

        return audited_call

    return decorate
