"""--expire: remove the backups and archived WAL the retention settings no longer keep.

Works on a data directory's backup catalog (the backups' files are where the
catalog recorded them) and an archive directory. The server keeps its
catalog in memory, so while one runs there (the data directory's lock is
held) the tool asks it to expire instead, through its HTTP API (``POST
/api/v1/admin/expire``, the port from the pid file, the token from
http_api_token_file): the server waits for a running backup to end and
answers the same document. --dry-run only reads and works either way. The settings (backup_retention_days,
backup_retention_full_count, archive_retention_days, archive_dest) come from
the config file ($RUSTYDB_CONFIG or /etc/rustydb/rustydb.toml, when there)
and the data directory's rustydb.auto.toml (ALTER SYSTEM), as the server's.

Every line of output names one backup or segment and why it goes; --json
prints one document: ``{"ok", "dry_run", "data_dir", "archive_dir", "policy",
"kept", "backups": [...], "segments": [...], "extra_archives": [...],
"refused": [...], "unreadable_segments": [...]}``. Archived WAL is expired in
archive_dest and in every destination of archive_extra_dests, each on its
own: one that cannot be reached is a warning (the others still expire; the
next --expire tries it again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

from ...archive import destination
from ...archive.segment_file import ArchiveError
from ...backup import expire, retention
from ...backup.catalog import CatalogError, known_path
from ...datadir import PID_FILE, DataDir, DataDirError, DataDirLocked
from ...http_access import TokenFileError, read_token
from ...keys import DEFAULT_CONFIG, ENV_CONFIG
from ...repository import RepositoryError, is_s3_url, location
from ...settings import SettingError, Settings
from ...wal.timeline import HistoryError
from ..output import fail, json_output, print_json
from . import PROG


def run(args: argparse.Namespace) -> int:
    data_dir = os.path.abspath(args.data_dir)
    try:
        settings, policy, archive_dir = _settings(data_dir, args.archive_dir)
        return _expire(data_dir, archive_dir, policy, dry_run=args.dry_run, settings=settings, args=args)
    except (
        CatalogError,
        DataDirError,
        HistoryError,
        ArchiveError,
        SettingError,
        ServerExpireError,
        RepositoryError,
    ) as exc:
        return fail(PROG, str(exc))


class ServerExpireError(Exception):
    """The running server could not be asked to expire; the message says why and what to do."""


def _settings(data_dir: str, archive_flag: str | None) -> tuple[Settings, retention.Policy, str | None]:
    if not os.path.isdir(data_dir):
        raise DataDirError(f"data directory {data_dir} does not exist; check --data-dir")
    config = os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG
    s = Settings.load(config if os.path.isfile(config) else None, data_dir)
    policy = expire.policy_of(s)
    archive_dir = archive_flag or s["archive_dest"] or None
    if any(is_s3_url(d) for d in s["archive_extra_dests"] or []):
        location.configure(s)
    if archive_dir and is_s3_url(archive_dir):  # a repository: its wal/, reached with the repository_s3_* settings
        location.configure(s)
        return s, policy, destination.location(archive_dir)
    archive_dir = os.path.abspath(archive_dir) if archive_dir else None
    if archive_dir and not os.path.isdir(archive_dir):
        raise ArchiveError(f"archive directory {archive_dir} does not exist; check --archive-dir or archive_dest")
    return s, policy, archive_dir


def _expire(data_dir: str, archive_dir: str | None, policy: retention.Policy, *, dry_run: bool, settings, args) -> int:
    extras = expire.extra_archives(settings["archive_extra_dests"])
    if dry_run:
        facts = expire.gather(data_dir, archive_dir)
        plan = expire.make_plan(facts, policy)
        expire.plan_extras(extras, facts, policy)
        return _report(expire.document(data_dir, archive_dir, policy, facts, plan, None, extras))
    owner = DataDir(data_dir)
    try:
        owner.lock("expire")
    except DataDirLocked as exc:
        # A server runs there: it keeps its catalog in memory, so it expires
        # (on its own catalog, never racing a backup) and answers what it did.
        return _report(_through_server(data_dir, settings, args.archive_dir, exc))
    try:
        facts = expire.gather(data_dir, archive_dir)
        plan = expire.make_plan(facts, policy)
        expire.plan_extras(extras, facts, policy)
        outcome = expire.apply(plan, data_dir, forget=_forget_in_repositories(settings))
        expire.apply_extras(extras)
    finally:
        owner.unlock()
    return _report(expire.document(data_dir, archive_dir, policy, facts, plan, outcome, extras))


def _forget_in_repositories(settings):
    """How --expire removes a backup's copy from a repository of backup_repositories."""

    def forget(url: str, backup_id: str) -> None:
        from ...backup import repo_catalog
        from ...repository import open_repository

        repo_catalog.forget(open_repository(url, settings), backup_id)

    return forget


