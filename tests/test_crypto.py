"""AES-GCM sealing, key wrapping, KDFs, key files and the key source resolver."""

import os
import pickle
import stat

import pytest

from rustydb_server import crypto, keys
from rustydb_server.crypto import AuthenticationError, SecretKey, WrongKeyError
from rustydb_server.fileops import FileOps
from rustydb_server.keys import (
    KeyFileError,
    KeyFileSource,
    NoKeyError,
    PassphraseSource,
    create_key_file,
    load_key_file,
    resolve_kek,
)

FAST_SCRYPT = {"n": 2**10, "r": 8, "p": 1}


def test_seal_open_round_trip_and_binding():
    key, prefix = crypto.generate_data_key(), crypto.generate_nonce_prefix()
    sealed = crypto.seal_chunk(key, prefix, 7, b"payload", b"aad")
    assert len(sealed) == len(b"payload") + crypto.TAG_SIZE
    assert crypto.open_chunk(key, prefix, 7, sealed, b"aad") == b"payload"
    assert crypto.open_chunk(bytes(key), prefix, 7, sealed, b"aad") == b"payload"
    for args in [
        (key, prefix, 8, sealed, b"aad"),  # another position
        (key, prefix, 7, sealed, b"aaD"),  # other associated data
        (crypto.generate_data_key(), prefix, 7, sealed, b"aad"),  # other key
        (key, b"\x00\x00\x00\x00" if prefix != bytes(4) else b"\x00\x00\x00\x01", 7, sealed, b"aad"),
        (key, prefix, 7, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"aad"),  # tag bit
    ]:
        with pytest.raises(AuthenticationError):
            crypto.open_chunk(*args)


def test_nonces_are_distinct_per_sequence_number():
    prefix = b"\x01\x02\x03\x04"
    nonces = {crypto.chunk_nonce(prefix, seq) for seq in [*range(1000), crypto.INDEX_SEQ]}
    assert len(nonces) == 1001
    assert all(len(n) == 12 for n in nonces)
    with pytest.raises(crypto.CryptoError):
        crypto.chunk_nonce(b"\x01", 0)


def test_same_plaintext_sealed_under_two_data_keys_differs():
    data = b"same data" * 100
    a = crypto.seal_chunk(crypto.generate_data_key(), crypto.generate_nonce_prefix(), 0, data, b"")
    b = crypto.seal_chunk(crypto.generate_data_key(), crypto.generate_nonce_prefix(), 0, data, b"")
    assert a != b


def test_wrap_unwrap():
    kek, data_key = crypto.generate_data_key(), crypto.generate_data_key()
    wrapped = crypto.wrap_key(kek, data_key, b"header")
    assert len(wrapped) == crypto.WRAPPED_KEY_SIZE
    assert data_key.reveal() not in wrapped
    assert crypto.unwrap_key(kek, wrapped, b"header") == data_key
    assert crypto.wrap_key(kek, data_key, b"header") != wrapped  # random wrap nonce
    with pytest.raises(WrongKeyError, match="does not match this backup"):
        crypto.unwrap_key(crypto.generate_data_key(), wrapped, b"header")
    with pytest.raises(WrongKeyError):
        crypto.unwrap_key(kek, wrapped, b"other header")
    with pytest.raises(WrongKeyError):
        crypto.unwrap_key(kek, wrapped[:-1], b"header")


def test_secret_key_never_shows_its_bytes():
    key = crypto.generate_data_key()
    for text in (repr(key), str(key), f"{key}", repr([key]), repr(KeyFileSource(key, "/k"))):
        assert key.reveal().hex() not in text
        assert repr(key.reveal()) not in text
    assert "hidden" in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    assert key == SecretKey(bytes(key)) and key != crypto.generate_data_key()
    with pytest.raises(TypeError):
        hash(key)
    with pytest.raises(crypto.CryptoError):
        crypto.seal_chunk(b"short", bytes(4), 0, b"", b"")


def test_passphrase_kdf_scrypt_and_argon2():
    params = crypto.new_kdf_params("scrypt", **FAST_SCRYPT)
    assert params["kdf"] == "scrypt" and len(params["salt"]) == 16
    k1 = crypto.derive_kek(b"pw", params)
    assert k1 == crypto.derive_kek(SecretKey(b"pw"), params)
    assert k1 != crypto.derive_kek(b"pw2", params)
    assert k1 != crypto.derive_kek(b"pw", {**params, "salt": os.urandom(16)})
    assert k1 != crypto.derive_kek(b"pw", {**params, "n": 2**11})
    assert crypto.new_kdf_params("scrypt")["n"] == 2**15  # the default for real backups
    if crypto.argon2id_class() is not None:
        a = crypto.new_kdf_params("argon2id", iterations=1, memory_kib=64, lanes=1)
        assert crypto.derive_kek(b"pw", a) == crypto.derive_kek(b"pw", a)
        assert crypto.derive_kek(b"pw", a) != crypto.derive_kek(b"pw", {**a, "iterations": 2})


