"""Session persistence: cookies for HTTP and HTTPS listeners, source IP for TCP and TCP SSL.

Insert cookie (seed 000): the dataplane adds its own `SERVERID` cookie to responses, with the
configured timeout as Max-Age; the next request carrying it goes to the same server.

Rewrite cookie (seed 000, "application cookie" in seed 002): the application sets a cookie with a
configured name. On the way out its value becomes `<token>~<value>`; on the way in the prefix picks
the server and is stripped, so the application sees exactly the value it set.

A token is a short keyed hash of the backend id: it is stable across restarts and dataplane nodes
that share the secret, and it does not reveal the server's address.

A sticky server that is unhealthy or has weight 0 is not used: the caller falls back to its
scheduler, and the response then points the client at the new server. Nor is one that is draining
or in maintenance: `index` leaves it out, so its token names no server any more.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable

from dataplane.balancing import Backend

MODES = ("insert_cookie", "rewrite_cookie")
INSERT_COOKIE_NAME = "SERVERID"

_SET_COOKIE = b"Set-Cookie"
_SEPARATOR = b"~"


_TOKEN_LENGTH = 16
_HEX_DIGITS = frozenset(b"0123456789abcdef")


def _is_token(value: bytes) -> bool:
    return len(value) == _TOKEN_LENGTH and _HEX_DIGITS.issuperset(value)


def _split_cookie_header(header: bytes) -> list[bytes]:
    return [part.strip() for part in header.split(b";")]


class CookiePersistence:
    """Cookie-based stickiness for one listener."""

    __slots__ = (
        "_insert",
        "_key",
        "_name",
        "_needle",
        "_set_cookie_cache",
        "_tokens",
        "cookie_name",
        "mode",
        "timeout",
    )

    def __init__(
        self,
        mode: str,
        *,
        cookie_name: str | None = None,
        timeout: int = 1000,
        secret: bytes = b"",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"session persistence mode must be one of {MODES}, not {mode!r}")
        if mode == "rewrite_cookie":
            if not cookie_name:
                raise ValueError("rewrite cookie needs the name of the application's cookie")
            if any(c in cookie_name for c in '=;, \t\r\n"'):
                raise ValueError(f"{cookie_name!r} is not a valid cookie name")
        else:
            cookie_name = INSERT_COOKIE_NAME
        if timeout < 1:
            raise ValueError("cookie timeout must be at least 1 second")
        self.mode = mode
        self.cookie_name = cookie_name
        self.timeout = timeout
        self._insert = mode == "insert_cookie"
        self._name = cookie_name.encode("ascii")
        self._needle = self._name + b"="
        # blake2b keys are at most 64 bytes; a longer secret is folded into one.
        self._key = secret if len(secret) <= 64 else hashlib.blake2b(secret).digest()
        self._tokens: dict[str, str] = {}
        self._set_cookie_cache: dict[str, bytes] = {}

    def token(self, backend: Backend) -> str:
        """The value that names a backend in the cookie."""
        token = self._tokens.get(backend.id)
        if token is None:
            digest = hashlib.blake2b(backend.id.encode(), key=self._key, digest_size=8)
            token = self._tokens[backend.id] = digest.hexdigest()
        return token

    def index(self, backends: Iterable[Backend]) -> dict[str, Backend]:
        """The `backends_by_token` mapping that backend_for_request() expects: servers that take
        new requests only (a cookie naming a draining server gets another one)."""
        return {self.token(backend): backend for backend in backends if backend.in_service}

    def backend_for_request(
        self, cookie_header: bytes | None, backends_by_token: dict[str, Backend]
    ) -> tuple[Backend | None, bytes | None]:
        """(sticky backend or None, Cookie header to forward instead, or None if unchanged).

        The persistence cookie is private to the load balancer: in insert mode it is removed
        before the request is forwarded, in rewrite mode the token prefix is removed. An empty
        header returned means the request carried no other cookie: drop the Cookie header.
        """
        if not cookie_header or self._needle not in cookie_header:
            return None, None
        needle = self._needle
        sticky: Backend | None = None
        changed = False
        kept: list[bytes] = []
        for part in _split_cookie_header(cookie_header):
            if not part.startswith(needle):
                if part:
                    kept.append(part)
                continue
            value = part[len(needle) :]
            quoted = value.startswith(b'"')
            if quoted:
                value = value.strip(b'"')
            if self._insert:
                token = value
                changed = True
            else:
                token, separator, original = value.partition(_SEPARATOR)
                # Only a prefix shaped like a token is ours; the application's own value may
                # contain "~" too.
                if separator and _is_token(token):
                    changed = True
                    if quoted:
                        original = b'"' + original + b'"'
                    kept.append(needle + original)
                else:
                    kept.append(part)
                    continue
            if sticky is None:
                backend = backends_by_token.get(token.decode("latin-1"))
                if backend is not None and backend.healthy and backend.weight > 0:
                    sticky = backend
        if not changed:
            return sticky, None
        return sticky, b"; ".join(kept)

    def response_headers(
        self, backend: Backend, set_cookie_values: list[bytes]
    ) -> list[tuple[bytes, bytes]] | None:
        """The Set-Cookie headers the response should carry instead of `set_cookie_values`.

        None means leave the response's Set-Cookie headers as they are. Otherwise the returned list
        replaces all of them: in insert mode it is the application's own cookies plus `SERVERID`
        (re-sent on every response, so the timeout counts from the last request); in rewrite mode
        it is the application's cookies with the named one carrying the backend token.
        """
        if self._insert:
            headers = [(_SET_COOKIE, value) for value in set_cookie_values]
            headers.append((_SET_COOKIE, self._insert_value(backend)))
            return headers
        needle = self._needle
        headers = []
        changed = False
        for original in set_cookie_values:
            value = original
            stripped = value.lstrip()
            if stripped.startswith(needle):
                cookie_value, semicolon, attributes = stripped[len(needle) :].partition(b";")
                cookie_value = cookie_value.strip()
                # An empty value is how applications delete a cookie; leave that alone.
                if cookie_value and cookie_value != b'""':
                    token = self.token(backend).encode()
                    if cookie_value.startswith(b'"'):
                        cookie_value = b'"' + token + _SEPARATOR + cookie_value[1:]
                    else:
                        cookie_value = token + _SEPARATOR + cookie_value
                    value = needle + cookie_value + semicolon + attributes
                    changed = True
            headers.append((_SET_COOKIE, value))
        return headers if changed else None

    def _insert_value(self, backend: Backend) -> bytes:
        value = self._set_cookie_cache.get(backend.id)
        if value is None:
            value = b"%s%s; Max-Age=%d; Path=/; HttpOnly" % (
                self._needle,
                self.token(backend).encode(),
                self.timeout,
            )
            self._set_cookie_cache[backend.id] = value
        return value


class SourceIpPersistence:
    """Client address -> backend for TCP and TCP SSL listeners, forgotten after `timeout` idle.

    Entries live in a dict re-inserted on every use, so its order is least recently used first;
    with one timeout for all, expired entries are always at the front and a sweep stops at the
    first live one.
    """

    __slots__ = ("_clock", "_entries", "_next_sweep", "max_entries", "timeout")

    def __init__(
        self,
        timeout: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 1_000_000,
    ) -> None:
        if timeout <= 0:
            raise ValueError("source IP persistence timeout must be positive")
        self.timeout = timeout
        self.max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[Backend, float]] = {}
        self._next_sweep = clock() + timeout

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, client_ip: str) -> Backend | None:
        """The backend this client used last, if it is recent and can still take traffic."""
        entry = self._entries.pop(client_ip, None)
        if entry is None:
            return None
        backend, expires = entry
        now = self._clock()
        if expires <= now or not backend.healthy or backend.weight <= 0:
            return None
        self._entries[client_ip] = (backend, now + self.timeout)
        return backend

    def remember(self, client_ip: str, backend: Backend) -> None:
        now = self._clock()
        entries = self._entries
        entries.pop(client_ip, None)
        entries[client_ip] = (backend, now + self.timeout)
        if now >= self._next_sweep or len(entries) > self.max_entries:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        entries = self._entries
        stale = []
        for client_ip, (_, expires) in entries.items():
            if expires > now and len(entries) - len(stale) <= self.max_entries:
                break
            stale.append(client_ip)
        for client_ip in stale:
            del entries[client_ip]
        self._next_sweep = now + self.timeout
