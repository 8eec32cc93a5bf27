"""Why each backend server is up or down, as the nodes last reported it (their /v1/status, stored
by reconcile in DataplaneNode.status_report): state, reason code and text, when the health last
changed, slow start, weight 0, draining or maintenance as the node applies it, and the timeline
of the last checks."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.db.models import Q
from django.utils import timezone

from console.models import DataplaneNode

if TYPE_CHECKING:
    from listeners.models import ServerGroup

# The server states a node reports (dataplane.config.SERVER_STATES); anything else reads as
# enabled, which is what an older node that reports none means.
NODE_STATES = ("enabled", "draining", "maintenance")

# The node's reason codes, as the console words them.
CODE_LABELS = {
    "ok": "Check passed",
    "refused": "Connection refused",
    "timeout": "Timeout",
    "status_mismatch": "Status code mismatch",
    "tls_failure": "TLS failure",
    "reset": "Connection reset",
    "invalid_response": "Invalid response",
    "connect_failed": "Connection failed",
}


@dataclass(frozen=True)
class Check:
    at: datetime.datetime
    ok: bool
    code: str

    @property
    def label(self) -> str:
        return CODE_LABELS.get(self.code, self.code)


@dataclass
class ServerHealth:
    """One server as one node sees it."""

    node: str
    address: str
    port: int | None
    weight: int | None
    healthy: bool
    checked: bool
    reason: str
    code: str | None
    http_status: int | None
    last_change: datetime.datetime | None
    slow_start_percent: int | None
    checks: list[Check] = field(default_factory=list)
    # Passive health checks (dataplane.outlier): ejected now, why, and when it returns.
    ejected: bool = False
    ejection_reason: str = ""
    ejected_until: datetime.datetime | None = None
    # Draining or maintenance as this node applies it (the console's own State column shows
    # what was asked; this shows the node has it), and a drain's seconds left on the node.
    node_state: str = "enabled"
    drain_seconds_left: int | None = None

    @property
    def state_note(self) -> str:
        """ "Draining, 42 s left", "Draining", "Maintenance" or "" for an enabled server."""
        if self.node_state == "maintenance":
            return "Maintenance"
        if self.node_state == "draining":
            if self.drain_seconds_left is None:
                return "Draining"
            return f"Draining, {self.drain_seconds_left} s left"
        return ""

    @property
    def state(self) -> str:
        if self.ejected:
            return "Ejected"
        if not self.checked:
            return "Not checked"
        return "Healthy" if self.healthy else "Unhealthy"

    @property
    def code_label(self) -> str:
        return CODE_LABELS.get(self.code or "", self.code or "")

    @property
    def weight_zero(self) -> bool:
        return self.weight == 0


def describe(entry: dict[str, Any], node: str = "") -> ServerHealth:
    """A server entry of a node's status document, read defensively (an older node reports no
    code, no last change and no timeline)."""
    code = entry.get("reason_code")
    code = code if isinstance(code, str) and code else None
    reason = str(entry.get("reason") or "")
    checks = []
    timeline = entry.get("checks")
    for item in timeline if isinstance(timeline, list) else []:
        if isinstance(item, list) and len(item) == 3 and _finite(item[0]):
            checks.append(Check(_moment(item[0]), bool(item[1]), str(item[2])))
    percent = entry.get("slow_start_percent")
    status = entry.get("http_status")
    ejected = entry.get("ejected") is True
    until = entry.get("ejected_until")
    node_state = entry.get("state")
    node_state = node_state if node_state in NODE_STATES else "enabled"
    drain_left = entry.get("drain_seconds_left")
    return ServerHealth(
        node=str(entry.get("node") or node),
        address=str(entry.get("address") or ""),
        port=entry.get("port") if isinstance(entry.get("port"), int) else None,
        weight=entry.get("weight") if isinstance(entry.get("weight"), int) else None,
        healthy=entry.get("healthy") is True,
        # Without a health check every server is taken as healthy, and says so.
        checked=code is not None or reason == "health check disabled",
        reason=reason,
        code=code,
        http_status=status if isinstance(status, int) else None,
        last_change=_moment(entry["last_change"]) if _finite(entry.get("last_change")) else None,
        slow_start_percent=percent if isinstance(percent, int) else None,
        checks=checks,
        ejected=ejected,
        # Text from the node: shown escaped, and bounded like the reason.
        ejection_reason=str(entry.get("ejection_reason") or "")[:200] if ejected else "",
        ejected_until=_moment(until) if ejected and _finite(until) else None,
        node_state=node_state,
        drain_seconds_left=(
            round(drain_left) if node_state == "draining" and _finite(drain_left) else None
        ),
    )


def group_health(group: ServerGroup) -> dict[str, list[ServerHealth]]:
    """Each server of ``group`` (by server id) as every node that runs a listener of the group
    last reported it."""
    from listeners.models import Listener

    servers = {server.server_id for server in group.servers.all()}
    instances = set(
        Listener.objects.filter(Q(server_group=group)).values_list("instance_id", flat=True)
    )
    found: dict[str, list[ServerHealth]] = {server: [] for server in servers}
    # Where each (node, server) is in ``found``, and whether that entry carried the timeline (a
    # node gives it in one listener entry of the group only, dataplane.node.Node.status).
    seen: dict[tuple[int, str], tuple[int, bool]] = {}
    nodes = DataplaneNode.objects.filter(instance_id__in=instances).select_related("instance")
    several = len(instances) > 1
    for node in nodes.order_by("instance__name", "name"):
        name = f"{node.name} ({node.instance.name})" if several else node.name
        report = node.status_report if isinstance(node.status_report, dict) else {}
        listeners = report.get("listeners")
        for entry in listeners.values() if isinstance(listeners, dict) else []:
            if not isinstance(entry, dict) or entry.get("server_group_id") != group.pk:
                continue
            backends = entry.get("backends")
            for backend in backends if isinstance(backends, list) else []:
                if not isinstance(backend, dict):
                    continue
                server_id = backend.get("id")
                if not isinstance(server_id, str) or server_id not in found:
                    continue
                key, timeline = (node.pk, server_id), "checks" in backend
                if key not in seen:
                    seen[key] = (len(found[server_id]), timeline)
                    found[server_id].append(describe(backend, name))
                elif timeline and not seen[key][1]:
                    position = seen[key][0]
                    seen[key] = (position, True)
                    found[server_id][position] = describe(backend, name)
    return found


def _finite(value: object) -> bool:
    # Below 2**37 s (the year 6325): datetime cannot hold much later moments.
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 2**37


def _moment(value: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(value, tz=datetime.UTC).astimezone(
        timezone.get_current_timezone()
    )
