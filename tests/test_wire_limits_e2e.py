"""The wire listener's limits against a real server: the connection cap counts
connections that have not said hello yet, a client that stops reading a
large result is closed after client_send_timeout, so it no longer keeps
checkpoints from completing, and a flood of connections held open neither
locks users out nor keeps the memory it took."""

from __future__ import annotations

import os
import pwd
import socket
import time

from rustydb_client import client as rc
from rustydb_client.protocol import events
from rustydb_client.protocol.connection import ClientSide
from rustydb_client.protocol.frames import encode_frame
from rustydb_client.protocol.messages import message_of
from tests.support.servers import run_tool


def connect(server, **kw):
    """A session: over TCP with the password a test gives, else through the Unix
    socket as the server's own OS user (the superuser, by peer authentication)."""
    return rc.connect("127.0.0.1" if "password" in kw else None, server.port, **kw)


class RawClient:
    """One connection driven by hand: it can connect and wait, or stop reading."""

    def __init__(self, server, *, rcvbuf: int | None = None):
        # Through the Unix socket, as the server's own OS user: the superuser by
        # peer authentication, which needs no password (TCP would).
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(server.socket_path)
        self.protocol = ClientSide()

    def send(self, event) -> None:
        try:
            self.sock.sendall(self.protocol.send(event))
        except BrokenPipeError:
            pass  # refused and closed already (a Unix socket says so at once); the refusal is still read

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
        assert f"session {ready.session_id} ([local]:{pwd.getpwuid(os.geteuid()).pw_name})" in notices[0]
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


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def test_a_flood_of_connections_held_open_leaves_logins_working_and_its_memory_is_returned(server_factory, tmp_path):
    """400 strangers connect and hold on (half announce a 16 MiB frame, half dribble a
    hello they never finish): a user with a password still logs in and is answered
    while they are held, and once they are gone the server's memory comes back."""
    users = tmp_path / "users.toml"
    users.write_text(run_tool("rusty-db-server", "--make-user", "alice", input="s3cret\n", check=True).stdout)
    conf = tmp_path / "c.toml"
    conf.write_text(
        f"auth_users_file = '{users}'\nauth_trust_loopback = false\n"
        "max_connections = 600\nmax_handshakes = 500\nauthentication_timeout = '3s'\n"
    )
    srv = server_factory(name="flood", extra_args=["--config", str(conf)]).start()
    login = {"user": "alice", "password": "s3cret"}
    with connect(srv, **login) as c:
        c.execute("CREATE TABLE t(x)")
    before = rss_kib(srv.proc.pid)
    hello = encode_frame(message_of(events.Hello("intruder", None, "flood")))
    flood = []
    for i in range(400):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall((16 << 20).to_bytes(4, "big") + b"\0" * 65536 if i % 2 == 0 else hello[:1])
        flood.append(s)
    for sent in range(1, len(hello) - 1):  # the dribblers' hellos go on, a byte at a time
        for s in flood[1::2]:
            s.send(hello[sent : sent + 1])
    with connect(srv, **login) as c:
        c.execute("INSERT INTO t VALUES (1)")
        assert c.execute("SELECT count(*) FROM t").rows == [[1]]
    # Held, they cost little: no 16 MiB frame was taken before authentication
    # (60 such connections once took the server from 184 MB to 1.1 GB) ...
    assert rss_kib(srv.proc.pid) < before + 64 * 1024
    # ... the server refused each of those frames and closed its connection.
    for s in flood[0::2]:
        s.settimeout(10)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
    for s in flood:
        s.close()
    # The dribblers the server still holds end at authentication_timeout; then the
    # memory they took is back (within a bound far below what 400 frames of 16 MiB are).
    deadline = time.monotonic() + 30
    while rss_kib(srv.proc.pid) > before + 32 * 1024:
        assert time.monotonic() < deadline, f"RSS {rss_kib(srv.proc.pid)} KiB, {before} KiB before the flood"
        time.sleep(0.2)
    with connect(srv, **login) as c:
        assert c.execute("SELECT count(*) FROM t").rows == [[1]]
    assert srv.stop() == 0
