"""One HTTP request/response exchange, whichever codec carried it.

A codec speaks its wire and nothing else: dataplane.protocols.http for HTTP/1.1 (httptools,
pipelining, chunked framing, the WebSocket tunnel), dataplane.protocols.streams for each stream of
an HTTP/2 (nghttp2) or HTTP/3 (aioquic) connection. Each is an `Exchange` and hands it a neutral
request head (method, target, host, the field list) through `_begin_request`, `on_header` and
`_admit`, and the body through `on_body` and `on_message_complete`. From there the exchange does
the rest, the same for all three: the field checks, client-IP settlement, QPS limits, forwarding
rules, route and server pick, persistence, the managed request headers (X-Forwarded-*, SLB-*,
client certificate), the request to a pooled backend connection, retries, response-head
rewriting, compression, bandwidth, the request and response timeouts, counters and the access
log. What differs per wire is a handful of hooks the codec overrides: how a response head is
framed (`_send_head`), how an answer of the node's own goes out (`_send_answer`), what follows an
exchange (`_exchange_done`), interim responses, 100-continue and the WebSocket tunnel.

An HTTP/1.1 connection runs one exchange at a time, so its codec is the exchange, reset for each
request rather than allocated anew; an HTTP/2 or HTTP/3 stream gets an exchange of its own.

Bodies are never buffered whole. Request bodies stream to the backend (re-chunked when their
length is unknown); response bodies stream to the client. Backpressure works both ways through
asyncio's flow-control callbacks: when one side's write buffer passes its high-water mark, reading
from the other side pauses until it drains.

Answers the dataplane gives itself:
- 400 malformed request (both Content-Length and Transfer-Encoding, invalid or repeated
  Content-Length, Transfer-Encoding without chunked last or on HTTP/1.0, two Host fields, a Host
  that is not one host, HTTP/1.1 without Host, an absolute-form target that is not http(s) with a
  host), 431 request header block over MAX_HEADER_BYTES, 501 a transfer coding before chunked;
  nothing is forwarded;
- an absolute-form target's authority is the request's host (RFC 9112 3.2.2): rules,
  X-Forwarded-Host and the Host sent to the backend use it, and the backend gets the origin form;
  an HTTP/1.0 request without Host reaches it with an empty Host;
- 503 when the server group has no healthy server with a weight above 0;
- 502 when connecting fails on the chosen server and on those its retries tried (dataplane.retry),
  or when the backend's response is not valid HTTP;
- 504 when the backend has not answered within the listener's request timeout;
- a listener's own 502, 503 and 504 pages replace those three plain answers, and its maintenance
  page the 503 of a group whose servers are all in Maintenance (dataplane.error_pages).

Seed features on top of the plain proxy:
- Compression (seed 001, dataplane.compression decides): the body is compressed on the way out,
  sent chunked to HTTP/1.1 clients and close-delimited to HTTP/1.0 ones, with Content-Encoding and
  `Vary: Accept-Encoding`; a strong ETag becomes weak, since the bytes differ. Never for HEAD,
  1xx/204/206/304, or `Cache-Control: no-transform`.
- Bandwidth (seed 000): responses are written through the listener's token bucket; when it is in
  debt, reading from the backend pauses.
- QUIC upgrade (seed 001): an HTTPS listener linked to a QUIC listener adds its Alt-Svc header to
  responses that carry none.
- Retries (issue 20, dataplane.retry): a failed connect, or a 502/503 answer to an idempotent
  request without a body, goes to a server not tried yet, within the listener's `retries` and
  retry budget; a retried answer never reaches the client. A request that does not fail pays one
  comparison of its response status.
- Forwarding rules (seed 002, dataplane.rules): with rules, each request is matched once the
  client IP is settled; a forward picks from that group's route (scheduler, TLS context,
  persistence tokens), a redirect or fixed response is answered here without a backend. A listener
  without rules pays one attribute test per request. With path conditions the backend gets the
  normalized path the rules judged (dataplane.rules, "Paths").
- QPS per client IP (seeds 001/003, dataplane.throttle): the listener's limit is checked once the
  client IP is settled, a matching rule's before its action runs; over either, the node answers
  429 with Retry-After itself (the connection kept as after a rule's fixed response), counts it
  and logs it as "throttled". A listener without a limit pays one attribute test per request.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import logging
import re
import ssl
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from dataplane.balancing import Backend
from dataplane.bandwidth import ThrottledWriter
from dataplane.compression import Compressor, choose_encoding
from dataplane.descriptors import EXHAUSTED
from dataplane.heads import field_line, special_lines
from dataplane.hostnames import HOST_FIELD
from dataplane.protocols.gate import BackendReadGate
from dataplane.protocols.settings import CLIENTCERT_HEADERS
from dataplane.retry import next_server, retryable_answer
from dataplane.rules import (
    Action,
    FixedResponseAction,
    ForwardAction,
    RedirectAction,
    RuleAction,
    RuleTable,
    ambiguous_path,
    needs_normalizing,
    normalize_path,
    split_target,
)
from dataplane.tls import client_certificate_headers

# Request timings for the latency histograms and the access log (dataplane.accesslog).
_clock = time.monotonic

if TYPE_CHECKING:
    from dataplane.protocols.handle import ListenerHandle
    from dataplane.protocols.settings import ListenerSettings, Route
    from dataplane.throttle import QpsLimiter
    from dataplane.upstream import HttpUpstream

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 64 * 1024
MAX_HEADERS = 256
# Request body buffered while the backend connection is being opened, before the client pauses.
MAX_BUFFERED_BODY = 256 * 1024

# Why reading from the client is paused (a bit set: reading resumes when no reason is left).
_PAUSE_PIPELINE = 1  # a pipelined request waits for the one before it
_PAUSE_UPSTREAM = 2  # the backend connection's write buffer is full
_PAUSE_BUFFER = 4  # request body waiting for a backend connection
_PAUSE_DONE = 8  # no further request will be read on this connection

# Request headers that need more than copying (_PLAIN: copied as they are).
_PLAIN = -1
(
    _CONTENT_LENGTH,
    _TRANSFER_ENCODING,
    _CONNECTION,
    _HOP,
    _HOST,
    _XFF,
    _COOKIE,
    _EXPECT,
    _ACCEPT_ENCODING,
) = range(9)
_REQUEST_HEADERS = {
    b"content-length": _CONTENT_LENGTH,
    b"transfer-encoding": _TRANSFER_ENCODING,
    b"connection": _CONNECTION,
    b"keep-alive": _HOP,
    b"proxy-connection": _HOP,
    b"te": _HOP,
    b"trailer": _HOP,
    b"upgrade": _HOP,
    b"host": _HOST,
    b"x-forwarded-for": _XFF,
    b"cookie": _COOKIE,
    b"expect": _EXPECT,
    b"accept-encoding": _ACCEPT_ENCODING,
}
_BLANK_OR_COLON = (58, 32, 9)
# Response header values compression looks at, in the lower-cased head.
_COMPRESSION_FIELDS = re.compile(
    rb"\r\n(content-type|content-length|content-encoding|cache-control|vary):[ \t]*([^\r]*)"
)
# Connection options that name no header to drop: the connection's own, and the fields that frame
# the request or name its host, which a client must not strip from what the backend gets (without
# Content-Length the backend would read the body as the next request).
_CONNECTION_TOKENS = frozenset(
    {b"close", b"keep-alive", b"upgrade", b"content-length", b"transfer-encoding", b"host"}
)
# What _match_rules answers for a path whose segments backends may read differently
# (dataplane.rules, "Paths"): refused, since whichever reading the rules took, a backend could
# take another.
_AMBIGUOUS_PATH = FixedResponseAction(
    "ambiguous-path", RuleAction("fixed_response", status_code=400)
)
# One host, as a Host field or an authority may name it (dataplane.hostnames).
_host_field = HOST_FIELD.fullmatch
# Host values found valid lately: whether one is valid depends on its bytes alone, and clients
# send the same few hosts again and again, so the pattern runs once per value rather than once
# per request. Bounded: emptied when full, so a flood of distinct hosts costs only the pattern.
_VALID_HOSTS: set[bytes] = set()
_VALID_HOSTS_MAX = 1024
# A request target in absolute form (RFC 9112 3.2.2): scheme, authority, and the rest.
_ABSOLUTE_FORM = re.compile(rb"[Hh][Tt][Tt][Pp][Ss]?://([^/?#]*)(.*)", re.DOTALL)

# Added to a re-armed deadline: uvloop's timer can fire up to a millisecond before the time asked.
_TIMER_SLACK = 0.001

_THROTTLED_BODY = b"429 Too Many Requests\n"
_NO_HEADERS: dict[bytes, bytes] = {}
_LAST_CHUNK = b"0\r\n\r\n"
_REASONS = {
    400: "Bad Request",
    405: "Method Not Allowed",
    408: "Request Timeout",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
# Why a request the node answered itself ended, for the access log.
_TERMINATIONS = {
    408: "client_timeout",
    502: "backend_error",
    503: "no_server",
    504: "backend_timeout",
}
_date_cache = [0, b""]


def http_date() -> bytes:
    """The Date header value, formatted at most once per second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True).encode()
    return _date_cache[1]  # type: ignore[return-value]


