"""The container format as pure code, bytes only: one chunk record sealed and
opened (round trips, and tampering with any bit or any bound field detected),
the header's core and key wrap, record heads, the footer and entry names."""

import hashlib
import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_server import codecs, crypto
from rustydb_server.container import format as F
from rustydb_server.container.errors import UnsafeEntryNameError, UnsupportedFormatError
from rustydb_server.container.format import (
    FLAG_COMPRESSED,
    FLAG_LAST,
    BackupHeader,
    ChunkContext,
    FormatDamage,
    new_header,
    open_record,
    safe_entry_name,
    seal_record,
)
from rustydb_server.container.writer import BackupWriter
from rustydb_server.crc import crc32c

CORE_HASH = hashlib.sha256(b"a header").digest()
DATA_KEY = crypto.generate_data_key()
NONCE_PREFIX = b"\x01\x02\x03\x04"


def context(codec: str, encrypted: bool, chunk_size: int = 4096) -> ChunkContext:
    if not encrypted:
        return ChunkContext(CORE_HASH, codec, chunk_size, None, None)
    return ChunkContext(CORE_HASH, codec, chunk_size, crypto.cipher_for(DATA_KEY), NONCE_PREFIX)


def seal(ctx, data, *, entry=3, name=b"databases/main.sqlite", chunk=5, seq=17, last=True):
    head, stored = seal_record(ctx, entry, name, chunk, seq, FLAG_LAST if last else 0, data)
    return F.RECORD.unpack(head), bytes(stored)


def reopen(ctx, fields, stored, *, entry=3, name=b"databases/main.sqlite", seq=17):
    """open_record with what a reader takes from the record head and the index."""
    _magic, flags, _r, _e, chunk, raw_len, _stored_len, check, _crc = fields
    return open_record(ctx, entry, name, chunk, seq, flags, raw_len, check, stored)


records = st.fixed_dictionaries(
    {
        "codec": st.sampled_from(codecs.CODECS),
        "encrypted": st.booleans(),
        "data": st.binary(max_size=3000) | st.binary(min_size=1, max_size=40).map(lambda b: b * 50),
        "last": st.booleans(),
    }
)


# -- one chunk record ---------------------------------------------------------------


@given(records)
@settings(max_examples=200, deadline=None)
def test_a_sealed_record_opens_to_its_data(r):
    ctx = context(r["codec"], r["encrypted"])
    fields, stored = seal(ctx, r["data"], last=r["last"])
    magic, flags, reserved, entry, chunk, raw_len, stored_len, _check, head_crc = fields
    assert (magic, reserved, entry, chunk, raw_len, stored_len) == (b"CK", 0, 3, 5, len(r["data"]), len(stored))
    assert bool(flags & FLAG_LAST) == r["last"]
    assert head_crc == crc32c(F.RECORD.pack(*fields)[: F.RECORD_CRC_SPAN])
    if flags & FLAG_COMPRESSED:
        assert len(stored) - (crypto.TAG_SIZE if r["encrypted"] else 0) < len(r["data"])
    assert reopen(ctx, fields, stored) == r["data"]


