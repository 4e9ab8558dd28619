"""What a client's SQL may do to a database file: SQLite's authorizer, as a pure decision.

SQLite calls the authorizer while it prepares a statement (and while it codes
the triggers a statement fires) with an action code and two arguments whose
meaning depends on the code. The internal tables (``__rustydb_state``) are
what crash recovery trusts, so a client may read them but never change, drop,
rename, index or put a trigger on them, nor create an object of their name
(a temporary one would shadow them for unqualified names). PRAGMAs that would undo the server's guarantees
(WAL mode, fsync discipline, its own checkpoints, schema integrity) or that
are process-wide in SQLite (one session would change them for all) are
refused; the harmless per-connection ones stay open to sessions.

No SQL reaches a file outside the data directory: ATTACH and DETACH are
refused (the server's own VACUUM attaches its unnamed scratch database, the
one ATTACH allowed), so is VACUUM INTO (an ATTACH of its target, refused
here as well as by the session's check of the statement), every PRAGMA that
names or acts on files, the functions that load code or touch files, and
virtual tables of any module but the built-in ones that live inside the
database file (full-text search, R-trees, dbstat). The session's connection
is also opened defensive (``database.confine``), a second wall behind this
one.
"""

from __future__ import annotations

import apsw

from .database import STATE_TABLE

# Lower case: SQLite compares names without case. (Other __rustydb_ names are
# not reserved: rusty-db-export's dumps build large rows in a helper table
# called __rustydb_import_pieces.)
INTERNAL_TABLES = frozenset({STATE_TABLE.lower()})

# PRAGMAs refused whatever their form: reading some tells file paths, the rest
# act on files, durability or the whole process.
FORBIDDEN_PRAGMAS = frozenset(
    {
        "journal_mode",
        "synchronous",
        "locking_mode",
        "writable_schema",
        "wal_autocheckpoint",
        "wal_checkpoint",
        "mmap_size",
        "temp_store_directory",
        "data_store_directory",
        "database_list",
        # process-wide in SQLite: one session would set them for every other
        "hard_heap_limit",
        "soft_heap_limit",
        # change the file outside a logged transaction, or the server's own busy handling
        "incremental_vacuum",
        "optimize",
        "busy_timeout",
        # durability of the file on macOS, the lock file of a proxy lock
        "fullfsync",
        "checkpoint_fullfsync",
        "lock_proxy_file",
    }
)

# PRAGMAs a session may read but not set: setting them changes the file's
# format or layout, the schema's meaning on replay, or what the schema may run.
READ_ONLY_PRAGMAS = frozenset(
    {
        "page_size",
        "auto_vacuum",
        "encoding",
        "schema_version",
        "max_page_count",
        "journal_size_limit",
        "legacy_alter_table",
        "trusted_schema",
        # FILE puts a session's temporary tables in files outside the data directory
        "temp_store",
    }
)

# Functions no client may call: they load code into the server, write into its
# log, or read and write files (readfile, writefile and edit come with SQLite's
# fileio extension, not built in here, and are refused should a build have them).
FORBIDDEN_FUNCTIONS = frozenset(
    {
        "load_extension",
        "fts3_tokenizer",
        "sqlite_log",
        "readfile",
        "writefile",
        "edit",
        "lsmode",
    }
)

# The virtual table modules a client may create: the built-in ones whose data
# lives inside the database file. Any other (fsdir, zipfile, csv, ...) could
# reach files outside it.
ALLOWED_VTABLE_MODULES = frozenset(
    {"fts3", "fts4", "fts5", "fts3tokenize", "fts4aux", "fts5vocab", "rtree", "rtree_i32", "geopoly", "dbstat"}
)

# Actions whose first argument is the table (or view) they act on or create.
_TABLE_IN_FIRST = frozenset(
    getattr(apsw, n)
    for n in (
        "SQLITE_INSERT",
        "SQLITE_UPDATE",
        "SQLITE_DELETE",
        "SQLITE_CREATE_TABLE",
        "SQLITE_CREATE_TEMP_TABLE",
        "SQLITE_DROP_TABLE",
        "SQLITE_DROP_TEMP_TABLE",
        "SQLITE_CREATE_VIEW",
        "SQLITE_CREATE_TEMP_VIEW",
        "SQLITE_DROP_VIEW",
        "SQLITE_DROP_TEMP_VIEW",
        "SQLITE_CREATE_VTABLE",
        "SQLITE_DROP_VTABLE",
        "SQLITE_ANALYZE",
    )
)
# Actions whose first argument is the index or trigger's own name and whose
# second is the table it belongs to.
_TABLE_IN_SECOND = frozenset(
    getattr(apsw, n)
    for n in (
        "SQLITE_CREATE_INDEX",
        "SQLITE_CREATE_TEMP_INDEX",
        "SQLITE_DROP_INDEX",
        "SQLITE_DROP_TEMP_INDEX",
        "SQLITE_CREATE_TRIGGER",
        "SQLITE_CREATE_TEMP_TRIGGER",
        "SQLITE_DROP_TRIGGER",
        "SQLITE_DROP_TEMP_TRIGGER",
    )
)


def is_reserved(name: str | None) -> bool:
    """A name clients may not create or change: one of the internal tables'."""
    return name is not None and name.lower() in INTERNAL_TABLES


def decide(op: int, first: str | None, second: str | None, *, internal: bool) -> int:
    """SQLITE_OK or SQLITE_DENY for one authorizer call of a client session.

    ``internal`` is true while the server runs its own statements on the
    session's connection (writing the state table, VACUUM's scratch database).
    """
    if op == apsw.SQLITE_PRAGMA:
        return _decide_pragma(first, second)
    if op == apsw.SQLITE_ATTACH:
        # The server's own VACUUM attaches an unnamed scratch database; any
        # file name (VACUUM INTO's target included) is refused, even then.
        return apsw.SQLITE_OK if internal and not first else apsw.SQLITE_DENY
    if op == apsw.SQLITE_FUNCTION and (second or "").lower() in FORBIDDEN_FUNCTIONS:
        return apsw.SQLITE_DENY
    if internal:
        return apsw.SQLITE_OK
    if op == apsw.SQLITE_DETACH:
        return apsw.SQLITE_DENY
    if op in (apsw.SQLITE_CREATE_VTABLE, apsw.SQLITE_DROP_VTABLE) and (second or "").lower() not in (
        ALLOWED_VTABLE_MODULES
    ):
        return apsw.SQLITE_DENY
    if op in _TABLE_IN_FIRST and is_reserved(first):
        return apsw.SQLITE_DENY
    if op in _TABLE_IN_SECOND and (is_reserved(first) or is_reserved(second)):
        return apsw.SQLITE_DENY
    # ALTER TABLE: the first argument is the schema, the second the table.
    if op == apsw.SQLITE_ALTER_TABLE and is_reserved(second):
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK


def _decide_pragma(name: str | None, argument: str | None) -> int:
    name = (name or "").lower()
    if name in FORBIDDEN_PRAGMAS:
        return apsw.SQLITE_DENY
    if name in READ_ONLY_PRAGMAS and argument is not None:
        return apsw.SQLITE_DENY
    return apsw.SQLITE_OK
