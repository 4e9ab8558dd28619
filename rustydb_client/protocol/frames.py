"""Frames: a 4-byte big-endian length, then one msgpack map with a string "type".

Encoding (plain, and bulk frames whose large bin goes out without being copied
into the frame) and the FrameDecoder that turns received bytes into message
maps, with the frame limits checked as early as the bytes allow. Messages are
plain maps here; what they mean is messages.py's and events.py's business.
"""

from __future__ import annotations

import struct
import threading
from typing import Any

import msgpack

from .errors import LocalProtocolError, RemoteProtocolError
from .scan import MAX_CONTAINER_LEN, MAX_DEPTH, check_structure

DEFAULT_MAX_FRAME = 16 * 1024 * 1024
#: The largest frame a server takes before the session is established: a
#: hello or a SCRAM message is a few hundred bytes, and an unauthenticated
#: peer must cost the server no more than this much buffer.
HANDSHAKE_MAX_FRAME = 4 * 1024

_HEADER = struct.Struct(">I")

# One Packer per thread, reused: msgpack.packb builds a new Packer for every
# call, which cost more than packing a statement's small answer itself
# (1.7 us against 0.3 us a message). A Packer is not thread-safe, and its
# buffer is reset after a failed pack, so a reused one gives packb's bytes.
_packers = threading.local()


def _packer() -> msgpack.Packer:
    try:
        return _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
        return packer


def _pack(obj) -> bytes:
    return _packer().pack(obj)


