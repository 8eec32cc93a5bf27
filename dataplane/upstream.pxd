# The compiled build's declarations for dataplane/upstream.py (setup.py): see
# dataplane/protocols/http.pxd. Every name in each __slots__ is declared here.
cimport cython

from dataplane.heads cimport head_span


cdef class HttpUpstream


# The exchange's base (through protocols/gate.pxd): the calls a response makes per request are C
# calls into its overrides (protocols/exchange.pxd).
cdef class Owner:
    cpdef upstream_headers(self, HttpUpstream upstream)
    cpdef upstream_body(self, data)
    cpdef upstream_complete(self, HttpUpstream upstream)
    cpdef flush(self)


cdef class HttpUpstream:
    cdef public object buffer
    cdef public object closed
    cdef public object cursor
    cdef public object head
    cdef public object head_start
    cdef public object head_total
    cdef public object headers_done
    cdef public object idle_mark
    cdef public object in_head
    cdef public object interim
    cdef public object key
    cdef public Owner owner
    cdef public object parser
    cdef public object partial
    cdef public object partial_size
    cdef public object pool
    cdef public object reads
    cdef public object received
    cdef public object reused
    cdef public object status
    cdef public object stray
    cdef public object transport
    cdef public object tunnel

    cpdef begin(self, owner)
    @cython.locals(owner=Owner)
    cpdef data_received(self, data)
    cpdef on_message_begin(self)
    cpdef on_headers_complete(self)
    cpdef on_body(self, body)
    @cython.locals(owner=Owner)
    cpdef on_message_complete(self)
    cpdef bint reusable(self)
    cpdef write(self, data)
    cpdef close(self)


cdef class UpstreamPool:
    cdef public dict _idle
    cdef public object _loop
    cdef public dict _open
    cdef public object _sweeper
    cdef public object _sweeps
    cdef public object idle_timeout
    cdef public object max_idle_per_server

    @cython.locals(idle=list, upstream=HttpUpstream)
    cpdef acquire(self, key)
    @cython.locals(idle=list)
    cpdef release(self, HttpUpstream upstream)
    cpdef opened(self, HttpUpstream upstream)
    cpdef lost(self, HttpUpstream upstream)
    cpdef discard(self, HttpUpstream upstream)
