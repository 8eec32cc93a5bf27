"""Client IP preservation for TCP and TCP SSL listeners: the PROXY protocol header (haproxy).

A listener with `proxy_protocol` "v1" or "v2" sends one header to the backend before any client
byte, so the server learns the client's address and port and the address and port the client
connected to (the listener's), which it cannot see on a proxied connection.

- v1 is one text line: `PROXY TCP4 <client ip> <listener ip> <client port> <listener port>\\r\\n`
  (`TCP6` for IPv6), at most 107 bytes; `PROXY UNKNOWN\\r\\n` when the addresses are not known.
- v2 is binary: the 12-byte signature, a version/command byte (0x21: version 2, PROXY), a
  family/transport byte (0x11: IPv4 over TCP, 0x21: IPv6 over TCP), the address block's length
  (big-endian, 16 bits), then source address, destination address, source port and destination
  port in network order. Unknown addresses become the LOCAL command (0x20) with family 0 and no
  address block.

An IPv4 address seen as IPv4-mapped IPv6 (a dual-stack socket) is sent as IPv4 when both ends are;
when only one is, both go as IPv6.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

VERSIONS: Final = ("v1", "v2")
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

_V2_PROXY: Final = 0x21
_V2_LOCAL: Final = 0x20
_V2_TCP4: Final = 0x11
_V2_TCP6: Final = 0x21

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port, ...) as asyncio's peername and sockname give them.
Endpoint = tuple[object, ...] | None


def _parse(endpoint: Endpoint) -> tuple[_Address, int] | None:
    if not endpoint or len(endpoint) < 2:
        return None
    host, port = endpoint[0], endpoint[1]
    if not isinstance(host, str) or not isinstance(port, int):
        return None
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, port


def _same_family(source: _Address, destination: _Address) -> tuple[_Address, _Address]:
    if source.version == destination.version:
        return source, destination

    def as_v6(address: _Address) -> ipaddress.IPv6Address:
        if isinstance(address, ipaddress.IPv4Address):
            return ipaddress.IPv6Address(f"::ffff:{address}")
        return address

    return as_v6(source), as_v6(destination)


class ProxyHeader:
    """Builds the header of one PROXY protocol version for each proxied connection."""

    __slots__ = ("version",)

    def __init__(self, version: str) -> None:
        if version not in VERSIONS:
            raise ValueError(f"unknown PROXY protocol version {version!r}")
        self.version = version

    def build(self, client: Endpoint, listener: Endpoint) -> bytes:
        """The header for a connection from `client` to `listener` (peername and sockname)."""
        source, destination = _parse(client), _parse(listener)
        if source is None or destination is None:
            return b"PROXY UNKNOWN\r\n" if self.version == "v1" else self._v2_local()
        (src, src_port), (dst, dst_port) = source, destination
        src, dst = _same_family(src, dst)
        if self.version == "v1":
            family = b"TCP4" if src.version == 4 else b"TCP6"
            return b"PROXY %s %s %s %d %d\r\n" % (
                family,
                str(src).encode(),
                str(dst).encode(),
                src_port,
                dst_port,
            )
        family = _V2_TCP4 if src.version == 4 else _V2_TCP6
        block = src.packed + dst.packed + struct.pack("!HH", src_port, dst_port)
        return V2_SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(block)) + block

    @staticmethod
    def _v2_local() -> bytes:
        return V2_SIGNATURE + struct.pack("!BBH", _V2_LOCAL, 0, 0)
