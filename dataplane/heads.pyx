# cython: language_level=3, boundscheck=False, wraparound=False
"""HTTP heads in C: where a backend's response head lies in what it sent, the response header
lines the HTTP proxy handles itself, found in one pass, whether an HTTP/2 or HTTP/3 request's
pseudo-headers fit an HTTP/1.1 request line, a request field's line as it is forwarded, and the
version of a request line read off its bytes.

A backend's response head passes to the client as it came, except for the lines the proxy
frames or rewrites itself (dataplane.protocols.exchange, upstream_headers): the framing fields
(Content-Length, Transfer-Encoding), the connection-specific ones, Set-Cookie under cookie
persistence, and ETag under compression. A regular expression over the lower-cased head found
them at about 16,000 instructions a response; this scan compares each line's name in place,
without lowering the head or making a match object per line.

The pseudo-header check ran as a set comparison and two regular-expression searches at some
4,000 instructions a stream; here it is one pass over each value.

Built always, like the HTTP/2 binding (setup.py): the proxy's Python form uses it too. The
functions are `cpdef` (heads.pxd), so the compiled hot path calls them in C.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp, memcpy

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


cdef inline bint _same(const char *text, Py_ssize_t size, bytes name) noexcept:
    """Whether text[:size], in any case, is `name` (lower case, letters and '-'), whose length
    the caller has checked is `size`."""
    cdef const char *lower = PyBytes_AS_STRING(name)
    cdef Py_ssize_t i
    cdef char c
    for i in range(size):
        c = text[i]
        if 65 <= c <= 90:
            c += 32
        if c != lower[i]:
            return False
    return True


cdef inline object _special(const char *text, Py_ssize_t size):
    """The constant `text[:size]` names in any case, or None; chosen by length first, as most
    lines of a head (Date, Server, Content-Type...) have a length no special name has."""
    if size == 10:
        if _same(text, 10, CONNECTION):
            return CONNECTION
        if _same(text, 10, SET_COOKIE):
            return SET_COOKIE
        if _same(text, 10, KEEP_ALIVE):
            return KEEP_ALIVE
    elif size == 14:
        if _same(text, 14, CONTENT_LENGTH):
            return CONTENT_LENGTH
    elif size == 4:
        if _same(text, 4, ETAG):
            return ETAG
    elif size == 17:
        if _same(text, 17, TRANSFER_ENCODING):
            return TRANSFER_ENCODING
    elif size == 7:
        if _same(text, 7, UPGRADE):
            return UPGRADE
        if _same(text, 7, TRAILER):
            return TRAILER
    elif size == 2:
        if _same(text, 2, TE):
            return TE
    elif size == 16:
        if _same(text, 16, PROXY_CONNECTION):
            return PROXY_CONNECTION
    return None


cpdef list special_lines(bytes head):
    """The lines of `head` whose name (any case) is one the proxy handles, in order: a list of
    (name, start, end, value_start), where head[start:end] is "\\r\\nName: value" up to the
    line's CR and `name` is one of this module's constants. A line counts only with its name
    right before the colon, as RFC 9112 5 writes it."""
    if head is None:
        raise TypeError("bytes expected, not None")
    cdef const char *text = PyBytes_AS_STRING(head)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(head)
    cdef Py_ssize_t start = 0, line, colon, end
    cdef const char *found
    cdef object name
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
            name = _special(text + line, colon - line)
            if name is not None:
                lines.append((name, line - 2, end, colon + 1))
        start = end


# RFC 9110 5.6.2: the bytes of a token (a method), as a table indexed by byte.
cdef bint _TOKEN[256]
for _byte in list(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"):
    _TOKEN[<int>_byte] = True


cdef inline bint _fits_target(bytes value) noexcept:
    """Whether `value` has no control byte, space or DEL: it cannot split a request line."""
    cdef const unsigned char *text = <const unsigned char *>PyBytes_AS_STRING(value)
    cdef Py_ssize_t i
    for i in range(PyBytes_GET_SIZE(value)):
        if text[i] <= 32 or text[i] == 127:
            return False
    return True


cpdef bint fits_request_line(bytes method, bytes path, bytes authority) except -1:
    """Whether HTTP/2 or HTTP/3 pseudo-headers survive as an HTTP/1.1 request line and Host.

    Their libraries refuse CR, LF and NUL, but a space or tab would still split the line."""
    if method is None or path is None or authority is None:
        raise TypeError("bytes expected, not None")
    cdef const unsigned char *text = <const unsigned char *>PyBytes_AS_STRING(method)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(method)
    cdef Py_ssize_t i
    if size == 0:
        return False
    for i in range(size):
        if not _TOKEN[text[i]]:
            return False
    return _fits_target(path) and _fits_target(authority)


cpdef tuple head_span(bytes buffer, Py_ssize_t start):
    """(start, end) of the head that llhttp has just parsed in `buffer` from `start`: the empty
    lines allowed before a status line skipped, `end` the position of the "\\r\\n\\r\\n" that
    ends it (llhttp insists on CRLF line ends and refuses obs-fold, so the first one does), or
    -1 when there is none."""
    if buffer is None:
        raise TypeError("bytes expected, not None")
    cdef const char *text = PyBytes_AS_STRING(buffer)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(buffer)
    cdef Py_ssize_t at
    cdef const char *found
    if start < 0 or start > size:
        raise IndexError("start outside the buffer")
    while start < size and (text[start] == 13 or text[start] == 10):
        start += 1
    # From CR to CR, a line at a time: glibc's memmem cost more than the whole head's memchr.
    at = start
    while True:
        found = <const char *>memchr(text + at, 13, size - at)
        if found == NULL or found - text + 4 > size:
            return start, -1
        if memcmp(found + 1, b"\n\r\n", 3) == 0:
            return start, found - text
        at = found - text + 1


cpdef bytes field_line(bytes name, bytes value):
    """b"Name: value\\r\\n", built at once: a request field as the proxy forwards it."""
    if name is None or value is None:
        raise TypeError("bytes expected, not None")
    cdef Py_ssize_t name_size = PyBytes_GET_SIZE(name)
    cdef Py_ssize_t value_size = PyBytes_GET_SIZE(value)
    cdef bytes line = PyBytes_FromStringAndSize(NULL, name_size + value_size + 4)
    cdef char *text = PyBytes_AS_STRING(line)
    memcpy(text, PyBytes_AS_STRING(name), name_size)
    text[name_size] = 58
    text[name_size + 1] = 32
    memcpy(text + name_size + 2, PyBytes_AS_STRING(value), value_size)
    text[name_size + value_size + 2] = 13
    text[name_size + value_size + 3] = 10
    return line


cdef inline bint _has_line_break(bytes text) noexcept:
    cdef const char *start = PyBytes_AS_STRING(text)
    cdef Py_ssize_t size = PyBytes_GET_SIZE(text)
    return memchr(start, b"\r", size) != NULL or memchr(start, b"\n", size) != NULL


cpdef int line_version(bytes data, bytes method, bytes url) except -1:
    """11 or 10 when `data` begins with exactly `method` SP `url` SP "HTTP/1.1" (or "HTTP/1.0")
    CRLF, else 0: leading empty lines, a line not all there, any other form.

    httptools gives a request's version only formatted as a string, about 2,300 instructions, and
    a request that ends its connection needs it; for most such connections (one request, its head
    in the connection's first read) the HTTP/1.1 codec reads it off the line llhttp has just
    accepted (dataplane.protocols.http). The line is the first of `data`: neither `method` nor
    `url` may hold a CR or LF (llhttp refuses such a line anyway).
    """
    cdef Py_ssize_t m = PyBytes_GET_SIZE(method)
    cdef Py_ssize_t u = PyBytes_GET_SIZE(url)
    cdef Py_ssize_t end = m + 1 + u + 9  # the CR
    cdef const char *line = PyBytes_AS_STRING(data)
    if end + 2 > PyBytes_GET_SIZE(data) or line[end] != b"\r" or line[end + 1] != b"\n":
        return 0
    if (
        _has_line_break(method)
        or _has_line_break(url)
        or memcmp(line, PyBytes_AS_STRING(method), m) != 0
        or line[m] != b" "
        or memcmp(line + m + 1, PyBytes_AS_STRING(url), u) != 0
        or memcmp(line + m + 1 + u, b" HTTP/1.", 8) != 0
    ):
        return 0
    if line[end - 1] == b"1":
        return 11
    if line[end - 1] == b"0":
        return 10
    return 0
