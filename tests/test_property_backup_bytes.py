"""The backup reader under any file bytes: the contract fuzz/backup.py states, checked with hypothesis.

Only BackupError, the key errors and ManifestError; a backup that verifies
reads back whole and by byte range alike; a manifest writes back the map it
was read from. Seeds are backups written by the real BackupWriter, plain,
with a key file and with a passphrase.
"""

from __future__ import annotations

import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import backup
from rustydb_server.backup.manifest import Manifest
from rustydb_server.container.reader import BackupReader
from tests.support.mutations import mutated

SEEDS = backup.seeds()
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_the_seeds_read_back_as_written():
    manifest = backup.make_manifest("00000000-0000-4000-8000-000000000009", ["main", "sales"])
    entries = {"databases/main.sqlite": bytes(range(256)) * 9, "databases/sales.sqlite": b""}
    for key in backup.KEYS[:3]:
        data = backup.write_backup(manifest, entries, key=key)
        reader = BackupReader(io.BytesIO(data), key=key)
        assert {e.name: b"".join(reader.read_entry(e.name)) for e in reader.entries()} == entries
        assert Manifest.from_header(reader.header) == manifest
        assert reader.verify().entries == 2
    plain = backup.write_backup(manifest, entries)
    assert backup.assemble(backup.disassemble(plain)) == plain
    for seed in SEEDS:
        backup.check(seed)


@SETTINGS
@given(st.integers(0, 7), st.binary(max_size=3000))
def test_any_bytes_keep_the_contract(mode, data):
    backup.check(bytes([mode]) + data)


@SETTINGS
@given(mutated(SEEDS))
def test_damaged_backups_keep_the_contract(data):
    backup.check(data)


@SETTINGS
@given(mutated([s for s in SEEDS if s[0] & 4]))
def test_damaged_backups_with_valid_checksums_keep_the_contract(data):
    """Header sum, record heads, footer and digest made right after the damage."""
    backup.check(data)