def _pack_plain(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def encode_frame(msg: dict, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Pack one message into a frame, refusing one the peer would refuse."""
    body = _pack(msg)
    if len(body) > max_frame:
        raise LocalProtocolError(
            "frame_too_large",
            f"a {msg.get('type', '?')} message of {len(body)} bytes exceeds the "
            f"{max_frame}-byte frame limit; send smaller batches",
        )
    return _HEADER.pack(len(body)) + body


# {"type": "query", "sql": ..., "batch_rows": ...} as message_of builds it,
# in pieces around its two values.
_QUERY_HEAD = b"\x83" + _pack_plain("type") + _pack_plain("query") + _pack_plain("sql")
_BATCH_ROWS_KEY = _pack_plain("batch_rows")


def encode_query_frame(sql: str, batch_rows: int, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """``encode_frame`` of a query message, byte for byte, built without the map."""
    packer = _packer()
    body = b"".join((_QUERY_HEAD, packer.pack(sql), _BATCH_ROWS_KEY, packer.pack(batch_rows)))
    if len(body) > max_frame:
        raise LocalProtocolError(
            "frame_too_large",
            f"a query message of {len(body)} bytes exceeds the {max_frame}-byte frame limit; send smaller batches",
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
        raise LocalProtocolError(
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
        # Said after the limit when a frame exceeds it ("before authentication").
        self.limit_note = ""
        # The largest frame taken in so far (its body was buffered whole).
        self.largest_frame = 0
        self.max_depth = max_depth
        self.max_items = max_items
        self._buf = bytearray()  # bytes not yet claimed by a frame header
        # Where the unread bytes of _buf start: whole frames that arrived
        # together are taken from the buffer one after the other, without
        # moving the rest of it each time.
        self._pos = 0
        self._need: int | None = None  # body length of the frame being received
        # The body of the frame being received, as the pieces that arrived:
        # joined once when complete, instead of growing and slicing one buffer
        # (a copy of the whole frame per arrival).
        self._parts: list[bytes] = []
        # ... or, once recv_buffer() was asked for, the body itself, received
        # in place: no join at all.
        self._body: bytearray | None = None
        self._have = 0
        self._failed: RemoteProtocolError | None = None

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
        if self._need is None:
            return self._next_buffered(bulk_views)
        if self._have < self._need:
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

    def _next_buffered(self, bulk_views: bool) -> dict | None:
        """The frame that lies whole in _buf (its header checked), or None."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(buf, pos)
        end = pos + _HEADER.size + length
        body = bytes(memoryview(buf)[pos + _HEADER.size : end])
        if end == len(buf):
            self._buf = bytearray()
            self._pos = 0
        else:
            self._pos = end
        if length > self.largest_frame:
            self.largest_frame = length
        return self._decode(body, bulk_views)

    def _decode(self, body, bulk_views: bool) -> dict:
        try:
            return decode_body(body, self.max_frame, self.max_depth, self.max_items, bulk_views=bulk_views)
        except RemoteProtocolError as e:
            self._failed = e
            raise

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos + self._have

    def _read_header(self) -> None:
        buf, pos = self._buf, self._pos
        if self._need is not None or len(buf) - pos < _HEADER.size:
            return
        (length,) = _HEADER.unpack_from(buf, pos)
        if length > self.max_frame:
            self._failed = RemoteProtocolError(
                "frame_too_large",
                f"the peer announced a frame of {length} bytes, more than the "
                f"{self.max_frame}-byte limit{self.limit_note}; the connection is closed",
            )
            raise self._failed
        if length == 0:
            self._failed = RemoteProtocolError("bad_frame", "received an empty frame")
            raise self._failed
        if length <= len(buf) - pos - _HEADER.size:
            return  # the whole frame is here: next_message takes it from the buffer
        rest = bytes(memoryview(buf)[pos + _HEADER.size :])
        self._buf = bytearray()
        self._pos = 0
        self.largest_frame = max(self.largest_frame, length)
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
    if len(body) <= SMALL_BODY and len(body) <= max_items and type(body) is bytes:
        msg = _unpack_small(body, max_frame, max_depth)
        if msg is not None:
            return msg
    last = check_structure(body, max_depth=max_depth, max_items=max_items)
    if bulk_views and last is not None:
        split = _bulk_split(body, *last)
        if split is not None:
            return _decode_with_bulk(body, *split, max_frame)
    return _unpack_message(body, max_frame)


def _unpackb_within(body, max_frame: int):
    """One message decoded under the protocol's limits (msgpack's own errors pass through)."""
    # unpackb, not an Unpacker: a streaming Unpacker allocates its whole
    # max_buffer_size for every frame.
    return msgpack.unpackb(
        body,
        raw=False,
        strict_map_key=True,
        max_str_len=max_frame,
        max_bin_len=max_frame,
        max_array_len=MAX_CONTAINER_LEN,
        max_map_len=MAX_CONTAINER_LEN,
        max_ext_len=0,
    )


def _unpack_small(body: bytes, max_frame: int, max_depth: int) -> dict | None:
    """A small body's message when it is plainly within the limits, without
    the scan; None when only the scan can say (it then names the fault).

    Memory is no concern at this size (every value takes a byte of the
    body, so there are fewer values than the limit). msgpack's own errors
    cover truncation, bytes after the message, 0xC1 and non-empty ext
    values; what it cannot see, the nesting depth and an empty ext value, is
    bounded by the bytes that can open a container or an ext: at most
    ``max_depth`` of them (counting any inside strings) cannot nest deeper.
    """
    marks = body.translate(_MARKS, _NOT_MARKS)
    if len(marks) > max_depth or _EXT_MARK in marks:
        return None
    try:
        msg = _unpackb_within(body, max_frame)
    except Exception:  # noqa: BLE001 -- the scan and the full decode name what is wrong
        return None
    if type(msg) is not dict or type(msg.get("type")) is not str:
        return None
    return msg


# Bytes that open a container (fixmap, fixarray, array 16/32, map 16/32) map
# to 0x90, the ext types' to _EXT_MARK; every other byte is deleted.
_CONTAINER_BYTES = bytes([*range(0x80, 0xA0), *range(0xDC, 0xE0)])
_EXT_BYTES = bytes([0xC7, 0xC8, 0xC9, *range(0xD4, 0xD9)])
_EXT_MARK = 0xC1
_MARKS = bytes(0x90 if b in _CONTAINER_BYTES else _EXT_MARK if b in _EXT_BYTES else b for b in range(256))
_NOT_MARKS = bytes(b for b in range(256) if b not in _CONTAINER_BYTES and b not in _EXT_BYTES)


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
        raise RemoteProtocolError("bad_message", "a frame must hold a map with a string 'type'")
    return msg


def _unpack_message_part(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # noqa: BLE001 -- msgpack raises many types; all mean "bad bytes"
        raise RemoteProtocolError("bad_frame", f"the frame is not valid msgpack ({e})") from None


def _unpack_message(body, max_frame: int) -> dict:
    try:
        msg = _unpackb_within(body, max_frame)
    except Exception as e:  # noqa: BLE001 -- msgpack raises many types; all mean "bad bytes"
        raise RemoteProtocolError("bad_frame", f"the frame is not valid msgpack ({e})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise RemoteProtocolError("bad_message", "a frame must hold a map with a string 'type'")
    return msg


_BIN_WIDTHS = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # bin type byte -> width of its length
# A bin at least this large is worth a view (decode_body); smaller ones copy
# in less time than the view costs to set up.
BULK_VIEW_MIN = 64 * 1024
# Bodies up to this size are unpacked before any scan (_unpack_small): far
# under BULK_VIEW_MIN, so no bulk view is ever wanted of one.
SMALL_BODY = 16 * 1024
# Receive a frame's body in place (FrameDecoder.recv_buffer) when at least this much is due.
RECV_IN_PLACE_MIN = 64 * 1024
