# The compiled build's declarations for dataplane/protocols/h2.py (setup.py): an HTTP/2 connection
# becomes an extension type, its fields C fields and its calls to itself per stream C calls. Every
# name in its __slots__ is declared here (tests/dataplane/test_compiled_modules.py keeps the lists
# equal). The .py stays the source.
cimport cython

from dataplane.heads cimport field_line

from dataplane.protocols.handle cimport ListenerHandle
from dataplane.nghttp2 cimport Session
from dataplane.protocols.streams cimport Stream, StreamConnection


cdef class Http2Connection(StreamConnection):
    cdef public object closed
    cdef public object draining
    cdef public object flush_scheduled
    cdef public object held
    cdef public object idle_timer
    cdef public object registered
    # None until the connection is made and after it is lost; used only while not closed.
    cdef public Session session
    cdef public object settings
    cdef public object stats
    cdef public object transport
    cdef public object upstreams

    # nghttp2's events for a stream: the stream, looked up by id, is called in C.
    @cython.locals(stream=Stream)
    cpdef on_data(self, stream_id, data, credit)
    @cython.locals(stream=Stream)
    cpdef on_end(self, stream_id)
    @cython.locals(stream=Stream)
    cpdef on_close(self, stream_id, code)

    # StreamConnection's calls, redeclared as Cython requires of an override. A stream is a
    # Stream (its fields C fields), never None.
    cpdef send_head(self, Stream stream, status, head, end_stream)
    cpdef send_data(self, Stream stream, data, credit=*)
    cpdef finish(self, Stream stream, trailers=*)
    cpdef reset(self, Stream stream, code)
    cpdef refuse(self, stream_id, code)
    cpdef acknowledge(self, stream_id, credit)
    cpdef _head_submitted(self, Stream stream, submitted, end_stream)
    cpdef pump(self, Stream stream)
    cpdef _done(self, Stream stream)
    cpdef _drop(self, Stream stream)
    cpdef _stream_gone(self)
    cpdef schedule_flush(self)
    cpdef flush(self)
