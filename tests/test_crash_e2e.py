"""kill -9 under load, many cycles: every acknowledged commit survives, nothing half-done."""

from __future__ import annotations

import random
import threading
import time

from rustydb_client import client as rc


def _writer(port, wid, first_n, acked, stop):
    """Commit two-row transactions; remember each one the server acknowledged."""
    try:
        conn = rc.connect(port=port)
    except rc.ClientError:
        return
    n = first_n
    try:
        while not stop.is_set():
            n += 1
            try:
                conn.execute("BEGIN")
                conn.execute(f"INSERT INTO log(writer, n, part) VALUES ({wid}, {n}, 1)")
                conn.execute(f"INSERT INTO log(writer, n, part) VALUES ({wid}, {n}, 2)")
                conn.execute("COMMIT")
            except (rc.ClientError, OSError):
                return
            acked.append(n)
    finally:
        try:
            conn.close()
        except Exception:
            pass


def test_kill_9_loses_no_acknowledged_commit(server_factory):
    srv = server_factory().start()
    srv.sql("CREATE TABLE log(writer INTEGER, n INTEGER, part INTEGER, PRIMARY KEY(writer, n, part))")
    acked = {1: [], 2: []}
    rnd = random.Random(7)
    for cycle in range(6):
        stop = threading.Event()
        # each cycle numbers its transactions in a range of its own
        threads = [
            threading.Thread(target=_writer, args=(srv.port, w, cycle * 1_000_000, acked[w], stop)) for w in (1, 2)
        ]
        for t in threads:
            t.start()
        time.sleep(rnd.uniform(0.3, 1.0))
        srv.kill()  # SIGKILL at a random moment, with commits in flight
        stop.set()
        for t in threads:
            t.join(10)
        srv.start()
        with rc.connect(port=srv.port) as c:
            for w in (1, 2):
                rows = c.execute(f"SELECT n, count(*) FROM log WHERE writer = {w} GROUP BY n").rows
                present = dict((n, cnt) for n, cnt in rows)
                half = {n: cnt for n, cnt in present.items() if cnt != 2}
                assert not half, f"cycle {cycle}: transactions partly present: {half}"
                missing = [n for n in acked[w] if n not in present]
                assert not missing, f"cycle {cycle}: acknowledged commits lost: {missing[:5]}"
    assert sum(len(v) for v in acked.values()) > 50
    assert srv.stop() == 0
