# Declarations of dataplane/tlsrecords.pyx, so that the compiled TLS layer
# (dataplane/protocols/tls_layer.py) calls its pump's methods as C calls.

cdef extern from "openssl/ssl.h":
    ctypedef struct SSL:
        pass
    ctypedef struct BIO:
        pass


cdef class RecordPump:
    cdef SSL *session
    cdef BIO *incoming
    cdef BIO *outgoing
    # Held so the pointers above stay valid for the pump's life.
    cdef object ssl_object
    cdef object incoming_bio
    cdef object outgoing_bio
    cdef public bint eof

    cpdef feed(self, bytes data)
    cpdef bytes read(self)
    cpdef bint pending(self)
    cpdef bytes write(self, bytes data)
    cpdef bytes drain(self)
    cpdef bytes shutdown(self)
