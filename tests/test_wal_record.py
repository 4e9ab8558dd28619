import re

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_server.wal.record import (
    CheckpointRecord,
    DatabaseRecord,
    EndOfRecoveryRecord,
    RestorePointRecord,
    SwitchRecord,
    TxRecord,
    WalRecordError,
    decode_record,
    encode_record,
)

u64 = st.integers(min_value=0, max_value=2**64 - 1)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("ddl"), st.text(max_size=50)),
        st.tuples(st.just("changeset"), st.binary(max_size=100)),
    ),
    max_size=6,
).map(tuple)
records = st.one_of(
    st.builds(TxRecord, u64, u64, st.text(max_size=20), steps),
    st.builds(CheckpointRecord, u64, u64, u64),
    st.builds(RestorePointRecord, st.text(max_size=30), u64),
    st.builds(DatabaseRecord, st.sampled_from(["create", "drop"]), st.text(max_size=20), u64),
    st.builds(EndOfRecoveryRecord, u64, u64, u64),
    st.builds(SwitchRecord, u64),
)


@given(records)
def test_every_record_round_trips(rec):
    assert decode_record(encode_record(rec)) == rec


def test_tx_steps_keep_their_order_and_types():
    rec = TxRecord(
        7,
        1_700_000_000_000_000,
        "shop",
        (("ddl", "CREATE TABLE t(x)"), ("changeset", b"\x01\x02"), ("ddl", "DROP TABLE u")),
    )
    back = decode_record(encode_record(rec))
    assert back.steps == rec.steps
    assert isinstance(back.steps[1][1], bytes) and isinstance(back.steps[0][1], str)


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_only_ever_raise_wal_record_error(data):
    try:
        decode_record(data)
    except WalRecordError:
        pass


@settings(max_examples=300)
@given(records, st.data())
def test_damaged_encodings_only_ever_raise_wal_record_error(rec, data):
    raw = bytearray(encode_record(rec))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    try:
        decode_record(bytes(raw[:cut]))
    except WalRecordError:
        pass


def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


GOOD_TX = {"t": "tx", "txid": 1, "commit_time_us": 2, "database": "d", "steps": [["ddl", "x"]]}


@pytest.mark.parametrize(
    "body, message",
    [
        (pack({**GOOD_TX, "t": "nope"}), "unknown record type"),
        (pack({k: v for k, v in GOOD_TX.items() if k != "t"}), "unknown record type"),
        (pack({**GOOD_TX, "extra": 1}), "unexpected ['extra']"),
        (pack({k: v for k, v in GOOD_TX.items() if k != "txid"}), "missing ['txid']"),
        (pack({**GOOD_TX, "txid": True}), "txid"),
        (pack({**GOOD_TX, "txid": -1}), "txid"),
        (pack({**GOOD_TX, "txid": "1"}), "txid"),
        (pack({**GOOD_TX, "database": b"d"}), "database"),
        (pack({**GOOD_TX, "steps": [["ddl", b"x"]]}), "ddl step carries SQL text"),
        (pack({**GOOD_TX, "steps": [["changeset", "x"]]}), "changeset step carries bytes"),
        (pack({**GOOD_TX, "steps": [["insert", b"x"]]}), "unknown step kind"),
        (pack({**GOOD_TX, "steps": [["ddl"]]}), "(kind, payload) pair"),
        (pack({**GOOD_TX, "steps": "ddl"}), "steps must be an array"),
        (pack({"t": "db", "action": "rename", "database": "d", "time_us": 1}), "action"),
        (pack([1, 2, 3]), "must be a map"),
        (pack(GOOD_TX) + b"\x00", "not valid msgpack"),
        (pack(GOOD_TX)[:-1], "not valid msgpack"),
        (b"\x91" * 5000, "not valid msgpack"),  # nesting bomb
        (b"\xdb\xff\xff\xff\xff", "not valid msgpack"),  # huge claimed string
        (b"", "not valid msgpack"),
    ],
)
def test_malformed_bodies_are_refused(body, message):
    with pytest.raises(WalRecordError, match=re.escape(message)):
        decode_record(body)


def test_records_refuse_bad_fields_at_construction():
    with pytest.raises(WalRecordError):
        TxRecord(1, 2, "d", [("ddl", "x")])  # a list is not the frozen tuple form
    with pytest.raises(WalRecordError):
        CheckpointRecord(2**64, 0, 0)
    with pytest.raises(WalRecordError):
        encode_record({"t": "tx"})
