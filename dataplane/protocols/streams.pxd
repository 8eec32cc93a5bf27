# The compiled build's declarations for dataplane/protocols/streams.py (setup.py): a stream's
# exchange and its client stream become extension types, so the exchange's own C calls stay C
# calls for an HTTP/2 or HTTP/3 stream too, and the exchange calls its stream in C. Every name in each __slots__ is declared here
# (tests/dataplane/test_compiled_modules.py keeps the lists equal). The .py stays the source.
cimport cython

from dataplane.protocols.exchange cimport Exchange, Request
from dataplane.protocols.handle cimport ListenerHandle
from dataplane.heads cimport fits_request_line
from dataplane.nghttp2 cimport Outbound


cdef class ProxiedStream
cdef class Stream


# A stream's connection, HTTP/2 or HTTP/3: its fields are C fields and its calls C calls for
# every stream (the HTTP/3 connection, a Python subclass, is called through its overrides).
cdef class StreamConnection:
    cdef public list ended_streams
    cdef public object header_lines
    cdef public object loop
    cdef public object peer_ip
    cdef public object peer_ip_bytes
    cdef public object peer_port
    cdef public ListenerHandle runtime
    cdef public object ssl_object
    cdef public dict streams
    cdef public object writing_paused
    cdef public object xff_line

    cpdef send_head(self, Stream stream, status, head, end_stream)
    cpdef send_data(self, Stream stream, data, credit=*)
    cpdef finish(self, Stream stream, trailers=*)
    cpdef reset(self, Stream stream, code)
    cpdef refuse(self, stream_id, code)
    cpdef acknowledge(self, stream_id, credit)


cdef class Stream:
    cdef public StreamConnection connection
    cdef public Outbound out
    cdef public object request_ended
    cdef public object stream_id

    # What the connection calls per stream: C calls where it holds the stream as a Stream.
    cpdef request_data(self, data, credit)
    cpdef request_end(self)
    cpdef request_trailers(self, headers)
    cpdef cancel(self)
    cpdef stop(self)
    cpdef pause_backend(self)
    cpdef resume_backend(self)


cdef class StreamProxy(Exchange):
    cdef public ProxiedStream stream

    cpdef attach(self, ProxiedStream stream)
    cpdef begin(self, method, path, host, list fields, bint chunked)
    cpdef _connection_headers(self, settings)
    cpdef _send_head(self, Request request, list out, status, bint unsized, bint bodiless)
    cpdef _exchange_done(self, bint keep_alive, now)
    cpdef _send_answer(self, status, bytes head, bytes body, bint throttled)
    cpdef _continue(self)
    cpdef _write(self, data)
    cpdef _sender(self)
    cpdef _pause(self, reason)
    cpdef _resume(self, reason)
    cpdef bint _client_closing(self)
    cpdef _end_client(self, bint abort)


cdef class ProxiedStream(Stream):
    cdef public object backend_paused
    cdef public object closing
    cdef public object head_request
    cdef public object pending
    cdef public StreamProxy proxy
    cdef public object reading
    cdef public object responded

    # The exchange's calls on its client, and the stream's on itself.
    cpdef start(self, method, path, host, list fields, bint chunked)
    cpdef _feed(self, data, credit)
    cpdef _deliver(self, data)
    cpdef hold(self)
    cpdef release(self)
    cpdef respond(self, status, head, end_stream)
    cpdef send_body(self, data)
    cpdef complete(self)
    cpdef end(self, code)
    cpdef _proxy_lost(self)


@cython.locals(stream=ProxiedStream)
cpdef reap(list ended)
