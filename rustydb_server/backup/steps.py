"""The entry an incremental or differential backup stores per database.

``incremental/<db>.steps``: a sequence of msgpack arrays ``[kind, payload]``
with kind "create" (the database was created in the range), "drop", "ddl"
(SQL text) or "changeset" (bytes), in the order they are applied. Plain code
over bytes, shared by the server that writes the entry and the tools that
apply it (which so never import the server).
"""

from __future__ import annotations

from collections.abc import Iterator

import msgpack

KINDS = ("create", "drop", "ddl", "changeset")


def steps_entry(database_name: str) -> str:
    return f"incremental/{database_name}.steps"


#: The entry's bytes are handed on in pieces of about this size (each becomes
#: one frame on the wire, which has a size limit, and one chunk in the file).
STEPS_CHUNK = 1024 * 1024


def encode_steps(steps: list[tuple[str, object]], chunk: int = STEPS_CHUNK) -> Iterator[bytes]:
    """The steps as msgpack ``[kind, payload]`` arrays, cut into pieces of
    ``chunk`` bytes (the last one shorter) wherever they fall: one table's net
    changes can be far larger than a frame may be, and small steps share a piece."""
    # Imported here: the server, which encodes, has the protocol loaded; the
    # tools only decode and would pay for its import at every start.
    from rustydb_client.protocol.frames import bin_header

    packer = msgpack.Packer(use_bin_type=True)

    def encoded():
        for kind, payload in steps:
            if isinstance(payload, bytes) and len(payload) >= chunk:
                # A large changeset is not copied into its encoding: the head
                # (array, kind, bin length), then the payload itself.
                yield packer.pack_array_header(2) + packer.pack(kind) + bin_header(len(payload))
                yield payload
            else:
                yield packer.pack([kind, payload])

    return _rechunk(encoded(), chunk)


def _rechunk(pieces, size: int) -> Iterator[bytes]:
    """Byte strings regrouped into ``size``-byte pieces; large ones sliced, not copied."""
    pending = bytearray()
    for piece in pieces:
        view = memoryview(piece)
        if pending:
            take = view[: size - len(pending)]
            pending += take
            view = view[len(take) :]
            if len(pending) < size:
                continue
            yield bytes(pending)
            pending = bytearray()
        while len(view) >= size:
            yield view[:size]
            view = view[size:]
        pending += view
    if pending:
        yield bytes(pending)


def decode_steps(data_chunks) -> Iterator[tuple[str, object]]:
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=1 << 31)
    for chunk in data_chunks:
        unpacker.feed(chunk)
        for item in unpacker:
            if not isinstance(item, list) or len(item) != 2 or item[0] not in KINDS:
                raise ValueError("malformed incremental step")
            yield item[0], item[1]
