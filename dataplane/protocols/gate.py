"""The read gate every proxy's client side shares: its backend is read only while the client keeps
up and the listener's bandwidth allows."""

from __future__ import annotations

from dataplane.upstream import Owner


class BackendReadGate(Owner):
    """The client side of a proxied connection, gating reads from its backend.

    The backend is not read while the client's transport buffer is full (`pause_writing`) or
    while the listener's bandwidth bucket is in debt (`_bandwidth_pause`); it is read again only
    once neither holds. Subclasses provide `upstream`, `writing_paused` and `throttled`.

    It is an asyncio protocol by its methods rather than by inheriting asyncio.Protocol, so the
    compiled build (setup.py) can make it and its subclasses extension types; and an upstream
    `Owner`, so that the HTTP exchange built on it gets its backend's response as C calls (a TCP
    relay overrides none of those).
    """

    __slots__ = ()

    def pause_writing(self) -> None:
        self.writing_paused = True
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._read_backend_if_free()

    def _bandwidth_pause(self) -> None:
        self.throttled = True
        upstream = self.upstream
        if upstream is not None and not upstream.closed:
            upstream.transport.pause_reading()

    def _bandwidth_resume(self) -> None:
        self.throttled = False
        self._read_backend_if_free()

    def _read_backend_if_free(self) -> None:
        upstream = self.upstream
        if (
            upstream is not None
            and not upstream.closed
            and not self.writing_paused
            and not self.throttled
        ):
            upstream.transport.resume_reading()
