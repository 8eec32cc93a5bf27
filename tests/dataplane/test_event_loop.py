"""The node's event loop without uvloop's per-transport index (dataplane.eventloop).

The node and every dataplane test loop (conftest.LoopThread) run this way, so the whole suite
covers it; these tests pin what it changes and what it must not.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import socket
import weakref

import uvloop

from dataplane.eventloop import skip_transport_index, transport_index
from tests.dataplane.conftest import (
    WAIT,
    LoopThread,
    NodeHandle,
    RecordingBackend,
    get,
    listener,
    server_group,
    snapshot,
)
from tests.fixtures.ports import free_port
from tests.fixtures.resources import open_fds

CONNECTIONS = 200


def _transports() -> int:
    """uvloop TCP transports still alive."""
    gc.collect()
    return sum(1 for obj in gc.get_objects() if type(obj).__name__ == "TCPTransport")


def test_the_index_keeps_nothing_and_the_node_serves(
    loop_thread: LoopThread,
    dataplane: NodeHandle,
    backends,
) -> None:
    index = transport_index(loop_thread.loop)
    assert index is not None
    backend: RecordingBackend = backends("a")
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(backend)]))
    fds = open_fds()
    for number in range(CONNECTIONS):
        status, _, _ = get(port, f"/n{number}", headers={"Connection": "close"})
        assert status == 200
    assert [request.target for request in backend.requests] == [
        f"/n{number}" for number in range(CONNECTIONS)
    ]
    # While a client's connection is open, the index holds nothing either.
    held = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    held.request("GET", "/held")
    assert held.getresponse().read() == b"a"
    assert loop_thread.call(lambda: len(index)) == 0
    held.close()
    # Transports are still freed when their connections end: nothing kept them.
    assert loop_thread.call(_transports) <= 4
    assert open_fds() <= fds + 2


def test_a_plain_uvloop_loop_is_changed_once() -> None:
    loop = uvloop.new_event_loop()
    try:
        index = transport_index(loop)
        assert type(index) is weakref.WeakValueDictionary
        assert skip_transport_index(loop)
        assert skip_transport_index(loop)
        index = transport_index(loop)
        assert type(index) is not weakref.WeakValueDictionary
        index[3] = loop  # what uvloop does for each transport
        assert len(index) == 0
        assert index.get(3) is None
    finally:
        loop.close()


def test_an_asyncio_loop_is_left_alone() -> None:
    loop = asyncio.new_event_loop()
    try:
        assert not skip_transport_index(loop)
    finally:
        loop.close()


def test_add_reader_on_a_socket_still_works() -> None:
    """The node's own readers (the supervisor's pipe) are plain descriptors, never transports'."""
    loop = uvloop.new_event_loop()
    skip_transport_index(loop)
    left, right = socket.socketpair()
    try:
        got = loop.create_future()
        loop.add_reader(left.fileno(), lambda: got.set_result(left.recv(16)))
        right.send(b"ping")
        assert loop.run_until_complete(asyncio.wait_for(got, 5)) == b"ping"
        loop.remove_reader(left.fileno())
    finally:
        left.close()
        right.close()
        loop.close()
