"""The typed manifest: every backup type to its map and header form and back,
byte for byte what the dict code wrote, and older manifests without the keys
added since."""

from __future__ import annotations

import copy
import io
import os

import msgpack
import pytest

from rustydb_server.backup.incremental import IncrementalSource
from rustydb_server.backup.manifest import DatabaseEntry, Manifest, ManifestError, TableRows
from rustydb_server.backup.snapshot import Snapshot
from rustydb_server.container.format import BackupHeader, BackupType
from rustydb_server.container.reader import BackupReader
from rustydb_server.container.writer import BackupWriter

FORMAT1 = os.path.join(os.path.dirname(__file__), "data", "format1")
FULL_ID = "96cc29bf-cb71-4b92-bcc0-e203dc875367"

# Captured from the dict code (snapshot.py and incremental.py before the
# Manifest), one per backup type the server takes.
CAPTURED = {
    "pitr-base": {
        "format": 1,
        "backup_id": FULL_ID,
        "backup_type": "pitr-base",
        "system_id": 4995624252431936353,
        "timeline": 1,
        "segment_size": 65536,
        "start_lsn": 66074,
        "end_lsn": 66074,
        "next_txid": 4,
        "last_commit_time_us": 1796280338787778,
        "server_version": "0.1.0",
        "created_us": 1796280338790939,
        "databases": [
            {
                "name": "rustydb",
                "entry": "databases/rustydb.sqlite",
                "applied_lsn": 65785,
                "tables": [{"name": "t", "rows": 2}],
                "size_bytes": 12288,
            },
            {
                "name": "sales",
                "entry": "databases/sales.sqlite",
                "applied_lsn": 65962,
                "tables": [{"name": "o", "rows": 0}],
                "size_bytes": 12288,
            },
        ],
        "all_databases": True,
    },
    "full": {
        "format": 1,
        "backup_id": "598e2ad5-5740-45a8-ae10-78da1edd85eb",
        "backup_type": "full",
        "system_id": 4995624252431936353,
        "timeline": 1,
        "segment_size": 65536,
        "start_lsn": 66074,
        "end_lsn": 66074,
        "next_txid": 4,
        "last_commit_time_us": 1796280338787778,
        "server_version": "0.1.0",
        "created_us": 1796280338792853,
        "databases": [
            {
                "name": "sales",
                "entry": "databases/sales.sqlite",
                "applied_lsn": 65962,
                "tables": [{"name": "o", "rows": 0}],
                "size_bytes": 12288,
            }
        ],
        "all_databases": False,
    },
    "incremental": {
        "format": 1,
        "backup_id": "5df938da-5367-4c08-8616-2aaf8d3b3211",
        "backup_type": "incremental",
        "parent_id": FULL_ID,
        "base_full_id": FULL_ID,
        "system_id": 4995624252431936353,
        "timeline": 1,
        "segment_size": 65536,
        "start_lsn": 66074,
        "end_lsn": 66176,
        "next_txid": 5,
        "last_commit_time_us": 1796280338793435,
        "server_version": "0.1.0",
        "created_us": 1796280338794483,
        "databases": [
            {
                "name": "rustydb",
                "entry": "incremental/rustydb.steps",
                "tables": [],
                "size_bytes": 20,
                "transactions": 1,
            }
        ],
        "wal_records": 1,
        "all_databases": False,
    },
    "differential": {
        "format": 1,
        "backup_id": "c38b4c32-38d7-487e-be56-442732414838",
        "backup_type": "differential",
        "parent_id": FULL_ID,
        "base_full_id": FULL_ID,
        "system_id": 4995624252431936353,
        "timeline": 1,
        "segment_size": 65536,
        "start_lsn": 66074,
        "end_lsn": 66176,
        "next_txid": 5,
        "last_commit_time_us": 1796280338793435,
        "server_version": "0.1.0",
        "created_us": 1796280338794850,
        "databases": [
            {
                "name": "rustydb",
                "entry": "incremental/rustydb.steps",
                "tables": [],
                "size_bytes": 20,
                "transactions": 1,
            },
            {"name": "sales", "entry": "incremental/sales.steps", "tables": [], "size_bytes": 0, "transactions": 0},
        ],
        "wal_records": 1,
        "all_databases": True,
    },
}

