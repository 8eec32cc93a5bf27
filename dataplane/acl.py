"""Listener access control: a whitelist or blacklist of IPv4 and IPv6 CIDR blocks (seed 000).

Addresses are handled as (version, integer) pairs. An IPv4-mapped IPv6 address (::ffff:a.b.c.d,
what a dual-stack socket reports for an IPv4 client) counts as the IPv4 address it carries, both
in the lists and for clients.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

MODES = ("whitelist", "blacklist")

_MAPPED_PREFIX = 0xFFFF << 32
_MAPPED_MASK = ~0xFFFFFFFF & ((1 << 128) - 1)
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6
_inet_pton = socket.inet_pton
_from_bytes = int.from_bytes


def parse_ip(text: str) -> tuple[int, int] | None:
    """(4 or 6, address as int) for an IP address text, or None when it is not one.

    Uses inet_pton rather than the ipaddress module: it is several times faster on the hot path.
    """
    try:
        return 4, _from_bytes(_inet_pton(_AF_INET, text), "big")
    except (OSError, ValueError):
        # ValueError: NUL or non-ASCII characters, which header-borne text may carry.
        pass
    if "%" in text:
        # A zone index (fe80::1%eth0) names a link, not a different address.
        text = text.split("%", 1)[0]
    try:
        value = _from_bytes(_inet_pton(_AF_INET6, text), "big")
    except (OSError, ValueError):
        return None
    if value & _MAPPED_MASK == _MAPPED_PREFIX:
        return 4, value & 0xFFFFFFFF
    return 6, value


def format_ip(version: int, value: int) -> str:
    """The canonical text of an address from parse_ip()."""
    if version == 4:
        return socket.inet_ntop(_AF_INET, value.to_bytes(4, "big"))
    return socket.inet_ntop(_AF_INET6, value.to_bytes(16, "big"))


def parse_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR block or a single address; host bits are ignored. Raises ValueError."""
    network = ipaddress.ip_network(text.strip(), strict=False)
    if (
        isinstance(network, ipaddress.IPv6Network)
        and network.prefixlen >= 96
        and int(network.network_address) & _MAPPED_MASK == _MAPPED_PREFIX
    ):
        mapped = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((mapped, network.prefixlen - 96))
    return network


class NetworkSet:
    """Membership test of an address in many CIDR blocks.

    Blocks are grouped by prefix length into sets of network numbers, so a lookup costs one set
    probe per distinct prefix length (at most 33 for IPv4 and 129 for IPv6), however many blocks
    there are.
    """

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[str]) -> None:
        parsed = []
        for text in networks:
            try:
                parsed.append(parse_network(text))
            except ValueError:
                raise ValueError(f"{text!r} is not an IP address or CIDR block") from None
        self.networks = tuple(parsed)
        self._v4 = self._by_prefix(n for n in parsed if n.version == 4)
        self._v6 = self._by_prefix(n for n in parsed if n.version == 6)

    @staticmethod
    def _by_prefix(
        networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
    ) -> tuple[tuple[int, frozenset[int]], ...]:
        groups: dict[int, set[int]] = {}
        for network in ipaddress.collapse_addresses(networks):
            shift = network.max_prefixlen - network.prefixlen
            groups.setdefault(shift, set()).add(int(network.network_address) >> shift)
        # Shorter prefixes first: they cover the most addresses, so a hit tends to come early.
        return tuple(
            (shift, frozenset(numbers)) for shift, numbers in sorted(groups.items(), reverse=True)
        )

    def __bool__(self) -> bool:
        return bool(self.networks)

    def contains(self, version: int, value: int) -> bool:
        for shift, numbers in self._v4 if version == 4 else self._v6:
            if value >> shift in numbers:
                return True
        return False

    def __contains__(self, ip: str) -> bool:
        parsed = parse_ip(ip)
        return parsed is not None and self.contains(*parsed)


class AccessControl:
    """Decides whether a client address may use a listener."""

    __slots__ = ("_cache", "_cache_size", "_networks", "_whitelist", "mode")

    def __init__(self, mode: str, cidrs: Iterable[str], *, cache_size: int = 4096) -> None:
        if mode not in MODES:
            raise ValueError(f"access control mode must be one of {MODES}, not {mode!r}")
        self.mode = mode
        self._whitelist = mode == "whitelist"
        self._networks = NetworkSet(cidrs)
        # Recent answers, so a busy client costs one dict lookup. Cleared when full rather than
        # kept in LRU order: a scan of many addresses then costs a refill, never unbounded memory.
        self._cache: dict[str, bool] = {}
        self._cache_size = cache_size

    @property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return self._networks.networks

    def allows(self, ip: str) -> bool:
        """True when a client may pass. An empty list forwards everything, in both modes."""
        try:
            return self._cache[ip]
        except KeyError:
            pass
        if not self._networks:
            return True
        parsed = parse_ip(ip)
        if parsed is None:
            # Peer addresses come from the kernel; an unreadable one is refused, not guessed at.
            allowed = False
        else:
            allowed = self._networks.contains(*parsed) == self._whitelist
        cache = self._cache
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[ip] = allowed
        return allowed
