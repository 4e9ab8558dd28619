"""The operations guide's restore procedures, run as the guide prints them (only paths
and the port differ): a full restore over a stopped server's data directory, the
incremental restore's steps, the table-level restore into production, and backups
found wherever the CLI wrote them."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import time
import urllib.request

import apsw

from rustydb_client import client as rc
from rustydb_client.protocol import events
from tests.support.servers import BIN, ServerProcess

GUIDE = "../shared/spec/backup-and-recovery-guide.md"


class Guide:
    """Runs the guide's shell lines with its paths mapped into a test directory."""

    def __init__(self, root):
        self.root = str(root)
        self.data = os.path.join(self.root, "var/lib/rusty-db")
        self.backups = os.path.join(self.root, "backups")
        self.cwd = os.path.join(self.root, "work")
        for d in (self.backups, self.cwd):
            os.makedirs(d, exist_ok=True)
        os.makedirs(os.path.dirname(self.data), exist_ok=True)
        self.env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}", RUSTYDB_PORT="0")

    def server(self, data_dir: str | None = None) -> ServerProcess:
        """A server the guide's commands talk to (on the port they use)."""
        srv = ServerProcess(data_dir or self.data)
        self.env["RUSTYDB_PORT"] = str(srv.port)
        return srv

    def path(self, text: str) -> str:
        return text.replace("/var/lib/rusty-db", self.data).replace("/backups", self.backups)

    def run(self, script: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            ["bash", "-c", self.path(script)],
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.cwd,
            timeout=120,
        )
        if check:
            assert proc.returncode == 0, (script, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc


def rows(data_dir: str, sql: str, database: str = "rustydb") -> list:
    conn = apsw.Connection(os.path.join(data_dir, "databases", f"{database}.sqlite"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [list(r) for r in conn.execute(sql).fetchall()]
    finally:
        conn.close()


def stop_the_database(guide: Guide, srv: ServerProcess) -> None:
    """The guide's 'Stop Database First', its CLI way."""
    guide.run('rusty-db-cli --command "SHUTDOWN;"')
    assert srv.wait_exit() == 0


# ------------------------------------------------------------ item 4: restoring over a stopped server


def test_full_restore_over_a_stopped_servers_data_directory_keeps_it_aside(tmp_path):
    guide = Guide(tmp_path)
    srv = guide.server()
    with srv:
        srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        srv.sql("INSERT INTO t(v) VALUES ('in the backup')")
        guide.run("rusty-db-backup --type full --output /backups/full_20251211_000000.backup")
        srv.sql("INSERT INTO t(v) VALUES ('after the backup')")
        stop_the_database(guide, srv)

    proc = guide.run(
        "rusty-db-restore --input /backups/full_20251211_000000.backup \\\n  --data-dir /var/lib/rusty-db \\\n"
        "  --threads 4"
    )
    (kept,) = glob.glob(guide.data + ".pre-restore-*")
    assert f"kept in {kept}" in proc.stdout and f"rm -rf {kept}" in proc.stdout
    # nothing lost: the data from after the backup is in the kept directory
    assert rows(kept, "SELECT v FROM t ORDER BY id") == [["in the backup"], ["after the backup"]]
    assert rows(guide.data, "SELECT v FROM t ORDER BY id") == [["in the backup"]]
    assert not glob.glob(guide.data + ".restoring-*") + glob.glob(guide.data + ".old-*")

    with guide.server() as again:
        assert again.sql("SELECT v FROM t ORDER BY id").stdout.count("in the backup") == 1
        assert "after the backup" not in again.sql("SELECT v FROM t").stdout
        assert f"rm -rf {kept}" in again.log()

    # the same again with --json, over the restored (and since started) directory
    proc = guide.run(
        "rusty-db-restore --input /backups/full_20251211_000000.backup --data-dir /var/lib/rusty-db --json"
    )
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True and summary["replaced_old"] is True
    second = summary["previous_data_dir"]
    assert second != kept and sorted(glob.glob(guide.data + ".pre-restore-*")) == sorted([kept, second])
    assert rows(second, "SELECT v FROM t ORDER BY id") == [["in the backup"]]

    # --force discards what was there instead
    proc = guide.run(
        "rusty-db-restore --input /backups/full_20251211_000000.backup --data-dir /var/lib/rusty-db --force --json"
    )
    summary = json.loads(proc.stdout)
    assert summary["replaced_old"] is True and summary["previous_data_dir"] is None
    assert sorted(glob.glob(guide.data + ".pre-restore-*")) == sorted([kept, second])


def test_a_target_that_is_not_a_data_directory_is_still_refused(tmp_path):
    guide = Guide(tmp_path)
    with guide.server(str(tmp_path / "elsewhere")):
        guide.run("rusty-db-backup --type full --output /backups/full_20251211_000000.backup")
    os.makedirs(guide.data)
    with open(os.path.join(guide.data, "notes.txt"), "w") as f:
        f.write("not a database")
    line = "rusty-db-restore --input /backups/full_20251211_000000.backup --data-dir /var/lib/rusty-db --threads 4"
    proc = guide.run(line, check=False)
    assert proc.returncode == 1 and "holds no RustyDB data directory" in proc.stderr
    assert os.listdir(guide.data) == ["notes.txt"]
    assert not glob.glob(guide.data + ".*")


def test_the_incremental_restore_steps_over_a_stopped_servers_data_directory(tmp_path):
    guide = Guide(tmp_path)
    srv = guide.server()
    with srv:
        srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        srv.sql("INSERT INTO t(v) VALUES ('full')")
        guide.run("rusty-db-backup --type full --output /backups/full_20251207_000000.backup")
        srv.sql("INSERT INTO t(v) VALUES ('incr 1')")
        guide.run("rusty-db-backup --type incremental --output /backups/incr_20251208_000000.backup")
        srv.sql("INSERT INTO t(v) VALUES ('incr 2')")
        guide.run("rusty-db-backup --type incremental --output /backups/incr_20251209_000000.backup")
        srv.sql("INSERT INTO t(v) VALUES ('lost without a backup')")
        stop_the_database(guide, srv)

    guide.run(
        """
rusty-db-restore --input /backups/full_20251207_000000.backup \\
  --data-dir /var/lib/rusty-db

rusty-db-restore --input /backups/incr_20251208_000000.backup \\
  --data-dir /var/lib/rusty-db \\
  --incremental

rusty-db-restore --input /backups/incr_20251209_000000.backup \\
  --data-dir /var/lib/rusty-db \\
  --incremental
"""
    )
    (kept,) = glob.glob(guide.data + ".pre-restore-*")
    assert rows(kept, "SELECT v FROM t ORDER BY id")[-1] == ["lost without a backup"]
    with guide.server() as again:
        out = again.sql("SELECT v FROM t ORDER BY id").stdout
        assert "incr 2" in out and "lost without a backup" not in out


# ------------------------------------------------------------ item 5: the table-level restore


def test_table_level_restore_brings_back_lost_rows_and_keeps_the_updated_ones(tmp_path):
    guide = Guide(tmp_path)
    with guide.server() as srv:
        srv.sql("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT NOT NULL, balance REAL)")
        srv.sql("CREATE INDEX customers_name ON customers(name)")
        values = ", ".join(f"({i}, 'customer {i}', {i}.5)" for i in range(1, 101))
        srv.sql(f"INSERT INTO customers VALUES {values}")
        guide.run("rusty-db-backup --type full --output /backups/full_20251211_000000.backup")
        # the damage: some rows deleted, others updated since the backup (and kept)
        srv.sql("DELETE FROM customers WHERE id % 10 = 0")
        srv.sql("UPDATE customers SET balance = -1, name = 'changed' WHERE id % 10 = 5")
        srv.sql("INSERT INTO customers VALUES (1000, 'new since the backup', 0)")

        guide.run(
            """
rusty-db-restore --input /backups/full_20251211_000000.backup \\
  --table customers \\
  --data-dir /var/lib/rusty-db/temp \\
  --no-start

rusty-db-export --table customers \\
  --input-dir /var/lib/rusty-db/temp \\
  --output customers_restored.sql

rusty-db-cli < customers_restored.sql

rm -rf /var/lib/rusty-db/temp
"""
        )
        with open(os.path.join(guide.cwd, "customers_restored.sql")) as f:
            header = "".join(line for line in f if line.startswith("--"))
        assert "only the rows it lacks are" in header and "primary key (id)" in header
        assert srv.stop() == 0
        got = {r[0]: (r[1], r[2]) for r in rows(guide.data, "SELECT id, name, balance FROM customers")}
    expected = {i: ("changed", -1.0) if i % 10 == 5 else (f"customer {i}", i + 0.5) for i in range(1, 101)}
    expected[1000] = ("new since the backup", 0.0)
    assert got == expected
    assert not os.path.exists(os.path.join(guide.data, "temp"))


# ------------------------------------------------------------ item 6: every backup is findable


def catalog(srv: ServerProcess) -> dict:
    url = f"http://127.0.0.1:{srv.http_port}/api/v1/admin/backups"
    with urllib.request.urlopen(url, timeout=5) as r:
        return {b["backup_id"]: b for b in json.loads(r.read())["backups"]}


def backup_id_in(output: str) -> str:
    return next(line.split(": ", 1)[1] for line in output.splitlines() if line.startswith("Backup ID: "))


def test_cli_backups_are_recorded_where_written_and_bases_skip_files_that_are_gone(tmp_path):
    guide = Guide(tmp_path)
    elsewhere = tmp_path / "mnt" / "other-disk"
    elsewhere.mkdir(parents=True)
    guide.env["RUSTYDB_BACKUP_PASSPHRASE"] = "correct horse battery staple"
    with guide.server() as srv:
        srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        srv.sql("INSERT INTO t(v) VALUES ('full 1')")
        full1 = guide.path("/backups/full_20251211_000000.backup")
        proc = guide.run("rusty-db-backup --type full \\\n  --output /backups/full_20251211_000000.backup")
        full1_id = backup_id_in(proc.stdout)
        entry = catalog(srv)[full1_id]
        assert entry["location"] == full1 and entry["status"] == "completed"

        # a second full backup written elsewhere, then lost
        srv.sql("INSERT INTO t(v) VALUES ('full 2')")
        full2 = str(elsewhere / "full2.backup")
        proc = guide.run(f"rusty-db-backup --type full --output {full2}")
        full2_id = backup_id_in(proc.stdout)
        assert catalog(srv)[full2_id]["location"] == full2
        os.unlink(full2)

        # the guide's incremental: based on the full backup still on disk, and it says so
        srv.sql("INSERT INTO t(v) VALUES ('incremental')")
        proc = guide.run(
            "rusty-db-backup --type incremental \\\n  --output /backups/incr_$(date +%Y%m%d_%H%M%S).backup \\\n"
            "  --compress \\\n  --encrypt"
        )
        assert f"Based on: {full1_id} at {full1}" in proc.stdout
        incr_id = backup_id_in(proc.stdout)
        (incr,) = glob.glob(guide.path("/backups/incr_*.backup"))
        assert catalog(srv)[incr_id]["location"] == incr

        # an incremental written to another directory finds its chain through the catalog
        srv.sql("INSERT INTO t(v) VALUES ('incremental 2')")
        incr2 = str(elsewhere / "incr2.backup")
        proc = guide.run(f"rusty-db-backup --type incremental --output {incr2} --json")
        summary = json.loads(proc.stdout)
        assert summary["based_on"] == f"based on {incr_id} at {incr}" and summary["recorded_by_server"] is True
        stop_the_database(guide, srv)

    proc = guide.run(f"rusty-db-restore --input {incr2} --chain-dir {elsewhere} --data-dir /var/lib/rusty-db --json")
    restored = json.loads(proc.stdout)
    assert restored["chain"] == [full1, incr, incr2]
    assert rows(guide.data, "SELECT v FROM t ORDER BY id") == [
        ["full 1"],
        ["full 2"],
        ["incremental"],
        ["incremental 2"],
    ]
    # several --chain-dir directories, without the catalog
    again = str(tmp_path / "again")
    proc = guide.run(f"rusty-db-restore --input {incr2} --chain-dir {elsewhere} /backups --data-dir {again} --json")
    assert json.loads(proc.stdout)["chain"] == [full1, incr, incr2]


def test_a_backup_the_client_did_not_store_is_not_recorded_and_older_clients_still_work(tmp_path):
    guide = Guide(tmp_path)
    with guide.server() as srv:
        srv.sql("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)")
        full = guide.path("/backups/full.backup")
        guide.run("rusty-db-backup --type full --output /backups/full.backup")
        # a client that asked to record its file, then went away without writing it
        with rc.connect(port=srv.port) as conn:
            conn.send(events.BackupRequested("full", None, None, guide.path("/backups/never-written.backup")))
            while not isinstance(event := conn.next_event(), events.BackupEnd):
                pass
            assert event.awaiting_location
            lost_id = next(b for b, e in catalog(srv).items() if e["location"].endswith("never-written.backup"))
        for _ in range(100):
            if catalog(srv)[lost_id]["status"] != "in_progress":
                break
            time.sleep(0.05)
        assert catalog(srv)[lost_id]["status"] == "failed"
        assert "disconnected" in catalog(srv)[lost_id]["error"]
        # so the next incremental is based on the full backup that is on disk
        proc = guide.run("rusty-db-backup --type incremental --output /backups/incr.backup")
        assert f"at {full}" in proc.stdout
        # a client that does not say where it writes: recorded as before, by its address
        with rc.connect(port=srv.port) as conn:
            conn.send(events.BackupRequested("full"))
            while not isinstance(event := conn.next_event(), events.BackupEnd):
                pass
            assert not event.awaiting_location
        old_style = [
            e for e in catalog(srv).values() if e["location"] == "client [local]"
        ]  # the Unix socket, as PostgreSQL names it
        assert [e["status"] for e in old_style] == ["completed"]
