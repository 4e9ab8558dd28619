"""Messages: the maps frames carry, checked field by field, and their events.

The schemas say which fields each message type has in each direction and
what they hold; ``message_of`` and ``event_of`` are the only places an event
becomes a map or a map an event, so the field names and their order on the
wire are spelled out once (events.py's declaration order).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

from .errors import RemoteProtocolError
from .events import TO_CLIENT_EVENTS, TO_SERVER_EVENTS, BackupEnd, BackupRequested, Hello, TlsAnswer
from .scan import MAX_CONTAINER_LEN

TO_SERVER = "to_server"
TO_CLIENT = "to_client"

_VALUE_TYPES = (type(None), int, float, str, bytes)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _is_rows(v: Any) -> bool:
    # Loops, not all() over generators: every row of every answer comes here.
    if not isinstance(v, list):
        return False
    for row in v:
        if not isinstance(row, list):
            return False
        for x in row:
            if not isinstance(x, _VALUE_TYPES):
                return False
    return True


def _is_base_backup(v: Any) -> bool:
    return isinstance(v, dict) and isinstance(v.get("backup_id"), str) and _is_int(v.get("end_lsn"))


_CHECKS: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": _is_int,
    "bool": lambda v: isinstance(v, bool),
    "map": lambda v: isinstance(v, dict),
    # A memoryview when the decoder handed a large bin out without copying it.
    "bytes": lambda v: isinstance(v, (bytes, memoryview)),
    "str|None": lambda v: v is None or isinstance(v, str),
    "int|None": lambda v: v is None or _is_int(v),
    "[str]": _is_str_list,
    "[str]|None": lambda v: v is None or _is_str_list(v),
    "base backup|None": lambda v: v is None or _is_base_backup(v),
    "rows": _is_rows,
}

# type -> {field: (kind, required)}. Unknown extra fields are allowed so a
# newer peer can add optional fields without breaking an older one.
_SCHEMAS: dict[str, dict[str, dict[str, tuple[str, bool]]]] = {
    TO_SERVER: {
        "hello": {
            "version": ("int", True),
            "user": ("str", True),
            "database": ("str|None", False),
            "client": ("str", True),
            "tls": ("bool", False),
        },
        "scram_client_first": {"data": ("str", True)},
        "scram_client_final": {"data": ("str", True)},
        "query": {"sql": ("str", True), "batch_rows": ("int", False)},
        "backup": {"options": ("map", True)},
        "backup_stored": {"backup_id": ("str", True), "location": ("str", True)},
        "goodbye": {},
    },
    TO_CLIENT: {
        "auth_required": {"mechanism": ("str", True)},
        "tls_answer": {"accepted": ("bool", True), "reason": ("str", False)},
        "scram_server_first": {"data": ("str", True)},
        "scram_server_final": {"data": ("str", True)},
        "ready": {
            "server_version": ("str", True),
            "database": ("str", True),
            "session_id": ("int", True),
        },
        "columns": {"names": ("[str]", True)},
        "rows": {"rows": ("rows", True)},
        "complete": {
            "status": ("str", True),
            "rows_affected": ("int", True),
            "database": ("str", True),
            "in_transaction": ("bool", True),
        },
        "notice": {"message": ("str", True)},
        "error": {
            "code": ("str", True),
            "message": ("str", True),
            "fatal": ("bool", True),
            "statement_line": ("int|None", False),
        },
        "backup_header": {"manifest": ("map", True)},
        "backup_data": {"entry": ("str", True), "last": ("bool", True), "data": ("bytes", True)},
        "backup_end": {"end_lsn": ("int", True), "bytes": ("int", True), "awaiting_location": ("bool", False)},
    },
}


# A backup request's options, checked like a message's fields.
_BACKUP_OPTIONS = {
    "backup_type": ("str", False),
    "databases": ("[str]|None", False),
    "base_backup": ("base backup|None", False),
    "output": ("str|None", False),
}


def validate_message(msg: Any, direction: str) -> dict:
    """Check a message's type and fields for one direction; return it unchanged."""
    schemas = _COMPILED.get(direction)
    if schemas is None:
        raise ValueError(f"direction must be {TO_SERVER!r} or {TO_CLIENT!r}")
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise RemoteProtocolError("bad_message", "a message must be a map with a string 'type'")
    type_ = msg["type"]
    schema = schemas.get(type_)
    if schema is None:
        raise RemoteProtocolError("bad_message", f"unknown message type {type_!r} ({direction.replace('_', ' ')})")
    for name, check, required in schema:
        if name in msg:
            if not check(msg[name]):
                _check_fields(type_ + " message", msg, _SCHEMAS[direction][type_])  # says which field, and how
        elif required:
            _check_fields(type_ + " message", msg, _SCHEMAS[direction][type_])
    if type_ == "query" and not 1 <= msg.get("batch_rows", 1) <= MAX_CONTAINER_LEN:
        raise RemoteProtocolError("bad_message", f"query batch_rows must be between 1 and {MAX_CONTAINER_LEN}")
    if type_ == "backup":
        _check_fields("backup options", msg["options"], _BACKUP_OPTIONS)
    return msg


