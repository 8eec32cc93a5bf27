"""Template tags for backend server health (console.server_health)."""

from __future__ import annotations

from typing import Any

from django import template

from console.server_health import ServerHealth, describe

register = template.Library()


@register.inclusion_tag("listeners/_server_health.html")
def server_health_cells(entry: dict[str, Any] | ServerHealth) -> dict[str, Any]:
    """The Health, Reason and Last Change cells of one server as a node reported it."""
    health = entry if isinstance(entry, ServerHealth) else describe(entry)
    return {"h": health}


@register.filter
def health_of(server_health: dict[str, list[ServerHealth]], server: Any) -> list[ServerHealth]:
    """The nodes' reports of one BackendServer, from console.server_health.group_health."""
    return server_health.get(server.server_id, [])
