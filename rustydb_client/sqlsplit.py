"""Split SQL text into statements the way SQLite decides a statement is complete.

The rule is sqlite3_complete()'s: a statement ends at a semicolon outside
strings, quoted identifiers and comments, except inside a CREATE TRIGGER body,
which ends only at `; END ;`. Pure code: text in, statements out. The
incremental StatementSplitter keeps only the statement being read, so a large
script streams through with flat memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Statement:
    sql: str  # from its first token to before its terminating semicolon
    line: int  # 1-based line of its first token


# Token kinds and the transition table of sqlite3_complete() (complete.c).
_SEMI, _WS, _OTHER, _EXPLAIN, _CREATE, _TEMP, _TRIGGER, _END = range(8)
_START, _NORMAL, _EXPLAIN_S, _CREATE_S, _TRIGGER_S, _SEMI_S, _END_S = 1, 2, 3, 4, 5, 6, 7
_TRANSITIONS = {
    # state:     SEMI WS OTHER EXPLAIN CREATE TEMP TRIGGER END
    _START: (1, 1, 2, 3, 4, 2, 2, 2),
    _NORMAL: (1, 2, 2, 2, 2, 2, 2, 2),
    _EXPLAIN_S: (1, 3, 3, 2, 4, 2, 2, 2),
    _CREATE_S: (1, 4, 2, 2, 2, 4, 5, 2),
    _TRIGGER_S: (6, 5, 5, 5, 5, 5, 5, 5),
    _SEMI_S: (6, 6, 5, 5, 5, 5, 5, 7),
    _END_S: (1, 7, 5, 5, 5, 5, 5, 5),
}
_KEYWORDS = {
    "EXPLAIN": _EXPLAIN,
    "CREATE": _CREATE,
    "TEMP": _TEMP,
    "TEMPORARY": _TEMP,
    "TRIGGER": _TRIGGER,
    "END": _END,
}
# SQLite's identifier characters: ASCII letters, digits, _ and $, and every
# non-ASCII character.
_WORD = re.compile(r"[A-Za-z0-9_$\u0080-\U0010FFFF]+")
_SPACE = re.compile(r"[ \t\n\r\f]+")
_OTHER_RUN = re.compile(r"[^ \t\n\r\f;'\"`\[\-/A-Za-z0-9_$\u0080-\U0010FFFF]+")
# In these states only semicolons, quotes and comments matter: skip the rest fast.
_UNINTERESTING = re.compile(r"[^;'\"`\[\-/]+")
_CLOSING = {"'": "'", '"': '"', "`": "`", "[": "]"}
_QUOTE = re.compile("['\"`]")

_CODE, _QUOTED, _LINE_COMMENT, _BLOCK_COMMENT = range(4)
# SQLite's whitespace, and only it: str.strip() would also take \v, \x1c or
# U+3000, which SQLite reads as part of a token (an identifier, for U+3000).
_WHITESPACE = " \t\n\r\f"


class StatementSplitter:
    """Feed text in chunks; get complete statements back as soon as they end."""

    def __init__(self) -> None:
        self._buf = ""  # text not yet scanned
        self._line = 1  # line number at the start of _buf
        self._parts: list[str] = []  # scanned text of the current statement
        self._length = 0  # characters in _parts
        self._end = 0  # end of the statement's last token (trailing comments excluded)
        self._start_line: int | None = None  # None: no statement started yet
        self._state = _START
        self._lex = _CODE
        self._closing = ""

    @property
    def pending(self) -> bool:
        """True while a statement (or a block comment) is open: more input is needed."""
        return self._start_line is not None or self._lex == _BLOCK_COMMENT or bool(self._buf.strip(_WHITESPACE))

    def feed(self, chunk: str) -> list[Statement]:
        self._buf += chunk
        return self._scan(final=False)

    def finish(self) -> list[Statement]:
        """End of input: the last statement needs no semicolon."""
        out = self._scan(final=True)
        if self._start_line is not None:
            if self._lex == _QUOTED:
                self._end = self._length  # unterminated: keep it all for the server to reject
            out.append(self._take_statement())
        self._state = _START
        self._lex = _CODE
        return out

    def _take_statement(self) -> Statement:
        # Trailing comments are dropped: a trailing "-- x" would otherwise
        # swallow anything appended to the statement (such as ";").
        sql = "".join(self._parts)[: self._end].rstrip(_WHITESPACE)
        statement = Statement(sql, self._start_line)
        self._parts, self._length, self._end = [], 0, 0
        self._start_line = None
        return statement

    def _scan(self, final: bool) -> list[Statement]:
        buf = self._buf
        n = len(buf)
        pos = 0
        kept = 0  # buf[kept:pos] is scanned but not yet moved to _parts
        out: list[Statement] = []

        def consume(upto: int) -> None:
            nonlocal kept
            if self._start_line is not None:
                self._parts.append(buf[kept:upto])
                self._length += upto - kept
            self._line += buf.count("\n", kept, upto)
            kept = upto

        def mark_end(at: int) -> None:
            self._end = self._length + at - kept

        def token(kind: int, at: int, end: int) -> None:
            if self._start_line is None:
                consume(at)  # leading whitespace and comments are not part of it
                self._start_line = self._line
            self._state = _TRANSITIONS[self._state][kind]
            mark_end(end)

        while pos < n:
            if self._lex == _QUOTED:
                i = buf.find(self._closing, pos)
                if i < 0:
                    pos = n
                    break
                pos = i + 1
                mark_end(pos)
                self._lex = _CODE
                continue
            if self._lex == _LINE_COMMENT:
                i = buf.find("\n", pos)
                if i < 0:
                    pos = n
                    break
                pos = i + 1
                self._lex = _CODE
                continue
            if self._lex == _BLOCK_COMMENT:
                i = buf.find("*/", pos)
                if i < 0:
                    # Unless input ended, the last char may be the '*' of '*/'.
                    pos = n if final else max(pos, n - 1)
                    break
                pos = i + 2
                self._lex = _CODE
                continue
            c = buf[pos]
            if self._state in (_NORMAL, _TRIGGER_S):
                m = _UNINTERESTING.match(buf, pos)
                if m:
                    pos = m.end()
                    text = m.group().rstrip(_WHITESPACE)
                    if text:  # whitespace alone must not pull a comment into the statement
                        mark_end(m.start() + len(text))
                    continue
            if c == ";":
                if self._start_line is not None and _TRANSITIONS[self._state][_SEMI] == _START:
                    consume(pos)
                    out.append(self._take_statement())
                    consume(pos + 1)
                self._state = _TRANSITIONS[self._state][_SEMI]
                pos += 1
                if self._start_line is None:
                    consume(pos)  # an empty statement leaves nothing behind
            elif c in _CLOSING:
                token(_OTHER, pos, pos + 1)
                self._lex = _QUOTED
                self._closing = _CLOSING[c]
                pos += 1
            elif c == "-" or c == "/":
                if pos + 1 >= n and not final:
                    break  # is it a comment? the next chunk will tell
                nxt = buf[pos + 1] if pos + 1 < n else ""
                if c == "-" and nxt == "-":
                    self._lex = _LINE_COMMENT
                    pos += 2
                elif c == "/" and nxt == "*":
                    self._lex = _BLOCK_COMMENT
                    pos += 2
                else:
                    token(_OTHER, pos, pos + 1)
                    pos += 1
            elif m := _SPACE.match(buf, pos):
                pos = m.end()
            elif m := _WORD.match(buf, pos):
                if m.end() == n and not final:
                    break  # the word may continue in the next chunk
                token(_KEYWORDS.get(m.group().upper(), _OTHER), pos, m.end())
                pos = m.end()
            else:
                m = _OTHER_RUN.match(buf, pos)
                token(_OTHER, pos, m.end())
                pos = m.end()
        consume(pos)
        self._buf = buf[pos:]
        return out


def _plainly_one(text: str) -> list[Statement] | None:
    """Fast path for the common case, a text that can only hold one statement.

    No comment markers and no semicolon before the trailing ones: whatever the
    quoting, it is one statement (or none). Anything else takes the full scan.
    """
    if "--" in text or "/*" in text or "[" in text:
        return None
    # Quotes pair up in order, each kind closed only by itself (a ` inside a
    # '...' string is just a character): an unterminated one may swallow the
    # trailing semicolons, which the full scan knows how to keep.
    pos = 0
    while m := _QUOTE.search(text, pos):
        close = text.find(m.group(), m.end())
        if close < 0:
            return None
        pos = close + 1
    body = text.strip(_WHITESPACE).rstrip(";").rstrip(_WHITESPACE)
    if ";" in body:
        return None
    if not body:
        return []
    return [Statement(body, 1 + text[: len(text) - len(text.lstrip(_WHITESPACE))].count("\n"))]


def split_statements(text: str) -> list[Statement]:
    """All statements of a script, in order; empty and comment-only ones are dropped."""
    quick = _plainly_one(text)
    if quick is not None:
        return quick
    splitter = StatementSplitter()
    return splitter.feed(text) + splitter.finish()


_LEADING = re.compile(r"(?:[ \t\n\r\f]+|--[^\n]*(?:\n|$)|/\*.*?(?:\*/|$))*", re.DOTALL)


def leading_keywords(sql: str, n: int = 2) -> list[str]:
    """The first n words of a statement, uppercased, skipping comments and spaces.

    Stops at the first token that is not a bare word (a quote, a parenthesis),
    so `SHOW "x"` gives ["SHOW"].
    """
    words: list[str] = []
    pos = 0
    while len(words) < n:
        pos = _LEADING.match(sql, pos).end()
        m = _WORD.match(sql, pos)
        if not m:
            break
        words.append(m.group().upper())
        pos = m.end()
    return words
