"""The chunk codecs: round trips, garbage in -> CodecError only, capped decompression."""

import struct
import tracemalloc

import lz4.block
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_server import codecs
from rustydb_server.codecs import CodecError, compress, decompress

ALL = ["none", "lz4", "zstd", "snappy"]


@pytest.mark.parametrize("codec", ALL)
@given(data=st.binary(max_size=5000) | st.text(max_size=3000).map(str.encode))
@settings(max_examples=60, deadline=None)
def test_round_trip(codec, data):
    packed = compress(codec, data)
    assert decompress(codec, packed, len(data)) == data
    assert codecs.declared_size(codec, packed) == len(data)


@pytest.mark.parametrize("codec", ALL)
def test_round_trip_memoryview_input(codec):
    data = b"abc" * 10000
    assert decompress(codec, compress(codec, memoryview(data)[100:]), len(data)) == data[100:]


@pytest.mark.parametrize("codec", ["lz4", "zstd", "snappy"])
@given(garbage=st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_garbage_raises_codec_error_only(codec, garbage):
    try:
        out = decompress(codec, garbage, 4096)
    except CodecError:
        return
    assert len(out) <= 4096  # a random input that happens to be valid stays within the cap


@pytest.mark.parametrize("codec", ["lz4", "zstd", "snappy"])
@given(data=st.binary(min_size=1, max_size=2000), pos=st.integers(min_value=0), bit=st.integers(0, 7))
@settings(max_examples=100, deadline=None)
def test_bit_flipped_block_never_exceeds_cap(codec, data, pos, bit):
    packed = bytearray(compress(codec, data))
    packed[pos % len(packed)] ^= 1 << bit
    try:
        out = decompress(codec, bytes(packed), len(data))
    except CodecError:
        return
    assert len(out) <= len(data)  # within the cap; whether the content is right is the container's job


@pytest.mark.parametrize("codec", ["lz4", "zstd", "snappy"])
def test_bomb_is_rejected_before_allocating(codec):
    # 64 MiB of zeros compresses to a few KiB (snappy: 3 MiB); with a 1 MiB
    # cap it must be refused from its declared size, without building the
    # 64 MiB output (tracemalloc sees the bytes objects the libraries create).
    bomb = compress(codec, bytes(64 << 20))
    assert len(bomb) < 4 << 20
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="more than the limit"):
            decompress(codec, bomb, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


def test_lz4_block_that_lies_about_its_size_is_rejected():
    body = lz4.block.compress(b"x" * 100, store_size=False)
    with pytest.raises(CodecError):
        decompress("lz4", struct.pack("<i", 200) + body, 1000)  # says 200, holds 100
    with pytest.raises(CodecError, match="more than the limit"):
        decompress("lz4", struct.pack("<i", 2**31 - 1) + body, 1000)
    with pytest.raises(CodecError, match="negative"):
        decompress("lz4", struct.pack("<i", -5) + body, 1000)
    with pytest.raises(CodecError, match="too short"):
        decompress("lz4", b"\x01\x00", 1000)


def test_zstd_requires_content_size_and_no_trailing_bytes():
    data = b"hello world" * 50
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    with pytest.raises(CodecError, match="content size"):
        decompress("zstd", unsized, 10_000)
    with pytest.raises(CodecError):
        decompress("zstd", compress("zstd", data) + b"\x00\x01", 10_000)


def test_none_codec_cap():
    assert decompress("none", b"abcd", 4) == b"abcd"
    with pytest.raises(CodecError, match="more than the limit"):
        decompress("none", b"abcde", 4)


def test_unknown_codec():
    with pytest.raises(CodecError, match="unknown compression codec 'gzip'"):
        compress("gzip", b"x")
    with pytest.raises(CodecError):
        decompress("brotli", b"x", 10)
