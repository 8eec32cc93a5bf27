"""UDP listeners: a datagram proxy that keeps a session per client address.

The first datagram from a client address (ip, port) opens a session: the scheduler picks a backend
(source IP hash keeps every port of one client on one server) and the session gets its own
connected UDP socket to it. Datagrams from the client go out on that socket; whatever the backend
sends back on it is relayed to the client from the listener's own address, so the client only ever
sees one peer.

A session ends when it has been idle (no datagram in either direction) for the listener's idle
timeout, when its backend has been marked unhealthy (the client's next datagram opens a session on
another server), when the backend's port answers with ICMP port unreachable, or when the table is
full and it is the least recently active session. UDP has no flow control: a datagram that cannot
be sent at once is dropped and counted, as a router would. So is a reply that would take the client
side over the listener's bandwidth limit (seed 000): the listener's token bucket polices replies.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

from dataplane.acl import AccessControl
from dataplane.balancing import Backend, Scheduler, make_scheduler
from dataplane.protocols import compile_acl

if TYPE_CHECKING:
    from dataplane.accesslog import ListenerLog
    from dataplane.bandwidth import TokenBucket
    from dataplane.config import Listener, Snapshot
    from dataplane.slowstart import SlowStart
    from dataplane.stats import ListenerStats

log = logging.getLogger(__name__)

# The largest UDP payload over IPv4; a larger read buffer is never needed.
MAX_DATAGRAM = 65507
# Bounds the work of one wake-up of an upstream socket, so one busy backend cannot starve the loop.
READS_PER_WAKEUP = 64
# Replies queued on the listener socket beyond this are dropped rather than buffered.
MAX_SEND_BUFFER = 4 * 1024 * 1024
# Datagrams held while a backend's host name is being resolved.
MAX_PENDING = 16
DEFAULT_MAX_SESSIONS = 65536
# How often expired sessions are looked for, at most; shorter idle timeouts sweep more often.
MAX_SWEEP_INTERVAL = 1.0


def bind_udp(address: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A bound, non-blocking UDP socket for a listener; raises OSError (port in use, ...).

    No SO_REUSEADDR: on Linux it would let a second UDP socket bind the same port silently and
    split the traffic between them. `reuse_port` is for worker processes that share the port on
    purpose: the kernel hashes each client address to one of them, so a session stays in one.
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class UdpSettings:
    """One UDP listener generation: how new sessions are placed and how long they live."""

    __slots__ = (
        "access_log",
        "acl",
        "bucket",
        "idle_timeout",
        "listener_id",
        "max_sessions",
        "scheduler",
        "servers",
        "stats",
    )

    def __init__(
        self,
        *,
        listener_id: str,
        scheduler: Scheduler | None,
        stats: ListenerStats,
        servers: list[Backend] | None = None,
        acl: AccessControl | None = None,
        idle_timeout: float = 60.0,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        bucket: TokenBucket | None = None,
    ) -> None:
        if idle_timeout <= 0:
            raise ValueError("UDP session idle timeout must be positive")
        if max_sessions < 1:
            raise ValueError("UDP session table needs room for at least one session")
        self.listener_id = listener_id
        self.scheduler = scheduler
        # Every server of the group, draining ones too (the scheduler has only those that take
        # new sessions): sessions on a draining server go on into the next generation.
        self.servers = (
            servers if servers is not None else list(scheduler.backends if scheduler else [])
        )
        self.stats = stats
        self.acl = acl
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        # Seed 000 bandwidth: replies to clients beyond it are dropped.
        self.bucket = bucket
        # The listener's access log (dataplane.accesslog), set by the node; None when off.
        self.access_log: ListenerLog | None = None

    @classmethod
    def from_listener(
        cls,
        listener: Listener,
        snapshot: Snapshot,
        backends: list[Backend],
        stats: ListenerStats,
        *,
        slow_start: SlowStart | None = None,
        bucket: TokenBucket | None = None,
    ) -> UdpSettings:
        """Compile a snapshot listener; its idle timeout is the session idle timeout."""
        acl = compile_acl(listener, snapshot)
        return cls(
            listener_id=listener.id,
            scheduler=(
                make_scheduler(listener.scheduler, backends, slow_start=slow_start)
                if backends
                else None
            ),
            stats=stats,
            servers=list(backends),
            acl=acl,
            idle_timeout=float(listener.idle_timeout),
            bucket=bucket,
        )

    @property
    def backends(self) -> list[Backend]:
        return self.servers

    def pick(self, client_ip: str, exclude: Backend | None = None) -> Backend | None:
        scheduler = self.scheduler
        if scheduler is None:
            return None
        return scheduler.pick(client_ip, exclude)


class UdpSession:
    """One client address mapped to one backend through one connected UDP socket."""

    __slots__ = (
        "backend",
        "bytes_in",
        "bytes_out",
        "client",
        "client_ip",
        "closed",
        "last_activity",
        "pending",
        "resolve_task",
        "sock",
        "started",
        "stats",
    )

    def __init__(self, client: tuple, backend: Backend, stats: ListenerStats, now: float) -> None:
        self.client = client
        self.client_ip: str = client[0]
        self.backend = backend
        # The counters this session is counted in as active.
        self.stats = stats
        self.sock: socket.socket | None = None
        self.last_activity = now
        # Datagrams that arrived while the backend's host name was being resolved.
        self.pending: list[bytes] | None = None
        self.resolve_task: asyncio.Task[None] | None = None
        self.closed = False
        # For the access log (dataplane.accesslog).
        self.started = now
        self.bytes_in = self.bytes_out = 0


class UdpListener(asyncio.DatagramProtocol):
    """The protocol on a UDP listener's socket: the session table and both relay directions."""

    def __init__(
        self,
        settings: UdpSettings,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        # shared state
        self.settings = settings
        self.loop = asyncio.get_running_loop()
        self._clock = clock or self.loop.time
        # the session table, least recently active first
        self.sessions: collections.OrderedDict[tuple, UdpSession] = collections.OrderedDict()
        self.transport: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False
        # counters the listener stats have no field for
        self.datagrams_in = 0
        self.datagrams_out = 0
        self.dropped = 0
        self.evicted = 0
        self.throttled = 0

    # -- listener socket -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        if self.closed:
            return
        settings = self.settings
        stats = settings.stats
        self.datagrams_in += 1
        stats.bytes_in += len(data)
        now = self._clock()
        session = self.sessions.get(addr)
        if session is not None and not session.backend.healthy:
            # Its server failed a health check: move the client now instead of sending into a void.
            self._close_session(session)
            session = None
        if session is None:
            acl = settings.acl
            if acl is not None and not acl.allows(addr[0]):
                stats.denied_connections += 1
                return
            session = self._open_session(addr, now)
            if session is None:
                self.dropped += 1
                return
        else:
            session.last_activity = now
            self.sessions.move_to_end(addr)
        session.bytes_in += len(data)
        stats.requests += 1
        self._send_upstream(session, data, now)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for replies sent to clients that went away; nothing to act on.
        log.debug("UDP listener %s: %s", self.settings.listener_id, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_all()

    # -- sessions --------------------------------------------------------------------------------

    def _open_session(
        self, client: tuple, now: float, exclude: Backend | None = None
    ) -> UdpSession | None:
        settings = self.settings
        backend = settings.pick(client[0], exclude)
        if backend is None:
            return None
        sessions = self.sessions
        if len(sessions) >= settings.max_sessions:
            self._sweep_expired(now)
            while len(sessions) >= settings.max_sessions:
                # Full of live sessions: the least recently active one makes room.
                _, oldest = sessions.popitem(last=False)
                self.evicted += 1
                self._release(oldest, "evicted")
        session = UdpSession(client, backend, settings.stats, now)
        backend.active += 1
        sessions[client] = session
        settings.stats.total_connections += 1
        settings.stats.active_connections += 1
        backend.requests += 1
        if _is_ip(backend.address):
            if not self._connect(session, backend.address):
                return None
        else:
            session.pending = []
            session.resolve_task = self.loop.create_task(self._resolve(session))
        self._arm_sweeper()
        return session

    def _connect(self, session: UdpSession, address: str) -> bool:
        backend = session.backend
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            # Connected: the kernel drops datagrams from anyone but the backend and reports its
            # ICMP port unreachable to this socket.
            sock.connect((address, backend.port))
        except OSError as exc:
            sock.close()
            log.info(
                "cannot open a UDP session to backend %s (%s:%d): %s",
                backend.id,
                address,
                backend.port,
                exc,
                extra={"listener_id": self.settings.listener_id, "backend_id": backend.id},
            )
            self._close_session(session)
            return False
        session.sock = sock
        self.loop.add_reader(sock, self._upstream_readable, session)
        return True

    async def _resolve(self, session: UdpSession) -> None:
        backend = session.backend
        try:
            infos = await self.loop.getaddrinfo(
                backend.address, backend.port, type=socket.SOCK_DGRAM
            )
        except OSError as exc:
            session.resolve_task = None
            log.info(
                "cannot resolve UDP backend %s (%s): %s",
                backend.id,
                backend.address,
                exc,
                extra={"listener_id": self.settings.listener_id, "backend_id": backend.id},
            )
            self._close_session(session)
            return
        session.resolve_task = None
        if session.closed or not infos:
            self._close_session(session)
            return
        if not self._connect(session, infos[0][4][0]):
            return
        pending, session.pending = session.pending or [], None
        for data in pending:
            self._send_upstream(session, data, self._clock())

    def _send_upstream(self, session: UdpSession, data: bytes, now: float) -> None:
        sock = session.sock
        if sock is None:
            pending = session.pending
            if pending is not None and len(pending) < MAX_PENDING:
                pending.append(data)
            else:
                self.dropped += 1
            return
        try:
            sock.send(data)
        except BlockingIOError:
            self.dropped += 1
        except ConnectionRefusedError:
            # An earlier datagram drew ICMP port unreachable: the server is not listening. This
            # datagram gets one other server, like a refused TCP connect gets one retry.
            failed = session.backend
            failed.connect_failures += 1
            client = session.client
            self._close_session(session)
            retry = self._open_session(client, now, exclude=failed)
            if retry is None:
                self.dropped += 1
            else:
                # A fresh socket has no ICMP error pending, so this cannot come back here.
                self._send_upstream(retry, data, now)
        except OSError as exc:
            log.info(
                "UDP send to backend %s failed: %s",
                session.backend.id,
                exc,
                extra={"listener_id": self.settings.listener_id},
            )
            self.dropped += 1
            self._close_session(session)

    def _upstream_readable(self, session: UdpSession) -> None:
        sock = session.sock
        transport = self.transport
        if sock is None or transport is None or session.closed:
            return
        stats = self.settings.stats
        bucket = self.settings.bucket
        received = False
        for _ in range(READS_PER_WAKEUP):
            try:
                data = sock.recv(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except ConnectionRefusedError:
                # ICMP port unreachable: the next client datagram opens a session elsewhere.
                self._close_session(session)
                return
            except OSError as exc:
                log.info(
                    "UDP receive from backend %s failed: %s",
                    session.backend.id,
                    exc,
                    extra={"listener_id": self.settings.listener_id},
                )
                self._close_session(session)
                return
            received = True
            if transport.get_write_buffer_size() > MAX_SEND_BUFFER:
                self.dropped += 1
                continue
            if bucket is not None and not bucket.admit(len(data)):
                self.throttled += 1
                continue
            transport.sendto(data, session.client)
            self.datagrams_out += 1
            session.bytes_out += len(data)
            stats.bytes_out += len(data)
        if received and not session.closed:
            session.last_activity = self._clock()
            self.sessions.move_to_end(session.client)

    def _release(self, session: UdpSession, termination: str = "backend_error") -> None:
        """Free a session that is already out of the table."""
        if session.closed:
            return
        access_log = self.settings.access_log
        if access_log is not None:
            access_log.udp(self, session, termination)
        session.closed = True
        session.pending = None
        if session.resolve_task is not None:
            session.resolve_task.cancel()
            session.resolve_task = None
        sock = session.sock
        if sock is not None:
            session.sock = None
            self.loop.remove_reader(sock)
            sock.close()
        session.backend.active -= 1
        session.stats.active_connections -= 1

    def _close_session(self, session: UdpSession) -> None:
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
        self._release(session)

    def close_sessions_to(self, server_id: str) -> int:
        """Close the sessions to one server (its drain is over, or it went into maintenance)."""
        doomed = [s for s in self.sessions.values() if s.backend.id == server_id]
        for session in doomed:
            del self.sessions[session.client]
            self._release(session, "server_out_of_service")
        return len(doomed)

    def _close_all(self) -> None:
        sessions = list(self.sessions.values())
        self.sessions.clear()
        for session in sessions:
            self._release(session, "listener_stopped")
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    # -- idle expiry -----------------------------------------------------------------------------

    def _arm_sweeper(self) -> None:
        if self._sweeper is None and not self.closed:
            interval = min(self.settings.idle_timeout / 2, MAX_SWEEP_INTERVAL)
            self._sweeper = self.loop.call_later(interval, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        self.sweep()
        if self.sessions:
            self._arm_sweeper()

    def sweep(self) -> int:
        """Close the sessions idle for the timeout or longer; returns how many were closed."""
        return self._sweep_expired(self._clock())

    def _sweep_expired(self, now: float) -> int:
        # Oldest activity first, so the walk stops at the first live session.
        stale_before = now - self.settings.idle_timeout
        sessions = self.sessions
        closed = 0
        while sessions:
            session = next(iter(sessions.values()))
            if session.last_activity > stale_before:
                break
            sessions.popitem(last=False)
            self._release(session, "idle_timeout")
            closed += 1
        return closed

    # -- control ---------------------------------------------------------------------------------

    def update(self, settings: UdpSettings) -> None:
        """Adopt a new listener generation; sessions whose client or server remain keep going.

        A session follows its server into the new generation by (id, address, port), since a
        changed server group builds new Backend objects. Sessions to servers that left the group
        and clients the new ACL refuses are closed.
        """
        self.settings = settings
        by_endpoint = {(b.id, b.address, b.port): b for b in settings.backends}
        acl = settings.acl
        for session in list(self.sessions.values()):
            backend = session.backend
            successor = by_endpoint.get((backend.id, backend.address, backend.port))
            if successor is None or (acl is not None and not acl.allows(session.client_ip)):
                self._close_session(session)
                continue
            if successor is not backend:
                backend.active -= 1
                successor.active += 1
                session.backend = successor
            if session.stats is not settings.stats:
                session.stats.active_connections -= 1
                settings.stats.active_connections += 1
                session.stats = settings.stats
        if self._sweeper is not None:
            # The idle timeout may have shrunk.
            self._sweeper.cancel()
            self._sweeper = None
        if self.sessions:
            self._arm_sweeper()

    def close(self) -> None:
        """Stop listening and drop every session (seed 003: stopping cuts active traffic)."""
        self.closed = True
        self._close_all()
        if self.transport is not None:
            self.transport.close()

    def counters(self) -> dict[str, int]:
        return {
            "sessions": len(self.sessions),
            "datagrams_in": self.datagrams_in,
            "datagrams_out": self.datagrams_out,
            "dropped": self.dropped,
            "evicted": self.evicted,
            "throttled": self.throttled,
        }

    def session_backends(self) -> dict[tuple, str]:
        """Client address -> backend id, for status pages and tests."""
        return {client: session.backend.id for client, session in self.sessions.items()}


async def start_udp_listener(
    sock: socket.socket,
    settings: UdpSettings,
    *,
    clock: Callable[[], float] | None = None,
) -> UdpListener:
    """Serve a bound UDP socket (see bind_udp); the listener owns the socket from now on."""
    loop = asyncio.get_running_loop()
    _, listener = await loop.create_datagram_endpoint(
        lambda: UdpListener(settings, clock=clock), sock=sock
    )
    return listener
