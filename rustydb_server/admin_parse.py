"""Recognise the admin statements the server runs itself instead of SQLite.

Pure code: ``parse_admin(sql)`` returns one of the command dataclasses below,
``None`` for ordinary SQL, or raises ``AdminSyntaxError`` for a statement that
starts like an admin statement but does not fit its form. Only the first one
or two words decide whether a statement is ours, so ordinary SQL is never
tokenised past them (SQLite's syntax is SQLite's business).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import ReportedError

DATABASE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_RESTORE_POINT_NAME = 63


class AdminSyntaxError(ReportedError):
    """An admin statement was malformed; the message shows the expected form."""

    def __init__(self, message: str):
        super().__init__(message, "syntax_error")


@dataclass(frozen=True)
class AlterSystemSet:
    name: str
    raw_value: str


@dataclass(frozen=True)
class AlterSystemReset:
    name: str | None  # None: RESET ALL


@dataclass(frozen=True)
class Show:
    name: str | None  # None: SHOW ALL


@dataclass(frozen=True)
class ShowBackupSchedule:
    """SHOW BACKUP SCHEDULE: each backup schedule's last and next run."""


@dataclass(frozen=True)
class ShowBackups:
    """SHOW BACKUPS: every backup with its trigger, duration, chain, retention, checks and progress."""


@dataclass(frozen=True)
class ExpireBackups:
    """EXPIRE BACKUPS [DRY RUN]: retention now, in the running server."""

    dry_run: bool = False


@dataclass(frozen=True)
class Shutdown:
    immediate: bool = False


@dataclass(frozen=True)
class Checkpoint:
    pass


@dataclass(frozen=True)
class CreateRestorePoint:
    name: str


@dataclass(frozen=True)
class SwitchWal:
    pass


@dataclass(frozen=True)
class CreateDatabase:
    name: str
    if_not_exists: bool = False


@dataclass(frozen=True)
class DropDatabase:
    name: str
    if_exists: bool = False


@dataclass(frozen=True)
class Use:
    name: str


@dataclass(frozen=True)
class RoleOptions:
    login: bool | None = None  # None: unchanged
    password: str | None = None
    clear_password: bool = False
    attribute: str | None = None  # superuser, backup, readonly
    clear_attribute: bool = False

    def __repr__(self) -> str:  # never the password, in logs or tracebacks
        return (
            f"RoleOptions(login={self.login}, attribute={self.attribute}, password={'***' if self.password else None})"
        )


@dataclass(frozen=True)
class CreateRole:
    name: str
    options: RoleOptions


@dataclass(frozen=True)
class AlterRole:
    name: str
    options: RoleOptions


@dataclass(frozen=True)
class DropRole:
    name: str
    if_exists: bool = False


@dataclass(frozen=True)
class Grant:
    privilege: str  # SELECT, WRITE or ALL
    database: str
    role: str
    revoke: bool = False


@dataclass(frozen=True)
class UndoTransaction:
    """UNDO TRANSACTION txid | UNDO TRANSACTIONS FROM TIME '...' TO TIME '...' [WHERE table = 'x']."""

    txid: int | None = None
    from_time: str | None = None  # as typed; the server reads it (restore/pitr.py's parse_time)
    to_time: str | None = None
    table: str | None = None
    mode: str = "refuse"  # refuse, cascade or nonconflicting


@dataclass(frozen=True)
class AsOf:
    """SELECT ... FROM table AS OF {TIME '...' | TXID n} ...: ``sql`` is the query without the clause."""

    sql: str
    table: str
    txid: int | None = None
    time: str | None = None


AdminCommand = (
    AlterSystemSet
    | AlterSystemReset
    | Show
    | ShowBackupSchedule
    | ShowBackups
    | ExpireBackups
    | Shutdown
    | Checkpoint
    | CreateRestorePoint
    | SwitchWal
    | CreateDatabase
    | DropDatabase
    | Use
    | CreateRole
    | AlterRole
    | DropRole
    | Grant
    | UndoTransaction
    | AsOf
)

