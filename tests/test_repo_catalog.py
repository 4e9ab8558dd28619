"""A repository's own catalog (backup/repo_catalog.py) and reading a backup in
place by byte ranges (backup/repo_file.py), over a real LocalRepository."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustydb_server.backup import repo_catalog as rc
from rustydb_server.backup.repo_file import RepositoryFile
from rustydb_server.repository import LocalRepository


def entry(backup_id, kind="full", parent=None, base=None, completed=1, partial=False):
    return {
        "backup_id": backup_id,
        "backup_type": kind,
        "completed_at": completed,
        "end_lsn": completed * 100,
        "parent_id": parent,
        "base_full_id": base,
        "partial": partial,
    }


def put(repo, e):
    repo.put_bytes(rc.backup_key(e["backup_id"]), b"x" * 10)
    rc.record(repo, rc.entry_document(e, 10))


@pytest.fixture
def repo(tmp_path):
    return LocalRepository(str(tmp_path / "repo"))


def test_record_writes_the_entry_and_the_index(repo):
    put(repo, entry("a"))
    put(repo, entry("b", "incremental", parent="a", base="a", completed=2))
    index = json.loads(repo.get_bytes(rc.INDEX_KEY))
    assert [d["backup_id"] for d in index["backups"]] == ["a", "b"]
    doc = json.loads(repo.get_bytes("catalog/b.json"))
    assert doc["key"] == "backups/b/b.backup" and doc["size_bytes"] == 10 and doc["status"] == "completed"


def test_entries_the_index_misses_are_read_from_their_documents(repo):
    """A writer stopped between the entry and the index, or two writers that raced."""
    put(repo, entry("a"))
    repo.put_bytes("catalog/b.json", json.dumps(rc.entry_document(entry("b", completed=2), 10)).encode())
    assert sorted(rc.load(repo)) == ["a", "b"]
    repo.put_bytes(rc.INDEX_KEY, b"{not json")  # a damaged index: rebuilt from the documents
    assert sorted(rc.load(repo)) == ["a", "b"]


def test_a_damaged_entry_document_is_a_clear_error(repo):
    repo.put_bytes("catalog/x.json", b"garbage")
    with pytest.raises(rc.RepoCatalogError, match="catalog/x.json is not valid JSON"):
        rc.load(repo)


def test_chains_and_picks(repo):
    put(repo, entry("f1"))
    put(repo, entry("i1", "incremental", parent="f1", base="f1", completed=2))
    put(repo, entry("d1", "differential", parent="i1", base="f1", completed=3))
    put(repo, entry("i2", "incremental", parent="d1", base="f1", completed=4))
    put(repo, entry("p1", "full", completed=5, partial=True))  # some databases only: never "latest"
    entries = rc.load(repo)
    latest = rc.pick(entries, "latest", url=repo.url)
    assert latest["backup_id"] == "i2"
    assert [e["backup_id"] for e in rc.chain_of(entries, latest, url=repo.url)] == ["f1", "d1", "i2"]
    assert rc.pick(entries, "d", url=repo.url)["backup_id"] == "d1"  # a unique prefix
    with pytest.raises(rc.RepoCatalogError, match="prefix matches several"):
        rc.pick(entries, "i", url=repo.url)
    assert rc.base_for_target(entries, None, url=repo.url)["backup_id"] == "f1"
    with pytest.raises(rc.RepoCatalogError, match="no full or pitr-base backup completed before"):
        rc.base_for_target(entries, 0, url=repo.url)


def test_a_chain_with_a_backup_missing_names_it(repo):
    put(repo, entry("i1", "incremental", parent="gone", base="gone", completed=2))
    entries = rc.load(repo)
    with pytest.raises(rc.RepoCatalogError, match="needs backup gone, which that repository does not hold"):
        rc.chain_of(entries, entries["i1"], url=repo.url)


def test_an_empty_repository_says_so(repo):
    with pytest.raises(rc.RepoCatalogError, match="holds no backups"):
        rc.pick(rc.load(repo), "latest", url=repo.url)


def test_forget_removes_the_entry_then_the_file(repo):
    put(repo, entry("a"))
    put(repo, entry("b", completed=2))
    rc.forget(repo, "a")
    assert list(rc.load(repo)) == ["b"]
    assert repo.stat(rc.backup_key("a")) is None and repo.stat("catalog/a.json") is None


@settings(max_examples=60, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=5000),
    reads=st.lists(st.tuples(st.integers(0, 6000), st.integers(0, 3000)), max_size=12),
    block=st.integers(1, 700),
)
def test_repository_file_reads_what_the_object_holds(tmp_path_factory, data, reads, block):
    repo = LocalRepository(str(tmp_path_factory.mktemp("r")))
    repo.put_bytes("o", data)
    with RepositoryFile(repo, "o", block=block) as f:
        assert f.seek(0, os.SEEK_END) == len(data)
        for offset, size in reads:
            f.seek(offset)
            assert f.read(size) == data[offset : offset + size]
            assert f.tell() == offset + len(data[offset : offset + size])
        f.seek(0)
        assert f.read() == data


def test_backup_repositories_setting():
    from rustydb_server.settings import SettingError, format_value, parse_value

    assert parse_value("backup_repositories", ["/a", "s3://b/p"]) == ["/a", "s3://b/p"]
    assert parse_value("backup_repositories", "/a, s3://b/p") == ["/a", "s3://b/p"]  # ALTER SYSTEM SET
    assert parse_value("backup_repositories", "") == []
    assert format_value("backup_repositories", ["/a", "s3://b/p"]) == "/a, s3://b/p"
    for bad, why in (
        (["s3://"], "names no bucket"),
        (["gs://b"], "a local directory or an s3://bucket/prefix URL"),
        (["/a", "/a"], "each item once"),
        ([1], "a list of strings"),
    ):
        with pytest.raises(SettingError, match=why):
            parse_value("backup_repositories", bad)


def test_replicator_ignores_repository_states_it_did_not_write(tmp_path):
    """A hand-edited catalog must not stop the server's copies (nor the server)."""
    from rustydb_server.backup.catalog import Catalog
    from rustydb_server.backup.replicate import Replicator

    catalog = Catalog(str(tmp_path))
    catalog.add(backup_id="a", status="completed", repositories=["not", "a", "map"])
    catalog.add(backup_id="b", status="completed", repositories={"/r": "pending", 3: {}})
    catalog.add(backup_id="c", status="completed", repositories={"/r": {"state": "pending"}})
    catalog.add(backup_id="d", status="completed", repositories={"/gone": {"state": "pending"}})
    replicator = Replicator(catalog, {"backup_repositories": ["/r"]})
    assert replicator.due() == {"/r": ["c"]}  # /gone is no longer configured: no more copies to it
    assert replicator.summary() == {"/r": {"copied": 0, "pending": 1, "failing": None}}


