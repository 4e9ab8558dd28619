"""rusty-db-waldump --backup INCR: an incremental's net changes per database,
checked against what the chain fixture's source did between its backups."""

from __future__ import annotations

import json

from tests.support.servers import run_tool


def _waldump(*args: str):
    proc = run_tool("rusty-db-waldump", *args)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_an_incrementals_net_changes(chain):
    paths, states = chain
    # incr1: INSERT INTO customers(name) VALUES ('incr 1'); DELETE FROM customers WHERE id = 1
    doc = json.loads(_waldump("--backup", paths["incr1"], "--json").stdout)
    assert doc["ok"] and doc["type"] == "incremental"
    (net,) = [n for n in doc["net_changes"] if n["tables"]]
    assert net["database"] == "rustydb" and net["transactions"] == 2
    assert net["tables"] == {"customers": {"insert": 1, "update": 0, "delete": 1}}
    # --changes: the rows themselves (no schema here: columns by position, marked)
    out = _waldump("--backup", paths["incr1"], "--changes", "--table", "customers", "--operation", "delete").stdout
    (row,) = [line.strip() for line in out.splitlines() if line.startswith("    ")]
    assert row.startswith('DELETE FROM customers WHERE "$1" = 1;') and "names are unknown" in row
    # the differential at incr2's state nets both incrementals: two inserts, two deletes
    stats = json.loads(_waldump("--backup", paths["diff2"], "--stats", "--json").stdout)
    assert [(t["table"], t["insert"], t["delete"]) for t in stats["tables"]] == [("customers", 2, 2)]


def test_a_backups_net_changes_have_no_txid_to_filter_on(chain):
    paths, _states = chain
    proc = run_tool("rusty-db-waldump", "--backup", paths["incr1"], "--from-txid", "3")
    assert proc.returncode == 2 and "no txid, time or LSN of their own" in proc.stderr
    proc = run_tool("rusty-db-waldump", "--backup", paths["full"])
    assert proc.returncode == 1 and "holds whole databases" in proc.stderr
