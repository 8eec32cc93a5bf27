"""The control API: a small HTTP/1.1 server on loopback that the console's push task talks to.

    PUT /v1/config   apply a snapshot; ACK 200, NACK 422 (invalid) or 409 (older generation)
    GET /v1/status   applied generation, listener status and counters, backend health
    GET /v1/healthz  liveness, without a token
    GET /metrics     the same counters in the Prometheus text format (dataplane.metrics)
    GET /v1/listeners/<id>/access-log?limit=&status=&path=&client=
                     a listener's recent access-log entries, newest first (dataplane.accesslog)

Every request but healthz carries `Authorization: Bearer <token>`, compared in constant time. The
server is written on asyncio and httptools like the proxy itself, with no web framework.

Whoever reaches the port can talk to it, so a client without the token must cost next to
nothing. A request is judged when its head is complete, before any body byte is read: a missing
or wrong token, an unknown path or method, or a declared body over the limit is answered at once
and the connection closed. Only an authenticated PUT /v1/config may carry a body, counted while
it is read (chunked bodies too). Heads and bodies have timeouts, and the connections one API
serves at a time are capped. With the defaults a client without the token holds at most
`max_connections` x `max_head` bytes (1 MiB) of the node's memory, for at most `head_timeout`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from typing import Any
from urllib.parse import parse_qs

import httptools

from dataplane.config import ConfigError, Snapshot
from dataplane.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from dataplane.metrics import ControlCounters, render
from dataplane.node import GenerationConflict, Node, StaleGeneration
from dataplane.state import SnapshotStore

log = logging.getLogger(__name__)

# Request line and header fields; the console's are a few hundred bytes.
MAX_HEAD = 16 * 1024
# A snapshot carries every certificate and private key of an instance (a few KiB each as PEM):
# 64 MiB holds thousands of them. The decoded snapshot costs several times its JSON in memory, so
# the limit is also what one authenticated push may cost the node.
MAX_BODY = 64 * 1024 * 1024
# From the connection (or the previous answer) to the end of the head.
HEAD_TIMEOUT = 10.0
# Longest silence while a body is read; a slow link still gets a 64 MiB body through.
BODY_TIMEOUT = 30.0
# The console makes one connection per call, and a few nodes' workers share the supervisor's.
MAX_CONNECTIONS = 64
# After a refusal, what the client may still send (and is read and dropped) before the
# connection is cut, so that it reads the answer rather than a reset.
LINGER_BYTES = 1024 * 1024
LINGER_TIMEOUT = 2.0

_ROUTES = {
    b"/v1/healthz": b"GET",
    b"/v1/status": b"GET",
    b"/v1/config": b"PUT",
    b"/metrics": b"GET",
}
# GET only, like /v1/status; the listener id is the snapshot's.
_ACCESS_LOG_PATH = re.compile(rb"/v1/listeners/([A-Za-z0-9_.:-]{1,200})/access-log")
ACCESS_LOG_FILTERS = ("status", "path", "client")
MAX_ACCESS_LOG_LINES = 1000
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    409: b"Conflict",
    413: b"Content Too Large",
    422: b"Unprocessable Content",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}


class ControlApi:
    """Routes control requests to the node and keeps the applied snapshot on disk."""

    def __init__(
        self,
        node: Node,
        *,
        token: str,
        store: SnapshotStore | None = None,
        max_head: int = MAX_HEAD,
        max_body: int = MAX_BODY,
        head_timeout: float = HEAD_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if not token:
            raise ValueError("the control API needs a non-empty token")
        self.node = node
        self.store = store
        self._token = token.encode()
        # Limits, shared by every connection.
        self.max_head = max_head
        self.max_body = max_body
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.connections: set[ControlProtocol] = set()
        # Apply and save in one critical section, so the file never lags behind a newer apply.
        self._apply_lock = asyncio.Lock()
        # A node started from the store runs what the store holds.
        self._saved_generation = node.generation if store is not None else 0
        # Refused snapshots and the last apply's duration, for /metrics.
        self.counters = ControlCounters()
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ControlProtocol(self), host, port)
        address = self.server.sockets[0].getsockname()
        return address[0], address[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def authorized(self, header: bytes | None) -> bool:
        if not header or not header[:7].lower() == b"bearer ":
            return False
        return hmac.compare_digest(header[7:].strip(), self._token)

    def admit(
        self, method: bytes, path: bytes, authorization: bytes | None
    ) -> tuple[int, dict[str, str]] | None:
        """The answer to a request that goes no further than its head, or None to read on."""
        route = _ROUTES.get(path)
        if route is None and _ACCESS_LOG_PATH.fullmatch(path):
            route = b"GET"
        if route is None:
            return 404, {"error": "not found"}
        if path != b"/v1/healthz" and not self.authorized(authorization):
            return 401, {"error": "missing or wrong bearer token"}
        if method != route:
            return 405, {"error": f"use {route.decode()}"}
        return None

    def body_limit(self, path: bytes) -> int:
        """Bytes of body an admitted request may carry."""
        return self.max_body if path == b"/v1/config" else 0

    async def handle(
        self,
        method: bytes,
        path: bytes,
        authorization: bytes | None,
        body: bytes,
        query: bytes = b"",
    ) -> tuple[int, object]:
        refusal = self.admit(method, path, authorization)
        if refusal is not None:
            return refusal
        access_log = _ACCESS_LOG_PATH.fullmatch(path)
        if access_log is not None:
            filters = access_log_filters(query)
            if isinstance(filters, str):
                return 400, {"error": filters}
            found = await self.access_log(access_log[1].decode(), filters)
            if found is None:
                return 404, {"error": "no such listener on this node"}
            return 200, found
        if path == b"/v1/healthz":
            return 200, "ok"
        if path == b"/v1/status":
            return 200, await self.status()
        if path == b"/metrics":
            # Bytes are the exposition, written with its own content type. Writing it costs
            # about 1 ms per 60 series, so it runs beside the loop rather than stalling traffic.
            status = await self.status()
            return 200, await asyncio.to_thread(render, status, self.counters.copy())
        return await self.put_config(body)

    async def status(self) -> dict[str, object]:
        """The status document; a supervisor gathers it from its workers."""
        return self.node.status()

    async def access_log(
        self, listener_id: str, filters: dict[str, Any]
    ) -> dict[str, object] | None:
        """A listener's recent access-log entries; a supervisor gathers them from its workers."""
        return self.node.access_log(listener_id, **filters)

    async def put_config(self, body: bytes) -> tuple[int, object]:
        try:
            snapshot = Snapshot.from_json(body)
        except ConfigError as exc:
            self.counters.rejections["invalid"] += 1
            return 422, {"error": "invalid snapshot", "reasons": exc.reasons}
        async with self._apply_lock:
            before, started = self.node.generation, time.perf_counter()
            if snapshot.generation > before:
                # Saved before it is applied: a node killed once its workers serve a generation
                # restarts with that generation, and only then drains the old workers
                # (dataplane.handover). Saved after, a kill in between restarted the older one,
                # and the new listeners went unserved until the console pushed again.
                await self._save(snapshot)
            try:
                results = await self.node.apply(snapshot)
            except (StaleGeneration, GenerationConflict) as exc:
                self.counters.rejections["generation"] += 1
                return 409, {
                    "error": str(exc),
                    "reasons": [f"generation: {exc}"],
                    "generation": self.node.generation,
                }
            if self.node.generation != before:
                # A re-sent snapshot only retries failed listeners; it is not an apply to time.
                self.counters.apply_seconds = time.perf_counter() - started
            await self._save(snapshot)
        persisted = self._saved_generation == snapshot.generation
        return 200, {
            "generation": snapshot.generation,
            "listeners": results,
            "persisted": persisted,
        }

    async def _save(self, snapshot: Snapshot) -> None:
        if self.store is None or snapshot.generation == self._saved_generation:
            return
        try:
            await asyncio.to_thread(self.store.save, snapshot)
            self._saved_generation = snapshot.generation
        except OSError as exc:
            # The node runs the new generation either way; say that it would not survive a
            # restart.
            log.error("cannot save generation %d: %s", snapshot.generation, exc)


