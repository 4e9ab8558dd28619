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
