"""Exact request bytes against a real node: a listener in front of a recording backend, the
status the client got, and the node's open file descriptors.

The node runs in this process (tests/dataplane/conftest.py runs it on a background loop), so
/proc/self/fd counts its sockets: the client's, the pooled backend connections and the
backend's own ends. A battery measures it after a warm-up request has filled the pool, and
checks it is back there once every attack is over.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest_asyncio
import trustme

from tests.dataplane.conftest import (
    WAIT,
    RecordingBackend,
    get,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.dataplane.test_quic import SERVER_NAME, Harness
from tests.fixtures.ports import free_port

ADMIN_DENIED = {
    "id": "r-admin-host",
    "conditions": [{"type": "host", "values": ["admin.example"]}],
    "action": {"type": "fixed_response", "status_code": 403, "body": "denied"},
}
ADMIN_PATH_DENIED = {
    "id": "r-admin-path",
    "conditions": [{"type": "path", "values": ["/admin"]}],
    "action": {"type": "fixed_response", "status_code": 403, "body": "denied"},
}


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3}) ")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def serve(
    dataplane: Any,
    backend: RecordingBackend,
    *,
    rules: list[dict[str, Any]] | None = None,
    **settings: Any,
) -> int:
    """An HTTP listener in front of `backend`; its pool is warmed and the warm-up forgotten."""
    port = free_port()
    if rules:
        settings["forwarding_rules"] = rules
    result = dataplane.apply(snapshot([listener(port, **settings)], [server_group(backend)]))
    assert result["lsn-web"]["status"] == "running", result
    assert get(port, "/warm-up")[0] == 200
    backend.requests.clear()
    return port


def exchange(port: int, data: bytes, *, half_close: bool = True) -> tuple[bytes, bool]:
    """Send `data` in one write, then read until the node closes the connection.

    With `half_close` the client ends its side after the write, so the node answers what it
    read and closes; without it, only the node can end the connection. Returns what the client
    read and whether the node closed (False: it still held the connection after WAIT seconds).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return b"".join(chunks), True
            except TimeoutError:
                return b"".join(chunks), False
            if not chunk:
                return b"".join(chunks), True
            chunks.append(chunk)


def statuses(data: bytes) -> list[int]:
    """The status code of every response in the bytes a client read (bodies here never look
    like a status line)."""
    return [int(code) for code in _STATUS_LINE.findall(data)]


@contextmanager
def fds_return() -> Iterator[None]:
    """Assert the node holds no more file descriptors after the block than before it."""
    before = open_fds()
    yield
    assert wait_until(lambda: open_fds() <= before), (open_fds(), before)


@pytest_asyncio.fixture
async def quic(ca: trustme.CA) -> Any:
    """test_quic's harness: a node serving QUIC listeners, and recording backends."""
    harness = Harness(ca, ca.issue_cert(SERVER_NAME))
    yield harness
    await harness.close()
