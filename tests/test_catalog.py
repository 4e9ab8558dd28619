"""The server's backup catalog: entries survive restarts; a damaged file never keeps the server down."""

from __future__ import annotations

import json
import os

import pytest

from rustydb_server.backup.catalog import CATALOG_FILE, Catalog, CatalogError


def test_entries_survive_reopening_and_interrupted_ones_are_failed(tmp_path):
    cat = Catalog(str(tmp_path))
    cat.add(backup_id="a", backup_type="full", status="completed")
    cat.add(backup_id="b", backup_type="incremental", parent_id="a")  # in_progress
    again = Catalog(str(tmp_path))
    assert again.mark_interrupted() == ["b"]
    assert again.get("a")["status"] == "completed" and again.get("b")["status"] == "failed"
    assert stat_mode(tmp_path / CATALOG_FILE) == 0o600


def stat_mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"backups": 5}',
        b'{"backups": [7]}',
        b'{"backups": [{"status": "completed"}]}',
        b"[" * 50_000,
    ],
)
def test_a_damaged_catalog_is_set_aside_and_the_server_starts_without_it(tmp_path, garbage):
    (tmp_path / CATALOG_FILE).write_bytes(garbage)
    cat = Catalog(str(tmp_path))
    assert cat.list() == []
    assert cat.set_aside and open(cat.set_aside, "rb").read() == garbage  # kept to inspect
    assert not (tmp_path / CATALOG_FILE).exists()
    cat.add(backup_id="new", backup_type="full", status="completed")
    assert [e["backup_id"] for e in json.loads((tmp_path / CATALOG_FILE).read_text())["backups"]] == ["new"]


def test_an_unreadable_catalog_is_a_clear_error(tmp_path):
    (tmp_path / CATALOG_FILE).mkdir()  # reading it fails (EISDIR), whoever we are
    with pytest.raises(CatalogError, match="cannot read backup catalog"):
        Catalog(str(tmp_path))


@pytest.mark.parametrize(
    "backup_id,location",
    [
        ("0b0c5d1e-6f3a-4d2b-9c1e-2a3b4c5d6e7f", "/etc/passwd"),
        ("0b0c5d1e-6f3a-4d2b-9c1e-2a3b4c5d6e7f", "relative/0b0c5d1e-6f3a-4d2b-9c1e-2a3b4c5d6e7f.backup"),
        ("../../etc/passwd", "/backups/../../etc/passwd.backup"),
        ("0b0c5d1e-6f3a-4d2b-9c1e-2a3b4c5d6e7f", "/backups/0b0c5d1e-6f3a-4d2b-9c1e-2a3b4c5d6e7f.backup\x00x"),
        ("0b0c5d1e-6f3a-4d2b-9c1e-2a3b4c5d6e7f", 42),
    ],
)
def test_a_server_backup_whose_location_the_server_never_writes_sets_the_catalog_aside(tmp_path, backup_id, location):
    """The server unlinks <location>.partial of its own interrupted backups: an
    edited catalog must not point that at any other file."""
    entry = {"backup_id": backup_id, "status": "in_progress", "origin": "api", "location": location}
    (tmp_path / CATALOG_FILE).write_text(json.dumps({"format": 1, "backups": [entry]}))
    cat = Catalog(str(tmp_path))
    assert cat.set_aside and cat.get(backup_id) is None
    assert cat.mark_interrupted() == []


def test_a_server_backup_at_its_own_file_loads(tmp_path):
    backup_id = "0b0c5d1e-6f3a-4d2b-9c1e-2a3b4c5d6e7f"
    entry = {"backup_id": backup_id, "status": "in_progress", "origin": "api", "location": f"/b/{backup_id}.backup"}
    (tmp_path / CATALOG_FILE).write_text(json.dumps({"format": 1, "backups": [entry]}))
    cat = Catalog(str(tmp_path))
    assert not cat.set_aside and cat.mark_interrupted() == [backup_id]
