"""Retrieve Client IP: the real client address behind trusted proxies (seed 001).

- Trusted list `0.0.0.0/0`: the leftmost address in X-Forwarded-For is the client.
- An explicit list (`proxy1 IP;proxy2 IP;...`): X-Forwarded-For is compared from right to left
  against the list, and the first address not on it is the client.
- A connection from a peer that is not trusted is its own client: its X-Forwarded-For could be
  forged by anyone.
"""

from __future__ import annotations

from collections.abc import Iterable

from dataplane.acl import NetworkSet, format_ip, parse_ip


def _split_entries(text: str) -> list[str]:
    # The console writes the list as "proxy1 IP;proxy2 IP", and a snapshot may carry it either way.
    return [part for part in text.replace(";", ",").split(",") if part.strip()]


def _parse_entry(entry: str) -> tuple[int, int] | None:
    """An X-Forwarded-For element as an address; tolerates a port and IPv6 brackets."""
    entry = entry.strip().strip('"')
    if not entry:
        return None
    if entry.startswith("["):
        # [2001:db8::1]:8080 or [2001:db8::1]
        end = entry.find("]")
        if end < 0:
            return None
        return parse_ip(entry[1:end])
    parsed = parse_ip(entry)
    if parsed is None and entry.count(":") == 1:
        # 192.0.2.1:8080
        parsed = parse_ip(entry.partition(":")[0])
    return parsed


class ClientIpResolver:
    """Finds the client address of an HTTP request from its peer and X-Forwarded-For header."""

    __slots__ = ("_trust_all", "_trusted")

    def __init__(self, trusted: Iterable[str]) -> None:
        entries: list[str] = []
        for item in trusted:
            entries.extend(_split_entries(item))
        self._trusted = NetworkSet(entries)
        # 0.0.0.0/0 (or ::/0) is the seed's "trust every hop" setting.
        self._trust_all = any(network.prefixlen == 0 for network in self._trusted.networks)

    @property
    def enabled(self) -> bool:
        return bool(self._trusted)

    def resolve(self, peer_ip: str, xff: bytes | None) -> str:
        """The client address; the peer itself when nothing better can be trusted."""
        if not xff or not self._trusted:
            return peer_ip
        trusted = self._trusted
        if not self._trust_all:
            peer = parse_ip(peer_ip)
            if peer is None or not trusted.contains(*peer):
                return peer_ip
        # latin-1 never fails to decode; a non-ASCII entry then reads as malformed.
        entries = [entry for entry in xff.decode("latin-1").split(",") if entry.strip()]
        if self._trust_all:
            # Every hop is trusted, so garbage is simply skipped.
            for entry in entries:
                address = _parse_entry(entry)
                if address is not None:
                    return format_ip(*address)
            return peer_ip
        client = peer_ip
        for entry in reversed(entries):
            address = _parse_entry(entry)
            if address is None:
                # Everything left of an entry we cannot read came through a hop we cannot vouch
                # for; stop at the last trusted hop rather than believe it.
                return client
            client = format_ip(*address)
            if not trusted.contains(*address):
                return client
        # Every hop is a trusted proxy: the leftmost is the furthest one known.
        return client
