"""Hypothesis strategies that damage valid inputs: bytes changed, cut, inserted, removed."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """One of ``seeds`` with a few random edits (the first byte, a harness's mode, kept)."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        if len(data) < 2:
            break
        at = draw(st.integers(1, len(data) - 1))
        edit = draw(st.sampled_from(["set", "flip", "cut", "insert", "delete"]))
        if edit == "set":
            data[at] = draw(st.integers(0, 255))
        elif edit == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "cut":
            del data[at:]
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)
