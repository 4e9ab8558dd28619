"""AES-GCM sealing, key wrapping and passphrase KDFs."""

import os
import pickle

import pytest

from rustydb_server import crypto
from rustydb_server.crypto import AuthenticationError, SecretKey, WrongKeyError
from rustydb_server.keys import KeyFileSource

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
