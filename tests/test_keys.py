"""Key files, key sources and which one is used: flags, settings, the environment and the server's config file."""

from __future__ import annotations

import os
import stat

import pytest

from rustydb_server import keys
from rustydb_server.crypto import SecretKey, WrongKeyError
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


def test_key_file_from_config(tmp_path):
    key = tmp_path / "backup.key"
    keys.create_key_file(str(key))
    conf = tmp_path / "rustydb.toml"
    conf.write_text(f"backup_key_file = '{key}'\n")
    source = keys.resolve_kek(None, {"RUSTYDB_CONFIG": str(conf)})
    assert isinstance(source, keys.KeyFileSource)
    assert source.fingerprint == keys.KeyFileSource.from_file(str(key)).fingerprint
    # an explicit passphrase in the environment still wins over the config file
    env = {"RUSTYDB_CONFIG": str(conf), "RUSTYDB_BACKUP_PASSPHRASE": "pw"}
    assert isinstance(keys.resolve_kek(None, env), keys.PassphraseSource)


def test_no_key_anywhere_names_every_way_to_give_one(tmp_path):
    with pytest.raises(keys.NoKeyError) as e:
        keys.resolve_kek(None, {"RUSTYDB_CONFIG": str(tmp_path / "none.toml")})
    msg = str(e.value)
    assert "--key-file" in msg and "backup_key_file" in msg and "RUSTYDB_BACKUP_PASSPHRASE" in msg


def test_reading_a_backup_needs_a_key_only_when_it_is_encrypted(tmp_path):
    class Header:
        backup_id = "b-1"
        encryption = None

    empty = {"RUSTYDB_CONFIG": str(tmp_path / "none.toml")}
    assert keys.resolve_read_key(Header(), None, empty) is None
    Header.encryption = {"cipher": "AES-256-GCM", "kdf": "scrypt"}
    with pytest.raises(keys.NoKeyError, match="backup b-1 is encrypted \\(scrypt\\).*RUSTYDB_BACKUP_PASSPHRASE"):
        keys.resolve_read_key(Header(), None, empty)
    Header.encryption = {"cipher": "AES-256-GCM", "kdf": "keyfile"}
    with pytest.raises(keys.NoKeyError, match="pass --key-file PATH or set RUSTYDB_BACKUP_KEY_FILE"):
        keys.resolve_read_key(Header(), None, empty)
    assert isinstance(
        keys.resolve_read_key(Header(), None, {**empty, keys.ENV_PASSPHRASE: "pw"}), keys.PassphraseSource
    )


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
