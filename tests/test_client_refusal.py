"""A server that refuses a connection answers at once and closes without reading the hello.

The client's hello then fails to send (EPIPE), but the answer saying why is in
its socket: the client reports that answer, not "lost the connection"."""

from __future__ import annotations

import socket

import pytest

from rustydb_client import client as rc
from rustydb_client.protocol import events as p
from rustydb_client.protocol.connection import ClientSide, ServerSide


def test_a_refusal_sent_before_the_hello_is_reported_even_when_the_hello_cannot_be_sent():
    client_end, server_end = socket.socketpair()
    refusal = "too many connections: max_connections (2) reached; try again later"
    server_end.sendall(ServerSide(lambda *a: None).send(p.Error("too_many_connections", refusal, fatal=True)))
    server_end.close()  # the hello will meet a closed socket: EPIPE
    conn = rc.Connection(client_end, ClientSide(), "the test socket")
    with pytest.raises(rc.ConnectionFailed) as e:
        conn._handshake(p.Hello(user="u", database=None, client="test"))
    assert e.value.code == "too_many_connections"
    assert "refused the session" in str(e.value) and "max_connections (2) reached" in str(e.value)
    assert conn.closed


def test_a_send_to_a_server_that_said_nothing_is_a_lost_connection():
    client_end, server_end = socket.socketpair()
    server_end.close()
    conn = rc.Connection(client_end, ClientSide(), "the test socket")
    with pytest.raises(rc.ConnectionFailed) as e:
        conn._handshake(p.Hello(user="u", database=None, client="test"))
    assert e.value.code == "connection_lost" and "while sending" in str(e.value)
