# cython: language_level=3, boundscheck=False, wraparound=False
"""The response header lines the HTTP proxy handles itself, found in one pass in C.

A backend's response head passes to the client as it came, except for the lines the proxy
frames or rewrites itself (dataplane.protocols.http.upstream_headers): the framing fields
(Content-Length, Transfer-Encoding), the connection-specific ones, Set-Cookie under cookie
persistence, and ETag under compression. A regular expression over the lower-cased head found
them at about 16,000 instructions a response; this scan compares each line's name in place,
without lowering the head or making a match object per line.

Built always, like the HTTP/2 binding (setup.py): the proxy's Python form uses it too.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr

# The names, as the proxy compares them (`name == b"etag"`).
CONTENT_LENGTH = b"content-length"
TRANSFER_ENCODING = b"transfer-encoding"
CONNECTION = b"connection"
KEEP_ALIVE = b"keep-alive"
PROXY_CONNECTION = b"proxy-connection"
TE = b"te"
TRAILER = b"trailer"
UPGRADE = b"upgrade"
SET_COOKIE = b"set-cookie"
ETAG = b"etag"

cdef tuple _NAMES = (
    CONTENT_LENGTH, TRANSFER_ENCODING, CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, TE, TRAILER,
    UPGRADE, SET_COOKIE, ETAG,
)


cdef inline bint _same(const char *text, Py_ssize_t size, bytes name) noexcept:
    """Whether text[:size], in any case, is `name` (lower case, letters and '-')."""
    cdef const char *lower = PyBytes_AS_STRING(name)
    cdef Py_ssize_t i
    cdef char c
    if PyBytes_GET_SIZE(name) != size:
        return False
    for i in range(size):
        c = text[i]
        if 65 <= c <= 90:
            c += 32
        if c != lower[i]:
            return False
    return True


def special_lines(bytes head):
    """The lines of `head` whose name (any case) is one the proxy handles, in order: a list of
    (name, start, end, value_start), where head[start:end] is "\\r\\nName: value" up to the
    line's CR and `name` is one of this module's constants. A line counts only with its name
    right before the colon, as RFC 9112 5 writes it."""
    cdef const char *text = PyBytes_AS_STRING(head)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(head)
    cdef Py_ssize_t start = 0, line, colon, end
    cdef const char *found
    cdef bytes name
    cdef list lines = []
    while True:
        # The next "\r\n": a line begins after it.
        found = <const char *>memchr(text + start, 13, size - start)
        while found != NULL and (found - text + 1 >= size or found[1] != 10):
            start = found - text + 1
            found = <const char *>memchr(text + start, 13, size - start)
        if found == NULL:
            return lines
        line = found - text + 2
        found = <const char *>memchr(text + line, 13, size - line)
        end = size if found == NULL else found - text
        found = <const char *>memchr(text + line, 58, end - line)
        if found != NULL:
            colon = found - text
            for name in _NAMES:
                if _same(text + line, colon - line, name):
                    lines.append((name, line - 2, end, colon + 1))
                    break
        start = end
