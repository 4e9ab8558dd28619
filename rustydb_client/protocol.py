"""The RustyDB wire protocol, sans-IO: bytes in, messages and events out.

A frame is a 4-byte big-endian length followed by one msgpack map with a
"type" key. Nothing here touches a socket: the server (trio) and the client
(blocking sockets) each wrap these objects in a few lines of I/O, and the tests
drive them with bytes alone.

Conversation:

    client                                server
    hello {version,user,database,client} ->
                                          <- auth_required {mechanism}      (only if auth is on)
    scram_client_first {data}            ->
                                          <- scram_server_first {data}
    scram_client_final {data}            ->
                                          <- scram_server_final {data}
                                          <- ready {server_version,database,session_id}
    query {sql, batch_rows}              ->
                                          <- columns / rows* / complete   (or error)
    goodbye {}                           ->

The client sends one statement per query, so every query is answered by
exactly one `complete` or one `error` (notices may come before either).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack


def _scramp():
    # Imported on first use: only authenticating connections need it, and it
    # costs tens of milliseconds at the start of every command-line tool.
    import scramp

    return scramp


PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 16 * 1024 * 1024
MAX_CONTAINER_LEN = 1_000_000
MAX_DEPTH = 8
DEFAULT_BATCH_ROWS = 1000
SCRAM_MECHANISM = "SCRAM-SHA-256"
SCRAM_ITERATIONS = 4096

TO_SERVER = "to_server"
TO_CLIENT = "to_client"

_HEADER = struct.Struct(">I")

# One message for every authentication failure, so a client cannot tell a
# wrong password from an unknown user.
AUTH_FAILED_MESSAGE = (
    "authentication failed: the user name or password is wrong; "
    "check --user and the RUSTYDB_PASSWORD environment variable"
)


class ProtocolError(Exception):
    """A peer broke the protocol (bad frame, bad message, wrong order, failed auth)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- frames


