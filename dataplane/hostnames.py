"""Wildcard certificate names and SNI certificate selection, by the rules of seed 001's FAQ.

- A wildcard is recognized only as a single `*` at the very start of the name: `*.example.com`
  and `*test.example.com`, never `test*.example.com`.
- It matches one level only: `*.example.com` matches `test.example.com`, not
  `test.test.example.com`.
- It matches only the characters 0-9, a-z, A-Z and `-`: not `test_test.example.com`.
- An IDNA label (`xn--...`) matches only when `*` is the whole leftmost label:
  `xn--fsqu00a.example.com` matches `*.example.com`, `xn--fsqu00atest.example.com` does not match
  `*test.example.com`.

This module is shared with the console (certificate pages, listener wizard), so it imports nothing
but the standard library.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_LABEL_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz-")
# A Host field or request-target authority a proxy passes on (RFC 9112 3.2, RFC 3986 3.2.2): a
# name of unreserved characters or a bracketed IPv6 literal, and an optional port. Stricter than
# RFC 3986's reg-name, which also allows escapes and sub-delimiters (`%`, `,`, `;`...): no DNS
# name has them, and each is one more way a backend could read the host otherwise than the
# rules did. Userinfo (`user@`) has no place in either.
HOST_FIELD = re.compile(rb"(?:[A-Za-z0-9._~-]*|\[[0-9A-Fa-f:.]+\])(?::[0-9]*)?")
_IDNA_PREFIX = "xn--"


def _normalize(name: str) -> str | None:
    """Lowercase ASCII form without the root dot, or None when it is not a usable DNS name."""
    if not name:
        return None
    if not name.isascii():
        # SNI carries A-labels, but a console user may type a U-label; compare in A-label form.
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    name = name.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or "" in name.split("."):
        return None
    return name


def is_host_field(value: bytes) -> bool:
    """Whether a Host field value (or an authority) is one host, as a proxy may forward it."""
    return HOST_FIELD.fullmatch(value) is not None


def _split_wildcard(name: str) -> tuple[str, str] | None:
    """For a recognized wildcard `*<suffix>.<domain>` (already normalized): (suffix, domain)."""
    if not name.startswith("*") or name.count("*") != 1:
        return None
    label, dot, domain = name.partition(".")
    if not dot or not domain:
        return None
    suffix = label[1:]
    if not _LABEL_CHARS.issuperset(suffix):
        return None
    return suffix, domain


def is_recognized_wildcard(name: str) -> bool:
    """True for a name the dataplane treats as a wildcard: one `*`, at the very start."""
    normalized = _normalize(name)
    return normalized is not None and _split_wildcard(normalized) is not None


def _label_matches(suffix: str, label: str) -> bool:
    """Does the leftmost host label fit `*<suffix>`? `*` stands for one or more label chars."""
    if len(label) <= len(suffix) or not label.endswith(suffix):
        return False
    if suffix and label.startswith(_IDNA_PREFIX):
        return False
    return _LABEL_CHARS.issuperset(label[: len(label) - len(suffix)])


def wildcard_matches(pattern: str, hostname: str) -> bool:
    """Does a certificate name (exact or wildcard) cover a host name?"""
    pattern_n = _normalize(pattern)
    host = _normalize(hostname)
    if pattern_n is None or host is None:
        return False
    if "*" not in pattern_n:
        return pattern_n == host
    parts = _split_wildcard(pattern_n)
    if parts is None:
        return False
    suffix, domain = parts
    label, _, host_domain = host.partition(".")
    return host_domain == domain and _label_matches(suffix, label)


class CertificateSelector:
    """Picks the server certificate for a TLS handshake from the client's SNI name.

    An exact name beats a wildcard; between wildcards, the longer (more specific) one wins, so
    `*test.example.com` beats `*.example.com`. No match, or no SNI at all, gets the default.
    """

    __slots__ = ("_exact", "_wildcards", "default")

    def __init__(self, names_by_key: Mapping[str, Iterable[str]], default: str | None) -> None:
        self.default = default
        self._exact: dict[str, str] = {}
        wildcards: dict[str, list[tuple[str, str]]] = {}
        for key, names in names_by_key.items():
            for name in names:
                normalized = _normalize(name)
                if normalized is None:
                    continue
                if "*" not in normalized:
                    # The first certificate that names a host keeps it.
                    self._exact.setdefault(normalized, key)
                    continue
                parts = _split_wildcard(normalized)
                if parts is not None:
                    suffix, domain = parts
                    wildcards.setdefault(domain, []).append((suffix, key))
        # Grouped by the domain after the wildcard label: a host name can only match wildcards of
        # its own parent domain, so select() looks at one short list. Longest suffix first;
        # sort is stable, so among equals the first certificate given wins.
        self._wildcards = {
            domain: tuple(sorted(entries, key=lambda entry: -len(entry[0])))
            for domain, entries in wildcards.items()
        }

    def select(self, server_name: str | None) -> str | None:
        """The certificate key for an SNI name, or the default."""
        if not server_name:
            return self.default
        host = _normalize(server_name)
        if host is None:
            return self.default
        key = self._exact.get(host)
        if key is not None:
            return key
        label, _, domain = host.partition(".")
        for suffix, key in self._wildcards.get(domain, ()):
            if _label_matches(suffix, label):
                return key
        return self.default
