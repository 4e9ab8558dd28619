"""The SQL splitter: any text, fed whole or in pieces.

Contract: it never raises; where the text is cut into pieces never changes
the statements; the fast path for one statement gives what the full scan
gives; every statement it cuts is complete by SQLite's own rule
(sqlite3_complete), and the whole text is complete exactly when the splitter
has nothing pending (a trailing line comment counted as ended). The input bytes are read as UTF-8 (bad bytes replaced);
the first byte is the piece size.
"""

from __future__ import annotations

import apsw

from rustydb_client.sqlsplit import StatementSplitter, split_statements


def _in_pieces(text: str, size: int):
    splitter = StatementSplitter()
    out = []
    for i in range(0, len(text), size):
        out += splitter.feed(text[i : i + size])
    pending = splitter.pending
    return out + splitter.finish(), pending


def check(data: bytes) -> None:
    size = 1 + (data[0] if data else 0) % 16
    text = data[1:].decode("utf-8", "replace")
    fast = split_statements(text)
    full, pending = _in_pieces(text, max(len(text), 1))
    pieces, pieces_pending = _in_pieces(text, size)
    assert fast == full, (text, fast, full)
    assert pieces == full and pieces_pending == pending, (text, size, pieces, full)
    for s in full:
        assert s.sql and s.sql == s.sql.strip(" \t\n\r\f") and s.line >= 1, s
    if "\0" in text:
        return  # SQLite reads its text up to the first NUL
    splitter = StatementSplitter()
    for s in splitter.feed(text):
        assert apsw.complete(s.sql + ";"), (text, s)
    if full:
        # The one difference, deliberate: SQLite calls a text ending inside a
        # line comment incomplete; the splitter (like SQLite given the line's
        # end) does not keep waiting for a comment's end.
        assert apsw.complete(text + "\n") == (not splitter.pending), (text, splitter.pending)


def seeds() -> list[bytes]:
    scripts = [
        "CREATE TABLE t(a, b);\nINSERT INTO t VALUES (1, 'x;y');\nSELECT * FROM t -- c;\n;",
        'CREATE TEMP TRIGGER tr AFTER INSERT ON t BEGIN SELECT 1; UPDATE t SET a = 2; END;\nSELECT "END";',
        "EXPLAIN CREATE TRIGGER x BEFORE DELETE ON t BEGIN DELETE FROM u; END; /* ; */ SELECT [a;b], `c;d`",
        "SELECT 1",
        "SELECT 'unterminated;",
    ]
    return [bytes([i]) + s.encode() for i, s in enumerate(scripts)]


if __name__ == "__main__":
    from fuzz.harness import main

    main(check, seeds)
