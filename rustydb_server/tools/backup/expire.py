"""--expire: remove the backups and archived WAL the retention settings no longer keep.

Works on a data directory's backup catalog (the backups' files are where the
catalog recorded them) and an archive directory, with no server: the server
keeps its catalog in memory, so applying the plan takes the data
directory's lock and is refused while a server runs there; --dry-run only
reads and works either way. The settings (backup_retention_days,
backup_retention_full_count, archive_retention_days, archive_dest) come from
the config file ($RUSTYDB_CONFIG or /etc/rustydb/rustydb.toml, when there)
and the data directory's rustydb.auto.toml (ALTER SYSTEM), as the server's.

Every line of output names one backup or segment and why it goes; --json
prints one document: ``{"ok", "dry_run", "data_dir", "archive_dir", "policy",
"kept", "backups": [...], "segments": [...], "refused": [...],
"unreadable_segments": [...]}``.
"""

from __future__ import annotations

import argparse
import os
import sys

from ...archive import destination
from ...archive.segment_file import ArchiveError
from ...backup import expire, retention
from ...backup.catalog import CatalogError, known_path
from ...datadir import DataDir, DataDirError, DataDirLocked
from ...keys import DEFAULT_CONFIG, ENV_CONFIG
from ...repository import RepositoryError, is_s3_url, location
from ...settings import SettingError, Settings
from ...wal.timeline import HistoryError
from ..output import fail, json_output, print_json
from . import PROG


def run(args: argparse.Namespace) -> int:
    data_dir = os.path.abspath(args.data_dir)
    try:
        policy, archive_dir = _settings(data_dir, args.archive_dir)
        return _expire(data_dir, archive_dir, policy, dry_run=args.dry_run, forget=_forget_in_repositories(data_dir))
    except (CatalogError, DataDirError, HistoryError, ArchiveError, SettingError, RepositoryError) as exc:
        return fail(PROG, str(exc))


def _settings(data_dir: str, archive_flag: str | None) -> tuple[retention.Policy, str | None]:
    if not os.path.isdir(data_dir):
        raise DataDirError(f"data directory {data_dir} does not exist; check --data-dir")
    config = os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG
    s = Settings.load(config if os.path.isfile(config) else None, data_dir)
    days, count, archive_days = (
        s["backup_retention_days"],
        s["backup_retention_full_count"],
        s["archive_retention_days"],
    )
    if not days and not count:
        raise SettingError(
            "backup_retention_days and backup_retention_full_count are both 0: nothing says which "
            "backups to keep; set one of them (ALTER SYSTEM SET backup_retention_days = 30)"
        )
    policy = retention.Policy(backup_days=days or None, full_count=count or None, archive_days=archive_days or None)
    archive_dir = archive_flag or s["archive_dest"] or None
    if archive_dir and is_s3_url(archive_dir):  # a repository: its wal/, reached with the repository_s3_* settings
        location.configure(s)
        return policy, destination.location(archive_dir)
    archive_dir = os.path.abspath(archive_dir) if archive_dir else None
    if archive_dir and not os.path.isdir(archive_dir):
        raise ArchiveError(f"archive directory {archive_dir} does not exist; check --archive-dir or archive_dest")
    return policy, archive_dir


def _forget_in_repositories(data_dir: str):
    """How --expire removes a backup's copy from a repository of backup_repositories."""
    config = os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG
    s = Settings.load(config if os.path.isfile(config) else None, data_dir)

    def forget(url: str, backup_id: str) -> None:
        from ...backup import repo_catalog
        from ...repository import open_repository

        repo_catalog.forget(open_repository(url, s), backup_id)

    return forget


def _expire(data_dir: str, archive_dir: str | None, policy: retention.Policy, *, dry_run: bool, forget=None) -> int:
    if dry_run:
        facts = expire.gather(data_dir, archive_dir)
        plan = expire.make_plan(facts, policy)
        return _report(data_dir, archive_dir, policy, facts, plan, None)
    owner = DataDir(data_dir)
    try:
        owner.lock("expire")
    except DataDirLocked as exc:
        raise DataDirLocked(
            f"{exc}. The running server keeps its backup catalog in memory, so --expire changes it only "
            "while no server runs there; --dry-run shows the plan meanwhile"
        ) from None
    try:
        facts = expire.gather(data_dir, archive_dir)
        plan = expire.make_plan(facts, policy)
        outcome = expire.apply(plan, data_dir, forget=forget)
    finally:
        owner.unlock()
    return _report(data_dir, archive_dir, policy, facts, plan, outcome)


def _report(data_dir, archive_dir, policy, facts, plan, outcome) -> int:
    refused = dict(outcome.refused) if outcome else {}
    backups = [
        {
            "backup_id": b.backup_id,
            "type": b.backup_type,
            "location": b.location,
            "reason": b.reason,
            "removed": outcome is not None and b.backup_id not in refused,
        }
        for b in plan.backups
    ]
    segments = [
        {
            "segment": os.path.basename(s.path),
            "path": s.path,
            "timeline": s.timeline,
            "segno": s.segno,
            "reason": s.reason,
            "removed": outcome is not None,
        }
        for s in plan.segments
    ]
    if json_output() is not None:
        print_json(
            {
                "ok": not refused,
                "dry_run": outcome is None,
                "data_dir": data_dir,
                "archive_dir": archive_dir,
                "policy": {
                    "backup_retention_days": policy.backup_days or 0,
                    "backup_retention_full_count": policy.full_count or 0,
                    "archive_retention_days": policy.archive_days or 0,
                },
                "kept": plan.kept,
                "backups": backups,
                "segments": segments,
                "refused": [{"backup_id": b, "reason": why} for b, why in refused.items()],
                "unreadable_segments": facts.unreadable,
                "repository_errors": [
                    {"backup_id": b, "repository": url, "error": e}
                    for b, url, e in (outcome.repository_errors if outcome else [])
                ],
            }
        )
    else:
        verb = "would expire" if outcome is None else "expired"
        for b in backups:
            if b["backup_id"] in refused:
                continue
            if known_path(b["location"]):
                where = f" ({b['location']})"
            else:  # a client's backup from before clients said where: only its entry goes
                where = f" (file not known to the catalog, {b['location'] or 'no location'}: remove it yourself)"
            print(f"{verb} {b['type']} backup {b['backup_id']}{where}: {b['reason']}")
        for s in segments:
            print(f"{verb} WAL segment {s['segment']} (timeline {s['timeline']}): {s['reason']}")
        for path in facts.unreadable:
            print(f"left archive file {path}: no readable header, never expired")
        print(
            f"{'Dry run: ' if outcome is None else ''}{len(backups) - len(refused)} backup(s) and "
            f"{len(segments)} WAL segment(s) {verb}; {len(plan.kept)} backup(s) kept"
        )
    for backup_id, url, error in outcome.repository_errors if outcome else []:
        print(
            f"{PROG}: warning: backup {backup_id} expired, but its copy in repository {url} is still there: "
            f"{error}; remove it there by hand: catalog/{backup_id}.json first, then backups/{backup_id}/",
            file=sys.stderr,
        )
    for backup_id, why in refused.items():
        fail(PROG, f"backup {backup_id} not expired: {why}")
    return 1 if refused else 0
