"""Writing and reading the backup container, bytes only: round trips, and every kind of damage detected and named."""

import hashlib
import io
import os
import random
import struct

import crc32c
import msgpack
import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rustydb_server.container import format as F
from rustydb_server.container import reader as reader_module
from rustydb_server.container.errors import BackupCorruptError, BackupError, UnsupportedFormatError
from rustydb_server.container.format import BackupHeader, new_header
from rustydb_server.container.reader import BackupReader, EntryReader
from rustydb_server.container.writer import BackupWriter
from rustydb_server.crypto import WrongKeyError
from rustydb_server.keys import KeyFileSource, NoKeyError, PassphraseSource

FAST = {"n": 2**10, "r": 8, "p": 1}
KEY = KeyFileSource(os.urandom(32), "/keys/a.key")
OTHER_KEY = KeyFileSource(os.urandom(32), "/keys/b.key")
DBS = [{"name": "main", "tables": [{"name": "accounts", "rows": 10}, {"name": "t2", "rows": 0}], "size_bytes": 4096}]


def file_digest(data: bytes) -> bytes:
    """The footer's digest in format 2: XXH3-128, then 16 zero bytes."""
    return xxhash.xxh3_128(data).digest() + bytes(16)


def key_for(mode):
    return {"plain": None, "keyfile": KEY, "passphrase": PassphraseSource("pw", **FAST)}[mode]


def make_backup(entries, *, key=None, codec="lz4", chunk_size=256, threads=1, header=None):
    buf = io.BytesIO()
    w = BackupWriter(
        buf, header or new_header("full", databases=DBS), key=key, codec=codec, chunk_size=chunk_size, threads=threads
    )
    for name, parts in entries:
        w.begin_entry(name)
        for part in parts:
            w.write(part)
        w.end_entry()
    summary = w.finish()
    data = buf.getvalue()
    assert summary.size_bytes == len(data)
    assert bytes.fromhex(summary.digest) == file_digest(data[: -F.FOOTER.size])
    return data


def read_all(data, key=None, threads=1):
    r = BackupReader(io.BytesIO(data), key=key)
    return {e.name: b"".join(r.read_entry(e.name, threads=threads)) for e in r.entries()}


# -- round trips ----------------------------------------------------------------