def encode_frame(msg: dict, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Pack one message into a frame, refusing one the peer would refuse."""
    body = msgpack.packb(msg, use_bin_type=True)
    if len(body) > max_frame:
        raise ProtocolError(
            "frame_too_large",
            f"a {msg.get('type', '?')} message of {len(body)} bytes exceeds the "
            f"{max_frame}-byte frame limit; send smaller batches",
        )
    return _HEADER.pack(len(body)) + body


def bin_header(size: int) -> bytes:
    """msgpack's bin 8/16/32 header for ``size`` bytes, as packb writes it
    (msgpack's Packer has no method for the header alone)."""
    if size < 1 << 8:
        return bytes([0xC4, size])
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


def encode_bulk_frame(
    msg: dict, key: str, data: bytes | memoryview, *, max_frame: int = DEFAULT_MAX_FRAME
) -> tuple[bytes, bytes | memoryview]:
    """The frame of ``{**msg, key: data}`` as (head, data), without copying ``data``.

    The bytes are exactly ``encode_frame``'s for that map; a backup's 1 MiB
    chunks go out without two extra copies each.
    """
    return bulk_frame_head(msg, key, len(data), max_frame=max_frame), data


def bulk_frame_head(msg: dict, key: str, size: int, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """The bytes of ``{**msg, key: <size bytes>}``'s frame that come before the
    bulk bytes themselves (which may then come from anywhere, a file say)."""
    if len(msg) + 1 > 15 or key in msg:
        raise ValueError("a bulk frame holds at most 14 other fields and one bulk field")
    head = bytearray([0x80 | (len(msg) + 1)])
    for k, v in msg.items():
        head += msgpack.packb(k, use_bin_type=True)
        head += msgpack.packb(v, use_bin_type=True)
    head += msgpack.packb(key, use_bin_type=True)
    head += bin_header(size)
    body_len = len(head) + size
    if body_len > max_frame:
        raise ProtocolError(
            "frame_too_large",
            f"a {msg.get('type', '?')} message of {body_len} bytes exceeds the "
            f"{max_frame}-byte frame limit; send smaller batches",
        )
    return _HEADER.pack(body_len) + bytes(head)


class FrameDecoder:
    """Turn received bytes into messages, with hard limits checked early.

    The claimed length is checked as soon as the 4 header bytes arrive, so a
    peer announcing a huge frame is refused before its body is buffered. The
    body's structure (depth, container sizes, total number of values) is
    checked by a byte scan *before* msgpack builds any Python object, so a
    small frame that would inflate into millions of objects is refused too.
    """

    def __init__(
        self,
        max_frame: int = DEFAULT_MAX_FRAME,
        *,
        max_depth: int = MAX_DEPTH,
        max_items: int = MAX_CONTAINER_LEN,
    ):
        self.max_frame = max_frame
        self.max_depth = max_depth
        self.max_items = max_items
        self._buf = bytearray()  # bytes not yet claimed by a frame header
        self._need: int | None = None  # body length of the frame being received
        # The body of the frame being received, as the pieces that arrived:
        # joined once when complete, instead of growing and slicing one buffer
        # (which cost about 1 ms per MiB frame).
        self._parts: list[bytes] = []
        # ... or, once recv_buffer() was asked for, the body itself, received
        # in place: no join at all.
        self._body: bytearray | None = None
        self._have = 0
        self._failed: ProtocolError | None = None

    def feed(self, data: bytes) -> None:
        if self._failed:
            raise self._failed
        if self._body is not None:
            take = min(len(data), self._need - self._have)
            self._body[self._have : self._have + take] = memoryview(data)[:take]
            self._have += take
            if take < len(data):
                self._buf += memoryview(data)[take:]  # the next frame's first bytes
        elif self._need is not None:
            self._parts.append(data)
            self._have += len(data)
        else:
            self._buf += data
            self._read_header()

    def recv_buffer(self) -> memoryview | None:
        """Where to receive next (``socket.recv_into``), while a large frame's
        body is due; None otherwise (receive and ``feed`` as usual).

        The view covers exactly the rest of the body, so a receive never
        reaches into the next frame, and the body needs no join: a backup's
        1 MiB frames were copied once more each for that.
        """
        if self._failed or self._need is None or self._need - self._have < RECV_IN_PLACE_MIN:
            return None
        if self._body is None:
            body = bytearray(self._need)
            pos = 0
            for part in self._parts:  # fewer bytes than the body: it is not complete
                body[pos : pos + len(part)] = part
                pos += len(part)
            self._body, self._parts = body, []
        return memoryview(self._body)[self._have :]

    def received_into(self, n: int) -> None:
        """``n`` bytes arrived in the view recv_buffer() gave."""
        if self._body is None or not 0 <= n <= self._need - self._have:
            raise ValueError("received_into() does not match the last recv_buffer()")
        self._have += n

    def next_message(self, *, bulk_views: bool = False) -> dict | None:
        """The next complete message, or None until more bytes are fed.

        ``bulk_views``: a large trailing bin comes back as a read-only view of
        the frame's body, not a copy (see decode_body).
        """
        if self._failed:
            raise self._failed
        self._read_header()
        if self._need is None or self._have < self._need:
            return None
        if self._body is not None:
            body, self._body = self._body, None
            self._need = None
            self._have = 0
            return self._decode(body, bulk_views)
        parts, self._parts = self._parts, []
        joined = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(joined) == self._need:  # the common case: no copy of the body
            body = joined
        else:
            body = memoryview(joined)[: self._need]
            self._buf = bytearray(memoryview(joined)[self._need :])
        self._need = None
        self._have = 0
        return self._decode(body, bulk_views)

    def _decode(self, body, bulk_views: bool) -> dict:
        try:
            return decode_body(body, self.max_frame, self.max_depth, self.max_items, bulk_views=bulk_views)
        except ProtocolError as e:
            self._failed = e
            raise

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf) + self._have

    def _read_header(self) -> None:
        if self._need is not None or len(self._buf) < _HEADER.size:
            return
        (length,) = _HEADER.unpack_from(self._buf)
        if length > self.max_frame:
            self._failed = ProtocolError(
                "frame_too_large",
                f"the peer announced a frame of {length} bytes, more than the "
                f"{self.max_frame}-byte limit; the connection is closed",
            )
            raise self._failed
        if length == 0:
            self._failed = ProtocolError("bad_frame", "received an empty frame")
            raise self._failed
        rest = bytes(memoryview(self._buf)[_HEADER.size :])
        self._buf = bytearray()
        self._need = length
        self._parts = [rest] if rest else []
        self._have = len(rest)


def decode_body(
    body: bytes | bytearray | memoryview,
    max_frame: int = DEFAULT_MAX_FRAME,
    max_depth: int = MAX_DEPTH,
    max_items: int = MAX_CONTAINER_LEN,
    *,
    bulk_views: bool = False,
) -> dict:
    """Decode one frame body into a message map (limits checked first).

    With ``bulk_views``, a bin of at least BULK_VIEW_MIN bytes that is the
    map's last value (as encode_bulk_frame puts it) comes back as a read-only
    memoryview of ``body`` instead of a copy. The caller then owns ``body``
    for as long as the view lives and must not change it.
    """
    last = check_structure(body, max_depth=max_depth, max_items=max_items)
    if bulk_views and last is not None:
        split = _bulk_split(body, *last)
        if split is not None:
            return _decode_with_bulk(body, *split, max_frame)
    return _unpack_message(body, max_frame)


def _bulk_split(body, key_at: int, value_at: int) -> tuple[int, int, int] | None:
    """(key_at, value_at, data_at) when the root map's last value is a large bin."""
    width = _BIN_WIDTHS.get(body[value_at])
    if width is None:
        return None
    data_at = value_at + 1 + width
    if len(body) - data_at < BULK_VIEW_MIN:
        return None
    return key_at, value_at, data_at


def _decode_with_bulk(body, key_at: int, value_at: int, data_at: int, max_frame: int) -> dict:
    view = memoryview(body)
    # The map with its last value replaced by nil, then that value put back as
    # a view. The key is decoded on its own: if it also appears earlier, the
    # last occurrence wins, as unpackb would have it.
    msg = _unpack_message(bytes(view[:value_at]) + b"\xc0", max_frame)
    key = _unpack_message_part(bytes(view[key_at:value_at]))
    msg[key] = view[data_at:].toreadonly()
    if not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", "a frame must hold a map with a string 'type'")
    return msg


def _unpack_message_part(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 -- msgpack raises many types; all mean "bad bytes"
        raise ProtocolError("bad_frame", f"the frame is not valid msgpack ({e})") from None


def _unpack_message(body, max_frame: int) -> dict:
    try:
        # unpackb, not an Unpacker: a streaming Unpacker allocates its whole
        # max_buffer_size for every frame, which made 1 MiB frames cost 1 ms.
        msg = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=max_frame,
            max_bin_len=max_frame,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except Exception as e:  # noqa: BLE001 -- msgpack raises many types; all mean "bad bytes"
        raise ProtocolError("bad_frame", f"the frame is not valid msgpack ({e})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", "a frame must hold a map with a string 'type'")
    return msg


_BIN_WIDTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # bin type byte -> width of its length
# A bin at least this large is worth a view (decode_body); smaller ones copy
# in less time than the view costs to set up.
BULK_VIEW_MIN = 64 * 1024
# Receive a frame's body in place (FrameDecoder.recv_buffer) when at least this much is due.
RECV_IN_PLACE_MIN = 64 * 1024

# Byte -> (kind, size) for the fixed-size msgpack formats; the scan below
# only needs to know how far to skip and whether a container opens.
_FIXED_SKIP = {
    0xC0: 0,
    0xC2: 0,
    0xC3: 0,  # nil, false, true
    0xCA: 4,
    0xCB: 8,  # float32/64
    0xCC: 1,
    0xCD: 2,
    0xCE: 4,
    0xCF: 8,  # uint
    0xD0: 1,
    0xD1: 2,
    0xD2: 4,
    0xD3: 8,  # int
}
_LEN_PREFIXED = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}  # bin, str
_CONTAINERS = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}  # array, map


def check_structure(
    body: bytes | memoryview, *, max_depth: int = MAX_DEPTH, max_items: int = MAX_CONTAINER_LEN
) -> tuple[int, int] | None:
    """Walk msgpack bytes without building objects: depth, sizes, ext, truncation.

    Iterative (an explicit stack of remaining-item counts), so no input can
    exhaust Python's recursion, and it stops at the first violation. Returns
    where the root's last two items start (a map's last key and value), or
    None if the root is not a container of at least two.
    """
    n = len(body)
    pos = 0
    items = 0
    stack = [1]  # items still to read in each open container; the root holds one
    prev_top = last_top = -1  # starts of the last two items directly in the root
    try:
        while stack:
            if stack[-1] == 0:
                stack.pop()
                continue
            stack[-1] -= 1
            if len(stack) == 2:
                prev_top, last_top = last_top, pos
            b = body[pos]
            pos += 1
            items += 1
            if items > max_items:
                raise ProtocolError("frame_too_complex", f"a message holds more than {max_items} values")
            if b <= 0x7F or b >= 0xE0:  # fixint
                continue
            count = -1
            if b <= 0x8F:
                count = (b & 0x0F) * 2
            elif b <= 0x9F:
                count = b & 0x0F
            elif b <= 0xBF:
                pos += b & 0x1F
            elif b in _FIXED_SKIP:
                pos += _FIXED_SKIP[b]
            elif b in _LEN_PREFIXED:
                width = _LEN_PREFIXED[b]
                pos += width + int.from_bytes(body[pos : pos + width], "big")
            elif b in _CONTAINERS:
                width, per_entry = _CONTAINERS[b]
                entries = int.from_bytes(body[pos : pos + width], "big")
                pos += width
                if entries > MAX_CONTAINER_LEN:
                    raise ProtocolError(
                        "frame_too_complex",
                        f"a container of {entries} entries exceeds {MAX_CONTAINER_LEN}",
                    )
                count = entries * per_entry
            else:  # 0xC1 (never used) and every ext type
                raise ProtocolError("bad_frame", f"unsupported msgpack type byte 0x{b:02x}")
            if count >= 0:
                if len(stack) > max_depth:
                    raise ProtocolError("frame_too_deep", f"a message is nested deeper than {max_depth} levels")
                # Every entry takes at least one byte: a count beyond what is
                # left is a lie, refuse it before trusting it.
                if count > n - pos:
                    raise IndexError
                stack.append(count)
    except IndexError:
        raise ProtocolError("bad_frame", "the frame ends in the middle of a value") from None
    if pos > n:
        raise ProtocolError("bad_frame", "the frame ends in the middle of a value")
    if pos < n:
        raise ProtocolError("bad_frame", "the frame holds bytes after its message")
    return (prev_top, last_top) if prev_top >= 0 else None


# ---------------------------------------------------------------- messages

_VALUE_TYPES = (type(None), int, float, str, bytes)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_rows(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(row, list) and all(isinstance(x, _VALUE_TYPES) for x in row) for row in v
    )


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "bool": lambda v: isinstance(v, bool),
    "map": lambda v: isinstance(v, dict),
    "bytes": lambda v: isinstance(v, bytes),
    "str|None": lambda v: v is None or isinstance(v, str),
    "int|None": lambda v: v is None or _is_int(v),
    "[str]": _is_str_list,
    "rows": _is_rows,
}