def _check_fields(what: str, msg: dict, schema: dict[str, tuple[str, bool]]) -> None:
    for name, (kind, required) in schema.items():
        if name not in msg:
            if required:
                raise RemoteProtocolError("bad_message", f"{what} lacks its {name!r} field")
            continue
        if not _CHECKS[kind](msg[name]):
            raise RemoteProtocolError("bad_message", f"{what} field {name!r} must be {kind}")


def message_of(event) -> dict:
    """The map that carries a wire event (see events.py)."""
    if type(event) is BackupRequested:
        # The request's fields travel inside an options map; base_backup only
        # when there is one.
        options: dict = {"backup_type": event.backup_type, "databases": event.databases}
        if event.base_backup is not None:
            options["base_backup"] = event.base_backup
        if event.output is not None:
            options["output"] = event.output
        return {"type": "backup", "options": options}
    msg = {"type": event.type}
    for name, _ in _FIELDS[type(event)]:
        msg[name] = getattr(event, name)
    if type(event) is BackupEnd and not event.awaiting_location:
        del msg["awaiting_location"]  # the frame earlier versions sent and read
    elif type(event) is Hello and not event.tls:
        del msg["tls"]  # likewise
    elif type(event) is TlsAnswer and not event.reason:
        del msg["reason"]
    return msg


def event_of(msg: dict, direction: str):
    """The event a validated message carries; fields a newer peer added are left out."""
    cls = _EVENT_CLASSES[direction][msg["type"]]
    if cls is BackupRequested:
        msg = msg["options"]
    positional = _POSITIONAL.get(cls)
    if positional is not None:  # every field positional: no keyword map to build
        return cls(*map(msg.get, *positional))
    return cls(**{name: msg.get(name, absent) for name, absent in _FIELDS[cls]})


# Worked out once per class, as every statement's answer goes through these:
# each event's fields in wire order, with what an absent optional field is
# (its default, or None where the schema makes it optional without one).
_FIELDS = {
    cls: tuple((f.name, None if f.default is MISSING else f.default) for f in fields(cls))
    for cls in TO_SERVER_EVENTS + TO_CLIENT_EVENTS
}
_EVENT_CLASSES = {
    TO_SERVER: {cls.type: cls for cls in TO_SERVER_EVENTS},
    TO_CLIENT: {cls.type: cls for cls in TO_CLIENT_EVENTS},
}
# Classes whose fields can all be given by position: (names, absent values).
_POSITIONAL = {
    cls: (tuple(name for name, _ in spec), tuple(absent for _, absent in spec))
    for cls, spec in _FIELDS.items()
    if not any(f.kw_only for f in fields(cls))
}
# The schemas as (field, check, required) tuples, looked up once per message.
_COMPILED = {
    direction: {
        type_: tuple((name, _CHECKS[kind], required) for name, (kind, required) in schema.items())
        for type_, schema in types.items()
    }
    for direction, types in _SCHEMAS.items()
}
