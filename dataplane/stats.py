"""Per-listener traffic counters, reported by GET /v1/status.

Plain integer attributes bumped from the hot path: no locks (one event loop) and no per-event
allocation. A listener keeps its counters across generations; they reset only when the listener
is removed.
"""

from __future__ import annotations


class ListenerStats:
    __slots__ = (
        "active_connections",
        "bytes_in",
        "bytes_out",
        "denied_connections",
        "requests",
        "responses",
        "total_connections",
    )

    def __init__(self) -> None:
        self.active_connections = 0
        self.total_connections = 0
        self.denied_connections = 0
        # HTTP: requests received; TCP: connections proxied.
        self.requests = 0
        # Bytes received from clients and sent to clients.
        self.bytes_in = 0
        self.bytes_out = 0
        # Indexed by status // 100; slot 0 is unused, so a 5xx lands in responses[5].
        self.responses = [0, 0, 0, 0, 0, 0]

    def as_dict(self) -> dict[str, object]:
        responses = self.responses
        return {
            "active_connections": self.active_connections,
            "total_connections": self.total_connections,
            "denied_connections": self.denied_connections,
            "requests": self.requests,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "responses": {f"{n}xx": responses[n] for n in range(1, 6)},
        }
