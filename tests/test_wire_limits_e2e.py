"""The wire listener's limits against a real server: the connection cap counts
connections that have not said hello yet, and a client that stops reading a
large result is closed after client_send_timeout, so it no longer keeps
checkpoints from completing."""

from __future__ import annotations

import socket
import time

from rustydb_client import client as rc
from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ClientSide


def connect(server, **kw):
    return rc.connect("127.0.0.1", server.port, **kw)


class RawClient:
    """One connection driven by hand: it can connect and wait, or stop reading."""

    def __init__(self, server, *, rcvbuf: int | None = None):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", server.port))
        self.protocol = ClientSide()

    def send(self, event) -> None:
        self.sock.sendall(self.protocol.send(event))

    def next_event(self):
        while (event := self.protocol.next_event()) is events.NEED_DATA:
            self.protocol.receive_data(self.sock.recv(65536))
        return event

    def close(self) -> None:
        self.sock.close()


def test_max_connections_holds_for_clients_that_connect_first_and_say_hello_later(server_factory, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("max_connections = 5\n")
    srv = server_factory(name="cap", extra_args=["--config", str(conf)]).start()
    clients = [RawClient(srv) for _ in range(8)]
    time.sleep(0.3)  # every one accepted before any says hello
    for c in clients:
        c.send(events.Hello("tester", None, "test"))
    answers = [c.next_event() for c in clients]
    ready = [a for a in answers if isinstance(a, events.Ready)]
    refused = [a for a in answers if isinstance(a, events.Error)]
    assert (len(ready), len(refused)) == (5, 3)
    assert all(e.code == "too_many_connections" and "max_connections 5" in e.message for e in refused)
    for c in clients:
        c.close()
    srv.stop()


def test_a_client_that_stops_reading_is_closed_and_checkpoints_complete_again(server_factory, tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("client_send_timeout = '8s'\n")  # long enough to see the pin first, on a busy machine
    srv = server_factory(name="slow", extra_args=["--config", str(conf)]).start()
    with connect(srv) as c:
        c.execute("CREATE TABLE t (x BLOB)")
        c.execute(
            "INSERT INTO t WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000) "
            "SELECT randomblob(1000) FROM n"
        )
    # About 64 MB of rows, far more than the socket buffers hold; the client reads none of it.
    slow = RawClient(srv, rcvbuf=4096)
    slow.send(events.Hello("slow", None, "test"))
    ready = slow.next_event()
    assert isinstance(ready, events.Ready)
    slow.send(
        events.Query(
            "SELECT x FROM t, (WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 64) "
            "SELECT i FROM n)"
        )
    )
    with connect(srv) as c:
        # While the slow client's statement holds its snapshot, a checkpoint
        # cannot copy what was committed after it, and says who holds it.
        deadline = time.monotonic() + 30
        while True:
            c.execute("INSERT INTO t VALUES (x'00')")
            notices = c.execute("CHECKPOINT").notices
            if notices or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert notices and "checkpoint incomplete" in notices[0]
        assert f"session {ready.session_id} (127.0.0.1:{slow.sock.getsockname()[1]})" in notices[0]
        # After client_send_timeout the server closes the slow connection and
        # rolls its session back: the next checkpoint completes.
        while c.execute("CHECKPOINT").notices:
            assert time.monotonic() < deadline, "the slow client still pins checkpoints"
            time.sleep(0.2)
    assert "client stopped reading" in srv.log()
    assert "sessions hold old snapshots" in srv.log()
    # The connection is closed: what the socket holds ends, cut short.
    slow.sock.settimeout(10)
    try:
        while slow.sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        pass
    slow.close()
    srv.stop()
