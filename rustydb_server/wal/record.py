"""WAL record bodies: what one logical WAL record says, as msgpack bytes.

Pure code: ``encode_record`` turns a record into bytes, ``decode_record``
turns bytes back into a record or raises ``WalRecordError``. The framing
that puts these bodies on disk lives in ``segment.py``.

``encode_record_parts`` gives the same bytes as a list of pieces in which a
large changeset is the caller's own buffer, not a copy: a bulk load's
transaction (a 1M-row changeset is about 46 MB) then goes to the WAL
writer without being copied into a msgpack body first. The bytes on disk
are the same either way, so there is nothing for a reader to tell apart.

Each body is a msgpack map whose key ``"t"`` names the record type; the
other keys are the dataclass fields. Decoding is strict (no unknown or
missing keys, exact types) because a body that decodes "mostly" would let a
damaged record be replayed as something it never was.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import msgpack

from .rows_step import RowsStepError, parse_header


class WalRecordError(ValueError):
    """A WAL record body is malformed."""


Step = tuple[str, str | bytes]

# The largest integer msgpack can carry; checked up front so that encoding
# fails with WalRecordError rather than an OverflowError deep in msgpack.
_MAX_UINT64 = 2**64 - 1


def _check_uint(name: str, value: object) -> None:
    # bool is an int subclass; a True where a txid belongs is a bug, not a 1.
    if type(value) is not int or not 0 <= value <= _MAX_UINT64:
        raise WalRecordError(f"{name} must be an unsigned 64-bit integer, got {value!r}")


def _check_str(name: str, value: object) -> None:
    if type(value) is not str:
        raise WalRecordError(f"{name} must be a string, got {type(value).__name__}")


def _check_step(index: int, step: object) -> None:
    if type(step) is not tuple or len(step) != 2:
        raise WalRecordError(f"step {index} must be a (kind, payload) pair")
    kind, payload = step
    if kind == "ddl":
        if type(payload) is not str:
            raise WalRecordError(f"step {index}: a ddl step carries SQL text")
    elif kind == "changeset":
        if type(payload) is not bytes:
            raise WalRecordError(f"step {index}: a changeset step carries bytes")
    elif kind == "rows":
        try:
            parse_header(payload)
        except RowsStepError as e:
            raise WalRecordError(f"step {index}: {e}") from None
    else:
        raise WalRecordError(f"step {index}: unknown step kind {kind!r}")


@dataclass(frozen=True)
class TxRecord:
    """One committed transaction: its ordered steps: "ddl" (SQL text),
    "changeset" (a session changeset) and "rows" (rows appended to one table,
    as an image: wal/rows_step.py)."""

    txid: int
    commit_time_us: int
    database: str
    steps: tuple[Step, ...]

    def __post_init__(self) -> None:
        # One TxRecord per transaction replayed: the checks below in one
        # expression first; the named checks then say what is wrong.
        txid, time_us, steps = self.txid, self.commit_time_us, self.steps
        if not (
            type(txid) is int
            and 0 <= txid <= _MAX_UINT64
            and type(time_us) is int
            and 0 <= time_us <= _MAX_UINT64
            and type(self.database) is str
            and type(steps) is tuple
        ):
            _check_uint("txid", txid)
            _check_uint("commit_time_us", time_us)
            _check_str("database", self.database)
            if type(steps) is not tuple:
                raise WalRecordError("steps must be a tuple")
        for index, step in enumerate(steps):
            if not (type(step) is tuple and len(step) == 2 and step[0] == "changeset" and type(step[1]) is bytes):
                _check_step(index, step)


@dataclass(frozen=True)
class CheckpointRecord:
    redo_lsn: int
    next_txid: int
    time_us: int

    def __post_init__(self) -> None:
        _check_uint("redo_lsn", self.redo_lsn)
        _check_uint("next_txid", self.next_txid)
        _check_uint("time_us", self.time_us)


@dataclass(frozen=True)
class RestorePointRecord:
    name: str
    time_us: int

    def __post_init__(self) -> None:
        _check_str("name", self.name)
        _check_uint("time_us", self.time_us)


@dataclass(frozen=True)
class DatabaseRecord:
    action: str  # "create" | "drop"
    database: str
    time_us: int

    def __post_init__(self) -> None:
        if self.action not in ("create", "drop"):
            raise WalRecordError(f"database action must be 'create' or 'drop', got {self.action!r}")
        _check_str("database", self.database)
        _check_uint("time_us", self.time_us)


@dataclass(frozen=True)
class EndOfRecoveryRecord:
    timeline: int
    previous_timeline: int
    time_us: int

    def __post_init__(self) -> None:
        _check_uint("timeline", self.timeline)
        _check_uint("previous_timeline", self.previous_timeline)
        _check_uint("time_us", self.time_us)


@dataclass(frozen=True)
class SwitchRecord:
    """Logged by SWITCH WAL just before the writer closes the segment."""

    time_us: int

    def __post_init__(self) -> None:
        _check_uint("time_us", self.time_us)


Record = TxRecord | CheckpointRecord | RestorePointRecord | DatabaseRecord | EndOfRecoveryRecord | SwitchRecord

# Type keys are part of the on-disk format: never reuse or rename one.
_TYPE_KEYS: dict[type, str] = {
    TxRecord: "tx",
    CheckpointRecord: "ckpt",
    RestorePointRecord: "rp",
    DatabaseRecord: "db",
    EndOfRecoveryRecord: "eor",
    SwitchRecord: "switch",
}
_TYPES_BY_KEY = {key: cls for cls, key in _TYPE_KEYS.items()}
_FIELDS = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in _TYPE_KEYS}
_TX_KEYS = frozenset(("t", *_FIELDS[TxRecord]))

# No record has more keys than this, and nesting beyond steps -> step is
# never needed; the limits keep a damaged length from allocating gigabytes.
_MAX_MAP_LEN = 8


def encode_record(rec: Record) -> bytes:
    """Serialize a record body."""
    key = _TYPE_KEYS.get(type(rec))
    if key is None:
        raise WalRecordError(f"not a WAL record: {type(rec).__name__}")
    body: dict[str, object] = {"t": key}
    for name in _FIELDS[type(rec)]:
        value = getattr(rec, name)
        if name == "steps":
            value = [list(step) for step in value]
        body[name] = value
    return msgpack.packb(body, use_bin_type=True)


_BLOB_STEPS = ("changeset", "rows")

#: A changeset (or rows step) at least this large is referenced by encode_record_parts rather
#: than copied (smaller records are cheaper as one piece).
BY_REFERENCE_BYTES = 64 * 1024


def _bin_header(size: int) -> bytes:
    """msgpack's header of a bin value of ``size`` bytes (bin 8, 16 or 32)."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    if size < 1 << 32:
        return b"\xc6" + size.to_bytes(4, "big")
    raise WalRecordError(f"a changeset of {size} bytes is larger than a WAL record can hold (4 GiB)")


