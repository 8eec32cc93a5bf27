"""A blocking HTTP/2 client over TLS, built on the `h2` library, for tests.

It sends any number of requests on one connection before reading, so streams really are
multiplexed, and it keeps every frame's effect per stream: headers, body, trailers, resets.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions

WAIT = 10.0


@dataclass
class H2Response:
    stream_id: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    reset: int | None = None
    ended: bool = False
    # END_STREAM came on the HEADERS frame: no DATA frame followed.
    ended_at_headers: bool = False

    @property
    def status(self) -> int:
        return int(self.header(":status") or 0)

    def header(self, name: str) -> str | None:
        wanted = name.encode()
        values = [value.decode() for key, value in self.headers if key == wanted]
        return ", ".join(values) if values else None


class H2Client:
    """One HTTP/2 connection; `alpn` is what the handshake agreed."""

    def __init__(
        self, port: int, context: ssl.SSLContext, server_name: str = "www.example.com"
    ) -> None:
        context.set_alpn_protocols(["h2", "http/1.1"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock = context.wrap_socket(raw, server_hostname=server_name)
        self.alpn = self.sock.selected_alpn_protocol()
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.conn.initiate_connection()
        self.responses: dict[int, H2Response] = {}
        self.goaway: h2.events.ConnectionTerminated | None = None
        self._send()

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        authority: str = "www.example.com",
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        """Open a stream; `end=False` leaves the body open for `send_body`."""
        stream_id = self.conn.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        fields += [(k.lower().encode(), v.encode()) for k, v in headers or []]
        self.conn.send_headers(stream_id, fields, end_stream=end and not body)
        self.responses[stream_id] = H2Response(stream_id)
        self._send()
        if body:
            self.send_body(stream_id, body, end=end)
        return stream_id

    def send_body(self, stream_id: int, body: bytes, *, end: bool = True) -> None:
        """Send within the server's windows, reading its WINDOW_UPDATEs as needed."""
        view = memoryview(body)
        while view:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                self._read_once()
                continue
            self.conn.send_data(stream_id, bytes(view[:window]))
            view = view[window:]
            self._send()
        if end:
            self.conn.end_stream(stream_id)
            self._send()

    def _read_once(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("the server closed the connection")
        for event in self.conn.receive_data(data):
            self._event(event)
        self._send()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.responses[event.stream_id].headers = event.headers
            self.responses[event.stream_id].ended_at_headers = event.stream_ended is not None
        elif isinstance(event, h2.events.DataReceived):
            self.responses[event.stream_id].body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.TrailersReceived):
            self.responses[event.stream_id].trailers = event.headers
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].ended = True
        elif isinstance(event, h2.events.StreamReset):
            if event.stream_id in self.responses:
                self.responses[event.stream_id].reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def wait(self, *stream_ids: int) -> list[H2Response]:
        """Read until every named stream has ended or been reset."""
        wanted = [self.responses[stream_id] for stream_id in stream_ids]
        while not all(r.ended or r.reset is not None for r in wanted):
            self._read_once()
        return wanted

    def get(self, path: str = "/", **kwargs: object) -> H2Response:
        return self.wait(self.request("GET", path, **kwargs))[0]  # type: ignore[arg-type]

    def close_connection_only(self) -> None:
        """Send GOAWAY and keep the socket open, to see what the server does next."""
        self.conn.close_connection()
        self._send()

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._send()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
