"""The audit trail: one structured log event for every act a DBA must be able to account for.

Every such event is logged by the ``rustydb.audit`` logger with the event
name ``audit``, so one filter finds them all (``jq 'select(.event ==
"audit")'`` on the JSON log), and always carries the same fields:

- ``action``: what was attempted (the ``ACTIONS`` below);
- ``outcome``: ``ok``, ``denied`` (refused: no privilege, no token, a
  forbidden statement) or ``failed`` (allowed, but it did not succeed, or a
  wrong password or token);
- ``user``: the role or user name the client gave, when it gave one;
- ``peer``: where the client came from (``host:port``), or ``local`` for
  what the server did on its own behalf (a signal, a scheduled job);

and whatever details the action has (the setting and its new value, the
backup's id, the refused SQL action). Outcomes other than ``ok`` are logged
at warning level. Secrets never reach it: the log's redaction applies, and
callers pass names, never values of secret settings.
"""

from __future__ import annotations

from typing import Any

from .logsetup import get_logger

log = get_logger("rustydb.audit")

EVENT = "audit"
OK, DENIED, FAILED = "ok", "denied", "failed"
OUTCOMES = (OK, DENIED, FAILED)

# The actions audited; a new one is added here so the list stays the whole story.
ACTIONS = frozenset(
    {
        "authenticate",  # a login over the wire protocol (failures)
        "http_request",  # the HTTP API refusing a request (no token, wrong token, foreign Host or Origin)
        "sql",  # a statement the authorizer refused (files, internal tables, PRAGMAs)
        "privilege",  # a statement refused because the session's role lacks the privilege
        "alter_system",
        "shutdown",
        "backup",
        "restore_point",
        "role",  # role changes (CREATE/ALTER/DROP ROLE, GRANT, REVOKE)
        "drill",  # a restore drill
        "undo",  # UNDO TRANSACTION(S): what was undone, as which new transaction
        "expire",  # retention removing expired backups and archived WAL (on demand or after a scheduled backup)
    }
)


def format_peer(peer: Any) -> str | None:
    """``host:port`` of a (host, port) pair, a string as it is, None as it is."""
    if isinstance(peer, (tuple, list)) and len(peer) >= 2:
        host, port = peer[0], peer[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return None if peer is None else str(peer)


def audit(action: str, outcome: str, *, user: str | None = None, peer: Any = None, **details: Any) -> None:
    """Log one audit event."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}; add it to audit.ACTIONS")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}: use one of {', '.join(OUTCOMES)}")
    emit = log.info if outcome == OK else log.warning
    emit(EVENT, action=action, outcome=outcome, user=user, peer=format_peer(peer), **details)
