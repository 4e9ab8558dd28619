"""One-row writes inside transactions run on the event loop once learned (issue 20):
under kill -9, with two clients' transfers meeting each other's locks, every
acknowledged transaction survives whole and nothing else does."""

from __future__ import annotations

import random
import threading
import time

from rustydb_client import client as rc

ACCOUNTS = 20


def _transfers(port, wid, first_n, acked, stop):
    """Move money between accounts, one transaction each; remember the acknowledged ones."""
    rnd = random.Random(wid * 1000 + first_n)
    try:
        conn = rc.connect(port=port)
    except rc.ClientError:
        return
    n = first_n
    try:
        while not stop.is_set():
            n += 1
            a, b = rnd.sample(range(1, ACCOUNTS + 1), 2)
            amount = rnd.randint(1, 50)
            try:
                conn.execute("BEGIN")
                conn.execute(f"UPDATE acct SET bal = bal - {amount} WHERE id = {a}")
                conn.execute(f"UPDATE acct SET bal = bal + {amount} WHERE id = {b}")
                conn.execute(f"INSERT INTO moved VALUES ({wid}, {n}, {a}, {b}, {amount})")
                conn.execute("COMMIT")
            except rc.ServerError:
                conn.execute("ROLLBACK")  # a serialization failure: try another
                continue
            except (rc.ClientError, OSError):
                return
            acked.append(n)
    finally:
        try:
            conn.close()
        except Exception:
            pass


def test_inline_point_writes_lose_no_acknowledged_transaction_and_keep_none_half_done(server_factory):
    srv = server_factory().start()
    srv.sql("CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)")
    srv.sql("CREATE TABLE moved(writer INTEGER, n INTEGER, a INTEGER, b INTEGER, amount INTEGER)")
    srv.sql(
        f"WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM s WHERE i < {ACCOUNTS}) "
        "INSERT INTO acct SELECT i, 1000 FROM s"
    )
    # A generous budget, so that a loaded test machine still learns the writes.
    srv.sql("ALTER SYSTEM SET inline_statement_budget = '50ms'")
    acked = {1: [], 2: []}
    rnd = random.Random(11)
    for cycle in range(2):
        stop = threading.Event()
        threads = [
            threading.Thread(target=_transfers, args=(srv.port, w, cycle * 1_000_000, acked[w], stop)) for w in (1, 2)
        ]
        for t in threads:
            t.start()
        time.sleep(rnd.uniform(0.5, 0.9))
        srv.kill()  # SIGKILL with transactions in flight
        stop.set()
        for t in threads:
            t.join(10)
        srv.start()
        with rc.connect(port=srv.port) as c:
            balances = dict(c.execute("SELECT id, bal FROM acct").rows)
            moved = c.execute("SELECT writer, n, a, b, amount FROM moved").rows
        assert sum(balances.values()) == ACCOUNTS * 1000
        expected = dict.fromkeys(range(1, ACCOUNTS + 1), 1000)
        for _, _, a, b, amount in moved:
            expected[a] -= amount
            expected[b] += amount
        assert balances == expected, f"cycle {cycle}: balances disagree with the transfers present"
        present = {(w, n) for w, n, *_ in moved}
        for w in (1, 2):
            missing = [n for n in acked[w] if (w, n) not in present]
            assert not missing, f"cycle {cycle}: acknowledged transfers lost: {missing[:5]}"
    assert sum(len(v) for v in acked.values()) > 50
    assert srv.stop() == 0