@given(records, st.data())
@settings(max_examples=200, deadline=None)
def test_any_flipped_bit_of_a_record_is_detected(r, data):
    """Encrypted, every change fails; unencrypted, a change either fails or
    decodes to the very same bytes (compressed data can have equivalent forms)."""
    ctx = context(r["codec"], r["encrypted"])
    fields, stored = seal(ctx, r["data"], last=r["last"])
    if not stored:
        return
    bit = data.draw(st.integers(0, len(stored) * 8 - 1))
    damaged = bytearray(stored)
    damaged[bit // 8] ^= 1 << (bit % 8)
    try:
        got = reopen(ctx, fields, bytes(damaged))
    except FormatDamage:
        return
    assert not r["encrypted"] and got == r["data"]


BOUND_FIELDS = {
    "entry index": {"entry": 4},
    "entry name": {"name": b"databases/other.sqlite"},
    "chunk index": {"chunk": 6},
    "last-chunk flag": {"flags": FLAG_LAST},
    "raw length": {"raw_len": 1},
}


@pytest.mark.parametrize("field", sorted(BOUND_FIELDS))
@given(r=records)
@settings(max_examples=60, deadline=None)
def test_a_record_opened_as_another_place_fails(field, r):
    """A record moved to another entry, position or end-of-entry mark fails to
    open there, encrypted or not (the AAD, or the checksum over it, binds them)."""
    ctx = context(r["codec"], r["encrypted"])
    fields, stored = seal(ctx, r["data"], last=r["last"])
    _magic, flags, _r, entry, chunk, raw_len, _sl, check, _crc = fields
    where = {"entry": entry, "name": b"databases/main.sqlite", "chunk": chunk, "flags": flags, "raw_len": raw_len}
    change = BOUND_FIELDS[field]
    moved = {k: (where[k] ^ v if k == "flags" else v) for k, v in change.items()}
    if moved.get("raw_len") == raw_len:
        moved["raw_len"] = raw_len + 1
    w = {**where, **moved}
    with pytest.raises(FormatDamage):
        open_record(ctx, w["entry"], w["name"], w["chunk"], 17, w["flags"], w["raw_len"], check, stored)


@given(data=st.binary(max_size=2000), seq=st.integers(0, 2**63))
@settings(max_examples=50, deadline=None)
def test_an_encrypted_record_is_bound_to_its_position_in_the_backup(data, seq):
    ctx = context("lz4", True)
    fields, stored = seal(ctx, data, seq=seq)
    assert reopen(ctx, fields, stored, seq=seq) == data
    with pytest.raises(FormatDamage, match="authentication"):
        reopen(ctx, fields, stored, seq=seq + 1)
    other = ChunkContext(CORE_HASH, "lz4", 4096, crypto.cipher_for(crypto.generate_data_key()), NONCE_PREFIX)
    with pytest.raises(FormatDamage, match="authentication"):
        reopen(other, fields, stored, seq=seq)


def test_a_record_that_decompresses_past_the_chunk_size_is_refused():
    ctx = context("zstd", False, chunk_size=4096)
    bomb = codecs.compress("zstd", bytes(1 << 20))
    aad = F.chunk_aad(CORE_HASH, 0, 0, FLAG_LAST | FLAG_COMPRESSED, 4096, b"e")
    with pytest.raises(FormatDamage, match="more than the limit of 4096"):
        open_record(ctx, 0, b"e", 0, 0, FLAG_LAST | FLAG_COMPRESSED, 4096, crc32c(bomb, crc32c(aad)), bomb)


# -- header, key wrap, footer ----------------------------------------------------------

headers = st.builds(
    BackupHeader,
    backup_id=st.uuids().map(str),
    backup_type=st.sampled_from(list(F.BackupType)),
    created_us=st.integers(0, 2**62),
    server_version=st.text(max_size=10),
    system_id=st.text(max_size=20),
    start_lsn=st.just(0),
    end_lsn=st.integers(0, 2**63),
    timeline=st.integers(1, 2**31),
    parent_id=st.none() | st.uuids().map(str),
    base_full_id=st.none() | st.uuids().map(str),
    databases=st.lists(
        st.fixed_dictionaries(
            {
                "name": st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True),  # database names
                "tables": st.lists(st.fixed_dictionaries({"name": st.text(max_size=8), "rows": st.integers(0, 99)})),
                "size_bytes": st.integers(0, 2**40),
            }
        ),
        max_size=3,
    ),
    extra=st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5), max_size=3),
    compression=st.sampled_from(codecs.CODECS),
    chunk_size=st.integers(1, F.MAX_CHUNK_SIZE),
)


@given(headers)
@settings(max_examples=100, deadline=None)
def test_a_header_core_parses_back_to_its_header(header):
    core = F.pack_msgpack(F.header_core(header, None))
    parsed = F.parse_header(core, b"", F.FORMAT_VERSION)
    assert parsed.header == header and parsed.nonce_prefix is None and parsed.key_params is None
    with pytest.raises(ValueError, match="format field"):
        F.parse_header(core, b"", 1)


@given(headers, st.sampled_from([2, 3]))
@settings(max_examples=20, deadline=None)
def test_a_key_wrap_opens_only_under_its_header_and_parameters(header, version):
    core = F.pack_msgpack(F.header_core(header, NONCE_PREFIX, version))
    core_hash = F.hash_core(core, version)
    kek = crypto.generate_data_key()
    params = {"kdf": "keyfile", "fingerprint": crypto.key_fingerprint(kek)}
    parsed = F.parse_header(core, F.pack_keywrap(core_hash, params, kek, DATA_KEY, version), version)
    assert parsed.nonce_prefix == NONCE_PREFIX and parsed.key_params == params
    assert parsed.header.encryption == {"cipher": crypto.CIPHER, **params}
    assert F.unwrap_data_key(kek, parsed.wrapped_key, core_hash, parsed.params_bytes, version) == DATA_KEY
    for other_hash, other_params in ((F.hash_core(core + b"x", version), parsed.params_bytes), (core_hash, b"")):
        with pytest.raises(crypto.WrongKeyError):
            F.unwrap_data_key(kek, parsed.wrapped_key, other_hash, other_params, version)
    with pytest.raises(ValueError, match="no wrapped key"):
        F.parse_header(core, b"", version)


