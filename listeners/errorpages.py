"""The four pages a Layer-7 listener may carry (issue 20), as its details page lists them."""

from __future__ import annotations

from dataclasses import dataclass

from listeners.models import ErrorPage, Listener

# What each page is for, shown beside it.
PURPOSES = {
    ErrorPage.Status.BAD_GATEWAY: "No server could be reached, or one answered with invalid HTTP.",
    ErrorPage.Status.SERVICE_UNAVAILABLE: "No healthy server with a weight above 0.",
    ErrorPage.Status.GATEWAY_TIMEOUT: "The server did not answer within the response timeout.",
    ErrorPage.Status.MAINTENANCE: "Sent as a 503 while every server of the group a request goes "
    "to is in Maintenance; without it, the 503 page is sent.",
}


@dataclass(frozen=True)
class ErrorPageRow:
    """One of the four statuses, with its page if it has one."""

    status: str
    label: str
    purpose: str
    page: ErrorPage | None

    @property
    def size(self) -> int:
        return len(self.page.body.encode()) if self.page is not None else 0


def error_page_rows(listener: Listener) -> list[ErrorPageRow]:
    """The four statuses in order, for the details page (empty for other listeners)."""
    if listener.protocol not in Listener.LAYER7_PROTOCOLS:
        return []
    pages = {page.status: page for page in listener.error_pages.all()}
    return [
        ErrorPageRow(status.value, status.label, PURPOSES[status], pages.get(status.value))
        for status in ErrorPage.Status
    ]
