"""Listing the transactions in archived WAL: find the one to recover to (or before).

Each transaction record is shown with its LSN, txid, commit time, database and
what it changed (rows inserted, updated and deleted per table, DDL text), so
an operator can pick --recovery-target-txid or --recovery-target-lsn for the
moment just before a bad transaction.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import apsw

from ..archive import segment_file as sf
from ..wal import reader as wal_reader
from ..wal import record as walrec
from ..wal.lsn import format_lsn
from . import pitr


def summarize_steps(steps) -> list[str]:
    out = []
    for kind, payload in steps:
        if kind == "ddl":
            out.append(payload if len(payload) <= 120 else payload[:117] + "...")
            continue
        counts: dict[str, list[int]] = {}
        for change in apsw.Changeset.iter(payload):
            c = counts.setdefault(change.name, [0, 0, 0])
            c[
                {apsw.SQLITE_INSERT: 0, apsw.SQLITE_UPDATE: 1, apsw.SQLITE_DELETE: 2}[
                    change.op if isinstance(change.op, int) else _op(change.op)
                ]
            ] += 1
        for table, (ins, upd, dele) in counts.items():
            parts = [f"+{ins}" if ins else "", f"~{upd}" if upd else "", f"-{dele}" if dele else ""]
            out.append(f"{table}: {' '.join(p for p in parts if p)}")
    return out


def _op(name: str) -> int:
    return {"INSERT": apsw.SQLITE_INSERT, "UPDATE": apsw.SQLITE_UPDATE, "DELETE": apsw.SQLITE_DELETE}[name]


def list_transactions(
    archive_dir: str, *, timeline: int | None = None, key=None, since_us: int | None = None, database: str | None = None
) -> Iterator[dict]:
    archive = sf.list_archive(archive_dir)
    if not archive:
        return
    tl = timeline or max(archive)
    segments = archive.get(tl, {})
    if not segments:
        raise pitr.PitrError(f"the archive has no segments of timeline {tl}")
    scratch = tempfile.mkdtemp(prefix="rustydb-walinfo-")
    try:
        for segno in sorted(segments):
            name, data = sf.unpack_segment(segments[segno], key=key)
            with open(os.path.join(scratch, name), "wb") as f:
                f.write(data)
        paths = [os.path.join(scratch, n) for n in sorted(os.listdir(scratch))]
        for entry in wal_reader.read_segments(paths, None, timeline=tl):
            rec = walrec.decode_record(entry.body)
            if isinstance(rec, walrec.TxRecord):
                if since_us is not None and rec.commit_time_us < since_us:
                    continue
                if database is not None and rec.database != database:
                    continue
                yield {
                    "lsn": format_lsn(entry.lsn),
                    "txid": rec.txid,
                    "commit_time": pitr.format_time(rec.commit_time_us),
                    "database": rec.database,
                    "changes": summarize_steps(rec.steps),
                }
            elif isinstance(rec, walrec.RestorePointRecord):
                yield {"lsn": format_lsn(entry.lsn), "restore_point": rec.name, "time": pitr.format_time(rec.time_us)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
