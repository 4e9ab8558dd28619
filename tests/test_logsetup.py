"""Log lines: one JSON object per event off a terminal, secrets redacted."""

from __future__ import annotations

import io
import json
import logging
from datetime import UTC, datetime

import pytest

from rustydb_server.logsetup import REDACTED, configure_logging, get_logger, is_secret_key


@pytest.fixture
def stream():
    s = io.StringIO()
    yield s
    configure_logging("json", "info", io.StringIO())  # detach from this test's stream


def lines(stream):
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_shape_when_not_a_tty(stream):
    configure_logging("auto", "info", stream)
    get_logger("wal").info("checkpoint complete", lsn=1234, segments=3)
    [event] = lines(stream)
    assert event["event"] == "checkpoint complete"
    assert event["level"] == "info"
    assert event["logger"] == "wal"
    assert event["lsn"] == 1234 and event["segments"] == 3
    stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == UTC.utcoffset(None)


def test_one_line_per_event_even_with_newlines_and_exceptions(stream):
    configure_logging("json", "info", stream)
    log = get_logger("t")
    log.info("multi\nline", detail="a\nb", obj=object())
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    events = lines(stream)
    assert len(events) == 2
    assert "RuntimeError: boom" in events[1]["exception"]


def test_secrets_are_redacted_at_any_depth(stream):
    configure_logging("json", "info", stream)
    get_logger("auth").info(
        "login",
        user="alice",
        password="hunter2",
        passphrase="pp",
        token="tt",
        key="kk",
        secret="ss",
        api_token="at",
        nested={"data_key": "dk", "inner": [{"Password": "x"}]},
        backup_key_file="/etc/rustydb/backup.key",
    )
    text = stream.getvalue()
    for leaked in ("hunter2", '"pp"', '"tt"', '"kk"', '"ss"', '"at"', '"dk"', '"x"'):
        assert leaked not in text
    [event] = lines(stream)
    assert event["password"] == REDACTED and event["nested"]["data_key"] == REDACTED
    assert event["nested"]["inner"][0]["Password"] == REDACTED
    assert event["user"] == "alice"
    assert event["backup_key_file"] == "/etc/rustydb/backup.key"  # where, not what


@pytest.mark.parametrize(
    "key, secret",
    [
        ("password", True),
        ("token", True),
        ("api_token", True),
        ("key", True),
        ("keyword", False),
        ("key_file", False),
        ("token_file", False),
        ("monkey", False),
    ],
)
def test_is_secret_key(key, secret):
    assert is_secret_key(key) is secret


def test_level_filter_and_live_reconfiguration(stream):
    configure_logging("json", "warning", stream)
    log = get_logger("t")  # created before the change, as module-level loggers are
    log.info("dropped")
    log.warning("kept")
    configure_logging("json", "debug", stream)
    log.debug("now kept")
    assert [e["event"] for e in lines(stream)] == ["kept", "now kept"]


def test_stdlib_logging_goes_through_the_same_pipeline(stream):
    configure_logging("json", "info", stream)
    logging.getLogger("hypercorn.error").warning("bound to %s", "127.0.0.1:8080")
    [event] = lines(stream)
    assert event["event"] == "bound to 127.0.0.1:8080"
    assert event["level"] == "warning" and event["logger"] == "hypercorn.error"
    assert "timestamp" in event


def test_console_format_is_not_json(stream):
    configure_logging("console", "info", stream)
    get_logger("t").info("hello", token="tt")
    out = stream.getvalue()
    assert "hello" in out and "tt" not in out.replace("[REDACTED]", "")
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "trace", io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "info", io.StringIO())


PROBE = """
import io, json, sys
from rustydb_server.logsetup import configure_logging, get_logger
out = io.StringIO()
configure_logging("console", "info", out)
try:
    raise RuntimeError("boom")
except RuntimeError:
    get_logger("t").exception("failed", token="tt")
loaded = "rich" in sys.modules
try:
    import rich  # noqa: F401
    importable = True
except ImportError:
    importable = False
print(json.dumps({"out": out.getvalue(), "rich_loaded": loaded, "rich_importable": importable}))
"""


def test_logging_does_not_import_rich_and_console_lines_still_show_tracebacks():
    # structlog imports rich (and pygments) whenever it is installed, about
    # half of its import time on every server start; the server's logging
    # hides it from structlog, and leaves it importable for anything else.
    import importlib.util
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout)
    assert result["rich_loaded"] is False
    assert "failed" in result["out"] and "RuntimeError: boom" in result["out"] and "tt" not in result["out"]
    assert result["rich_importable"] is (importlib.util.find_spec("rich") is not None)
