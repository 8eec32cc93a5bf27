"""The node's event loop: what it costs per accepted connection, beyond the node's own code.

uvloop files every transport it makes under its descriptor in a `weakref.WeakValueDictionary`,
whose `__setitem__` is Python code (three Python frames, a `KeyedRef` with a callback): about
6,200 instructions per accepted connection, 8% of a request over a new connection (`python -m
bench --instructions`). The index serves one purpose, refusing `add_reader()`/`add_writer()` on a
descriptor a live transport owns; the node never watches a transport's descriptor that way (its
own readers are the control API's and the supervisor's pipes, which are not transports).

`skip_transport_index` makes uvloop's index keep nothing, by giving that one dictionary a class
whose `__setitem__` does not store. The dictionary is found through the garbage collector's view
of the loop (`gc.get_referents`), so no private attribute is named; anything unexpected (another
loop, no such dictionary, or two of them) leaves the loop as it is.
"""

from __future__ import annotations

import asyncio
import gc
import weakref


class _UnkeptIndex(weakref.WeakValueDictionary):
    """uvloop's transport index with nothing filed: reads find no transport, as for a new loop."""

    def __setitem__(self, key: object, value: object) -> None:
        pass


def skip_transport_index(loop: asyncio.AbstractEventLoop) -> bool:
    """Make uvloop's per-transport index keep nothing; False (loop unchanged) where that cannot be
    done safely."""
    if type(loop).__module__.partition(".")[0] != "uvloop":
        return False
    index = transport_index(loop)
    if index is None:
        return False
    if type(index) is weakref.WeakValueDictionary:
        index.__class__ = _UnkeptIndex
    return True


def transport_index(loop: asyncio.AbstractEventLoop) -> weakref.WeakValueDictionary | None:
    """uvloop's transport index: the one weak-valued dictionary the loop holds, or None."""
    found = [
        referent
        for referent in gc.get_referents(loop)
        if isinstance(referent, weakref.WeakValueDictionary)
    ]
    return found[0] if len(found) == 1 else None
