"""The frame codec: any bytes fed to a FrameDecoder, in any pieces.

Contract: only RemoteProtocolError; the same messages (or the same error)
whatever the pieces and whether a large bin comes back as a view; every
message taken re-encodes to a frame that decodes to it again.
"""

from __future__ import annotations

import msgpack

from rustydb_client.protocol import events as ev
from rustydb_client.protocol.errors import RemoteProtocolError
from rustydb_client.protocol.frames import FrameDecoder, encode_bulk_frame, encode_frame
from rustydb_client.protocol.messages import message_of

MAX_FRAME = 1 << 20


def _decode(data: bytes, cut: int, bulk_views: bool) -> tuple[list[dict], str | None]:
    """Every message the bytes hold, fed ``cut`` bytes at a time, and the error code that ended them."""
    decoder = FrameDecoder(MAX_FRAME)
    out: list[dict] = []
    try:
        for i in range(0, len(data), cut):
            decoder.feed(data[i : i + cut])
            while (msg := decoder.next_message(bulk_views=bulk_views)) is not None:
                out.append({k: bytes(v) if isinstance(v, memoryview) else v for k, v in msg.items()})
    except RemoteProtocolError as e:
        return out, e.code
    return out, None


def _packed(msgs: list[dict]) -> list[bytes]:
    # Compared packed: NaN != NaN, but it packs the same.
    return [msgpack.packb(m, use_bin_type=True) for m in msgs]


def check(data: bytes) -> None:
    cut = 1 + (data[0] if data else 0) % 64
    body = data[1:]
    whole = _decode(body, max(len(body), 1), False)
    pieces = _decode(body, cut, True)
    assert _packed(whole[0]) == _packed(pieces[0]) and whole[1] == pieces[1], (whole, pieces)
    for msg in whole[0]:
        again, error = _decode(encode_frame(msg, max_frame=MAX_FRAME), 1 << 30, False)
        assert error is None and _packed(again) == _packed([msg]), (msg, again, error)


def seeds() -> list[bytes]:
    events = [
        ev.Hello("alice", "main", "rusty-db-cli"),
        ev.Query("SELECT 1; -- x", 100),
        ev.Rows([[1, 2.5, "x", b"\x00", None]]),
        ev.Complete("SELECT 1", 1, "main", False),
        ev.Error("sql_error", "no such table: t", False, 3),
        ev.BackupHeader({"backup_id": "b1", "databases": [{"name": "main"}]}),
    ]
    frames = [encode_frame(message_of(e)) for e in events]
    head, data = encode_bulk_frame({"type": "backup_data", "entry": "e", "last": True}, "data", b"z" * 300)
    frames.append(head + data)
    out = [bytes([7]) + f for f in frames]
    out.append(bytes([3]) + b"".join(frames))
    return out


if __name__ == "__main__":
    from fuzz.harness import main

    main(check, seeds)
