"""A table's CREATE statements, guarded and optionally renamed, for a dump.

SQLite stores each object's CREATE statement normalized: leading keywords in
upper case with single spaces, no ``IF NOT EXISTS``, no schema qualifier. So
the object's name is the first token after ``CREATE [UNIQUE|VIRTUAL]
TABLE|INDEX|TRIGGER|VIEW``; ``name_span`` finds it with a small tokenizer
(quoted identifiers in "", [], `` or '' included), never a regular
expression over the whole statement.

Renaming a table must also rewrite the ``ON table`` of its indexes and
triggers and every mention inside a trigger's body. Rather than parse SQL,
the schema is built in an in-memory SQLite database and SQLite's own
``ALTER TABLE ... RENAME TO`` rewrites it; index and trigger names (unique per
database) are renamed here, so the renamed copy can sit beside the original.
"""

from __future__ import annotations

import apsw

from .source import ExportError, SchemaObject, quote_ident

_CLOSING = {'"': '"', "[": "]", "`": "`", "'": "'"}


def _skip_space(sql: str, i: int) -> int:
    """Skip whitespace and comments from ``i``."""
    n = len(sql)
    while i < n:
        if sql[i].isspace():
            i += 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        else:
            break
    return i


def _token_end(sql: str, i: int) -> int:
    """End of the token (identifier, keyword or quoted name) starting at ``i``."""
    ch = sql[i]
    if ch in _CLOSING:
        close = _CLOSING[ch]
        j = i + 1
        while True:
            j = sql.find(close, j)
            if j < 0:
                raise ValueError(f"unterminated quoted name in {sql[:80]!r}")
            if close != "]" and sql.startswith(close * 2, j):
                j += 2  # a doubled quote inside the name
                continue
            return j + 1
    j = i
    while j < len(sql) and (sql[j].isalnum() or sql[j] in "_$" or ord(sql[j]) > 127):
        j += 1
    if j == i:
        raise ValueError(f"unexpected {ch!r} in {sql[:80]!r}")
    return j


def name_span(sql: str) -> tuple[int, int]:
    """(start, end) of the created object's (possibly schema-qualified) name:
    CREATE [UNIQUE|VIRTUAL|TEMP|TEMPORARY] TABLE|INDEX|TRIGGER|VIEW [IF NOT EXISTS] [schema.]name"""

    def word_at(i: int) -> tuple[str, int]:
        if i >= len(sql) or not (sql[i].isalnum() or sql[i] in "_$\"[`'" or ord(sql[i]) > 127):
            return "", i  # not a name or keyword here
        end = _token_end(sql, i)
        return sql[i:end].upper(), end

    i = _skip_space(sql, 0)
    word, end = word_at(i)
    if word != "CREATE":
        raise ValueError(f"not a CREATE statement: {sql[:80]!r}")
    i = _skip_space(sql, end)
    word, end = word_at(i)
    if word in ("UNIQUE", "VIRTUAL", "TEMP", "TEMPORARY"):
        i = _skip_space(sql, end)
        word, end = word_at(i)
    if word not in ("TABLE", "INDEX", "TRIGGER", "VIEW"):
        raise ValueError(f"not a CREATE TABLE/INDEX/TRIGGER/VIEW statement: {sql[:80]!r}")
    i = _skip_space(sql, end)
    word, end = word_at(i)
    if word == "IF":
        j = _skip_space(sql, end)
        if word_at(j)[0] == "NOT":
            j = _skip_space(sql, word_at(j)[1])
            if word_at(j)[0] == "EXISTS":
                i = _skip_space(sql, word_at(j)[1])
                end = _token_end(sql, i)
    after = _skip_space(sql, end)
    if after < len(sql) and sql[after] == ".":  # schema.name: the span covers both parts
        end = _token_end(sql, _skip_space(sql, after + 1))
    if end == i:
        raise ValueError(f"no object name in {sql[:80]!r}")
    return i, end


def has_if_not_exists(sql: str) -> bool:
    start, _ = name_span(sql)
    return sql[:start].upper().split()[-3:] == ["IF", "NOT", "EXISTS"]


def set_name(sql: str, new_name: str) -> str:
    start, end = name_span(sql)
    return sql[:start] + quote_ident(new_name) + sql[end:]


def add_if_not_exists(sql: str) -> str:
    if has_if_not_exists(sql):
        return sql
    start, _ = name_span(sql)
    return sql[:start] + "IF NOT EXISTS " + sql[start:]


def renamed_object_name(name: str, old_table: str, new_table: str) -> str:
    """customers_name -> restored_name for table customers -> restored; else restored_<name>."""
    if name.lower().startswith(old_table.lower()):
        return new_table + name[len(old_table) :]
    return f"{new_table}_{name}"


def rename_table(all_objects: list[SchemaObject], table: str, new_table: str) -> list[SchemaObject]:
    """``table``'s objects (table, indexes, triggers) as they would be after
    renaming it to ``new_table``, with indexes and triggers renamed too."""
    if new_table == table:
        raise ExportError(f"--rename-to {new_table!r} is the table's own name; choose a different name")
    mem = apsw.Connection(":memory:")
    try:
        mem.execute("PRAGMA legacy_alter_table=OFF")
        own = [o for o in all_objects if o.table == table and o.type in ("table", "index", "trigger")]
        for obj in all_objects:
            # Other objects are created too so trigger bodies that mention them still
            # parse during the rename; one that cannot be created here is not ours.
            sql = (
                set_name(obj.sql, renamed_object_name(obj.name, table, new_table))
                if (obj in own and obj.type != "table")
                else obj.sql
            )
            try:
                mem.execute(sql)
            except apsw.Error as exc:
                if obj in own:
                    raise ExportError(
                        f"cannot rename {table!r}: its {obj.type} {obj.name!r} does not rebuild: {exc}"
                    ) from None
        taken = {r[0].lower() for r in mem.execute("SELECT name FROM sqlite_schema")}
        if new_table.lower() in taken:
            raise ExportError(
                f"--rename-to {new_table!r}: the source database already has an object "
                "of that name; choose another name"
            )
        try:
            mem.execute(f"ALTER TABLE {quote_ident(table)} RENAME TO {quote_ident(new_table)}")
        except apsw.Error as exc:
            raise ExportError(f"cannot rename {table!r} to {new_table!r}: {exc}") from None
        out = []
        for obj in own:
            name = new_table if obj.type == "table" else renamed_object_name(obj.name, table, new_table)
            row = mem.execute("SELECT sql FROM sqlite_schema WHERE name = ? AND type = ?", (name, obj.type)).fetchall()
            if not row:
                raise ExportError(f"cannot rename {table!r}: its {obj.type} {obj.name!r} was lost in the rename")
            out.append(SchemaObject(obj.type, name, new_table, row[0][0]))
        return out
    finally:
        mem.close()
