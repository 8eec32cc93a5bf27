"""The control API: authentication, ACK and NACK, generations, status and persistence."""

from __future__ import annotations

import http.client
import json
import os
import socket
import stat

import pytest

from dataplane.config import Snapshot
from dataplane.control import ControlApi
from dataplane.state import SnapshotStore
from tests.dataplane.conftest import (
    WAIT,
    get,
    listener,
    server_group,
    snapshot,
)
from tests.fixtures.ports import free_port

TOKEN = "s3cret-token"


class ControlClient:
    def __init__(self, port: int) -> None:
        self.port = port

    def request(
        self, method: str, path: str, body: object = None, *, token: str | None = TOKEN
    ) -> tuple[int, object]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        if response.getheader("Content-Type") == "application/json":
            return response.status, json.loads(payload)
        return response.status, payload.decode()

    def put(self, body: object, **kwargs) -> tuple[int, object]:
        return self.request("PUT", "/v1/config", body, **kwargs)


@pytest.fixture
def store(tmp_path) -> SnapshotStore:
    return SnapshotStore(tmp_path / "state")


@pytest.fixture
def control(loop_thread, dataplane, store) -> ControlClient:
    api = loop_thread.call(lambda: ControlApi(dataplane.node, token=TOKEN, store=store))
    _, port = loop_thread.run(api.start("127.0.0.1", 0))
    yield ControlClient(port)
    loop_thread.call(api.close)


def test_healthz_needs_no_token(control):
    assert control.request("GET", "/v1/healthz", token=None) == (200, "ok")


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_requests_without_the_right_token_are_refused(control, token):
    status, _ = control.request("GET", "/v1/status", token=token)
    assert status == 401
    status, _ = control.put(snapshot([], []), token=token)
    assert status == 401


def test_unknown_path_and_wrong_method(control):
    assert control.request("GET", "/v1/nothing")[0] == 404
    assert control.request("POST", "/v1/config", snapshot([], []))[0] == 405
    assert control.request("PUT", "/v1/status", {})[0] == 405


def test_put_config_acks_with_listener_status(control, backends):
    web = backends("web")
    port = free_port()
    status, body = control.put(snapshot([listener(port)], [server_group(web)], generation=3))
    assert status == 200
    assert body == {
        "generation": 3,
        "listeners": {"lsn-web": {"status": "running", "reason": ""}},
        "persisted": True,
    }
    assert get(port)[2] == b"web"


def test_invalid_snapshot_is_nacked_and_the_last_good_one_keeps_serving(control, backends):
    web = backends("web")
    port = free_port()
    control.put(snapshot([listener(port)], [server_group(web)], generation=1))

    bad = snapshot([listener(70000)], [server_group(web)], generation=2)
    bad["listeners"][0]["colour"] = "blue"
    status, body = control.put(bad)
    assert status == 422
    assert body["error"] == "invalid snapshot"
    assert "listeners[0].colour: unknown field" in body["reasons"]

    status, body = control.put(snapshot([listener(70000)], [server_group(web)], generation=2))
    assert status == 422
    assert body["reasons"] == ["listeners[0].port: 70000 is out of range 1-65535"]

    assert control.put(b"{not json")[0] == 422
    assert get(port)[2] == b"web"
    assert control.request("GET", "/v1/status")[1]["generation"] == 1


def test_generations_only_move_forward(control, backends):
    web = backends("web")
    port = free_port()
    current = snapshot([listener(port)], [server_group(web)], generation=5)
    assert control.put(current)[0] == 200

    status, body = control.put({**current, "generation": 4})
    assert status == 409
    assert body["generation"] == 5
    assert "older" in body["error"]

    # The same generation again is idempotent.
    assert control.put(current) == (
        200,
        {
            "generation": 5,
            "listeners": {"lsn-web": {"status": "running", "reason": ""}},
            "persisted": True,
        },
    )
    # ... but not with other content.
    changed = snapshot([listener(port, idle_timeout=30)], [server_group(web)], generation=5)
    assert control.put(changed)[0] == 409


def test_port_in_use_fails_only_that_listener(control, backends):
    web = backends("web")
    free, taken = free_port(), free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", taken))
    blocker.listen()
    try:
        listeners = [listener(free), listener(taken, listener_id="lsn-blocked")]
        status, body = control.put(snapshot(listeners, [server_group(web)], generation=1))
        assert status == 200
        assert body["listeners"]["lsn-web"] == {"status": "running", "reason": ""}
        assert body["listeners"]["lsn-blocked"] == {
            "status": "failed",
            "reason": f"port {taken} already in use",
        }
        assert get(free)[2] == b"web"
    finally:
        blocker.close()
    # Once the port is free, sending the same generation again starts the listener.
    status, body = control.put(snapshot(listeners, [server_group(web)], generation=1))
    assert body["listeners"]["lsn-blocked"]["status"] == "running"
    assert get(taken)[2] == b"web"


def test_status_reports_counters_and_backend_health(control, backends):
    web = backends("web")
    port = free_port()
    check = {
        "enabled": True,
        "protocol": "tcp",
        "interval": 1,
        "timeout": 1,
        "healthy_threshold": 1,
        "unhealthy_threshold": 1,
    }
    control.put(snapshot([listener(port)], [server_group(web, health_check=check)]))
    get(port)
    status, body = control.request("GET", "/v1/status")
    assert status == 200
    assert body["generation"] == 1
    entry = body["listeners"]["lsn-web"]
    assert entry["status"] == "running"
    assert entry["counters"]["requests"] == 1
    assert entry["counters"]["responses"]["2xx"] == 1
    assert set(entry["counters"]) >= {"active_connections", "bytes_in", "bytes_out"}
    [backend] = entry["backends"]
    assert backend["healthy"] is True
    assert backend["port"] == web.port
    assert backend["reason"] in ("not checked yet", "ok (TCP connect)")


def test_applied_snapshot_is_saved_privately(control, backends, store):
    web = backends("web")
    port = free_port()
    applied = snapshot([listener(port)], [server_group(web)], generation=7)
    control.put(applied)

    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    # Written through a temporary file that was renamed into place: nothing else is left.
    assert [p.name for p in store.directory.iterdir()] == ["snapshot.json"]
    assert store.load() == Snapshot.from_dict(applied)


def test_a_rejected_snapshot_is_not_saved(control, backends, store):
    web = backends("web")
    port = free_port()
    control.put(snapshot([listener(port)], [server_group(web)], generation=2))
    control.put(snapshot([listener(port)], [server_group(web)], generation=1))
    assert store.load().generation == 2


def test_an_unreadable_saved_snapshot_is_ignored(store):
    store.directory.mkdir(parents=True)
    store.path.write_text('{"instance_id": "lb-x", "generation": "seven"}')
    assert store.load() is None
    assert store.path.exists()  # kept for inspection
