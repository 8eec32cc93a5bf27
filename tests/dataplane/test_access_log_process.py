"""Where a real node process (python -m dataplane) writes its access-log lines, by its
`--access-log` option: access.log in the state directory, stdout, both, or neither, and in every
case the recent lines the console reads over the control API. A real client and backend on
loopback; the process's stdout is a file the test reads."""

from __future__ import annotations

import json
import os
import secrets
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.dataplane.conftest import WAIT, get, listener, server_group, snapshot, wait_until
from tests.fixtures.ports import free_port
from tests.fixtures.processes import DataplaneNode

pytestmark = pytest.mark.integration


def _start(tmp_path: Path, where: str) -> DataplaneNode:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    token = secrets.token_urlsafe(24)
    (tmp_path / "token").write_text(token)
    port = free_port()
    process = DataplaneNode(
        "node",
        [
            sys.executable,
            "-m",
            "dataplane",
            "--control",
            f"127.0.0.1:{port}",
            "--token-file",
            str(tmp_path / "token"),
            "--state-dir",
            str(state_dir),
            "--access-log",
            where,
            "--access-log-max-mib",
            "1",
            "--access-log-keep",
            "1",
        ],
        {**os.environ, "PYTHONUNBUFFERED": "1"},
        tmp_path / "node.log",
        control_port=port,
        token=token,
        state_dir=state_dir,
    )
    process.start()
    return process


def _call(node: DataplaneNode, method: str, path: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(
        node.url + path,
        data=json.dumps(body).encode() if body is not None else None,
        method=method,
        headers={"Authorization": f"Bearer {node.token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        return json.loads(response.read())


def _stdout_lines(node: DataplaneNode) -> list[dict]:
    """The JSON access-log lines among what the process wrote (its log lines are not JSON)."""
    found = []
    for text in node.log().splitlines():
        if text.startswith("{"):
            entry = json.loads(text)
            if "listener" in entry:
                found.append(entry)
    return found


@pytest.mark.parametrize(
    ("where", "to_file", "to_stdout"),
    [("file", True, False), ("stdout", False, True), ("both", True, True), ("off", False, False)],
)
def test_the_access_log_option_decides_where_lines_go(
    tmp_path, backends, where, to_file, to_stdout
) -> None:
    web = backends("web")
    node = _start(tmp_path, where)
    try:
        node.wait_ready()
        port = free_port()
        _call(
            node,
            "PUT",
            "/v1/config",
            snapshot([listener(port, access_log=True)], [server_group(web)]),
        )
        assert [get(port, f"/{where}/{n}")[0] for n in range(2)] == [200, 200]
        # The console's copy, whatever the option.
        assert wait_until(
            lambda: len(_call(node, "GET", "/v1/listeners/lsn-web/access-log")["lines"]) == 2
        )
        ring = _call(node, "GET", "/v1/listeners/lsn-web/access-log")["lines"]
        log_file = node.state_dir / "access.log"
        if to_file:
            assert wait_until(lambda: log_file.exists() and log_file.read_bytes().count(b"\n") == 2)
        if to_stdout:
            assert wait_until(lambda: len(_stdout_lines(node)) == 2), node.log()
    finally:
        node.stop(timeout=5)

    assert [line["path"] for line in ring] == [f"/{where}/1", f"/{where}/0"]
    expected = list(reversed(ring))
    if to_file:
        assert [json.loads(raw) for raw in log_file.read_bytes().splitlines()] == expected
    else:
        assert not log_file.exists()
    assert _stdout_lines(node) == (expected if to_stdout else [])
