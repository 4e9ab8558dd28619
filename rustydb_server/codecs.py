"""Chunk compression codecs: "none", "lz4", "zstd" and "snappy".

Bytes in, bytes out. Decompression always takes a ``max_size`` and checks the
size a compressed block *declares* before allocating anything, so a small
damaged or hostile block cannot make us allocate gigabytes (a "decompression
bomb"); anything that does not decode to at most ``max_size`` bytes raises
``CodecError``, and nothing else escapes for bad input.

Formats (as produced here, and the only ones accepted):

- lz4:    an LZ4 block with lz4's 4-byte little-endian size prefix
          (``lz4.block`` with ``store_size=True``). Block, not frame: no frame
          headers or checksums per chunk, the container checksums already.
- zstd:   one zstd frame that records its content size; no trailing bytes.
- snappy: raw snappy (its varint length preamble is the declared size).
"""

from __future__ import annotations

import struct
import threading
from typing import TYPE_CHECKING

import lz4.block

if TYPE_CHECKING:
    import zstandard

CODECS = ("none", "lz4", "zstd", "snappy")

ZSTD_LEVEL = 3


class CodecError(ValueError):
    """Data that does not decompress, or would exceed its size limit."""


# zstandard and cramjam are imported on first use (part of every tool's
# start-up otherwise): lz4, the default, needs neither.
def _zstandard():
    import zstandard

    return zstandard


def _snappy():
    import cramjam

    return cramjam.snappy


# zstd (de)compressor objects are not thread-safe but are costly enough to be
# worth keeping; one per thread.
_local = threading.local()


def _zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    cache = getattr(_local, "zc", None)
    if cache is None:
        cache = _local.zc = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = _zstandard().ZstdCompressor(level=level, write_content_size=True)
    return comp


def _zstd_decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "zd", None)
    if dec is None:
        dec = _local.zd = _zstandard().ZstdDecompressor()
    return dec


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise CodecError(f"unknown compression codec {codec!r} (expected one of {', '.join(CODECS)})")
    return codec


def compress(codec: str, data: bytes | memoryview, level: int | None = None) -> bytes:
    """Compress ``data`` with ``codec``; ``level`` applies to zstd only."""
    check_codec(codec)
    if codec == "none":
        return bytes(data)
    if codec == "lz4":
        return lz4.block.compress(data, store_size=True)
    if codec == "zstd":
        return _zstd_compressor(ZSTD_LEVEL if level is None else level).compress(data)
    return bytes(_snappy().compress_raw(bytes(data) if isinstance(data, memoryview) else data))


def declared_size(codec: str, data: bytes | memoryview) -> int:
    """The decompressed size a block claims, read from its header alone."""
    check_codec(codec)
    if codec == "none":
        return len(data)
    if codec == "lz4":
        if len(data) < 4:
            raise CodecError("lz4 block too short for its size prefix")
        (size,) = struct.unpack_from("<i", data, 0)
        if size < 0:
            raise CodecError("lz4 block declares a negative size")
        return size
    if codec == "zstd":
        zstandard = _zstandard()
        try:
            size = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd frame header invalid: {exc}") from None
        if size < 0:
            # We always write the content size; a frame without one is not ours.
            raise CodecError("zstd frame does not declare its content size")
        return size
    try:
        return _snappy().decompress_raw_len(bytes(data))
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise CodecError(f"snappy header invalid: {exc}") from None


def decompress(codec: str, data: bytes | memoryview, max_size: int) -> bytes:
    """Decompress ``data``; raise CodecError if it is invalid or larger than ``max_size``."""
    size = declared_size(codec, data)
    if size > max_size:
        raise CodecError(f"{codec} block declares {size} bytes, more than the limit of {max_size}")
    try:
        if codec == "none":
            out = bytes(data)
        elif codec == "lz4":
            # lz4 allocates exactly the (already checked) prefix size and fails
            # if the block decodes to any other length.
            out = lz4.block.decompress(data)
        elif codec == "zstd":
            # The frame's content size is checked above; zstd decodes into a
            # buffer of exactly that size and rejects trailing bytes.
            out = _zstd_decompressor().decompress(data, allow_extra_data=False)
        else:
            out = bytes(_snappy().decompress_raw(bytes(data) if isinstance(data, memoryview) else data))
    except CodecError:
        raise
    except Exception as exc:  # each library has its own error type
        raise CodecError(f"{codec} data is corrupt: {exc}") from None
    if len(out) != size:
        raise CodecError(f"{codec} block decoded to {len(out)} bytes, declared {size}")
    return out
