"""The DICOM node's defences at the connection level, below pynetdicom: a timer and a length limit on every PDU, and a
limit on the associations one peer may hold at once.

pynetdicom checks its timers only between whole messages and reads a PDU of any announced length into memory, so
these rules live on the socket (`GuardedConnection`) and on the server that accepts it (`TimedAssociationServer`),
which `app.node.dicom_node` hands to `AE.make_server`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, NoReturn

from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.transport import ThreadedAssociationServer

logger = logging.getLogger(__name__)

ASSOCIATIONS_END_SECONDS = 2.0  # how long a stop waits for the associations it cut off to finish their handlers
CONNECTIONS_PER_ASSOCIATION = 4
"""Connections the node serves at once per association slot (`max_associations`): room for the ones being refused
(another peer's share, a full node) and for peers still to send their request, but not one thread per connection
without end."""
MAX_ASSOCIATE_REQUEST_BYTES = 256 * 1024
"""Longest A-ASSOCIATE-RQ PDU read: 128 presentation contexts (the standard's most) of some 75 transfer syntaxes each.
pynetdicom decodes every item of the request before the node checks the caller, one 480 KB request of 48,000
transfer syntaxes takes 12 s of a core."""
A_ASSOCIATE_RQ_TYPE = 0x01
REFUSAL_LOG_SECONDS = 10.0  # at most one log line this often about connections closed unserved (a flood's record)
REFUSING_PER_PEER = CONNECTIONS_PER_ASSOCIATION
"""Connections one address may have waiting to be refused for its share (`max_per_peer`); past it, a connection of
that address is closed unread."""
REFUSAL_SECONDS = 2.0
"""How long a connection refused for its peer's share may take to send its association request (a requestor sends it
as soon as it connects), rather than the association timeout."""


class TimedAssociationServer(ThreadedAssociationServer):
    """pynetdicom's server, whose connections are `GuardedConnection`s: timed, and with a limit on a PDU's length;
    and at most `max_per_peer` of them from one address at once.

    pynetdicom's own timers (ARTIM, network idle) are not checked while it waits for the rest of a half-received
    message: a peer that sends a few bytes and stops, or trickles them, would hold one of the node's association
    slots for ever, and a few such peers would lock out every sender. A peer that keeps its associations busy
    (a C-ECHO every few seconds passes every timer) is held to its share of the slots instead; the others are
    answered A-ASSOCIATE-RJ "local limit exceeded", as pynetdicom answers past `max_associations`.

    Each connection is served in a thread of its own, refused ones too (their request is read, to answer it); past
    `max_connections` served at once, a new connection is closed unread, without a thread: otherwise a flood of
    connections that send nothing holds a thread and a socket each for up to the receive timeout. A connection past
    its peer's share is given `REFUSAL_SECONDS` to send its request, and at most `REFUSING_PER_PEER` of one address
    wait so; the others are closed unread: waiting the receive timeout, each would take one of the `max_connections`
    meanwhile, so that 128 silent connections from one address could keep every other sender out.

    A connection that closes before its association request was taken ends its association at once
    (`end_wait_for_request`).
    """

    def __init__(
        self,
        *args: Any,
        receive_timeout: float,
        max_pdu_bytes: int,
        max_per_peer: int,
        max_connections: int,
        **kwargs: Any,
    ) -> None:
        self.receive_timeout = receive_timeout
        self.max_pdu_bytes = max_pdu_bytes
        self.max_per_peer = max_per_peer
        self.max_connections = max_connections
        self._connections_of: Counter[str] = Counter()  # connections served, by peer address
        self._refusing_of: Counter[str] = Counter()  # connections being refused for their peer's share, by address
        self._connections_lock = threading.Lock()
        self._served = 0  # connections open that were given a thread: served, or being refused
        self._closed_unserved: Counter[str] = Counter()  # reason -> connections, since the last log line about them
        self._refusals_logged_at = -REFUSAL_LOG_SECONDS
        super().__init__(*args, **kwargs)
        self.bind(evt.EVT_CONN_CLOSE, end_wait_for_request)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        return GuardedConnection.accepted(connection, self.max_pdu_bytes, self.receive_timeout), address

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread: pynetdicom's association if its peer has a share left, else a refusal
        (`refuse_association`, under `REFUSAL_SECONDS`). Close it unread, without a thread, when `max_connections`
        are open already, or when its peer has `REFUSING_PER_PEER` connections being refused. A connection counts
        until it is closed (`GuardedConnection.on_close`): its association runs in a thread of pynetdicom's, past the
        end of the one started here."""
        peer = str(client_address[0])
        with self._connections_lock:
            closed_because = None
            admitted = self._connections_of[peer] < self.max_per_peer
            if self._served >= self.max_connections:
                closed_because = f"{self.max_connections} connections are served already"
            elif admitted:
                self._connections_of[peer] += 1
            elif self._refusing_of[peer] < REFUSING_PER_PEER:
                self._refusing_of[peer] += 1
            else:
                closed_because = f"their peer has {REFUSING_PER_PEER} connections being refused already"
            if closed_because is None:
                self._served += 1
            else:
                self._closed_unserved[closed_because] += 1
        if closed_because is not None:
            self.shutdown_request(request)
            self._log_closed_unserved()
            return
        if admitted:
            request.on_close = functools.partial(self._release, peer, self._connections_of)
            super().process_request(request, client_address)  # if it raises, socketserver closes the request
            return
        logger.warning(
            "DICOM association refused",
            extra={"fields": {"reason": f"peer already holds {self.max_per_peer} associations", "peer": peer}},
        )
        request.on_close = functools.partial(self._release, peer, self._refusing_of)
        request.pdu_seconds = min(request.pdu_seconds, REFUSAL_SECONDS)
        threading.Thread(target=refuse_association, args=(request,), name="dicom-node-refusal", daemon=True).start()

    def _log_closed_unserved(self) -> None:
        with self._connections_lock:
            now = time.monotonic()
            if now - self._refusals_logged_at < REFUSAL_LOG_SECONDS:
                return
            closed, self._closed_unserved, self._refusals_logged_at = self._closed_unserved, Counter(), now
        logger.warning(
            "DICOM connections closed unread",
            extra={"fields": {"reason": "; or ".join(closed), "closed": closed.total()}},
        )

    def _release(self, peer: str, connections_of: Counter[str]) -> None:
        """Count out a closed connection of `peer` from `connections_of` (served or being refused) and the node's."""
        with self._connections_lock:
            connections_of[peer] -= 1
            if not connections_of[peer]:
                del connections_of[peer]
            self._served -= 1

    def shutdown(self, wait_seconds: float = ASSOCIATIONS_END_SECONDS) -> None:
        """Stop serving, close the socket, and cut off the associations still open; made by `AE.make_server`, the
        server is not in the AE's own list.

        pynetdicom's reader of each association is a non-daemon thread that runs until its peer releases, or idles
        past the timeout: a router holding an association open would keep the process from exiting for 30 s after
        SIGTERM, and a peer sending a C-ECHO every few seconds for ever. Shutting each connection down ends
        its reader at once (a blocked read returns), as a lost connection would: an instance not yet answered is sent
        again by its sender. The associations are then given `wait_seconds` to finish an instance being written.
        """
        socketserver.BaseServer.shutdown(self)
        self.server_close()
        associations = self.active_associations
        for association in associations:
            connection = getattr(association.dul.socket, "socket", None)
            if connection is not None:
                with contextlib.suppress(OSError):  # closed meanwhile
                    connection.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + wait_seconds
        for association in associations:
            association.join(max(0.0, deadline - time.monotonic()))


class GuardedConnection(socket.socket):
    """An accepted connection that follows the PDUs it carries: each may be at most `max_pdu_bytes` long and must
    arrive whole within `pdu_seconds` of its first byte; between PDUs, the connection may be silent that long.

    pynetdicom reads a PDU's 6-byte header, then as many bytes as the header announces, into memory, with no limit
    and no timer: a peer announcing 4 GiB, or sending a byte every few seconds, would hold memory or a slot for as
    long as it liked. A PDU that breaks a rule makes `recv` raise `ConnectionError` (logged), which pynetdicom takes
    for a closed connection.
    """

    max_pdu_bytes: int
    pdu_seconds: float
    on_close: Callable[[], None] | None
    _header: bytearray
    _remaining: int
    _deadline: float | None

    @classmethod
    def accepted(cls, connection: socket.socket, max_pdu_bytes: int, pdu_seconds: float) -> GuardedConnection:
        guarded = cls(connection.family, connection.type, connection.proto, fileno=connection.detach())
        guarded.max_pdu_bytes, guarded.pdu_seconds, guarded.on_close = max_pdu_bytes, pdu_seconds, None
        guarded._header, guarded._remaining, guarded._deadline = bytearray(), 0, None
        guarded.settimeout(pdu_seconds)
        return guarded

    def recv(self, size: int, flags: int = 0) -> bytes:
        left = self.pdu_seconds if self._deadline is None else self._deadline - time.monotonic()
        if left <= 0:
            self._close_for(f"a PDU took longer than {self.pdu_seconds:g} s to arrive")
        self.settimeout(left)
        try:
            data = super().recv(size, flags)
        except TimeoutError:
            inside = self._deadline is not None
            self._close_for(f"a PDU took longer than {self.pdu_seconds:g} s to arrive" if inside else "silent peer")
        self._follow(data)
        return data

    def _follow(self, data: bytes) -> None:
        """Count `data` against the PDU it belongs to; read each PDU header (type, reserved, 4-byte length)."""
        view = memoryview(data)
        while view:
            if self._remaining:
                step = min(self._remaining, len(view))
                self._remaining, view = self._remaining - step, view[step:]
                if not self._remaining:
                    self._deadline = None
                continue
            if self._deadline is None:
                self._deadline = time.monotonic() + self.pdu_seconds
            step = 6 - len(self._header)
            self._header += view[:step]
            view = view[step:]
            if len(self._header) == 6:
                self._remaining = int.from_bytes(self._header[2:], "big")
                kind = self._header[0]
                self._header.clear()
                if self._remaining > self.max_pdu_bytes:
                    self._close_for(f"a PDU of {self._remaining} bytes; the limit is {self.max_pdu_bytes}")
                if kind == A_ASSOCIATE_RQ_TYPE and self._remaining > MAX_ASSOCIATE_REQUEST_BYTES:
                    self._close_for(
                        f"an association request of {self._remaining} bytes; the limit is {MAX_ASSOCIATE_REQUEST_BYTES}"
                    )
                if not self._remaining:
                    self._deadline = None

    def close(self) -> None:
        """Close, and tell `on_close` once (the server counts its peer's connections)."""
        on_close, self.on_close = self.on_close, None
        super().close()
        if on_close is not None:
            on_close()

    def _close_for(self, reason: str) -> NoReturn:
        logger.warning("DICOM connection closed", extra={"fields": {"reason": reason}})
        raise ConnectionError(reason)


def end_wait_for_request(event: Event) -> None:
    """Wake the association of a connection that closed before its association request was taken: it ends at once.

    pynetdicom's acceptor waits `acse_timeout` for a request, and counts against `maximum_associations` until then.
    A connection closed in the request phase (nothing sent, an A-ABORT, or an undecodable request answered A-ABORT,
    after which the state machine awaits the close in Sta13) moves the state machine back to Sta1 without telling
    the waiting acceptor: 40 undecodable requests in 4 s, each closed at once, from one address kept every sender out
    for 30 s. The acceptor takes `None` for its wait's timeout: it stops, and frees its slot.
    """
    association = event.assoc
    if association.is_acceptor and association.requestor.primitive is None:
        association.dul.to_user_queue.put(None)


def refuse_association(connection: socket.socket) -> None:
    """Read the peer's association request, answer A-ASSOCIATE-RJ (rejected transient, local limit exceeded) and
    close: the sender's log then says why, and it may try again later. Reading first keeps the answer from being
    lost to a reset (a socket closed with unread data resets the connection)."""
    with contextlib.suppress(OSError):  # a peer that hung up, or broke the connection's rules: closed anyway
        header = _receive_exactly(connection, 6)
        _receive_exactly(connection, int.from_bytes(header[2:], "big"))
        rejection = A_ASSOCIATE_RJ()
        rejection.result, rejection.source, rejection.reason_diagnostic = 0x02, 0x03, 0x02
        connection.sendall(rejection.encode())
    connection.close()


def _receive_exactly(connection: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(min(size - len(data), 64 * 1024))
        if not chunk:
            raise ConnectionError("closed by the peer")
        data += chunk
    return bytes(data)
