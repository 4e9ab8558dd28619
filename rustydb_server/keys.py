"""Where a backup's key-encryption key comes from: key files, passphrases, precedence.

A ``KeySource`` turns the public key parameters stored in a backup header
into the key-encryption key (KEK) that unwraps the backup's data key:

- ``KeyFileSource``: 32 random bytes from a key file (stored as 64 hex
  digits). The header records ``{"kdf": "keyfile", "fingerprint": ...}`` so a
  mismatching key file is named before anything else is tried.
- ``PassphraseSource``: a passphrase stretched with scrypt (or Argon2id); the
  header records the KDF, its parameters and salt.

A passphrase is stretched once per process and salt (``_PassphraseKeks``):
every file a process writes gets the same KDF parameters and salt, chosen the
first time it writes one, so the archiver, the server's backups and a tool
writing many files run the KDF once, and a reader runs it once per salt it
meets (a whole archive written by one server process: once). Each file still
has its own random data key, wrapped under a key derived from the KEK and that
file's header (``crypto.file_wrapping_key``, backup format 3).

``resolve_kek`` picks the source: ``--key-file``, then the ``backup_key_file``
setting, then ``RUSTYDB_BACKUP_KEY_FILE``, then ``RUSTYDB_BACKUP_PASSPHRASE``;
``resolve_read_key`` does so for reading one backup, saying which kind of key
it needs when none was given.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
from collections.abc import Mapping
from typing import Protocol

from rustydb_server import crypto
from rustydb_server.crypto import CryptoError, SecretKey, WrongKeyError
from rustydb_server.fileops import REAL, FileOps

ENV_KEY_FILE = "RUSTYDB_BACKUP_KEY_FILE"
ENV_PASSPHRASE = "RUSTYDB_BACKUP_PASSPHRASE"
MAX_KEY_FILE_SIZE = 4096


class KeyFileError(CryptoError):
    """A key file that is missing, malformed or readable by others."""


class NoKeyError(CryptoError):
    """Encryption was asked for but no key was supplied."""


class KeySource(Protocol):
    kind: str  # "keyfile" | "passphrase"

    def describe(self) -> str: ...

    def kek_for_new_backup(self) -> tuple[dict, SecretKey]:
        """Public parameters to store in a new backup's header, and the KEK."""
        ...

    def kek_for(self, params: dict) -> SecretKey:
        """The KEK for a backup whose header holds ``params``."""
        ...


class KeyFileSource:
    kind = "keyfile"

    def __init__(self, key: SecretKey | bytes, path: str | None = None) -> None:
        self.key = key if isinstance(key, SecretKey) else SecretKey(key)
        if len(self.key) != crypto.KEY_SIZE:
            raise KeyFileError(f"a backup key is {crypto.KEY_SIZE} bytes, got {len(self.key)}")
        self.path = path
        self.fingerprint = crypto.key_fingerprint(self.key)

    @classmethod
    def from_file(cls, path: str) -> KeyFileSource:
        return cls(load_key_file(path), path)

    def describe(self) -> str:
        return f"key file {self.path}" if self.path else "key file"

    def __repr__(self) -> str:
        return f"KeyFileSource(path={self.path!r}, fingerprint={self.fingerprint!r})"

    def kek_for_new_backup(self) -> tuple[dict, SecretKey]:
        return {"kdf": "keyfile", "fingerprint": self.fingerprint}, self.key

    def kek_for(self, params: dict) -> SecretKey:
        kdf = params.get("kdf")
        if kdf != "keyfile":
            raise WrongKeyError(
                f"this backup is protected by a passphrase ({kdf}), but a {self.describe()} "
                f"was given; set {ENV_PASSPHRASE} instead"
            )
        expected = params.get("fingerprint")
        if expected is not None and expected != self.fingerprint:
            raise WrongKeyError(
                f"the {self.describe()} does not match this backup (backup needs key "
                f"fingerprint {expected}, this key is {self.fingerprint})"
            )
        return self.key


