"""structlog configuration: one event per line, JSON under systemd, console on a tty.

Libraries that log through the standard ``logging`` module (hypercorn) are
routed through the same processors, so every line has the same shape and the
same redaction. Call ``configure_logging`` again to apply a new log_level or
log_format to a running server: loggers are not cached, so they pick it up.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

# structlog (which imports asyncio) and logging are imported when first
# needed: the command-line tools import server modules that log, and their
# start-up time counts (a table restore takes a tenth of a second of work).


def _structlog() -> Any:
    """structlog, imported without rich.

    structlog's console renderer and traceback formatter import rich (and
    pygments through it) whenever it is installed, about half of structlog's
    import time, on every server start and tool run; neither line format
    needs it: JSON lines never use it, and console lines then show exceptions
    as plain tracebacks. rich stays importable for anything else.
    """
    if "structlog" in sys.modules:
        return sys.modules["structlog"]
    hide = "rich" not in sys.modules
    if hide:
        sys.modules["rich"] = None  # type: ignore[assignment]  # "import rich" raises ImportError
    try:
        import structlog
    finally:
        if hide and sys.modules.get("rich", False) is None:
            del sys.modules["rich"]
    return structlog


LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}  # logging.DEBUG...

REDACTED = "[REDACTED]"
SECRET_WORDS = ("password", "passphrase", "token", "key", "secret")


def is_secret_key(key: str) -> bool:
    """True for names like password, api_token, data_key; False for key_file or token_file.

    A *_file setting holds where a secret lives, which is safe and useful to log.
    """
    name = str(key).lower()
    return any(name == word or name.endswith("_" + word) for word in SECRET_WORDS)


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(k) else _redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact(v) for v in value)
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: replace the values of secret-named keys, at any depth."""
    return _redact(event_dict)


def _use_json(log_format: str, stream: TextIO) -> bool:
    if log_format == "json":
        return True
    if log_format == "console":
        return False
    if log_format != "auto":
        raise ValueError(f"unknown log format {log_format!r}: use auto, json or console")
    isatty = getattr(stream, "isatty", None)
    return not (isatty and isatty())


def configure_logging(log_format: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Send every log event to ``stream`` (stderr by default), one per line."""
    structlog = _structlog()

    stream = sys.stderr if stream is None else stream
    if level not in LEVELS:
        raise ValueError(f"unknown log level {level!r}: use {', '.join(LEVELS)}")
    as_json = _use_json(log_format, stream)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _name_logger,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    if as_json:
        renderer: Any = structlog.processors.JSONRenderer(default=str)
        finishing: list[Any] = [structlog.processors.format_exc_info]
    else:
        colors = bool(getattr(stream, "isatty", None) and stream.isatty())
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
        finishing = []
    structlog.configure(
        processors=[*shared, *finishing, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _route_stdlib_logging(shared, finishing, renderer, LEVELS[level], stream)


def _route_stdlib_logging(shared: list[Any], finishing: list[Any], renderer: Any, level: int, stream: TextIO) -> None:
    import logging

    import structlog.stdlib

    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *finishing, renderer],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_rustydb", False)]:
        root.removeHandler(old)
    handler._rustydb = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)


def get_logger(name: str) -> Any:
    """A logger whose events carry ``logger=name``.

    It stays a lazy proxy (bind() would freeze today's configuration), so a
    later configure_logging reaches loggers created at import time.
    """
    return _LazyLogger(name)


class _LazyLogger:
    """structlog's logger for ``name``, looked up (and structlog imported) on first use."""

    __slots__ = ("_name", "_logger")

    def __init__(self, name: str):
        self._name = name
        self._logger: Any = None

    def __getattr__(self, attr: str) -> Any:
        if self._logger is None:
            structlog = _structlog()
            # "logger" itself is a parameter name of structlog.get_logger.
            self._logger = structlog.get_logger(logger_name=self._name)
        return getattr(self._logger, attr)


def _name_logger(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    if "logger_name" in event_dict:
        event_dict["logger"] = event_dict.pop("logger_name")
    return event_dict