# What the dict code's msgpack of the pitr-base manifest was, byte for byte.
PITR_BASE_PACKED = bytes.fromhex(
    "8ea6666f726d617401a96261636b75705f6964d92439366363323962662d636237312d346239322d626363302d"
    "653230336463383735333637ab6261636b75705f74797065a9706974722d62617365a973797374656d5f6964cf"
    "455405ca25882b61a874696d656c696e6501ac7365676d656e745f73697a65ce00010000a973746172745f6c73"
    "6ece0001021aa7656e645f6c736ece0001021aa96e6578745f7478696404b36c6173745f636f6d6d69745f7469"
    "6d655f7573cf000661b51b82adc2ae7365727665725f76657273696f6ea5302e312e30aa637265617465645f75"
    "73cf000661b51b82ba1ba96461746162617365739285a46e616d65a772757374796462a5656e747279b8646174"
    "6162617365732f727573747964622e73716c697465ab6170706c6965645f6c736ece000100f9a67461626c6573"
    "9182a46e616d65a174a4726f777302aa73697a655f6279746573cd300085a46e616d65a573616c6573a5656e74"
    "7279b66461746162617365732f73616c65732e73716c697465ab6170706c6965645f6c736ece000101aaa67461"
    "626c65739182a46e616d65a16fa4726f777300aa73697a655f6279746573cd3000ad616c6c5f64617461626173"
    "6573c3"
)

# An incremental from before partial backups (tests/data/format1/incr.backup):
# no all_databases.
OLDER_INCREMENTAL = {
    "format": 1,
    "backup_id": "13dbb630-90e6-4fb8-be5e-c1287912cacb",
    "backup_type": "incremental",
    "parent_id": "96ad16cc-54dd-430d-9499-255ebb9470a2",
    "base_full_id": "96ad16cc-54dd-430d-9499-255ebb9470a2",
    "system_id": 5645448159429599074,
    "timeline": 1,
    "segment_size": 16777216,
    "start_lsn": 16793000,
    "end_lsn": 16795367,
    "next_txid": 7,
    "last_commit_time_us": 1795630566769177,
    "server_version": "0.1.0",
    "created_us": 1795630566926753,
    "databases": [
        {"name": "rustydb", "entry": "incremental/rustydb.steps", "tables": [], "size_bytes": 2029, "transactions": 4}
    ],
    "wal_records": 4,
}


def packed(d: dict) -> bytes:
    return msgpack.packb(d, use_bin_type=True)


@pytest.mark.parametrize("kind", sorted(CAPTURED))
def test_every_type_round_trips_to_the_same_map_and_bytes(kind):
    captured = CAPTURED[kind]
    manifest = Manifest.from_dict(copy.deepcopy(captured))
    assert manifest.backup_type is BackupType(kind)
    again = manifest.to_dict()
    assert again == captured
    assert list(again) == list(captured)
    assert [list(d) for d in again["databases"]] == [list(d) for d in captured["databases"]]
    assert packed(again) == packed(captured)
    assert Manifest.from_dict(again) == manifest


def test_the_pitr_base_packs_as_the_dict_code_packed_it():
    assert packed(Manifest.from_dict(CAPTURED["pitr-base"]).to_dict()) == PITR_BASE_PACKED


@pytest.mark.parametrize("kind", sorted(CAPTURED))
def test_every_type_round_trips_through_a_written_header(kind):
    manifest = Manifest.from_dict(CAPTURED[kind])
    header = manifest.to_header()
    assert header.backup_type == kind and header.system_id == str(manifest.system_id)
    assert (header.parent_id, header.base_full_id) == (manifest.parent_id, manifest.base_full_id)
    # The header's databases: name, tables and size only, as header_from_manifest wrote them.
    assert header.databases == [
        {"name": d["name"], "tables": d["tables"], "size_bytes": d["size_bytes"]} for d in CAPTURED[kind]["databases"]
    ]
    buf = io.BytesIO()
    writer = BackupWriter(buf, header)
    for db in manifest.databases:
        writer.begin_entry(db.entry)
        writer.end_entry()
    writer.finish()
    read = BackupReader(io.BytesIO(buf.getvalue())).header
    assert read.extra["manifest"] == CAPTURED[kind]
    assert list(read.extra["manifest"]) == list(CAPTURED[kind])
    assert Manifest.from_header(read) == manifest


def test_an_older_manifest_without_all_databases_reads_as_every_database_and_stays_without_it():
    manifest = Manifest.from_dict(OLDER_INCREMENTAL)
    assert manifest.all_databases is None and not manifest.partial
    assert manifest.to_dict() == OLDER_INCREMENTAL and "all_databases" not in manifest.to_dict()
    assert manifest.databases[0].applied_lsn is None and manifest.databases[0].transactions == 4


def test_the_format1_fixtures_read_as_manifests():
    for name, kind in (("full", BackupType.FULL), ("incr", BackupType.INCREMENTAL)):
        with open(os.path.join(FORMAT1, f"{name}.backup"), "rb") as f:
            header = BackupReader(f).header
        manifest = Manifest.from_header(header)
        assert manifest.backup_type is kind and manifest.backup_id == header.backup_id
        assert manifest.to_dict() == header.extra["manifest"]
        assert list(manifest.to_dict()) == list(header.extra["manifest"])