def encode_record_parts(rec: Record) -> list[bytes]:
    """The bytes of ``encode_record(rec)`` as pieces to be written one after
    the other; a changeset of BY_REFERENCE_BYTES or more is its own piece,
    the very object the record holds."""
    if type(rec) is not TxRecord or not any(
        kind in _BLOB_STEPS and len(payload) >= BY_REFERENCE_BYTES for kind, payload in rec.steps
    ):
        return [encode_record(rec)]
    packer = msgpack.Packer(use_bin_type=True)  # one per call: a Packer holds a buffer
    pack = packer.pack
    head = bytearray(packer.pack_map_header(1 + len(_FIELDS[TxRecord])))
    head += pack("t") + pack(_TYPE_KEYS[TxRecord])
    head += pack("txid") + pack(rec.txid)
    head += pack("commit_time_us") + pack(rec.commit_time_us)
    head += pack("database") + pack(rec.database)
    head += pack("steps") + packer.pack_array_header(len(rec.steps))
    parts: list[bytes] = []
    for kind, payload in rec.steps:
        head += packer.pack_array_header(2) + pack(kind)
        if kind in _BLOB_STEPS and len(payload) >= BY_REFERENCE_BYTES:
            head += _bin_header(len(payload))
            parts.append(bytes(head))
            parts.append(payload)
            head = bytearray()
        else:
            head += pack(payload)
    if head:
        parts.append(bytes(head))
    return parts


def decode_record(body: bytes) -> Record:
    """Parse a record body; raise WalRecordError for anything malformed."""
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise WalRecordError("a record body must be bytes")
    size = len(body)
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=min(size, _MAX_MAP_LEN),
            max_ext_len=0,
        )
    except Exception as exc:  # noqa: BLE001 - msgpack raises a zoo of types for bad input
        raise WalRecordError(f"record body is not valid msgpack: {exc}") from None
    if type(obj) is not dict:
        raise WalRecordError("record body must be a map")
    if obj.keys() == _TX_KEYS and obj["t"] == "tx":
        # Nearly every record replayed: the same checks as below, fewer steps
        # (TxRecord's own checks still run on its fields).
        return TxRecord(obj["txid"], obj["commit_time_us"], obj["database"], _decode_steps(obj["steps"]))
    cls = _TYPES_BY_KEY.get(obj.get("t")) if type(obj.get("t")) is str else None
    if cls is None:
        raise WalRecordError(f"unknown record type {obj.get('t')!r}")
    fields = _FIELDS[cls]
    keys = set(obj) - {"t"}
    if keys != set(fields):
        missing = sorted(set(fields) - keys)
        extra = sorted(keys - set(fields))
        raise WalRecordError(f"{obj['t']} record has wrong fields (missing {missing}, unexpected {extra})")
    values = {name: obj[name] for name in fields}
    if cls is TxRecord:
        values["steps"] = _decode_steps(values["steps"])
    return cls(**values)


def _decode_steps(raw: object) -> tuple[Step, ...]:
    if type(raw) is not list:
        raise WalRecordError("steps must be an array")
    steps = []
    for index, step in enumerate(raw):
        if type(step) is not list:
            raise WalRecordError(f"step {index} must be an array")
        steps.append(tuple(step))
    return tuple(steps)
