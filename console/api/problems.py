"""RFC 9457 problem documents: every API error names the field it is about."""

from __future__ import annotations

from typing import Any

from django import forms
from django.http import JsonResponse
from ninja import Schema

PROBLEM_TYPE = "about:blank"
CONTENT_TYPE = "application/problem+json"


class FieldProblem(Schema):
    field: str | None = None
    message: str


class Problem(Schema):
    """application/problem+json (RFC 9457) with the field errors as ``errors``."""

    type: str = PROBLEM_TYPE
    title: str
    status: int
    detail: str = ""
    errors: list[FieldProblem] = []


TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
}


class ApiError(Exception):
    """Raised by an endpoint; the API turns it into a problem document."""

    def __init__(
        self, status: int, detail: str = "", *, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors or []


def problem_response(
    status: int,
    detail: str = "",
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JsonResponse:
    body = {
        "type": PROBLEM_TYPE,
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "errors": errors or [],
    }
    response = JsonResponse(body, status=status, content_type=CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def form_errors(
    form: forms.BaseForm | forms.BaseFormSet, rename: dict[str, str] | None = None, *, at: str = ""
) -> list[dict[str, Any]]:
    """The form's errors, each with the API name of its field (None: the whole request)."""
    rename = rename or {}
    found: list[dict[str, Any]] = []
    if isinstance(form, forms.BaseFormSet):
        # The whole formset first: its clean() adds errors to rows (a repeated server).
        form.full_clean()
        for index, row in enumerate(form.forms):
            found += form_errors(row, rename, at=f"{at}[{index}]")
        for message in form.non_form_errors():
            found.append({"field": at or None, "message": message})
        return found
    for name, messages in form.errors.items():
        if name == forms.forms.NON_FIELD_ERRORS:
            field = at or None
        else:
            field = rename.get(name, name)
            field = f"{at}.{field}" if at else field
        found += [{"field": field, "message": message} for message in messages]
    return found


def invalid(errors: list[dict[str, Any]]) -> ApiError:
    first = errors[0]["message"] if errors else "The request is not valid."
    return ApiError(422, first, errors=errors)
