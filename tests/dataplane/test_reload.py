"""Applying snapshots is hitless: changed listeners swap settings, the others stay as they are."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time

import pytest

from tests.dataplane.conftest import (
    WAIT,
    Reply,
    certificate_entry,
    get,
    listener,
    server_group,
    snapshot,
    wait_until,
)
from tests.fixtures.ports import free_port


def test_twenty_generations_under_load_fail_no_request(dataplane, backends):
    a = backends("a", lambda request: Reply(body=b"a", delay=0.005))
    b = backends("b", lambda request: Reply(body=b"b", delay=0.005))
    port, other_port = free_port(), free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(a, b)]))

    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def keep_alive_client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        while not stop.is_set():
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                body = response.read()
                if response.status != 200 or body not in (b"a", b"b"):
                    failures.append(f"{response.status} {body!r}")
                if response.getheader("Connection") == "close":
                    connection.close()
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
                done[0] += 1
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
        connection.close()

    def new_connection_client() -> None:
        while not stop.is_set():
            try:
                status, _, body = get(port)
                if status != 200:
                    failures.append(f"{status} {body!r}")
                done[0] += 1
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))

    clients = [
        threading.Thread(target=keep_alive_client),
        threading.Thread(target=new_connection_client),
    ]
    for client in clients:
        client.start()
    try:
        for generation in range(2, 22):
            weight = 10 + generation * 4
            listeners = [
                listener(
                    port,
                    x_forwarded_proto=generation % 2 == 0,
                    idle_timeout=10 + generation,
                    scheduler="round_robin" if generation % 3 == 0 else "weighted_round_robin",
                )
            ]
            if generation % 4 == 0:
                listeners.append(listener(other_port, listener_id="lsn-other"))
            result = dataplane.apply(
                snapshot(listeners, [server_group(a, (b, weight))], generation=generation)
            )
            assert result["lsn-web"]["status"] == "running"
            time.sleep(0.05)
    finally:
        stop.set()
        for client in clients:
            client.join(WAIT)
    assert failures == []
    assert done[0] > 50
    assert dataplane.node.generation == 21


def test_unchanged_listener_is_not_touched(dataplane, backends):
    web = backends("web")
    other = backends("other")
    keep_port, change_port = free_port(), free_port()
    groups = [server_group(web), server_group(other, group_id="sgp-other")]
    check = {"enabled": True, "protocol": "tcp", "interval": 5, "timeout": 2}
    groups[0]["health_check"] = check
    first = [
        listener(keep_port),
        listener(change_port, listener_id="lsn-change", group_id="sgp-other"),
    ]
    dataplane.apply(snapshot(first, groups))
    kept = dataplane.node.listeners["lsn-web"]
    changed = dataplane.node.listeners["lsn-change"]
    before = (kept.server, kept.settings, kept.sock, dataplane.node.groups["sgp-web"].checker)
    change_socket = changed.sock.fileno()
    change_settings = changed.settings
    connection = http.client.HTTPConnection("127.0.0.1", keep_port, timeout=WAIT)
    connection.request("GET", "/")
    assert connection.getresponse().read() == b"web"

    second = [
        first[0],
        listener(
            change_port, listener_id="lsn-change", group_id="sgp-other", x_forwarded_proto=True
        ),
    ]
    dataplane.apply(snapshot(second, groups, generation=2))

    after = (kept.server, kept.settings, kept.sock, dataplane.node.groups["sgp-web"].checker)
    assert after == before
    assert changed.sock.fileno() == change_socket  # same listening socket
    assert changed.settings is not change_settings
    connection.request("GET", "/")
    assert connection.getresponse().read() == b"web"
    connection.close()
    get(change_port)
    assert other.requests[-1].header("X-Forwarded-Proto") == "http"


def test_request_in_flight_finishes_on_the_old_settings(dataplane, backends):
    def reply(request):
        return Reply(
            body=b"slow" if request.target == "/slow" else b"fast",
            delay=1.0 if request.target == "/slow" else 0,
        )

    web = backends("web", reply)
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(web)]))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    connection.request("GET", "/slow")
    assert wait_until(lambda: len(web.requests) == 1)

    # The server group itself changes (the server gets a new id and weight) mid-request.
    group = server_group(web)
    group["servers"][0].update(id="srv-renamed", weight=50)
    dataplane.apply(snapshot([listener(port, x_forwarded_proto=True)], [group], generation=2))

    response = connection.getresponse()
    assert (response.status, response.read()) == (200, b"slow")
    assert web.requests[0].header("X-Forwarded-Proto") is None
    # The next request on the same connection uses the new generation.
    connection.request("GET", "/next")
    assert connection.getresponse().read() == b"fast"
    assert web.requests[1].header("X-Forwarded-Proto") == "http"
    connection.close()


@pytest.mark.parametrize("how", ["stop", "remove"])
def test_stopped_or_removed_listener_closes_socket_and_connections(dataplane, backends, how):
    web = backends("web")
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(web)]))
    connection = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
    connection.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert connection.recv(65536).startswith(b"HTTP/1.1 200")

    listeners = [listener(port, enabled=False)] if how == "stop" else []
    result = dataplane.apply(snapshot(listeners, [server_group(web)], generation=2))

    if how == "stop":
        assert result["lsn-web"] == {"status": "stopped", "reason": ""}
    else:
        assert "lsn-web" not in result
    # Seed 003: stopping interrupts active connections.
    try:
        assert connection.recv(65536) == b""
    except ConnectionResetError:
        pass
    connection.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=WAIT)

    if how == "stop":
        result = dataplane.apply(snapshot([listener(port)], [server_group(web)], generation=3))
        assert result["lsn-web"]["status"] == "running"
        assert get(port)[2] == b"web"


def test_health_survives_a_weight_change(dataplane, backends, loop_thread):
    up, down = backends("up"), backends("down")
    check = {
        "enabled": True,
        "protocol": "tcp",
        "interval": 1,
        "timeout": 1,
        "healthy_threshold": 2,
        "unhealthy_threshold": 1,
    }
    port = free_port()
    dataplane.apply(snapshot([listener(port)], [server_group(up, down, health_check=check)]))
    loop_thread.run(down.stop())

    def down_marked() -> bool:
        backends_status = dataplane.status()["listeners"]["lsn-web"]["backends"]
        return not next(b for b in backends_status if b["port"] == down.port)["healthy"]

    assert wait_until(down_marked, timeout=5)
    dataplane.apply(
        snapshot([listener(port)], [server_group((up, 60), down, health_check=check)], generation=2)
    )
    # The rebuilt group starts from the known health: the dead server gets nothing.
    assert down_marked()
    assert {get(port)[:3:2] for _ in range(6)} == {(200, b"up")}


def test_certificate_rotation_under_load_fails_no_handshake(dataplane, backends, ca):
    web = backends("web")
    port = free_port()
    leaves = [ca.issue_cert("www.example.com") for _ in range(2)]

    def apply(generation: int) -> None:
        certificate = certificate_entry("cert-default", leaves[generation % 2])
        tls_listener = listener(port, protocol="https", default_certificate_id="cert-default")
        result = dataplane.apply(
            snapshot(
                [tls_listener],
                [server_group(web)],
                certificates=[certificate],
                generation=generation,
            )
        )
        assert result["lsn-web"]["status"] == "running"

    apply(1)
    context = ssl.create_default_context()
    ca.configure_trust(context)
    context.check_hostname = False
    stop = threading.Event()
    failures: list[str] = []
    done = [0]

    def client() -> None:
        while not stop.is_set():
            connection = http.client.HTTPSConnection(
                "127.0.0.1", port, timeout=WAIT, context=context
            )
            try:
                for _ in range(3):
                    connection.request("GET", "/", headers={"Host": "www.example.com"})
                    response = connection.getresponse()
                    if (response.status, response.read()) != (200, b"web"):
                        failures.append(str(response.status))
                    done[0] += 1
            except (OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
            finally:
                connection.close()

    threads = [threading.Thread(target=client) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for generation in range(2, 12):
            apply(generation)
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(WAIT)
    assert failures == []
    assert done[0] > 20