FORMS = {
    "ALTER SYSTEM": "ALTER SYSTEM SET name = value, ALTER SYSTEM SET name TO value, "
    "ALTER SYSTEM RESET name or ALTER SYSTEM RESET ALL",
    "SHOW": "SHOW name or SHOW ALL; SHOW BACKUP SCHEDULE; SHOW BACKUPS",
    "SHUTDOWN": "SHUTDOWN or SHUTDOWN IMMEDIATE",
    "EXPIRE BACKUPS": "EXPIRE BACKUPS or EXPIRE BACKUPS DRY RUN",
    "CHECKPOINT": "CHECKPOINT",
    "CREATE RESTORE POINT": "CREATE RESTORE POINT 'name'",
    "SWITCH WAL": "SWITCH WAL",
    "CREATE DATABASE": "CREATE DATABASE [IF NOT EXISTS] name",
    "DROP DATABASE": "DROP DATABASE [IF EXISTS] name",
    "USE": "USE name",
    "CREATE ROLE": "CREATE ROLE name [LOGIN | NOLOGIN] [PASSWORD 'password'] [SUPERUSER | BACKUP | READONLY]",
    "ALTER ROLE": "ALTER ROLE name [LOGIN | NOLOGIN] [PASSWORD 'password' | PASSWORD NULL] "
    "[SUPERUSER | BACKUP | READONLY | NOSUPERUSER | NOBACKUP | NOREADONLY]",
    "DROP ROLE": "DROP ROLE [IF EXISTS] name",
    "GRANT": "GRANT {SELECT | WRITE | ALL} ON DATABASE name TO role",
    "REVOKE": "REVOKE {SELECT | WRITE | ALL} ON DATABASE name FROM role",
    "UNDO": "UNDO TRANSACTION txid [CASCADE | NONCONFLICTING] or UNDO TRANSACTIONS FROM TIME 'start' "
    "TO TIME 'end' [WHERE table = 'name'] [CASCADE | NONCONFLICTING]",
    "AS OF": "SELECT ... FROM table AS OF TIME 'YYYY-MM-DD HH:MM:SS' ... or SELECT ... FROM table AS OF TXID n ...",
}


# ---------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    kind: str  # word, number, string, ident (double-quoted), symbol
    text: str  # for string/ident: the unquoted content


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)[A-Za-z]*")


def _tokens(sql: str) -> Iterator[Token]:
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end + 1
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            if end < 0:
                raise AdminSyntaxError("unterminated /* comment")
            i = end + 2
        elif c in "'\"":
            text, i = _quoted(sql, i, c)
            yield Token("string" if c == "'" else "ident", text)
        elif m := _WORD.match(sql, i):
            yield Token("word", m.group())
            i = m.end()
        elif m := _NUMBER.match(sql, i):
            yield Token("number", m.group())
            i = m.end()
        else:
            yield Token("symbol", c)
            i += 1


def _quoted(sql: str, start: int, quote: str) -> tuple[str, int]:
    """Content of a quoted token starting at ``start``, with doubled quotes undone."""
    parts, i = [], start + 1
    while True:
        end = sql.find(quote, i)
        if end < 0:
            raise AdminSyntaxError(f"a {quote} is never closed")
        parts.append(sql[i:end])
        if sql.startswith(quote * 2, end):
            parts.append(quote)
            i = end + 2
        else:
            return "".join(parts), end + 1


def _is_word(token: Token | None, *words: str) -> bool:
    return token is not None and token.kind == "word" and token.text.upper() in words


# ---------------------------------------------------------------- statements


class _Cursor:
    """Tokens of one admin statement, with errors that show the statement's form."""

    def __init__(self, tokens: list[Token], form: str):
        self.tokens = tokens
        self.pos = 0
        self.form = form

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token | None:
        token = self.peek()
        self.pos += token is not None
        return token

    def fail(self, problem: str) -> AdminSyntaxError:
        return AdminSyntaxError(f"syntax error in {self.form}: {problem}. Usage: {FORMS[self.form]}")

    def keyword(self, *words: str) -> str:
        token = self.take()
        if not _is_word(token, *words):
            raise self.fail(f"expected {' or '.join(words)} {_where(token)}")
        return token.text.upper()

    def optional(self, *words: str) -> bool:
        if _is_word(self.peek(), *words):
            self.pos += 1
            return True
        return False

    def name(self, what: str) -> str:
        token = self.take()
        if token is None or token.kind not in ("word", "ident"):
            raise self.fail(f"expected {what} {_where(token)}")
        return token.text

    def end(self) -> None:
        token = self.take()
        if token is not None and token.kind == "symbol" and token.text == ";":
            token = self.take()
        if token is not None:
            raise self.fail(f"unexpected {_describe(token)} at the end of the statement")


def _describe(token: Token) -> str:
    if token.kind == "string":
        return f"'{token.text}'"
    if token.kind == "ident":
        return f'"{token.text}"'
    return repr(token.text)


