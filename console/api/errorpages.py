"""Error pages of an HTTP, HTTPS or QUIC listener (issue 20): one page per status, "502", "503",
"504" or "maintenance", set with PUT and removed with DELETE. The same form as the console's
dialog validates the body, so the messages are the same."""

from __future__ import annotations

from typing import Literal

from django.http import Http404, HttpRequest
from ninja import Router, Schema, Status

from console.api.common import ObjectId, Strict, call_service, validated
from console.api.listeners import _listener, _refuse_if_configuring
from console.api.problems import ApiError, Problem
from listeners import services
from listeners.forms.errorpages import ErrorPageForm
from listeners.models import ErrorPage, Listener

router = Router(tags=["Error pages"])
ERRORS = {400: Problem, 403: Problem, 404: Problem, 409: Problem, 422: Problem}
PAGES = "/instances/{instance_id}/listeners/{listener_id}/error-pages"
PageStatus = Literal["502", "503", "504", "maintenance"]


class ErrorPageIn(Strict):
    """The Set/Edit dialog's fields: at most 64 KiB of UTF-8 text; JSON must parse."""

    content_type: Literal["text/html", "text/plain", "application/json"] = "text/html"
    body: str


class ErrorPageOut(Schema):
    status: str
    label: str
    content_type: str
    body: str
    size_bytes: int


def page_out(page: ErrorPage) -> dict:
    return {
        "status": page.status,
        "label": page.get_status_display(),
        "content_type": page.content_type,
        "body": page.body,
        "size_bytes": len(page.body.encode()),
    }


def _layer7(instance_id: str, listener_id: str) -> Listener:
    listener = _listener(instance_id, listener_id)
    if listener.protocol not in Listener.LAYER7_PROTOCOLS:
        raise Http404("Error pages exist only on HTTP, HTTPS and QUIC listeners")
    return listener


@router.get(PAGES, response={200: list[ErrorPageOut], 404: Problem})
def list_error_pages(request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId):
    """The pages set, in status order; a status without one gets the node's plain answer."""
    return [page_out(page) for page in _layer7(instance_id, listener_id).error_pages.all()]


@router.get(PAGES + "/{status}", response={200: ErrorPageOut, 404: Problem})
def get_error_page(
    request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId, status: PageStatus
):
    page = _layer7(instance_id, listener_id).error_pages.filter(status=status).first()
    if page is None:
        raise ApiError(404, f"No {ErrorPage.Status(status).label} page is set.")
    return page_out(page)


@router.put(PAGES + "/{status}", response={200: ErrorPageOut, **ERRORS})
def put_error_page(
    request: HttpRequest,
    instance_id: ObjectId,
    listener_id: ObjectId,
    status: PageStatus,
    payload: ErrorPageIn,
):
    """Set or replace the page for one status."""
    listener = _layer7(instance_id, listener_id)
    _refuse_if_configuring(listener, "changing its error pages")
    form = validated(ErrorPageForm(payload.model_dump()))
    page = call_service(
        services.set_error_page,
        listener_id=listener.pk,
        status=status,
        content_type=form.cleaned_data["content_type"],
        body=form.cleaned_data["body"],
    )
    return page_out(page)


@router.delete(PAGES + "/{status}", response={204: None, **ERRORS})
def delete_error_page(
    request: HttpRequest, instance_id: ObjectId, listener_id: ObjectId, status: PageStatus
):
    """Go back to the node's plain answer for one status."""
    listener = _layer7(instance_id, listener_id)
    if not listener.error_pages.filter(status=status).exists():
        raise ApiError(404, f"No {ErrorPage.Status(status).label} page is set.")
    _refuse_if_configuring(listener, "changing its error pages")
    call_service(services.remove_error_page, listener_id=listener.pk, status=status)
    return Status(204, None)
