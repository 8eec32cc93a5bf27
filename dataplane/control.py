"""The control API: a small HTTP/1.1 server on loopback that the console's push task talks to.

    PUT /v1/config   apply a snapshot; ACK 200, NACK 422 (invalid) or 409 (older generation)
    GET /v1/status   applied generation, listener status and counters, backend health
    GET /v1/healthz  liveness, without a token

Every request but healthz carries `Authorization: Bearer <token>`, compared in constant time. The
server is written on asyncio and httptools like the proxy itself, with no web framework.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging

import httptools

from dataplane.config import ConfigError, Snapshot
from dataplane.node import GenerationConflict, Node, StaleGeneration
from dataplane.state import SnapshotStore

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024 * 1024
MAX_HEAD = 64 * 1024
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    409: b"Conflict",
    413: b"Content Too Large",
    422: b"Unprocessable Content",
    500: b"Internal Server Error",
}


class ControlApi:
    """Routes control requests to the node and keeps the applied snapshot on disk."""

    def __init__(self, node: Node, *, token: str, store: SnapshotStore | None = None) -> None:
        if not token:
            raise ValueError("the control API needs a non-empty token")
        self.node = node
        self.store = store
        self._token = token.encode()
        # Apply and save in one critical section, so the file never lags behind a newer apply.
        self._apply_lock = asyncio.Lock()
        # A node started from the store runs what the store holds.
        self._saved_generation = node.generation if store is not None else 0
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

    async def handle(
        self, method: bytes, path: bytes, authorization: bytes | None, body: bytes
    ) -> tuple[int, object]:
        if path == b"/v1/healthz":
            return 200, "ok"
        if path not in (b"/v1/config", b"/v1/status"):
            return 404, {"error": "not found"}
        if not self.authorized(authorization):
            return 401, {"error": "missing or wrong bearer token"}
        if path == b"/v1/status":
            if method != b"GET":
                return 405, {"error": "use GET"}
            return 200, self.node.status()
        if method != b"PUT":
            return 405, {"error": "use PUT"}
        return await self.put_config(body)

    async def put_config(self, body: bytes) -> tuple[int, object]:
        try:
            snapshot = Snapshot.from_json(body)
        except ConfigError as exc:
            return 422, {"error": "invalid snapshot", "reasons": exc.reasons}
        async with self._apply_lock:
            try:
                results = await self.node.apply(snapshot)
            except (StaleGeneration, GenerationConflict) as exc:
                return 409, {
                    "error": str(exc),
                    "reasons": [f"generation: {exc}"],
                    "generation": self.node.generation,
                }
            if self.store is not None and snapshot.generation != self._saved_generation:
                try:
                    await asyncio.to_thread(self.store.save, snapshot)
                    self._saved_generation = snapshot.generation
                except OSError as exc:
                    # The node runs the new generation either way; say that it would not survive
                    # a restart.
                    log.error("cannot save generation %d: %s", snapshot.generation, exc)
        persisted = self._saved_generation == snapshot.generation
        return 200, {
            "generation": snapshot.generation,
            "listeners": results,
            "persisted": persisted,
        }


class ControlProtocol(asyncio.Protocol):
    """One control connection; requests are answered one at a time, in order."""

    def __init__(self, api: ControlApi) -> None:
        self.api = api
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.authorization: bytes | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.error = 0
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._respond(self.error or 400, {"error": "malformed request"}, keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        # A PUT in progress still completes: the console will read the result from /v1/status.
        self.transport = None

    def on_message_begin(self) -> None:
        self.url = b""
        self.authorization = None
        self.body = []
        self.size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_HEAD:
            self.error = 400
            raise ValueError("URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"authorization":
            self.authorization = value

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_BODY:
            self.error = 413
            raise ValueError("body too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        # Hold further requests on this connection until this one is answered.
        self.transport.pause_reading()  # type: ignore[union-attr]
        method = self.parser.get_method()
        keep_alive = self.parser.should_keep_alive()
        path = httptools.parse_url(self.url).path if self.url else b"/"
        body = b"".join(self.body)
        self.task = asyncio.get_running_loop().create_task(
            self._answer(
                method, path, self.authorization, body, keep_alive=keep_alive, previous=self.task
            )
        )

    async def _answer(
        self,
        method: bytes,
        path: bytes,
        authorization: bytes | None,
        body: bytes,
        *,
        keep_alive: bool,
        previous: asyncio.Task[None] | None,
    ) -> None:
        if previous is not None:
            # A pipelined request: answers go out in the order the requests came in.
            await asyncio.wait([previous])
        try:
            status, payload = await self.api.handle(method, path, authorization, body)
        except Exception:
            log.exception("control request %s %s failed", method.decode(), path.decode())
            status, payload = 500, {"error": "internal error"}
        self._respond(status, payload, keep_alive=keep_alive)
        if self.transport is not None and keep_alive:
            self.transport.resume_reading()

    def _respond(self, status: int, payload: object, *, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if isinstance(payload, str):
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
        if not keep_alive:
            head += b"Connection: close\r\n"
        transport.write(head + b"\r\n" + body)
        if not keep_alive:
            transport.close()
