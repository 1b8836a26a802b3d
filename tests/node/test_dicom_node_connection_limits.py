"""The DICOM node's limits on connections and association slots (`app.node.dicom_association`) against one address
that misbehaves: what it sends, or the connections it opens, must not keep another address's association out."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.node.node_support import CALLING_AE, NODE_AE, wait_for

OTHER_ADDRESS = "127.0.0.2"  # another sender: loopback answers on all of 127.0.0.0/8
UNDECODABLE_REQUEST = b"\x01\x00\x00\x00\x00\x10" + b"\xff" * 16  # an A-ASSOCIATE-RQ of 16 bytes of 0xFF
ABORT = b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"  # an A-ABORT PDU, where a request was due


def echo_from(port: int, address: str) -> bool:
    """True if the node at `port` answers a C-ECHO from `address`."""
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 5
    association = ae.associate("127.0.0.1", port, ae_title=NODE_AE, bind_address=(address, 0))
    if not association.is_established:
        return False
    status = association.send_c_echo()
    association.release()
    return status is not None and int(status.Status) == 0


def send_and_close(port: int, data: bytes) -> None:
    """Send `data` on a new connection, wait a moment for the node's answer (A-ABORT), and close."""
    with socket.create_connection(("127.0.0.1", port)) as connection:
        connection.settimeout(0.2)
        connection.sendall(data)
        with contextlib.suppress(OSError):  # no answer (nothing sent, an A-ABORT received), or a reset
            connection.recv(64)


@pytest.mark.parametrize("sent", [UNDECODABLE_REQUEST, ABORT, b""], ids=["undecodable", "abort", "nothing"])
def test_connections_closed_before_their_association_request_hold_no_association_slot(
    make_node: Any, sent: bytes
) -> None:
    """attack review 46 F1: pynetdicom answers an undecodable request with A-ABORT and its acceptor thread waited for
    a request until the association timeout, after its connection had closed: 40 such connections in 4 s, from one
    address, kept every sender out for 30 s. So did connections that sent nothing or an A-ABORT before closing."""
    node = make_node(max_associations=2, association_timeout_seconds=20.0)
    port = node.config.port
    for _ in range(4):
        send_and_close(port, sent)

    assert wait_for(lambda: echo_from(port, OTHER_ADDRESS), 2)


def test_one_address_opening_many_silent_connections_keeps_no_other_address_out(make_node: Any) -> None:
    """attack review 46 F2: connections past their peer's share of associations each waited the association timeout
    for a request to refuse, and each took one of the node's connection places (4 per association slot) meanwhile:
    128 silent connections from one address kept every other sender out. Now a peer has a few connections waiting
    for refusal at most, each for a short while; the rest are closed unread."""
    node = make_node(max_associations=2, max_associations_per_peer=1, association_timeout_seconds=20.0)
    port = node.config.port
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]  # the node's 8 places and more
    try:
        assert wait_for(lambda: echo_from(port, OTHER_ADDRESS), 2)
    finally:
        for connection in silent:
            connection.close()
