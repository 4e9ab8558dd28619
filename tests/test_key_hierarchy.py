"""The key hierarchy of backup format 3 (crypto.py, keys.py, container/format.py):
a passphrase is stretched once per process and salt, every file a process
writes shares that KEK, and each file's own data key is wrapped under a key
derived from the KEK and the file's header hash.

KDF runs are counted by wrapping ``crypto.derive_kek``. Derived KEKs are cached
for the whole process, so every test that counts uses a passphrase of its own.
"""

from __future__ import annotations

import io
import os
import threading

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_server import crypto, keys
from rustydb_server import datadir as dd
from rustydb_server.archive import segment_file
from rustydb_server.archive.archiver import Archiver
from rustydb_server.container import format as F
from rustydb_server.container.reader import BackupReader
from rustydb_server.container.rotate import rotate_key
from rustydb_server.container.writer import BackupWriter
from rustydb_server.doorbell import Doorbell
from rustydb_server.engine.instance import Engine
from rustydb_server.engine_events import EngineEvents
from rustydb_server.lifecycle import Lifecycle
from rustydb_server.settings import Settings
from tests.test_archiver import inline

keys32 = st.binary(min_size=32, max_size=32).map(crypto.SecretKey)
hashes32 = st.binary(min_size=32, max_size=32)
params_bytes = st.dictionaries(st.sampled_from(["kdf", "salt", "n"]), st.binary(max_size=20)).map(F.pack_msgpack)


def fresh_passphrase() -> str:
    return "test passphrase " + os.urandom(8).hex()


@pytest.fixture
def kdf_runs(monkeypatch) -> list[dict]:
    """The parameters of every KDF run from here on."""
    runs: list[dict] = []
    real = crypto.derive_kek

    def counting(passphrase, params):
        runs.append(params)
        return real(passphrase, params)

    monkeypatch.setattr(crypto, "derive_kek", counting)
    return runs


# ----------------------------------------------------------- the wrap, pure


@given(keys32, keys32, hashes32, params_bytes)
@settings(max_examples=50, deadline=None)
def test_a_format_3_wrap_opens_with_its_kek_header_and_parameters_only(kek, data_key, core_hash, params):
    wrapped = crypto.wrap_key(F.wrapping_key(kek, core_hash, 3), data_key, F.wrap_aad(core_hash, params))
    assert len(wrapped) == crypto.WRAPPED_KEY_SIZE
    assert F.unwrap_data_key(kek, wrapped, core_hash, params, 3) == data_key
    other_hash = bytes([core_hash[0] ^ 1]) + core_hash[1:]
    other_kek = crypto.SecretKey(bytes(b ^ 0xFF for b in kek.reveal()))
    for attempt in (
        lambda: F.unwrap_data_key(other_kek, wrapped, core_hash, params, 3),
        lambda: F.unwrap_data_key(kek, wrapped, other_hash, params, 3),  # moved to another file's header
        lambda: F.unwrap_data_key(kek, wrapped, core_hash, params + b"x", 3),  # parameters edited
        lambda: F.unwrap_data_key(kek, wrapped, core_hash, params, 2),  # read as the old layout
        lambda: crypto.unwrap_key(kek, wrapped, F.wrap_aad(core_hash, params)),  # the KEK itself never wraps
    ):
        with pytest.raises(crypto.WrongKeyError):
            attempt()


@given(keys32, hashes32, hashes32)
@settings(max_examples=50, deadline=None)
def test_each_file_wraps_under_a_key_of_its_own(kek, hash_a, hash_b):
    a, b = crypto.file_wrapping_key(kek, hash_a), crypto.file_wrapping_key(kek, hash_b)
    assert a == crypto.file_wrapping_key(kek, hash_a)  # the reader derives the writer's key
    assert (a == b) == (hash_a == hash_b)
    assert a != kek and len(a) == crypto.KEY_SIZE
    assert F.wrapping_key(kek, hash_a, 2) == kek  # formats 1 and 2 wrapped under the KEK itself