def access_log_filters(query: bytes) -> dict[str, Any] | str:
    """The access-log query's filters, or why they are refused."""
    try:
        fields = parse_qs(query.decode(), max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return "unreadable query"
    filters: dict[str, Any] = {"limit": 100}
    limit = fields.get("limit", [""])[-1]
    if limit:
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_ACCESS_LOG_LINES:
            return f"limit: a number from 1 to {MAX_ACCESS_LOG_LINES}"
        filters["limit"] = int(limit)
    for name in ACCESS_LOG_FILTERS:
        value = fields.get(name, [""])[-1][:256]
        if value:
            filters[name] = value
    return filters


class _Refused(Exception):
    """Raised from a parser callback to stop reading a request that has been answered."""


class ControlProtocol(asyncio.Protocol):
    """One control connection; requests are answered one at a time, in order.

    The connection is in one of four phases: `idle` (before a request's first byte), `head`,
    `body`, or `closing` (answered with a refusal; what still arrives is dropped). One timer
    follows the phase: the head timeout in idle and head, the body timeout between body bytes.
    """

    def __init__(self, api: ControlApi) -> None:
        # Shared state.
        self.api = api
        self.loop = asyncio.get_running_loop()
        # Per-connection state.
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.phase = "idle"
        self.head_size = 0
        self.timer: asyncio.TimerHandle | None = None
        self.lingered = 0
        self.eof = False
        # The answer in progress; the next one waits for it, so answers keep the requests' order.
        self.task: asyncio.Task[None] | None = None
        # Per-request state.
        self.url = b""
        self.authorization: bytes | None = None
        self.content_length: int | None = None
        self.expect_continue = False
        self.head_parsed = 0
        self.body = bytearray()
        self.body_limit = 0
        self.refusal: tuple[int, dict[str, str]] | None = None

    # -- the connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if len(self.api.connections) >= self.api.max_connections:
            self._refuse(503, {"error": "too many control connections"})
            return
        self.api.connections.add(self)
        self._arm(self.api.head_timeout)

    def data_received(self, data: bytes) -> None:
        if self.phase == "closing":
            self._linger(len(data))
            return
        if self.phase == "idle":
            self.phase = "head"
        if self.phase == "head":
            self.head_size += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, {"error": "no protocol upgrade here"})
            return
        except httptools.HttpParserError:
            self._refuse(*(self.refusal or (400, {"error": "malformed request"})))
            return
        # A head still incomplete after this read (a line without end, held by the parser) is
        # limited by the bytes read.
        if self.phase == "head" and self.head_size > self.api.max_head:
            self._refuse(431, {"error": f"request head over {self.api.max_head} bytes"})

    def eof_received(self) -> bool | None:
        if self.phase == "closing" or self.task is None or self.task.done():
            return None  # close
        # A client that sent its request and half-closed still gets the answer.
        self.eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        # A PUT in progress still completes: the console will read the result from /v1/status.
        self.api.connections.discard(self)
        self._disarm()
        self.transport = None

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.phase = "head"
        self.url = b""
        self.authorization = None
        self.content_length = None
        self.expect_continue = False
        self.head_parsed = 0
        self.body = bytearray()
        self.refusal = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_parsed += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_parsed += len(name) + len(value) + 4
        name = name.lower()
        if name == b"authorization":
            self.authorization = value
        elif name == b"content-length":
            # httptools has refused a malformed or repeated Content-Length already.
            self.content_length = int(value)
        elif name == b"expect":
            self.expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        # The bytes read so far may hold the start of the body too; the head is what was parsed.
        if self.head_parsed > self.api.max_head:
            self._stop(431, {"error": f"request head over {self.api.max_head} bytes"})
        try:
            path = httptools.parse_url(self.url).path if self.url else b"/"
        except httptools.HttpParserInvalidURLError:
            self._stop(400, {"error": "malformed request target"})
        refusal = self.api.admit(self.parser.get_method(), path, self.authorization)
        if refusal is not None:
            self._stop(*refusal)
        self.body_limit = self.api.body_limit(path)
        if self.content_length is not None and self.content_length > self.body_limit:
            self._stop(413, {"error": f"body over {self.body_limit} bytes"})
        self.phase = "body"
        if self.expect_continue and self.body_limit and self._reading():
            # The client waits for this before sending the body it announced.
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # type: ignore[union-attr]
        self._arm_if_reading(self.api.body_timeout)

    def on_body(self, body: bytes) -> None:
        if len(self.body) + len(body) > self.body_limit:
            self._stop(413, {"error": f"body over {self.body_limit} bytes"})
        self.body += body
        self._arm_if_reading(self.api.body_timeout)

    def on_message_complete(self) -> None:
        self._disarm()
        self.phase = "idle"
        self.head_size = 0
        # Hold further requests on this connection until this one is answered.
        self.transport.pause_reading()  # type: ignore[union-attr]
        url = httptools.parse_url(self.url) if self.url else None
        path = url.path if url is not None else b"/"
        body, self.body = self.body, bytearray()
        self.task = self.loop.create_task(
            self._answer(
                self.parser.get_method(),
                path,
                self.authorization,
                body,
                keep_alive=self.parser.should_keep_alive(),
                previous=self.task,
                query=(url.query or b"") if url is not None else b"",
            )
        )

    # -- answers -------------------------------------------------------------------------------

    async def _answer(
        self,
        method: bytes,
        path: bytes,
        authorization: bytes | None,
        body: Any,
        *,
        keep_alive: bool,
        previous: asyncio.Task[None] | None,
        query: bytes = b"",
    ) -> None:
        if previous is not None:
            # A pipelined request: answers go out in the order the requests came in.
            await asyncio.wait([previous])
        try:
            status, payload = await self.api.handle(method, path, authorization, body, query)
        except Exception:
            log.exception("control request %s %s failed", method.decode(), path.decode())
            status, payload = 500, {"error": "internal error"}
        del body
        if self.transport is None:
            return
        self._write(status, payload, keep_alive=keep_alive and not self.eof)
        if not keep_alive or self.eof:
            self.transport.close()
            return
        if self.phase == "closing":
            return  # a refusal of the next request follows this answer
        self.transport.resume_reading()
        if self.task is asyncio.current_task():
            # Nothing else is queued: the client's next request must come within the head timeout.
            self._arm(self.api.body_timeout if self.phase == "body" else self.api.head_timeout)

    def _stop(self, status: int, payload: dict[str, str]) -> None:
        """In a parser callback: answer `status` and read no more of this request."""
        self.refusal = (status, payload)
        raise _Refused

    def _refuse(self, status: int, payload: dict[str, str]) -> None:
        """Answer after the requests before this one, then close; drop what still comes."""
        if self.phase == "closing" or self.transport is None:
            return
        self.phase = "closing"
        self._disarm()
        previous = self.task
        if previous is None or previous.done():
            self._close_with(status, payload)
        else:
            self.transport.pause_reading()
            previous.add_done_callback(lambda _: self._close_with(status, payload))

    def _close_with(self, status: int, payload: dict[str, str]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        self._write(status, payload, keep_alive=False)
        if transport.can_write_eof():
            # Lingering close: a client still sending its body reads the answer instead of a
            # reset, which closing with unread bytes would send at once.
            transport.write_eof()
            transport.resume_reading()
            self.timer = self.loop.call_later(LINGER_TIMEOUT, transport.abort)
        else:
            transport.close()

    def _linger(self, size: int) -> None:
        self.lingered += size
        if self.lingered > LINGER_BYTES and self.transport is not None:
            self.transport.abort()

    def _timed_out(self) -> None:
        self.timer = None
        if self.phase == "idle":
            # Nothing of a request has come: close as quietly as HTTP allows.
            if self.transport is not None:
                self.transport.close()
            return
        self._refuse(408, {"error": f"request {self.phase} not received in time"})

    def _reading(self) -> bool:
        """False while an earlier request's answer is awaited (reading is paused then)."""
        return self.task is None or self.task.done()

    def _arm_if_reading(self, delay: float) -> None:
        # A paused connection is silent because of the node; its timer starts after the answer.
        if self._reading():
            self._arm(delay)

    def _arm(self, delay: float) -> None:
        self._disarm()
        self.timer = self.loop.call_later(delay, self._timed_out)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _write(self, status: int, payload: object, *, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if isinstance(payload, bytes):
            body = payload
            content_type = METRICS_CONTENT_TYPE
        elif isinstance(payload, str):
            body = payload.encode()
            content_type = b"text/plain; charset=utf-8"
        else:
            body = json.dumps(payload).encode()
            content_type = b"application/json"
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n" % (
            status,
            _REASONS.get(status, b"Unknown"),
            content_type,
            len(body),
        )
        if status == 401:
            head += b'WWW-Authenticate: Bearer realm="dataplane"\r\n'
        if status == 503:
            head += b"Retry-After: 1\r\n"
        if not keep_alive:
            head += b"Connection: close\r\n"
        transport.write(head + b"\r\n" + body)
