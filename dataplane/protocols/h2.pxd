# The compiled build's declarations for dataplane/protocols/h2.py (setup.py): an HTTP/2 connection
# becomes an extension type, its fields C fields and its calls to itself per stream C calls. Every
# name in its __slots__ is declared here (tests/dataplane/test_compiled_modules.py keeps the lists
# equal). The .py stays the source.
cimport cython

from dataplane.heads cimport field_line

from dataplane.protocols.handle cimport ListenerHandle
from dataplane.protocols.streams cimport Stream


cdef class Http2Connection:
    cdef public object closed
    cdef public object draining
    cdef public list ended_streams
    cdef public object flush_scheduled
    cdef public object header_lines
    cdef public object held
    cdef public object idle_timer
    cdef public object loop
    cdef public object peer_ip
    cdef public object peer_ip_bytes
    cdef public object peer_port
    cdef public object registered
    cdef public ListenerHandle runtime
    cdef public object session
    cdef public object settings
    cdef public object ssl_object
    cdef public object stats
    cdef public dict streams
    cdef public object transport
    cdef public object upstreams
    cdef public object writing_paused
    cdef public object xff_line

    # nghttp2's events for a stream: the stream, looked up by id, is called in C.
    @cython.locals(stream=Stream)
    cpdef on_data(self, stream_id, data, credit)
    @cython.locals(stream=Stream)
    cpdef on_end(self, stream_id)
    @cython.locals(stream=Stream)
    cpdef on_close(self, stream_id, code)

    # A stream is a Stream (its fields C fields), never None.
    cpdef send_head(self, Stream stream, status, head, end_stream)
    cpdef send_data(self, Stream stream, data, credit=*)
    cpdef finish(self, Stream stream, trailers=*)
    cpdef _head_submitted(self, Stream stream, submitted, end_stream)
    cpdef pump(self, Stream stream)
    cpdef _done(self, Stream stream)
    cpdef _drop(self, Stream stream)
    cpdef _stream_gone(self)
    cpdef schedule_flush(self)
    cpdef flush(self)