class _PassphraseKeks:
    """The KEKs this process derived from passphrases, by passphrase and KDF
    parameters, and the parameters (salt included) it gives the files it writes.

    A derivation is slow by design (scrypt: ~0.1 s), and every file a process
    writes is wrapped under one KEK (see the module doc), so each runs once per
    process: a lock per KEK makes threads that need the same KEK wait for one
    run, while KEKs of different salts derive side by side (scrypt and Argon2id
    release the GIL: a PITR derives its archive's KEK while it restores the base
    under another). Passphrases are known by a SHA-256 of them, held in memory
    only, like the KEKs themselves."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards the dicts; held for no derivation
        self._keks: dict[tuple, SecretKey] = {}
        self._deriving: dict[tuple, threading.Lock] = {}
        self._new_params: dict[tuple, dict] = {}

    @staticmethod
    def _id(passphrase: SecretKey) -> bytes:
        return hashlib.sha256(b"rustydb passphrase cache\0" + passphrase.reveal()).digest()

    def kek(self, passphrase: SecretKey, params: dict) -> SecretKey:
        cache_key = (self._id(passphrase), tuple(sorted(params.items())))
        with self._lock:
            kek = self._keks.get(cache_key)
            if kek is not None:
                return kek
            one_run = self._deriving.setdefault(cache_key, threading.Lock())
        with one_run:
            with self._lock:
                kek = self._keks.get(cache_key)
            if kek is None:
                kek = crypto.derive_kek(passphrase, params)  # a failure leaves nothing cached
                with self._lock:
                    self._keks[cache_key] = kek
                    self._deriving.pop(cache_key, None)
            return kek

    def params_for_new(self, passphrase: SecretKey, kdf: str, overrides: dict) -> dict:
        cache_key = (self._id(passphrase), kdf, tuple(sorted(overrides.items())))
        with self._lock:
            params = self._new_params.get(cache_key)
            if params is None:
                params = self._new_params[cache_key] = crypto.new_kdf_params(kdf, **overrides)
            return dict(params)


_PASSPHRASE_KEKS = _PassphraseKeks()


class PassphraseSource:
    kind = "passphrase"

    def __init__(self, passphrase: str | bytes, kdf: str = "scrypt", **kdf_params: int) -> None:
        raw = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
        if not raw:
            raise CryptoError("the backup passphrase is empty")
        self._passphrase = SecretKey(raw)
        self._kdf = kdf
        self._kdf_params = kdf_params

    def describe(self) -> str:
        return "passphrase"

    def __repr__(self) -> str:
        return f"PassphraseSource(kdf={self._kdf!r})"

    def _derive(self, params: dict) -> SecretKey:
        return _PASSPHRASE_KEKS.kek(self._passphrase, params)

    def kek_for_new_backup(self) -> tuple[dict, SecretKey]:
        """This process's parameters for the passphrase (one salt for every file
        it writes), and the KEK, derived the first time only."""
        params = _PASSPHRASE_KEKS.params_for_new(self._passphrase, self._kdf, self._kdf_params)
        return params, self._derive(params)

    def kek_for(self, params: dict) -> SecretKey:
        if params.get("kdf") == "keyfile":
            raise WrongKeyError(
                f"this backup is protected by a key file, but a passphrase was given; use --key-file or {ENV_KEY_FILE}"
            )
        return self._derive(params)


def create_key_file(path: str, fileops: FileOps = REAL) -> SecretKey:
    """Create a new key file (0600, never overwriting one) holding 32 random bytes as hex."""
    key = crypto.generate_data_key()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = fileops.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"key file {path} already exists; not overwriting it") from None
    try:
        os.fchmod(fd, 0o600)  # the umask may only narrow the mode; make it exact
        fileops.write_all(fd, key.reveal().hex().encode() + b"\n")
        fileops.fsync(fd)
    except BaseException:
        fileops.close(fd)
        try:
            fileops.unlink(path)
        except OSError:
            pass
        raise
    fileops.close(fd)
    fileops.fsync_dir(os.path.dirname(os.path.abspath(path)))
    return key


def load_key_file(path: str) -> SecretKey:
    """Read a key file; refuse one that group or others can access."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist") from None
    except PermissionError:
        raise KeyFileError(f"key file {path} is not readable by this user") from None
    try:
        st = os.fstat(fd)  # the file we opened, not whatever the path points at now
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        if st.st_mode & 0o077:
            raise KeyFileError(
                f"key file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to use it. "
                f"Run: chmod 600 {path}"
            )
        data = os.read(fd, MAX_KEY_FILE_SIZE + 1)
    finally:
        os.close(fd)
    return parse_key_file(path, data)


