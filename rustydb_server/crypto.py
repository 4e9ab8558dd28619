"""AES-256-GCM sealing of backup chunks, key wrapping and passphrase KDFs.

Pure functions over bytes (no files: key files live in ``keys.py``).

Nonces. Every backup gets a fresh random 256-bit data key (``generate_data_key``)
that encrypts nothing but that backup's chunks and index. A chunk's 96-bit
nonce is ``nonce_prefix (4 random bytes, per backup) || seq (u64 big-endian)``
where ``seq`` is the chunk's position in the backup (0, 1, 2, ... across all
entries) and the writer hands out each ``seq`` exactly once. So within one
key every nonce is distinct by construction, and no two backups share a key
(2**-256 odds), which is why no (key, nonce) pair can repeat. Rotation
re-wraps the same data key without re-encrypting, so it adds no new
encryptions under it. ``INDEX_SEQ`` (2**64 - 1) is reserved for the index.

Key hierarchy. A key file's key, or a passphrase stretched once per process
(``keys.py`` caches the derivation), is the key-encryption key (KEK). Since
backup format 3 one KEK wraps the data keys of every file a process writes (an
archiver wraps one per WAL segment for as long as it runs), so the KEK never
wraps directly: each file's data key is wrapped under a key derived from the
KEK and that file's header hash (``file_wrapping_key``, HKDF-SHA256), used for
that one wrap. No (key, nonce) pair of the wrap can repeat however many files
share the KEK, and a KDF runs once per passphrase and salt, not once per file.
Formats 1 and 2 wrapped under the KEK itself (``wrap_key`` with the KEK), with
a fresh salt, and so a fresh KDF run, per file.

Key wrapping uses AES-256-GCM with a random 96-bit nonce.

Key bytes never appear in a repr, a log line or an exception: they travel in
``SecretKey``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_SIZE = 32
NONCE_PREFIX_SIZE = 4
TAG_SIZE = 16
WRAP_NONCE_SIZE = 12
WRAPPED_KEY_SIZE = WRAP_NONCE_SIZE + KEY_SIZE + TAG_SIZE
INDEX_SEQ = 2**64 - 1
CIPHER = "AES-256-GCM"

# Defaults for new backups, and the bounds a backup header may ask of us: the
# header is only checksummed until the key is unwrapped, so a hostile header
# must not be able to demand a terabyte of scrypt memory.
SCRYPT_DEFAULT = {"n": 2**15, "r": 8, "p": 1}
ARGON2_DEFAULT = {"iterations": 3, "memory_kib": 64 * 1024, "lanes": 1}
MIN_SCRYPT_N = 2**10
MAX_KDF_MEMORY = 1 << 30


# cryptography is a noticeable part of a tool's start-up, so it is loaded on
# first use: work on unencrypted backups never pays for it.
def _aesgcm() -> type[AESGCM]:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM


def argon2id_class():
    """cryptography's Argon2id, or None before cryptography 44."""
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
    except ImportError:  # pragma: no cover - depends on the installed version
        return None
    return Argon2id


def _aead(key: SecretKey | bytes | AESGCM) -> AESGCM:
    cls = _aesgcm()
    return key if isinstance(key, cls) else cls(_raw(key))


class CryptoError(Exception):
    """Base class for key and encryption failures."""


class WrongKeyError(CryptoError):
    """The key file or passphrase does not match this backup."""


class AuthenticationError(CryptoError):
    """A sealed chunk failed authentication (damaged, moved or foreign)."""