@pytest.mark.parametrize(
    "bad",
    [
        {"n": 2**30},  # a terabyte of memory from a hostile header
        {"n": 2**4},  # too weak
        {"n": 1000},  # not a power of two
        {"r": 0},
        {"p": 1000},
        {"salt": b"short"},
        {"kdf": "md5"},
        {"n": "1024"},
    ],
)
def test_kdf_params_out_of_bounds_are_refused(bad):
    params = {"kdf": "scrypt", "salt": os.urandom(16), **FAST_SCRYPT, **bad}
    with pytest.raises(crypto.CryptoError):
        crypto.derive_kek(b"pw", params)


def test_create_key_file_is_0600_and_exclusive(tmp_path):
    path = str(tmp_path / "backup.key")
    old = os.umask(0)  # even with a permissive umask
    try:
        key = create_key_file(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_key_file(path) == key
    with open(path, "rb") as f:
        assert f.read().strip() == key.reveal().hex().encode()
    with pytest.raises(KeyFileError, match="already exists"):
        create_key_file(path)
    assert load_key_file(path) == key  # not overwritten


def test_create_key_file_failure_leaves_nothing(tmp_path):
    class FailingFsync(FileOps):
        def fsync(self, fd):
            raise OSError(5, "Input/output error")

    path = tmp_path / "backup.key"
    with pytest.raises(OSError):
        create_key_file(str(path), FailingFsync())
    assert not path.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = str(tmp_path / "backup.key")
    create_key_file(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError) as exc:
        load_key_file(path)
    assert path in str(exc.value)
    assert f"chmod 600 {path}" in str(exc.value)
    assert f"{mode:04o}" in str(exc.value)


def test_key_file_formats(tmp_path):
    raw = os.urandom(32)
    p = tmp_path / "raw.key"
    p.write_bytes(raw)
    p.chmod(0o600)
    assert load_key_file(str(p)) == SecretKey(raw)
    p.write_bytes(b"  " + raw.hex().upper().encode() + b"\r\n")
    assert load_key_file(str(p)) == SecretKey(raw)
    secret = b"my-password-is-hunter2-not-a-key"
    p.write_bytes(secret + b"!!")
    with pytest.raises(KeyFileError) as exc:
        load_key_file(str(p))
    assert "hunter2" not in str(exc.value)  # contents are never echoed
    assert "--create-key-file" in str(exc.value)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_key_file(str(tmp_path / "missing.key"))
    with pytest.raises(KeyFileError, match="not a regular file"):
        os.chmod(tmp_path, 0o700)
        load_key_file(str(tmp_path))


def _key_file(tmp_path, name):
    path = str(tmp_path / name)
    return path, create_key_file(path)


def test_resolve_kek_precedence(tmp_path):
    flag, flag_key = _key_file(tmp_path, "flag.key")
    setting, setting_key = _key_file(tmp_path, "setting.key")
    envf, env_key = _key_file(tmp_path, "env.key")
    env = {keys.ENV_KEY_FILE: envf, keys.ENV_PASSPHRASE: "correct horse"}
    assert resolve_kek(flag, env, setting_key_file=setting).key == flag_key
    assert resolve_kek(None, env, setting_key_file=setting).key == setting_key
    assert resolve_kek(None, env).key == env_key
    src = resolve_kek(None, {keys.ENV_PASSPHRASE: "correct horse"})
    assert isinstance(src, PassphraseSource) and "correct horse" not in repr(src)
    with pytest.raises(NoKeyError) as exc:
        resolve_kek(None, {})
    msg = str(exc.value)
    assert "--key-file" in msg and keys.ENV_PASSPHRASE in msg and "--create-key-file" in msg


def test_key_sources_refuse_the_other_kind():
    kf = KeyFileSource(os.urandom(32), "/etc/k")
    pp = PassphraseSource("pw", **FAST_SCRYPT)
    pp_params, _ = pp.kek_for_new_backup()
    kf_params, kek = kf.kek_for_new_backup()
    assert kek == kf.key and kf_params == {"kdf": "keyfile", "fingerprint": kf.fingerprint}
    with pytest.raises(WrongKeyError, match="passphrase"):
        kf.kek_for(pp_params)
    with pytest.raises(WrongKeyError, match="key file"):
        pp.kek_for(kf_params)
    other = KeyFileSource(os.urandom(32), "/etc/other")
    with pytest.raises(WrongKeyError, match="/etc/other does not match"):
        other.kek_for(kf_params)
    assert pp.kek_for(pp_params) == PassphraseSource("pw").kek_for(pp_params)