def parse_key_file(path: str, data: bytes) -> SecretKey:
    # Never echo the contents in an error: they may be a key.
    if len(data) == crypto.KEY_SIZE and not _is_hex_text(data):
        return SecretKey(data)
    text = data.strip()
    if len(text) == 2 * crypto.KEY_SIZE and _is_hex_text(text):
        return SecretKey(bytes.fromhex(text.decode("ascii")))
    raise KeyFileError(
        f"key file {path} is not a backup key (expected {2 * crypto.KEY_SIZE} hex digits "
        f"or {crypto.KEY_SIZE} raw bytes); create one with: rusty-db-backup --create-key-file PATH"
    )


def _is_hex_text(data: bytes) -> bool:
    return all(c in b"0123456789abcdefABCDEF" for c in data)


def resolve_kek(
    key_file: str | None = None,
    env: Mapping[str, str] | None = None,
    *,
    setting_key_file: str | None = None,
) -> KeySource:
    """The key source for ``--encrypt`` / reading an encrypted backup, by precedence."""
    env = os.environ if env is None else env
    for path in (key_file, setting_key_file, env.get(ENV_KEY_FILE)):
        if path:
            return KeyFileSource.from_file(path)
    passphrase = env.get(ENV_PASSPHRASE)
    if passphrase:
        return PassphraseSource(passphrase)
    configured = configured_key_file(env)
    if configured:
        return KeyFileSource.from_file(configured)
    raise NoKeyError(
        "no backup encryption key: pass --key-file PATH, set backup_key_file in "
        f"{env.get(ENV_CONFIG) or DEFAULT_CONFIG}, or set {ENV_KEY_FILE} or {ENV_PASSPHRASE}. "
        "Create a key file with: rusty-db-backup --create-key-file PATH"
    )


class KeyedHeader(Protocol):
    """What choosing a key needs of a backup's header (the container's BackupHeader)."""

    backup_id: str
    encryption: dict | None  # public key parameters, or None when not encrypted


def resolve_read_key(
    header: KeyedHeader, key_file: str | None, env: Mapping[str, str] | None = None
) -> KeySource | None:
    """The key needed to read ``header``'s backup, or None when it is not encrypted."""
    if header.encryption is None:
        return None
    try:
        return resolve_kek(key_file, env)
    except NoKeyError:
        kdf = header.encryption.get("kdf")
        how = (
            f"set {ENV_PASSPHRASE} to its passphrase"
            if kdf and kdf != "keyfile"
            else f"pass --key-file PATH or set {ENV_KEY_FILE}"
        )
        raise NoKeyError(
            f"backup {header.backup_id} is encrypted ({kdf or 'unknown key type'}) and no key was given: {how}"
        ) from None


ENV_CONFIG = "RUSTYDB_CONFIG"
DEFAULT_CONFIG = "/etc/rustydb/rustydb.toml"


def configured_key_file(env: Mapping[str, str]) -> str | None:
    """backup_key_file from the server's config file ($RUSTYDB_CONFIG or the default),
    so the command-line tools on the server's machine find the same key."""
    path = env.get(ENV_CONFIG) or DEFAULT_CONFIG
    if not os.path.isfile(path):
        return None
    from .settings import SettingError, read_config_file

    try:
        return read_config_file(path).get("backup_key_file") or None
    except SettingError as e:
        raise NoKeyError(f"cannot read backup_key_file from {path}: {e}") from None
