"""The wire protocol under any bytes: the contracts fuzz/frames.py and fuzz/connection.py state.

Frames: only RemoteProtocolError, the same messages whatever the pieces and
with or without bulk views, and every message re-encodes to itself.
Connections: receive_data never raises, next_event only RemoteProtocolError
(the same one again after), and the replies a side owes can be sent.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import connection, frames
from tests.support.mutations import mutated

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FRAME_SEEDS = frames.seeds()
CONNECTION_SEEDS = connection.seeds()


def test_the_seeds_keep_the_contract():
    for seed in FRAME_SEEDS:
        frames.check(seed)
    for seed in CONNECTION_SEEDS:
        connection.check(seed)


def test_a_seed_frame_decodes_to_its_message():
    messages, error = frames._decode(FRAME_SEEDS[0][1:], 3, True)
    assert error is None
    assert messages == [{"type": "hello", "version": 1, "user": "alice", "database": "main", "client": "rusty-db-cli"}]


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes_as_frames_keep_the_contract(data):
    frames.check(data)


@SETTINGS
@given(mutated(FRAME_SEEDS))
def test_damaged_frames_keep_the_contract(data):
    frames.check(data)


@SETTINGS
@given(st.binary(max_size=2000))
def test_any_bytes_to_either_side_keep_the_contract(data):
    connection.check(data)


@SETTINGS
@given(mutated(CONNECTION_SEEDS))
def test_damaged_conversations_keep_the_contract(data):
    connection.check(data)
