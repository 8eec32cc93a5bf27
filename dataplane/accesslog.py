"""Access logs: one JSON line per HTTP request, per TCP connection and per UDP session.

A listener with `access_log` on gets a `ListenerLog`. When a request (or connection, or session)
ends, its protocol hands over the objects it already holds; the entry is a plain dict of the
values read from them, appended to two places:

- the listener's ring (`RING_SIZE` most recent entries), which the control API serves to the
  console (`GET /v1/listeners/<id>/access-log`), filtered there;
- the node's `AccessLogWriter`, when the node writes lines to a file and/or stdout.

The event loop never formats or writes a line. It appends the entry to a deque (a plain append,
safe between threads in CPython, no lock and no system call) and goes on; a writer thread wakes
every `FLUSH_INTERVAL`, turns what has gathered into JSON lines and writes them in one call. The
alternative, buffering on the loop and flushing with os.write on a timer, would still block the
loop on a slow or full disk. The deque is bounded: when the thread falls behind by
`MAX_PENDING` entries, further entries are dropped and counted (`dropped`) instead of growing
memory without end; the ring still has them.

The file is `access.log` in the node's state directory, rotated by size: `access.log.1` is the
newest old file, up to `keep` of them. Worker processes append to the same file (O_APPEND keeps
each write whole); the one that finds it over the size rotates it under an flock, and the others
notice the new inode and reopen.

Field values come from the network and are written as JSON strings: bytes that are not UTF-8
appear as backslash escapes, and quotes and newlines are escaped by the JSON encoder, so a hostile
request still gives exactly one valid line.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from cryptography import x509

from dataplane.protocols.http import HttpProxy

if TYPE_CHECKING:
    import ssl

    from dataplane.protocols import ListenerHandle
    from dataplane.protocols.exchange import Exchange, Request
    from dataplane.protocols.tcp import TcpProxy
    from dataplane.protocols.udp import UdpListener, UdpSession

# Recent entries each listener keeps in memory for the console.
RING_SIZE = 1000
# Entries waiting for the writer thread before new ones are dropped.
MAX_PENDING = 50_000
FLUSH_INTERVAL = 0.2
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_KEEP = 5
FILE_NAME = "access.log"
# What a line may hold of one field from the network (a 64 KiB path would make 64 KiB lines).
MAX_FIELD = 2048


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value[:MAX_FIELD].decode("utf-8", "backslashreplace")
    return value[:MAX_FIELD]


def _ms(start: float, end: float) -> float | None:
    """Milliseconds between two clock readings, None when the first never happened."""
    if not start or not end:
        return None
    # To the microsecond; round() with digits costs more than the rest of the field.
    return int((end - start) * 1_000_000) / 1000


def _header(lines: Iterable[bytes], prefix: bytes) -> bytes | None:
    """The value of a request header among formatted `Name: value\\r\\n` lines."""
    size = len(prefix)
    for line in lines:
        if line[:size].lower() == prefix:
            return line[size:].strip()
    return None


def tls_fields(ssl_object: ssl.SSLObject | None) -> dict[str, Any]:
    """TLS version, cipher and client-certificate subject of a connection (empty for plain)."""
    if ssl_object is None:
        return {}
    cipher = ssl_object.cipher()
    fields: dict[str, Any] = {
        "tls_version": ssl_object.version(),
        "tls_cipher": cipher[0] if cipher else None,
    }
    der = ssl_object.getpeercert(binary_form=True)
    if der:
        try:
            fields["client_cert_subject"] = x509.load_der_x509_certificate(
                der
            ).subject.rfc4514_string()
        except ValueError:
            fields["client_cert_subject"] = None
    return fields


class CountsBytes:
    """Mixed into an exchange (dataplane.protocols.exchange) of a listener whose access log is
    on: it also counts the bytes it writes, for the per-request byte counts of its lines. A
    listener without the log takes plain exchanges and pays nothing for it."""

    __slots__ = ()

    counts_bytes = True

    def _write(self, data: bytes) -> None:
        self.sent += len(data)
        super()._write(data)  # type: ignore[misc]

    def _begin_request(self, now: float) -> None:
        super()._begin_request(now)  # type: ignore[misc]
        # The fields the plain exchange sets only when they happen: reading a missing slot costs
        # an AttributeError (several thousand instructions) per field and line.
        request = self.parsing
        request.server = request.rule = None
        request.status = 0
        request.ended = request.connect_at = request.connected_at = 0.0
        request.forwarded_at = request.answered_at = 0.0


class CountingHttpProxy(CountsBytes, HttpProxy):
    """An HTTP/1.1 connection of a listener whose access log is on: its reads are counted too."""

    __slots__ = ()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        HttpProxy.data_received(self, data)


def http_protocol(runtime: ListenerHandle) -> HttpProxy:
    """The protocol for one accepted HTTP or HTTPS connection."""
    if runtime.access_log is not None:
        return CountingHttpProxy(runtime)
    return HttpProxy(runtime)


class ListenerLog:
    """One listener's access log: its ring of recent entries and the node's writer."""

    __slots__ = ("listener_id", "protocol", "ring", "writer")

    def __init__(self, listener_id: str, writer: AccessLogWriter | None) -> None:
        self.listener_id = listener_id
        self.protocol = ""
        self.ring: collections.deque[dict[str, Any]] = collections.deque(maxlen=RING_SIZE)
        self.writer = writer

    def add(self, entry: dict[str, Any]) -> None:
        self.ring.append(entry)
        if self.writer is not None:
            self.writer.put(entry)

    # -- the protocols' hooks --------------------------------------------------------------------

    def http(self, proxy: Exchange, request: Request, termination: str) -> None:
        """An HTTP request (HTTP/1.x, or an HTTP/2 or HTTP/3 stream) is over."""
        bytes_in = bytes_out = None
        if proxy.counts_bytes:
            # What the connection carried since its previous line: this request and response.
            received, sent = proxy.received, proxy.sent
            bytes_in, bytes_out = received - proxy.in_mark, sent - proxy.out_mark
            proxy.in_mark, proxy.out_mark = received, sent
        version = proxy.http_version(request)
        # Request fields set only once what they record happened (dataplane.protocols.http).
        server = getattr(request, "server", None) or proxy.backend
        connect_at = getattr(request, "connect_at", 0.0)
        connected_at = getattr(request, "connected_at", 0.0)
        # Servers left for another by a retry (dataplane.retry), then the one that answered.
        tried = getattr(request, "tried", None) or ()
        entry = {
            "time": time.time(),
            "listener": self.listener_id,
            "protocol": self.protocol,
            "client_ip": proxy.peer_ip,
            "client_port": proxy.peer_port,
            "method": _text(request.method) or None,
            "authority": _text(request.host),
            "path": _text(request.url) or None,
            "http_version": version,
            "status": getattr(request, "status", 0) or None,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "request_time_ms": _ms(request.started, getattr(request, "ended", 0.0)),
            # A pooled connection was open already: no connect time of this request's own.
            "backend_connect_time_ms": _ms(connect_at, connected_at)
            if connected_at
            else (0.0 if server is not None else None),
            "backend_response_time_ms": _ms(
                getattr(request, "forwarded_at", 0.0), getattr(request, "answered_at", 0.0)
            ),
            "server": server.id if server is not None else None,
            "server_address": f"{server.address}:{server.port}" if server is not None else None,
            "rule": getattr(request, "rule", None),
            "attempts": len(tried) + (1 if server is not None else 0),
            "user_agent": _text(_header(request.headers, b"user-agent:")),
            "termination": termination,
        }
        if tried:
            entry["retried_servers"] = [backend.id for backend in tried]
        if version == "HTTP/3":
            # QUIC is TLS 1.3 always (RFC 9001); aioquic shows no SSLObject.
            entry["tls_version"] = "TLSv1.3"
        else:
            entry.update(tls_fields(proxy.client_tls()))
        self.add(entry)

    def tcp(self, proxy: TcpProxy, termination: str) -> None:
        """A TCP or TCP SSL connection is over."""
        backend = proxy.chosen
        now = time.monotonic()
        entry = {
            "time": time.time(),
            "listener": self.listener_id,
            "protocol": self.protocol,
            "client_ip": proxy.peer_ip,
            "client_port": proxy.peer_port,
            "bytes_in": proxy.received,
            "bytes_out": proxy.sent,
            "request_time_ms": _ms(proxy.started, now),
            "backend_connect_time_ms": _ms(proxy.connect_at, proxy.connected_at),
            "server": backend.id if backend is not None else None,
            "server_address": f"{backend.address}:{backend.port}" if backend is not None else None,
            "termination": termination,
        }
        transport = proxy.transport
        if transport is not None:
            entry.update(tls_fields(transport.get_extra_info("ssl_object")))
        self.add(entry)

    def udp(self, listener: UdpListener, session: UdpSession, termination: str) -> None:
        """A UDP session is over."""
        backend = session.backend
        entry = {
            "time": time.time(),
            "listener": self.listener_id,
            "protocol": self.protocol,
            "client_ip": session.client[0],
            "client_port": session.client[1],
            "bytes_in": session.bytes_in,
            "bytes_out": session.bytes_out,
            "request_time_ms": _ms(session.started, listener._clock()),
            "server": backend.id,
            "server_address": f"{backend.address}:{backend.port}",
            "termination": termination,
        }
        self.add(entry)

    # -- reading ---------------------------------------------------------------------------------

    def recent(
        self,
        *,
        limit: int = 100,
        status: str = "",
        path: str = "",
        client: str = "",
    ) -> list[dict[str, Any]]:
        """The newest entries first, filtered: `status` a class ("5xx") or a code ("502"),
        `path` a substring of the path, `client` the client address or its beginning."""
        found = []
        for entry in reversed(self.ring):
            if status and not _status_matches(entry.get("status"), status):
                continue
            if path and path not in (entry.get("path") or ""):
                continue
            if client and not (entry.get("client_ip") or "").startswith(client):
                continue
            found.append(line_fields(entry))
            if len(found) >= limit:
                break
        return found


def _status_matches(value: object, wanted: str) -> bool:
    if not isinstance(value, int):
        return False
    if len(wanted) == 3 and wanted.endswith("xx"):
        return str(value // 100) == wanted[0]
    return str(value) == wanted


def line_fields(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The entry as its JSON line has it: the time as RFC 3339 UTC with milliseconds."""
    fields = dict(entry)
    fields["time"] = _timestamp(entry["time"])
    return fields


