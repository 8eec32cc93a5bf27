# cython: language_level=3, boundscheck=False, wraparound=False
"""HTTP/2 on nghttp2: framing, HPACK, stream states and flow control, on both sides.

nghttp2 (the engine under curl, Apache httpd's mod_http2 and Node.js's http2) does the protocol;
this module only moves bytes and events between it and its owner, which decides what each stream
means: `Http2Connection` (dataplane.protocols.h2) for a client's connection, `GrpcUpstream`
(dataplane.protocols.grpc) for the node's own connection to a gRPC backend. One C callback per header field
would cost a Python call each, so header fields are gathered here and handed over once per
HEADERS block; the owner sees one call per request, per DATA chunk and per stream end.

Bytes in go through `receive`, bytes out come from `data_to_send`; nghttp2 never touches the
socket. A stream's response body is an `Outbound` that nghttp2 pulls from as the peer's windows
allow, so a response waits in one queue whatever the windows do.

Request bodies are acknowledged by hand (`acknowledge`): nghttp2's automatic WINDOW_UPDATE is
off, so a slow backend stops a fast uploader instead of making the node buffer for it.
"""

from collections import deque

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int32_t, uint8_t, uint32_t
from libc.string cimport memchr, memcmp, memcpy


cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session_callbacks:
        pass
    ctypedef struct nghttp2_option:
        pass


    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags

    ctypedef enum nghttp2_headers_category:
        NGHTTP2_HCAT_REQUEST
        NGHTTP2_HCAT_RESPONSE
        NGHTTP2_HCAT_HEADERS

    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        nghttp2_headers_category cat

    ctypedef struct nghttp2_goaway:
        nghttp2_frame_hd hd
        int32_t last_stream_id
        uint32_t error_code

    ctypedef struct nghttp2_priority_spec:
        pass

    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
        nghttp2_goaway goaway

    ctypedef union nghttp2_data_source:
        int fd
        void *ptr

    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
        uint32_t *data_flags, nghttp2_data_source *source, void *user_data)

    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback

    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef int (*nghttp2_on_begin_headers_callback)(
        nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
    ctypedef int (*nghttp2_on_header_callback)(
        nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
        size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
    ctypedef int (*nghttp2_on_frame_recv_callback)(
        nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
    ctypedef int (*nghttp2_on_data_chunk_recv_callback)(
        nghttp2_session *session, uint8_t flags, int32_t stream_id, const uint8_t *data,
        size_t len, void *user_data)
    ctypedef int (*nghttp2_on_stream_close_callback)(
        nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data)

    enum:
        NGHTTP2_DATA
        NGHTTP2_HEADERS
        NGHTTP2_GOAWAY
        NGHTTP2_SETTINGS
        NGHTTP2_FLAG_NONE
        NGHTTP2_FLAG_ACK
        NGHTTP2_FLAG_END_STREAM
        NGHTTP2_NV_FLAG_NONE
        NGHTTP2_NV_FLAG_NO_COPY_NAME
        NGHTTP2_NV_FLAG_NO_COPY_VALUE
        NGHTTP2_DATA_FLAG_EOF
        NGHTTP2_DATA_FLAG_NO_END_STREAM
        NGHTTP2_ERR_DEFERRED
        NGHTTP2_ERR_CALLBACK_FAILURE
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        NGHTTP2_ERR_FLOODED
        NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        NGHTTP2_SETTINGS_ENABLE_PUSH

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks **callbacks_ptr)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks *callbacks)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(
        nghttp2_session_callbacks *cbs, nghttp2_on_begin_headers_callback cb)
    void nghttp2_session_callbacks_set_on_header_callback(
        nghttp2_session_callbacks *cbs, nghttp2_on_header_callback cb)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(
        nghttp2_session_callbacks *cbs, nghttp2_on_frame_recv_callback cb)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        nghttp2_session_callbacks *cbs, nghttp2_on_data_chunk_recv_callback cb)
    void nghttp2_session_callbacks_set_on_stream_close_callback(
        nghttp2_session_callbacks *cbs, nghttp2_on_stream_close_callback cb)

    int nghttp2_option_new(nghttp2_option **option_ptr)
    void nghttp2_option_del(nghttp2_option *option)
    void nghttp2_option_set_no_auto_window_update(nghttp2_option *option, int val)
    void nghttp2_option_set_max_send_header_block_length(nghttp2_option *option, size_t val)
    void nghttp2_option_set_stream_reset_rate_limit(
        nghttp2_option *option, unsigned long burst, unsigned long rate)
    void nghttp2_option_set_max_continuations(nghttp2_option *option, size_t val)
    void nghttp2_option_set_max_settings(nghttp2_option *option, size_t val)

    int nghttp2_session_server_new2(
        nghttp2_session **session_ptr, const nghttp2_session_callbacks *callbacks,
        void *user_data, const nghttp2_option *option)
    int nghttp2_session_client_new2(
        nghttp2_session **session_ptr, const nghttp2_session_callbacks *callbacks,
        void *user_data, const nghttp2_option *option)
    void nghttp2_session_del(nghttp2_session *session)
    ssize_t nghttp2_session_mem_recv(nghttp2_session *session, const uint8_t *data, size_t len)
    ssize_t nghttp2_session_mem_send(nghttp2_session *session, const uint8_t **data_ptr)
    int nghttp2_session_want_read(nghttp2_session *session)
    int nghttp2_session_want_write(nghttp2_session *session)
    int nghttp2_submit_settings(
        nghttp2_session *session, uint8_t flags, const nghttp2_settings_entry *iv, size_t niv)
    int nghttp2_session_set_local_window_size(
        nghttp2_session *session, uint8_t flags, int32_t stream_id, int32_t window_size)
    int nghttp2_submit_response(
        nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva, size_t nvlen,
        const nghttp2_data_provider *data_prd)
    int32_t nghttp2_submit_request(
        nghttp2_session *session, const nghttp2_priority_spec *pri_spec, const nghttp2_nv *nva,
        size_t nvlen, const nghttp2_data_provider *data_prd, void *stream_user_data)
    int nghttp2_submit_trailer(
        nghttp2_session *session, int32_t stream_id, const nghttp2_nv *nva, size_t nvlen)
    int nghttp2_submit_rst_stream(
        nghttp2_session *session, uint8_t flags, int32_t stream_id, uint32_t error_code)
    int nghttp2_session_terminate_session(nghttp2_session *session, uint32_t error_code)
    int nghttp2_session_resume_data(nghttp2_session *session, int32_t stream_id)
    int nghttp2_session_consume(nghttp2_session *session, int32_t stream_id, size_t size)
    int nghttp2_session_consume_connection(nghttp2_session *session, size_t size)
    const char *nghttp2_strerror(int lib_error_code)


