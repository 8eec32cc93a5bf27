"""The runtime of one dataplane node: applies snapshots to its listeners without dropping traffic.

Applying compares each listener, together with everything it references (server group,
certificates, TLS policy, ACL), with what is running:
- unchanged listeners are not touched: same sockets, same connections, same health checkers;
- changed listeners get a new `ListenerSettings`. New connections and new requests use it, requests
  in flight finish on the old one. The listening socket is kept when protocol, address and port are
  the same. A TLS listener whose front context changed gets a new asyncio server on a duplicate of
  the same socket (the policy and CA live in the context the server was created with), and the old
  server is closed without closing its connections;
- stopped and removed listeners close their socket and cut their open connections (seed 003);
- a listener that cannot start (port in use, a certificate OpenSSL refuses) is reported `failed`
  with a reason, and the others still apply. The node tries it again on its own, 0.5 s later, then
  doubling up to every 8 s, until it starts (a port freed, a file readable again): nothing needs
  to push the same snapshot again. Only a failure the snapshot itself decides (no bandwidth left
  for the listener) waits for the next snapshot. A new snapshot starts every backoff afresh.

Server groups are shared by the listeners that use them. A group whose configuration is unchanged
keeps its backends and health checker; a changed group starts fresh but keeps the health of servers
that are still there when its health check did not change, and their slow-start ramps. With slow
start on, a server that joins a running group (or recovers) ramps up over the group's duration.
Its passive health checks (dataplane.outlier) keep their counts and any ejection under way.

A server that is draining or in maintenance gets no new request or connection (its group's
schedulers and cookie index leave it out) while its health checks go on. What remains on a
draining server is closed at its drain deadline, on a server in maintenance when the snapshot is
applied: its HTTP connections in the node's pool, lent or idle, the gRPC connections client
connections hold to it, and the TCP connections proxied to it. The deadline is wall-clock time,
so a node restarted mid-drain keeps it.

UDP and QUIC listeners live on a UDP socket (`datagram`): a changed one adopts its new settings in
place, keeping its sessions and connections. A listener's bandwidth bucket outlives generations
while its limit stays the same, so a reload cannot hand out a fresh burst.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dataplane.accesslog import AccessLogs, AccessLogWriter, http_protocol
from dataplane.balancing import Backend
from dataplane.bandwidth import TokenBucket, burst_for, mbit_to_bytes_per_s
from dataplane.config import Listener, ServerGroup, Snapshot
from dataplane.descriptors import EXHAUSTED, DescriptorReserve
from dataplane.health import HealthChecker, HealthCheckSpec, server_report
from dataplane.outlier import OutlierDetector, passive_report
from dataplane.protocols import ListenerHandle, ListenerSettings, ServerGroupRuntime
from dataplane.protocols.quic import QuicListener, alt_svc_value, quic_configuration
from dataplane.protocols.tcp import TcpProxy
from dataplane.protocols.tls_layer import HANDSHAKE_TIMEOUT as TLS_HANDSHAKE_TIMEOUT
from dataplane.protocols.tls_layer import TlsLayer
from dataplane.protocols.udp import UdpListener, UdpSettings, bind_udp, start_udp_listener
from dataplane.slowstart import SlowStart
from dataplane.stats import count_handshakes
from dataplane.throttle import carry_over
from dataplane.tls import (
    TlsContextCache,
    TlsError,
    backend_client_context,
    backend_verified_context,
)
from dataplane.udp_health import UdpHealthCheckSpec, udp_probe
from dataplane.upstream import UpstreamPool

if TYPE_CHECKING:
    import ssl

log = logging.getLogger(__name__)
# aioquic logs every connection and stream at INFO; a busy listener would drown the node's own log.
logging.getLogger("quic").setLevel(logging.WARNING)

LISTEN_BACKLOG = 1024
# Backoff of a failed listener's retries: the first soon (a port freed a moment later), then
# doubling, capped so that a listener serves again within 8 s of its cause going away. A retry is
# a bind() or a context build, cheap enough to repeat that often for as long as it takes.
RETRY_FIRST = 0.5
RETRY_MAX = 8.0
# How often the latencies the proxies gathered are counted into their histograms.
FOLD_INTERVAL = 1.0


class StaleGeneration(Exception):
    """A snapshot older than the applied one."""


class GenerationConflict(Exception):
    """The applied generation again, but with different content."""


class _Retry:
    """When a failed listener is tried next (time.monotonic()), and the wait after that."""

    __slots__ = ("delay", "due")

    def __init__(self, delay: float, due: float) -> None:
        self.delay = delay
        self.due = due


class ListenerRuntime(ListenerHandle):
    """One listener on this node: its socket, server, settings, connections and counters. Its
    protocols see only the ListenerHandle part."""

    __slots__ = (
        "bind_key",
        "bucket",
        "config",
        "datagram",
        "fingerprint",
        "group",
        "id",
        "permanent",
        "reason",
        "server",
        "server_context",
        "sock",
        "status",
    )

    def __init__(self, listener_id: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.id = listener_id
        self.config: Listener | None = None
        self.fingerprint: tuple | None = None
        self.status = "stopped"
        self.reason = ""
        # A failure only a new snapshot can cure: not retried.
        self.permanent = False
        self.sock: socket.socket | None = None
        self.server: asyncio.AbstractServer | None = None
        self.server_context: ssl.SSLContext | None = None
        self.bind_key: tuple[str, str, int] | None = None
        # UDP and QUIC listeners: the protocol serving the UDP socket.
        self.datagram: UdpListener | QuicListener | None = None
        # The server group runtime serving this listener (for status).
        self.group: ServerGroupRuntime | None = None
        # The bandwidth bucket, kept across generations while the limit is unchanged.
        self.bucket: TokenBucket | None = None

    def close_socket(self) -> None:
        """Stop accepting: close the server and the listening socket."""
        if self.datagram is not None:
            # Datagram listeners have no accept: closing them ends their sessions too.
            self.datagram.close()
            self.datagram = None
        if self.server is not None:
            self.server.close()
            self.server = None
        self.server_context = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.bind_key = None

    def stop(self, status: str = "stopped", reason: str = "", *, permanent: bool = False) -> None:
        """Close the socket and cut every open connection (seed 003)."""
        self.close_socket()
        self.settings = None
        self.group = None
        for connection in list(self.connections):
            connection.abort()
        self.status = status
        self.reason = reason
        self.permanent = permanent


def _fail(runtime: ListenerRuntime, reason: str) -> None:
    """Stop a listener that cannot start. The log says so once per reason: its retries repeat
    the same failure every few seconds until its cause goes away."""
    again = runtime.status == "failed" and runtime.reason == reason
    log.log(
        logging.DEBUG if again else logging.WARNING,
        "listener %s failed: %s",
        runtime.id,
        reason,
        extra={"listener_id": runtime.id},
    )
    runtime.stop("failed", reason)


def _contexts(front: ssl.SSLContext) -> list[ssl.SSLContext]:
    """A listener's front context and the per-certificate contexts its SNI callback swaps in
    (found in the callback's closure), so a failed handshake on any of them is counted."""
    contexts = [front]
    callback = front.sni_callback
    for cell in getattr(callback, "__closure__", None) or ():
        value = cell.cell_contents
        if isinstance(value, dict):
            contexts.extend(v for v in value.values() if isinstance(v, type(front)))
    return contexts


def _bind_key(listener: Listener, snapshot: Snapshot) -> tuple[str, str, int]:
    return (listener.protocol, snapshot.bind_address, listener.port)


def _bind(address: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Worker processes each bind the same port; the kernel spreads new connections.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_reason(exc: OSError, address: str, port: int) -> str:
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} already in use"
    if exc.errno == errno.EACCES:
        return f"permission denied to listen on port {port}"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"address {address} is not available on this host"
    return f"cannot listen on {address}:{port}: {exc.strerror or exc}"


def _alt_svc(listener: Listener, snapshot: Snapshot) -> bytes | None:
    """Seed 001 QUIC upgrade: the Alt-Svc value an HTTPS listener advertises, if any.

    Only a running QUIC listener is advertised: clients would otherwise try a port nobody serves.
    """
    quic = snapshot.listener(listener.quic_listener_id)
    if quic is None or not quic.enabled:
        return None
    return alt_svc_value(quic.port)


def _group_ids(listener: Listener) -> list[str]:
    """The server groups a listener sends to: its default group, then its rules' groups."""
    ids = [listener.server_group_id] if listener.server_group_id is not None else []
    for rule in listener.forwarding_rules:
        group_id = rule.action.server_group_id
        if rule.action.type == "forward" and group_id is not None and group_id not in ids:
            ids.append(group_id)
    return ids


def _health_spec(group: ServerGroup) -> HealthCheckSpec | UdpHealthCheckSpec:
    check = group.health_check
    if check.protocol == "udp":
        return UdpHealthCheckSpec(
            port=check.port,
            request=check.udp_request.encode("ascii"),
            expected=check.udp_expected.encode("ascii"),
            interval=float(check.interval),
            timeout=float(check.timeout),
            healthy_threshold=check.healthy_threshold,
            unhealthy_threshold=check.unhealthy_threshold,
        )
    return HealthCheckSpec(
        protocol=check.protocol,
        port=check.port,
        domain=check.domain,
        path=check.path,
        interval=float(check.interval),
        timeout=float(check.timeout),
        healthy_threshold=check.healthy_threshold,
        unhealthy_threshold=check.unhealthy_threshold,
        expected_codes=tuple(check.expected_codes) or ("http_2xx", "http_3xx"),
    )


class Node:
    """Applies snapshots and reports status; one per dataplane process."""

    def __init__(
        self,
        *,
        reuse_port: bool = False,
        clock: Callable[[], float] = time.monotonic,
        bandwidth_share: float = 1.0,
        access_log: AccessLogWriter | None = None,
    ) -> None:
        # True in a worker process: its listening sockets share their ports with the other workers.
        self.reuse_port = reuse_port
        # The part of each bandwidth limit this process enforces: 1/N in each of N workers, whose
        # buckets are their own, so that together they keep to the limit.
        if not 0.0 < bandwidth_share <= 1.0:
            raise ValueError(f"bandwidth share must be in (0, 1], not {bandwidth_share}")
        self.bandwidth_share = bandwidth_share
        # Seed 000: the listeners without a limit share what the others' limits leave of the
        # instance's bandwidth. One bucket, changed in place, so running listeners follow it.
        self.shared_bucket: TokenBucket | None = None
        # The clock slow-start ramps are measured on (a test drives it by hand).
        self.clock = clock
        self.snapshot: Snapshot | None = None
        self.generation = 0
        self.listeners: dict[str, ListenerRuntime] = {}
        self.groups: dict[str, ServerGroupRuntime] = {}
        self.pool = UpstreamPool()
        self.tls_cache = TlsContextCache()
        self.draining = False
        self.started = time.time()
        self._lock = asyncio.Lock()
        # Failed listeners waiting for their next try, and the task that tries them.
        self._retries: dict[str, _Retry] = {}
        self._healer: asyncio.Task[None] | None = None
        # Out of file descriptors, listeners stop accepting for a while (dataplane.descriptors).
        self.descriptors = DescriptorReserve(
            stop_accepting=self._stop_accepting, start_accepting=self._start_accepting
        )
        self._resuming: asyncio.Task[None] | None = None
        # Listeners' access logs; `access_log` writes their lines to a file and/or stdout.
        self.access_logs = AccessLogs(access_log)
        # Counts the latencies gathered by the hot path every second (dataplane.stats).
        self._folding: asyncio.TimerHandle | None = None
        # Draining servers: when what remains on each is closed, by server id.
        self._drain_cuts: dict[str, asyncio.TimerHandle] = {}

    # -- applying --------------------------------------------------------------------------------

    async def apply(self, snapshot: Snapshot) -> dict[str, dict[str, str]]:
        """Apply a validated snapshot; returns per-listener status and reason.

        Raises StaleGeneration for an older generation and GenerationConflict for the applied
        generation with other content. Re-sending the applied snapshot is idempotent, and retries
        listeners that failed (a port that has become free starts now). Listeners that still fail
        are retried in the background with backoff.
        """
        async with self._lock:
            if snapshot.generation < self.generation:
                raise StaleGeneration(
                    f"generation {snapshot.generation} is older than the applied "
                    f"generation {self.generation}"
                )
            if self.snapshot is not None and snapshot.generation == self.generation:
                if snapshot != self.snapshot:
                    raise GenerationConflict(
                        f"generation {snapshot.generation} is already applied with other content"
                    )
                await self._retry_failed()
                self._plan_retries()
                return self.results()
            started = time.perf_counter()
            if self._folding is None and not self.draining:
                self._folding = asyncio.get_running_loop().call_later(FOLD_INTERVAL, self._fold)
            await self._apply(snapshot)
            log.info(
                "applied generation %d in %.1f ms",
                snapshot.generation,
                (time.perf_counter() - started) * 1000,
                extra={"generation": snapshot.generation},
            )
            self._plan_retries()
            return self.results()

    def results(self) -> dict[str, dict[str, str]]:
        return {
            listener_id: {"status": runtime.status, "reason": runtime.reason}
            for listener_id, runtime in self.listeners.items()
        }

    async def _apply(self, snapshot: Snapshot) -> None:
        loop = asyncio.get_running_loop()
        groups = self._plan_groups(snapshot)
        self._share_remainder(snapshot)

        # Free sockets first, so a port moving between listeners can be bound again below.
        wanted = {listener.id: listener for listener in snapshot.listeners}
        for listener_id in list(self.listeners):
            if listener_id not in wanted:
                self.listeners.pop(listener_id).stop()
        for listener in snapshot.listeners:
            runtime = self.listeners.get(listener.id)
            if runtime is None:
                continue
            if not listener.enabled:
                runtime.stop()
            elif runtime.bind_key is not None and runtime.bind_key != _bind_key(listener, snapshot):
                runtime.stop()

        self.tls_cache.begin()
        for listener in snapshot.listeners:
            runtime = self.listeners.get(listener.id)
            if runtime is None:
                runtime = self.listeners[listener.id] = ListenerRuntime(listener.id, loop)
            fingerprint = self._fingerprint(listener, snapshot)
            runtime.access_log = (
                self.access_logs.listener(listener.id, listener.protocol)
                if listener.access_log
                else None
            )
            if not listener.enabled:
                runtime.config = listener
                runtime.fingerprint = fingerprint
                continue
            if (
                runtime.status == "running"
                and runtime.fingerprint == fingerprint
                and runtime.bucket is self._bucket(runtime, listener)
                and not self._no_bandwidth_share(listener, snapshot)
            ):
                if listener.is_tls:
                    # Untouched, but its contexts must stay cached for the next change.
                    self.tls_cache.listener_tls(listener, snapshot)
                continue
            await self._start_listener(runtime, listener, snapshot, groups, fingerprint)
        self.tls_cache.end()
        self.access_logs.forget(wanted)

        # Groups no listener uses any more stop checking; new ones start.
        for group_id, group in self.groups.items():
            if groups.get(group_id) is not group and group.outlier is not None:
                group.outlier.stop()
            if groups.get(group_id) is not group and group.checker is not None:
                await group.checker.stop()
        for group in groups.values():
            if group.checker is not None:
                group.checker.start()
        self.groups = groups
        self.snapshot = snapshot
        self.generation = snapshot.generation
        self._plan_server_states()

    async def _retry_failed(self, due: set[str] | None = None) -> None:
        """Start failed listeners again: all of them, or only those in ``due``."""
        snapshot = self.snapshot
        if snapshot is None:
            return
        failed = {
            listener_id
            for listener_id, runtime in self.listeners.items()
            if runtime.status == "failed"
        }
        retry = [
            listener
            for listener in snapshot.listeners
            if listener.enabled and listener.id in failed and (due is None or listener.id in due)
        ]
        await self._rebuild_broken_groups(retry)
        retry_ids = {listener.id for listener in retry}
        self.tls_cache.begin()
        for listener in snapshot.listeners:
            runtime = self.listeners.get(listener.id)
            if runtime is None or not listener.enabled:
                continue
            if listener.id in retry_ids:
                fingerprint = self._fingerprint(listener, snapshot)
                await self._start_listener(runtime, listener, snapshot, self.groups, fingerprint)
            elif listener.is_tls and runtime.status == "running":
                # Untouched, but its contexts must stay cached for the next change.
                self.tls_cache.listener_tls(listener, snapshot)
        self.tls_cache.end()

    async def _rebuild_broken_groups(self, listeners: list[Listener]) -> None:
        """Build again the server groups whose backend TLS context could not be built (a CA store
        unreadable for a moment), so the listeners that use them can start on retry."""
        for group_id in dict.fromkeys(g for listener in listeners for g in _group_ids(listener)):
            group = self.groups.get(group_id)
            if group is None or not group.tls_error:
                continue
            fresh = self._build_group(group.config, group, group.ca_pem)
            if fresh.tls_error:
                continue
            # No listener runs on a broken group, so it can be swapped without a new snapshot.
            if group.outlier is not None:
                group.outlier.stop()
            if group.checker is not None:
                await group.checker.stop()
            if fresh.checker is not None:
                fresh.checker.start()
            self.groups[group_id] = fresh

    # -- healing ---------------------------------------------------------------------------------

    def _plan_retries(self) -> None:
        """After a snapshot: every listener that failed for a reason that can pass gets a first
        retry soon (a new snapshot starts its backoff afresh)."""
        now = time.monotonic()
        self._retries = {
            listener_id: _Retry(RETRY_FIRST, now + RETRY_FIRST)
            for listener_id, runtime in self.listeners.items()
            if runtime.status == "failed" and not runtime.permanent
        }
        # Called under the lock, so the healer is asleep or waiting for the lock: safe to cancel.
        if self._healer is not None:
            self._healer.cancel()
            self._healer = None
        if self._retries:
            self._healer = asyncio.get_running_loop().create_task(self._heal())

    async def _heal(self) -> None:
        """Retry failed listeners as their backoff comes due, until none is left failing."""
        while self._retries:
            next_due = min(retry.due for retry in self._retries.values())
            await asyncio.sleep(max(0.0, next_due - time.monotonic()))
            async with self._lock:
                due = {lid for lid, retry in self._retries.items() if retry.due <= time.monotonic()}
                try:
                    await self._retry_failed(due)
                except Exception:
                    # The healer must outlive a surprise: log it and try again after the backoff.
                    log.exception("retrying failed listeners")
                for listener_id in due:
                    runtime = self.listeners.get(listener_id)
                    retry = self._retries[listener_id]
                    if runtime is not None and runtime.status == "failed" and not runtime.permanent:
                        retry.delay = min(retry.delay * 2, RETRY_MAX)
                        retry.due = time.monotonic() + retry.delay
                        continue
                    del self._retries[listener_id]
                    if runtime is not None and runtime.status == "running":
                        log.info(
                            "listener %s recovered",
                            listener_id,
                            extra={"listener_id": listener_id},
                        )
        if self._healer is asyncio.current_task():
            self._healer = None

    def _plan_groups(self, snapshot: Snapshot) -> dict[str, ServerGroupRuntime]:
        needed: set[str] = set()
        for listener in snapshot.listeners:
            if listener.enabled:
                needed.update(_group_ids(listener))
        groups: dict[str, ServerGroupRuntime] = {}
        for group_id in needed:
            config = snapshot.server_group(group_id)
            if config is None:
                continue
            ca = snapshot.ca_certificate(config.backend_ca_certificate_id)
            ca_pem = ca.certificate_pem if ca is not None else None
            old = self.groups.get(group_id)
            if old is not None and old.config == config and old.ca_pem == ca_pem:
                groups[group_id] = old
            else:
                groups[group_id] = self._build_group(config, old, ca_pem)
        return groups

    def _build_group(
        self, config: ServerGroup, old: ServerGroupRuntime | None, ca_pem: str | None = None
    ) -> ServerGroupRuntime:
        backend_context = None
        tls_error = ""
        if config.backend_protocol == "https":
            try:
                backend_context = (
                    backend_verified_context(ca_pem)
                    if ca_pem is not None
                    else backend_client_context()
                )
            except TlsError as exc:
                tls_error = str(exc)
        backends = [
            Backend(
                server.id,
                server.address,
                server.port,
                server.weight,
                state=server.state,
                drain_deadline=server.drain_deadline,
            )
            for server in config.servers
        ]
        slow_start = (
            SlowStart(config.slow_start_duration, clock=self.clock) if config.slow_start else None
        )
        if old is not None:
            same_check = old.config.health_check == config.health_check
            previous = {(b.id, b.address, b.port): b for b in old.backends}
            for backend in backends:
                before = previous.get((backend.id, backend.address, backend.port))
                if before is None:
                    if slow_start is not None:
                        # Joins a group that already serves: it ramps up (seed 002).
                        slow_start.begin(backend)
                elif same_check:
                    backend.adopt_state(before)
                else:
                    # A new health check judges afresh, but a ramp under way goes on.
                    backend.ramp_started = before.ramp_started
                if (
                    before is not None
                    and slow_start is not None
                    and before.state != "enabled"
                    and backend.state == "enabled"
                ):
                    # Back from draining or maintenance: it ramps up like a server that joins.
                    slow_start.begin(backend)
        group = ServerGroupRuntime(
            config,
            backends,
            slow_start,
            backend_context=backend_context,
            ca_pem=ca_pem,
            tls_error=tls_error,
        )
        if config.health_check.enabled and backends:
            spec = _health_spec(config)
            on_change = slow_start.on_health_change if slow_start is not None else None
            if isinstance(spec, UdpHealthCheckSpec):
                group.checker = HealthChecker(
                    spec,  # type: ignore[arg-type]
                    backends,
                    on_change=on_change,
                    probe=udp_probe,
                )
            else:
                group.checker = HealthChecker(spec, backends, on_change=on_change)
            if old is not None and same_check and old.checker is not None:
                # Same check: the reasons, last changes and timelines go on too.
                group.checker.adopt(old.checker)
        if config.passive_health_check.enabled and config.backend_protocol != "udp":
            group.outlier = OutlierDetector(config.passive_health_check, backends, clock=self.clock)
            if old is not None and old.outlier is not None:
                # An ejection under way keeps its time of return across a reload.
                group.outlier.adopt(old.outlier)
        return group

    # -- server states ---------------------------------------------------------------------------

    def _plan_server_states(self) -> None:
        """After a snapshot: close at once what remains on servers in maintenance and on draining
        servers past their deadline; time the cut of the other draining servers."""
        for handle in self._drain_cuts.values():
            handle.cancel()
        self._drain_cuts = {}
        backends = [backend for group in self.groups.values() for backend in group.backends]
        # One address may be a server of two groups; while one of them serves, its connections
        # may be that group's, so they are not cut.
        serving = {(b.address, b.port) for b in backends if b.state == "enabled"}
        loop = asyncio.get_running_loop()
        now = time.time()
        for backend in backends:
            if backend.state == "enabled" or (backend.address, backend.port) in serving:
                continue
            # Nothing new goes to it: its idle keep-alive connections serve no one any more.
            self.pool.close_idle(backend.address, backend.port)
            left = 0.0
            if backend.state == "draining" and backend.drain_deadline is not None:
                left = backend.drain_deadline - now
            if left > 0:
                self._drain_cuts[backend.id] = loop.call_later(left, self._cut_server, backend)
            else:
                self._cut_server(backend)

    def _cut_server(self, backend: Backend) -> None:
        """Close every connection still open to a server out of service."""
        self._drain_cuts.pop(backend.id, None)
        cut = self.pool.cut(backend.address, backend.port)
        for runtime in self.listeners.values():
            for connection in list(runtime.connections):
                chosen = getattr(connection, "backend", None)
                if isinstance(connection, TcpProxy) and chosen is not None:
                    if chosen.id == backend.id:
                        connection.abort("server_out_of_service")
                        cut += 1
                # gRPC: an HTTP/2 client connection keeps its own connections to backends
                # (dataplane.protocols.grpc), outside the pool.
                upstreams = getattr(connection, "upstreams", None)
                if upstreams:
                    upstream = upstreams.get((backend.address, backend.port))
                    if upstream is not None:
                        cut += upstream.cut()
            if isinstance(runtime.datagram, UdpListener):
                cut += runtime.datagram.close_sessions_to(backend.id)
        if cut:
            log.info(
                "closed %d connections to server %s (%s)",
                cut,
                backend.id,
                backend.state,
                extra={"server_id": backend.id},
            )

    def _share_remainder(self, snapshot: Snapshot) -> None:
        """Size the bucket of the listeners without a limit to what the others leave."""
        total = snapshot.bandwidth_mbit
        allocated = sum(listener.bandwidth_mbit or 0 for listener in snapshot.listeners)
        if total is None or allocated >= total:
            # No instance bandwidth: unlimited. Nothing left: those listeners are inaccessible.
            self.shared_bucket = None
            return
        rate = mbit_to_bytes_per_s(total - allocated) * self.bandwidth_share
        if self.shared_bucket is None:
            self.shared_bucket = TokenBucket(rate, burst_for(rate))
        elif self.shared_bucket.rate_bytes_per_s != rate:
            self.shared_bucket.set_rate(rate)

    def _no_bandwidth_share(self, listener: Listener, snapshot: Snapshot) -> str:
        """Why a listener without a limit of its own gets no bandwidth, or "" when it gets some.

        Seed 000: "you allocate 5 Mbit/s to Listener A and none to Listener B: Listener B is
        inaccessible". Those listeners' share is the shared bucket, which `_share_remainder`
        leaves out exactly when the instance's bandwidth is all allocated.
        """
        total = snapshot.bandwidth_mbit
        if total is None or listener.bandwidth_mbit is not None or self.shared_bucket is not None:
            return ""
        return (
            f"inaccessible: the other listeners' bandwidth limits take all of the instance's "
            f"{total} Mbit/s, and this listener has no limit of its own"
        )

    def _bucket(self, runtime: ListenerRuntime, listener: Listener) -> TokenBucket | None:
        """The bucket a listener's traffic goes through: its own while its limit stays the same
        (so a reload does not hand out a fresh burst), else the shared one or none."""
        limit = listener.bandwidth_mbit
        if limit is None:
            return self.shared_bucket
        rate = mbit_to_bytes_per_s(limit) * self.bandwidth_share
        bucket = runtime.bucket
        if bucket is not None and bucket is not self.shared_bucket:
            if bucket.rate_bytes_per_s == rate:
                return bucket
        return TokenBucket(rate, burst_for(rate))

    @staticmethod
    def _fingerprint(listener: Listener, snapshot: Snapshot) -> tuple:
        """Everything a listener's behaviour depends on; equal means nothing to do."""
        groups = tuple(snapshot.server_group(group_id) for group_id in _group_ids(listener))
        return (
            listener,
            snapshot.instance_id,
            snapshot.bind_address,
            groups,
            tuple(
                snapshot.ca_certificate(group.backend_ca_certificate_id)
                for group in groups
                if group is not None
            ),
            snapshot.certificate(listener.default_certificate_id),
            tuple(snapshot.certificate(cert_id) for cert_id in listener.sni_certificate_ids),
            snapshot.ca_certificate(listener.ca_certificate_id),
            snapshot.tls_policy(listener.tls_policy) if listener.is_tls else None,
            snapshot.acl(listener.acl.acl_id),
            _alt_svc(listener, snapshot),
        )

    async def _start_listener(
        self,
        runtime: ListenerRuntime,
        listener: Listener,
        snapshot: Snapshot,
        groups: dict[str, ServerGroupRuntime],
        fingerprint: tuple,
    ) -> None:
        no_share = self._no_bandwidth_share(listener, snapshot)
        if no_share:
            runtime.config = listener
            runtime.fingerprint = fingerprint
            runtime.stop("failed", no_share, permanent=True)
            return
        if listener.is_datagram:
            await self._start_datagram(runtime, listener, snapshot, groups, fingerprint)
            return
        runtime.config = listener
        runtime.fingerprint = fingerprint
        runtime.group = groups.get(listener.server_group_id or "")
        runtime.bucket = self._bucket(runtime, listener)
        try:
            tls = self.tls_cache.listener_tls(listener, snapshot) if listener.is_tls else None
            settings = ListenerSettings(
                listener,
                snapshot,
                group=runtime.group,
                tls=tls,
                pool=self.pool,
                stats=runtime.stats,
                bucket=runtime.bucket,
                alt_svc=_alt_svc(listener, snapshot),
                rule_groups=groups,
            )
        except (TlsError, ValueError) as exc:
            _fail(runtime, str(exc))
            return
        if tls is not None:
            count_handshakes(_contexts(tls.context), runtime.stats)

        bind_key = _bind_key(listener, snapshot)
        if runtime.sock is None:
            try:
                runtime.sock = _bind(
                    snapshot.bind_address, listener.port, reuse_port=self.reuse_port
                )
            except OSError as exc:
                _fail(runtime, _bind_reason(exc, snapshot.bind_address, listener.port))
                return
            runtime.bind_key = bind_key

        # Clients over a QPS limit stay so across a change to this listener (dataplane.throttle).
        carry_over(runtime.settings, settings)
        runtime.settings = settings
        context = tls.context if tls is not None else None
        if runtime.server is None or context is not runtime.server_context:
            old_server = runtime.server
            try:
                runtime.server = await self._serve(runtime, listener, context)
            except OSError as exc:
                _fail(runtime, f"cannot serve on port {listener.port}: {exc}")
                return
            runtime.server_context = context
            if old_server is not None:
                # The old server only stops accepting; its connections finish on their settings.
                old_server.close()
        runtime.status = "running"
        runtime.reason = ""

    async def _serve(
        self, runtime: ListenerRuntime, listener: Listener, context: ssl.SSLContext | None
    ) -> asyncio.AbstractServer:
        """A server accepting on a duplicate of the listener's socket."""
        protocol = http_protocol if listener.is_http else TcpProxy
        runtime.descriptors = self.descriptors
        self.descriptors.watch(runtime.loop)

        accept: Callable[[], asyncio.Protocol]
        if context is None:
            # Called by the loop in C, with no Python frame per connection.
            accept = functools.partial(protocol, runtime)
        else:

            def accept() -> asyncio.Protocol:
                # The node's own TLS layer, not the event loop's (dataplane.protocols.tls_layer).
                return TlsLayer(context, protocol(runtime), TLS_HANDSHAKE_TIMEOUT)

        return await runtime.loop.create_server(
            accept,
            sock=runtime.sock.dup(),  # type: ignore[union-attr]
            backlog=LISTEN_BACKLOG,
        )

    def _stop_accepting(self) -> None:
        """Out of descriptors: close the servers, keep the listening sockets. Clients wait in the
        kernel's accept queue meanwhile; connections already accepted carry on."""
        if self._resuming is not None:
            self._resuming.cancel()
            self._resuming = None
        for runtime in self.listeners.values():
            if runtime.server is not None:
                runtime.server.close()
                runtime.server = None

    def _start_accepting(self) -> None:
        if not self.draining:
            self._resuming = asyncio.get_running_loop().create_task(self._resume_accepting())

    async def _resume_accepting(self) -> None:
        # Under the lock, so a snapshot being applied does not give a listener a second server.
        async with self._lock:
            for runtime in self.listeners.values():
                listener = runtime.config
                if (
                    runtime.server is not None
                    or runtime.status != "running"
                    or runtime.sock is None
                    or listener is None
                    or listener.is_datagram
                ):
                    continue
                try:
                    runtime.server = await self._serve(runtime, listener, runtime.server_context)
                except OSError as exc:
                    if exc.errno in EXHAUSTED:
                        self.descriptors.run_out()
                        return
                    _fail(runtime, f"cannot serve on port {listener.port}: {exc}")
        self._resuming = None

    async def _start_datagram(
        self,
        runtime: ListenerRuntime,
        listener: Listener,
        snapshot: Snapshot,
        groups: dict[str, ServerGroupRuntime],
        fingerprint: tuple,
    ) -> None:
        """UDP and QUIC listeners: bind and serve, or update the running one in place."""
        runtime.config = listener
        runtime.fingerprint = fingerprint
        group = runtime.group = groups.get(listener.server_group_id or "")
        backends = group.backends if group is not None else []
        slow_start = group.slow_start if group is not None else None
        bucket = runtime.bucket = self._bucket(runtime, listener)
        configuration = None
        try:
            settings: UdpSettings | ListenerSettings
            if listener.protocol == "udp":
                settings = UdpSettings.from_listener(
                    listener,
                    snapshot,
                    backends,
                    runtime.stats,
                    slow_start=slow_start,
                    bucket=bucket,
                )
            else:
                # Seed 003: QUIC is a Layer-7 listener like HTTP and HTTPS, compiled the same way;
                # its request streams go through the same proxy (dataplane.protocols.streams).
                settings = ListenerSettings(
                    listener,
                    snapshot,
                    group=group,
                    tls=None,
                    pool=self.pool,
                    stats=runtime.stats,
                    bucket=bucket,
                    rule_groups=groups,
                )
                certificate = snapshot.certificate(listener.default_certificate_id)
                if certificate is None:  # validation refuses this; a guard, not a path
                    raise TlsError("no server certificate")
                configuration = quic_configuration(
                    certificate.certificate_pem,
                    certificate.private_key_pem,
                    certificate.chain_pem,
                    idle_timeout=float(listener.idle_timeout),
                )
        except (TlsError, ValueError) as exc:
            _fail(runtime, str(exc))
            return

        if isinstance(settings, UdpSettings):
            settings.access_log = runtime.access_log
        else:
            carry_over(runtime.settings, settings)
            runtime.settings = settings
        datagram = runtime.datagram
        if isinstance(datagram, UdpListener) and isinstance(settings, UdpSettings):
            datagram.update(settings)
        elif isinstance(datagram, QuicListener) and isinstance(settings, ListenerSettings):
            datagram.update(configuration)
        else:
            try:
                sock = bind_udp(snapshot.bind_address, listener.port, reuse_port=self.reuse_port)
            except OSError as exc:
                _fail(runtime, _bind_reason(exc, snapshot.bind_address, listener.port))
                return
            try:
                if isinstance(settings, UdpSettings):
                    runtime.datagram = await start_udp_listener(sock, settings)
                else:
                    quic = QuicListener(runtime, configuration)  # type: ignore[arg-type]
                    await quic.start(sock)
                    runtime.datagram = quic
            except OSError as exc:
                sock.close()
                _fail(runtime, f"cannot serve on port {listener.port}: {exc}")
                return
            runtime.bind_key = _bind_key(listener, snapshot)
        runtime.status = "running"
        runtime.reason = ""

    def _fold(self) -> None:
        for runtime in self.listeners.values():
            runtime.stats.fold()
        self._folding = None
        if not self.draining:
            self._folding = asyncio.get_running_loop().call_later(FOLD_INTERVAL, self._fold)

    # -- status ----------------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        now = time.monotonic()
        wall = time.time()
        listeners: dict[str, object] = {}
        # A server's timeline of checks (20 of them, about 600 bytes) is its group's: given in
        # the first listener entry of each group only, not repeated in every listener's.
        timelines: set[int] = set()
        for listener_id, runtime in self.listeners.items():
            retry = self._retries.get(listener_id)
            config = runtime.config
            backends = []
            group = runtime.group if runtime.status == "running" else None
            if group is not None:
                timeline = id(group) not in timelines
                timelines.add(id(group))
                for backend in group.backends:
                    report = server_report(
                        backend, group.checker, group.slow_start, self.clock(), timeline=timeline
                    )
                    backends.append(
                        {
                            "id": backend.id,
                            "address": backend.address,
                            "port": backend.port,
                            "weight": backend.weight,
                            "state": backend.state,
                            # Draining: seconds until what remains on it is closed.
                            "drain_seconds_left": (
                                round(max(0.0, backend.drain_deadline - wall), 1)
                                if backend.state == "draining"
                                and backend.drain_deadline is not None
                                else None
                            ),
                            "healthy": backend.healthy,
                            "reason": backend.health_reason
                            or (
                                "health check disabled"
                                if group.checker is None
                                else "not checked yet"
                            ),
                            "seconds_since_check": (
                                round(now - backend.last_check, 3)
                                if backend.last_check is not None
                                else None
                            ),
                            "active": backend.active,
                            "requests": backend.requests,
                            "connect_failures": backend.connect_failures,
                            **report,
                            **passive_report(backend, group.outlier),
                        }
                    )
            counters = runtime.stats.as_dict()
            listeners[listener_id] = {
                "status": runtime.status,
                "reason": runtime.reason,
                # A failed listener the node is still trying to start: when it tries next.
                "retry_in_seconds": round(max(0.0, retry.due - now), 1) if retry else None,
                "protocol": config.protocol if config else None,
                "port": config.port if config else None,
                "server_group_id": config.server_group_id if config else None,
                "counters": counters,
                "backends": backends,
                # The latency histograms, also in `counters` (dataplane.stats.Histogram).
                "request_duration": counters["request_duration"],
                "backend_response_time": counters["backend_response_time"],
            }
            if isinstance(runtime.datagram, UdpListener):
                listeners[listener_id]["udp"] = runtime.datagram.counters()
            bucket = runtime.bucket
            if bucket is not None:
                # Seed 000: the limit this process enforces and what it cost. The instance-wide
                # bucket of the listeners without a limit of their own counts for all of them.
                listeners[listener_id]["bandwidth"] = {
                    "limit_bytes_per_second": bucket.rate_bytes_per_s,
                    "shared": bucket is self.shared_bucket,
                    "pauses": bucket.pauses,
                    "paused_seconds": round(bucket.paused_seconds, 6),
                }
        return {
            "instance_id": self.snapshot.instance_id if self.snapshot else None,
            "generation": self.generation,
            "draining": self.draining,
            "uptime_seconds": round(time.time() - self.started, 3),
            "listeners": listeners,
            "access_log": self.access_logs.counters(),
        }

    def access_log(self, listener_id: str, **filters: Any) -> dict[str, object] | None:
        """A listener's recent access-log entries, newest first (None: no such listener)."""
        if listener_id not in self.listeners:
            return None
        log = self.access_logs.listeners.get(listener_id)
        return {
            "listener_id": listener_id,
            "enabled": self.listeners[listener_id].access_log is not None,
            "lines": log.recent(**filters) if log is not None else [],
        }

    # -- shutdown --------------------------------------------------------------------------------

    async def shutdown(self, drain_timeout: float) -> None:
        """Stop accepting, let requests in flight finish within `drain_timeout`, cut the rest."""
        self.draining = True
        if self._folding is not None:
            self._folding.cancel()
            self._folding = None
        if self._healer is not None:
            self._healer.cancel()
            self._healer = None
        self._retries = {}
        for handle in self._drain_cuts.values():
            handle.cancel()
        self._drain_cuts = {}
        self.descriptors.close()
        if self._resuming is not None:
            self._resuming.cancel()
            self._resuming = None
        for runtime in self.listeners.values():
            runtime.close_socket()
        for runtime in self.listeners.values():
            for connection in list(runtime.connections):
                connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        while loop.time() < deadline and any(r.connections for r in self.listeners.values()):
            await asyncio.sleep(0.05)
        for runtime in self.listeners.values():
            runtime.stop()
        for group in self.groups.values():
            if group.outlier is not None:
                group.outlier.stop()
            if group.checker is not None:
                await group.checker.stop()
        self.pool.close()
