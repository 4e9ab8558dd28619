"""The restore drill's decisions, pure: which backup, and whether what a drill saw passes.

``rusty-db-restore --drill`` (tools/restore/drill.py) does the I/O: it restores
the backup's chain into a temporary directory, starts a real server on it,
asks that server, stops it and removes the directory. Here is what it asks
and how each answer is judged:

* ``choose``: the backup to drill, from the backup catalog's entries: the
  newest completed one whose file the catalog knows (``latest``), or one id.
* ``identity_problem``: the server that answered is the one the drill
  started, on the directory the drill restored: its health report names that
  directory (a fresh temporary path nobody else uses) and the data
  directory's pid file names the drill's own process and ports. A server
  elsewhere answering on the same port (the production server on 8080, as
  in the guide's script) can never pass.
* ``health_problem``: its health report says ``healthy``.
* ``count_problems``: every table of every database holds the rows the
  backup recorded at backup time (the manifest of the chain's last backup),
  and no table is missing or unexpected.
* ``integrity_problems``: ``PRAGMA integrity_check`` answered ``ok``.

A ``Drill`` collects the steps in order; the first failed step is the reason.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..backup.catalog import known_path
from ..backup.manifest import Manifest


class DrillError(Exception):
    """The drill cannot start (no such backup, no catalog); the message says what to do."""


def choose(entries: Iterable[Mapping], which: str) -> dict:
    """The catalog entry to drill: ``latest`` or a backup id."""
    entries = list(entries)
    usable = [e for e in entries if e.get("status") == "completed" and known_path(e.get("location"))]
    if which == "latest":
        if not usable:
            raise DrillError(
                "the backup catalog lists no completed backup with a known file to drill; take a backup "
                "first (rusty-db-backup --output FILE, or POST /api/v1/admin/backup)"
            )
        # Catalog times are whole seconds: within one, the later end LSN, then the later entry, is newer.
        order = {id(e): i for i, e in enumerate(usable)}
        return dict(
            max(
                usable,
                key=lambda e: (
                    e.get("completed_at") or 0,
                    e.get("end_lsn") if isinstance(e.get("end_lsn"), int) else -1,
                    order[id(e)],
                ),
            )
        )
    for e in entries:
        if e.get("backup_id") == which:
            if e.get("status") != "completed":
                raise DrillError(f"backup {which} is {e.get('status')}, not completed; there is nothing to drill")
            if not known_path(e.get("location")):
                raise DrillError(
                    f"the catalog does not know where backup {which} was written; drill its file with "
                    "--drill --input FILE"
                )
            return dict(e)
    raise DrillError(f"the backup catalog has no backup {which}; GET /api/v1/admin/backups lists them")


def expected_counts(manifest: Manifest) -> dict[str, dict[str, int]] | None:
    """Rows per table per database the backup recorded; None when it recorded none
    (incrementals taken before incrementals recorded their row counts)."""
    if not any(db.tables for db in manifest.databases) and manifest.backup_type.needs_parent:
        return None
    return {db.name: {t.name: t.rows for t in db.tables} for db in manifest.databases}


def identity_problem(
    health: Mapping, pid_file: str | None, *, data_dir: str, pid: int, port: int, http_port: int
) -> str | None:
    """Why the answering server is not the drill's own, or None."""
    path = (health.get("data_directory") or {}).get("path")
    if not isinstance(path, str) or os.path.realpath(path) != os.path.realpath(data_dir):
        return (
            f"the server answering on HTTP port {http_port} serves {path!r}, not the drill's restored "
            f"directory {data_dir}: another server holds the port; nothing about the backup was checked"
        )
    lines = (pid_file or "").splitlines()
    info = dict(line.split("=", 1) for line in lines[2:] if "=" in line)
    if (
        len(lines) < 2
        or lines[0] != str(pid)
        or lines[1] != "server"
        or info.get("port") != str(port)
        or info.get("http_port") != str(http_port)
    ):
        return (
            f"the restored directory's pid file does not name the drill's server (pid {pid}, port {port}, "
            f"HTTP port {http_port}): {' '.join(lines)!r}"
        )
    return None


def health_problem(health: Mapping) -> str | None:
    status = health.get("status")
    if status == "healthy":
        return None
    reasons = health.get("reasons") or ([health["error"]] if health.get("error") else [])
    return f"the restored server is {status}" + (f": {'; '.join(map(str, reasons))}" if reasons else "")


def count_problems(expected: Mapping[str, Mapping[str, int]], found: Mapping[str, Mapping[str, int]]) -> list[str]:
    """Every difference between the rows the backup recorded and the rows the server counted."""
    problems = []
    for db in sorted(set(expected) | set(found)):
        if db not in found:
            problems.append(f"database {db!r} recorded in the backup is missing from the restored server")
            continue
        if db not in expected:
            problems.append(f"database {db!r} on the restored server is not recorded in the backup")
            continue
        want, got = expected[db], found[db]
        for table in sorted(set(want) | set(got)):
            if table not in got:
                problems.append(f"database {db!r}: table {table!r} recorded in the backup is missing")
            elif table not in want:
                problems.append(f"database {db!r}: table {table!r} is not recorded in the backup")
            elif want[table] != got[table]:
                problems.append(
                    f"database {db!r}, table {table!r}: the server counts {got[table]} rows, "
                    f"the backup recorded {want[table]}"
                )
    return problems


def integrity_problems(database: str, answer: list[str]) -> list[str]:
    if answer == ["ok"]:
        return []
    shown = "; ".join(answer[:5]) or "no answer"
    return [f"database {database!r} failed PRAGMA integrity_check: {shown}"]


@dataclass
class Step:
    name: str
    ok: bool
    detail: str


@dataclass
class Drill:
    """What one drill did, step by step; failed once any step failed."""

    backup_id: str | None
    steps: list[Step] = field(default_factory=list)

    def passed(self, name: str, detail: str) -> None:
        self.steps.append(Step(name, True, detail))

    def failed(self, name: str, detail: str) -> None:
        self.steps.append(Step(name, False, detail))

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    @property
    def reason(self) -> str | None:
        bad = next((s for s in self.steps if not s.ok), None)
        return None if bad is None else f"{bad.name}: {bad.detail}"

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "backup_id": self.backup_id,
            "reason": self.reason,
            "steps": [{"step": s.name, "ok": s.ok, "detail": s.detail} for s in self.steps],
        }
