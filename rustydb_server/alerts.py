"""Alerts: events worth a person's attention, sent to ``alert_command`` and/or ``alert_webhook_url``.

An event is one JSON object: ``{"event": kind, "severity", "time", "host",
"message", ...fields}``. ``alert_command`` runs through ``/bin/sh -c`` with
the event on its stdin (the guide's mail becomes ``alert_command = "mail -s
'RustyDB alert' dba@example.com"``); ``alert_webhook_url`` gets it POSTed as
JSON, retried with backoff (``alert_webhook_retries``). Both are bounded by
``alert_timeout``: a command still running then is killed with its whole
process group.

Delivery never blocks the server: ``emit`` (from any thread) puts the event
on a bounded queue and returns; one task of the root nursery delivers them
in order. When the queue is full the event is logged and dropped.

Failures and recoveries: ``failure(subject)`` emits ``<subject>_failed``
and remembers the subject as failing; ``success(subject)`` emits
``<subject>_recovered`` only when it was. Subjects: ``backup`` (per backup
type), ``archive`` (once archiving has failed longer than
``alert_archive_failure_after``), ``expire`` (retention after a scheduled
backup), and whatever else calls in (a restore drill: ``alerts.failure("drill",
...)``, or ``alerts.emit("drill_failed", ...)``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import signal
import socket
import time

import trio

from . import __version__
from .logsetup import get_logger
from .settings import to_seconds

log = get_logger("rustydb.alerts")

#: Events waiting to be delivered; more are dropped (and logged).
QUEUE_SIZE = 100
#: The first wait before a webhook POST is tried again; it doubles each time.
WEBHOOK_RETRY_S = 1.0

_current: Alerter | None = None


def emit(kind: str, **fields) -> bool:
    """Send an event from anywhere in the server (any thread); False when no alerter runs."""
    alerter = _current
    if alerter is None:
        log.warning("alert not sent: the server runs no alerter", alert=kind, **_loggable(fields))
        return False
    alerter.emit(kind, **fields)
    return True


def failure(subject: str, scope: str = "", **fields) -> bool:
    """``<subject>_failed``, remembering ``subject`` (and ``scope``) as failing until ``success``."""
    alerter = _current
    if alerter is None:
        return emit(f"{subject}_failed", **fields)
    alerter.failing.add((subject, scope))
    alerter.emit(f"{subject}_failed", **fields)
    return True


def success(subject: str, scope: str = "", **fields) -> bool:
    """``<subject>_recovered`` when ``subject`` (and ``scope``) was failing; nothing otherwise."""
    alerter = _current
    if alerter is None or (subject, scope) not in alerter.failing:
        return False
    alerter.failing.discard((subject, scope))
    alerter.emit(f"{subject}_recovered", **fields)
    return True


def _loggable(fields: dict) -> dict:
    """The fields of an event as log fields ("event" is the log line's own name)."""
    return {k: v for k, v in fields.items() if k not in ("event", "alert")}


class Alerter:
    """The root nursery's alert task: a bounded queue and its delivery."""

    def __init__(self, settings):
        self._settings = settings
        self._send, self._receive = trio.open_memory_channel(QUEUE_SIZE)
        self._token: trio.lowlevel.TrioToken | None = None
        self.failing: set[tuple[str, str]] = set()
        self.sent = 0
        self.dropped = 0

    def configured(self) -> bool:
        return bool(self._settings["alert_command"] or self._settings["alert_webhook_url"])

    def emit(self, kind: str, **fields) -> None:
        event = {
            "event": kind,
            "severity": "info" if kind.endswith("_recovered") else "error",
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "data_dir": self._settings["data_dir"],
            "version": __version__,
            **fields,
        }
        event.setdefault("message", _message(kind, fields))
        try:
            trio.lowlevel.current_trio_token()
            in_trio = True
        except RuntimeError:
            in_trio = False
        if in_trio or self._token is None:
            self._enqueue(event)
        else:
            try:
                self._token.run_sync_soon(self._enqueue, event)
            except trio.RunFinishedError:
                pass

    def _enqueue(self, event: dict) -> None:
        emit_log = log.info if event["severity"] == "info" else log.warning
        emit_log(
            "alert",
            alert=event["event"],
            **_loggable(event),
            delivered_to=self._targets() or "nothing (no alert_command or alert_webhook_url)",
        )
        if not self.configured():
            return
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            log.error("alert dropped: too many alerts waiting to be delivered", alert=event["event"], queue=QUEUE_SIZE)

    def _targets(self) -> list[str]:
        return [
            t
            for t, on in (
                ("command", self._settings["alert_command"]),
                ("webhook", self._settings["alert_webhook_url"]),
            )
            if on
        ]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        global _current
        self._token = trio.lowlevel.current_trio_token()
        _current = self
        try:
            task_status.started()
            async for event in self._receive:
                await self._deliver(event)
        finally:
            if _current is self:
                _current = None

    async def _deliver(self, event: dict) -> None:
        payload = json.dumps(event).encode()
        command, url = self._settings["alert_command"], self._settings["alert_webhook_url"]
        timeout = to_seconds("alert_timeout", self._settings["alert_timeout"])
        async with trio.open_nursery() as nursery:
            if command:
                nursery.start_soon(self._run_command, command, payload, timeout, event["event"])
            if url:
                nursery.start_soon(self._post, url, payload, timeout, event["event"])
        self.sent += 1

    async def _run_command(self, command: str, payload: bytes, timeout: float, kind: str) -> None:
        result = None
        with trio.move_on_after(timeout) as scope:
            try:
                result = await trio.run_process(
                    ["/bin/sh", "-c", command],
                    stdin=payload,
                    capture_stdout=True,
                    capture_stderr=True,
                    check=False,
                    start_new_session=True,  # its own process group: the timeout kills all of it
                    deliver_cancel=_kill_group,
                )
            except OSError as e:
                log.error("alert_command could not be started", alert=kind, error=str(e))
                return
        if scope.cancelled_caught:
            log.error(
                "alert_command did not finish within alert_timeout and was killed; check the command",
                alert=kind,
                timeout_seconds=timeout,
            )
        elif result is not None and result.returncode != 0:
            log.error(
                "alert_command failed",
                alert=kind,
                exit_code=result.returncode,
                stderr=result.stderr.decode(errors="replace")[-500:].strip(),
            )
        else:
            log.info("alert delivered to alert_command", alert=kind)

    async def _post(self, url: str, payload: bytes, timeout: float, kind: str) -> None:
        retries = self._settings["alert_webhook_retries"]
        delay = WEBHOOK_RETRY_S
        for attempt in range(1, retries + 2):
            try:
                status = await trio.to_thread.run_sync(_post_json, url, payload, timeout, abandon_on_cancel=True)
            except (OSError, ValueError) as e:
                reason = str(e)
            else:
                log.info("alert delivered to alert_webhook_url", alert=kind, status=status, attempt=attempt)
                return
            if attempt > retries:
                log.error("alert_webhook_url failed; alert not delivered", alert=kind, error=reason, attempts=attempt)
                return
            log.warning("alert_webhook_url failed; retrying", alert=kind, error=reason, retry_in_seconds=delay)
            await trio.sleep(delay)
            delay *= 2


async def _kill_group(process: trio.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _post_json(url: str, payload: bytes, timeout: float) -> int:
    import urllib.error  # here: an alert is sent rarely, and urllib.request's imports cost every start
    import urllib.request

    req = urllib.request.Request(
        url,
        data=payload,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": f"rustydb/{__version__}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        raise OSError(f"HTTP {e.code} {e.reason}") from None


def _message(kind: str, fields: dict) -> str:
    what = kind.replace("_", " ")
    detail = fields.get("error") or fields.get("reason")
    subject = fields.get("backup_type")
    head = f"RustyDB on {socket.gethostname()}: {what}" + (f" ({subject})" if subject else "")
    return f"{head}: {detail}" if detail else head


class ArchiveWatch:
    """Alerts once WAL archiving has failed for longer than ``alert_archive_failure_after``,
    and again when it works again. It wakes when the archiver reports an outcome
    (``archiver.outcome``) or when a failure reaches the threshold."""

    def __init__(self, settings, archiver, clock=time.time):
        self._settings = settings
        self._archiver = archiver
        self._clock = clock

    def check(self) -> float | None:
        """Alert if due; the seconds until the next look is due, None: at the next outcome."""
        if _current is None:
            return None
        progress = self._archiver.progress
        since = progress.failing_since
        if since is None:
            success("archive", last_archived_segment=progress.last_archived_segment)
            return None
        if ("archive", "") in _current.failing:
            return None
        after = to_seconds("alert_archive_failure_after", self._settings["alert_archive_failure_after"])
        remaining = since + after - self._clock()
        if remaining > 0:
            return remaining
        failure(
            "archive",
            error=progress.last_failure_reason,
            segment=progress.last_failed_segment,
            failures_in_a_row=progress.failures_in_a_row,
            failing_for_seconds=round(self._clock() - since, 1),
        )
        return None

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            due = self.check()
            with trio.move_on_after(math.inf if due is None else due):
                await self._archiver.outcome.wait()


def backup_ended(entry: dict) -> None:
    """The backup catalog's listener: a failed backup alerts, the next success of its type recovers."""
    kind = str(entry.get("backup_type"))
    fields = {"backup_id": entry.get("backup_id"), "backup_type": kind, "origin": entry.get("origin")}
    if entry.get("trigger"):  # who started it (cli, api, schedule): backup/history.py
        fields["trigger"] = entry["trigger"]
    if entry.get("status") == "failed":
        failure("backup", kind, error=entry.get("error"), **fields)
    else:
        success("backup", kind, size_bytes=entry.get("size_bytes"), location=entry.get("location"), **fields)
