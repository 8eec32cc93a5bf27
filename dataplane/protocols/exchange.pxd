# The compiled build's declarations for dataplane/protocols/exchange.py (setup.py): the
# attributes of Request and Exchange become fields of their extension types, and the methods the
# exchange calls on itself per request become C calls. Every name in each __slots__ is declared here
# (tests/dataplane/test_compiled_modules.py keeps the lists equal). The .py stays the source.
cimport cython

from dataplane.balancing cimport Backend, Scheduler
from dataplane.deadlines cimport Deadlines
from dataplane.heads cimport field_line, special_lines
from dataplane.protocols.gate cimport BackendReadGate
from dataplane.protocols.handle cimport ListenerHandle
from dataplane.protocols.settings cimport ListenerSettings, Route
from dataplane.stats cimport ListenerStats
from dataplane.upstream cimport HttpUpstream


# Module constants the parser callbacks compare per header, as C values.
cdef int _PLAIN, _CONTENT_LENGTH, _TRANSFER_ENCODING, _CONNECTION, _HOP, _HOST, _XFF, _COOKIE
cdef int _EXPECT, _ACCEPT_ENCODING
cdef dict _REQUEST_HEADERS
cdef frozenset _DISGUISED
# Hosts already found well formed: a C-level set lookup per request.
cdef set _VALID_HOSTS


cdef class Request:
    cdef public object accept_encoding
    cdef public object answered_at
    cdef public object body
    cdef public object buffered
    cdef public object chunked
    cdef public object complete
    cdef public object connect_at
    cdef public object connected_at
    cdef public object connection_tokens
    cdef public object content_length
    cdef public object cookies
    cdef public object ended
    cdef public object expect_continue
    cdef public object forwarded_at
    cdef public object has_body
    cdef public object headers
    cdef public object host
    cdef public object keep_alive
    cdef public object method
    cdef public object rule
    cdef public object server
    cdef public object started
    cdef public object status
    cdef public object transfer_encoding
    cdef public object tried
    cdef public object upgrade
    cdef public object upgrade_value
    cdef public object url
    cdef public object version
    cdef public object websocket
    cdef public object xff


cdef class Exchange(BackendReadGate):
    cdef public object accounted
    cdef public Backend backend
    cdef public object body_mark
    cdef public object bucket
    cdef public object client_ip
    cdef public object closed
    cdef public object compressor
    cdef public object conn_headers
    cdef public object connect_task
    cdef public Request current
    cdef public object deadline
    cdef public Deadlines deadlines
    cdef public object drain_mark
    cdef public object draining
    cdef public object drains
    cdef public object eof_body
    cdef public object head
    cdef public object head_began
    cdef public object head_size
    cdef public object in_head
    cdef public object in_mark
    cdef public object keep_alive
    cdef public object loop
    cdef public object out
    cdef public object out_mark
    cdef public Request parsing
    cdef public object paused
    cdef public object peer_ip
    cdef public object peer_ip_bytes
    cdef public object peer_port
    cdef public object reads
    cdef public object received
    cdef public object rechunk
    cdef public object reject_status
    cdef public object response_mark
    cdef public object response_started
    cdef public Route route
    cdef public ListenerHandle runtime
    cdef public object sent
    cdef public ListenerSettings settings
    cdef public ListenerStats stats
    cdef public object termination
    cdef public object throttled
    cdef public object timer_at
    cdef public object timer_tick
    cdef public object tunnel
    cdef public object upstream
    cdef public object writer
    cdef public object writing_paused
    cdef public object xff_line

    # Codecs override some of these as extension types (http.pxd, streams.pxd), and
    # accesslog.CountsBytes in Python.
    cpdef _connection_headers(self, settings)
    cpdef _use_bucket(self, settings)
    cpdef _begin_request(self, now)
    cpdef on_header(self, name, value)
    @cython.locals(request=Request, kind=cython.int)
    cpdef on_field(self, name, lower, value)
    @cython.locals(request=Request)
    cpdef on_body(self, body)
    @cython.locals(request=Request)
    cpdef on_message_complete(self)
    cpdef _write(self, data)
    cpdef _admit(self, Request request, bint keep_alive)
    cpdef _admitted(self, Request request)
    @cython.locals(settings=ListenerSettings, route=Route, scheduler=Scheduler, backend=Backend)
    cpdef _start(self, Request request)
    cpdef _match_rules(self, table, Request request, client_ip)
    cpdef _connect(self, Backend backend)
    @cython.locals(request=Request)
    cpdef _attach(self, HttpUpstream upstream)
    cpdef _release_backend(self)
    @cython.locals(request=Request, settings=ListenerSettings, head=bytes)
    cpdef upstream_headers(self, HttpUpstream upstream)
    cpdef _send_head(self, Request request, list out, status, bint unsized, bint bodiless)
    cpdef upstream_body(self, data)
    cpdef flush(self)
    @cython.locals(request=Request)
    cpdef upstream_complete(self, HttpUpstream upstream)
    @cython.locals(request=Request)
    cpdef _finish(self, HttpUpstream upstream, bint reusable)
    cpdef _set_deadline(self, timeout, now)
    @cython.locals(request=Request)
    cpdef _check_deadline(self)
    cpdef _check_body(self, now)
    cpdef _pause(self, reason)
    cpdef _resume(self, reason)
    @cython.locals(request=Request)
    cpdef _reject(self, status)
    cpdef _send_answer(self, status, bytes head, bytes body, bint throttled)
    cpdef _continue(self)
    cpdef _exchange_done(self, bint keep_alive, now)
    cpdef _ended(self, Request request, status, termination)
    cpdef _teardown(self)
    cpdef _close(self)
    cpdef _abort(self)
    # The client side, each codec's own.
    cpdef _sender(self)
    cpdef bint _client_closing(self)
    cpdef _end_client(self, bint abort)
