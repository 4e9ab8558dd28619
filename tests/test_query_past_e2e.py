"""rusty-db-backup --query FILE SQL --archive-dir A --recovery-target-txid X: the tables
read in the base backup in place with the archived changes up to X (forensics/past.py),
checked against the state the workload recorded after each transaction; a schema
change since the base makes it restore the tables alone instead, with the same answer."""

from __future__ import annotations

import json
import random

from rustydb_client import client as rc
from tests.support.servers import run_tool

QUERIES = {
    "items": "SELECT * FROM items ORDER BY id",
    "notes": "SELECT a, b FROM notes ORDER BY a, b",
    "join": "SELECT i.id, i.v, count(n.b) FROM items AS i LEFT JOIN notes AS n ON n.a = i.v "
    "GROUP BY i.id ORDER BY i.id",
    "point": "SELECT v FROM items WHERE id = 7",
}


def _query(base, archive, txid: int, sql: str):
    proc = run_tool(
        "rusty-db-backup", "--query", str(base), sql, "--archive-dir", str(archive),
        "--recovery-target-txid", str(txid), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    return answer["rows"], answer["how"] if answer["in_place"] else "restored: " + answer["how"]


def test_query_at_past_points_reads_the_base_in_place(server_factory, tmp_path):
    archive = tmp_path / "archive"
    archive.mkdir()
    srv = server_factory().start()
    srv.sql("ALTER SYSTEM SET archive_mode = on")
    srv.sql(f"ALTER SYSTEM SET archive_dest = '{archive}'")
    c = rc.connect(port=srv.port)
    c.execute("CREATE TABLE items(id INTEGER PRIMARY KEY, v TEXT)")
    c.execute("CREATE TABLE notes(a TEXT, b INTEGER)")  # no primary key
    numbers = "WITH RECURSIVE s(value) AS (SELECT 1 UNION ALL SELECT value + 1 FROM s WHERE value < 40) "
    c.execute(numbers + "INSERT INTO items SELECT value, 'v' || (value % 5) FROM s")
    c.execute(numbers + "INSERT INTO notes SELECT 'v' || (value % 7), value FROM s WHERE value <= 30")
    base = tmp_path / "base.backup"
    run_tool("rusty-db-backup", "--type", "pitr-base", "--output", str(base), "--port", str(srv.port), check=True)
    rnd = random.Random(3)
    states = {}

    def tx(*statements) -> int:
        c.execute("BEGIN")
        txid = c.execute("SELECT txid_current()").rows[0][0]
        for sql in statements:
            c.execute(sql)
        c.execute("COMMIT")
        states[txid] = {name: c.execute(sql).rows for name, sql in QUERIES.items()}
        return txid

    txids = []
    for _ in range(25):
        k = rnd.randint(1, 50)
        txids.append(
            tx(
                rnd.choice(
                    [
                        f"INSERT OR REPLACE INTO items VALUES ({k}, 'v{rnd.randint(0, 6)}')",
                        f"UPDATE items SET v = 'w{k}' WHERE id BETWEEN {k} AND {k + 2}",
                        f"DELETE FROM items WHERE id IN ({k}, {k + 7})",
                    ]
                ),
                rnd.choice(
                    [
                        f"INSERT INTO notes VALUES ('v{k % 7}', {k})",
                        f"UPDATE notes SET b = b + 100 WHERE a = 'v{k % 7}'",
                        f"DELETE FROM notes WHERE b = {k}",
                    ]
                ),
            )  # fmt: skip
        )
    srv.wait_archived()
    for txid, name in ((txids[0], "join"), (txids[12], "notes"), (txids[-1], "join"), (txids[-1], "point")):
        rows, how = _query(base, archive, txid, QUERIES[name])
        assert rows == states[txid][name], (txid, name)
        assert "read in the backup in place" in how
    # A schema change after the base: the tables are restored alone and replayed instead.
    late = tx("ALTER TABLE notes ADD COLUMN c", "UPDATE notes SET c = 1 WHERE b < 10", "DELETE FROM items WHERE id < 5")
    srv.wait_archived()
    rows, how = _query(base, archive, late, QUERIES["join"])
    assert rows == states[late]["join"]
    assert how.startswith("restored: ") and f"as transaction {late} changed the schema" in how
    # A query may only read: through the views, nothing is written.
    proc = run_tool(
        "rusty-db-backup", "--query", str(base), "CREATE TABLE copied AS SELECT * FROM items",
        "--archive-dir", str(archive),
        "--recovery-target-txid", str(txids[3]),
    )  # fmt: skip
    assert proc.returncode == 1 and "may only read" in proc.stderr and "Traceback" not in proc.stderr
    c.close()