# type -> {field: (kind, required)}. Unknown extra fields are allowed so a
# newer peer can add optional fields without breaking an older one.
_SCHEMAS: dict[str, dict[str, dict[str, tuple[str, bool]]]] = {
    TO_SERVER: {
        "hello": {
            "version": ("int", True),
            "user": ("str", True),
            "database": ("str|None", False),
            "client": ("str", True),
        },
        "scram_client_first": {"data": ("str", True)},
        "scram_client_final": {"data": ("str", True)},
        "query": {"sql": ("str", True), "batch_rows": ("int", False)},
        "backup": {"options": ("map", True)},
        "goodbye": {},
    },
    TO_CLIENT: {
        "auth_required": {"mechanism": ("str", True)},
        "scram_server_first": {"data": ("str", True)},
        "scram_server_final": {"data": ("str", True)},
        "ready": {
            "server_version": ("str", True),
            "database": ("str", True),
            "session_id": ("int", True),
        },
        "columns": {"names": ("[str]", True)},
        "rows": {"rows": ("rows", True)},
        "complete": {
            "status": ("str", True),
            "rows_affected": ("int", True),
            "database": ("str", True),
            "in_transaction": ("bool", True),
        },
        "notice": {"message": ("str", True)},
        "error": {
            "code": ("str", True),
            "message": ("str", True),
            "fatal": ("bool", True),
            "statement_line": ("int|None", False),
        },
        "backup_header": {},
        "backup_data": {"data": ("bytes", True)},
        "backup_end": {},
    },
}


