"""What a protocol needs of its listener on this node, and all it gets.

The node's `ListenerRuntime` (dataplane.node) extends `ListenerHandle` with what only the node
uses (its socket, server, status); protocols take the handle and never import the node. The
compiled build makes it an extension type (handle.pxd), so an exchange reads its listener's
current settings, counters and timer as C fields on every request and stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dataplane.deadlines import Deadlines
from dataplane.stats import ListenerStats

if TYPE_CHECKING:
    import asyncio

    from dataplane.accesslog import ListenerLog
    from dataplane.descriptors import DescriptorReserve
    from dataplane.protocols.settings import ListenerSettings


class ListenerHandle:
    """One listener as its connections see it.

    `settings` is the compiled current generation (None once the listener stopped): new
    connections and requests read it, those in flight keep the generation they started on.
    """

    __slots__ = (
        "access_log",
        "connections",
        "deadlines",
        "descriptors",
        "loop",
        "settings",
        "stats",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.settings: ListenerSettings | None = None
        # Kept across generations, as the listener's counters are.
        self.stats = ListenerStats()
        # Open client connections, cut when the listener stops (seed 003).
        self.connections: set[Any] = set()
        # The timeouts of its HTTP connections and streams, on one loop timer.
        self.deadlines = Deadlines(loop)
        # The access log while the listener's switch is on (dataplane.accesslog).
        self.access_log: ListenerLog | None = None
        # The node's descriptor guard: told when an accept or connect ran out of descriptors.
        self.descriptors: DescriptorReserve | None = None
