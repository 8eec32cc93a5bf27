# The compiled build's declarations for dataplane/protocols/tls_layer.py (setup.py): the TLS layer
# is an extension type whose internal calls are C calls. Every name in __slots__ is declared here
# (tests/dataplane/test_compiled_modules.py keeps the lists equal). The .py stays the source.

cimport cython

from dataplane.tlsrecords cimport RecordPump

cdef int _HANDSHAKE, _OPEN, _CLOSING, _CLOSED


cdef class TlsLayer:
    cdef public object context
    cdef public object app
    cdef public object tcp
    cdef public object ssl_object
    cdef public object incoming
    cdef public object outgoing
    cdef public RecordPump pump
    cdef public int state
    cdef public bint paused
    cdef public bint ended
    cdef public object timer
    cdef public double handshake_timeout
    cdef public object make_pump

    cpdef _handshake(self)
    @cython.locals(pump=RecordPump)
    cpdef _deliver(self)
    @cython.locals(pump=RecordPump)
    cpdef _flush(self)
    cpdef _end_of_session(self)
    cpdef _fail(self, exc)
    cpdef _abort(self)
    cpdef close(self)
