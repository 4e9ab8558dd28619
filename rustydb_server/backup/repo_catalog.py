"""A repository's own backup catalog: any one repository alone lists, verifies,
restores and resolves chains, with no server and no data directory.

Layout inside a repository (see rustydb_server/repository/):

    backups/<id>/<id>.backup    the backup file, as rusty-db-backup writes it
    catalog/<id>.json           that backup's entry, written once the file is complete
    catalog/index.json          every entry, replaced whole after each new one

The order makes an incomplete copy invisible: the file is visible under its
key only once complete, its entry is written after it, the index last. The
per-backup documents are the truth; the index saves a reader one request per
backup. A reader adds the documents the index misses (a writer stopped
between the two, two writers that raced on the index), so nothing a document
records is ever lost from a listing.

Plain functions over a Repository (blocking: callers run them in worker
threads); no trio, no server state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from ..container.format import BackupType

CATALOG_PREFIX = "catalog/"
INDEX_KEY = "catalog/index.json"
FORMAT = 1

#: What a repository's entry records of a backup (the server catalog's fields
#: that describe the backup itself; not where the server keeps its own copy).
ENTRY_FIELDS = (
    "backup_id",
    "backup_type",
    "started_at",
    "completed_at",
    "size_bytes",
    "start_lsn",
    "end_lsn",
    "timeline",
    "parent_id",
    "base_full_id",
    "databases",
    "compression",
    "encryption",
    "partial",
)


class RepoCatalogError(Exception):
    """The repository's catalog cannot answer (damaged, or no such backup); the message says what to do."""


def backup_key(backup_id: str) -> str:
    return f"backups/{backup_id}/{backup_id}.backup"


def entry_key(backup_id: str) -> str:
    return f"{CATALOG_PREFIX}{backup_id}.json"


def entry_document(entry: dict, size: int) -> dict:
    """A repository's entry for a completed backup described by a catalog entry."""
    doc = {k: entry.get(k) for k in ENTRY_FIELDS}
    doc["status"] = "completed"
    doc["key"] = backup_key(entry["backup_id"])
    doc["size_bytes"] = size
    doc["copied_at"] = int(time.time())
    return doc


def file_chunks(path: str, chunk_size: int = 4 << 20) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                return
            yield chunk


def record(repo, doc: dict) -> None:
    """Add a completed backup's entry to the repository's catalog (after its file)."""
    repo.put_bytes(entry_key(doc["backup_id"]), _dump(doc))
    entries = load(repo)
    entries[doc["backup_id"]] = doc
    write_index(repo, entries)


def write_index(repo, entries: dict[str, dict]) -> None:
    ordered = sorted(entries.values(), key=_age)
    repo.put_bytes(INDEX_KEY, _dump({"format": FORMAT, "backups": ordered}))


def forget(repo, backup_id: str) -> None:
    """Remove a backup from the repository: its entry first, then its file."""
    repo.delete(entry_key(backup_id))
    entries = load(repo)
    entries.pop(backup_id, None)
    write_index(repo, entries)
    repo.delete(backup_key(backup_id))


def load(repo) -> dict[str, dict]:
    """Every backup the repository's catalog records, by id."""
    entries: dict[str, dict] = {}
    raw = _get(repo, INDEX_KEY)
    if raw is not None:
        try:
            data = json.loads(raw)
            listed = data["backups"]
            for doc in listed:
                if _usable(doc):
                    entries[doc["backup_id"]] = doc
        except (ValueError, KeyError, TypeError, RecursionError):
            entries = {}  # damaged: the per-backup documents rebuild it below
    for info in repo.list(CATALOG_PREFIX):
        if info.key == INDEX_KEY or not info.key.endswith(".json"):
            continue
        backup_id = info.key[len(CATALOG_PREFIX) : -len(".json")]
        if "/" in backup_id or backup_id in entries:
            continue
        raw = _get(repo, info.key)
        if raw is None:
            continue  # removed between the listing and the read
        try:
            doc = json.loads(raw)
        except (ValueError, RecursionError):
            raise RepoCatalogError(
                f"{repo.url}: catalog entry {info.key} is not valid JSON; delete it (its backup is then "
                "no longer listed) or copy it again from another repository"
            ) from None
        if _usable(doc) and doc["backup_id"] == backup_id:
            entries[backup_id] = doc
    return entries


