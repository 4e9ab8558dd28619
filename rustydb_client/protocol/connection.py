"""The two ends of a connection, h11's way: bytes in, events out; events in, bytes out.

``receive_data(data)`` takes what the socket gave (b"" when the peer closed
its end), ``next_event()`` returns the next event, NEED_DATA until a whole
message is buffered, or raises RemoteProtocolError, and ``send(event)`` gives
the bytes to write or raises LocalProtocolError. Both directions are checked
against the same conversation:

    client                                server
    [Hello(tls=True)                     ->   (TCP clients asking for TLS)
                                          <- TlsAnswer
     TLS handshake, if accepted]
    Hello                                ->
                                          <- AuthRequired          (only if auth is on)
    ScramClientFirst                     ->
                                          <- ScramServerFirst
    ScramClientFinal                     ->
                                          <- ScramServerFinal
                                          <- Ready
    Query                                ->
                                          <- Columns, Rows* / Complete   (or Error)
    BackupRequested                      ->
                                          <- BackupHeader, BackupData* / BackupEnd   (or Error)
    BackupStored                         ->   (after a BackupEnd awaiting_location)
                                          <- Complete   (or Error)
    Goodbye                              ->

A hello that asks for TLS names no user: the real hello follows the
TlsAnswer, inside TLS when the server accepted (the shells wrap their sockets
between the two; ``start_tls()`` checks no plaintext byte is left over to be
mistaken for one sent under TLS). A server that requires TLS refuses a
plaintext hello with a fatal ``tls_required`` error.

Notices may come before any answer's end; a fatal Error may come at any time
and ends the connection. The client sends one statement per query, so every
query is answered by exactly one Complete or one Error.

Nothing here touches a socket: the server (trio) and the client (blocking
sockets) each run a few lines of I/O around these, and the tests drive them
with bytes alone.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import StrEnum

from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    NEED_DATA,
    PROTOCOL_VERSION,
    AuthContinue,
    AuthRequired,
    BackupData,
    BackupEnd,
    BackupHeader,
    BackupRequested,
    BackupStored,
    Columns,
    Complete,
    ConnectionClosed,
    Error,
    Goodbye,
    Hello,
    Notice,
    Query,
    Ready,
    Rows,
    ScramClientFinal,
    ScramClientFirst,
    ScramServerFinal,
    ScramServerFirst,
    SessionRequested,
    TlsAnswer,
    TlsRequested,
)
from .frames import (
    DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
    FrameDecoder,
    bulk_frame_head,
    encode_bulk_frame,
    encode_frame,
    encode_query_frame,
)
from .messages import TO_CLIENT, TO_SERVER, event_of, message_of, validate_message
from .scan import MAX_CONTAINER_LEN
from .scram import ClientScram, ServerScram


class State(StrEnum):
    START = "start"  # client: nothing sent yet
    HANDSHAKE = "handshake"  # client: hello sent, no ready yet
    TLS = "tls"  # client: asked for TLS, no answer yet; server: owes the TlsAnswer
    HELLO = "hello"  # server: waiting for hello
    CLIENT_FIRST = "client_first"  # server: waiting for the client's first SCRAM message
    CLIENT_FINAL = "client_final"  # server: waiting for the client's final SCRAM message
    OPENING = "opening"  # server: authenticated, ready not sent yet
    IDLE = "idle"  # session open, no request under way
    QUERY = "query"  # a query's answer is under way
    BACKUP = "backup"  # a backup stream is under way
    CLOSED = "closed"


class Connection(ABC):
    """What both sides share: frames in and out, the replies owed, the failure that sticks."""

    # Whether a large trailing bin (backup data) comes out as a view of the
    # received frame instead of a copy.
    _bulk_views = False

    def __init__(self, max_frame: int):
        self.state = State.START
        self._max_frame = max_frame
        self._decoder = FrameDecoder(max_frame)
        self._eof = False
        self._failed: RemoteProtocolError | None = None
        self._owed: list = []  # replies this side was told to send, in order
        self._answering = False  # the answer under way sent (or got) its first part
        self._tls_asked = False
        self.tls_active = False  # start_tls() was called

    # ------------------------------------------------------------ receiving

    def receive_data(self, data: bytes) -> None:
        """Bytes the peer sent; b"" when it closed its end."""
        if not data:
            self._eof = True
        elif self._failed is None:
            try:
                self._decoder.feed(data)
            except RemoteProtocolError as e:
                self._failed = e

    @property
    def largest_frame_received(self) -> int:
        """The size of the largest frame the peer sent so far."""
        return self._decoder.largest_frame

    def start_tls(self) -> None:
        """The TlsAnswer accepted TLS: from here the bytes come through TLS.

        A byte received before the handshake and not read yet would be taken
        as sent under TLS (the STARTTLS injection): that breaks the protocol.
        """
        if self._decoder.buffered:
            raise RemoteProtocolError(
                "protocol_violation", "the peer sent data before the TLS handshake; the connection is closed"
            )
        self.tls_active = True

    def recv_buffer(self) -> memoryview | None:
        """Where to receive next (``socket.recv_into``) while a large frame's body
        is due, so it needs no copy; None otherwise (use receive_data)."""
        return None if self._failed else self._decoder.recv_buffer()

    def received_into(self, n: int) -> None:
        """``n`` bytes arrived in the view recv_buffer() gave."""
        self._decoder.received_into(n)

    def next_event(self):
        """The next event, NEED_DATA, or ConnectionClosed once the peer closed.

        A RemoteProtocolError sticks: the connection is over.
        """
        if self._failed is not None:
            raise self._failed
        try:
            while True:
                msg = self._decoder.next_message(bulk_views=self._bulk_views)
                if msg is None:
                    return self._no_message()
                event = self._receive(msg)
                if event is not None:
                    return event
        except RemoteProtocolError as e:
            self._failed = e
            raise

    def _no_message(self):
        if not self._eof:
            return NEED_DATA
        if self._decoder.buffered:
            raise RemoteProtocolError("connection_lost", "the peer closed the connection in the middle of a frame")
        self.state = State.CLOSED
        return ConnectionClosed()

    @abstractmethod
    def _receive(self, msg: dict):
        """The event ``msg`` is, after the state machine allowed it; None when
        it needs no answer from the caller (the connection took it in)."""

    # -------------------------------------------------------------- sending

    def send(self, event) -> bytes:
        """The bytes of ``event``'s frame; LocalProtocolError if it may not be sent now
        (the state is then unchanged, so a frame too large leaves the session usable)."""
        after = self._state_after_sending(event)
        frame = encode_frame(self._message(event), max_frame=self._max_frame)
        self._sent(event, after)
        return frame

    def send_with_data_passthrough(self, event) -> list:
        """Like send(), as a list of buffers in which BackupData's bytes are the
        caller's own, not copied into the frame (a backup's 1 MiB pieces)."""
        if not isinstance(event, BackupData):
            return [self.send(event)]
        after = self._state_after_sending(event)
        msg = {"type": event.type, "entry": event.entry, "last": event.last}
        head, data = encode_bulk_frame(msg, "data", event.data, max_frame=self._max_frame)
        self._sent(event, after)
        return [head, data]

    def _message(self, event) -> dict:
        # Not checked field by field: the server builds its answers from typed
        # values and rows are its hot path (ClientSide checks its requests).
        return message_of(event)

    def _state_after_sending(self, event) -> State:
        if self.state is State.CLOSED:
            raise LocalProtocolError("protocol_violation", f"cannot send {event.type}: the connection is closed")
        if type(event) is Error and event.fatal:
            return State.CLOSED
        if self._owed:
            if event is not self._owed[0]:
                raise LocalProtocolError(
                    "protocol_violation", f"cannot send {event.type} before the {self._owed[0].type} this side owes"
                )
            return self.state
        after = self._allowed_send(event)
        if after is None:
            raise LocalProtocolError("protocol_violation", f"cannot send {event.type} in state {self.state}")
        return after

    @abstractmethod
    def _allowed_send(self, event) -> State | None:
        """The state after sending ``event`` (auth replies and fatal errors
        aside), or None if it may not be sent now."""

    def _sent(self, event, after: State) -> None:
        if after is State.CLOSED:
            self._owed = []
        elif self._owed and event is self._owed[0]:
            self._owed.pop(0)
        self._advance(event, after)

    def _advance(self, event, after: State) -> None:
        """Move on to ``after`` once ``event`` went out or came in."""
        if after is not self.state:
            self._answering = False
        elif type(event) is Columns or type(event) is BackupHeader:
            self._answering = True
        self.state = after

    def _answer_part(self, event) -> State | None:
        """Where a part of a query's answer or a backup stream leads (either
        direction): the first part opens the answer, the rest follow it, a
        non-fatal Error ends it like its last part; None if it is out of place."""
        # A query's answer is Columns, Rows* and Complete (a statement without
        # rows only Complete); a backup stream BackupHeader, BackupData* and BackupEnd.
        if self.state is State.QUERY:
            first, more, last = Columns, Rows, Complete
        elif self.state is State.BACKUP:
            first, more, last = BackupHeader, BackupData, BackupEnd
        else:
            return None
        kind = type(event)
        if kind is more:
            return self.state if self._answering else None
        if kind is last:
            return State.IDLE if self._answering or last is Complete else None
        if kind is first:
            return None if self._answering else self.state
        if kind is Notice:
            return self.state
        if kind is Error:
            return State.IDLE
        return None


class ServerSide(Connection):
    """The server's end: checks and orders what the client sends and what it answers.

    ``auth_fn(user) -> (salt, stored_key, server_key, iteration_count)``,
    returning None or raising LookupError for an unknown user; None as
    ``auth_fn`` disables authentication. On a RemoteProtocolError the server
    sends ``Error(e.code, e.message, fatal=True)`` and closes the connection.

    Until Ready is sent, frames from the client are limited to
    ``handshake_max_frame`` bytes (a hello and SCRAM messages are small), so a
    peer that has not authenticated cannot make the server buffer a large
    frame; ``max_frame`` applies from then on.

    ``tls_required``: why a plaintext hello is refused (the server requires
    TLS of this client), or None.
    """

    def __init__(
        self,
        auth_fn: Callable[[str], tuple | None] | None = None,
        *,
        decoy_secret: bytes | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        handshake_max_frame: int = HANDSHAKE_MAX_FRAME,
        tls_required: str | None = None,
    ):
        super().__init__(max_frame)
        self._tls_required = tls_required
        self._decoder.max_frame = min(handshake_max_frame, max_frame)
        self._decoder.limit_note = " before authentication"
        self.state = State.HELLO
        self._auth_fn = auth_fn
        self._decoy_secret = decoy_secret
        self._hello: Hello | None = None
        self._scram: ServerScram | None = None

    @property
    def auth_required(self) -> bool:
        return self._auth_fn is not None

    def send_backup_data_head(self, entry: str, last: bool, size: int) -> bytes:
        """The frame of a BackupData up to its ``size`` bytes, which the caller
        sends itself straight after (from a file, by sendfile)."""
        event = BackupData(entry, last, b"")
        after = self._state_after_sending(event)
        head = bulk_frame_head(
            {"type": event.type, "entry": entry, "last": last}, "data", size, max_frame=self._max_frame
        )
        self._sent(event, after)
        return head

    def send(self, event) -> bytes:
        kind = type(event)
        if self.state is State.QUERY and not self._owed:
            # The parts of a query's answer, every statement's path: the
            # state machine's rule for each (_answer_part) spelled out, and
            # the message packed from its fields.
            if kind is Complete:
                msg = {
                    "type": "complete",
                    "status": event.status,
                    "rows_affected": event.rows_affected,
                    "database": event.database,
                    "in_transaction": event.in_transaction,
                }
                frame = encode_frame(msg, max_frame=self._max_frame)
                self._advance(event, State.IDLE)
                return frame
            if kind is Rows and self._answering:
                return encode_frame({"type": "rows", "rows": event.rows}, max_frame=self._max_frame)
            if kind is Columns and not self._answering:
                frame = encode_frame({"type": "columns", "names": event.names}, max_frame=self._max_frame)
                self._answering = True
                return frame
        return super().send(event)

    def _allowed_send(self, event) -> State | None:
        if isinstance(event, Ready) and self.state is State.OPENING:
            return State.IDLE
        if isinstance(event, TlsAnswer) and self.state is State.TLS:
            return State.HELLO
        return self._answer_part(event)

    def _sent(self, event, after: State) -> None:
        super()._sent(event, after)
        if type(event) is Ready:  # the session is established: full-size frames from now on
            self._decoder.max_frame = self._max_frame
            self._decoder.limit_note = ""

    def _receive(self, msg: dict):
        if self.state is State.IDLE and msg.get("type") == "query":  # every statement's request
            event = event_of(validate_message(msg, TO_SERVER), TO_SERVER)
            self._advance(event, State.QUERY)
            return event
        if self.state is State.CLOSED:
            raise RemoteProtocolError("protocol_violation", "message received after goodbye")
        if msg.get("type") == "hello":
            _check_version(msg)
        event = event_of(validate_message(msg, TO_SERVER), TO_SERVER)
        if isinstance(event, Goodbye):
            self.state = State.CLOSED
            return event
        expected = _SERVER_EXPECTS.get(self.state, ())
        if not isinstance(event, expected):
            if not expected:
                raise RemoteProtocolError(
                    "protocol_violation",
                    f"received {event.type} before the answer to the last request was sent; "
                    "the client and server disagree about the protocol",
                )
            raise RemoteProtocolError(
                "protocol_violation",
                f"received {event.type} while waiting for {' or '.join(cls.type for cls in expected)}; "
                "the client and server disagree about the protocol",
            )
        if isinstance(event, Hello):
            return self._on_hello(event)
        if isinstance(event, ScramClientFirst):
            first = self._scram.server_first(event.data)
            self.state = State.CLIENT_FINAL
            return self._owe(AuthContinue((ScramServerFirst(first),)))
        if isinstance(event, ScramClientFinal):
            final = self._scram.server_final(event.data)
            self.state = State.OPENING
            return self._session_requested((ScramServerFinal(final),))
        # BackupStored is answered like a query: Complete or Error.
        self._advance(event, State.BACKUP if type(event) is BackupRequested else State.QUERY)
        return event

    @property
    def hello_user(self) -> str | None:
        """The user the client's hello named (None before the hello): for the server's logs."""
        return self._hello.user if self._hello is not None else None

    def _on_hello(self, hello: Hello):
        if hello.tls:
            if self._tls_asked:
                raise RemoteProtocolError("protocol_violation", "the client asked for TLS twice")
            self._tls_asked = True
            self.state = State.TLS
            return TlsRequested()
        if self._tls_required is not None and not self.tls_active:
            raise RemoteProtocolError("tls_required", self._tls_required)
        self._hello = hello
        if self._auth_fn is None:
            self.state = State.OPENING
            return self._session_requested(())
        self._scram = ServerScram(hello.user, self._auth_fn, self._decoy_secret)
        self.state = State.CLIENT_FIRST
        return self._owe(AuthContinue((AuthRequired(),)))

    def _session_requested(self, replies: tuple) -> SessionRequested:
        h = self._hello
        return self._owe(SessionRequested(h.user, h.database, h.client, replies))

    def _owe(self, event):
        self._owed = list(event.replies)
        return event


_SERVER_EXPECTS = {
    State.HELLO: (Hello,),
    State.CLIENT_FIRST: (ScramClientFirst,),
    State.CLIENT_FINAL: (ScramClientFinal,),
    State.IDLE: (Query, BackupRequested, BackupStored),
}


def _check_version(msg: dict) -> None:
    version = msg.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            "unsupported_version",
            f"the client speaks protocol version {version} but this server speaks "
            f"version {PROTOCOL_VERSION}; use a rusty-db-cli from the same release "
            "as the server",
        )


class ClientSide(Connection):
    """The client's end: a Hello first, then one request at a time.

    The session's database and transaction state follow Ready and Complete.
    A large backup data piece comes out as a read-only view of the frame it
    arrived in, not a copy.
    """

    _bulk_views = True

    def __init__(self, password: str | None = None, *, max_frame: int = DEFAULT_MAX_FRAME):
        super().__init__(max_frame)
        self._password = password
        self._user: str | None = None
        self._scram: ClientScram | None = None
        self._auth_step: type | None = None  # the SCRAM message the server owes next
        self.database: str | None = None
        self.in_transaction = False
        self.server_version: str | None = None
        self.session_id: int | None = None

    def send(self, event) -> bytes:
        if type(event) is Query and self.state is State.IDLE and not self._owed:
            # Every statement's request: checked and packed without the
            # general path's map (the same bytes, the same refusals).
            sql, batch_rows = event.sql, event.batch_rows
            if isinstance(sql, str) and type(batch_rows) is int and 1 <= batch_rows <= MAX_CONTAINER_LEN:
                frame = encode_query_frame(sql, batch_rows, max_frame=self._max_frame)
                self._advance(event, State.QUERY)
                return frame
        return super().send(event)

    def _message(self, event) -> dict:
        msg = message_of(event)
        try:
            validate_message(msg, TO_SERVER)
        except RemoteProtocolError as e:
            raise LocalProtocolError(e.code, e.message) from None
        return msg

    def _allowed_send(self, event) -> State | None:
        if isinstance(event, Goodbye):
            return State.CLOSED
        if isinstance(event, Hello) and self.state is State.START:
            if event.tls:
                if self._tls_asked:
                    return None
                self._tls_asked = True
                return State.TLS
            self._user = event.user
            return State.HANDSHAKE
        if self.state is State.IDLE:
            if isinstance(event, Query):
                return State.QUERY
            if isinstance(event, BackupRequested):
                return State.BACKUP
            if isinstance(event, BackupStored):
                return State.QUERY
        return None

    def _receive(self, msg: dict):
        event = event_of(validate_message(msg, TO_CLIENT), TO_CLIENT)
        kind = type(event)
        if self.state is State.QUERY and (kind is Rows or kind is Complete or kind is Columns):
            # A query's answer, the one path every statement takes.
            after = self._answer_part(event)
            if after is None:
                raise RemoteProtocolError("protocol_violation", f"received {event.type} in state {self.state}")
            if kind is Complete:
                self.database = event.database
                self.in_transaction = event.in_transaction
            self._advance(event, after)
            return event
        if self.state in (State.START, State.CLOSED):
            raise RemoteProtocolError("protocol_violation", f"received {event.type} in state {self.state}")
        if isinstance(event, Error) and event.fatal:
            self.state = State.CLOSED
            return event
        if isinstance(event, Notice):
            return event
        if self.state is State.TLS:
            if not isinstance(event, TlsAnswer):
                raise RemoteProtocolError(
                    "protocol_violation",
                    f"the server answered the request for TLS with {event.type}; it may be older than this "
                    "client (connect with --tls disable, or upgrade the server)",
                )
            self.state = State.START  # the real hello is next
            return event
        if self.state is State.HANDSHAKE:
            return self._receive_handshake(event)
        after = self._answer_part(event)
        if after is None:
            raise RemoteProtocolError("protocol_violation", f"received {event.type} in state {self.state}")
        if type(event) is Complete:
            self.database = event.database
            self.in_transaction = event.in_transaction
        self._advance(event, after)
        return event

    def _receive_handshake(self, event):
        if isinstance(event, AuthRequired) and self._scram is None:
            self._scram = ClientScram(self._user, self._password, event.mechanism)
            self._auth_step = ScramServerFirst
            return self._owe(ScramClientFirst(self._scram.client_first()))
        if isinstance(event, ScramServerFirst) and self._auth_step is ScramServerFirst:
            self._auth_step = ScramServerFinal
            return self._owe(ScramClientFinal(self._scram.client_final(event.data)))
        if isinstance(event, ScramServerFinal) and self._auth_step is ScramServerFinal:
            self._scram.check_server_final(event.data)
            self._auth_step = None
            return None
        if isinstance(event, Ready) and self._auth_step is None:
            self.state = State.IDLE
            self.database = event.database
            self.server_version = event.server_version
            self.session_id = event.session_id
            return event
        raise RemoteProtocolError("protocol_violation", f"received {event.type} at the wrong point of the handshake")

    def _owe(self, reply) -> AuthContinue:
        self._owed = [reply]
        return AuthContinue((reply,))