def _where(token: Token | None) -> str:
    return "at the end of the statement" if token is None else f"but found {_describe(token)}"


def _form_of(first: Token, second: Token | None) -> str | None:
    """Which admin statement the first two tokens start, if any."""
    word = first.text.upper() if first.kind == "word" else ""
    if word in ("SHOW", "SHUTDOWN", "CHECKPOINT", "USE"):
        return word
    if word == "SWITCH":
        return "SWITCH WAL"
    if word == "EXPIRE" and _is_word(second, "BACKUPS"):
        return "EXPIRE BACKUPS"
    if word == "ALTER" and _is_word(second, "SYSTEM"):
        return "ALTER SYSTEM"
    if word == "CREATE" and _is_word(second, "RESTORE"):
        return "CREATE RESTORE POINT"
    if word == "CREATE" and _is_word(second, "DATABASE"):
        return "CREATE DATABASE"
    if word == "DROP" and _is_word(second, "DATABASE"):
        return "DROP DATABASE"
    if word in ("CREATE", "ALTER", "DROP") and _is_word(second, "ROLE"):
        return f"{word} ROLE"
    if word in ("GRANT", "REVOKE"):
        return word
    if word == "UNDO":
        return word
    return None


def parse_admin(sql: str) -> AdminCommand | None:
    """The admin command in ``sql``, or None when it is ordinary SQL for SQLite."""
    stream = _tokens(sql)
    try:
        first = next(stream, None)
        second = next(stream, None)
    except AdminSyntaxError:
        return None  # not recognisably ours; let SQLite report it
    if first is None:
        return None
    if _is_word(first, "SELECT", "WITH"):
        return _parse_as_of(sql)
    form = _form_of(first, second)
    if form is None:
        return None
    try:
        tokens = [first] + ([second] if second else []) + list(stream)
    except AdminSyntaxError as e:
        raise AdminSyntaxError(f"syntax error in {form}: {e}. Usage: {FORMS[form]}") from None
    cursor = _Cursor(tokens, form)
    command = _PARSERS[form](cursor)
    cursor.end()
    return command


def _parse_alter_system(c: _Cursor) -> AdminCommand:
    c.keyword("ALTER")
    c.keyword("SYSTEM")
    if c.keyword("SET", "RESET") == "RESET":
        if c.optional("ALL"):
            return AlterSystemReset(None)
        return AlterSystemReset(c.name("a setting name or ALL").lower())
    name = c.name("a setting name").lower()
    token = c.take()
    if not ((token and token.kind == "symbol" and token.text == "=") or _is_word(token, "TO")):
        raise c.fail(f"expected = or TO after {name} {_where(token)}")
    value = c.take()
    if value is None or value.kind not in ("string", "number", "word"):
        raise c.fail(f"expected a value for {name} {_where(value)} (quote paths and text: '/var/lib/rusty-db/archive')")
    if value.kind == "word" and value.text.upper() == "DEFAULT":
        return AlterSystemReset(name)  # PostgreSQL's SET name TO DEFAULT
    return AlterSystemSet(name, value.text)


def _parse_show(c: _Cursor) -> AdminCommand:
    c.keyword("SHOW")
    if c.optional("ALL"):
        return Show(None)
    if c.optional("BACKUP"):
        c.keyword("SCHEDULE")
        return ShowBackupSchedule()
    if c.optional("BACKUPS"):
        return ShowBackups()
    return Show(c.name("a setting name or ALL").lower())


def _parse_expire_backups(c: _Cursor) -> AdminCommand:
    c.keyword("EXPIRE")
    c.keyword("BACKUPS")
    if c.optional("DRY"):
        c.keyword("RUN")
        return ExpireBackups(dry_run=True)
    return ExpireBackups()


def _parse_shutdown(c: _Cursor) -> AdminCommand:
    c.keyword("SHUTDOWN")
    return Shutdown(immediate=c.optional("IMMEDIATE"))


def _parse_checkpoint(c: _Cursor) -> AdminCommand:
    c.keyword("CHECKPOINT")
    return Checkpoint()


def _parse_switch_wal(c: _Cursor) -> AdminCommand:
    c.keyword("SWITCH")
    c.keyword("WAL")
    return SwitchWal()