def validate_message(msg: Any, direction: str) -> dict:
    """Check a message's type and fields for one direction; return it unchanged."""
    if direction not in _SCHEMAS:
        raise ValueError(f"direction must be {TO_SERVER!r} or {TO_CLIENT!r}")
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError("bad_message", "a message must be a map with a string 'type'")
    schema = _SCHEMAS[direction].get(msg["type"])
    if schema is None:
        raise ProtocolError("bad_message", f"unknown message type {msg['type']!r} ({direction.replace('_', ' ')})")
    for name, (kind, required) in schema.items():
        if name not in msg:
            if required:
                raise ProtocolError("bad_message", f"{msg['type']} message lacks its {name!r} field")
            continue
        if not _CHECKS[kind](msg[name]):
            raise ProtocolError("bad_message", f"{msg['type']} message field {name!r} must be {kind}")
    if msg["type"] == "query" and not 1 <= msg.get("batch_rows", 1) <= MAX_CONTAINER_LEN:
        raise ProtocolError("bad_message", f"query batch_rows must be between 1 and {MAX_CONTAINER_LEN}")
    return msg


# Builders: the only places message maps are spelled out.


def hello_message(user: str, database: str | None, client: str, version: int = PROTOCOL_VERSION) -> dict:
    return {"type": "hello", "version": version, "user": user, "database": database, "client": client}