def _get(repo, key: str) -> bytes | None:
    from ..repository.base import ObjectNotFound

    try:
        return repo.get_bytes(key)
    except ObjectNotFound:
        return None


def _usable(doc) -> bool:
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("backup_id"), str)
        and isinstance(doc.get("key"), str)
        and _type_of(doc.get("backup_type")) is not None
    )


def _dump(doc: dict) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode()


def sort_key(doc: dict) -> tuple:
    """Oldest first: by completion, then WAL position, then id."""
    return _age(doc)


def _age(doc: dict) -> tuple:
    return (doc.get("completed_at") or 0, doc.get("end_lsn") or 0, doc["backup_id"])


def _type_of(value) -> BackupType | None:
    try:
        return BackupType(value)
    except ValueError:
        return None


# ------------------------------------------------------------------ chains
def pick(entries: dict[str, dict], which: str, *, url: str) -> dict:
    """The backup ``which`` names: an id (or a unique prefix of one), or
    "latest", the newest whole-server backup."""
    if not entries:
        raise RepoCatalogError(
            f"repository {url} holds no backups (its catalog/ is empty); check the address, or take a "
            "backup into it first"
        )
    if which == "latest":
        whole = [e for e in entries.values() if e.get("partial") is not True]
        if not whole:
            raise RepoCatalogError(f"repository {url} holds only backups of some databases; name one with --backup ID")
        return max(whole, key=_age)
    if which in entries:
        return entries[which]
    matches = [e for bid, e in entries.items() if bid.startswith(which)]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(entries))
    raise RepoCatalogError(
        f"repository {url} has no backup {which!r}"
        + (" (the prefix matches several)" if matches else "")
        + f"; it holds: {known}. Pass one of those ids, or latest"
    )


def chain_of(entries: dict[str, dict], last: dict, *, url: str) -> list[dict]:
    """The entries from the full backup to ``last``, in the order they are applied."""
    chain = [last]
    seen = {last["backup_id"]}
    current = last
    while True:
        kind = BackupType(current["backup_type"])
        if not kind.needs_parent:
            break
        parent_id = current.get("base_full_id" if kind is BackupType.DIFFERENTIAL else "parent_id")
        parent = entries.get(parent_id) if parent_id else None
        if parent is None:
            raise RepoCatalogError(
                f"backup {current['backup_id']} ({kind}) in repository {url} needs backup {parent_id}, "
                "which that repository does not hold (not copied yet, or deleted); restore from a "
                "repository that holds the whole chain, or choose an earlier backup with --backup"
            )
        if parent["backup_id"] in seen:
            raise RepoCatalogError(f"the catalog of repository {url} forms a loop at {parent['backup_id']}")
        seen.add(parent["backup_id"])
        chain.append(parent)
        current = parent
    chain.reverse()
    return chain


def base_for_target(entries: dict[str, dict], before_us: int | None, *, url: str) -> dict:
    """The newest full or pitr-base backup to recover from: completed before
    ``before_us`` (a time target, microseconds) when one is given."""
    bases = [
        e
        for e in entries.values()
        if BackupType(e["backup_type"]).is_full_base
        and e.get("partial") is not True
        and (before_us is None or (e.get("completed_at") or 0) * 1_000_000 <= before_us)
    ]
    if not bases:
        raise RepoCatalogError(
            f"repository {url} holds no full or pitr-base backup"
            + (" completed before the recovery target" if before_us is not None else "")
            + "; choose a later target, or name a base with --backup ID"
        )
    return max(bases, key=_age)
