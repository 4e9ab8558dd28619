"""The structure check that runs on a frame's msgpack bytes before any object is built.

Depth, container sizes, the total number of values, ext types and truncation
are all checked by walking the bytes, so a small frame that would inflate into
millions of Python objects (or nest deeper than any recursion) is refused for
the price of reading it once.
"""

from __future__ import annotations

from .errors import RemoteProtocolError

MAX_CONTAINER_LEN = 1_000_000
MAX_DEPTH = 8

# Byte -> bytes to skip for the fixed-size msgpack formats; the scan only
# needs to know how far to skip and whether a container opens.
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
                raise RemoteProtocolError("frame_too_complex", f"a message holds more than {max_items} values")
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
                    raise RemoteProtocolError(
                        "frame_too_complex",
                        f"a container of {entries} entries exceeds {MAX_CONTAINER_LEN}",
                    )
                count = entries * per_entry
            else:  # 0xC1 (never used) and every ext type
                raise RemoteProtocolError("bad_frame", f"unsupported msgpack type byte 0x{b:02x}")
            if count >= 0:
                if len(stack) > max_depth:
                    raise RemoteProtocolError("frame_too_deep", f"a message is nested deeper than {max_depth} levels")
                # Every entry takes at least one byte: a count beyond what is
                # left is a lie, refuse it before trusting it.
                if count > n - pos:
                    raise IndexError
                stack.append(count)
    except IndexError:
        raise RemoteProtocolError("bad_frame", "the frame ends in the middle of a value") from None
    if pos > n:
        raise RemoteProtocolError("bad_frame", "the frame ends in the middle of a value")
    if pos < n:
        raise RemoteProtocolError("bad_frame", "the frame holds bytes after its message")
    return (prev_top, last_top) if prev_top >= 0 else None