cdef extern from "Python.h":
    void *PyMem_Malloc(size_t n)
    void PyMem_Free(void *p)


# RFC 9113 section 7 error codes, by name, for the owner and the tests.
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
REFUSED_STREAM = 0x7
CANCEL = 0x8
ENHANCE_YOUR_CALM = 0xB

# A request head larger than this is answered 431 on its stream; the owner never sees it.
DEFAULT_MAX_HEADER_LIST = 64 * 1024
# Streams a client may reset per second after a burst (CVE-2023-44487, "rapid reset"): beyond it
# nghttp2 ends the connection with ENHANCE_YOUR_CALM.
RESET_BURST = 1000
RESET_RATE = 33
# HEADERS continued over more frames than this end the connection (CVE-2024-28182).
MAX_CONTINUATIONS = 8


class Http2Error(Exception):
    """nghttp2 refused the connection's input; a GOAWAY naming why is queued."""


cdef class Outbound:
    """Bytes one stream has for its peer, and how the stream ends.

    Each chunk carries a credit: the size of the frames it came from on the other side (a gRPC
    backend's DATA), handed to `on_sent` once nghttp2 has taken the whole chunk, so that side's
    window reopens only then.
    """

    def __init__(self, on_sent=None):
        self.chunks = deque()
        self.size = 0
        self.offset = 0
        self.end = False
        self.ended = False
        self.trailers = None
        self.on_sent = on_sent

    cpdef add(self, bytes data, Py_ssize_t credit=0):
        self.chunks.append((data, credit))
        self.size += PyBytes_GET_SIZE(data)