def _parse_restore_point(c: _Cursor) -> AdminCommand:
    c.keyword("CREATE")
    c.keyword("RESTORE")
    c.keyword("POINT")
    token = c.take()
    if token is None or token.kind != "string":
        raise c.fail(f"expected the restore point's name in single quotes {_where(token)}")
    name = token.text
    if not name or len(name) > MAX_RESTORE_POINT_NAME or not name.isprintable():
        raise c.fail(f"a restore point name must be 1 to {MAX_RESTORE_POINT_NAME} printable characters, not {name!r}")
    return CreateRestorePoint(name)


def _database_name(c: _Cursor) -> str:
    name = c.name("a database name")
    if not DATABASE_NAME.fullmatch(name):
        raise c.fail(f"invalid database name {name!r}: use a letter or _ followed by up to 62 letters, digits or _")
    return name


def _parse_create_database(c: _Cursor) -> AdminCommand:
    c.keyword("CREATE")
    c.keyword("DATABASE")
    if_not_exists = _if_exists(c, negated=True)
    name = _database_name(c)
    if not if_not_exists:
        if_not_exists = _if_exists(c, negated=True)
    return CreateDatabase(name, if_not_exists)


def _parse_drop_database(c: _Cursor) -> AdminCommand:
    c.keyword("DROP")
    c.keyword("DATABASE")
    if_exists = _if_exists(c, negated=False)
    return DropDatabase(_database_name(c), if_exists)


def _if_exists(c: _Cursor, negated: bool) -> bool:
    """Consume IF [NOT] EXISTS when present."""
    if not _is_word(c.peek(), "IF"):
        return False
    # "IF" could be a database name; it is the clause only when EXISTS follows.
    rest = c.tokens[c.pos + 1 : c.pos + 3]
    expected = ["NOT", "EXISTS"] if negated else ["EXISTS"]
    if len(rest) >= len(expected) and all(_is_word(t, w) for t, w in zip(rest, expected)):
        c.pos += 1 + len(expected)
        return True
    if len(rest) == 0:
        return False
    raise c.fail(f"expected IF {' '.join(expected)}")


def _parse_use(c: _Cursor) -> AdminCommand:
    c.keyword("USE")
    return Use(_database_name(c))


ROLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,62}")
_ATTRIBUTES = {"SUPERUSER": "superuser", "BACKUP": "backup", "READONLY": "readonly"}


def _role_name(c: _Cursor) -> str:
    name = c.name("a role name")
    if not ROLE_NAME.fullmatch(name):
        raise c.fail(f"invalid role name {name!r}: use a letter or _ followed by up to 62 letters, digits, _, . or -")
    return name


def _role_options(c: _Cursor, *, altering: bool) -> RoleOptions:
    login = password = attribute = None
    clear_password = clear_attribute = False
    c.optional("WITH")
    while (token := c.peek()) is not None and not (token.kind == "symbol" and token.text == ";"):
        word = token.text.upper() if token.kind == "word" else ""
        c.take()
        if word in ("LOGIN", "NOLOGIN"):
            login = word == "LOGIN"
        elif word == "PASSWORD":
            value = c.take()
            if altering and _is_word(value, "NULL"):
                clear_password = True
            elif value is None or value.kind != "string" or not value.text:
                # The value is never quoted back: it may be a password.
                raise c.fail("expected the password in single quotes after PASSWORD")
            else:
                password = value.text
        elif word in _ATTRIBUTES:
            if attribute is not None and attribute != _ATTRIBUTES[word]:
                raise c.fail("a role has at most one of SUPERUSER, BACKUP and READONLY")
            attribute = _ATTRIBUTES[word]
        elif altering and word.startswith("NO") and word[2:] in _ATTRIBUTES:
            clear_attribute = True
        else:
            raise c.fail(f"unexpected {_describe(token) if token.kind != 'string' else 'text'}")
    return RoleOptions(login, password, clear_password, attribute, clear_attribute)


def _parse_create_role(c: _Cursor) -> AdminCommand:
    c.keyword("CREATE")
    c.keyword("ROLE")
    name = _role_name(c)
    return CreateRole(name, _role_options(c, altering=False))


def _parse_alter_role(c: _Cursor) -> AdminCommand:
    c.keyword("ALTER")
    c.keyword("ROLE")
    name = _role_name(c)
    return AlterRole(name, _role_options(c, altering=True))


def _parse_drop_role(c: _Cursor) -> AdminCommand:
    c.keyword("DROP")
    c.keyword("ROLE")
    if_exists = _if_exists(c, negated=False)
    return DropRole(_role_name(c), if_exists)