def test_optional_keys_are_written_only_when_set():
    full = Manifest.from_dict(CAPTURED["full"]).to_dict()
    assert not {"parent_id", "base_full_id", "wal_records"} & set(full)
    db = DatabaseEntry("a", "databases/a.sqlite", (TableRows("t", 1),), 10)
    assert list(db.to_dict()) == ["name", "entry", "tables", "size_bytes"]


def test_the_control_record_is_what_the_engine_and_the_incremental_restore_wrote():
    base = Manifest.from_dict(CAPTURED["pitr-base"])
    assert base.control_record() == {
        "backup_id": FULL_ID,
        "type": "pitr-base",
        "end_lsn": 66074,
        "timeline": 1,
        "system_id": 4995624252431936353,
        "base_full_id": FULL_ID,  # a full base is its own chain's base
    }
    incremental = Manifest.from_dict(CAPTURED["incremental"])
    assert incremental.control_record()["base_full_id"] == FULL_ID
    assert incremental.partial and not base.partial


def test_the_types_and_their_predicates():
    assert [t.value for t in BackupType] == ["full", "incremental", "differential", "pitr-base", "wal-segment"]
    assert [t for t in BackupType if t.is_full_base] == [BackupType.FULL, BackupType.PITR_BASE]
    assert [t for t in BackupType if t.needs_parent] == [BackupType.INCREMENTAL, BackupType.DIFFERENTIAL]
    assert BackupType.WAL_SEGMENT not in BackupType.taken_by_server()
    assert packed({"t": BackupType.PITR_BASE}) == packed({"t": "pitr-base"})


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.pop("end_lsn"), "lacks its end_lsn field"),
        (lambda d: d.update(timeline="1"), "timeline must be int, not str"),
        (lambda d: d.update(backup_type="wal-segment"), "is not a server backup's type"),
        (lambda d: d.update(databases={}), "databases must be list"),
        (lambda d: d["databases"].append("x"), "databases[] must be maps"),
        (lambda d: d["databases"][0].pop("entry"), "lacks its databases[].entry field"),
        (lambda d: d["databases"][0]["tables"].append({"name": "t"}), "needs a name and an int row count"),
    ],
)
def test_a_broken_manifest_names_what_is_wrong(edit, message):
    d = copy.deepcopy(CAPTURED["pitr-base"])
    edit(d)
    with pytest.raises(ManifestError) as info:
        Manifest.from_dict(d)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "name",
    [
        "/tmp/victim",
        "../victim",
        "..",
        "a/b",
        "a\\b",
        "a\x00b",
        "x" * 64,
        "",
        "r\u0443stydb",  # a Cyrillic look-alike
        "rustydb\u2215etc",  # a division slash
        "1starts_with_a_digit",
    ],
)
def test_a_database_name_a_path_could_be_built_from_is_refused_at_the_parser(name):
    d = copy.deepcopy(CAPTURED["pitr-base"])
    d["databases"][0]["name"] = name
    with pytest.raises(ManifestError, match="which is not a database name: the backup is damaged"):
        Manifest.from_dict(d)


@pytest.mark.parametrize("key", ["start_lsn", "end_lsn"])
def test_a_negative_lsn_is_damage(key):
    d = copy.deepcopy(CAPTURED["pitr-base"])
    d[key] = -1
    with pytest.raises(ManifestError, match=f"{key} is negative"):
        Manifest.from_dict(d)


def test_keys_a_newer_server_adds_are_kept_as_they_came():
    d = copy.deepcopy(CAPTURED["incremental"])
    d["added_later"] = {"x": 1}
    d["databases"][0]["also_later"] = [1, 2]
    again = Manifest.from_dict(d).to_dict()
    assert again == d and list(again) == list(d)
    assert packed(again) == packed(d)


def test_a_header_without_a_manifest_says_so():
    header = BackupHeader(backup_id=FULL_ID, backup_type=BackupType.FULL, created_us=0)
    with pytest.raises(ManifestError, match="has no manifest"):
        Manifest.from_header(header)


def test_snapshots_and_incrementals_write_the_captured_keys_in_order(source, tmp_path):
    snap = Snapshot(source, None, backup_type="pitr-base")
    try:
        base = snap.manifest()
    finally:
        snap.close()
    # The roles are the one key added since those were captured (the server's
    # roles, which a restore writes back), last.
    assert list(base.to_dict()) == [*CAPTURED["pitr-base"], "roles"]
    assert {tuple(db) for db in base.to_dict()["databases"]} == {tuple(CAPTURED["pitr-base"]["databases"][0])}
    for kind in ("incremental", "differential"):
        with IncrementalSource(source, base.control_record(), kind, None, str(tmp_path)) as src:
            manifest = src.manifest().to_dict()
        assert list(manifest) == [*CAPTURED[kind], "roles"]
        assert {tuple(db) for db in manifest["databases"]} == {tuple(CAPTURED[kind]["databases"][0])}