def test_an_unencrypted_header_carrying_key_material_is_refused():
    header = BackupHeader("6f1c2a4e-0b7d-4c59-9a3e-2d8f5e7b1c90", "full", 0)
    core = F.pack_msgpack(F.header_core(header, None))
    with pytest.raises(ValueError, match="carries key material"):
        F.parse_header(core, F.pack_msgpack({"params": b"", "wrapped_key": b""}), F.FORMAT_VERSION)


@given(st.binary(max_size=100), st.binary(max_size=100), st.sampled_from([1, 2]))
def test_packed_header_prefix_and_checksum(core, keywrap, version):
    head = F.pack_header(core, keywrap, version)
    assert F.PREFIX.unpack_from(head) == (F.MAGIC, version, 0, len(core), len(keywrap))
    assert head[F.PREFIX.size : -F.HEADER_SUM_SIZE] == core + keywrap
    assert head[-F.HEADER_SUM_SIZE :] == hashlib.sha256(head[: -F.HEADER_SUM_SIZE]).digest()


@given(
    st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.binary(min_size=32, max_size=32)
)
def test_packed_footer_fields_and_checksum(index_offset, index_len, index_crc, digest):
    footer = F.pack_footer(index_offset, index_len, index_crc, digest)
    assert len(footer) == F.FOOTER.size == 64
    fields = F.FOOTER.unpack(footer)
    assert fields == (index_offset, index_len, index_crc, digest, 0, crc32c(footer[: F.FOOTER_CRC_SPAN]), F.END_MAGIC)
    assert struct.unpack(">I", footer[52:56])[0] == crc32c(footer[:52])


def test_chunk_aad_layout():
    aad = F.chunk_aad(CORE_HASH, 1, 2, FLAG_LAST, 3, "é".encode())
    assert aad == b"C" + CORE_HASH + struct.pack(">IIBI", 1, 2, FLAG_LAST, 3) + "é".encode()
    assert F.index_aad(CORE_HASH) == b"I" + CORE_HASH
    assert F.wrap_aad(CORE_HASH, b"p") == b"RDBBAK01 wrap" + CORE_HASH + b"p"


# -- record heads, index, prefix -----------------------------------------------------------


@given(
    entry=st.integers(0, 2**32 - 1),
    chunk=st.integers(0, 2**32 - 1),
    raw_len=st.integers(0, 1024),
    compressed=st.booleans(),
    encrypted=st.booleans(),
)
def test_a_record_head_unpacks_where_it_belongs_and_nowhere_else(entry, chunk, raw_len, compressed, encrypted):
    flags = FLAG_LAST | (FLAG_COMPRESSED if compressed else 0)
    stored_len = raw_len + (crypto.TAG_SIZE if encrypted else 0)
    head = F.pack_record(flags, entry, chunk, raw_len, stored_len, 0xDEADBEEF)
    where = {"last": True, "chunk_size": 1024, "encrypted": encrypted}
    assert F.unpack_record_head(head, entry, chunk, **where) == F.RecordHead(flags, raw_len, stored_len, 0xDEADBEEF)
    with pytest.raises(FormatDamage, match="reordered, duplicated or dropped"):
        F.unpack_record_head(head, entry ^ 1, chunk, **where)
    with pytest.raises(FormatDamage, match="last-chunk mark"):
        F.unpack_record_head(head, entry, chunk, **{**where, "last": False})
    for byte in range(F.RECORD.size):
        damaged = bytearray(head)
        damaged[byte] ^= 0x10
        with pytest.raises(FormatDamage, match="header checksum mismatch"):
            F.unpack_record_head(bytes(damaged), entry, chunk, **where)


def test_record_heads_with_impossible_sizes_are_refused():
    for raw_len, stored_len, last in ((1025, 10, True), (1000, 1000, False), (10, 1024 + 17, True)):
        head = F.pack_record(FLAG_LAST if last else 0, 0, 0, raw_len, stored_len, 0)
        with pytest.raises(FormatDamage, match="chunk sizes impossible"):
            F.unpack_record_head(head, 0, 0, last=last, chunk_size=1024, encrypted=True)


index_entries = st.lists(
    st.tuples(st.sampled_from(["a", "b/c", "databases/x.sqlite", "wal/1"]), st.integers(1, 5), st.integers(0, 99)),
    max_size=4,
    unique_by=lambda e: e[0],
)


def build_index(spec, chunk_size=100, digest_size=16):
    entries, offset = [], 0
    for name, chunks, extra in spec:
        span = chunks * F.RECORD.size + extra
        raw = (chunks - 1) * chunk_size + min(extra, chunk_size)
        entries.append(F.IndexEntry(name, offset, span, chunks, raw, bytes(range(digest_size))))
        offset += span
    return entries