entry_lists = st.lists(
    st.tuples(
        st.sampled_from(["databases/main.sqlite", "wal/0001", "manifest", "a/b/c", "x.y"]),
        st.lists(st.binary(max_size=700) | st.binary(max_size=50).map(lambda b: b * 20), max_size=5),
    ),
    max_size=4,
    unique_by=lambda e: e[0],
)


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd", "snappy"])
@pytest.mark.parametrize("mode", ["plain", "keyfile", "passphrase"])
@given(entries=entry_lists, chunk_size=st.sampled_from([1, 7, 64, 256, 1000]), threads=st.sampled_from([1, 2]))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip(codec, mode, entries, chunk_size, threads):
    key = key_for(mode)
    data = make_backup(entries, key=key, codec=codec, chunk_size=chunk_size, threads=threads)
    r = BackupReader(io.BytesIO(data), key=key)
    assert [e.name for e in r.entries()] == [n for n, _ in entries]
    for (name, parts), info in zip(entries, r.entries()):
        want = b"".join(parts)
        assert b"".join(r.read_entry(name, threads=threads)) == want
        assert info.raw_size == len(want) and info.digest == xxhash.xxh3_128(want).hexdigest()
        assert info.chunks == max(1, -(-len(want) // chunk_size))
    report = r.verify(threads=threads)
    assert report.encrypted == (key is not None) and report.encryption_ok == (key is not None)
    assert report.raw_bytes == sum(len(b"".join(p)) for _, p in entries)


def test_header_round_trip_and_info_needs_no_key():
    h = new_header(
        "incremental",
        databases=DBS,
        parent_id="p-1",
        base_full_id="f-1",
        start_lsn=10,
        end_lsn=99,
        timeline=2,
        server_version="0.1.0",
        system_id="sys",
        extra={"k": [1, "v"]},
    )
    data = make_backup([("m", [b"x"])], key=KEY, codec="zstd", chunk_size=4096, header=h)
    got = BackupReader(io.BytesIO(data)).header  # no key
    assert got.backup_id == h.backup_id and got.backup_type == "incremental"
    assert (got.parent_id, got.base_full_id, got.start_lsn, got.end_lsn, got.timeline) == ("p-1", "f-1", 10, 99, 2)
    assert got.databases == DBS and got.table_count == 2 and got.extra == {"k": [1, "v"]}
    assert got.created_us == h.created_us and got.server_version == "0.1.0" and got.system_id == "sys"
    assert (got.compression, got.chunk_size) == ("zstd", 4096)
    assert got.encryption == {"cipher": "AES-256-GCM", "kdf": "keyfile", "fingerprint": KEY.fingerprint}
    r = BackupReader(io.BytesIO(data))
    with pytest.raises(NoKeyError, match=h.backup_id):
        r.entries()
    with pytest.raises(NoKeyError):
        r.verify()


def test_large_writes_split_into_full_chunks_and_bytearray_input_is_frozen():
    buf = bytearray(os.urandom(10_000))
    out = io.BytesIO()
    w = BackupWriter(out, new_header("full"), key=KEY, chunk_size=1024, threads=2)
    w.begin_entry("e")
    w.write(buf)
    buf[:] = bytes(len(buf))  # the caller reuses its buffer at once
    w.write(memoryview(b"tail"))
    w.end_entry()
    w.finish()
    r = BackupReader(io.BytesIO(out.getvalue()), key=KEY)
    info = r.entry("e")
    assert info.chunks == 10 and info.raw_size == 10_004
    assert b"".join(r.read_entry("e")) != bytes(10_000) + b"tail"


def test_writer_rejects_misuse():
    w = BackupWriter(io.BytesIO(), new_header("full"), codec="none")
    with pytest.raises(BackupError):
        w.write(b"x")
    w.begin_entry("a")
    with pytest.raises(BackupError, match="still open"):
        w.begin_entry("b")
    w.end_entry()
    with pytest.raises(BackupError, match="duplicate"):
        w.begin_entry("a")
    with pytest.raises(ValueError, match="type"):
        BackupWriter(io.BytesIO(), new_header("weekly"))
    with pytest.raises(ValueError):
        BackupWriter(io.BytesIO(), BackupHeader("not-a-uuid", "full", 0))


# -- a fixture backup and a map of its regions ------------------------------------------

ENTRIES = [
    ("databases/main.sqlite", [os.urandom(600), b"row,text,42\n" * 60]),  # random, then compressible
    ("manifest", [b'{"tables": 2}']),
]


def walk_records(data, key):
    """[(entry name, chunk index, record offset, stored_len)] in file order."""
    r = BackupReader(io.BytesIO(data), key=key)
    out = []
    for e in r.entries():
        pos = e.offset
        for c in range(e.chunks):
            fields = F.RECORD.unpack_from(data, pos)
            out.append((e.name, c, pos, fields[6]))
            pos += F.RECORD.size + fields[6]
    return out, r


def regions(data, key):
    """Named byte ranges covering the whole file."""
    records, r = walk_records(data, key)
    lay = r.layout
    core_end = F.PREFIX.size + len(lay.core_bytes)
    out = {
        "header prefix": [(0, F.PREFIX.size, None)],
        "header core": [(F.PREFIX.size, core_end, None)],
        "header checksum": [(lay.body_start - 32, lay.body_start, None)],
        "index": [(lay.index_offset, lay.index_offset + lay.index_len, None)],
        "footer": [(len(data) - F.FOOTER.size, len(data), None)],
        "chunk head": [],
        "chunk body": [],
        "gcm tag": [],
    }
    if lay.keywrap_bytes:
        wrapped = r._wrapped
        at = data.index(wrapped, core_end)
        out["keywrap params"] = [(core_end, at, None)]
        out["wrapped key"] = [(at, at + len(wrapped), None)]
    for name, c, pos, stored in records:
        body = pos + F.RECORD.size
        out["chunk head"].append((pos, body, (name, c)))
        tag = F.RECORD.size + stored - (16 if key else 0)
        out["chunk body"].append((body, pos + tag, (name, c)))
        if key:
            out["gcm tag"].append((pos + tag, pos + tag + 16, (name, c)))
    return {k: v for k, v in out.items() if v}


def flip(data, pos, bit=0):
    b = bytearray(data)
    b[pos] ^= 1 << bit
    return bytes(b)


def detect(data, key):
    """Open, list and verify; return the error raised (the test fails if none is)."""
    with pytest.raises((BackupCorruptError, WrongKeyError)) as exc:
        r = BackupReader(io.BytesIO(data), key=key)
        r.verify(threads=2)
    return exc.value


@pytest.mark.parametrize("mode", ["plain", "keyfile", "passphrase"])
def test_bit_flip_in_every_region_is_detected_and_located(mode):
    key = key_for(mode)
    data = make_backup(ENTRIES, key=key, chunk_size=256)
    rng = random.Random(1)
    backup_id = BackupReader(io.BytesIO(data)).header.backup_id
    regs = regions(data, key)
    assert {"header core", "chunk head", "chunk body", "index", "footer"} <= set(regs)
    if key:
        assert {"wrapped key", "gcm tag", "keywrap params"} <= set(regs)
    covered = set()
    for region, spans in regs.items():
        for start, end, where in spans:
            covered.update(range(start, end))
            positions = {start, end - 1} | {rng.randrange(start, end) for _ in range(6)}
            for pos in sorted(positions):
                err = detect(flip(data, pos, rng.randrange(8)), key)
                assert isinstance(err, BackupCorruptError), (region, pos, err)
                msg = str(err)
                if region.startswith("header") or region in ("keywrap params", "wrapped key"):
                    assert "header" in msg or "not a RustyDB backup" in msg or "format" in msg, msg
                elif where is not None:
                    assert (err.entry, err.chunk) == where, (region, pos, msg)
                    assert backup_id in msg and repr(where[0]) in msg and f"chunk {where[1]}" in msg
                elif region == "index":
                    assert "index" in msg and backup_id in msg, msg
                else:
                    assert backup_id in msg, msg
    assert covered == set(range(len(data)))  # the regions tile the file: no unchecked byte


@pytest.mark.parametrize("mode", ["plain", "keyfile"])
def test_damaged_chunk_is_refused_by_read_entry_too(mode):
    key = key_for(mode)
    data = make_backup(ENTRIES, key=key, chunk_size=256)
    ((start, end, where),) = [s for s in regions(data, key)["chunk body"] if s[2] == ("databases/main.sqlite", 2)]
    r = BackupReader(io.BytesIO(flip(data, (start + end) // 2)), key=key)
    got = []
    with pytest.raises(BackupCorruptError) as exc:
        got.extend(r.read_entry("databases/main.sqlite"))
    assert (exc.value.entry, exc.value.chunk) == where
    assert len(got) == 2  # chunks before the damaged one, nothing from it


@pytest.mark.parametrize("mode", ["plain", "keyfile"])
def test_truncation_at_every_cut_point_is_detected_at_open(mode):
    key = key_for(mode)
    data = make_backup(ENTRIES, key=key, chunk_size=256)
    for cut in range(len(data)):
        with pytest.raises(BackupCorruptError) as exc:
            BackupReader(io.BytesIO(data[:cut]), key=key)
        msg = str(exc.value)
        assert "truncated" in msg or "not a complete" in msg or "bad magic" in msg, (cut, msg)
    with pytest.raises(BackupCorruptError, match="truncated or incomplete"):
        BackupReader(io.BytesIO(data + b"\0"), key=key)  # bytes appended after the footer


@pytest.mark.parametrize("mode", ["plain", "keyfile"])
def test_a_real_file_reads_and_fails_like_bytes(tmp_path, mode):
    """A file with a descriptor is read with pread, other objects with seek+read."""
    key = key_for(mode)
    data = make_backup(ENTRIES, key=key, chunk_size=256)
    path = tmp_path / "b.backup"
    path.write_bytes(data)
    with open(path, "rb") as f:
        r = BackupReader(f, key=key)
        assert r._fd is not None
        got = {e.name: b"".join(r.read_entry(e.name)) for e in r.entries()}
        info = r.entry("databases/main.sqlite")
        chunks = [r.read_chunk(info, i, off) for i, off in enumerate(r.chunk_offsets(info))]
    assert got == read_all(data, key=key)
    assert b"".join(chunks) == got["databases/main.sqlite"]
    for cut in sorted({0, 7, len(data) // 3, len(data) // 2, len(data) - 1}):
        path.write_bytes(data[:cut])
        with open(path, "rb") as f, pytest.raises(BackupCorruptError) as from_file:
            BackupReader(f, key=key)
        with pytest.raises(BackupCorruptError) as from_bytes:
            BackupReader(io.BytesIO(data[:cut]), key=key)
        assert str(from_file.value) == str(from_bytes.value)


def test_short_preads_are_continued(tmp_path, monkeypatch):
    """pread may return fewer bytes than asked (a signal, some file systems)."""
    data = make_backup(ENTRIES, key=KEY, chunk_size=256)
    path = tmp_path / "b.backup"
    path.write_bytes(data)
    real = os.pread
    calls = []

    def short(fd, n, offset):
        calls.append(n)
        return real(fd, min(n, 7), offset)

    monkeypatch.setattr(reader_module.os, "pread", short)
    with open(path, "rb") as f:
        r = BackupReader(f, key=KEY)
        got = {e.name: b"".join(r.read_entry(e.name)) for e in r.entries()}
    assert got == read_all(data, key=KEY)
    assert any(n > 7 for n in calls)  # reads larger than a piece were asked for


def rebuild_footer(data, body):
    """An attacker's (or a careless tool's) rewrite: fresh footer around a changed body."""
    lay = BackupReader(io.BytesIO(data)).layout
    index = data[lay.index_offset : lay.index_offset + lay.index_len]
    head = data[: lay.body_start]
    index_offset = len(head) + len(body)
    digest = file_digest(head + body + index)
    return head + body + index + F.pack_footer(index_offset, len(index), crc32c.crc32c(index), digest)


def records_of(data, key):
    recs, r = walk_records(data, key)
    return [(n, c, data[p : p + F.RECORD.size + s]) for n, c, p, s in recs], r


def splice(data, key, edit, fix_footer):
    recs, r = records_of(data, key)
    lay = r.layout
    parts = [rec for _, _, rec in recs]
    edit(parts)
    body = b"".join(parts)
    if fix_footer:
        return rebuild_footer(data, body)
    return data[: lay.body_start] + body + data[lay.index_offset :]


CASES = {
    # name: (edit of the record list, the (entry, chunk) the error must name)
    "reordered": (lambda p: p.__setitem__(slice(1, 3), [p[2], p[1]]), ("databases/main.sqlite", 1)),
    "duplicated": (lambda p: p.insert(2, p[1]), ("databases/main.sqlite", 2)),
    "dropped": (lambda p: p.pop(1), ("databases/main.sqlite", 1)),
    "dropped last": (lambda p: p.pop(-1), ("manifest", 0)),
    "moved across entries": (lambda p: p.__setitem__(-1, p[0]), ("manifest", 0)),
}


@pytest.mark.parametrize("mode", ["plain", "keyfile"])
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fix_footer", [False, True])
def test_chunk_moves_are_detected_and_located(mode, case, fix_footer):
    key = key_for(mode)
    data = make_backup(ENTRIES, key=key, chunk_size=256)
    edit, where = CASES[case]
    bad = splice(data, key, edit, fix_footer)
    err = detect(bad, key)
    assert isinstance(err, BackupCorruptError)
    assert (err.entry, err.chunk) == where, str(err)


def forge_head(record, core_hash, name, entry_index, chunk_index, encrypted):
    """Rewrite a record's head to claim another place, with valid crcs (what a forger can do)."""
    _, flags, _, _, _, raw_len, stored_len, check, _ = F.RECORD.unpack_from(record)
    stored = record[F.RECORD.size :]
    aad = F.chunk_aad(core_hash, entry_index, chunk_index, flags, raw_len, name.encode())
    if encrypted:
        check = crc32c.crc32c(stored, crc32c.crc32c(aad))
    return F.pack_record(flags, entry_index, chunk_index, raw_len, stored_len, check) + stored


def test_forged_reorder_with_valid_checksums_fails_authentication():
    data = make_backup(ENTRIES, key=KEY, chunk_size=256)
    recs, r = records_of(data, KEY)
    name = "databases/main.sqlite"
    parts = [rec for _, _, rec in recs]
    parts[1], parts[2] = (
        forge_head(parts[2], r.core_hash, name, 0, 1, True),
        forge_head(parts[1], r.core_hash, name, 0, 2, True),
    )
    lay = r.layout
    bad = data[: lay.body_start] + b"".join(parts) + data[lay.index_offset :]
    err = detect(bad, KEY)
    assert (err.entry, err.chunk) == (name, 1) and "authentication" in str(err)


@pytest.mark.parametrize("mode", ["plain", "keyfile"])
def test_chunk_spliced_from_another_backup_with_the_same_key(mode):
    key = key_for(mode)
    a = make_backup(ENTRIES, key=key, chunk_size=256)
    b = make_backup(ENTRIES, key=key, chunk_size=256)  # same key file, same data
    a_recs, ra = records_of(a, key)
    b_recs, _ = records_of(b, key)
    assert len(a_recs[1][2]) == len(b_recs[1][2])
    parts = [rec for _, _, rec in a_recs]
    parts[1] = b_recs[1][2]
    lay = ra.layout
    err = detect(a[: lay.body_start] + b"".join(parts) + a[lay.index_offset :], key)
    assert (err.entry, err.chunk) == ("databases/main.sqlite", 1), str(err)
    if key:  # even with a forged checksum, the chunk is not authentic here
        parts[1] = forge_head(b_recs[1][2], ra.core_hash, "databases/main.sqlite", 0, 1, True)
        err = detect(a[: lay.body_start] + b"".join(parts) + a[lay.index_offset :], key)
        assert err.chunk == 1 and "authentication" in str(err)


def test_same_data_encrypted_twice_differs():
    h = new_header("full")
    a = make_backup(ENTRIES, key=KEY, header=h)
    b = make_backup(ENTRIES, key=KEY, header=h)  # even with the same header and key file
    ra, rb = records_of(a, KEY)[0], records_of(b, KEY)[0]
    for (_, _, x), (_, _, y) in zip(ra, rb):
        assert x[F.RECORD.size :] != y[F.RECORD.size :]


class TracingFile(io.BytesIO):
    def __init__(self, data):
        super().__init__(data)
        self.reads = []

    def read(self, n=-1):
        self.reads.append((self.tell(), n))
        return super().read(n)


@pytest.mark.parametrize("wrong", [OTHER_KEY, PassphraseSource("pw", **FAST)])
def test_wrong_key_fails_at_unwrap_before_any_data(wrong):
    data = make_backup(ENTRIES, key=KEY)
    lay = BackupReader(io.BytesIO(data)).layout
    f = TracingFile(data)
    with pytest.raises(WrongKeyError) as exc:
        BackupReader(f, key=wrong)
    assert lay_id(data) in str(exc.value)
    for start, n in f.reads:  # only header and footer were read
        assert start + n <= lay.body_start or start >= lay.index_offset + lay.index_len


def test_wrong_passphrase():
    data = make_backup(ENTRIES, key=PassphraseSource("right", **FAST))
    with pytest.raises(WrongKeyError, match="does not match this backup"):
        BackupReader(io.BytesIO(data), key=PassphraseSource("wrong"))
    with pytest.raises(WrongKeyError, match="key file"):
        BackupReader(io.BytesIO(data), key=KEY)


def lay_id(data):
    return BackupReader(io.BytesIO(data)).header.backup_id


def rewrite_header(data, *, core=None, params=None):
    """Change header fields and fix the header checksum, as a tamperer would."""
    lay = BackupReader(io.BytesIO(data)).layout
    core_bytes = lay.core_bytes if core is None else msgpack.packb(core(msgpack.unpackb(lay.core_bytes)))
    keywrap = lay.keywrap_bytes
    if params is not None:
        kw = msgpack.unpackb(keywrap)
        kw["params"] = msgpack.packb(params(msgpack.unpackb(kw["params"])))
        keywrap = msgpack.packb(kw)
    head = F.pack_header(core_bytes, keywrap)
    return rebuild_header_only(data, head)


def rebuild_header_only(data, head):
    lay = BackupReader(io.BytesIO(data)).layout
    rest = data[lay.body_start : -F.FOOTER.size]
    shift = len(head) - lay.body_start
    digest = file_digest(head + rest)
    return head + rest + F.pack_footer(lay.index_offset + shift, lay.index_len, lay.index_crc, digest)


def test_lowered_kdf_parameters_are_detected():
    data = make_backup(ENTRIES, key=PassphraseSource("pw", n=2**11, r=8, p=1))
    weak = rewrite_header(data, params=lambda p: {**p, "n": 2**10})
    assert BackupReader(io.BytesIO(weak)).header.encryption["n"] == 2**10
    with pytest.raises(WrongKeyError):
        BackupReader(io.BytesIO(weak), key=PassphraseSource("pw"))
    assert BackupReader(io.BytesIO(data), key=PassphraseSource("pw")).verify().encrypted


def test_authenticated_header_fields_cannot_be_changed():
    data = make_backup(ENTRIES, key=KEY)
    for change in (
        lambda c: {**c, "type": "incremental"},
        lambda c: {**c, "end_lsn": c["end_lsn"] + 1},
        lambda c: {**c, "databases": []},
    ):
        with pytest.raises(BackupCorruptError, match="header failed authentication"):
            BackupReader(io.BytesIO(rewrite_header(data, core=change)), key=KEY)
    plain = make_backup(ENTRIES)  # unencrypted: detects damage, and a checksum-fixed edit shows in the digest
    edited = rewrite_header(plain, core=lambda c: {**c, "type": "incremental"})
    with pytest.raises(BackupCorruptError):
        BackupReader(io.BytesIO(edited)).verify()


def test_decompression_bomb_in_a_chunk_is_rejected(monkeypatch):
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(bytes(8 << 20))
    real = F.codecs.compress
    monkeypatch.setattr(
        F.codecs, "compress", lambda codec, data, level=None: bomb if len(data) == 4096 else real(codec, data, level)
    )
    for key in (None, KEY):
        data = make_backup([("e", [os.urandom(5000)])], key=key, codec="zstd", chunk_size=4096)
        err = detect(data, key)
        assert (err.entry, err.chunk) == ("e", 0)
        assert "more than the limit of 4096" in str(err)


def test_reader_rejects_unsafe_name_in_index():
    data = make_backup([("databases/evil", [b"x"])])
    lay = BackupReader(io.BytesIO(data)).layout
    index = msgpack.unpackb(data[lay.index_offset : lay.index_offset + lay.index_len])
    index["entries"][0]["name"] = "../../etc/cron.d/x"
    new_index = msgpack.packb(index)
    head_body = data[: lay.index_offset]
    digest = file_digest(head_body + new_index)
    bad = head_body + new_index + F.pack_footer(lay.index_offset, len(new_index), crc32c.crc32c(new_index), digest)
    with pytest.raises(BackupCorruptError, match="unsafe entry name"):
        BackupReader(io.BytesIO(bad)).entries()


def test_not_a_backup():
    for junk in (b"", b"RDBBAK0", b"PK\x03\x04" + bytes(200), os.urandom(500)):
        with pytest.raises(BackupCorruptError):
            BackupReader(io.BytesIO(junk))
    data = make_backup(ENTRIES)
    lay = BackupReader(io.BytesIO(data)).layout
    head = bytearray(data[: lay.body_start])
    head[8:10] = struct.pack(">H", 4)
    head[-F.HEADER_SUM_SIZE :] = hashlib.sha256(head[: -F.HEADER_SUM_SIZE]).digest()
    future = bytes(head) + data[lay.body_start :]  # a newer format: its header checks out
    with pytest.raises(UnsupportedFormatError, match="backup format 4, newer than this RustyDB reads"):
        BackupReader(io.BytesIO(future))
    flipped = data[:8] + struct.pack(">H", 4) + data[10:]  # the same field, damaged
    with pytest.raises(BackupCorruptError, match=r"header checksum mismatch \(format version reads 4\)"):
        BackupReader(io.BytesIO(flipped))


def test_entry_digest_mismatch_is_detected():
    # Chunks that each pass their own check but do not add up to what was
    # written (the index's digest changed): only the entry digest can tell.
    data = make_backup([("databases/a", [b"hello world" * 50])])
    lay = BackupReader(io.BytesIO(data)).layout
    index = msgpack.unpackb(data[lay.index_offset : lay.index_offset + lay.index_len])
    assert set(index["entries"][0]) >= {"xxh3_128"} and "sha256" not in index["entries"][0]
    index["entries"][0]["xxh3_128"] = bytes(16)
    new_index = msgpack.packb(index)
    head_body = data[: lay.index_offset]
    digest = file_digest(head_body + new_index)
    bad = head_body + new_index + F.pack_footer(lay.index_offset, len(new_index), crc32c.crc32c(new_index), digest)
    r = BackupReader(io.BytesIO(bad))
    with pytest.raises(BackupCorruptError, match="does not match its xxh3_128 digest"):
        b"".join(r.read_entry("databases/a"))
    with pytest.raises(BackupCorruptError, match="does not match its xxh3_128 digest"):
        r.verify()


def test_whole_file_digest_catches_what_every_crc_passes():
    # The index rewritten with its CRC (and the footer's) fixed, but not the
    # digest: every local check passes; only the whole-file digest can tell.
    data = make_backup([("databases/a", [b"hello world" * 50])])
    lay = BackupReader(io.BytesIO(data)).layout
    assert lay.version == F.FORMAT_VERSION
    index = msgpack.unpackb(data[lay.index_offset : lay.index_offset + lay.index_len])
    index["note"] = "added later"
    new_index = msgpack.packb(index)
    bad = (
        data[: lay.index_offset]
        + new_index
        + F.pack_footer(lay.index_offset, len(new_index), crc32c.crc32c(new_index), lay.digest)
    )
    r = BackupReader(io.BytesIO(bad))
    assert b"".join(r.read_entry("databases/a")) == b"hello world" * 50
    with pytest.raises(BackupCorruptError, match="whole-file digest mismatch"):
        r.verify()
    good = (
        data[: lay.index_offset]
        + new_index
        + F.pack_footer(
            lay.index_offset,
            len(new_index),
            crc32c.crc32c(new_index),
            file_digest(data[: lay.index_offset] + new_index),
        )
    )
    assert BackupReader(io.BytesIO(good)).verify()


# -- random access: byte ranges of one entry ------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 255, 256, 257, 1000, 2048])
def test_entry_reader_reads_any_range(size):
    rng = random.Random(size)
    payload = rng.randbytes(size)
    data = make_backup([("e", [payload[:100], payload[100:]])], key=KEY, codec="zstd", chunk_size=256)
    reader = EntryReader(BackupReader(io.BytesIO(data), key=KEY), "e", cache_chunks=2)
    assert reader.size == size
    for _ in range(200):
        a = rng.randrange(size + 10)
        n = rng.randrange(600)
        assert reader.read(a, n) == payload[a : a + n]
    assert reader.read(0, size) == payload


def test_entry_reader_cache_is_bounded_and_reused():
    payload = bytes(range(256)) * 40  # 10240 bytes = 10 chunks of 1024
    data = make_backup([("e", [payload])], codec="none", chunk_size=1024)
    reader = EntryReader(BackupReader(io.BytesIO(data)), "e", cache_chunks=3)
    reader.read(0, 10)
    reader.read(500, 10)
    assert reader.chunks_decoded == 1  # the same chunk, from the cache
    reader.read(1000, 100)  # spans chunks 0 and 1
    assert reader.chunks_decoded == 2
    for chunk in range(10):
        reader.read(chunk * 1024, 1)
    assert reader.chunks_decoded == 10
    assert len(reader._cache) == 3
    reader.read(0, 1)  # evicted long ago
    assert reader.chunks_decoded == 11


def test_read_chunk_matches_read_entry():
    """BackupReader.chunk_offsets + read_chunk give exactly read_entry's chunks."""
    payload = os.urandom(5000)
    data = make_backup([("first", [b"x" * 1500]), ("second", [payload])], key=KEY, codec="lz4", chunk_size=700)
    reader = BackupReader(io.BytesIO(data), key=KEY)
    info = reader.entry("second")
    offsets = reader.chunk_offsets(info)
    assert len(offsets) == info.chunks == 8
    assert [reader.read_chunk(info, i, off) for i, off in enumerate(offsets)] == list(reader.read_entry("second"))
    with pytest.raises(BackupCorruptError, match="chunk 2"):
        reader.read_chunk(info, 2, offsets[3])  # the head found there belongs to chunk 3
