"""The base of every error the server reports to a client, carrying its code.

Whatever layer raises one (the engine, a session, the admin commands, the
wire listener), the statement dispatcher and the connection report it the
same way: an error message with ``code`` and the exception's text. ``fatal``
says the connection ends with it; any other error leaves the session usable.
"""

from __future__ import annotations


class ReportedError(Exception):
    def __init__(self, message: str, code: str, *, fatal: bool = False):
        super().__init__(message)
        self.code = code
        self.fatal = fatal
