"""Shared fixtures for dataplane tests: a node on a background event loop, recording backends,
snapshot builders and certificates made at test time.

The node and the backends run on one uvloop loop in a background thread, so tests are plain
synchronous code using real clients (http.client, ssl, sockets), as a user would.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
import trustme
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from dataplane.config import Snapshot
from dataplane.eventloop import skip_transport_index
from dataplane.node import Node

T = TypeVar("T")
WAIT = 10.0


# -- event loop in a thread ------------------------------------------------------------------------


class LoopThread:
    """A uvloop event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        # As the node runs its own (dataplane.__main__, dataplane.workers).
        skip_transport_index(self.loop)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coroutine: Awaitable[T], timeout: float = WAIT) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)  # type: ignore[arg-type]

    def call(self, function: Callable[[], T], timeout: float = WAIT) -> T:
        async def wrapper() -> T:
            return function()

        return self.run(wrapper(), timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self.run(cancel_all(), timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


# -- recording backends ----------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    peer: tuple[str, int]

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return ", ".join(values) if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def names(self) -> list[str]:
        return [k for k, _ in self.headers]


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    chunked: bool = False
    delay: float = 0.0
    close: bool = False


class RecordingBackend:
    """An HTTP/1.1 server (keep-alive, chunked in and out) that records every request."""

    def __init__(self, name: str, handler: Callable[[Recorded], Reply] | None = None) -> None:
        self.name = name
        self.handler = handler
        self.requests: list[Recorded] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self.connections = 0

    async def start(self, port: int = 0, tls: ssl.SSLContext | None = None) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port, ssl=tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection: a killed server."""
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    def reply(self, request: Recorded) -> Reply:
        if self.handler is not None:
            return self.handler(request)
        return Reply(body=self.name.encode())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.add(writer)
        self.connections += 1
        peer = writer.get_extra_info("peername")
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, version = lines[0].split(" ", 2)
                headers = []
                for line in lines[1:]:
                    if line:
                        name, _, value = line.partition(":")
                        headers.append((name, value.strip()))
                request = Recorded(method, target, version, headers, b"", peer)
                expect = request.header("Expect")
                if expect and expect.lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.body = await self._read_body(reader, request)
                self.requests.append(request)
                reply = self.reply(request)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                await self._write_reply(writer, request, reply)
                connection = (request.header("Connection") or "").lower()
                if reply.close or connection == "close":
                    writer.close()
                    return
        except (ConnectionError, asyncio.CancelledError):
            # A killed backend or the end of the test: nothing to answer any more.
            return
        finally:
            self.writers.discard(writer)
            # Else its end stays in CLOSE-WAIT until garbage collection: a descriptor that
            # descriptor counts would blame on the node.
            writer.close()

    @staticmethod
    async def _read_body(reader: asyncio.StreamReader, request: Recorded) -> bytes:
        if (request.header("Transfer-Encoding") or "").lower() == "chunked":
            body = b""
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")
                    return body
                body += await reader.readexactly(size)
                await reader.readexactly(2)
        length = int(request.header("Content-Length") or 0)
        return await reader.readexactly(length) if length else b""

    @staticmethod
    async def _write_reply(writer: asyncio.StreamWriter, request: Recorded, reply: Reply) -> None:
        reason = http.client.responses.get(reply.status, "Unknown")
        head = f"HTTP/1.1 {reply.status} {reason}\r\n"
        for name, value in reply.headers:
            head += f"{name}: {value}\r\n"
        if reply.chunked:
            head += "Transfer-Encoding: chunked\r\n"
        elif reply.status not in (204, 304):
            head += f"Content-Length: {len(reply.body)}\r\n"
        if reply.close:
            head += "Connection: close\r\n"
        writer.write(head.encode() + b"\r\n")
        if request.method == "HEAD" or reply.status in (204, 304):
            pass
        elif reply.chunked:
            for start in range(0, len(reply.body), 7):
                piece = reply.body[start : start + 7]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(reply.body)
        await writer.drain()


@pytest.fixture
def backends(loop_thread: LoopThread) -> Iterator[Callable[..., RecordingBackend]]:
    """Factory: backends("a") starts a recording backend on an ephemeral port."""
    started: list[RecordingBackend] = []

    def start(
        name: str,
        handler: Callable[[Recorded], Reply] | None = None,
        *,
        tls: ssl.SSLContext | None = None,
    ) -> RecordingBackend:
        backend = RecordingBackend(name, handler)
        loop_thread.run(backend.start(tls=tls))
        started.append(backend)
        return backend

    yield start
    for backend in started:
        loop_thread.run(backend.stop())


# -- the node --------------------------------------------------------------------------------------


class NodeHandle:
    def __init__(self, loop_thread: LoopThread) -> None:
        self.loop_thread = loop_thread
        self.node = loop_thread.call(Node)

    def apply(self, snapshot: dict[str, Any] | Snapshot) -> dict[str, dict[str, str]]:
        if isinstance(snapshot, dict):
            snapshot = Snapshot.from_dict(snapshot)
        return self.loop_thread.run(self.node.apply(snapshot))

    def status(self) -> dict[str, Any]:
        return self.loop_thread.call(self.node.status)

    def stats(self, listener_id: str) -> dict[str, Any]:
        return self.status()["listeners"][listener_id]["counters"]


@pytest.fixture
def dataplane(loop_thread: LoopThread) -> Iterator[NodeHandle]:
    handle = NodeHandle(loop_thread)
    yield handle
    loop_thread.run(handle.node.shutdown(0))


# -- snapshots -------------------------------------------------------------------------------------


def server_group(
    *backends: RecordingBackend | tuple[RecordingBackend, int],
    group_id: str = "sgp-web",
    protocol: str = "http",
    health_check: dict[str, Any] | None = None,
) -> dict[str, Any]:
    servers = []
    for index, item in enumerate(backends):
        backend, weight = item if isinstance(item, tuple) else (item, 100)
        servers.append(
            {
                "id": f"srv-{backend.name}-{index}",
                "address": "127.0.0.1",
                "port": backend.port,
                "weight": weight,
            }
        )
    return {
        "id": group_id,
        "name": group_id,
        "backend_protocol": protocol,
        "servers": servers,
        "health_check": health_check or {"enabled": False},
    }


def listener(
    port: int,
    *,
    listener_id: str = "lsn-web",
    protocol: str = "http",
    group_id: str = "sgp-web",
    **settings: Any,
) -> dict[str, Any]:
    return {
        "id": listener_id,
        "name": listener_id,
        "protocol": protocol,
        "port": port,
        "server_group_id": group_id,
        **settings,
    }


def snapshot(
    listeners: list[dict[str, Any]],
    groups: list[dict[str, Any]],
    *,
    generation: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "instance_id": "lb-test0001",
        "generation": generation,
        "listeners": listeners,
        "server_groups": groups,
        **extra,
    }


# -- clients ---------------------------------------------------------------------------------------


def get(
    port: int,
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the peer sends until it closes (a reset or a TLS close ends it too)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError, ssl.SSLError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def raw_exchange(port: int, data: bytes, *, timeout: float = WAIT) -> bytes:
    """Send raw bytes, then read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def split_responses(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in a byte stream of Content-Length framed responses."""
    responses = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        responses.append((int(lines[0].split()[1]), rest[:length]))
        data = rest[length:]
    return responses


# -- certificates ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA(organization_name="Dataplane Test CA")


def certificate_entry(cert_id: str, leaf: trustme.LeafCert) -> dict[str, str]:
    chain = [blob.bytes().decode() for blob in leaf.cert_chain_pems]
    return {
        "id": cert_id,
        "certificate_pem": chain[0],
        "private_key_pem": leaf.private_key_pem.bytes().decode(),
        "chain_pem": "".join(chain[1:]),
    }


def self_signed(common_name: str, *, key_size: int = 1024) -> dict[str, str]:
    """A self-signed RSA certificate, for key sizes trustme does not make."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return {
        "certificate_pem": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "private_key_pem": key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode(),
    }


def peer_certificate(
    port: int, server_name: str | None, context: ssl.SSLContext
) -> x509.Certificate:
    """Handshake with SNI `server_name` and return the certificate the listener served."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
        with context.wrap_socket(raw, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def unverified_client() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    return context


def wait_until(
    predicate: Callable[[], bool], timeout: float = WAIT, interval: float = 0.02
) -> bool:

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
