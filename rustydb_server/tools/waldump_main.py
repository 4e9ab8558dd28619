"""rusty-db-waldump: the transactions of a WAL, what they changed, row by row if asked.

    rusty-db-waldump [--data-dir D | --wal-dir W | --archive-dir A | --repo URL | --backup SEGMENT_FILE|INCREMENTAL]
                     [--timeline N] [--from-time T] [--to-time T] [--from-txid N] [--to-txid N]
                     [--from-lsn L] [--to-lsn L] [--as-of POINT] [--database DB] [--table T]...
                     [--operation insert|update|delete]... [--changes | --stats] [--json]
                     [--key-file F]

With no source option it reads the WAL of the data directory (--data-dir,
default ./rustydb-data, the server's default), which is safe while the
server runs: segments are read in place and the reading ends at the last
complete record. Column names for --changes come from the DDL met in the WAL
and, before that, from the data directory's databases as they are now.

--json prints one JSON document written as it is read (constant memory):
``{"source", "transactions": [...], "ok", "count"}`` or, with --stats,
``{"source", "tables": [...], "minutes": [...], "total", "ok"}``.

--archive-dir takes archive_dest's value as it is, a directory or an
s3://bucket/prefix (its wal/); --repo reads a repository's archived WAL (a
directory's or an s3:// prefix's wal/). S3 endpoint and credentials come
from the config file's repository_s3_* settings and the AWS environment.

Exit status: 0 success (even when nothing matched), 1 failure, 2 usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

import apsw

from ..archive import segment_file as sf
from ..container.errors import BackupError
from ..container.format import BackupType
from ..container.reader import BackupReader
from ..crypto import CryptoError
from ..datadir import DataDir
from ..forensics import sqlrender, walscan
from ..forensics.stats import WalStats
from ..keys import NoKeyError, resolve_kek
from ..restore.pitr import PitrError, format_time, parse_time
from ..wal.lsn import format_lsn, parse_lsn
from .argtypes import as_of
from .output import ToolParser, fail, json_output, run_main
from .waldump import net_changes

PROG = "rusty-db-waldump"
DEFAULT_DATA_DIR = "./rustydb-data"


def build_parser() -> argparse.ArgumentParser:
    p = ToolParser(
        prog=PROG,
        description="List the committed transactions of a WAL (LSN, timeline, txid, commit time, database, "
        "rows inserted/updated/deleted per table), filtered; with --changes each row change as SQL with its "
        "before and after values; with --stats totals per table and per minute. Reads the server's own WAL "
        "(safe while it runs), an archive directory, or one archived segment file. Keys of an encrypted "
        "archive come from --key-file, $RUSTYDB_BACKUP_KEY_FILE or $RUSTYDB_BACKUP_PASSPHRASE.",
    )
    src = p.add_argument_group("where the WAL is (one; default: the WAL of --data-dir)")
    src.add_argument(
        "--data-dir",
        "-D",
        metavar="DIR",
        help=f"the server's data directory (default {DEFAULT_DATA_DIR}): its wal/ is read unless another "
        "source is given, and its databases' schema names the columns of --changes",
    )
    one = src.add_mutually_exclusive_group()
    one.add_argument("--wal-dir", metavar="DIR", help="a WAL directory (a data directory's wal/, or a copy)")
    one.add_argument(
        "--archive-dir", metavar="DIR", help="an archive: archive_dest's value, a directory or an s3://bucket/prefix"
    )
    one.add_argument(
        "--repo", metavar="URL", help="a repository's archived WAL (its wal/): a directory or s3://bucket/prefix"
    )
    one.add_argument(
        "--backup",
        metavar="FILE",
        help="one archived WAL segment file (as the archiver writes it into archive_dest), or an incremental "
        "or differential backup (its net changes per database)",
    )
    src.add_argument(
        "--timeline",
        type=int,
        metavar="N",
        help="only this timeline (with --archive-dir: its history, ancestors up to their switch points)",
    )
    src.add_argument(
        "--key-file", "--encryption-key-file", dest="key_file", metavar="FILE", help="key of an encrypted archive"
    )
    flt = p.add_argument_group("filters (bounds are inclusive)")
    flt.add_argument("--from-time", metavar="TIME", help="'YYYY-MM-DD HH:MM:SS' local time, or ISO 8601 with a zone")
    flt.add_argument("--to-time", metavar="TIME")
    flt.add_argument("--from-txid", type=int, metavar="N")
    flt.add_argument("--to-txid", type=int, metavar="N")
    flt.add_argument("--from-lsn", metavar="LSN", help="e.g. 0/1A2B3C4D")
    flt.add_argument("--to-lsn", metavar="LSN")
    flt.add_argument(
        "--as-of",
        type=as_of,
        metavar="POINT",
        help="up to this point: a time, txid:N or lsn:X (the --to-time/--to-txid/--to-lsn shorthand, "
        "as rusty-db-restore --as-of)",
    )
    flt.add_argument("--database", metavar="NAME", help="only transactions of this database")
    flt.add_argument(
        "--table", metavar="NAME", action="append", help="only transactions changing this table (repeatable)"
    )
    flt.add_argument(
        "--operation",
        choices=walscan.OPERATIONS,
        action="append",
        help="only transactions with rows of this kind (repeatable); with --changes and --stats, only those rows",
    )
    out = p.add_argument_group("output")
    what = out.add_mutually_exclusive_group()
    what.add_argument("--changes", action="store_true", help="each row change as SQL, with before and after values")
    what.add_argument("--stats", action="store_true", help="totals per table and per minute instead of a listing")
    out.add_argument("--json", action="store_true", help="one JSON document, written as the WAL is read")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    return run_main(PROG, parser, argv, lambda args: _run(parser, args))


def _archive_location(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """--repo R reads R's wal/; an s3:// --archive-dir (archive_dest's value) is its wal/ prefix."""
    from ..archive import destination
    from ..repository import is_s3_url
    from ..settings import SettingError
    from . import repository_settings

    if args.repo:
        args.archive_dir = (
            destination.location(args.repo) if is_s3_url(args.repo) else os.path.join(args.repo, destination.WAL_PREFIX)
        )
    elif args.archive_dir and is_s3_url(args.archive_dir):
        args.archive_dir = destination.location(args.archive_dir)
    if args.archive_dir and is_s3_url(args.archive_dir):
        try:
            repository_settings.configure()
        except SettingError as exc:
            parser.error(str(exc))


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _archive_location(parser, args)
    try:
        flt = _filter(args, parser)
    except PitrError as exc:
        parser.error(str(exc))
    try:
        if args.backup and _backup_type(args.backup).needs_parent:
            if flt.has_ranges or args.timeline is not None:
                parser.error(
                    f"{args.backup} is an incremental or differential backup: its net changes have no txid, "
                    "time or LSN of their own; filter them with --database, --table and --operation only"
                )
            return net_changes.run(args, flt, _schemas(args) if args.changes else None)
        source, entries = _source(args, flt)
        schemas = _schemas(args) if args.changes else None
        if args.stats:
            return _print_stats(source, walscan.transactions(entries, flt), flt)
        return _print_listing(source, entries, flt, schemas, args.changes)
    except (walscan.WalScanError, PitrError) as exc:
        return fail(PROG, str(exc))


def _filter(args: argparse.Namespace, parser: argparse.ArgumentParser) -> walscan.Filter:
    def lsn(text: str | None, option: str) -> int | None:
        if text is None:
            return None
        try:
            return parse_lsn(text)
        except ValueError:
            parser.error(f"{option} {text!r} is not an LSN like 0/1A2B3C4D")

    bounds = {
        "to_time_us": parse_time(args.to_time) if args.to_time else None,
        "to_txid": args.to_txid,
        "to_lsn": lsn(args.to_lsn, "--to-lsn"),
    }
    if args.as_of is not None:
        key = {"time": "to_time_us", "txid": "to_txid", "lsn": "to_lsn"}[args.as_of.kind]
        if bounds[key] is not None:
            parser.error(f"--as-of {args.as_of.kind}:... and --to-{args.as_of.kind} say the same thing: give one")
        bounds[key] = args.as_of.value
    return walscan.Filter(
        from_time_us=parse_time(args.from_time) if args.from_time else None,
        from_txid=args.from_txid,
        from_lsn=lsn(args.from_lsn, "--from-lsn"),
        database=args.database,
        tables=frozenset(args.table) if args.table else None,
        operations=frozenset(args.operation) if args.operation else None,
        **bounds,
    )


def _key(key_file: str | None):
    try:
        return resolve_kek(key_file)
    except NoKeyError:
        return None


def _source(args: argparse.Namespace, flt: walscan.Filter) -> tuple[str, Iterator[walscan.TimelineEntry]]:
    if args.archive_dir:
        entries = walscan.archive_entries(
            args.archive_dir, key=_key(args.key_file), timeline=args.timeline, to_lsn=flt.to_lsn
        )
        return args.archive_dir, entries
    if args.backup:
        return args.backup, _segment_file_entries(args.backup, _key(args.key_file))
    wal_dir = args.wal_dir or walscan.data_dir_wal(args.data_dir or DEFAULT_DATA_DIR)
    return wal_dir, walscan.wal_dir_entries(wal_dir, timeline=args.timeline, to_lsn=flt.to_lsn)


class _OneSegment:
    """A SegmentSupplier of one segment held in memory."""

    def __init__(self, segno: int, data: bytes) -> None:
        self._segno = segno
        self._data = data

    def get(self, segno: int) -> bytes | None:
        return self._data if segno == self._segno else None

    def later(self, segno: int) -> list[int]:
        return []


def _header(path: str):
    try:
        with open(path, "rb") as f:
            return BackupReader(f).header
    except (BackupError, OSError) as exc:
        raise walscan.WalScanError(f"{path} is not a readable backup file: {exc}") from None


def _backup_type(path: str) -> BackupType:
    return _header(path).backup_type


def _segment_file_entries(path: str, key) -> Iterator[walscan.TimelineEntry]:
    """The records that start and end in one archived segment file."""
    header = _header(path)
    if header.backup_type is not BackupType.WAL_SEGMENT:
        raise walscan.WalScanError(
            f"{path} is a {header.backup_type} backup: it holds whole databases, not transactions; give an "
            "archived WAL segment file or an incremental or differential backup, or the archive with --archive-dir"
        )
    try:
        name, data = sf.unpack_segment(path, key=key)
    except (sf.ArchiveError, CryptoError, BackupError) as exc:
        raise walscan.WalScanError(f"cannot read {path}: {exc}") from None
    timeline, segno = walscan.walseg.parse_segment_name(name)
    size = header.end_lsn - header.start_lsn
    return walscan.supplied_entries(
        _OneSegment(segno, data),
        timeline=timeline,
        segment_size=size,
        start_lsn=segno * size,
        skip_partial_first=True,
    )


def _schemas(args: argparse.Namespace) -> sqlrender.Schemas:
    """Column names: the data directory's databases as they are now (if there is one);
    the DDL read from the WAL then overrides them table by table."""
    schemas = sqlrender.Schemas()
    data_dir = args.data_dir or (None if (args.wal_dir or args.archive_dir or args.backup) else DEFAULT_DATA_DIR)
    if data_dir is None or not DataDir(data_dir).is_initialized():
        return schemas
    ddir = DataDir(data_dir)
    for name in ddir.list_databases():
        with contextlib.suppress(apsw.Error):
            conn = apsw.Connection(f"file:{ddir.database_path(name)}?mode=ro", flags=apsw.SQLITE_OPEN_URI)
            try:
                rows = conn.execute("SELECT sql FROM sqlite_schema WHERE type = 'table' AND sql IS NOT NULL")
                schemas.seed(name, [r[0] for r in rows])
            finally:
                conn.close()
    return schemas


# ------------------------------------------------------------------ output
def _tx_dict(tx: walscan.Transaction) -> dict:
    return {
        "timeline": tx.timeline,
        "lsn": format_lsn(tx.lsn),
        "end_lsn": format_lsn(tx.end_lsn),
        "txid": tx.txid,
        "commit_time": format_time(tx.commit_time_us),
        "commit_time_us": tx.commit_time_us,
        "database": tx.database,
        "tables": {t: c.as_dict() for t, c in tx.counts.items()},
        "ddl": tx.ddl,
    }


def _tx_line(tx: walscan.Transaction) -> str:
    parts = []
    for table, c in tx.counts.items():
        n = [f"+{c.insert}" if c.insert else "", f"~{c.update}" if c.update else "", f"-{c.delete}" if c.delete else ""]
        parts.append(f"{table} {' '.join(x for x in n if x)}")
    parts += [f"DDL: {_short(sql)}" for sql in tx.ddl]
    return (
        f"{format_lsn(tx.lsn):>18}  tl {tx.timeline}  txid {tx.txid:<8} {format_time(tx.commit_time_us)}  "
        f"{tx.database}: {'; '.join(parts) or '(no changes)'}"
    )


def _short(sql: str) -> str:
    sql = " ".join(sql.split())
    return sql if len(sql) <= 120 else sql[:117] + "..."


def _print_listing(source, entries, flt: walscan.Filter, schemas, changes: bool) -> int:
    doc = json_output()
    stream = doc.stream({"source": source}, "transactions") if doc is not None else None
    count = 0
    for tx in _with_ddl(entries, flt, schemas):
        count += 1
        rows = []
        if changes:
            for change in tx.row_changes():
                if not flt.row_matches(change):
                    continue
                columns = schemas.columns(tx.database, change.table, change.column_count)
                rows.append(
                    sqlrender.change_as_dict(change, columns)
                    if stream is not None
                    else sqlrender.render(change, columns)
                )
        if stream is not None:
            item = _tx_dict(tx)
            if changes:
                item["changes"] = rows
            stream.item(item)
            continue
        print(_tx_line(tx))
        for line in rows:
            print(f"    {line}")
    if stream is not None:
        stream.close({"ok": True, "count": count})
    elif count == 0:
        print("(no transactions match)", file=sys.stderr)
    return 0


def _with_ddl(entries, flt: walscan.Filter, schemas) -> Iterator[walscan.Transaction]:
    """The transactions ``flt`` keeps; every transaction's DDL (kept or not) goes to ``schemas``
    first, in WAL order, so the columns are named as they were."""
    if schemas is None:
        yield from walscan.transactions(entries, flt)
        return
    for tx in walscan.transactions(entries):
        for sql in tx.ddl:
            schemas.apply_ddl(tx.database, sql)
        if flt.matches(tx):
            yield tx


def _print_stats(source: str, txs, flt: walscan.Filter) -> int:
    stats = WalStats(flt)
    for tx in txs:
        stats.add(tx)
    tables = [{"database": db, "table": t, **c.as_dict()} for (db, t), c in sorted(stats.tables.items())]
    minutes = [{"minute": format_time(m), "minute_us": m, **c.as_dict()} for m, c in sorted(stats.minutes.items())]
    doc = json_output()
    if doc is not None:
        doc.document({"source": source, "total": stats.total.as_dict(), "tables": tables, "minutes": minutes})
        return 0
    t = stats.total
    span = (
        f" from {format_time(stats.first_time_us)} to {format_time(stats.last_time_us)}" if stats.first_time_us else ""
    )
    print(f"{t.transactions} transactions, {t.rows} rows changed, {t.wal_bytes} WAL bytes{span}")
    print()
    print(f"{'database.table':<32} {'tx':>8} {'insert':>9} {'update':>9} {'delete':>9} {'WAL bytes':>12}")
    for row in tables:
        name = f"{row['database']}.{row['table']}"
        print(
            f"{name:<32} {row['transactions']:>8} {row['insert']:>9} {row['update']:>9} {row['delete']:>9} "
            f"{row['wal_bytes']:>12}"
        )
    print()
    print(f"{'minute':<34} {'tx':>8} {'insert':>9} {'update':>9} {'delete':>9} {'WAL bytes':>12}")
    for row in minutes:
        print(
            f"{row['minute']:<34} {row['transactions']:>8} {row['insert']:>9} {row['update']:>9} "
            f"{row['delete']:>9} {row['wal_bytes']:>12}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