def query_message(sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> dict:
    return {"type": "query", "sql": sql, "batch_rows": batch_rows}


def backup_message(options: dict) -> dict:
    return {"type": "backup", "options": options}


def goodbye_message() -> dict:
    return {"type": "goodbye"}


def ready_message(server_version: str, database: str, session_id: int) -> dict:
    return {"type": "ready", "server_version": server_version, "database": database, "session_id": session_id}


def columns_message(names: list[str]) -> dict:
    return {"type": "columns", "names": list(names)}


def rows_message(rows: list[list]) -> dict:
    return {"type": "rows", "rows": [list(r) for r in rows]}


def complete_message(status: str, rows_affected: int, database: str, in_transaction: bool) -> dict:
    return {
        "type": "complete",
        "status": status,
        "rows_affected": rows_affected,
        "database": database,
        "in_transaction": in_transaction,
    }


def notice_message(message: str) -> dict:
    return {"type": "notice", "message": message}


def error_message(code: str, message: str, *, fatal: bool = False, statement_line: int | None = None) -> dict:
    return {"type": "error", "code": code, "message": message, "fatal": fatal, "statement_line": statement_line}


def backup_header_message(**fields: Any) -> dict:
    return {"type": "backup_header", **fields}


def backup_data_message(data: bytes) -> dict:
    return {"type": "backup_data", "data": data}


def backup_end_message(**fields: Any) -> dict:
    return {"type": "backup_end", **fields}


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class AuthContinue:
    """Authentication is under way: send `replies` and wait for the next message."""

    replies: tuple[dict, ...]


@dataclass(frozen=True)
class SessionRequested:
    """Server side: the client is who it says. Send `replies` (the SCRAM final
    message, if any), open the session, then send `ready_message(...)` or a
    fatal error if the database cannot be opened."""

    user: str
    database: str | None
    client: str
    replies: tuple[dict, ...] = ()


@dataclass(frozen=True)
class Query:
    sql: str
    batch_rows: int


@dataclass(frozen=True)
class BackupRequested:
    options: dict


@dataclass(frozen=True)
class Goodbye:
    pass


@dataclass(frozen=True)
class Ready:
    server_version: str
    database: str
    session_id: int


@dataclass(frozen=True)
class Columns:
    names: list[str]


@dataclass(frozen=True)
class Rows:
    rows: list[list]


@dataclass(frozen=True)
class Complete:
    status: str
    rows_affected: int
    database: str
    in_transaction: bool


@dataclass(frozen=True)
class Notice:
    message: str


@dataclass(frozen=True)
class ErrorReported:
    code: str
    message: str
    fatal: bool
    statement_line: int | None


@dataclass(frozen=True)
class BackupMessage:
    """backup_header, backup_data or backup_end, passed through as received."""

    msg: dict = field(default_factory=dict)


ServerEvent = AuthContinue | SessionRequested | Query | BackupRequested | Goodbye
ClientEvent = AuthContinue | Ready | Columns | Rows | Complete | Notice | ErrorReported | BackupMessage


# ---------------------------------------------------------------- SCRAM


def make_scram_credentials(password: str, iteration_count: int = SCRAM_ITERATIONS) -> tuple:
    """(salt, stored_key, server_key, iteration_count) to keep in a users file.

    The password itself is never stored; these are what scramp's server needs.
    """
    return _scramp().ScramMechanism(SCRAM_MECHANISM).make_auth_info(password, iteration_count=iteration_count)


# Per process, so an unknown user always gets the same fake salt within one
# server's life (a changing salt would reveal that the user does not exist).
_DECOY_SECRET = secrets.token_bytes(32)


def _decoy_credentials(user: str, secret: bytes) -> tuple:
    salt = hmac.new(secret, user.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()[:16]
    return salt, secrets.token_bytes(32), secrets.token_bytes(32), SCRAM_ITERATIONS


# ---------------------------------------------------------------- server


class ServerProtocol:
    """The server's view of one connection: validates and orders what the client sends.

    `auth_fn(user) -> (salt, stored_key, server_key, iteration_count)`, returning
    None or raising LookupError for an unknown user; None disables authentication.
    Every call to `receive` either returns an event or raises ProtocolError; on
    ProtocolError the server sends `error_message(e.code, e.message, fatal=True)`
    and closes the connection.
    """

    def __init__(self, auth_fn: Callable[[str], tuple | None] | None = None, *, decoy_secret: bytes | None = None):
        self._auth_fn = auth_fn
        self._decoy_secret = decoy_secret or _DECOY_SECRET
        self.state = "hello"
        self._hello: dict | None = None
        self._scram: Any = None

    @property
    def auth_required(self) -> bool:
        return self._auth_fn is not None

    def receive(self, msg: dict) -> ServerEvent:
        if self.state == "closed":
            raise ProtocolError("protocol_violation", "message received after goodbye")
        if isinstance(msg, dict) and msg.get("type") == "hello":
            self._check_version(msg)
        validate_message(msg, TO_SERVER)
        kind = msg["type"]
        if kind == "goodbye":
            self.state = "closed"
            return Goodbye()
        expected = {
            "hello": ("hello",),
            "client_first": ("scram_client_first",),
            "client_final": ("scram_client_final",),
            "session": ("query", "backup"),
        }[self.state]
        if kind not in expected:
            raise ProtocolError(
                "protocol_violation",
                f"received {kind} while waiting for {' or '.join(expected)}; "
                "the client and server disagree about the protocol",
            )
        return getattr(self, "_on_" + kind)(msg)

    def _check_version(self, msg: dict) -> None:
        version = msg.get("version")
        if _is_int(version) and version != PROTOCOL_VERSION:
            raise ProtocolError(
                "unsupported_version",
                f"the client speaks protocol version {version} but this server speaks "
                f"version {PROTOCOL_VERSION}; use a rusty-db-cli from the same release "
                "as the server",
            )

    def _on_hello(self, msg: dict) -> AuthContinue | SessionRequested:
        self._hello = msg
        if self._auth_fn is None:
            self.state = "session"
            return self._session_requested(())
        self.state = "client_first"
        return AuthContinue(({"type": "auth_required", "mechanism": SCRAM_MECHANISM},))

    def _on_scram_client_first(self, msg: dict) -> AuthContinue:
        mechanism = _scramp().ScramMechanism(SCRAM_MECHANISM)
        self._scram = mechanism.make_server(self._lookup_credentials)
        try:
            self._scram.set_client_first(msg["data"])
            first = self._scram.get_server_first()
        except _scramp().ScramException:
            raise ProtocolError("auth_failed", AUTH_FAILED_MESSAGE) from None
        self.state = "client_final"
        return AuthContinue(({"type": "scram_server_first", "data": first},))

    def _on_scram_client_final(self, msg: dict) -> SessionRequested:
        try:
            self._scram.set_client_final(msg["data"])
            final = self._scram.get_server_final()
        except _scramp().ScramException:
            raise ProtocolError("auth_failed", AUTH_FAILED_MESSAGE) from None
        self.state = "session"
        return self._session_requested(({"type": "scram_server_final", "data": final},))

    def _lookup_credentials(self, _scram_user: str) -> tuple:
        # The user named in hello is the one authenticated (SCRAM's own user
        # field is ignored, as PostgreSQL does). An unknown user gets decoy
        # credentials so the exchange runs to the end and fails like a wrong
        # password would.
        user = self._hello["user"]
        try:
            creds = self._auth_fn(user)
        except LookupError:
            creds = None
        return creds if creds is not None else _decoy_credentials(user, self._decoy_secret)

    def _session_requested(self, replies: tuple[dict, ...]) -> SessionRequested:
        h = self._hello
        return SessionRequested(h["user"], h.get("database"), h["client"], replies)

    def _on_query(self, msg: dict) -> Query:
        return Query(msg["sql"], msg.get("batch_rows", DEFAULT_BATCH_ROWS))

    def _on_backup(self, msg: dict) -> BackupRequested:
        return BackupRequested(msg["options"])


# ---------------------------------------------------------------- client


class ClientProtocol:
    """The client's view of one connection: handshake, then session messages.

    `start()` gives the hello to send; `receive(msg)` returns one event per
    server message. The session's database and transaction state follow the
    `ready` and `complete` messages.
    """

    def __init__(
        self, user: str, password: str | None = None, database: str | None = None, client: str = "rustydb-client"
    ):
        self.user = user
        self._password = password
        self.requested_database = database
        self.client = client
        self.state = "start"
        self.database: str | None = None
        self.in_transaction = False
        self.server_version: str | None = None
        self.session_id: int | None = None
        self._scram: Any = None

    def start(self) -> list[dict]:
        if self.state != "start":
            raise ProtocolError("protocol_violation", "the handshake was already started")
        self.state = "handshake"
        return [hello_message(self.user, self.requested_database, self.client)]

    def query(self, sql: str, batch_rows: int = DEFAULT_BATCH_ROWS) -> dict:
        if self.state != "session":
            raise ProtocolError("protocol_violation", "a query needs an open session")
        return query_message(sql, batch_rows)

    def receive(self, msg: dict) -> ClientEvent:
        validate_message(msg, TO_CLIENT)
        kind = msg["type"]
        if kind == "error":
            if msg["fatal"]:
                self.state = "closed"
            return ErrorReported(msg["code"], msg["message"], msg["fatal"], msg.get("statement_line"))
        if kind == "notice":
            return Notice(msg["message"])
        if self.state == "handshake":
            return self._receive_handshake(msg)
        if self.state != "session":
            raise ProtocolError("protocol_violation", f"received {kind} in state {self.state}")
        if kind == "columns":
            return Columns(msg["names"])
        if kind == "rows":
            return Rows(msg["rows"])
        if kind == "complete":
            self.database = msg["database"]
            self.in_transaction = msg["in_transaction"]
            return Complete(msg["status"], msg["rows_affected"], msg["database"], msg["in_transaction"])
        if kind.startswith("backup_"):
            return BackupMessage(msg)
        raise ProtocolError("protocol_violation", f"received {kind} during a session")

    def _receive_handshake(self, msg: dict) -> ClientEvent:
        kind = msg["type"]
        step = "first" if self._scram is None else self._scram.stage.name
        if kind == "auth_required" and self._scram is None:
            if msg["mechanism"] != SCRAM_MECHANISM:
                raise ProtocolError(
                    "auth_failed",
                    f"the server asks for {msg['mechanism']}, this client only speaks {SCRAM_MECHANISM}",
                )
            if self._password is None:
                raise ProtocolError(
                    "password_required",
                    "the server requires a password; set the RUSTYDB_PASSWORD "
                    "environment variable (or pass password= to connect)",
                )
            self._scram = _scramp().ScramClient([SCRAM_MECHANISM], self.user, self._password)
            return AuthContinue(({"type": "scram_client_first", "data": self._scram.get_client_first()},))
        if kind == "scram_server_first" and step == "get_client_first":
            try:
                self._scram.set_server_first(msg["data"])
                final = self._scram.get_client_final()
            except _scramp().ScramException as e:
                raise ProtocolError("auth_failed", f"the server's SCRAM message is invalid ({e})") from None
            return AuthContinue(({"type": "scram_client_final", "data": final},))
        if kind == "scram_server_final" and step == "get_client_final":
            try:
                self._scram.set_server_final(msg["data"])
            except _scramp().ScramException:
                raise ProtocolError(
                    "auth_failed",
                    "the server could not prove that it knows the password; it may not "
                    "be the RustyDB server you meant to reach",
                ) from None
            return AuthContinue(())
        if kind == "ready" and (self._scram is None or step == "set_server_final"):
            self.state = "session"
            self.database = msg["database"]
            self.server_version = msg["server_version"]
            self.session_id = msg["session_id"]
            return Ready(msg["server_version"], msg["database"], msg["session_id"])
        raise ProtocolError("protocol_violation", f"received {kind} at the wrong point of the handshake")