# The last second formatted, as one tuple (the writer thread and the loop both read it): lines
# come many to a second, and datetime.isoformat costs more than the rest of a line.
_second: tuple[int, str] = (-1, "")


def _timestamp(seconds: float) -> str:
    global _second
    whole = int(seconds)
    cached = _second
    if cached[0] != whole:
        cached = _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{cached[1]}.{int((seconds - whole) * 1000):03d}Z"


def format_line(entry: Mapping[str, Any]) -> bytes:
    """One JSON line: quotes, backslashes and control characters escaped, so nothing a client
    sent can break it. orjson writes it several times faster than json (measured with
    callgrind, the encoder was most of a line's cost); text it refuses (a lone surrogate) falls
    back to json's ASCII escapes."""
    fields = line_fields(entry)
    try:
        return orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
    except orjson.JSONEncodeError:
        return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


class RotatingFile:
    """Appends to `path`, rotating it by size to path.1 ... path.<keep> (shared by workers)."""

    def __init__(self, path: Path, *, max_bytes: int, keep: int) -> None:
        if max_bytes < 1 or keep < 0:
            raise ValueError("access log rotation needs max_bytes >= 1 and keep >= 0")
        self.path = path
        self.max_bytes = max_bytes
        self.keep = keep
        self.lock_path = path.with_name(path.name + ".lock")
        # Opened at the first line, so a node whose listeners log nothing leaves no file.
        self.fd = -1
        self.inode = -1

    def _open(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self.inode = os.fstat(self.fd).st_ino

    def write(self, data: bytes) -> None:
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            current = None
        if self.fd < 0 or current is None or current.st_ino != self.inode:
            # Another worker rotated it (or someone removed it): write to the new file.
            self._open()
        elif current.st_size and current.st_size + len(data) > self.max_bytes:
            self._rotate()
        os.write(self.fd, data)

    def _rotate(self) -> None:
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                current = os.stat(self.path)
                # Whoever held the lock before may have rotated already.
                if current.st_ino == self.inode:
                    if self.keep == 0:
                        os.unlink(self.path)
                    else:
                        for index in range(self.keep - 1, 0, -1):
                            older = self.path.with_name(f"{self.path.name}.{index}")
                            if older.exists():
                                os.replace(older, f"{self.path}.{index + 1}")
                        os.replace(self.path, f"{self.path}.1")
            except FileNotFoundError:
                pass
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        self._open()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class AccessLogWriter:
    """Formats and writes entries on a thread of its own (see the module docstring)."""

    def __init__(
        self,
        *,
        directory: Path | None = None,
        stdout: bool = False,
        stdout_fd: int = 1,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.file = (
            RotatingFile(directory / FILE_NAME, max_bytes=max_bytes, keep=keep)
            if directory is not None
            else None
        )
        self.stdout = stdout
        self.stdout_fd = stdout_fd
        self.max_pending = max_pending
        self.pending: collections.deque[dict[str, Any]] = collections.deque()
        # Entries the thread could not keep up with, and lines a failed write lost.
        self.dropped = 0
        self.failed = 0
        self._stop = threading.Event()
        # Started with the first entry: a node whose listeners log nothing runs no thread.
        self._thread: threading.Thread | None = None

    def put(self, entry: dict[str, Any]) -> None:
        """On the event loop: hand an entry over, or drop it when the thread is behind."""
        pending = self.pending
        if len(pending) >= self.max_pending:
            self.dropped += 1
            return
        pending.append(entry)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL):
            self.flush()
        self.flush()

    def flush(self) -> None:
        pending = self.pending
        lines = []
        while pending:
            lines.append(format_line(pending.popleft()))
        if not lines:
            return
        data = b"".join(lines)
        try:
            if self.file is not None:
                self.file.write(data)
            if self.stdout:
                os.write(self.stdout_fd, data)
        except OSError:
            # A full disk must not stop the node: the lines are lost, and counted.
            self.failed += len(lines)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        else:
            self.flush()
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()


class AccessLogs:
    """The node's access logs: one `ListenerLog` per listener that has its switch on."""

    def __init__(self, writer: AccessLogWriter | None = None) -> None:
        self.writer = writer
        self.listeners: dict[str, ListenerLog] = {}

    def listener(self, listener_id: str, protocol: str) -> ListenerLog:
        """The log of a listener whose switch is on; its ring outlives generations."""
        log = self.listeners.get(listener_id)
        if log is None:
            log = self.listeners[listener_id] = ListenerLog(listener_id, self.writer)
        log.protocol = protocol
        return log

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the rings of listeners that are gone from the snapshot."""
        wanted = set(keep)
        for listener_id in list(self.listeners):
            if listener_id not in wanted:
                del self.listeners[listener_id]

    def counters(self) -> dict[str, int]:
        writer = self.writer
        return {
            "dropped": writer.dropped if writer is not None else 0,
            "failed": writer.failed if writer is not None else 0,
        }

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
