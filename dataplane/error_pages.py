"""A listener's own pages for the answers the node gives when no backend can (issue 20).

An HTTP, HTTPS or QUIC listener may carry a page for 502 Bad Gateway, 503 Service Unavailable
and 504 Gateway Timeout, and a "maintenance" page: the 503 served instead of the 503 page while
every server of the group a request is routed to is in Maintenance. The pages are compiled once
per snapshot into ready response bytes; only the Date line is filled in per answer.

Only the node's own answers are replaced: a 502, 503 or 504 a backend sends is passed through
as it is, since it is the application's answer. Every other answer of the node's own (400, 408,
429...) keeps its plain-text body. A listener without pages has no ErrorPages at all (its
ListenerSettings.error_pages is None): the proxy's rejection path tests that one attribute.

An HTTP/2 or HTTP/3 stream gets the same answer as HEADERS and DATA: its exchange hands the head
to the codec as fields (dropping the Connection field, which those protocols do not carry) and
the body as data (dataplane.protocols.streams).
"""

from __future__ import annotations

from dataplane.config import ErrorPage

# The status line of each page; "maintenance" is a 503.
_STATUS_LINES = {
    "502": b"HTTP/1.1 502 Bad Gateway\r\n",
    "503": b"HTTP/1.1 503 Service Unavailable\r\n",
    "504": b"HTTP/1.1 504 Gateway Timeout\r\n",
    "maintenance": b"HTTP/1.1 503 Service Unavailable\r\n",
}
# The bodies are UTF-8 text (the schema holds them as str); JSON has no charset parameter
# (RFC 8259 section 11).
_CONTENT_TYPES = {
    "text/html": b"text/html; charset=utf-8",
    "text/plain": b"text/plain; charset=utf-8",
    "application/json": b"application/json",
}


class CompiledPage:
    """One page as response bytes: the head up to its Date line, and the body."""

    __slots__ = ("body", "head")

    def __init__(self, page: ErrorPage) -> None:
        self.body = page.body.encode()
        # The node closes the connection after an answer of its own, as it does with its plain
        # ones; an error page must never be cached as the resource's content.
        self.head = (
            _STATUS_LINES[page.status]
            + b"Content-Type: %s\r\n" % _CONTENT_TYPES[page.content_type]
            + b"Content-Length: %d\r\n" % len(self.body)
            + b"Cache-Control: no-store\r\nConnection: close\r\n"
        )

    def response(self, date: bytes, *, head_only: bool) -> tuple[bytes, bytes]:
        """The answer's head (through its blank line) and body; a HEAD request gets no body (the
        head's length still says the body's, RFC 9110 9.3.2)."""
        return self.head + b"Date: %s\r\n\r\n" % date, b"" if head_only else self.body


class ErrorPages:
    """A listener's pages by the status the node answers."""

    __slots__ = ("maintenance", "pages")

    def __init__(self, pages: tuple[ErrorPage, ...]) -> None:
        compiled = {page.status: CompiledPage(page) for page in pages}
        self.pages: dict[int, CompiledPage] = {
            int(status): page for status, page in compiled.items() if status != "maintenance"
        }
        # Without a maintenance page, a group all in Maintenance gets the 503 page (if any).
        self.maintenance: CompiledPage | None = compiled.get("maintenance", self.pages.get(503))

    def page(self, status: int, *, maintenance: bool) -> CompiledPage | None:
        """The page for a status the node answers; None keeps the plain-text answer."""
        if maintenance and status == 503:
            return self.maintenance
        return self.pages.get(status)


def compile_error_pages(pages: tuple[ErrorPage, ...]) -> ErrorPages | None:
    """None for a listener without pages, so the proxy tests one attribute and nothing more."""
    return ErrorPages(pages) if pages else None
