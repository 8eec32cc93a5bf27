"""Token bucket arithmetic with a fake clock, the throttled writer, one real-socket rate check."""

import asyncio
import time

import pytest

from dataplane.bandwidth import (
    MIN_BURST_BYTES,
    ThrottledWriter,
    TokenBucket,
    mbit_to_bytes_per_s,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeTimer:
    def __init__(self, delay: float, callback) -> None:
        self.delay = delay
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """Only what ThrottledWriter uses: call_later, recorded instead of run."""

    def __init__(self) -> None:
        self.timers: list[FakeTimer] = []

    def call_later(self, delay: float, callback) -> FakeTimer:
        timer = FakeTimer(delay, callback)
        self.timers.append(timer)
        return timer


class RecordingTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def writelines(self, chunks) -> None:
        self.written.extend(chunks)


# -- TokenBucket ----------------------------------------------------------------------------------


def test_mbit_is_a_million_bits():
    assert mbit_to_bytes_per_s(1) == 125_000
    assert mbit_to_bytes_per_s(5120) == 640_000_000


def test_new_bucket_allows_its_burst_at_once():
    bucket = TokenBucket(1000, 500, clock=FakeClock())

    assert bucket.take(500) == 0.0


def test_taking_past_the_burst_gives_the_time_to_pay_the_debt():
    bucket = TokenBucket(1000, 500, clock=FakeClock())

    assert bucket.take(400) == 0.0
    assert bucket.take(300) == pytest.approx(0.2)  # 200 bytes short at 1000 bytes/s


def test_take_zero_reports_the_wait_without_charging():
    clock = FakeClock()
    bucket = TokenBucket(1000, 500, clock=clock)
    bucket.take(1500)  # 1000 bytes of debt

    assert bucket.take(0) == pytest.approx(1.0)
    clock.advance(0.25)
    assert bucket.take(0) == pytest.approx(0.75)
    clock.advance(0.75)
    assert bucket.take(0) == 0.0


def test_refill_is_linear_in_time():
    clock = FakeClock()
    bucket = TokenBucket(1000, 500, clock=clock)
    bucket.take(500)

    clock.advance(0.3)

    assert bucket.take(300) == 0.0
    assert bucket.take(1) == pytest.approx(0.001)


def test_idle_time_never_saves_up_more_than_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(1000, 500, clock=clock)

    clock.advance(3600)

    assert bucket.take(500) == 0.0
    assert bucket.take(100) == pytest.approx(0.1)


def test_a_clock_that_stands_still_adds_nothing():
    clock = FakeClock()
    bucket = TokenBucket(1000, 500, clock=clock)
    bucket.take(500)

    assert bucket.take(10) == pytest.approx(0.01)
    assert bucket.take(10) == pytest.approx(0.02)


def test_sender_that_obeys_the_waits_gets_exactly_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(10_000, 1000, clock=clock)
    start = clock.now
    sent = 0

    while clock.now - start < 10.0:
        chunk = 1500
        sent += chunk
        clock.advance(bucket.take(chunk))

    # rate x time plus the burst plus the one chunk written before the last wait.
    elapsed = clock.now - start
    assert sent == pytest.approx(10_000 * elapsed + 1000, abs=1500)


def test_two_connections_share_one_listener_budget():
    clock = FakeClock()
    bucket = TokenBucket(1000, 100, clock=clock)

    first = bucket.take(600)
    second = bucket.take(600)

    assert first == pytest.approx(0.5)
    assert second == pytest.approx(1.1)


@pytest.mark.parametrize(("rate", "burst"), [(0, 100), (-1, 100), (100, 0), (100, -5)])
def test_rate_and_burst_must_be_positive(rate, burst):
    with pytest.raises(ValueError, match="must be above 0"):
        TokenBucket(rate, burst, clock=FakeClock())


def test_for_mbit_uses_a_tenth_of_a_second_of_burst_with_a_floor():
    big = TokenBucket.for_mbit(100, clock=FakeClock())
    small = TokenBucket.for_mbit(1, clock=FakeClock())

    assert big.rate_bytes_per_s == 12_500_000
    assert big.burst_bytes == 1_250_000
    assert small.rate_bytes_per_s == 125_000
    assert small.burst_bytes == MIN_BURST_BYTES


# -- ThrottledWriter -------------------------------------------------------------------------------


def make_writer(bucket: TokenBucket):
    loop = FakeLoop()
    transport = RecordingTransport()
    events: list[str] = []
    writer = ThrottledWriter(
        transport.write,
        bucket,
        pause_reading=lambda: events.append("pause"),
        resume_reading=lambda: events.append("resume"),
        loop=loop,
    )
    return writer, transport, loop, events


def test_writes_within_budget_pass_without_pausing():
    writer, transport, loop, events = make_writer(TokenBucket(1000, 500, clock=FakeClock()))

    writer.write(b"a" * 200)
    writer.write(b"b" * 100)
    writer.write(b"c" * 200)

    assert transport.written == [b"a" * 200, b"b" * 100, b"c" * 200]
    assert events == []
    assert loop.timers == []
    assert not writer.paused


def test_write_over_budget_goes_through_and_pauses_the_source_until_paid():
    clock = FakeClock()
    writer, transport, loop, events = make_writer(TokenBucket(1000, 500, clock=clock))

    writer.write(b"x" * 800)

    assert transport.written == [b"x" * 800]
    assert events == ["pause"]
    assert writer.paused
    assert [timer.delay for timer in loop.timers] == [pytest.approx(0.3)]

    clock.advance(0.3)
    loop.timers[0].callback()

    assert events == ["pause", "resume"]
    assert not writer.paused


def test_writes_while_paused_add_debt_without_pausing_twice():
    clock = FakeClock()
    writer, _, loop, events = make_writer(TokenBucket(1000, 500, clock=clock))
    writer.write(b"x" * 800)

    writer.write(b"y" * 100)
    writer.write(b"z" * 100)

    assert events == ["pause"]
    assert len(loop.timers) == 1
    clock.advance(0.3)
    loop.timers[0].callback()
    # The 200 bytes written while paused are still owed: the timer is set again, no resume yet.
    assert events == ["pause"]
    assert [timer.delay for timer in loop.timers[1:]] == [pytest.approx(0.2)]
    clock.advance(0.2)
    loop.timers[1].callback()
    assert events == ["pause", "resume"]


def test_refill_spent_by_another_connection_keeps_this_one_paused():
    clock = FakeClock()
    bucket = TokenBucket(1000, 100, clock=clock)
    writer, _, loop, events = make_writer(bucket)
    writer.write(b"x" * 200)  # 0.1 s of debt

    clock.advance(0.1)
    bucket.take(50)  # another connection of the listener
    loop.timers[0].callback()

    assert events == ["pause"]
    assert loop.timers[1].delay == pytest.approx(0.05)


def test_close_cancels_the_pending_resume():
    writer, _, loop, events = make_writer(TokenBucket(1000, 100, clock=FakeClock()))
    writer.write(b"x" * 1000)

    writer.close()

    assert loop.timers[0].cancelled
    assert not writer.paused
    assert events == ["pause"]
    writer.close()  # a second close is harmless


# -- on real sockets -------------------------------------------------------------------------------

LIMIT_MBIT = 40  # 5 MB/s: two seconds of loopback traffic, far below what the machine can move
TRANSFER_SECONDS = 2.0


class BackendSide(asyncio.Protocol):
    """The proxy's connection to the backend: what it reads goes to the client, throttled."""

    def __init__(self, client: asyncio.Transport, bucket: TokenBucket) -> None:
        self.client = client
        self.bucket = bucket
        self.writer: ThrottledWriter | None = None

    def connection_made(self, transport) -> None:
        self.writer = ThrottledWriter(
            self.client.write,
            self.bucket,
            pause_reading=transport.pause_reading,
            resume_reading=transport.resume_reading,
        )

    def data_received(self, data: bytes) -> None:
        self.writer.write(data)

    def eof_received(self) -> None:
        self.client.close()  # after the buffered bytes are sent

    def connection_lost(self, exc) -> None:
        self.writer.close()


class ClientSide(asyncio.Protocol):
    def __init__(self, backend_port: int, bucket: TokenBucket) -> None:
        self.backend_port = backend_port
        self.bucket = bucket
        self.connecting: asyncio.Task | None = None

    def connection_made(self, transport) -> None:
        loop = asyncio.get_running_loop()
        self.connecting = loop.create_task(
            loop.create_connection(
                lambda: BackendSide(transport, self.bucket), "127.0.0.1", self.backend_port
            )
        )


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_measured_throughput_through_a_proxy_stays_within_ten_percent_of_the_limit():
    rate = mbit_to_bytes_per_s(LIMIT_MBIT)
    total = int(rate * TRANSFER_SECONDS)

    async def backend(reader, writer):
        block = b"b" * 65536
        sent = 0
        while sent < total:
            chunk = block[: total - sent]
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
        writer.close()

    loop = asyncio.get_running_loop()
    backend_server = await asyncio.start_server(backend, "127.0.0.1", 0)
    backend_port = backend_server.sockets[0].getsockname()[1]
    bucket = TokenBucket(rate, 64 * 1024)
    proxy = await loop.create_server(lambda: ClientSide(backend_port, bucket), "127.0.0.1", 0)
    proxy_port = proxy.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        received = 0
        async with asyncio.timeout(20):
            while chunk := await reader.read(65536):
                received += len(chunk)
        elapsed = time.monotonic() - started
        writer.close()
    finally:
        proxy.close()
        backend_server.close()

    assert received == total
    measured = received / elapsed
    assert 0.9 * rate <= measured <= 1.1 * rate, f"{measured * 8 / 1e6:.2f} Mbit/s"