def _server_ports(data_dir: str) -> dict[str, str]:
    """What the running server wrote into its pid file (``port``, ``http_port``)."""
    try:
        with open(os.path.join(data_dir, PID_FILE), encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    if len(lines) < 2 or lines[1] != "server":
        return {}
    return dict(line.split("=", 1) for line in lines[2:] if "=" in line)


def _through_server(data_dir: str, settings, archive_flag: str | None, locked: DataDirLocked) -> dict:
    info = _server_ports(data_dir)
    if not info:
        raise DataDirLocked(f"{locked}; --expire removes nothing meanwhile (--dry-run shows the plan)")
    http_port = int(info.get("http_port") or 0)
    if not http_port:
        raise ServerExpireError(
            f"the server running on {data_dir} has no HTTP API (http_port 0), through which --expire asks it to "
            "expire; stop the server and run --expire again, or turn the HTTP API on"
        )
    dest = settings["archive_dest"] or None
    if archive_flag and os.path.abspath(archive_flag) != dest:
        raise ServerExpireError(
            f"the server running on {data_dir} expires its own archive_dest ({dest or 'none'}), not "
            f"{os.path.abspath(archive_flag)}; leave out --archive-dir, or stop the server"
        )
    host = settings["listen_address"]
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1", "": "127.0.0.1"}.get(host, host)
    url = f"http://[{host}]:{http_port}" if ":" in host else f"http://{host}:{http_port}"
    headers = {"Content-Type": "application/json"}
    try:
        token = read_token(settings["http_api_token_file"])
    except TokenFileError as e:
        raise ServerExpireError(f"a server runs on {data_dir} and its API needs the token: {e}") from None
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        url + "/api/v1/admin/expire", data=b'{"dry_run": false}', method="POST", headers=headers
    )
    try:
        # No timeout: the server waits for a running backup to end before it expires.
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            body = json.loads(e.read())
        except ValueError:
            body = {}
        if "backups" in body:  # the document, with a refused backup file
            return body
        raise ServerExpireError(
            f"the server running on {data_dir} did not expire: {body.get('message') or f'HTTP {e.code}'}"
        ) from None
    except (OSError, ValueError) as e:
        raise ServerExpireError(
            f"a server runs on {data_dir}, but its HTTP API at {url} cannot be reached ({e}); "
            "check that it is up (GET /api/v1/admin/health), or stop it and run --expire again"
        ) from None


def _report(doc: dict) -> int:
    refused = {r["backup_id"]: r["reason"] for r in doc["refused"]}
    if json_output() is not None:
        print_json(doc)
    else:
        verb = "would expire" if doc["dry_run"] else "expired"
        for b in doc["backups"]:
            if b["backup_id"] in refused:
                continue
            if known_path(b["location"]):
                where = f" ({b['location']})"
            else:  # a client's backup from before clients said where: only its entry goes
                where = f" (file not known to the catalog, {b['location'] or 'no location'}: remove it yourself)"
            print(f"{verb} {b['type']} backup {b['backup_id']}{where}: {b['reason']}")
        for s in doc["segments"]:
            print(f"{verb} WAL segment {s['segment']} (timeline {s['timeline']}): {s['reason']}")
        for path in doc["unreadable_segments"]:
            print(f"left archive file {path}: no readable header, never expired")
        extra = [s for x in doc.get("extra_archives") or [] for s in x["segments"]]
        for x in doc.get("extra_archives") or []:
            for s in x["segments"]:
                if s["removed"] or doc["dry_run"]:
                    print(
                        f"{verb} WAL segment {s['segment']} (timeline {s['timeline']}) "
                        f"in {x['destination']}: {s['reason']}"
                    )
            for path in x["unreadable_segments"]:
                print(f"left archive file {path}: no readable header, never expired")
        print(
            f"{'Dry run: ' if doc['dry_run'] else ''}{len(doc['backups']) - len(refused)} backup(s) and "
            f"{len(doc['segments'])} WAL segment(s) {verb}; {len(doc['kept'])} backup(s) kept"
            + (
                f"; {sum(s['removed'] or doc['dry_run'] for s in extra)} WAL segment(s) {verb} in archive_extra_dests"
                if doc.get("extra_archives")
                else ""
            )
        )
    for left in doc.get("repository_errors") or []:
        print(
            f"{PROG}: warning: backup {left['backup_id']} expired, but its copy in repository "
            f"{left['repository']} is still there: {left['error']}; remove it there by hand: "
            f"catalog/{left['backup_id']}.json first, then backups/{left['backup_id']}/",
            file=sys.stderr,
        )
    for x in doc.get("extra_archives") or []:
        if x.get("error"):
            print(f"{PROG}: warning: archived WAL in {x['destination']} not expired: {x['error']}", file=sys.stderr)
    for backup_id, why in refused.items():
        fail(PROG, f"backup {backup_id} not expired: {why}")
    return 1 if refused else 0
