"""Seed 000's bandwidth sharing, as the console explains it before the dataplane enforces it.

The listeners' limits may not add up to more than the instance's bandwidth; the listeners without
a limit share what the limits leave, and when nothing is left they are inaccessible ("You allocate
5 Mbit/s of bandwidth to Listener A, and do not allocate bandwidth to Listener B. In this case,
Listener B is inaccessible. Exercise caution when you allocate bandwidth."). The console allows
that allocation, as the seed's console does, and says which listeners it cuts off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from console.models import Instance
    from listeners.models import Listener


def allocated_mbit(instance: Instance, *, excluding: Listener | None = None) -> int:
    """The sum of the instance's listener limits, without `excluding`'s own."""
    listeners = instance.listeners.exclude(bandwidth_mbit=None)
    if excluding is not None:
        listeners = listeners.exclude(pk=excluding.pk)
    return sum(listeners.values_list("bandwidth_mbit", flat=True))


def left_without_share(
    instance: Instance, *, listener: Listener | None, limit: int | None, name: str
) -> list[str]:
    """Names of the listeners that would be inaccessible once `listener` (None: a new one, called
    `name`) has `limit`: those without a limit, when the limits take all of the bandwidth."""
    total = instance.bandwidth_mbit
    if not total or allocated_mbit(instance, excluding=listener) + (limit or 0) < total:
        return []
    others = instance.listeners.filter(bandwidth_mbit=None).order_by("port", "protocol")
    if listener is not None:
        others = others.exclude(pk=listener.pk)
    names = [f"{other.name} ({other.protocol.upper()}:{other.port})" for other in others]
    if limit is None:
        names.insert(0, name)
    return names


def no_share_warning(
    instance: Instance, *, listener: Listener | None, limit: int | None, name: str
) -> str:
    """Seed 000's caution as one sentence, or "" when every listener keeps a share."""
    names = left_without_share(instance, listener=listener, limit=limit, name=name)
    if not names:
        return ""
    return (
        f"The listeners' bandwidth limits take all of the instance's {instance.bandwidth_mbit} "
        f"Mbit/s, so {', '.join(names)} {'has' if len(names) == 1 else 'have'} no bandwidth "
        f"left and will be inaccessible until the limits are lowered."
    )