async def test_a_backup_with_nothing_to_copy_from_does_not_hold_up_the_next(tmp_path):
    """Its file gone and no repository holding it: it is failing, the newer backups are copied."""
    import trio

    from rustydb_server.backup.catalog import Catalog
    from rustydb_server.backup.replicate import Replicator

    catalog = Catalog(str(tmp_path))
    repo = str(tmp_path / "repo")
    for backup_id, completed in (("old", 1), ("new", 2)):
        path = tmp_path / f"{backup_id}.backup"
        path.write_bytes(backup_id.encode() * 100)
        catalog.add(
            backup_id=backup_id,
            backup_type="full",
            status="completed",
            started_at=completed,
            completed_at=completed,
            location=str(path),
            repositories={repo: {"state": "pending"}},
        )
    (tmp_path / "old.backup").unlink()
    replicator = Replicator(catalog, {"backup_repositories": [repo]})
    async with trio.open_nursery() as nursery:
        await nursery.start(replicator.run)
        with trio.fail_after(10):
            while catalog.get("new")["repositories"][repo]["state"] != "copied":
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    old = catalog.get("old")["repositories"][repo]
    assert old["state"] == "failing" and "has no copy to copy from" in old["error"]
    assert list(rc.load(LocalRepository(repo))) == ["new"]
