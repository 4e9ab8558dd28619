"""The WAL readers under any segment bytes: the contract fuzz/wal.py states, checked with hypothesis.

Only WalCorruptError (WalRecordError for a record body); the readers agree
with each other; reading up to the end find_wal_end found gives the same
records without an error. Seeds are segments written by the real WalWriter.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import wal
from rustydb_server.wal.reader import read_wal
from rustydb_server.wal.record import decode_record
from tests.support.mutations import mutated

SEEDS = wal.seeds()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_seeds_read_back_as_written():
    for seed in SEEDS:
        wal.check(seed)
    wal.check(SEEDS[1])  # both segments, as the writer left them
    entries = list(read_wal(wal._workdir, timeline=1, segment_size=wal.SIZE, start_lsn=wal.START_LSN))
    assert len(entries) == 5
    assert decode_record(entries[0].body).txid == 1
    assert entries[3].body == b"\xaa" * 5000  # the record spanning both segments
    assert decode_record(entries[4].body).steps == (("changeset", b"x"),)
    assert entries[3].lsn // wal.SIZE == wal.FIRST_SEGNO and entries[4].lsn // wal.SIZE == wal.FIRST_SEGNO + 1
    assert os.listdir(wal._workdir)


@SETTINGS
@given(st.binary(max_size=3000))
def test_any_bytes_keep_the_contract(data):
    wal.check(data)


@SETTINGS
@given(mutated(SEEDS))
def test_damaged_segments_keep_the_contract(data):
    wal.check(data)


@SETTINGS
@given(mutated([bytes([seed[0] | 1]) + seed[1:] for seed in SEEDS]))
def test_damaged_segments_with_valid_checksums_keep_the_contract(data):
    """Checksums made right after the damage: the framing logic itself is tested."""
    wal.check(data)
