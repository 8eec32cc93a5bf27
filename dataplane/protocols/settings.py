"""One listener generation compiled for the hot path: `ListenerSettings` and its `Route`s.

`ListenerSettings` is everything a connection needs from one listener generation, compiled once
when a snapshot is applied: the scheduler over the server group's backends, persistence, access
control, TLS and the header lines that never change per request. A connection keeps the settings it
started with, so requests in flight finish on the old generation while new ones use the new.

A `Route` is one server group as a listener sends requests to it: its scheduler (with the
listener's algorithm), cookie-persistence tokens and backend TLS context. Every listener has the
route of its default group; an HTTP listener with forwarding rules has one more per group its
rules forward to.

The compiled build makes both extension types (settings.pxd), so the exchange reads a setting as
a C field rather than through a Python attribute lookup on every request.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from dataplane.acl import AccessControl
from dataplane.balancing import Backend, Scheduler, make_scheduler
from dataplane.clientip import ClientIpResolver
from dataplane.config import Listener, Snapshot
from dataplane.error_pages import ErrorPages, compile_error_pages
from dataplane.persistence import CookiePersistence, SourceIpPersistence
from dataplane.proxy_protocol import ProxyHeader
from dataplane.retry import RetryBudget
from dataplane.rules import RuleTable
from dataplane.throttle import QpsLimiter, listener_limiter

if TYPE_CHECKING:
    from dataplane.bandwidth import TokenBucket
    from dataplane.protocols import ServerGroupRuntime
    from dataplane.stats import ListenerStats
    from dataplane.tls import ListenerTls
    from dataplane.upstream import UpstreamPool


CLIENTCERT_HEADERS = (
    b"x-forwarded-clientcert-subjectdn",
    b"x-forwarded-clientcert-issuerdn",
    b"x-forwarded-clientcert-fingerprint",
    b"x-forwarded-clientcert-clientverify",
)


def compile_acl(listener: Listener, snapshot: Snapshot) -> AccessControl | None:
    """The listener's access control, or None when every client is let in (an empty list
    forwards everything, seed 000), so the hot path checks nothing."""
    acl = snapshot.acl(listener.acl.acl_id) if listener.acl.mode != "off" else None
    if acl is None or not acl.entries:
        return None
    return AccessControl(listener.acl.mode, acl.entries)


def managed_headers(
    listener: Listener, snapshot: Snapshot, scheme: bytes
) -> dict[bytes, tuple[bytes, bytes]]:
    """The request headers a listener sets itself (seeds 001, 002), by lowercase name."""
    managed: dict[bytes, tuple[bytes, bytes]] = {}
    if listener.x_forwarded_proto:
        managed[b"x-forwarded-proto"] = (b"X-Forwarded-Proto", scheme)
    if listener.x_forwarded_port:
        managed[b"x-forwarded-port"] = (b"X-Forwarded-Port", str(listener.port).encode())
    if listener.slb_id:
        managed[b"slb-id"] = (b"SLB-ID", snapshot.instance_id.encode())
    if listener.slb_ip:
        managed[b"slb-ip"] = (b"SLB-IP", snapshot.bind_address.encode())
    if listener.x_forwarded_elb_ip:
        # Seed 002 "Transfer Load Balancer EIP": the address the listener is bound on.
        managed[b"x-forwarded-elb-ip"] = (b"X-Forwarded-ELB-IP", snapshot.bind_address.encode())
    return managed


class Route:
    """One server group as one listener sends requests to it."""

    __slots__ = (
        "backend_context",
        "backends_by_token",
        "group",
        "in_maintenance",
        "outlier",
        "scheduler",
        "server_group_id",
    )

    def __init__(
        self,
        group: ServerGroupRuntime | None,
        algorithm: str,
        cookie_persistence: CookiePersistence | None = None,
    ) -> None:
        self.group = group
        self.server_group_id = group.config.id if group is not None else None
        backends = group.backends if group is not None else []
        self.scheduler: Scheduler | None = (
            make_scheduler(
                algorithm, backends, slow_start=group.slow_start if group is not None else None
            )
            if backends
            else None
        )
        self.backend_context = group.backend_context if group is not None else None
        # The group's passive health checks: proxies report each outcome to it when set.
        self.outlier = group.outlier if group is not None else None
        # Every server of the group in Maintenance: the node's 503 is the maintenance page
        # (dataplane.error_pages). States change only with a snapshot, so this is settled here.
        self.in_maintenance = bool(backends) and all(b.state == "maintenance" for b in backends)
        self.backends_by_token: dict[str, Backend] = (
            cookie_persistence.index(backends) if cookie_persistence is not None else {}
        )

    def pick(self, client_ip: str | None, exclude: Backend | None = None) -> Backend | None:
        scheduler = self.scheduler
        if scheduler is None:
            return None
        return scheduler.pick(client_ip, exclude)


class ListenerSettings:
    """One listener generation, compiled for the hot path."""

    __slots__ = (
        "acl",
        "allow_brotli",
        "alt_svc",
        "bucket",
        "client_ip",
        "clientcert",
        "compress",
        "cookie_persistence",
        "drop_headers",
        "error_pages",
        "group",
        "grpc",
        "http2",
        "idle_timeout",
        "listener",
        "pool",
        "proxy_header",
        "request_timeout",
        "response_timeout",
        "retries",
        "retry_budget",
        "route",
        "routes",
        "rules",
        "scheme",
        "source_persistence",
        "srcport",
        "static_fields",
        "static_headers",
        "stats",
        "throttle",
        "tls",
        "x_forwarded_host",
        "xff_mode",
    )

    def __init__(
        self,
        listener: Listener,
        snapshot: Snapshot,
        *,
        group: ServerGroupRuntime | None,
        tls: ListenerTls | None,
        pool: UpstreamPool,
        stats: ListenerStats,
        bucket: TokenBucket | None = None,
        alt_svc: bytes | None = None,
        rule_groups: Mapping[str, ServerGroupRuntime] | None = None,
    ) -> None:
        """Compile one listener generation; `rule_groups` are the runtimes of the groups its
        forwarding rules name (a group missing there serves nothing: 503). Raises ValueError
        when a group's backend TLS context could not be built."""
        self.listener = listener
        self.group = group
        self.tls = tls
        self.pool = pool
        self.stats = stats
        self.idle_timeout = float(listener.idle_timeout)
        self.request_timeout = float(listener.request_timeout)
        self.response_timeout = float(listener.response_timeout)
        # Seed 003: HTTP/2 (ALPN h2) on HTTPS listeners; a gRPC group takes HTTP/2 streams as
        # they are, while HTTP and HTTPS groups get each stream as an HTTP/1.1 request.
        self.http2 = listener.http2
        self.grpc = group is not None and group.config.backend_protocol == "grpc"
        # HTTP/3 requests are https too: their URL scheme is what backends build links from.
        self.scheme = b"http" if listener.protocol == "http" else b"https"
        # Seed 001 compression: "gzip" is seed 000's GZIP only, "brotli_gzip" prefers Brotli.
        self.compress = listener.compression != "off"
        self.allow_brotli = listener.compression == "brotli_gzip"
        # Seed 000 bandwidth: the listener's bucket, shared by all its connections.
        self.bucket = bucket
        # Seed 001 QUIC upgrade: the Alt-Svc header line an HTTPS listener adds.
        self.alt_svc = b"Alt-Svc: %s\r\n" % alt_svc if alt_svc is not None else None
        # Issue 20: the listener's own 502/503/504 and maintenance pages; None without any.
        self.error_pages: ErrorPages | None = compile_error_pages(listener.error_pages)

        # Issue 20 retries (dataplane.retry): tries on another server after the first, within
        # the listener's budget, which its counters carry across generations.
        self.retries = listener.retries
        budget = stats.retry_budget
        if budget is None:
            budget = stats.retry_budget = RetryBudget(listener.retry_budget_percent)
        else:
            budget.percent = listener.retry_budget_percent
        self.retry_budget = budget

        self.acl: AccessControl | None = compile_acl(listener, snapshot)
        trusted = listener.retrieve_client_ip
        self.client_ip: ClientIpResolver | None = (
            ClientIpResolver(trusted.trusted) if trusted.enabled and trusted.trusted else None
        )
        # Seeds 001/003 QPS per client IP, listener-wide (rules carry their own): None costs
        # the proxy one attribute test per request.
        self.throttle: QpsLimiter | None = listener_limiter(listener.qps_per_client_ip)

        persistence = listener.persistence
        self.cookie_persistence: CookiePersistence | None = None
        self.source_persistence: SourceIpPersistence | None = None
        if persistence.mode in ("insert_cookie", "rewrite_cookie"):
            # Keyed by the instance, so every node of the instance issues the same SERVERID.
            self.cookie_persistence = CookiePersistence(
                persistence.mode,
                cookie_name=persistence.cookie_name,
                timeout=persistence.cookie_timeout,
                secret=snapshot.instance_id.encode(),
            )
        elif persistence.mode == "source_ip":
            self.source_persistence = SourceIpPersistence(float(persistence.cookie_timeout))

        # Where requests go: the default group, and (seed 002) the groups rules forward to.
        self.route = self._route(group, listener.scheduler)
        self.rules: RuleTable | None = None
        self.routes: dict[str, Route] = {}
        if listener.forwarding_rules:
            self.rules = RuleTable(listener.forwarding_rules)
            groups = rule_groups or {}
            for group_id in self.rules.server_group_ids:
                self.routes[group_id] = self._route(groups.get(group_id), listener.scheduler)

        # Client IP preservation for TCP listeners: the PROXY protocol header to send first.
        self.proxy_header: ProxyHeader | None = (
            ProxyHeader(listener.proxy_protocol) if listener.proxy_protocol != "off" else None
        )

        self.xff_mode = listener.x_forwarded_for
        self.x_forwarded_host = listener.x_forwarded_host
        self.srcport = listener.x_forwarded_client_srcport
        self.clientcert = (
            tls is not None
            and tls.mutual
            and (
                listener.clientcert_subjectdn
                or listener.clientcert_issuerdn
                or listener.clientcert_fingerprint
                or listener.clientcert_clientverify
            )
        )
        # Headers the dataplane sets itself (seed 001). A client's own copy is dropped, so it
        # cannot forge them; the value here replaces it.
        managed = managed_headers(listener, snapshot, self.scheme)
        drop = set()
        self.static_headers = b"".join(
            b"%s: %s\r\n" % (name, value) for name, value in managed.values()
        )
        # The same headers as HTTP/2 fields, for gRPC streams.
        self.static_fields = tuple((lower, value) for lower, (_, value) in managed.items())
        drop.update(managed)
        if listener.x_forwarded_host:
            drop.add(b"x-forwarded-host")
        if listener.x_forwarded_client_srcport:
            drop.add(b"x-forwarded-client-srcport")
        if self.clientcert:
            drop.update(CLIENTCERT_HEADERS)
        # Lower-case request header names the client may not pass on to the backend.
        self.drop_headers = frozenset(drop)

    def _route(self, group: ServerGroupRuntime | None, algorithm: str) -> Route:
        if group is not None and group.tls_error:
            raise ValueError(f"server group {group.config.id}: {group.tls_error}")
        return Route(group, algorithm, self.cookie_persistence)

    def pick(self, client_ip: str | None, exclude: Backend | None = None) -> Backend | None:
        """A server of the default group (TCP listeners have only that one)."""
        return self.route.pick(client_ip, exclude)