def _parse_grant(c: _Cursor) -> AdminCommand:
    revoke = c.keyword("GRANT", "REVOKE") == "REVOKE"
    privilege = c.keyword("SELECT", "WRITE", "ALL")
    if privilege == "ALL":
        c.optional("PRIVILEGES")
    c.keyword("ON")
    c.keyword("DATABASE")
    database = _database_name(c)
    c.keyword("FROM" if revoke else "TO")
    return Grant(privilege, database, _role_name(c), revoke)


_MODES = {"CASCADE": "cascade", "NONCONFLICTING": "nonconflicting"}


def _parse_undo(c: _Cursor) -> AdminCommand:
    c.keyword("UNDO")
    if c.keyword("TRANSACTION", "TRANSACTIONS") == "TRANSACTION" and not _is_word(c.peek(), "FROM"):
        token = c.take()
        if token is None or token.kind != "number" or not token.text.isdigit():
            raise c.fail(f"expected the txid to undo {_where(token)}")
        return UndoTransaction(txid=int(token.text), mode=_undo_mode(c))
    c.keyword("FROM")
    c.keyword("TIME")
    start = _string(c, "the start time in single quotes")
    c.keyword("TO")
    c.keyword("TIME")
    end = _string(c, "the end time in single quotes")
    table = None
    if c.optional("WHERE"):
        c.keyword("TABLE")
        token = c.take()
        if not (token and token.kind == "symbol" and token.text == "="):
            raise c.fail(f"expected = after WHERE table {_where(token)}")
        table = _string(c, "the table name in single quotes")
    return UndoTransaction(from_time=start, to_time=end, table=table, mode=_undo_mode(c))


def _undo_mode(c: _Cursor) -> str:
    token = c.peek()
    if _is_word(token, *_MODES):
        c.take()
        return _MODES[token.text.upper()]
    return "refuse"


def _string(c: _Cursor, what: str) -> str:
    token = c.take()
    if token is None or token.kind != "string":
        raise c.fail(f"expected {what} {_where(token)}")
    return token.text


_AS_OF_IDENT = r'(?:"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\]|[A-Za-z_][\w$]*)'
_AS_OF = re.compile(
    rf"\bFROM\s+(?:main\s*\.\s*)?({_AS_OF_IDENT})\s+(AS\s+OF\s+(?:(TIME)\s+'((?:[^']|'')*)'|(TXID)\s+([^\s;),]+)))",
    re.I | re.S,
)
_HAS_AS_OF = re.compile(r"\bAS\s+OF\b", re.I)


def may_be_as_of(sql: str) -> bool:
    """A cheap look for an AS OF clause (the dispatcher's, before parsing)."""
    return _HAS_AS_OF.search(sql) is not None


def _parse_as_of(sql: str) -> AdminCommand | None:
    if not _HAS_AS_OF.search(sql):
        return None
    found = list(_AS_OF.finditer(sql))
    if not found:
        return None  # "as of" in a string or a name: SQLite's business
    if len(found) > 1 or len(_HAS_AS_OF.findall(sql)) > 1:
        raise AdminSyntaxError("AS OF reads one table: a query may have one AS OF clause")
    m = found[0]
    table = m.group(1)
    if table[:1] in ('"', "`") and table[-1:] == table[:1]:
        table = table[1:-1].replace(table[0] * 2, table[0])
    elif table[:1] == "[":
        table = table[1:-1]
    rest = sql[: m.start(2)] + sql[m.end(2) :]
    if m.group(5):
        if not m.group(6).isdigit():
            raise AdminSyntaxError(f"syntax error in AS OF: expected a txid after TXID. Usage: {FORMS['AS OF']}")
        return AsOf(rest, table, txid=int(m.group(6)))
    return AsOf(rest, table, time=m.group(4).replace("''", "'"))


_PARSERS = {
    "ALTER SYSTEM": _parse_alter_system,
    "SHOW": _parse_show,
    "SHUTDOWN": _parse_shutdown,
    "CHECKPOINT": _parse_checkpoint,
    "SWITCH WAL": _parse_switch_wal,
    "CREATE RESTORE POINT": _parse_restore_point,
    "CREATE DATABASE": _parse_create_database,
    "DROP DATABASE": _parse_drop_database,
    "USE": _parse_use,
    "CREATE ROLE": _parse_create_role,
    "ALTER ROLE": _parse_alter_role,
    "DROP ROLE": _parse_drop_role,
    "GRANT": _parse_grant,
    "REVOKE": _parse_grant,
    "UNDO": _parse_undo,
    "EXPIRE BACKUPS": _parse_expire_backups,
}
