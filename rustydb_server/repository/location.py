"""Paths that may be ``s3://`` URLs: the few directory and file operations the
WAL archive needs, for a local directory and an S3 prefix alike.

The archive code (segment files, timeline history files, the listing of an
archive) works on "directories" and "files" named by strings. A string that
starts with ``s3://`` names a prefix (a directory) or an object (a file) in a
bucket; anything else is a local path, handled by ``os`` exactly as before.
So ``list_archive("s3://bucket/rustydb/wal")`` lists the objects under that
prefix, and ``unpack_segment("s3://bucket/rustydb/wal/0000...walz")`` reads
that object, with the same checks and messages as for files.

S3 clients are made once per bucket and settings (they are thread-safe and
costly to make); every prefix in that bucket is a view sharing its client.
Which settings: those passed to ``configure`` (the server registers its own
at start, a tool those of its config file), else the standard AWS
environment.
"""

from __future__ import annotations

import io
import os
import threading

from . import is_s3_url, open_repository
from .base import ObjectNotFound, Repository

_settings = None
_lock = threading.Lock()
_clients: dict[tuple, Repository] = {}

_S3_SETTINGS = (
    "repository_s3_endpoint_url",
    "repository_s3_region",
    "repository_s3_force_path_style",
    "repository_s3_credentials_file",
    "repository_s3_part_size",
    "repository_s3_concurrency",
    "repository_s3_checksum",
)


def configure(settings) -> None:
    """The settings S3 locations are opened with from now on (a mapping with the repository_s3_* names)."""
    global _settings
    _settings = settings


def settings_snapshot(settings=None) -> dict:
    """The repository_s3_* values of ``settings`` (or the configured ones) now."""
    source = _settings if settings is None else settings
    out = {}
    for name in _S3_SETTINGS:
        try:
            out[name] = source[name] if source is not None else None
        except (KeyError, LookupError):
            out[name] = None
    return out


def repository(url: str, settings=None) -> Repository:
    """The repository rooted at ``url`` (a directory or an s3:// prefix), S3 clients shared per settings."""
    if not is_s3_url(url):
        return open_repository(url)
    from .s3 import parse_url  # botocore loads only where S3 is used

    values = settings_snapshot(settings)
    url = url.rstrip("/")
    bucket, prefix = parse_url(url)  # a malformed URL fails here, named as given
    settings_key = tuple(sorted(values.items()))
    with _lock:
        repo = _clients.get((url, settings_key))
        if repo is None:
            # One client per bucket and settings; each prefix of it is a view sharing that client.
            root = _clients.get((f"s3://{bucket}", settings_key))
            if root is None:
                root = open_repository(f"s3://{bucket}", values)
            repo = root.with_prefix(prefix) if prefix else root
            if len(_clients) > 64:
                _clients.clear()
            _clients[(f"s3://{bucket}", settings_key)] = root
            _clients[(url, settings_key)] = repo
        return repo


def _split(url: str) -> tuple[Repository, str]:
    """(the bucket's repository, the key in it) of an s3:// object URL."""
    rest = url[len("s3://") :]
    bucket, _, key = rest.partition("/")
    return repository(f"s3://{bucket}"), key


def is_url(location: str) -> bool:
    return is_s3_url(location)


def join(directory: str, name: str) -> str:
    if is_s3_url(directory):
        return f"{directory.rstrip('/')}/{name}"
    return os.path.join(directory, name)


def basename(location: str) -> str:
    if is_s3_url(location):
        return location.rstrip("/").rsplit("/", 1)[-1]
    return os.path.basename(location)


def isdir(directory: str) -> bool:
    """A local directory that exists; an S3 prefix always "exists" (it may hold nothing)."""
    return True if is_s3_url(directory) else os.path.isdir(directory)


def listdir(directory: str) -> list[str]:
    """Names directly under ``directory`` (FileNotFoundError for a missing local one)."""
    if not is_s3_url(directory):
        return os.listdir(directory)
    repo, key = _split(directory.rstrip("/"))
    prefix = f"{key}/" if key else ""
    names = []
    for info in repo.list(prefix):
        rest = info.key[len(prefix) :]
        if rest and "/" not in rest:
            names.append(rest)
    return names


def exists(location: str) -> bool:
    if not is_s3_url(location):
        return os.path.exists(location)
    repo, key = _split(location)
    return bool(key) and repo.stat(key) is not None


def read_bytes(location: str) -> bytes:
    """A file's bytes; FileNotFoundError when there is none (a missing object too)."""
    if not is_s3_url(location):
        with open(location, "rb") as f:
            return f.read()
    repo, key = _split(location)
    try:
        return repo.get_bytes(key)
    except ObjectNotFound:
        raise FileNotFoundError(2, "no such object", location) from None


def open_read(location: str):
    """A readable binary file object (an S3 object is fetched whole: archive files are one segment)."""
    if not is_s3_url(location):
        return open(location, "rb")
    return io.BytesIO(read_bytes(location))


def read_head(location: str, size: int) -> bytes:
    """The first ``size`` bytes of a file (one range request for an S3 object)."""
    if not is_s3_url(location):
        with open(location, "rb") as f:
            return f.read(size)
    repo, key = _split(location)
    try:
        return repo.get_range(key, 0, size)
    except ObjectNotFound:
        raise FileNotFoundError(2, "no such object", location) from None


def remove(location: str, fileops=None) -> bool:
    """Remove a file or object; False when a local file was already gone (an object store cannot tell)."""
    if not is_s3_url(location):
        try:
            (fileops.unlink if fileops is not None else os.unlink)(location)
        except FileNotFoundError:
            return False
        return True
    repo, key = _split(location)
    repo.delete(key)
    return True
