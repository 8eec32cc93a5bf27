"""Response compression: which encoding a response gets, and a streaming compressor for it.

Seed 001 ("Data Compression") fixes the rules:

- when the listener's compression is disabled, nothing is compressed;
- Brotli compresses all file types;
- Gzip compresses only text/xml, text/plain, text/css, application/javascript,
  application/x-javascript, application/rss+xml, application/atom+xml, application/xml and
  application/json (seed 000's older GZIP list is the same without application/json);
- compression triggers only when the response's Content-Length exceeds 1,024 bytes;
- when the client supports both Brotli and Gzip, Brotli is used;
- when the client supports only Gzip and the type is not in the Gzip list, nothing is compressed.

What this module decides where the seed is silent:

- An already encoded response (any Content-Encoding other than `identity`) is never compressed
  again.
- A response without a Content-Length (chunked or close-delimited) is not compressed: the seed's
  trigger is the Content-Length, so a response that has none never passes it.
- Accept-Encoding follows RFC 9110 12.5.3: `q=0` refuses a coding, `*` stands for every coding
  not named, `x-gzip` is the same as `gzip`, and a malformed q-value makes that one entry count as
  a refusal. Brotli wins whenever both are acceptable, whatever their q-values, as the seed says.
- The content type is compared without its parameters (`; charset=utf-8`) and case-insensitively.
- Seed 000 (Classic Load Balancer) offers GZIP alone; `allow_brotli=False` gives that mode: the
  same rules with Brotli never chosen. Its older list lacks application/json; the newer seed 001
  list is used for both.

The HTTP proxy calls `choose_encoding()` once per response head, with the raw header values it has
already parsed, and wraps the body in a `Compressor` when the answer is not None.
"""

from __future__ import annotations

import zlib
from typing import Final

import brotli

GZIP: Final = "gzip"
BROTLI: Final = "br"
ENCODINGS: Final = (BROTLI, GZIP)

# Seed 001: "Data compression triggers only when the response Content-Length exceeds 1,024 bytes."
MIN_COMPRESS_LENGTH: Final = 1024

GZIP_CONTENT_TYPES: Final = frozenset(
    {
        b"text/xml",
        b"text/plain",
        b"text/css",
        b"application/javascript",
        b"application/x-javascript",
        b"application/rss+xml",
        b"application/atom+xml",
        b"application/xml",
        b"application/json",
    }
)

# Levels for compressing on the fly: a proxy pays the CPU on every response, so these trade a few
# percent of size for several times the speed of the maximum levels.
GZIP_LEVEL: Final = 5
BROTLI_QUALITY: Final = 4

# Clients send few distinct Accept-Encoding values (one per browser family), so the parse of each
# is remembered; the cache is emptied when it fills, which bounds it against a client that sends a
# new value on every request.
_ACCEPT_CACHE_SIZE = 512
_accept_cache: dict[bytes, tuple[bool, bool]] = {}

_ACCEPT_BR = 1
_ACCEPT_GZIP = 2


def _q_allows(params: list[bytes]) -> bool:
    """True unless the entry's q-value is zero or malformed."""
    for param in params:
        name, eq, value = param.partition(b"=")
        if eq and name.strip().lower() == b"q":
            try:
                return float(value.strip()) > 0
            except ValueError:
                return False
    return True


def parse_accept_encoding(value: bytes) -> tuple[bool, bool]:
    """(accepts Brotli, accepts Gzip) for an Accept-Encoding header value."""
    cached = _accept_cache.get(value)
    if cached is not None:
        return cached
    named = 0
    allowed = 0
    wildcard = False
    for entry in value.split(b","):
        coding, *params = entry.split(b";")
        coding = coding.strip().lower()
        if coding == b"br":
            bit = _ACCEPT_BR
        elif coding in (b"gzip", b"x-gzip"):
            bit = _ACCEPT_GZIP
        elif coding == b"*":
            wildcard = _q_allows(params)
            continue
        else:
            continue
        named |= bit
        if _q_allows(params):
            allowed |= bit
    if wildcard:
        # "*" covers only the codings the header does not name itself.
        allowed |= (_ACCEPT_BR | _ACCEPT_GZIP) & ~named
    result = (bool(allowed & _ACCEPT_BR), bool(allowed & _ACCEPT_GZIP))
    if len(_accept_cache) >= _ACCEPT_CACHE_SIZE:
        _accept_cache.clear()
    _accept_cache[value] = result
    return result


def media_type(content_type: bytes) -> bytes:
    """The bare media type of a Content-Type value: no parameters, lower case."""
    return content_type.split(b";", 1)[0].strip().lower()


def is_encoded(content_encoding: bytes | None) -> bool:
    """Does the response already carry a content coding?"""
    if content_encoding is None:
        return False
    coding = content_encoding.strip().lower()
    return bool(coding) and coding != b"identity"


def choose_encoding(
    accept_encoding: bytes | None,
    content_type: bytes | None,
    content_length: int | None,
    content_encoding: bytes | None,
    *,
    enabled: bool,
    allow_brotli: bool = True,
) -> str | None:
    """The coding to compress a response with ("br" or "gzip"), or None to send it as it is.

    The arguments are the request's Accept-Encoding and the response's Content-Type,
    Content-Length (already parsed) and Content-Encoding, each None when the header is absent.
    `allow_brotli=False` is seed 000's GZIP-only compression.
    """
    if not enabled or accept_encoding is None:
        return None
    if content_length is None or content_length <= MIN_COMPRESS_LENGTH:
        return None
    if is_encoded(content_encoding):
        return None
    brotli_ok, gzip_ok = parse_accept_encoding(accept_encoding)
    if brotli_ok and allow_brotli:
        return BROTLI
    if gzip_ok and content_type is not None and media_type(content_type) in GZIP_CONTENT_TYPES:
        return GZIP
    return None


class Compressor:
    """Compresses one response body as it streams through.

    `compress()` returns whatever compressed bytes are ready (often none for small chunks),
    `flush()` forces out everything given so far (for a body that streams slowly), and `finish()`
    returns the rest and ends the stream; the concatenation of all outputs is one valid gzip
    member or Brotli stream.
    """

    __slots__ = ("_brotli", "_zlib", "encoding")

    def __init__(self, encoding: str, *, level: int | None = None) -> None:
        self.encoding = encoding
        self._zlib = None
        self._brotli = None
        if encoding == GZIP:
            # wbits 31 = a 32 KiB window (15) plus 16 for the gzip header and trailer.
            self._zlib = zlib.compressobj(GZIP_LEVEL if level is None else level, zlib.DEFLATED, 31)
        elif encoding == BROTLI:
            self._brotli = brotli.Compressor(quality=BROTLI_QUALITY if level is None else level)
        else:
            raise ValueError(f"unknown content coding {encoding!r}; allowed: br, gzip")

    def compress(self, chunk: bytes) -> bytes:
        if self._zlib is not None:
            return self._zlib.compress(chunk)
        return self._brotli.process(chunk)  # type: ignore[union-attr]

    def flush(self) -> bytes:
        if self._zlib is not None:
            return self._zlib.flush(zlib.Z_SYNC_FLUSH)
        return self._brotli.flush()  # type: ignore[union-attr]

    def finish(self) -> bytes:
        if self._zlib is not None:
            return self._zlib.flush(zlib.Z_FINISH)
        return self._brotli.finish()  # type: ignore[union-attr]