cdef class Session:
    """One nghttp2 session; `owner` receives its events.

    A server session (a client's connection) calls owner.on_request per request head; a client
    session (`client=True`, the node's connection to a backend) sends requests with `request`
    and calls owner.on_response per response head, owner.on_settings per SETTINGS frame from the
    peer (its stream limit is known from the first) and owner.on_goaway when the peer goes away.
    Both call on_data, on_end, on_trailers and on_close.
    """

    def __cinit__(self):
        self.session = NULL

    def __init__(
        self,
        owner,
        *,
        int max_concurrent_streams,
        int stream_window,
        int connection_window,
        int max_header_list=DEFAULT_MAX_HEADER_LIST,
        bint client=False,
    ):
        cdef nghttp2_session_callbacks *callbacks
        cdef nghttp2_option *option
        cdef nghttp2_settings_entry iv[4]
        self.owner = owner
        self.client = client
        if client:
            self.on_response = owner.on_response
            self.on_goaway = owner.on_goaway
            self.on_settings = owner.on_settings
        else:
            self.on_request = owner.on_request
        self.on_data = owner.on_data
        self.on_end = owner.on_end
        self.on_trailers = owner.on_trailers
        self.on_close = owner.on_close
        self.gathering = {}
        self.oversized = set()
        self.outbound = {}
        self.finished = []
        self.max_header_list = max_header_list
        self.error = None
        if nghttp2_session_callbacks_new(&callbacks) != 0:
            raise MemoryError()
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, _on_begin_headers)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, _on_header)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, _on_frame_recv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, _on_data_chunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, _on_stream_close)
        if nghttp2_option_new(&option) != 0:
            nghttp2_session_callbacks_del(callbacks)
            raise MemoryError()
        nghttp2_option_set_no_auto_window_update(option, 1)
        nghttp2_option_set_stream_reset_rate_limit(option, RESET_BURST, RESET_RATE)
        nghttp2_option_set_max_continuations(option, MAX_CONTINUATIONS)
        nghttp2_option_set_max_settings(option, 32)
        if client:
            # The connection preface goes out with the first data_to_send.
            rv = nghttp2_session_client_new2(&self.session, callbacks, <void *>self, option)
        else:
            rv = nghttp2_session_server_new2(&self.session, callbacks, <void *>self, option)
        nghttp2_option_del(option)
        nghttp2_session_callbacks_del(callbacks)
        if rv != 0:
            raise MemoryError()
        iv[0].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[0].value = max_concurrent_streams
        iv[1].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[1].value = stream_window
        iv[2].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[2].value = max_header_list
        iv[3].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
        iv[3].value = 0
        nghttp2_submit_settings(self.session, NGHTTP2_FLAG_NONE, iv, 4)
        nghttp2_session_set_local_window_size(
            self.session, NGHTTP2_FLAG_NONE, 0, connection_window
        )

    def __dealloc__(self):
        if self.session != NULL:
            nghttp2_session_del(self.session)
            self.session = NULL

    # -- input ------------------------------------------------------------------------------------

    cpdef receive(self, bytes data):
        """Feed bytes from the peer; raises Http2Error when the connection must end."""
        cdef ssize_t rv = nghttp2_session_mem_recv(
            self.session, <const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)
        )
        error = self.error
        if error is not None:
            self.error = None
            raise error
        if rv < 0:
            if rv == NGHTTP2_ERR_FLOODED or rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
                # nghttp2 only returns these two (frames piling up unanswered, a header block
                # continued past MAX_CONTINUATIONS); the peer is told why with a GOAWAY of
                # ENHANCE_YOUR_CALM, "excessive load" (RFC 9113 section 7), not a bare close.
                nghttp2_session_terminate_session(self.session, ENHANCE_YOUR_CALM)
            raise Http2Error(nghttp2_strerror(<int>rv).decode())

    @property
    def alive(self):
        """False once nghttp2 wants neither to read nor to write: the connection is over."""
        return nghttp2_session_want_read(self.session) or nghttp2_session_want_write(self.session)

    # -- output -----------------------------------------------------------------------------------

    cpdef data_to_send(self):
        """Every frame nghttp2 has ready, as one bytes object (b"" when none)."""
        cdef const uint8_t *chunk
        cdef ssize_t n = nghttp2_session_mem_send(self.session, &chunk)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if n <= 0:
            if n < 0:
                raise Http2Error(nghttp2_strerror(<int>n).decode())
            return b""
        first = PyBytes_FromStringAndSize(<const char *>chunk, n)
        n = nghttp2_session_mem_send(self.session, &chunk)
        if n == 0:
            return first
        parts = [first]
        while n > 0:
            parts.append(PyBytes_FromStringAndSize(<const char *>chunk, n))
            n = nghttp2_session_mem_send(self.session, &chunk)
        if n < 0:
            raise Http2Error(nghttp2_strerror(<int>n).decode())
        return b"".join(parts)

    cpdef respond(self, int32_t stream_id, list headers, Outbound out=None):
        """Send a response head; with `out`, a body follows from it. Returns False when the
        stream is gone."""
        cdef nghttp2_nv *nva = _fields(headers)
        cdef int rv
        try:
            rv = self._submit(stream_id, nva, len(headers), out)
        finally:
            PyMem_Free(nva)
        return rv == 0

    cdef int _submit(self, int32_t stream_id, nghttp2_nv *nva, size_t count, Outbound out) except? -1:
        cdef nghttp2_data_provider provider
        cdef int rv
        if out is None:
            return nghttp2_submit_response(self.session, stream_id, nva, count, NULL)
        self.outbound[stream_id] = out
        provider.source.ptr = NULL
        provider.read_callback = _read_body
        rv = nghttp2_submit_response(self.session, stream_id, nva, count, &provider)
        if rv != 0:
            del self.outbound[stream_id]
        return rv

    cpdef respond_head(self, int32_t stream_id, int status, bytes head, Outbound out=None):
        """Send a response head given as the lines of an HTTP/1.1 one ("HTTP/1.1 200 OK\\r\\n"
        then "Name: value\\r\\n" each): names lowered, values trimmed, connection-specific
        fields left out (RFC 9113 8.2.2), no Python object per field. With `out`, a body follows
        from it. Returns False when the stream is gone."""
        cdef Py_ssize_t size = PyBytes_GET_SIZE(head)
        cdef char *text = <char *>PyMem_Malloc(size + 1)
        cdef nghttp2_nv *nva
        cdef char status_text[3]
        cdef Py_ssize_t count = 1, start, end, name_end, value_start, value_end, i
        cdef const char *found
        cdef int rv
        if text == NULL:
            raise MemoryError()
        # A copy, lowered in place: nghttp2 copies every name and value when submitting.
        memcpy(text, PyBytes_AS_STRING(head), size)
        text[size] = 0
        # A field per line at most: the lines counted with memchr, not byte by byte.
        found = <const char *>memchr(text, 10, size)
        while found != NULL:
            count += 1
            found = <const char *>memchr(found + 1, 10, size - (found + 1 - text))
        nva = <nghttp2_nv *>PyMem_Malloc(sizeof(nghttp2_nv) * count)
        if nva == NULL:
            PyMem_Free(text)
            raise MemoryError()
        status_text[0] = <char>(48 + status // 100 % 10)
        status_text[1] = <char>(48 + status // 10 % 10)
        status_text[2] = <char>(48 + status % 10)
        nva[0].name = <uint8_t *>b":status"
        nva[0].namelen = 7
        nva[0].value = <uint8_t *>status_text
        nva[0].valuelen = 3
        nva[0].flags = NGHTTP2_NV_FLAG_NONE
        count = 1
        found = <const char *>memchr(text, 10, size)
        start = size if found == NULL else found - text + 1  # the status line is skipped
        while start < size:
            found = <const char *>memchr(text + start, 10, size - start)
            end = size if found == NULL else found - text
            value_end = end
            if value_end > start and text[value_end - 1] == 13:
                value_end -= 1
            found = <const char *>memchr(text + start, 58, value_end - start)
            if found != NULL and found - text > start:
                name_end = found - text
                for i in range(start, name_end):
                    if 65 <= text[i] <= 90:
                        text[i] += 32
                value_start = name_end + 1
                while value_start < value_end and (text[value_start] == 32 or text[value_start] == 9):
                    value_start += 1
                while value_end > value_start and (text[value_end - 1] == 32 or text[value_end - 1] == 9):
                    value_end -= 1
                if not _connection_specific(text + start, name_end - start):
                    nva[count].name = <uint8_t *>(text + start)
                    nva[count].namelen = name_end - start
                    nva[count].value = <uint8_t *>(text + value_start)
                    nva[count].valuelen = value_end - value_start
                    nva[count].flags = NGHTTP2_NV_FLAG_NONE
                    count += 1
            start = end + 1
        try:
            rv = self._submit(stream_id, nva, count, out)
        finally:
            PyMem_Free(nva)
            PyMem_Free(text)
        return rv == 0

    def request(self, list headers, Outbound out=None):
        """Open a stream with a request head (a client session's); with `out`, a body follows
        from it, else the head ends the stream. Returns the stream's id; nghttp2 holds the
        HEADERS while the peer's concurrent-stream limit is reached. Raises Http2Error when no
        stream can be opened (the session is going away, or its ids are spent)."""
        cdef nghttp2_nv *nva = _fields(headers)
        cdef nghttp2_data_provider provider
        cdef int32_t stream_id
        provider.source.ptr = NULL
        provider.read_callback = _read_body
        try:
            stream_id = nghttp2_submit_request(
                self.session, NULL, nva, len(headers), NULL if out is None else &provider, NULL
            )
        finally:
            PyMem_Free(nva)
        if stream_id < 0:
            raise Http2Error(nghttp2_strerror(stream_id).decode())
        if out is not None:
            # Read by _read_body no sooner than the next data_to_send.
            self.outbound[stream_id] = out
        return stream_id

    cpdef resume(self, int32_t stream_id):
        """The stream's Outbound has more to send (or its end)."""
        nghttp2_session_resume_data(self.session, stream_id)

    cpdef reset(self, int32_t stream_id, uint32_t code):
        self.outbound.pop(stream_id, None)
        nghttp2_submit_rst_stream(self.session, NGHTTP2_FLAG_NONE, stream_id, code)

    cpdef acknowledge(self, int32_t stream_id, size_t size):
        """`size` bytes of the stream's DATA were taken: reopen the windows by as much."""
        if nghttp2_session_consume(self.session, stream_id, size) != 0:
            nghttp2_session_consume_connection(self.session, size)

    def terminate(self, uint32_t code=0):
        """GOAWAY naming the last stream processed; nothing is read after it."""
        nghttp2_session_terminate_session(self.session, code)


# Fields a response head may carry in HTTP/1.1 but not in HTTP/2 (RFC 9113 8.2.2), lower case.
cdef inline bint _connection_specific(const char *name, Py_ssize_t size) noexcept:
    # By length first: most names have a length none of these has.
    if size == 10:
        return memcmp(name, b"connection", 10) == 0 or memcmp(name, b"keep-alive", 10) == 0
    if size == 7:
        return memcmp(name, b"upgrade", 7) == 0 or memcmp(name, b"trailer", 7) == 0
    if size == 17:
        return memcmp(name, b"transfer-encoding", 17) == 0
    if size == 2:
        return memcmp(name, b"te", 2) == 0
    if size == 16:
        return memcmp(name, b"proxy-connection", 16) == 0
    return False


cdef nghttp2_nv *_fields(list headers) except NULL:
    """An nv array pointing into the header tuples' bytes; nghttp2 copies them when submitted."""
    cdef Py_ssize_t count = len(headers)
    cdef nghttp2_nv *nva = <nghttp2_nv *>PyMem_Malloc(sizeof(nghttp2_nv) * (count or 1))
    cdef Py_ssize_t i
    cdef bytes name, value
    if nva == NULL:
        raise MemoryError()
    for i in range(count):
        name, value = headers[i]
        nva[i].name = <uint8_t *>PyBytes_AS_STRING(name)
        nva[i].namelen = PyBytes_GET_SIZE(name)
        nva[i].value = <uint8_t *>PyBytes_AS_STRING(value)
        nva[i].valuelen = PyBytes_GET_SIZE(value)
        nva[i].flags = NGHTTP2_NV_FLAG_NONE
    return nva


# -- callbacks: C to Python ------------------------------------------------------------------------
# An exception must not unwind through nghttp2: it is kept on the session, the callback fails,
# and `receive` raises it once nghttp2 has returned.


cdef int _on_begin_headers(
    nghttp2_session *session, const nghttp2_frame *frame, void *user_data
) noexcept:
    cdef Session self = <Session>user_data
    self.gathering[frame.hd.stream_id] = []
    self.gathered_bytes = 0
    return 0


cdef int _on_header(
    nghttp2_session *session,
    const nghttp2_frame *frame,
    const uint8_t *name,
    size_t namelen,
    const uint8_t *value,
    size_t valuelen,
    uint8_t flags,
    void *user_data,
) noexcept:
    cdef Session self = <Session>user_data
    self.gathered_bytes += namelen + valuelen + 32
    if self.gathered_bytes > self.max_header_list:
        # RFC 9113 10.5.1: a header list over the advertised size. The rest of the block is
        # still decoded (HPACK state is the connection's) but kept nowhere; once the block ends
        # the stream gets 431, as an HTTP/1.1 client would (dataplane.protocols.http).
        if self.gathering.pop(frame.hd.stream_id, None) is not None:
            self.oversized.add(frame.hd.stream_id)
        return 0
    try:
        fields = self.gathering.get(frame.hd.stream_id)
        if fields is not None:
            fields.append((
                PyBytes_FromStringAndSize(<const char *>name, namelen),
                PyBytes_FromStringAndSize(<const char *>value, valuelen),
            ))
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_frame_recv(
    nghttp2_session *session, const nghttp2_frame *frame, void *user_data
) noexcept:
    cdef Session self = <Session>user_data
    cdef int32_t stream_id = frame.hd.stream_id
    cdef bint ended = frame.hd.flags & NGHTTP2_FLAG_END_STREAM
    cdef size_t padding
    try:
        if frame.hd.type == NGHTTP2_DATA:
            # Padding counts against the windows but reaches no chunk callback.
            padding = frame.hd.length - self.chunk_bytes
            self.chunk_bytes = 0
            if padding:
                nghttp2_session_consume(session, stream_id, padding)
            if ended:
                self.on_end(stream_id)
        elif frame.hd.type == NGHTTP2_HEADERS:
            fields = self.gathering.pop(stream_id, None)
            if fields is None:
                if stream_id in self.oversized:
                    self.oversized.discard(stream_id)
                    if self.client:
                        # A backend's response head over the limit: the call fails.
                        nghttp2_submit_rst_stream(
                            session, NGHTTP2_FLAG_NONE, stream_id, PROTOCOL_ERROR
                        )
                    else:
                        _respond_431(session, stream_id)
                return 0
            if frame.headers.cat == NGHTTP2_HCAT_REQUEST:
                self.on_request(stream_id, fields, ended)
            elif frame.headers.cat == NGHTTP2_HCAT_RESPONSE:
                self.on_response(stream_id, fields, ended)
            else:
                self.on_trailers(stream_id, fields)
                if ended:
                    self.on_end(stream_id)
        elif self.client:
            if frame.hd.type == NGHTTP2_SETTINGS and not frame.hd.flags & NGHTTP2_FLAG_ACK:
                self.on_settings()
            elif frame.hd.type == NGHTTP2_GOAWAY:
                self.on_goaway(frame.goaway.last_stream_id, frame.goaway.error_code)
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_data_chunk(
    nghttp2_session *session,
    uint8_t flags,
    int32_t stream_id,
    const uint8_t *data,
    size_t length,
    void *user_data,
) noexcept:
    cdef Session self = <Session>user_data
    self.chunk_bytes += length
    try:
        self.on_data(stream_id, PyBytes_FromStringAndSize(<const char *>data, length), length)
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef int _on_stream_close(
    nghttp2_session *session, int32_t stream_id, uint32_t error_code, void *user_data
) noexcept:
    cdef Session self = <Session>user_data
    self.outbound.pop(stream_id, None)
    self.gathering.pop(stream_id, None)
    self.oversized.discard(stream_id)
    try:
        self.on_close(stream_id, error_code)
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
    return 0


cdef void _respond_431(nghttp2_session *session, int32_t stream_id) noexcept:
    """A bodiless 431 that ends the stream; a request body still coming is acknowledged and
    dropped by the owner, which never heard of the stream."""
    cdef nghttp2_nv nv[2]
    nv[0].name = <uint8_t *>b":status"
    nv[0].namelen = 7
    nv[0].value = <uint8_t *>b"431"
    nv[0].valuelen = 3
    nv[0].flags = NGHTTP2_NV_FLAG_NONE
    nv[1].name = <uint8_t *>b"content-length"
    nv[1].namelen = 14
    nv[1].value = <uint8_t *>b"0"
    nv[1].valuelen = 1
    nv[1].flags = NGHTTP2_NV_FLAG_NONE
    nghttp2_submit_response(session, stream_id, nv, 2, NULL)


cdef ssize_t _read_body(
    nghttp2_session *session,
    int32_t stream_id,
    uint8_t *buf,
    size_t length,
    uint32_t *data_flags,
    nghttp2_data_source *source,
    void *user_data,
) noexcept:
    """nghttp2 asks for up to `length` bytes of a response body: copy them from its Outbound."""
    cdef Session self = <Session>user_data
    cdef Outbound out
    cdef size_t copied = 0
    cdef Py_ssize_t left, take
    cdef bytes data
    try:
        out = self.outbound.get(stream_id)
        if out is None:
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        chunks = out.chunks
        while chunks and copied < length:
            data, credit = chunks[0]
            left = PyBytes_GET_SIZE(data) - out.offset
            take = left if <size_t>left <= length - copied else <Py_ssize_t>(length - copied)
            memcpy(buf + copied, PyBytes_AS_STRING(data) + out.offset, take)
            copied += take
            out.size -= take
            if take == left:
                chunks.popleft()
                out.offset = 0
                if credit and out.on_sent is not None:
                    out.on_sent(credit)
            else:
                out.offset += take
        if chunks:
            return copied
        if not out.end:
            return copied if copied else NGHTTP2_ERR_DEFERRED
        out.ended = True
        data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
        del self.outbound[stream_id]
        if not self.client:
            self.finished.append(stream_id)
        if out.trailers:
            data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
            trailers = out.trailers
            nva = _fields(trailers)
            nghttp2_submit_trailer(session, stream_id, nva, len(trailers))
            PyMem_Free(nva)
        return copied
    except BaseException as exc:
        self.error = exc
        return NGHTTP2_ERR_CALLBACK_FAILURE