@given(keys32, keys32, hashes32, st.sampled_from([2, 3]))
@settings(max_examples=30, deadline=None)
def test_pack_keywrap_round_trips_in_either_layout(kek, data_key, core_hash, version):
    params = {"kdf": "keyfile", "fingerprint": crypto.key_fingerprint(kek)}
    keywrap = F.unpack_msgpack(F.pack_keywrap(core_hash, params, kek, data_key, version))
    assert F.unpack_msgpack(keywrap["params"]) == params
    assert F.unwrap_data_key(kek, keywrap["wrapped_key"], core_hash, keywrap["params"], version) == data_key
    with pytest.raises(crypto.WrongKeyError):
        F.unwrap_data_key(kek, keywrap["wrapped_key"], core_hash, keywrap["params"], 5 - version)


# ------------------------------------------------- one KDF run per process


def container(key, version: int = F.FORMAT_VERSION, payload: bytes = b"x" * 3000) -> bytes:
    out = io.BytesIO()
    header = F.new_header("full", system_id="1")
    w = BackupWriter(out, header, key=key, codec="zstd", chunk_size=1024, version=version)
    w.begin_entry("data")
    w.write(payload)
    w.end_entry()
    w.finish()
    return out.getvalue()


def keywrap_of(data: bytes) -> tuple[dict, bytes]:
    r = BackupReader(io.BytesIO(data))
    kw = F.unpack_msgpack(r.layout.keywrap_bytes)
    return F.unpack_msgpack(kw["params"]), kw["wrapped_key"]


def test_files_written_in_one_process_share_one_salt_and_one_kdf_run(kdf_runs):
    passphrase = fresh_passphrase()
    # a new source per file, as the archiver resolves its key per segment
    files = [container(keys.PassphraseSource(passphrase)) for _ in range(20)]
    assert len(kdf_runs) == 1
    wraps = [keywrap_of(d) for d in files]
    assert len({p["salt"] for p, _ in wraps}) == 1
    assert {(p["kdf"], p["n"], p["r"], p["p"]) for p, _ in wraps} == {("scrypt", 2**15, 8, 1)}  # strength as before
    assert len({w for _, w in wraps}) == 20
    # each file has a data key of its own
    data_keys = {BackupReader(io.BytesIO(d), key=keys.PassphraseSource(passphrase)).data_key.reveal() for d in files}
    assert len(data_keys) == 20
    assert len(kdf_runs) == 1  # reading them all back took no further run


