"""HTTP calls to a dataplane node's control API (stdlib only: they run in Celery threads)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

TIMEOUT = 5.0


@dataclass
class NodeAnswer:
    """What a node answered: an ACK, a NACK (with reasons), or nothing (unreachable)."""

    status: int | None
    payload: dict = field(default_factory=dict)
    error: str = ""

    @property
    def reachable(self) -> bool:
        return self.status is not None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def reasons(self) -> list[str]:
        reasons = self.payload.get("reasons") or []
        if not isinstance(reasons, list):
            reasons = [reasons]
        if not reasons and self.payload.get("error"):
            reasons = [str(self.payload["error"])]
        return [str(reason) for reason in reasons] or ([self.error] if self.error else [])


def call(
    method: str, base_url: str, path: str, token: str, body: bytes | None = None
) -> NodeAnswer:
    request = urllib.request.Request(
        base_url.rstrip("/") + path,
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return NodeAnswer(response.status, _json(response.read()))
    except urllib.error.HTTPError as error:
        return NodeAnswer(error.code, _json(error.read()), error=f"HTTP {error.code}")
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        reason = getattr(error, "reason", error)
        return NodeAnswer(None, error=f"unreachable: {reason}")


def _refuse_constant(name: str) -> None:
    # NaN and Infinity are not JSON, and PostgreSQL's JSONB refuses to store them.
    raise ValueError(f"{name} is not a JSON value")


def _json(raw: bytes) -> dict:
    """A node's answer as a JSON object; anything else counts as an empty answer."""
    try:
        value = json.loads(raw or b"{}", parse_constant=_refuse_constant)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def put_config(base_url: str, token: str, snapshot_json: str) -> NodeAnswer:
    return call("PUT", base_url, "/v1/config", token, snapshot_json.encode())


def get_status(base_url: str, token: str) -> NodeAnswer:
    return call("GET", base_url, "/v1/status", token)


def get_access_log(base_url: str, token: str, listener_id: str, **filters: str | int) -> NodeAnswer:
    """A listener's recent access-log lines on one node, newest first (dataplane.control)."""
    query = urllib.parse.urlencode({name: value for name, value in filters.items() if value})
    listener = urllib.parse.quote(listener_id, safe="")
    return call("GET", base_url, f"/v1/listeners/{listener}/access-log?{query}", token)