def error_response(status: int, *, head_only: bool = False) -> tuple[bytes, bytes]:
    """The node's plain answer, as its head (through the blank line) and body; `head_only` for a
    HEAD request, whose answer has no body (RFC 9110 9.3.2) but the Content-Length a GET's would
    have."""
    reason = _REASONS[status].encode()
    body = b"%d %s\n" % (status, reason)
    head = (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
        % (
            status,
            reason,
            len(body),
        )
        + b"Connection: close\r\nDate: %s\r\n\r\n" % http_date()
    )
    return head, b"" if head_only else body


def _underscored(names: Iterable[bytes]) -> frozenset[bytes]:
    """Every spelling of `names` with one or more of their dashes written as underscores."""
    spellings = set()
    for name in names:
        parts = name.split(b"-")
        for joins in itertools.product((b"-", b"_"), repeat=len(parts) - 1):
            spelling = parts[0] + b"".join(j + p for j, p in zip(joins, parts[1:], strict=True))
            if spelling != name:
                spellings.add(spelling)
    return frozenset(spellings)


# Names such as `X_Forwarded_For` that stand for a header the node frames, sets or drops: CGI-style
# backends (WSGI, PHP) read `_` and `-` alike, so they would reach them as that header, past the
# node. Every name a listener's drop_headers may hold is here, whether or not it manages it.
_DISGUISED = _underscored(
    [
        *_REQUEST_HEADERS,
        *CLIENTCERT_HEADERS,
        b"x-forwarded-proto",
        b"x-forwarded-port",
        b"x-forwarded-host",
        b"x-forwarded-client-srcport",
        b"x-forwarded-elb-ip",
        b"slb-id",
        b"slb-ip",
    ]
)


class _Reject(Exception):
    """Raised inside a field or parser callback to refuse the request; the status is on the
    exchange (`reject_status`)."""


class Request:
    """One client request: its rebuilt head and any body waiting for a backend connection."""

    __slots__ = (
        "accept_encoding",
        "answered_at",
        "body",
        "buffered",
        "chunked",
        "complete",
        "connect_at",
        "connected_at",
        "connection_tokens",
        "content_length",
        "cookies",
        "ended",
        "expect_continue",
        "forwarded_at",
        "has_body",
        "headers",
        "host",
        "keep_alive",
        "method",
        "rule",
        "server",
        "started",
        "status",
        "transfer_encoding",
        "tried",
        "upgrade",
        "upgrade_value",
        "url",
        "version",
        "websocket",
        "xff",
    )

    def __init__(self, started: float) -> None:
        self.url = b""
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        # Header lines to forward as they are, already formatted.
        self.headers: list[bytes] = []
        self.host: bytes | None = None
        # Lists most requests never need stay None until a header fills them.
        self.xff: list[bytes] | None = None
        self.cookies: list[bytes] | None = None
        self.content_length: bytes | None = None
        self.transfer_encoding: list[bytes] | None = None
        self.connection_tokens: list[bytes] | None = None
        self.expect_continue = False
        self.upgrade = False
        self.upgrade_value = b""
        self.websocket = False
        self.accept_encoding: bytes | None = None
        self.chunked = False
        self.has_body = False
        self.complete = False
        # Body bytes (already framed for the backend) not yet written to it.
        self.body: list[bytes] | None = None
        self.buffered = 0
        # Observability (dataplane.stats, dataplane.accesslog): when the request began. The
        # rest is set only once it happens, and read with getattr off the hot path: `status`
        # (sent), `forwarded_at` (sent on to a server), `answered_at` (its response head came),
        # `ended`, `rule` (a rule matched), `connect_at` and `connected_at` (a new backend
        # connection), `server` (one failed), `tried` (servers that failed before the current
        # one, once a retry was considered: dataplane.retry).
        self.started = started


