# The compiled build's declarations for dataplane/protocols/http.py (setup.py): the HTTP/1.1
# codec is an extension type over the exchange's (exchange.pxd), and the hooks it overrides stay C
# calls. Every name in __slots__ is declared here (tests/dataplane/test_compiled_modules.py keeps
# the lists equal). The .py stays the source.
cimport cython

from dataplane.heads cimport field_line, line_version

from dataplane.protocols.exchange cimport Exchange, Request
from dataplane.upstream cimport HttpUpstream


cdef class HttpProxy(Exchange):
    cdef public object early
    cdef public object first_read
    cdef public object head_bytes
    cdef public object head_mark
    cdef public object parser
    cdef public object queue
    cdef public object registered
    cdef public object transport

    # accesslog.CountingHttpProxy may still override these in Python.
    cpdef _serve(self, settings)
    cpdef on_message_begin(self)
    @cython.locals(request=Request)
    cpdef on_url(self, url)
    @cython.locals(request=Request)
    cpdef on_headers_complete(self)
    cpdef _admitted(self, Request request)
    cpdef _exchange_done(self, bint keep_alive, now)
    cpdef _send_head(self, Request request, list out, status, bint unsized, bint bodiless)
    cpdef _continue(self)
    cpdef _go_idle(self, now)
    cpdef _write(self, data)
    cpdef _sender(self)
    cpdef _pause(self, reason)
    cpdef _resume(self, reason)
    cpdef _send_answer(self, status, bytes head, bytes body, bint throttled)
    cpdef bint _client_closing(self)
    cpdef _end_client(self, bint abort)
