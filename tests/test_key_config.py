"""The command-line tools find backup_key_file in the server's config file."""

from __future__ import annotations

import pytest

from rustydb_server import keys


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
