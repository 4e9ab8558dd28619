"""Both ends of a connection, fed any bytes in any pieces, answering as a real peer would.

Contract: receive_data never raises; next_event raises only
RemoteProtocolError, and once it did, raises the same error again; the
replies a side owes can always be sent (the state machine never asks for
something it then refuses).
"""

from __future__ import annotations

from rustydb_client.protocol import events as ev
from rustydb_client.protocol.connection import ClientSide, ServerSide
from rustydb_client.protocol.errors import RemoteProtocolError
from rustydb_client.protocol.frames import encode_frame
from rustydb_client.protocol.messages import message_of
from rustydb_client.protocol.scram import make_scram_credentials

CREDENTIALS = {"alice": make_scram_credentials("s3cret", 4096)}


def _lookup(user: str):
    return CREDENTIALS.get(user)


def _answer_server(server: ServerSide, event) -> None:
    """What the server's wire task sends for ``event``."""
    if isinstance(event, ev.AuthContinue):
        for reply in event.replies:
            server.send(reply)
    elif isinstance(event, ev.SessionRequested):
        for reply in event.replies:
            server.send(reply)
        server.send(ev.Ready("0.1.0", event.database or "main", 1))
    elif isinstance(event, ev.Query):
        server.send(ev.Columns(["a"]))
        server.send(ev.Rows([[1]]))
        server.send(ev.Complete("SELECT 1", 1, "main", False))
    elif isinstance(event, ev.BackupRequested):
        server.send(ev.Error("backup_failed", "no", False))
    elif isinstance(event, ev.TlsRequested):  # declined, as on the Unix socket
        server.send(ev.TlsAnswer(False, "no TLS here"))


def _answer_client(client: ClientSide, event) -> None:
    if isinstance(event, ev.AuthContinue):
        for reply in event.replies:
            client.send(reply)
    elif isinstance(event, (ev.Ready, ev.Complete)) or (isinstance(event, ev.Error) and not event.fatal):
        if client.state == "idle":
            client.send(ev.Query("SELECT 1"))


def _drive(side, answer, data: bytes, cut: int) -> None:
    failed: RemoteProtocolError | None = None
    for i in range(0, len(data) + 1, cut):
        side.receive_data(data[i : i + cut])  # the last piece is b"": the peer closed
        while True:
            try:
                event = side.next_event()
            except RemoteProtocolError as e:
                failed = e
                break
            if event is ev.NEED_DATA or isinstance(event, ev.ConnectionClosed):
                break
            answer(side, event)
        if failed is not None:
            try:
                side.next_event()
            except RemoteProtocolError as again:
                assert again is failed, (again, failed)
            else:
                raise AssertionError("a connection went on after a protocol error")
            return


def check(data: bytes) -> None:
    mode = data[0] if data else 0
    cut = 1 + (data[1] if len(data) > 1 else 0) % 97
    body = data[2:]
    if mode & 1:
        client = ClientSide("s3cret")
        client.send(ev.Hello("alice", None, "fuzz"))
        _drive(client, _answer_client, body, cut)
    else:
        server = ServerSide(_lookup if mode & 2 else None)
        _drive(server, _answer_server, body, cut)


def _frames(*events) -> bytes:
    return b"".join(encode_frame(message_of(e)) for e in events)


def seeds() -> list[bytes]:
    to_server = _frames(
        ev.Hello("alice", None, "fuzz"),
        ev.Query("SELECT 1"),
        ev.BackupRequested("full", ["main"], None),
        ev.Goodbye(),
    )
    scram = _frames(ev.Hello("alice", None, "fuzz"), ev.ScramClientFirst("n,,n=alice,r=abcdefgh"))
    to_client = _frames(
        ev.Ready("0.1.0", "main", 1),
        ev.Columns(["a"]),
        ev.Rows([[1, "x"]]),
        ev.Complete("SELECT 1", 1, "main", False),
        ev.Notice("hm"),
        ev.Error("fatal", "bye", True),
    )
    auth = _frames(ev.AuthRequired(), ev.ScramServerFirst("r=abc,s=c2FsdA==,i=4096"))
    return [
        bytes([0, 5]) + to_server,
        bytes([2, 40]) + scram,
        bytes([1, 9]) + to_client,
        bytes([1, 96]) + auth,
    ]


if __name__ == "__main__":
    from fuzz.harness import main

    main(check, seeds)