def test_threads_that_need_the_same_kek_wait_for_one_run(kdf_runs):
    passphrase = fresh_passphrase()
    files = []
    threads = [
        threading.Thread(target=lambda: files.append(container(keys.PassphraseSource(passphrase)))) for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(files) == 6 and len(kdf_runs) == 1


def test_kdf_runs_of_different_salts_go_side_by_side(monkeypatch):
    """A PITR derives its archive's KEK while the base's derives under another salt:
    two runs for two salts meet inside the KDF at once (a run holding one lock for
    every salt would leave the barrier waiting for the second, and break it)."""
    passphrase = crypto.SecretKey(fresh_passphrase().encode())
    inside = threading.Barrier(2, timeout=10)
    real = crypto.derive_kek
    runs: list[bytes] = []

    def meeting(pw, params):
        runs.append(params["salt"])
        inside.wait()  # BrokenBarrierError if the other salt's run cannot start meanwhile
        return real(pw, params)

    monkeypatch.setattr(crypto, "derive_kek", meeting)
    salts = [crypto.new_kdf_params("scrypt"), crypto.new_kdf_params("scrypt")]
    keks: dict[int, crypto.SecretKey] = {}
    errors: list[BaseException] = []

    def derive(i: int) -> None:
        try:
            keks[i] = keys._PASSPHRASE_KEKS.kek(passphrase, salts[i])
        except BaseException as e:  # noqa: BLE001 -- reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=derive, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(runs) == 2 and keks[0] != keks[1]
    # and each is cached: asking again runs nothing
    monkeypatch.setattr(crypto, "derive_kek", lambda *a: pytest.fail("derived twice"))
    assert keys._PASSPHRASE_KEKS.kek(passphrase, salts[0]) == keks[0]


def test_another_passphrase_gets_another_salt(kdf_runs):
    a, b = container(keys.PassphraseSource(fresh_passphrase())), container(keys.PassphraseSource(fresh_passphrase()))
    assert keywrap_of(a)[0]["salt"] != keywrap_of(b)[0]["salt"]
    assert len(kdf_runs) == 2


def test_format_2_files_with_a_salt_each_cost_a_run_each(kdf_runs):
    """What format 3 removes: files in the old layout, each with its own salt."""
    passphrase = fresh_passphrase()

    class SaltPerFile(keys.PassphraseSource):  # format 2's writer: fresh parameters per file
        def kek_for_new_backup(self):
            params = crypto.new_kdf_params("scrypt")
            return params, self._derive(params)

    old = [container(SaltPerFile(passphrase), version=2) for _ in range(3)]
    assert len(kdf_runs) == 3
    reader = keys.PassphraseSource(passphrase)
    for d in old:
        assert b"".join(BackupReader(io.BytesIO(d), key=reader).read_entry("data")) == b"x" * 3000
    assert len(kdf_runs) == 3  # the process derived these already


def test_a_wrong_passphrase_is_refused_saying_so():
    data = container(keys.PassphraseSource(fresh_passphrase()))
    with pytest.raises(crypto.WrongKeyError, match="does not match this backup"):
        BackupReader(io.BytesIO(data), key=keys.PassphraseSource("not it"))
    key = keys.KeyFileSource(os.urandom(32), "/k")
    with pytest.raises(crypto.WrongKeyError, match="protected by a passphrase"):
        BackupReader(io.BytesIO(data), key=key)


def test_rotation_rewraps_a_format_3_file_and_keeps_its_chunks(tmp_path, kdf_runs):
    old_pass, new_pass = fresh_passphrase(), fresh_passphrase()
    path = tmp_path / "b.backup"
    original = container(keys.PassphraseSource(old_pass))
    path.write_bytes(original)
    before = BackupReader(io.BytesIO(original), key=keys.PassphraseSource(old_pass))
    rotate_key(str(path), keys.PassphraseSource(old_pass), keys.PassphraseSource(new_pass))
    after_bytes = path.read_bytes()
    after = BackupReader(io.BytesIO(after_bytes), key=keys.PassphraseSource(new_pass))
    assert after.layout.version == 3 and after.data_key == before.data_key
    assert after.layout.core_bytes == before.layout.core_bytes  # chunks stay bound to the same header hash
    assert after.verify().encryption_ok
    assert keywrap_of(after_bytes)[0]["salt"] != keywrap_of(original)[0]["salt"]
    assert after_bytes[after.layout.body_start :] != original[before.layout.body_start :]  # the footer's digest
    assert after_bytes[after.layout.body_start : -F.FOOTER.size] == original[before.layout.body_start : -F.FOOTER.size]
    assert len(kdf_runs) == 2  # one per passphrase, however often each was used
    with pytest.raises(crypto.WrongKeyError):
        BackupReader(io.BytesIO(after_bytes), key=keys.PassphraseSource(old_pass))


# ------------------------------------------------------- the archiver


async def test_the_archiver_runs_the_kdf_once_for_many_segments(tmp_path, nursery, monkeypatch, kdf_runs):
    passphrase = fresh_passphrase()
    monkeypatch.setenv(keys.ENV_PASSPHRASE, passphrase)
    monkeypatch.delenv(keys.ENV_KEY_FILE, raising=False)
    monkeypatch.setenv(keys.ENV_CONFIG, str(tmp_path / "no-config.toml"))
    dest = tmp_path / "archive"
    dest.mkdir()
    doorbell = Doorbell()
    overrides = {"wal_segment_size": 65536, "archive_dest": str(dest), "archive_timeout": 3600}
    settings = Settings.load(
        None, str(tmp_path / "data"), {**overrides, "archive_mode": True, "archive_encryption": True}
    )
    events = EngineEvents(trio.lowlevel.current_trio_token(), Lifecycle(), Doorbell(), doorbell)
    engine = Engine.open(dd.DataDir(str(tmp_path / "data")), settings, observer=events)
    archiver = Archiver(engine, settings, doorbell, run_sync=inline)
    await nursery.start(archiver.run)
    for i in range(8):
        engine.create_restore_point(f"p{i}")
        engine.switch_wal()
        await trio.sleep(0.05)
    with trio.fail_after(30):
        while len(list(dest.glob("*.walz"))) < 8:
            await trio.sleep(0.05)
    paths = sorted(dest.glob("*.walz"))
    assert len(kdf_runs) == 1
    salts = {keywrap_of(p.read_bytes())[0]["salt"] for p in paths}
    assert len(salts) == 1
    source = keys.PassphraseSource(passphrase)
    for p in paths:
        name, data = segment_file.unpack_segment(str(p), key=source)
        assert p.name == segment_file.archive_name(name)
    assert len(kdf_runs) == 1
    engine.close()
