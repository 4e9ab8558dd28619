"""A base backup's tables as of a later point, read in place: what
``rusty-db-backup --query FILE --archive-dir A --recovery-target-*`` runs on.

The archived WAL after the base is read as a point-in-time recovery reads it
(the same timeline path, segments, target rule and refusals: restore/pitr.py's
own helpers), but nothing is restored: the changes made to the database up to
the target are merged into one changeset, and each table the query reads is
shown by ``asof.present`` as a view over the base's rows (read through the
backup VFS, in place) and the after-images of the rows changed since. The cost
is the rows changed and the WAL read, not the tables' size.

A history this cannot show as a view (the table's schema changed, a VACUUM
renumbered rowids, the database was dropped or created again) raises
``NeedsRestore``: the caller restores those tables alone instead.
"""

from __future__ import annotations

import contextlib

import apsw

from ..archive import segment_file as sf
from ..backup.manifest import Manifest
from ..engine import database as dbfile
from ..engine import rows_image
from ..engine.replay import VACUUM_STEPS
from ..restore import pitr
from ..restore.archived_wal import ArchivedSegments
from ..wal import record as walrec
from ..wal.lsn import format_lsn
from . import asof
from . import undo as undo_mod


class NeedsRestore(Exception):
    """The state then cannot be shown over the base in place; the message says why."""


def changes_to_target(
    manifest: Manifest,
    applied_lsn: int,
    archive_dir: str,
    target: pitr.Target,
    *,
    database: str,
    tables: list[str],
    key=None,
    threads: int = 2,
) -> tuple[bytes, int]:
    """The net changes made to ``database`` after the base (whose database holds the
    records up to ``applied_lsn``) up to ``target``, along the latest timeline; and
    the number of its transactions read. Raises PitrError as PITR to ``target`` would
    fail, NeedsRestore when a change is one a view cannot show."""
    pitr._check_target_against_base(target, manifest)
    archive = sf.list_archive(archive_dir)
    path = pitr.timeline_path(archive_dir, manifest.timeline, manifest.end_lsn, "latest")
    names = {t.lower() for t in tables}
    group = apsw.ChangesetBuilder()
    txs = 0

    def open_segments(have, tl, first, last):
        return ArchivedSegments(
            have, tl, first=first, last=last, system_id=manifest.system_id, key=key, workers=threads
        )

    walk = pitr.TargetWalk(archive_dir, archive, path, manifest, manifest.end_lsn, target, key, open_segments)
    try:
        with contextlib.closing(walk.records()) as records:
            for entry, rec in records:
                if entry.lsn > applied_lsn and getattr(rec, "database", None) == database:
                    txs += _take(group, rec, names, entry.lsn)
        return group.output(), txs
    finally:
        group.close()


def _take(group: apsw.ChangesetBuilder, rec, tables: set[str], lsn: int) -> int:
    """Add a record of the database to the merged changes; 1 for a transaction."""
    if isinstance(rec, walrec.DatabaseRecord):
        done = {"create": "created", "drop": "dropped"}.get(rec.action, rec.action)
        raise NeedsRestore(f"the database was {done} at LSN {format_lsn(lsn)}")
    if not isinstance(rec, walrec.TxRecord):
        return 0
    if tuple(rec.steps) == VACUUM_STEPS:
        raise NeedsRestore(f"transaction {rec.txid} ran VACUUM")
    for kind, payload in rows_image.expand(rec.steps):
        if kind == "ddl" and undo_mod.reshapes(payload, tables):
            raise NeedsRestore(f"transaction {rec.txid} changed the schema ({' '.join(payload.split())[:60]})")
        if kind == "changeset":
            try:
                group.add(payload)
            except apsw.Error as e:
                raise NeedsRestore(f"the changes of transaction {rec.txid} do not merge ({e})") from None
    return 1


def present_tables(conn: apsw.Connection, source: str, tables: list[str], changes: bytes) -> list[asof.Presented]:
    """Each of ``tables`` of database ``source`` (attached to ``conn`` inside a
    transaction) shown with ``changes`` made to it, under its own name."""
    shown = []
    for i, table in enumerate(tables):
        found = conn.execute(
            f"SELECT name, sql FROM {source}.sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE",
            (table,),
        ).fetchall()
        if not found or found[0][0] == dbfile.STATE_TABLE:
            raise NeedsRestore(f"table {table} is not a table of the base")
        name, sql = found[0]
        shown.append(asof.present(conn, source, name, sql, changes, keys_table=f"{asof.KEYS_TABLE}_{i}"))
    return shown
