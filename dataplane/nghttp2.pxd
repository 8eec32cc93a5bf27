# Declarations of dataplane/nghttp2.pyx, so that the compiled HTTP/2 connection and its streams
# (dataplane/protocols/h2.py, streams.py) read a stream's Outbound as C fields and call their
# session's per-request methods as C calls.
from libc.stdint cimport int32_t, uint8_t, uint32_t


cdef extern from "nghttp2/nghttp2.h":
    ctypedef struct nghttp2_session:
        pass

    ctypedef struct nghttp2_nv:
        uint8_t *name
        uint8_t *value
        size_t namelen
        size_t valuelen
        uint8_t flags


cdef class Outbound:
    cdef public object chunks
    cdef public Py_ssize_t size
    cdef public bint end
    cdef public bint ended
    cdef public object trailers
    cdef public object on_sent
    cdef Py_ssize_t offset

    cpdef add(self, bytes data, Py_ssize_t credit=*)


cdef class Session:
    cdef nghttp2_session *session
    cdef object owner
    cdef readonly bint client
    # Header fields of the HEADERS block being received, by stream.
    cdef dict gathering
    cdef Py_ssize_t gathered_bytes
    cdef Py_ssize_t max_header_list
    # Streams whose request head passed max_header_list: answered 431 here, never opened.
    cdef set oversized
    # Response bodies nghttp2 pulls from, by stream.
    cdef public dict outbound
    # Streams whose last response frame was handed to nghttp2 during data_to_send.
    cdef public list finished
    cdef Py_ssize_t chunk_bytes
    cdef object on_request
    cdef object on_response
    cdef object on_goaway
    cdef object on_settings
    cdef object on_data
    cdef object on_end
    cdef object on_trailers
    cdef object on_close
    cdef object error

    cpdef receive(self, bytes data)
    cpdef data_to_send(self)
    cpdef respond(self, int32_t stream_id, list headers, Outbound out=*)
    cdef int _submit(self, int32_t stream_id, nghttp2_nv *nva, size_t count, Outbound out) except? -1
    cpdef respond_head(self, int32_t stream_id, int status, bytes head, Outbound out=*)
    cpdef resume(self, int32_t stream_id)
    cpdef reset(self, int32_t stream_id, uint32_t code)
    cpdef acknowledge(self, int32_t stream_id, size_t size)
