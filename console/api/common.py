"""What every resource module shares: strict schemas, form binding and service errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from django import forms
from django.db import IntegrityError
from ninja import Schema
from pydantic import ConfigDict, Field, StringConstraints

from console.api.problems import ApiError, form_errors, invalid
from listeners import services

T = TypeVar("T")

# Resource IDs (lsn-3k9x0q2m, tls_cipher_policy_1_0): anything else cannot name an object, and
# is refused before it reaches a query.
ObjectId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# Row numbers (forwarding rules, nodes) within the database's bigint range.
RowId = Annotated[int, Field(ge=1, le=2**63 - 1)]


class Strict(Schema):
    """Request bodies: an unknown field is refused by name, not ignored."""

    model_config = ConfigDict(extra="forbid")


def set_fields(payload: Schema) -> dict[str, Any]:
    """The fields the client sent (``exclude_unset``), so omitted ones keep their current value."""
    return payload.model_dump(exclude_unset=True)


def validated(form: forms.BaseForm, rename: dict[str, str] | None = None, at: str = "") -> Any:
    """The form's cleaned data, or a 422 problem with the form's own messages by field."""
    if not form.is_valid():
        raise invalid(form_errors(form, rename, at=at))
    return form


def call_service(
    function: Callable[..., T], *, field_names: dict[str, str] | None = None, **kwargs: Any
) -> T:
    """Call a use case; its refusals become problem documents naming the field."""
    try:
        return function(**kwargs)
    except services.ListenerConfiguring as refusal:
        raise ApiError(409, str(refusal)) from refusal
    except services.InUse as in_use:
        blockers = [
            {"field": None, "message": f"Used by listener {b.name} ({b.id})."}
            for b in in_use.blockers
        ]
        raise ApiError(409, str(in_use), errors=blockers) from in_use
    except services.NotFound as gone:
        raise ApiError(404, str(gone)) from gone
    except services.ReadOnly as read_only:
        raise ApiError(403, str(read_only)) from read_only
    except services.RuleViolation as problem:
        field = (field_names or {}).get(problem.field or "", problem.field)
        raise ApiError(422, str(problem), errors=[{"field": field, "message": str(problem)}]) from (
            problem
        )
    except IntegrityError as error:
        raise ApiError(409, "A concurrent change conflicts with this one; try again.") from error


def pk_of(value: Any) -> Any:
    return getattr(value, "pk", value)
