"""rusty-db-backup --repo URL: backups in a repository (a local directory or s3://bucket/prefix).

With --type, the backup streamed from the server goes into the repository:
straight into its file for a local directory; for S3 into a temporary file
and, as it is written, into a multipart upload (S3Repository.open_upload),
what a store slower than the backup did not take within
repository_s3_stream_wait read back from the file once it is complete, the
file uploaded again only if that streamed upload was given up (a store that
took nothing within that wait, or one that failed); then its entry
into the repository's catalog
(backup/repo_catalog.py); only then is the server told where it is. With
--info and --verify, FILE is a backup id of the repository (or "latest"),
read by byte ranges: --info reads the head and tail of the object only.

S3 credentials, endpoint and region come from the standard AWS environment
and files (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, ~/.aws/credentials, ...),
never from the command line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time

from ...backup import repo_catalog
from ...backup.manifest import Manifest
from ...backup.replicate import is_s3, location_in
from ...backup.repo_file import RepositoryFile
from ...container.format import BackupHeader
from ...repository import RepositoryError


def open_repo(url: str):
    """The repository at ``url``, S3 reached with the config file's repository_s3_* settings
    and the AWS environment; RepositoryError (or SettingError: a bad config line) says why not."""
    from ...repository import open_repository
    from ..repository_settings import load

    return open_repository(url, load() if is_s3(url) else None)


def run(args) -> int:
    """--repo URL --list: the repository's backups, oldest first, from its own catalog."""
    from ...backup.repo_catalog import RepoCatalogError
    from ...repository import RepositoryError
    from ...settings import SettingError
    from ..output import fail, human_size, print_json
    from . import PROG

    try:
        repo = open_repo(args.repo)
        entries = sorted(repo_catalog.load(repo).values(), key=repo_catalog.sort_key)
    except (RepositoryError, RepoCatalogError, SettingError) as exc:
        return fail(PROG, f"cannot list repository {args.repo}: {exc}")
    if args.json:
        print_json({"ok": True, "repository": repo.url, "backups": entries})
        return 0
    print(f"Repository {repo.url}: {len(entries)} backup(s)")
    for e in entries:
        completed = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.get("completed_at") or 0))
        parent = f"  on {e['parent_id']}" if e.get("parent_id") else ""
        size = human_size(e.get("size_bytes") or 0)
        print(f"{e['backup_id']}  {e['backup_type']:<12}  {completed}  {size:>9}{parent}")
    return 0


def find_backup(repo, which: str) -> dict:
    """The repository's catalog entry of backup ``which`` (an id, a prefix of one, or latest)."""
    return repo_catalog.pick(repo_catalog.load(repo), which, url=repo.url)


def open_backup(repo, entry: dict) -> RepositoryFile:
    return RepositoryFile(repo, entry["key"])


def server_repository(args, value: str) -> str:
    """The directory or URL of the server's backup repository ``value`` names: N or repoN
    (its N-th entry of backup_repositories, from 1) or a name given there."""
    from rustydb_client.client import connect, read_password_file

    from ...settings import SettingError, parse_value
    from ..repository_settings import resolve
    from .take import BackupFailed

    password = read_password_file(args.password_file)
    with connect(args.host, args.port, user=args.user, password=password) as conn:
        shown = conn.execute("SHOW backup_repositories").rows[0][0]
    try:
        return resolve(value, parse_value("backup_repositories", shown) if shown else [], "on the server")
    except SettingError as e:
        raise BackupFailed(str(e)) from None


class RepoTarget:
    """Where rusty-db-backup --type ... --repo URL writes the backup it receives."""

    def __init__(self, url: str):
        self.url = url if is_s3(url) else os.path.abspath(url)
        self.repo = open_repo(self.url)
        self.local = not is_s3(url)
        self._tmp: str | None = None
        self._stream = None  # the streamed upload into an S3 repository
        # Reachable, with working credentials, before the server starts a backup for nothing.
        self.repo.stat(repo_catalog.INDEX_KEY)

    @property
    def request_output(self) -> str:
        """What the request names as the output, before the backup has an id."""
        return self.url

    def output_for(self, manifest: Manifest) -> str:
        """The file to write the backup into, once its id is known."""
        key = repo_catalog.backup_key(manifest.backup_id)
        if self.repo.stat(key) is not None:
            raise FileExistsError(f"repository {self.repo.url} already holds {key}; backups are never overwritten")
        if self.local:
            path = self.repo.path(key)
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            return path
        self._tmp = tempfile.mkdtemp(prefix="rustydb-backup-")
        return os.path.join(self._tmp, f"{manifest.backup_id}.backup")

    def tee_for(self, manifest: Manifest):
        """Where the file's bytes go as they are written: an S3 repository's streamed upload."""
        if self.local:
            return None
        from ...settings import lookup, to_seconds
        from ..repository_settings import load

        wait = load().get("repository_s3_stream_wait", lookup("repository_s3_stream_wait").default)
        key = repo_catalog.backup_key(manifest.backup_id)
        self._stream = self.repo.open_upload(
            key, if_absent=True, wait_budget=to_seconds("repository_s3_stream_wait", wait)
        )
        return self._stream

    def store(self, path: str, manifest: Manifest, header: BackupHeader, end_lsn: int) -> str:
        """Upload the complete file (S3), record it in the repository's catalog; its location."""
        try:
            return self._store(path, manifest, header, end_lsn)
        except BaseException:
            if self.local:  # never recorded: not left taking space in the repository
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise

    def _store(self, path: str, manifest: Manifest, header: BackupHeader, end_lsn: int) -> str:
        key = repo_catalog.backup_key(manifest.backup_id)
        size = os.path.getsize(path)
        if not self.local and not self._streamed(path, size):
            self.repo.put_stream(key, repo_catalog.file_chunks(path), if_absent=True)
        entry = {
            "backup_id": header.backup_id,
            "backup_type": str(header.backup_type),
            "started_at": header.created_us // 1_000_000,
            "completed_at": int(time.time()),
            "start_lsn": header.start_lsn,
            "end_lsn": end_lsn,
            "timeline": header.timeline,
            "parent_id": header.parent_id,
            "base_full_id": header.base_full_id,
            "databases": manifest.database_names,
            "compression": header.compression,
            "encryption": header.encrypted,
            "partial": manifest.partial,
        }
        repo_catalog.record(self.repo, repo_catalog.entry_document(entry, size))
        return location_in(self.url, key)

    def _streamed(self, path: str, size: int) -> bool:
        """Whether the streamed upload holds the whole file now (what it did not take as the file
        was written is read back from it); else the file is uploaded whole."""
        stream, self._stream = self._stream, None
        if stream is None:
            return False
        try:
            return stream.finish(rest_from=path).size == size
        except RepositoryError as e:
            print(f"rusty-db-backup: {e}; uploading the backup file instead", file=sys.stderr)
            return False

    def close(self) -> None:
        if self._stream is not None:  # the backup failed: its streamed upload is dropped
            self._stream.abort("the backup failed")
            with contextlib.suppress(RepositoryError):
                self._stream.finish()  # waits until the store has dropped the parts sent
            self._stream = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
