"""Named repositories: backup_repositories entries "name=URL" and { name = ..., url = ... }
(plain entries keep working), and --repo N|repoN|NAME resolved against them; end to
end, a server whose config file names its repositories, rusty-db-backup and
rusty-db-restore given the names."""

from __future__ import annotations

import json
import os
import tomllib

import pytest

from rustydb_client import client as rc
from rustydb_server import settings as sm
from rustydb_server.tools.repository_settings import UnknownRepository, resolve
from tests.support.servers import ServerProcess, run_tool
from tests.test_backup_api_e2e import call
from tests.test_backup_repositories_e2e import add_rows, backup, count, index_ids, wait_copied
from tests.test_metrics_e2e import scrape


def test_entries_plain_named_and_inline_tables():
    value = sm.parse_value(
        "backup_repositories",
        ["/var/backups/rustydb", "offsite=s3://offsite/rustydb", {"name": "dr", "url": "s3://dr/x"}],
    )
    assert value == ["/var/backups/rustydb", "s3://offsite/rustydb", "s3://dr/x"]
    assert [v.name for v in value] == [None, "offsite", "dr"]
    assert sm.repository_names(value) == {"offsite": "s3://offsite/rustydb", "dr": "s3://dr/x"}
    shown = sm.format_value("backup_repositories", value)
    assert shown == "/var/backups/rustydb, offsite=s3://offsite/rustydb, dr=s3://dr/x"
    # SHOW's form is what ALTER SYSTEM SET takes back.
    again = sm.parse_value("backup_repositories", shown)
    assert [(str(v), v.name) for v in again] == [(str(v), v.name) for v in value]
    # An "=" inside a URL or a path is no name.
    plain = sm.parse_value("backup_repositories", "s3://b/year=2026, /srv/a=b, local=./backups")
    assert [(str(v), v.name) for v in plain] == [("s3://b/year=2026", None), ("/srv/a=b", None), ("./backups", "local")]


@pytest.mark.parametrize(
    "raw, why",
    [
        ("repo1=/x", "would read as a position"),
        ("a=/x, a=/y", "each repository name once"),
        ("a=/x, b=/x", "each item once"),
        ([{"name": "a"}], "an inline table must be"),
        ([{"name": "a b", "url": "/x"}], "must be a letter, then letters"),
        ([3], "each entry must be"),
    ],
)
def test_bad_entries_are_refused_saying_why(raw, why):
    with pytest.raises(sm.SettingError) as e:
        sm.parse_value("backup_repositories", raw)
    assert why in str(e.value)


def test_names_survive_the_auto_file_and_relative_entries(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    sm.set_auto(str(data), "backup_repositories", "near=./repo, s3://far/x")
    with open(data / sm.AUTO_FILE_NAME, "rb") as f:
        assert tomllib.load(f)["backup_repositories"] == ["near=./repo", "s3://far/x"]
    s = sm.Settings.load(None, str(data))
    value = s["backup_repositories"]
    assert value == [str(data / "repo"), "s3://far/x"] and [v.name for v in value] == ["near", None]


def test_resolve_numbers_names_and_unknown_ones(tmp_path, monkeypatch):
    repos = sm.parse_value("backup_repositories", ["/r/one", {"name": "offsite", "url": "s3://o/p"}])
    where = "in the config file /etc/x.toml"
    assert resolve("1", repos, where) == "/r/one"
    assert resolve("repo2", repos, where) == resolve("offsite", repos, where) == "s3://o/p"
    assert resolve("/some/dir", repos, where) == "/some/dir" and resolve("s3://b/p", repos, where) == "s3://b/p"
    with pytest.raises(UnknownRepository) as e:
        resolve("nearby", repos, where)
    assert str(e.value) == (
        "no backup repository 'nearby' in backup_repositories (in the config file /etc/x.toml): the known ones "
        "are 1 /r/one, 2 offsite=s3://o/p; give a number or name from that list, or the repository's "
        "directory (./NAME for one here) or s3:// URL"
    )
    with pytest.raises(UnknownRepository):
        resolve("3", repos, where)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nearby").mkdir()
    assert resolve("nearby", repos, where) == "nearby"  # a directory here, as before names


def test_named_repositories_end_to_end(tmp_path, server_factory, monkeypatch):
    near, far = str(tmp_path / "near"), str(tmp_path / "far")
    conf = tmp_path / "rustydb.toml"
    conf.write_text(f'backup_repositories = ["{near}", {{ name = "offsite", url = "{far}" }}]\n')
    monkeypatch.setenv("RUSTYDB_CONFIG", str(conf))  # the tools read the names there
    srv = server_factory(extra_args=["--config", str(conf)]).start()
    srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);")
    add_rows(srv, 1, 50)
    with rc.connect(port=srv.port) as conn:
        assert conn.execute("SHOW backup_repositories").rows[0][0] == f"{near}, offsite={far}"
    full = backup(srv)
    wait_copied(srv, full["backup_id"], [near, far])
    status, listing = call(srv, "GET", "/api/v1/admin/backups")
    assert listing["repositories"][far]["name"] == "offsite" and listing["repositories"][near]["name"] is None
    m = scrape(srv)
    assert m[("rustydb_repository_info", (("name", "offsite"), ("repository", far)))] == 1

    # --type --repo NAME: the server's list says which; the server copies it to the other.
    add_rows(srv, 51, 80)
    took = run_tool(
        "rusty-db-backup", "--type", "incremental", "--repo", "offsite", "--port", str(srv.port), "--json", check=True
    )
    incr = json.loads(took.stdout)
    assert incr["output"].startswith(os.path.join(far, "backups", incr["backup_id"]))
    wait_copied(srv, incr["backup_id"], [near, far])
    unknown = run_tool("rusty-db-backup", "--type", "full", "--repo", "nearby", "--port", str(srv.port))
    assert unknown.returncode == 1
    assert f"the known ones are 1 {near}, 2 offsite={far}" in unknown.stderr and "on the server" in unknown.stderr
    srv.stop()

    # Without a server: the config file's names.
    listed = run_tool("rusty-db-backup", "--repo", "offsite", "--list", "--json", check=True)
    assert [b["backup_id"] for b in json.loads(listed.stdout)["backups"]] == index_ids(far)
    info = run_tool("rusty-db-backup", "--repo", "repo1", "--info", "latest", "--json", check=True)
    assert json.loads(info.stdout)["backup_id"] == incr["backup_id"]
    fresh = str(tmp_path / "fresh")
    run_tool("rusty-db-restore", "--repo", "offsite", "--data-dir", fresh, check=True)
    with ServerProcess(fresh).start() as copy:
        assert count(copy.port) == 80
    missing = run_tool("rusty-db-restore", "--repo", "elsewhere", "--data-dir", str(tmp_path / "x"))
    assert missing.returncode == 1 and "no backup repository 'elsewhere'" in missing.stderr
    assert f"the known ones are 1 {near}, 2 offsite={far}" in missing.stderr
    assert not os.path.exists(tmp_path / "x")
