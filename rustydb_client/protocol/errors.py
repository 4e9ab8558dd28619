"""The protocol's errors: one base carrying the error code that goes on the wire.

A LocalProtocolError is this side's mistake (an event the state machine does
not allow now, a frame too large to send); the connection may go on. A
RemoteProtocolError is the peer's: the connection is over, and a server tells
the client why with a fatal error carrying the same code.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A protocol rule was broken; ``code`` is the error code the wire carries."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class LocalProtocolError(ProtocolError):
    """This side tried to send something the protocol does not allow now."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol (bad frame, bad message, wrong order, failed auth)."""
