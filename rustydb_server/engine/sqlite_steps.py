"""The SQLite side of a commit, after its WAL record is durable.

Once the record is fsynced the transaction is committed: recovery replays it
whatever SQLite does next. What SQLite does next is these two steps: the
session's own commit (with the new ``applied_lsn``), and, if that failed,
applying the record from the WAL ("catching up"). They are a seam: tests
replace ``Engine.sqlite_steps`` to make them fail as a full disk or an I/O
error would, since SQL can no longer make them fail (the authorizer keeps
triggers off the state table).
"""

from __future__ import annotations

import apsw

from . import database, replay


class SqliteSteps:
    def commit(self, conn, lsn: int, txid: int, commit_time_us: int) -> None:
        """Commit the session's open transaction, recording ``lsn`` as applied."""
        database.write_state(conn, lsn, txid, commit_time_us)
        conn.execute("COMMIT")

    def vacuum(self, conn, lsn: int, txid: int, commit_time_us: int) -> None:
        """Run a logged VACUUM on the session's connection, recording ``lsn``."""
        # VACUUM attaches a scratch database: a confined connection allows none.
        allowed = conn.limit(apsw.SQLITE_LIMIT_ATTACHED, 1)
        try:
            conn.execute("VACUUM")
        finally:
            conn.limit(apsw.SQLITE_LIMIT_ATTACHED, allowed)
        conn.execute("BEGIN IMMEDIATE")
        self.commit(conn, lsn, txid, commit_time_us)

    def apply(self, conn, lsn: int, record) -> None:
        """Apply a committed record from the WAL on a replay connection."""
        replay.apply_tx_record(conn, lsn, record)


REAL = SqliteSteps()
