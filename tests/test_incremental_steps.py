"""The incremental entry's stream of steps: cut into bounded pieces, decoded back whole."""

from __future__ import annotations

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from rustydb_server.backup.steps import decode_steps, encode_steps

steps_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("changeset"), st.binary(max_size=300)),
        st.tuples(st.just("ddl"), st.text(max_size=80)),
        st.tuples(st.sampled_from(["create", "drop"]), st.just("")),
    ),
    max_size=12,
)


@given(steps_strategy, st.integers(min_value=1, max_value=120))
def test_pieces_are_bounded_and_decode_to_the_same_steps(steps, chunk):
    pieces = list(encode_steps(steps, chunk))
    assert all(0 < len(p) <= chunk for p in pieces)
    # Byte for byte the plain encoding, only cut differently.
    packer = msgpack.Packer(use_bin_type=True)
    assert b"".join(bytes(p) for p in pieces) == b"".join(packer.pack(list(s)) for s in steps)
    assert [tuple(s) for s in decode_steps(pieces)] == [tuple(s) for s in steps]
    # Only the last piece may be short of the chunk size.
    assert all(len(p) == chunk for p in pieces[:-1])


def test_a_changeset_larger_than_a_frame_is_cut_into_frame_sized_pieces():
    big = bytes(range(256)) * (70_000 // 256 * 64)  # ~4.4 MB
    pieces = list(encode_steps([("ddl", "CREATE TABLE t(x)"), ("changeset", big)], 1 << 20))
    assert len(pieces) == 5 and max(len(p) for p in pieces) == 1 << 20
    assert list(decode_steps(pieces)) == [("ddl", "CREATE TABLE t(x)"), ("changeset", big)]
