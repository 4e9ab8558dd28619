"""rusty-db-waldump --backup INCR: an incremental or differential backup's net changes.

Such a backup holds, per database, the compacted changes of the WAL between
its parent's end LSN and its own (backup/incremental.py): a row inserted
then updated is one insert of its last values, one inserted then deleted is
not there. So there are no transactions, txids or commit times to show: one
entry per database, with the number of transactions compacted into it, its
rows inserted/updated/deleted per table, its DDL, and with --changes each
row as SQL. Each database's steps are read from the backup one at a time.
"""

from __future__ import annotations

import argparse

from ...backup.manifest import Manifest
from ...backup.steps import decode_steps
from ...container.errors import BackupError
from ...container.reader import BackupReader
from ...crypto import CryptoError
from ...forensics import sqlrender, walscan
from ...keys import NoKeyError, resolve_read_key
from ...wal.lsn import format_lsn
from ..output import fail, json_output

PROG = "rusty-db-waldump"


def read(path: str, key_file: str | None):
    """(manifest, iterator of NetChanges) of an incremental or differential backup."""
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise walscan.WalScanError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        header = BackupReader(f).header
        key = resolve_read_key(header, key_file)
        f.seek(0)
        reader = BackupReader(f, key=key)
        manifest = Manifest.from_header(reader.header)
    except (BackupError, CryptoError, NoKeyError) as exc:
        f.close()
        raise walscan.WalScanError(f"cannot read {path}: {exc}") from None

    def each():
        try:
            for db in manifest.databases:
                try:
                    steps = list(decode_steps(reader.read_entry(db.entry)))
                except (BackupError, CryptoError, ValueError) as exc:
                    raise walscan.WalScanError(
                        f"{path}: the changes of database {db.name} are unreadable: {exc}"
                    ) from None
                yield walscan.NetChanges.from_backup_steps(
                    db.name, manifest.start_lsn, manifest.end_lsn, db.transactions, steps
                )
        finally:
            f.close()

    return manifest, each()


def run(args: argparse.Namespace, flt: walscan.Filter, schemas: sqlrender.Schemas | None) -> int:
    try:
        manifest, entries = read(args.backup, args.key_file)
        doc = json_output()
        stream = None
        if doc is not None and not args.stats:
            stream = doc.stream(
                {
                    "source": args.backup,
                    "backup_id": manifest.backup_id,
                    "type": str(manifest.backup_type),
                    "start_lsn": format_lsn(manifest.start_lsn),
                    "end_lsn": format_lsn(manifest.end_lsn),
                },
                "net_changes",
            )
        elif doc is None:
            print(
                f"{manifest.backup_type} backup {manifest.backup_id}: net changes from LSN "
                f"{format_lsn(manifest.start_lsn)} to {format_lsn(manifest.end_lsn)}"
            )
        totals: dict[tuple[str, str], dict[str, int]] = {}
        count = 0
        for net in entries:
            if schemas is not None:
                for sql in net.ddl:
                    schemas.apply_ddl(net.database, sql)
            if not flt.changes_match(net):
                continue
            count += 1
            rows = _rows(net, flt, schemas, as_json=stream is not None) if schemas is not None else []
            if args.stats:
                for change in net.row_changes():
                    if flt.row_matches(change):
                        t = totals.setdefault((net.database, change.table), {"insert": 0, "update": 0, "delete": 0})
                        t[change.op] += 1
                continue
            if stream is not None:
                item = _as_dict(net)
                if schemas is not None:
                    item["changes"] = rows
                stream.item(item)
                continue
            print(_line(net))
            for line in rows:
                print(f"    {line}")
        if args.stats:
            tables = [{"database": d, "table": t, **c, "rows": sum(c.values())} for (d, t), c in sorted(totals.items())]
            if doc is not None:
                doc.document({"source": args.backup, "backup_id": manifest.backup_id, "tables": tables})
            else:
                print(f"{'database.table':<32} {'insert':>9} {'update':>9} {'delete':>9}")
                for row in tables:
                    name = f"{row['database']}.{row['table']}"
                    print(f"{name:<32} {row['insert']:>9} {row['update']:>9} {row['delete']:>9}")
        elif stream is not None:
            stream.close({"ok": True, "count": count})
        return 0
    except walscan.WalScanError as exc:
        return fail(PROG, str(exc))


def _rows(net: walscan.NetChanges, flt: walscan.Filter, schemas: sqlrender.Schemas, *, as_json: bool) -> list:
    out = []
    for change in net.row_changes():
        if flt.row_matches(change):
            columns = schemas.columns(net.database, change.table, change.column_count)
            out.append(sqlrender.change_as_dict(change, columns) if as_json else sqlrender.render(change, columns))
    return out


def _as_dict(net: walscan.NetChanges) -> dict:
    return {
        "database": net.database,
        "transactions": net.transactions,
        "created": net.created,
        "dropped": net.dropped,
        "tables": {t: c.as_dict() for t, c in net.counts.items()},
        "ddl": net.ddl,
    }


def _line(net: walscan.NetChanges) -> str:
    parts = []
    if net.created:
        parts.append("database created")
    if net.dropped:
        parts.append("database dropped")
    for table, c in net.counts.items():
        n = [f"+{c.insert}" if c.insert else "", f"~{c.update}" if c.update else "", f"-{c.delete}" if c.delete else ""]
        parts.append(f"{table} {' '.join(x for x in n if x)}")
    parts += [f"DDL: {' '.join(sql.split())[:120]}" for sql in net.ddl]
    compacted = "" if net.transactions is None else f" ({net.transactions} transactions compacted)"
    return f"  {net.database}{compacted}: {'; '.join(parts) or '(no changes)'}"
