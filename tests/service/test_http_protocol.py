"""The connection's watch on answers a client does not read (`app.http_protocol`), on a transport that stands in for
a client: past the kernel's buffers, an answer waits in the transport, in memory, for as long as the client lets it.

A test through a real socket would need an answer larger than the kernel's socket buffers (megabytes), so the transport
here says how much it still holds, as asyncio's does, and the clock is the event loop's with a short limit."""

from __future__ import annotations

import asyncio
import logging

import pytest
import uvicorn
from uvicorn.server import ServerState

from app.http_protocol import ConnectionLimits, protocol_with_limits

LIMIT_SECONDS = 0.5
ANSWER_BYTES = 5_000_000


class ClientTransport(asyncio.Transport):
    """A connection as asyncio's transport shows it to the protocol: how much of the answer it still holds."""

    def __init__(self, buffered: int) -> None:
        super().__init__()
        self.buffered = buffered
        self.aborted = False
        self.closing = False

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = self.closing = True

    def close(self) -> None:
        self.closing = True

    peer = "127.0.0.1"

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": (self.peer, 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.buffered += len(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def client_reading(reads: list[int], periods: float, min_rate: int = 0) -> ClientTransport:
    """A connection whose transport held `ANSWER_BYTES` when it paused writing, whose client then takes `reads`
    bytes, one amount per limit period; returns the transport after `periods` limits. `min_rate`: the slowest
    answer rate allowed (bytes/s)."""
    limits = ConnectionLimits(
        min_answer_bytes_per_second=min_rate,
        max_connections=8,
        max_header_bytes=8192,
        header_timeout_seconds=60.0,
        body_timeout_seconds=LIMIT_SECONDS,
        shutdown_idle_upload_seconds=1.0,
    )
    protocol_class = protocol_with_limits(limits)
    protocol = protocol_class(
        config=uvicorn.Config(app=lambda scope, receive, send: None),
        server_state=ServerState(),
        app_state={},
        _loop=asyncio.get_running_loop(),
    )
    transport = ClientTransport(ANSWER_BYTES)
    protocol.connection_made(transport)
    protocol.pause_writing()
    loop = asyncio.get_running_loop()
    started = loop.time()

    def take(amount: int) -> None:
        transport.buffered = max(0, transport.buffered - amount)

    # Timer callbacks at fixed times, like the server's own check: a loop held up (0.2 s under a loaded CI) runs
    # every overdue one in time order, where a sleeping coroutine's step came a pass after the check, which then
    # found nothing taken and cut off a client that was keeping up.
    for index, taken in enumerate(reads):
        loop.call_at(started + LIMIT_SECONDS * (index + 0.6), take, taken)
    await asyncio.sleep(max(0.0, started + LIMIT_SECONDS * periods - loop.time()))
    protocol.connection_lost(None)  # cancels its timers, as the server does when a connection ends
    return transport


def test_a_client_that_reads_none_of_its_answer_is_cut_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.http"):
        transport = asyncio.run(client_reading([], periods=2.5))

    assert transport.aborted
    (record,) = [record for record in caplog.records if "read none of its answer" in record.getMessage()]
    assert record.fields["bytes_unsent"] == ANSWER_BYTES  # type: ignore[attr-defined]


def test_a_client_that_reads_its_answer_a_few_bytes_at_a_time_is_cut_off(caplog: pytest.LogCaptureFixture) -> None:
    """Attack review 44 F2: 4 KiB every 20 s kept a 50 MB answer in memory for days; some taken in each period was
    enough."""
    with caplog.at_level(logging.INFO, logger="app.http"):
        trickle = asyncio.run(client_reading([4096] * 3, periods=3.5, min_rate=100_000))
    fast_enough = asyncio.run(client_reading([60_000] * 3, periods=3.5, min_rate=100_000))  # 120 kB/s

    assert trickle.aborted
    (record,) = [record for record in caplog.records if "slower than 100000 bytes/s" in record.getMessage()]
    assert "read 4096 bytes of its answer in 0.5 s" in record.getMessage()
    assert not fast_enough.aborted and fast_enough.buffered == ANSWER_BYTES - 180_000


def test_a_slow_reader_keeps_its_connection_and_a_finished_answer_stops_the_watch() -> None:
    slow = asyncio.run(client_reading([100_000] * 4, periods=4.5))
    done = asyncio.run(client_reading([ANSWER_BYTES], periods=3.5))

    assert not slow.aborted and slow.buffered == ANSWER_BYTES - 400_000
    assert not done.aborted and done.buffered == 0


async def connections_from(peers: list[str], per_client: int) -> list[ClientTransport]:
    """A connection made from each of `peers`, in order, to one server that allows `per_client` an address."""
    limits = ConnectionLimits(
        max_connections=64,
        max_connections_per_client=per_client,
        max_header_bytes=8192,
        header_timeout_seconds=60.0,
        body_timeout_seconds=LIMIT_SECONDS,
        shutdown_idle_upload_seconds=1.0,
    )
    protocol_class = protocol_with_limits(limits)
    state = ServerState()
    transports = []
    for peer in peers:
        protocol = protocol_class(
            config=uvicorn.Config(app=lambda scope, receive, send: None),
            server_state=state,
            app_state={},
            _loop=asyncio.get_running_loop(),
        )
        transport = ClientTransport(0)
        transport.peer = peer
        protocol.connection_made(transport)
        transports.append(transport)
    return transports


def test_an_ipv6_subscriber_is_one_client_address_for_the_connection_cap() -> None:
    """Attack review 44 F7: each address of one /64 (one subscriber's 2^64) had its own per-client cap."""
    one_subscriber = [f"2001:db8:0:1::{index:x}" for index in range(1, 5)]
    transports = asyncio.run(connections_from([*one_subscriber, "2001:db8:0:2::1"], per_client=3))

    assert [transport.closing for transport in transports] == [False, False, False, True, False]
    assert transports[3].buffered > 0  # the 503 written before the close
