"""Listener protocols: HTTP and HTTPS (`exchange`, `http`, `h2`, `streams`), QUIC (`quic`), TCP
and TCP SSL (`tcp`), UDP (`udp`), gRPC backends (`grpc`).

Each listener generation is compiled once into `ListenerSettings` with its `Route`s
(dataplane.protocols.settings, re-exported here); a protocol gets them through the
`ListenerHandle` the node gives it, and never imports the node.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from dataplane.balancing import Backend
from dataplane.config import ServerGroup
from dataplane.protocols.handle import ListenerHandle
from dataplane.protocols.settings import (
    CLIENTCERT_HEADERS,
    ListenerSettings,
    Route,
    compile_acl,
    managed_headers,
)

if TYPE_CHECKING:
    from dataplane.health import HealthChecker
    from dataplane.outlier import OutlierDetector
    from dataplane.slowstart import SlowStart

__all__ = [
    "CLIENTCERT_HEADERS",
    "HOP_BY_HOP",
    "ListenerHandle",
    "ListenerSettings",
    "Route",
    "ServerGroupRuntime",
    "compile_acl",
    "managed_headers",
]


# Response fields that belong to one HTTP/1.1 connection; HTTP/2 and HTTP/3 carry none of them
# (RFC 9113 8.2.2, RFC 9114 4.2).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


class ServerGroupRuntime:
    """The live backends of one server group, shared by every listener that uses the group."""

    __slots__ = (
        "backend_context",
        "backend_tls",
        "backends",
        "ca_pem",
        "checker",
        "config",
        "outlier",
        "slow_start",
        "tls_error",
    )

    def __init__(
        self,
        config: ServerGroup,
        backends: list[Backend],
        slow_start: SlowStart | None = None,
        *,
        backend_context: ssl.SSLContext | None = None,
        ca_pem: str | None = None,
        tls_error: str = "",
    ) -> None:
        self.config = config
        self.backends = backends
        self.backend_tls = config.backend_protocol == "https"
        # The TLS context for HTTPS servers (verifying against the group's CA when it has one);
        # None for plain HTTP. `tls_error` says why it could not be built; listeners then fail.
        self.backend_context = backend_context
        self.ca_pem = ca_pem
        self.tls_error = tls_error
        self.checker: HealthChecker | None = None
        # Passive health checks (dataplane.outlier), None when the group has them off: shared by
        # every listener of the group, as the servers' health is.
        self.outlier: OutlierDetector | None = None
        # Seed 002: shared by every listener of the group, so they all see one ramp per server.
        self.slow_start = slow_start
