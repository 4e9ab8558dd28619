"""The events of a conversation, both directions, as the Connections take and give them.

A wire event is one message: its class names the message ``type`` and its
fields, in declaration order, are the message's fields in the order they go on
the wire (messages.py turns one into the other). The rest are what a
Connection reports about the conversation itself: authentication steps to
answer, a session to open, the peer gone, more bytes needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

PROTOCOL_VERSION = 1
DEFAULT_BATCH_ROWS = 1000
SCRAM_MECHANISM = "SCRAM-SHA-256"


# ------------------------------------------------------- client to server


@dataclass(slots=True)
class Hello:
    type: ClassVar[str] = "hello"
    # First on the wire, but keyword-only: the caller rarely names it.
    version: int = field(default=PROTOCOL_VERSION, kw_only=True)
    user: str
    database: str | None
    client: str
    # True: the client asks for TLS. Such a hello names no user (its user is
    # ""); the server answers TlsAnswer alone, and the client then sends its
    # real hello, inside TLS when the server accepted.
    tls: bool = False


@dataclass(slots=True)
class ScramClientFirst:
    type: ClassVar[str] = "scram_client_first"
    data: str


@dataclass(slots=True)
class ScramClientFinal:
    type: ClassVar[str] = "scram_client_final"
    data: str


@dataclass(slots=True)
class Query:
    """One statement; its answer is Columns, Rows*, Complete, or an Error."""

    type: ClassVar[str] = "query"
    sql: str
    batch_rows: int = DEFAULT_BATCH_ROWS


@dataclass(slots=True)
class BackupRequested:
    """Stream a backup: answered by BackupHeader, BackupData*, BackupEnd, or an Error.

    ``base_backup`` names where an incremental starts: at least ``backup_id``
    and ``end_lsn``, and what the tool read from that backup's header.
    ``output``: the absolute path the client writes the backup to. A server
    that records it answers with ``BackupEnd(awaiting_location=True)`` and
    records the backup as present only once the client sent BackupStored.
    """

    type: ClassVar[str] = "backup"
    backup_type: str = "full"
    databases: list[str] | None = None
    base_backup: dict | None = None
    output: str | None = None


@dataclass(slots=True)
class BackupStored:
    """The backup streamed last is durable at ``location`` (after a BackupEnd
    with ``awaiting_location``): answered by Complete, or an Error."""

    type: ClassVar[str] = "backup_stored"
    backup_id: str
    location: str


@dataclass(slots=True)
class Goodbye:
    type: ClassVar[str] = "goodbye"


# ------------------------------------------------------- server to client


@dataclass(slots=True)
class TlsAnswer:
    """The answer to a hello that asked for TLS: ``accepted``, the TLS handshake
    starts right after this frame; else ``reason`` says why not, and the client
    may go on in plaintext with its real hello, or close."""

    type: ClassVar[str] = "tls_answer"
    accepted: bool
    reason: str = ""


@dataclass(slots=True)
class AuthRequired:
    type: ClassVar[str] = "auth_required"
    mechanism: str = SCRAM_MECHANISM


@dataclass(slots=True)
class ScramServerFirst:
    type: ClassVar[str] = "scram_server_first"
    data: str


@dataclass(slots=True)
class ScramServerFinal:
    type: ClassVar[str] = "scram_server_final"
    data: str


@dataclass(slots=True)
class Ready:
    type: ClassVar[str] = "ready"
    server_version: str
    database: str
    session_id: int


@dataclass(slots=True)
class Columns:
    type: ClassVar[str] = "columns"
    names: list[str]


@dataclass(slots=True)
class Rows:
    type: ClassVar[str] = "rows"
    rows: list[list]


@dataclass(slots=True)
class Complete:
    type: ClassVar[str] = "complete"
    status: str
    rows_affected: int
    database: str
    in_transaction: bool


@dataclass(slots=True)
class Notice:
    type: ClassVar[str] = "notice"
    message: str


@dataclass(slots=True)
class Error:
    """A refused request, or with ``fatal`` the end of the connection."""

    type: ClassVar[str] = "error"
    code: str
    message: str
    fatal: bool = False
    statement_line: int | None = None


@dataclass(slots=True)
class BackupHeader:
    type: ClassVar[str] = "backup_header"
    manifest: dict


@dataclass(slots=True)
class BackupData:
    """A piece of one entry; ``last`` ends the entry. ``data`` is last on the
    wire, so a large one travels as a bulk frame (frames.encode_bulk_frame)."""

    type: ClassVar[str] = "backup_data"
    entry: str
    last: bool
    data: bytes | memoryview


@dataclass(slots=True)
class BackupEnd:
    """The stream's end. ``awaiting_location``: the server records the backup
    once the client says where it is durable (BackupStored)."""

    type: ClassVar[str] = "backup_end"
    end_lsn: int
    bytes: int
    awaiting_location: bool = False


# ------------------------------------------------------- about the conversation


@dataclass(slots=True)
class AuthContinue:
    """Authentication is under way: send ``replies``, in order, then read on."""

    replies: tuple


@dataclass(slots=True)
class TlsRequested:
    """Server side: the client's hello asked for TLS. Send a TlsAnswer; if it
    accepts, call ``start_tls()`` and run the TLS handshake, then read on."""


@dataclass(slots=True)
class SessionRequested:
    """Server side: the client is who it says. Send ``replies`` (the SCRAM
    final message, if any), open the session, then send Ready, or a fatal
    Error if the database cannot be opened."""

    user: str
    database: str | None
    client: str
    replies: tuple = ()


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed the connection between two messages."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: next_event()'s answer when no whole message is buffered: receive more bytes.
NEED_DATA = _NeedData()

TO_SERVER_EVENTS = (Hello, ScramClientFirst, ScramClientFinal, Query, BackupRequested, BackupStored, Goodbye)
TO_CLIENT_EVENTS = (
    AuthRequired,
    TlsAnswer,
    ScramServerFirst,
    ScramServerFinal,
    Ready,
    Columns,
    Rows,
    Complete,
    Notice,
    Error,
    BackupHeader,
    BackupData,
    BackupEnd,
)