@given(index_entries, st.sampled_from([1, 2]))
def test_an_index_parses_back_to_its_entries(spec, version):
    entries = build_index(spec, digest_size=32 if version == 1 else 16)
    packed = F.pack_index(entries, version)
    assert F.parse_index(packed, version, 100) == entries
    assert F.unpack_msgpack(packed)["chunks"] == sum(chunks for _, chunks, _ in spec)


def test_an_index_whose_entries_do_not_follow_each_other_is_refused():
    a, b = build_index([("a", 2, 5), ("b", 1, 0)])
    cases = {
        "does not follow the previous one": [a, F.IndexEntry("b", b.offset + 1, b.span, 1, 0, b.digest)],
        "raw size does not fit the chunk count": [a, F.IndexEntry("b", b.offset, b.span, 1, 101, b.digest)],
        "lists entry 'a' twice": [a, F.IndexEntry("a", b.offset, b.span, 1, 0, b.digest)],
        "unsafe entry name": [a, F.IndexEntry("../b", b.offset, b.span, 1, 0, b.digest)],
    }
    for reason, entries in cases.items():
        with pytest.raises(FormatDamage, match=reason) as exc:
            F.parse_index(F.pack_index(entries), 2, 100)
        assert exc.value.entry in (None, entries[1].name)
    packed = F.unpack_msgpack(F.pack_index([a, b]))
    packed["chunks"] += 1
    with pytest.raises(FormatDamage, match="chunk total"):
        F.parse_index(F.pack_msgpack(packed), 2, 100)


def test_an_encrypted_index_opens_only_under_its_header():
    ctx = context("none", True)
    sealed = F.seal_index(ctx, b"index bytes")
    assert sealed != b"index bytes" and F.open_index(ctx, sealed) == b"index bytes"
    other = ChunkContext(hashlib.sha256(b"another header").digest(), "none", 4096, ctx.aead, NONCE_PREFIX)
    with pytest.raises(FormatDamage, match="index failed authentication"):
        F.open_index(other, sealed)
    assert F.seal_index(context("none", False), b"plain") == b"plain"


def test_prefix_footer_and_header_sum_damage_is_named():
    head = F.pack_header(b"core", b"", 2)
    assert F.unpack_prefix(head[: F.PREFIX.size]) == (2, 4, 0)
    with pytest.raises(FormatDamage, match="bad magic"):
        F.unpack_prefix(b"X" + head[1 : F.PREFIX.size])
    with pytest.raises(FormatDamage, match="impossible header length"):
        F.unpack_prefix(F.PREFIX.pack(F.MAGIC, 2, 0, F.MAX_HEADER_PART + 1, 0))
    F.check_header_sum(head, 2)
    F.check_header_sum(F.pack_header(b"core", b"", 3), 3)
    with pytest.raises(UnsupportedFormatError, match="backup format 4, newer than this RustyDB reads"):
        F.check_header_sum(F.pack_header(b"core", b"", 4), 4)
    with pytest.raises(FormatDamage, match=r"header checksum mismatch \(format version reads 4\)"):
        F.check_header_sum(head[:8] + b"\x00\x04" + head[10:], 4)
    with pytest.raises(FormatDamage, match=r"header checksum mismatch$"):
        F.check_header_sum(head[:-1] + bytes([head[-1] ^ 1]), 2)
    footer = F.pack_footer(10, 20, 30, bytes(32))
    assert F.unpack_footer(footer) == F.Footer(10, 20, 30, bytes(32))
    with pytest.raises(FormatDamage, match="no end marker"):
        F.unpack_footer(footer[:-1] + b"X")
    with pytest.raises(FormatDamage, match="footer checksum mismatch"):
        F.unpack_footer(b"\x01" + footer[1:])


# -- entry names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "../x",
        "a/../../x",
        "a//b",
        "a/",
        "",
        ".",
        "a/./b",
        "a\\b",
        "C:\\x",
        "a\x00b",
        "a\nb",
        "..",
        "x/..",
    ],
)
def test_unsafe_entry_names_rejected(name):
    with pytest.raises(UnsafeEntryNameError):
        safe_entry_name(name)
    w = BackupWriter(io.BytesIO(), new_header("full"))
    with pytest.raises(UnsafeEntryNameError):
        w.begin_entry(name)


def test_safe_entry_names_accepted():
    for name in ["databases/main.sqlite", "wal/0000000100000000000000A1", "manifest", "a.b/c-d_e", "é/ü"]:
        assert safe_entry_name(name) == name