class Exchange(BackendReadGate):
    """One request/response exchange at a time, fed a neutral request head by its codec.

    A codec subclasses it (dataplane.protocols.http.HttpProxy, dataplane.protocols.streams.
    StreamProxy), and calls `_begin_request`, `on_header` per field and `_admit` for a head,
    `on_body` and `on_message_complete` for the body. Its hooks: `_send_head`, `_send_answer`,
    `_continue`, `_exchange_done`, `upstream_interim` and `_begin_tunnel`, and the client side
    (`_write`, `_pause`, `_resume`, `_end_client` and the rest of that section): the exchange
    holds no transport, so a codec whose client is not a socket (an HTTP/2 or HTTP/3 stream)
    does not pretend to be one.
    """

    # Whether `received` and `sent` are counted (dataplane.accesslog.CountsBytes).
    counts_bytes = False

    __slots__ = (
        "accounted",
        "backend",
        "body_mark",
        "bucket",
        "client_ip",
        "closed",
        "compressor",
        "conn_headers",
        "connect_task",
        "current",
        "deadline",
        "deadlines",
        "drain_mark",
        "draining",
        "drains",
        "eof_body",
        "head",
        "head_began",
        "head_size",
        "in_head",
        "in_mark",
        "keep_alive",
        "loop",
        "out",
        "out_mark",
        "parsing",
        "paused",
        "peer_ip",
        "peer_ip_bytes",
        "peer_port",
        "reads",
        "received",
        "rechunk",
        "reject_status",
        "response_mark",
        "response_started",
        "route",
        "runtime",
        "sent",
        "settings",
        "stats",
        "termination",
        "throttled",
        "timer_at",
        "timer_tick",
        "tunnel",
        "upstream",
        "writer",
        "writing_paused",
        "xff_line",
    )

    def __init__(self, runtime: ListenerHandle) -> None:
        # shared state
        # Read through the typed field: C field reads in the compiled build.
        self.runtime = runtime
        self.settings: ListenerSettings = self.runtime.settings  # type: ignore[assignment]
        self.loop = self.runtime.loop
        # A listener keeps its counters across generations.
        self.stats = self.runtime.stats
        # the client: who it is (its codec knows where its response bytes go)
        self.peer_ip = ""
        self.peer_ip_bytes = b""
        self.peer_port = 0
        self.conn_headers = b""
        self.xff_line = b""
        self.closed = False
        self.draining = False
        self.paused = 0
        self.writing_paused = False
        # bandwidth: writes to the client go through `writer` when the listener has a limit;
        # `throttled` while the bucket is in debt (reading from the backend is paused)
        self.bucket = None
        self.writer: ThrottledWriter | None = None
        self.throttled = False
        # WebSocket (HTTP/1.1 only): the client and the backend exchange bytes
        self.tunnel = False
        # timeouts: one lazily re-armed check per exchange, on the listener's timer
        # (dataplane.deadlines), at `timer_at`, of `deadline`, which is the idle deadline
        # between requests and the backend's answer deadline during one; `timer_tick` is 0
        # while no check is due
        self.deadlines = self.runtime.deadlines
        self.timer_tick = 0
        self.timer_at = 0.0
        self.deadline = 0.0
        # reads from the client so far, and their count when a request body was last checked
        self.reads = 0
        self.body_mark = -1
        # times the client drained its write buffer, and the backend's reads, when a streaming
        # response was last checked
        self.drains = 0
        self.drain_mark = -1
        self.response_mark = -1
        # request head being read: its size so far (what the codec counted of its bytes in
        # `accounted`), and whether it began in the codec's current read
        self.parsing: Request | None = None
        self.in_head = False
        self.head_began = False
        self.head_size = 0
        self.accounted = 0
        self.reject_status = 0
        # request being proxied
        self.current: Request | None = None
        self.head = b""
        self.client_ip = ""
        self.backend: Backend | None = None
        # The server group the request goes to: the listener's default, or a rule's.
        self.route: Route = self.settings.route
        self.upstream: HttpUpstream | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.response_started = False
        # Set by a codec that frames the response body in chunks (HTTP/1.1).
        self.rechunk = False
        self.eof_body = False
        self.keep_alive = True
        # Response bytes gathered during one read from the backend, written with one call.
        self.out: list[bytes] = []
        self.compressor: Compressor | None = None
        # Bytes from and to this client (counted by dataplane.accesslog.CountsBytes while the
        # listener logs), and why its request in flight ended when it did not complete.
        self.received = 0
        self.sent = 0
        self.in_mark = 0
        self.out_mark = 0
        self.termination = ""

    # -- client settings -------------------------------------------------------------------------

    def _connection_headers(self, settings: ListenerSettings) -> bytes:
        """Header lines that stay the same for every request of this connection."""
        lines = settings.static_headers
        if settings.srcport:
            lines += b"X-Forwarded-Client-srcport: %d\r\n" % self.peer_port
        if settings.clientcert:
            lines += client_certificate_headers(self.client_tls(), settings.listener)
        return lines

    def _adopt(self, settings: ListenerSettings) -> None:
        # A new generation of this listener: the next request uses it.
        self.settings = settings
        self.conn_headers = self._connection_headers(settings)
        self._use_bucket(settings)

    def _use_bucket(self, settings: ListenerSettings) -> None:
        bucket = settings.bucket
        if bucket is self.bucket:
            return
        self.bucket = bucket
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            self._bandwidth_resume()
        if bucket is not None:
            self.writer = ThrottledWriter(
                self._sender(),
                bucket,
                pause_reading=self._bandwidth_pause,
                resume_reading=self._bandwidth_resume,
                loop=self.loop,
            )

    # -- the client side: each codec says how its client is written to, paused and closed -------
    # (dataplane.protocols.http: the connection's transport; dataplane.protocols.streams: the
    # stream, through its connection's framing)

    def _write(self, data: bytes) -> None:
        """Write response bytes to the client, through the bandwidth limit when there is one."""
        raise NotImplementedError

    def _sender(self) -> Callable[[bytes], None]:
        """What writes response bytes to the client as they are (the bandwidth limit's way)."""
        raise NotImplementedError

    def _pause(self, reason: int) -> None:
        """Stop reading the client, for `reason` (one of the _PAUSE_ bits) among others."""
        raise NotImplementedError

    def _resume(self, reason: int) -> None:
        """`reason` to stop reading the client is gone; read again once no other holds."""
        raise NotImplementedError

    def _send_answer(self, status: int, head: bytes, body: bytes, throttled: bool) -> None:
        """Write an answer of the node's own: its head (HTTP/1.1 lines through the blank line)
        and its body, through the bandwidth limit when `throttled` (an error goes out
        regardless)."""
        raise NotImplementedError

    def _client_closing(self) -> bool:
        """Is the client's side closing or closed already?"""
        raise NotImplementedError

    def _end_client(self, abort: bool) -> None:
        """Close the client's side: after what is written, or at once when `abort`."""
        raise NotImplementedError

    def client_tls(self) -> ssl.SSLObject | None:
        """The client's TLS session, when its connection has one this process terminates."""
        raise NotImplementedError

    def http_version(self, request: Request) -> str:
        """The client's protocol, as an access log writes it ("HTTP/1.1", "HTTP/2")."""
        raise NotImplementedError

    # -- request head ----------------------------------------------------------------------------

    def _begin_request(self, now: float) -> None:
        """A request head begins, read at `now` (time.monotonic)."""
        if self.current is None:
            settings = self.runtime.settings
            if settings is not None and settings is not self.settings:
                self._adopt(settings)
            # Seed 002 request timeout: from a request's first byte to its complete head.
            self._set_deadline(self.settings.request_timeout, now)
        self.parsing = Request(now)
        self.in_head = True
        self.head_began = True
        self.head_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.on_field(name, name.lower(), value)

    def on_field(self, name: bytes, lower: bytes, value: bytes) -> None:
        """One request field; `lower` is its name in lower case (HTTP/2 and HTTP/3 names are
        lower case already, and are not lowered again)."""
        request: Request = self.parsing  # type: ignore[assignment]
        size = len(name) + len(value) + 4
        self.head_size += size
        self.accounted += size
        if self.head_size > MAX_HEADER_BYTES or len(request.headers) > MAX_HEADERS:
            self.reject_status = 431
            raise _Reject
        kind = _REQUEST_HEADERS.get(lower, _PLAIN)
        if kind == _PLAIN:
            if lower not in self.settings.drop_headers and lower not in _DISGUISED:
                request.headers.append(field_line(name, value))
        elif kind == _HOST:
            if request.host is not None:
                # RFC 9112 3.2: two Host fields name no host; the rules and the backend could
                # each believe another one.
                self.reject_status = 400
                raise _Reject
            # Forwarded by _start, from the target's authority when it has one.
            request.host = value
        elif kind == _XFF:
            if request.xff is None:
                request.xff = []
            request.xff.append(value.strip())
        elif kind == _COOKIE:
            if request.cookies is None:
                request.cookies = []
            request.cookies.append(value)
        elif kind == _CONTENT_LENGTH:
            request.content_length = value
            request.headers.append(field_line(b"Content-Length", value))
        elif kind == _TRANSFER_ENCODING:
            if request.transfer_encoding is None:
                request.transfer_encoding = []
            request.transfer_encoding.append(value)
        elif kind == _CONNECTION:
            value = value.lower()
            # Most clients send one option ("close", "keep-alive"): no split for those.
            if value in _CONNECTION_TOKENS:
                tokens = [value]
            else:
                tokens = [token.strip() for token in value.split(b",")]
            if request.connection_tokens is None:
                request.connection_tokens = tokens
            else:
                request.connection_tokens += tokens
        elif kind == _ACCEPT_ENCODING:
            request.accept_encoding = (
                value if request.accept_encoding is None else request.accept_encoding + b"," + value
            )
            request.headers.append(field_line(name, value))
        elif kind == _EXPECT:
            if value.strip().lower() == b"100-continue":
                request.expect_continue = True
            else:
                request.headers.append(field_line(name, value))
        elif lower == b"upgrade":
            request.upgrade = True
            request.upgrade_value = value.strip()

    def _admit(self, request: Request, keep_alive: bool) -> None:
        """Check a request whose head is complete, then start it (`_admitted`). Raises _Reject
        (the status in `reject_status`) for a request that must not go on."""
        tokens = request.connection_tokens
        if request.transfer_encoding:
            self._check_transfer_encoding(request)
            request.chunked = True
            request.has_body = True
        elif request.content_length is not None:
            try:
                length = int(request.content_length)
            except ValueError:
                length = -1
            if length < 0:
                self.reject_status = 400
                raise _Reject
            request.has_body = length > 0
        if request.url[:1] != b"/":
            self._absolute_form(request)
        host = request.host
        if host is None:
            if request.version == "1.1":
                # RFC 9112 3.2: an HTTP/1.1 request names its host.
                self.reject_status = 400
                raise _Reject
        elif host not in _VALID_HOSTS:
            if _host_field(host) is None:
                self.reject_status = 400
                raise _Reject
            if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
                _VALID_HOSTS.clear()
            _VALID_HOSTS.add(host)
        request.keep_alive = keep_alive and not request.upgrade
        # Seed 003: WebSocket passes through (RFC 6455 4.1: an HTTP/1.1 GET asking to upgrade).
        request.websocket = (
            request.upgrade
            and request.method == b"GET"
            and request.version == "1.1"
            and tokens is not None
            and b"upgrade" in tokens
            and request.upgrade_value.lower() == b"websocket"
        )
        self._admitted(request)

    def _admitted(self, request: Request) -> None:
        """A request whose head passed the checks: a codec that reads the next request before
        the one in flight is answered (HTTP/1.1 pipelining) queues it instead."""
        self._start(request)

    def _check_transfer_encoding(self, request: Request) -> None:
        """Refuse (raise _Reject) a Transfer-Encoding the node cannot frame exactly as sent."""
        if request.content_length is not None or request.version == "1.0":
            # Request smuggling defence (RFC 9112 6.1, 6.3): never guess which length wins, and
            # HTTP/1.0 has no chunked framing for a backend to agree on.
            self.reject_status = 400
            raise _Reject
        codings = b",".join(request.transfer_encoding).lower().split(b",")  # type: ignore[arg-type]
        if codings[-1].strip(b" \t") != b"chunked":
            # RFC 9112 6.3: without chunked last, the body has no length anyone can agree on.
            self.reject_status = 400
            raise _Reject
        if len(codings) > 1:
            self.reject_status = 501  # a coding before chunked that the node does not decode
            raise _Reject

    def _absolute_form(self, request: Request) -> None:
        """A target in absolute form: its authority is the host (RFC 9112 3.2.2) for the rules,
        X-Forwarded-Host and the Host forwarded, and the backend gets the origin form."""
        url = request.url
        if url == b"*" and request.method == b"OPTIONS":
            return
        match = _ABSOLUTE_FORM.fullmatch(url)
        # An empty authority is no host to route by; on_headers_complete checks the rest.
        if match is None or not match[1]:
            self.reject_status = 400
            raise _Reject
        request.host = match[1]
        path = match[2]
        request.url = path if path[:1] == b"/" else b"/" + path

    def on_body(self, body: bytes) -> None:
        request: Request = self.parsing  # type: ignore[assignment]
        self.accounted += len(body)
        if self.closed:
            return
        if request is self.current and self.upstream is not None:
            transport = self.upstream.transport
            if request.chunked:
                transport.writelines((b"%x\r\n" % len(body), body, b"\r\n"))  # type: ignore[union-attr]
            else:
                transport.write(body)  # type: ignore[union-attr]
            return
        if request.body is None:
            request.body = []
        if request.chunked:
            request.body.append(b"%x\r\n%s\r\n" % (len(body), body))
        else:
            request.body.append(body)
        request.buffered += len(body)
        if request.buffered > MAX_BUFFERED_BODY:
            self._pause(_PAUSE_BUFFER)

    def on_message_complete(self) -> None:
        request: Request = self.parsing  # type: ignore[assignment]
        self.parsing = None
        request.complete = True
        if not request.keep_alive:
            self._pause(_PAUSE_DONE)
        if self.closed:
            return
        if request.chunked:
            if request is self.current and self.upstream is not None:
                self.upstream.write(_LAST_CHUNK)
            elif request.body is None:
                request.body = [_LAST_CHUNK]
            else:
                request.body.append(_LAST_CHUNK)

    # -- forwarding ------------------------------------------------------------------------------

    def _start(self, request: Request) -> None:
        self.current = request
        settings = self.settings
        self.stats.requests += 1
        self.response_started = False
        client_ip = self.peer_ip
        if settings.client_ip is not None and request.xff:
            client_ip = settings.client_ip.resolve(client_ip, b",".join(request.xff))
        self.client_ip = client_ip
        throttle = settings.throttle
        if throttle is not None and self._over_qps(request, throttle, ""):
            return
        if settings.grpc:
            # gRPC runs over HTTP/2 only (seed 003); an HTTP/1.1 request cannot reach it.
            self._reject(505)
            return

        route = settings.route
        if settings.rules is not None:
            action = self._match_rules(settings.rules, request, client_ip)
            if action is _AMBIGUOUS_PATH:
                self._reject(400)
                return
            if action is not None:
                request.rule = action.rule_id
                limiter = action.limiter
                if limiter is not None and self._over_qps(request, limiter, action.rule_id):
                    return
                if not isinstance(action, ForwardAction):
                    self._answer_rule(request, action)
                    return
                route = settings.routes[action.server_group_id]
        self.route = route

        backend = None
        cookie = b"; ".join(request.cookies) if request.cookies else None
        persistence = settings.cookie_persistence
        if persistence is not None and cookie is not None:
            backend, rewritten = persistence.backend_for_request(cookie, route.backends_by_token)
            if rewritten is not None:
                cookie = rewritten or None
        if backend is None:
            # Route.pick, inline: one Python call less per request.
            scheduler = route.scheduler
            backend = None if scheduler is None else scheduler.pick(client_ip, None)
            if backend is None:
                self._reject(503)
                return

        # RFC 9112 3.2: without a host (HTTP/1.0) the backend gets an empty Host.
        parts = [request.method, b" ", request.url, b" HTTP/1.1\r\nHost: ", request.host or b""]
        parts.append(b"\r\n")
        headers = request.headers
        if request.connection_tokens:
            # Headers the client named in Connection are hop-by-hop too.
            dropped = [t for t in request.connection_tokens if t not in _CONNECTION_TOKENS]
            if dropped:
                headers = [h for h in headers if h.split(b":", 1)[0].lower() not in dropped]
        parts += headers
        if cookie is not None:
            parts.append(b"Cookie: %s\r\n" % cookie)
        mode = settings.xff_mode
        if mode == "add":
            if request.xff:
                parts.append(
                    b"X-Forwarded-For: %s, %s\r\n" % (b", ".join(request.xff), self.peer_ip_bytes)
                )
            else:
                parts.append(self.xff_line)
        elif mode == "off" and request.xff:
            parts.extend([b"X-Forwarded-For: %s\r\n" % value for value in request.xff])
        if request.host is not None and settings.x_forwarded_host:
            parts.append(b"X-Forwarded-Host: %s\r\n" % request.host)
        parts.append(self.conn_headers)
        if request.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if request.websocket:
            parts.append(b"Connection: Upgrade\r\nUpgrade: %s\r\n" % request.upgrade_value)
        parts.append(b"\r\n")
        self.head = b"".join(parts)
        # A head that began in this read was read (and timed) just now: its clock reading
        # serves (a pipelined request, or one whose head took several reads, reads the clock).
        if self.head_began and request is self.parsing:
            now = request.started
        else:
            now = _clock()
        request.forwarded_at = now
        self._set_deadline(settings.response_timeout, now)
        self._connect(backend)

    # -- forwarding rules (seed 002) -------------------------------------------------------------

    def _match_rules(self, table: RuleTable, request: Request, client_ip: str) -> Action | None:
        """The matching rule's action; _AMBIGUOUS_PATH for a path no rule can judge."""
        path, query = split_target(request.url)
        if table.normalizes_paths and needs_normalizing(path) is not None:
            if ambiguous_path(path):
                return _AMBIGUOUS_PATH
            normalized = normalize_path(path)
            if normalized != path:
                # The backend gets the path the rules judge (dataplane.rules, "Paths").
                request.url = normalized + request.url[len(path) :]
                path = normalized
        names = table.header_names
        headers = self._rule_headers(names, request) if names else _NO_HEADERS
        return table.match(request.method, path, query, request.host, headers, client_ip)

    @staticmethod
    def _rule_headers(names: frozenset[bytes], request: Request) -> dict[bytes, bytes]:
        """The request headers header conditions name, lower-cased, repeated lines joined."""
        found: dict[bytes, bytes] = {}
        for line in request.headers:
            name, _, value = line.partition(b":")
            lower = name.lower()
            if lower in names:
                value = value.strip()
                found[lower] = found[lower] + b", " + value if lower in found else value
        # Headers the proxy keeps apart from the forwarded lines.
        if request.host is not None and b"host" in names:
            found[b"host"] = request.host
        if request.cookies and b"cookie" in names:
            found[b"cookie"] = b"; ".join(request.cookies)
        if request.xff and b"x-forwarded-for" in names:
            found[b"x-forwarded-for"] = b", ".join(request.xff)
        return found

    def _answer_rule(self, request: Request, action: RedirectAction | FixedResponseAction) -> None:
        """A redirect or fixed response of a rule: the node answers, no backend is involved."""
        settings = self.settings
        if isinstance(action, RedirectAction):
            path, query = split_target(request.url)
            location = action.location(
                settings.scheme, request.host, settings.listener.port, path, query
            )
            fields = b"Location: %s\r\n" % location
            body = b""
        else:
            fields = b"Content-Type: %s\r\n" % action.content_type
            body = action.body
        self._answer_here(request, action.status, action.reason, fields, body, "completed")

    def _over_qps(self, request: Request, limiter: QpsLimiter, rule_id: str) -> bool:
        """Seeds 001/003 QPS per client IP (dataplane.throttle): True when the request was over
        the limit and has been answered 429 with Retry-After."""
        wait = limiter.admit(self.client_ip, _clock())
        if not wait:
            return False
        stats = self.stats
        stats.throttled_requests += 1
        if rule_id:
            stats.throttled_by_rule[rule_id] = stats.throttled_by_rule.get(rule_id, 0) + 1
        fields = b"Retry-After: %d\r\nContent-Type: text/plain\r\n" % wait
        self._answer_here(request, 429, b"Too Many Requests", fields, _THROTTLED_BODY, "throttled")
        return True

    def _answer_here(  # noqa: PLR0917 - the parts of one answer, all needed
        self,
        request: Request,
        status: int,
        reason: bytes,
        fields: bytes,
        body: bytes,
        termination: str,
    ) -> None:
        """An answer of the node's own that keeps the connection when it safely can."""
        settings = self.settings
        # A body still on its way cannot be skipped safely: the connection ends after the answer.
        keep_alive = (
            request.keep_alive and (request.complete or not request.has_body) and not self.draining
        )
        parts = [
            b"HTTP/1.1 %d %s\r\n" % (status, reason),
            fields,
            b"Content-Length: %d\r\nDate: %s\r\n" % (len(body), http_date()),
        ]
        if settings.alt_svc is not None:
            parts.append(settings.alt_svc)
        if request.version != "1.1":
            parts.append(b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n")
        elif not keep_alive:
            parts.append(b"Connection: close\r\n")
        parts.append(b"\r\n")
        head = b"".join(parts)
        if request.method == b"HEAD":
            body = b""
        stats = self.stats
        stats.responses[status // 100] += 1
        stats.bytes_out += len(head) + len(body)
        self._send_answer(status, head, body, True)
        self._ended(request, status, termination)
        self.current = None
        self._exchange_done(keep_alive, 0.0)

    def _connect(self, backend: Backend) -> None:
        self.backend = backend
        backend.active += 1
        backend.requests += 1
        settings = self.settings
        context = self.route.backend_context
        upstream = settings.pool.acquire((backend.address, backend.port, context))
        if upstream is not None:
            self._attach(upstream)
        else:
            self.connect_task = self.loop.create_task(self._open(backend, settings, context))

    async def _open(
        self, backend: Backend, settings: ListenerSettings, context: ssl.SSLContext | None
    ) -> None:
        self.current.connect_at = _clock()  # type: ignore[union-attr]
        try:
            upstream = await settings.pool.connect(backend.address, backend.port, context)
        except OSError as exc:  # includes ssl.SSLError
            self.connect_task = None
            if not self.closed and self.backend is backend:
                self._connect_failed(backend, exc)
            return
        self.connect_task = None
        if self.closed or self.backend is not backend or self.upstream is not None:
            settings.pool.release(upstream)
            return
        self.current.connected_at = _clock()  # type: ignore[union-attr]
        self._attach(upstream)

    def _connect_failed(self, backend: Backend, exc: OSError) -> None:
        if exc.errno in EXHAUSTED:
            # The node, not the backend, is out of descriptors: the node's log says so once, and
            # another server would fail the same way.
            self.runtime.descriptors.run_out()  # type: ignore[union-attr]
            self._release_backend()
            self._reject(503)
            return
        extra = {"listener_id": self.settings.listener.id, "backend_id": backend.id}
        if isinstance(exc, ssl.SSLCertVerificationError):
            # A configuration problem rather than an outage: say which CA refused it.
            group = self.route.group
            log.warning(
                "backend %s (%s:%d) of server group %s is not trusted: %s "
                "(backend_ca_certificate_id %s)",
                backend.id,
                backend.address,
                backend.port,
                self.route.server_group_id,
                exc.verify_message or exc,
                group.config.backend_ca_certificate_id if group is not None else None,
                extra=extra,
            )
        else:
            log.info(
                "cannot connect to backend %s (%s:%d): %s",
                backend.id,
                backend.address,
                backend.port,
                exc,
                extra=extra,
            )
        self._release_backend()
        backend.connect_failures += 1
        if self.route.outlier is not None:  # passive health checks (dataplane.outlier)
            self.route.outlier.connect_failed(backend)
        request: Request = self.current  # type: ignore[assignment]
        request.server = backend
        # Nothing was sent: any request may go to another server (dataplane.retry).
        other = self._next_server(request, backend)
        if other is not None:
            # The access log names the server that answers, not one that failed before it.
            request.server = None
            self._connect(other)
            return
        self._reject(502)

    def _next_server(self, request: Request, failed: Backend) -> Backend | None:
        """The server to send the request to instead of `failed`, when the listener's retries
        and its budget allow one more (dataplane.retry); None: no retry, counted when it is the
        budget that refused."""
        tried = getattr(request, "tried", None)
        other, tried = next_server(self.settings, self.route, self.client_ip, tried, failed)
        if other is not None:
            request.tried = tried
        return other

    def _retry_answer(self, upstream: HttpUpstream, request: Request) -> bool:
        """A 502 or 503 from the backend: True when the request went to another server instead
        (dataplane.retry), the answer dropped before any of it reached the client."""
        if not self.settings.retries or not retryable_answer(request.method, request.has_body):
            return False
        other = self._next_server(request, self.backend)  # type: ignore[arg-type]
        if other is None:
            return False
        # The answer was not read to its end: its connection cannot go back to the pool.
        self.upstream = None
        upstream.close()
        self._release_backend()
        # The next server gets a response timeout of its own.
        request.forwarded_at = now = _clock()
        self._set_deadline(self.settings.response_timeout, now)
        self._connect(other)
        return True

    def _attach(self, upstream: HttpUpstream) -> None:
        self.upstream = upstream
        upstream.begin(self)
        request: Request = self.current  # type: ignore[assignment]
        if request.body:
            upstream.transport.writelines([self.head, *request.body])  # type: ignore[union-attr]
            request.body = None
            request.buffered = 0
            self._resume(_PAUSE_BUFFER)
        else:
            upstream.write(self.head)
            if request.expect_continue and not request.complete:
                # The client waits for this before it sends the body.
                self._continue()
        if self.writing_paused or self.throttled:
            upstream.transport.pause_reading()  # type: ignore[union-attr]

    def _release_backend(self) -> None:
        backend = self.backend
        if backend is not None:
            self.backend = None
            backend.active -= 1

    # -- backend callbacks -----------------------------------------------------------------------

    def upstream_interim(self, upstream: HttpUpstream, head: bytes) -> None:
        """A 1xx before the final response (103 Early Hints, 100 Continue): dropped unless the
        codec can pass it on (HTTP/1.1 does)."""

    def upstream_headers(self, upstream: HttpUpstream) -> None:
        request: Request = self.current  # type: ignore[assignment]
        self.response_mark = self.drain_mark = -1
        settings = self.settings
        status = request.status = upstream.status
        if self.route.outlier is not None:  # passive health checks (dataplane.outlier)
            self.route.outlier.observe(self.backend, status)
        # Histogram.observe, inline, as this runs once per request: from the request being sent
        # on to the backend (or a connection to it being opened) to its response head.
        request.answered_at = now = _clock()
        self.stats.backend_response_time.pending.append(now - request.forwarded_at)
        if 502 <= status <= 503 and self._retry_answer(upstream, request):
            # Gone to another server: this answer is dropped.
            return
        head = upstream.head
        if not head.startswith(b"HTTP/1.1 "):
            head = b"HTTP/1.1" + head[8:]
        if status == 101:
            if request.websocket:
                self._begin_tunnel(upstream, head)
            else:
                # Switching protocols nobody asked for: not valid here.
                self.upstream_error(upstream)
            return
        self.response_started = True
        head_request = request.method == b"HEAD"
        no_body = head_request or status in (204, 304)
        lower = None
        encoding = None
        add_vary = False
        if (
            settings.compress
            and request.accept_encoding is not None
            and not no_body
            and status != 206
        ):
            lower = head.lower()
            encoding, add_vary = self._choose_encoding(request, lower)
        # The backend's header lines pass through as they are, except the ones cut out here.
        out = []
        kept = 0
        has_length = False
        chunked = False
        persistence = settings.cookie_persistence
        set_cookies: list[bytes] = []
        empty = False
        # Each line spans "\r\nName: value" up to its CR (dataplane.heads).
        for name, start, end, value_start in special_lines(head):
            if name == b"content-length":
                has_length = True
                if encoding is None:
                    # For a codec that can end the stream at its head; digits only (the
                    # backend's parser checked), so a "0" after the colon or a blank is zero.
                    empty = head[end - 1] == 48 and head[end - 2] in _BLANK_OR_COLON
                    continue
            elif name == b"etag":
                if encoding is None:
                    continue
                # Compressed bytes differ from the backend's: a strong validator would lie.
                value = head[value_start:end].strip()
                out.append(head[kept:start])
                kept = end
                out.append(b"\r\nETag: %s" % (value if value[:2] == b"W/" else b"W/" + value))
                continue
            elif name == b"set-cookie":
                if persistence is None:
                    continue
                set_cookies.append(head[value_start:end].strip())
            elif name == b"transfer-encoding":
                chunked = True
            out.append(head[kept:start])
            kept = end
        out.append(head[kept:] if kept else head)
        if persistence is not None and self.backend is not None:
            cookies = persistence.response_headers(self.backend, set_cookies)
            if cookies is None:
                out.extend([b"Set-Cookie: %s\r\n" % value for value in set_cookies])
            else:
                out.extend([b"%s: %s\r\n" % pair for pair in cookies])
        if settings.alt_svc is not None and b"\r\nalt-svc:" not in (lower or head.lower()):
            out.append(settings.alt_svc)
        self.compressor = None
        if encoding is not None:
            self.compressor = Compressor(encoding)
            out.append(b"Content-Encoding: %s\r\n" % encoding.encode())
            if add_vary:
                out.append(b"Vary: Accept-Encoding\r\n")
        # A response with neither length nor chunks ends when the backend closes.
        self.eof_body = not no_body and not chunked and not has_length
        if 100 <= status < 600:
            self.stats.responses[status // 100] += 1
        self._send_head(
            request,
            out,
            status,
            encoding is not None or self.eof_body or (chunked and not no_body),
            no_body or (empty and encoding is None),
        )
        if head_request:
            # httptools cannot be told that a HEAD response has no body; the exchange is over,
            # and the connection cannot be trusted for the next response.
            self._finish(upstream, False)

    def _send_head(
        self, request: Request, out: list[bytes], status: int, unsized: bool, bodiless: bool
    ) -> None:
        """Frame the response head: `out` holds its lines so far ("HTTP/1.1 200 OK\r\n", then
        "Name: value\r\n" each, the backend's and the node's), without the blank line;
        `unsized`: the client cannot know the body's length up front; `bodiless`: no body
        follows. Sets `keep_alive` (and `rechunk`) for what follows the response."""
        raise NotImplementedError

    def _choose_encoding(self, request: Request, lower_head: bytes) -> tuple[str | None, bool]:
        """The content coding for this response (None: as it is), and whether to add Vary."""
        fields: dict[bytes, bytes] = {}
        vary = b""
        for match in _COMPRESSION_FIELDS.finditer(lower_head):
            name, value = match[1], match[2].strip()
            if name == b"vary":
                vary += b"," + value
            else:
                fields.setdefault(name, value)
        cache_control = fields.get(b"cache-control")
        if cache_control is not None and b"no-transform" in cache_control:
            return None, False
        length_text = fields.get(b"content-length")
        length = int(length_text) if length_text is not None and length_text.isdigit() else None
        encoding = choose_encoding(
            request.accept_encoding,
            fields.get(b"content-type"),
            length,
            fields.get(b"content-encoding"),
            enabled=True,
            allow_brotli=self.settings.allow_brotli,
        )
        if encoding is None:
            return None, False
        named = {token.strip() for token in vary.split(b",")}
        return encoding, not (b"accept-encoding" in named or b"*" in named)

    def upstream_body(self, data: bytes) -> None:
        compressor = self.compressor
        if compressor is not None:
            data = compressor.compress(data)
            if not data:
                return
        if self.rechunk:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)
        self.stats.bytes_out += len(data)

    def flush(self) -> None:
        """Write what the backend's last read produced for the client, in one call."""
        out = self.out
        if out:
            if self.closed:
                out.clear()
                return
            if len(out) == 1:
                self._write(out[0])
            else:
                self._write(b"".join(out))
            out.clear()

    def upstream_complete(self, upstream: HttpUpstream) -> None:
        compressor = self.compressor
        if compressor is not None:
            self.compressor = None
            tail = compressor.finish()
            if tail:
                self.stats.bytes_out += len(tail)
                if self.rechunk:
                    self.out += (b"%x\r\n" % len(tail), tail, b"\r\n")
                else:
                    self.out.append(tail)
        if self.rechunk:
            self.out.append(_LAST_CHUNK)
        request: Request = self.current  # type: ignore[assignment]
        self._finish(upstream, upstream.reusable() and request.complete)

    def _begin_tunnel(self, upstream: HttpUpstream, head: bytes) -> None:
        """The backend switched to WebSocket: only a codec that forwarded the upgrade (HTTP/1.1)
        can carry the tunnel; to any other the 101 is not valid."""
        self.upstream_error(upstream)

    def upstream_lost(self, upstream: HttpUpstream) -> None:
        if upstream is not self.upstream:
            return
        if self.tunnel:
            self.upstream = None
            self._release_backend()
            self._close()
            return
        if upstream.headers_done:
            if self.eof_body:
                # A response without a length ends when the backend closes.
                self.upstream_complete(upstream)
            else:
                self.upstream = None
                self.termination = "backend_closed"
                self._abort()
            return
        self.upstream = None
        request: Request = self.current  # type: ignore[assignment]
        if upstream.reused and not upstream.received and not request.has_body:
            # The backend closed an idle pooled connection just as it was reused: nothing was
            # processed, so the request goes again on a fresh connection to the same server.
            backend: Backend = self.backend  # type: ignore[assignment]
            self.connect_task = self.loop.create_task(
                self._open(backend, self.settings, self.route.backend_context)
            )
            return
        if self.route.outlier is not None:  # closed before a response head: a failure
            self.route.outlier.observe(self.backend, 502)
        self._release_backend()
        self._reject(502)

    def upstream_error(self, upstream: HttpUpstream) -> None:
        if upstream is not self.upstream:
            return
        self.upstream = None
        upstream.close()
        if self.route.outlier is not None and not self.response_started:
            self.route.outlier.observe(self.backend, 502)  # not HTTP: a failure
        self._release_backend()
        if self.response_started:
            self.termination = "backend_error"
            self._abort()
        else:
            self._reject(502)

    def upstream_pause_client(self) -> None:
        self._pause(_PAUSE_UPSTREAM)

    def upstream_resume_client(self) -> None:
        self._resume(_PAUSE_UPSTREAM)

    def _finish(self, upstream: HttpUpstream, reusable: bool) -> None:
        self.flush()
        request: Request = self.current  # type: ignore[assignment]
        # _ended, inline, as this runs once per request.
        now = _clock()
        self.stats.request_duration.pending.append(now - request.started)
        access_log = self.runtime.access_log
        if access_log is not None:
            request.ended = now
            access_log.http(self, request, "completed")
        self.upstream = None
        upstream.owner = None
        self._release_backend()
        if reusable:
            if self.writing_paused or self.throttled:
                upstream.transport.resume_reading()  # type: ignore[union-attr]
            self.settings.pool.release(upstream)
        else:
            upstream.close()
        self.current = None
        # A later answer of the dataplane's own (400, 408) is a response of its own again.
        self.response_started = False
        self._exchange_done(self.keep_alive and request.complete, now)

    def _exchange_done(self, keep_alive: bool, now: float) -> None:
        """The exchange is over, its response all written; `keep_alive`: the codec may serve
        another on the same client connection; `now`: a clock reading, or 0.0 for none taken.
        A stream's exchange is its only one."""
        self._close()

    # -- lifecycle -------------------------------------------------------------------------------

    def _set_deadline(self, timeout: float, now: float) -> None:
        # `now` is a time.monotonic() reading, which the request's duration shares: the same
        # clock as the loop's (asyncio's is time.monotonic, uvloop's CLOCK_MONOTONIC in ms).
        deadline = self.deadline = now + timeout
        tick = self.timer_tick
        if tick:
            if self.timer_at <= deadline:
                # It fires first and re-arms itself for the rest: nothing to do per request.
                return
            self.deadlines.forget(self, tick)
        self.timer_at = deadline
        self.timer_tick = self.deadlines.watch(self, deadline)

    def _check_deadline(self) -> None:
        self.timer_tick = 0
        if self.closed:
            return
        now = self.loop.time()
        request = self.current
        if (
            request is not None
            and not request.complete
            and self.upstream is not None
            and not self.tunnel
        ):
            self._check_body(now)
            return
        if now < self.deadline:
            # Not due yet (the check was set for an earlier deadline, or the clocks differ: the
            # loop's counts whole milliseconds). A timeout is never answered before it has
            # passed.
            self.timer_at = self.deadline
            self.timer_tick = self.deadlines.watch(self, self.deadline + _TIMER_SLACK)
            return
        if request is None or self.tunnel:
            if self.in_head and not self.tunnel:
                # A request head still incomplete after the request timeout (seed 002).
                self._reject(408)
            else:
                # Idle for the whole idle timeout.
                self._close()
        elif self.response_started:
            # Streaming a response: the backend cannot be late any more, but it must keep moving.
            if self._response_stalled():
                self.termination = "stalled"
                self._abort()
                return
            self._set_deadline(self.settings.response_timeout, now)
        else:
            if self.route.outlier is not None:  # the server that did not answer in time
                self.route.outlier.observe(self.backend, 504)
            self._reject(504)

    def _response_stalled(self) -> bool:
        """Whether a streaming response moved neither way since the last check, one response
        timeout ago: a client that reads none of it (a slow-read attack holds both sockets),
        or a backend that sends nothing more. Counters are compared, so the hot path reads no
        clock; a stall is caught between one and two response timeouts after it began."""
        if self.writing_paused:
            stalled = self.drains == self.drain_mark
            self.drain_mark = self.drains
            self.response_mark = -1
            return stalled
        self.drain_mark = -1
        upstream = self.upstream
        if upstream is None or self.throttled:
            # Paused by the bandwidth limit: waiting is the node's doing.
            self.response_mark = -1
            return False
        stalled = upstream.reads == self.response_mark
        self.response_mark = upstream.reads
        return stalled

    def resume_writing(self) -> None:
        self.drains += 1
        BackendReadGate.resume_writing(self)

    def _check_body(self, now: float) -> None:
        """A request body is on its way to the backend: the request timeout bounds each pause
        between the client's reads, as it bounds the head (seed 002), so a body that stops
        arriving gets 408. The check runs once per request timeout on the connection's timer
        and compares a read count, so the body's hot path reads no clock; a stall is caught
        between one and two request timeouts after the client's last read."""
        settings = self.settings
        if self.reads == self.body_mark and not self.paused & _PAUSE_UPSTREAM:
            self._reject(408)
            return
        # While the backend is too slow to take the body, reading is paused: not the client's
        # fault, so the next check starts a fresh window.
        self.body_mark = -1 if self.paused & _PAUSE_UPSTREAM else self.reads
        # The backend's answer is due no earlier than one response timeout after the body ends.
        self.deadline = now + settings.request_timeout + settings.response_timeout
        self.timer_at = now + settings.request_timeout
        self.timer_tick = self.deadlines.watch(self, self.timer_at)

    def _reject(self, status: int) -> None:
        """Answer with an error of the dataplane's own and close the connection."""
        if self.closed:
            return
        request = self.current or self.parsing
        if request is not None and self.backend is not None:
            # For the access log: the server that failed to answer in time.
            request.server = self.backend
        self._teardown()
        if self.response_started:
            self.termination = "aborted"
            self._abort()
            return
        pages = self.settings.error_pages
        page = None
        if pages is not None:
            # The listener's own page (dataplane.error_pages); a group all in Maintenance
            # gets the maintenance page for its 503.
            page = pages.page(status, maintenance=self.route.in_maintenance)
        head_only = request is not None and request.method == b"HEAD"
        if page is None:
            head, body = error_response(status, head_only=head_only)
        else:
            head, body = page.response(http_date(), head_only=head_only)
        stats = self.stats
        stats.responses[status // 100] += 1
        stats.bytes_out += len(head) + len(body)
        self._send_answer(status, head, body, False)
        if request is not None and not getattr(request, "ended", 0.0):
            self._ended(request, status, _TERMINATIONS.get(status, "rejected"))
        self._close()

    def _continue(self) -> None:
        """Tell a client that waits for it (Expect: 100-continue) to send its request body, where
        the codec has interim responses."""

    def _ended(self, request: Request, status: int, termination: str) -> None:
        """One request is over: its duration counted, its access-log line written."""
        request.status = status
        request.ended = now = _clock()
        self.stats.request_duration.observe(now - request.started)
        access_log = self.runtime.access_log
        if access_log is not None:
            access_log.http(self, request, termination)

    def connection_lost(self, exc: Exception | None) -> None:
        """The client is gone: the exchange in flight ends, logged with why."""
        self.closed = True
        if self.writer is not None:
            self.writer.close()
        self._teardown()
        request = self.current
        if request is not None and not getattr(request, "ended", 0.0):
            status = getattr(request, "status", 0)
            self._ended(request, status, self.termination or "client_closed")

    def _teardown(self) -> None:
        tick = self.timer_tick
        if tick:
            self.timer_tick = 0
            self.deadlines.forget(self, tick)
        if self.connect_task is not None:
            self.connect_task.cancel()
            self.connect_task = None
        upstream = self.upstream
        if upstream is not None:
            self.upstream = None
            upstream.close()
        request = self.current
        if request is not None and self.backend is not None:
            # For the access log, written after this when the request is cut: its server.
            request.server = self.backend
        self._release_backend()

    def _close(self) -> None:
        if self.closed and self._client_closing():
            return
        self.closed = True
        self._teardown()
        self._end_client(False)

    def _abort(self) -> None:
        self.closed = True
        self._teardown()
        self._end_client(True)

    def shutdown(self) -> None:
        """Graceful: close now if idle, otherwise after the response in flight."""
        self.draining = True
        if self.current is None:
            self._close()

    def abort(self) -> None:
        """Immediate: a stopped or removed listener cuts its connections (seed 003)."""
        if not self.closed or not self._client_closing():
            self.termination = "listener_stopped"
            self._abort()