class SecretKey:
    """Key bytes that never show up in repr, str or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes | bytearray | memoryview) -> None:
        self._value = bytes(value)

    def reveal(self) -> bytes:
        """The raw bytes, for handing to a cipher; never print them."""
        return self._value

    def __bytes__(self) -> bytes:
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    __hash__ = None  # type: ignore[assignment]  # equality is by secret value

    def __repr__(self) -> str:
        return f"SecretKey(<{len(self._value)} bytes hidden>)"

    __str__ = __repr__

    def __reduce__(self):  # keep keys out of pickles, caches and queues
        raise TypeError("SecretKey cannot be pickled")


def _raw(key: SecretKey | bytes) -> bytes:
    raw = key.reveal() if isinstance(key, SecretKey) else bytes(key)
    if len(raw) != KEY_SIZE:
        raise CryptoError(f"AES-256 keys are {KEY_SIZE} bytes, got {len(raw)}")
    return raw


def generate_data_key() -> SecretKey:
    """A fresh random 256-bit key (``bytes(key)`` gives the raw bytes)."""
    return SecretKey(os.urandom(KEY_SIZE))


def generate_nonce_prefix() -> bytes:
    return os.urandom(NONCE_PREFIX_SIZE)


def chunk_nonce(nonce_prefix: bytes, seq: int) -> bytes:
    if len(nonce_prefix) != NONCE_PREFIX_SIZE:
        raise CryptoError(f"nonce prefix must be {NONCE_PREFIX_SIZE} bytes")
    return nonce_prefix + struct.pack(">Q", seq)


def seal_chunk(
    data_key: SecretKey | bytes | AESGCM,
    nonce_prefix: bytes,
    seq: int,
    plaintext: bytes | memoryview,
    aad: bytes,
) -> bytes:
    """Encrypt ``plaintext``; returns ciphertext || 16-byte tag.

    ``seq`` must be unique for ``data_key`` (see the module docstring).
    ``data_key`` may be a prebuilt ``AESGCM`` to skip the per-call key setup.
    """
    return _aead(data_key).encrypt(chunk_nonce(nonce_prefix, seq), plaintext, aad)


def open_chunk(
    data_key: SecretKey | bytes | AESGCM,
    nonce_prefix: bytes,
    seq: int,
    sealed: bytes | memoryview,
    aad: bytes,
) -> bytes:
    """Decrypt and authenticate; AuthenticationError if anything differs."""
    from cryptography.exceptions import InvalidTag

    try:
        return _aead(data_key).decrypt(chunk_nonce(nonce_prefix, seq), sealed, aad)
    except InvalidTag:
        raise AuthenticationError("authentication failed") from None


def cipher_for(data_key: SecretKey | bytes) -> AESGCM:
    """An AESGCM object for many seal/open calls (thread-safe)."""
    return _aesgcm()(_raw(data_key))


def wrap_key(kek: SecretKey | bytes, data_key: SecretKey | bytes, aad: bytes) -> bytes:
    """Encrypt ``data_key`` under ``kek``: nonce(12) || ciphertext(32) || tag(16)."""
    nonce = os.urandom(WRAP_NONCE_SIZE)
    return nonce + _aead(kek).encrypt(nonce, _raw(data_key), aad)


def unwrap_key(kek: SecretKey | bytes, wrapped: bytes, aad: bytes) -> SecretKey:
    """Recover the data key; WrongKeyError if ``kek`` (or ``aad``) does not match."""
    if len(wrapped) != WRAPPED_KEY_SIZE:
        raise WrongKeyError(f"wrapped key has {len(wrapped)} bytes, expected {WRAPPED_KEY_SIZE}")
    from cryptography.exceptions import InvalidTag

    nonce, body = wrapped[:WRAP_NONCE_SIZE], wrapped[WRAP_NONCE_SIZE:]
    try:
        return SecretKey(_aead(kek).decrypt(nonce, body, aad))
    except InvalidTag:
        raise WrongKeyError("the key file/passphrase does not match this backup") from None


WRAPPING_KEY_INFO = b"rustydb backup key wrap v3"


def file_wrapping_key(kek: SecretKey | bytes, context: bytes) -> SecretKey:
    """The key that wraps one file's data key: HKDF-SHA256 of the KEK, bound to
    ``context`` (the file's header hash), so each file's wrap has a key of its own."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=WRAPPING_KEY_INFO + bytes(context))
    return SecretKey(hkdf.derive(_raw(kek)))


def key_fingerprint(key: SecretKey | bytes) -> str:
    """A short public id of a key file's key (HMAC, so it reveals nothing of the key)."""
    return hmac.new(_raw(key), b"rustydb backup key fingerprint v1", hashlib.sha256).hexdigest()[:16]


# -- passphrase KDFs --------------------------------------------------------


def new_kdf_params(kdf: str = "scrypt", **overrides: int) -> dict:
    """Parameters for a new passphrase-protected backup, with a fresh salt."""
    if kdf == "scrypt":
        params = {"kdf": "scrypt", **SCRYPT_DEFAULT, **overrides}
    elif kdf == "argon2id":
        if argon2id_class() is None:
            raise CryptoError("Argon2id needs cryptography >= 44; use scrypt")
        params = {"kdf": "argon2id", **ARGON2_DEFAULT, **overrides}
    else:
        raise CryptoError(f"unknown KDF {kdf!r} (expected scrypt or argon2id)")
    params["salt"] = os.urandom(16)
    check_kdf_params(params)
    return params


def check_kdf_params(params: dict) -> None:
    """Refuse parameters that are malformed, too weak or absurdly expensive."""
    kdf = params.get("kdf")
    salt = params.get("salt")
    if not isinstance(salt, bytes) or len(salt) < 16:
        raise CryptoError("KDF salt missing or shorter than 16 bytes")
    if kdf == "scrypt":
        n, r, p = params.get("n"), params.get("r"), params.get("p")
        if not all(isinstance(v, int) and v > 0 for v in (n, r, p)):
            raise CryptoError("scrypt parameters n, r, p must be positive integers")
        if n < MIN_SCRYPT_N or n & (n - 1):
            raise CryptoError(f"scrypt n={n} must be a power of two >= {MIN_SCRYPT_N}")
        if 128 * n * r > MAX_KDF_MEMORY or p > 16:
            raise CryptoError(f"scrypt parameters n={n} r={r} p={p} exceed the resource limit")
    elif kdf == "argon2id":
        t, m, lanes = params.get("iterations"), params.get("memory_kib"), params.get("lanes")
        if not all(isinstance(v, int) and v > 0 for v in (t, m, lanes)):
            raise CryptoError("argon2id parameters must be positive integers")
        if m * 1024 > MAX_KDF_MEMORY or t > 64 or lanes > 64 or m < 8 * lanes:
            raise CryptoError(f"argon2id parameters t={t} m={m}KiB lanes={lanes} out of range")
    else:
        raise CryptoError(f"unknown KDF {kdf!r}")


def derive_kek(passphrase: SecretKey | bytes, params: dict) -> SecretKey:
    """Stretch a passphrase into a 256-bit key-encryption key."""
    check_kdf_params(params)
    secret = passphrase.reveal() if isinstance(passphrase, SecretKey) else bytes(passphrase)
    if params["kdf"] == "scrypt":
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        kdf = Scrypt(salt=params["salt"], length=KEY_SIZE, n=params["n"], r=params["r"], p=params["p"])
    else:
        Argon2id = argon2id_class()
        if Argon2id is None:
            raise CryptoError("this backup uses Argon2id, which needs cryptography >= 44")
        kdf = Argon2id(
            salt=params["salt"],
            length=KEY_SIZE,
            iterations=params["iterations"],
            lanes=params["lanes"],
            memory_cost=params["memory_kib"],
        )
    return SecretKey(kdf.derive(secret))
