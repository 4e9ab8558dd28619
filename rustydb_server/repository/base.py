"""The repository contract: where backups, the catalog and archived WAL are kept.

A repository is a local directory or an S3 bucket prefix; both offer the same
few operations on objects named by keys (relative, '/'-separated paths), so
nothing above this package knows which kind it writes to. The methods block
(file or network I/O): the server calls them from worker threads
(``trio.to_thread``), like the rest of its file I/O, and the tools call them
directly.

Guarantees every implementation keeps:

- an object becomes visible under its key only when it is complete: a put
  that fails or is interrupted leaves nothing listed under that key (the
  local one writes a temporary name and renames it; the S3 one completes a
  multipart upload last and aborts it on failure);
- ``if_absent=True`` never replaces an existing object: the same bytes
  already there are a success (a put repeated after a crash), different
  bytes raise ``ObjectExists``;
- ``list`` returns complete objects only, sorted by key;
- errors are ``RepositoryError`` whose message names the repository (never
  its credentials), the key, the reason and what to do.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # unix seconds
    etag: str | None = None


class RepositoryError(Exception):
    """An operation on a repository failed; the message says which, why and what to do."""


class ObjectNotFound(RepositoryError):
    """The key holds no object."""


class ObjectExists(RepositoryError):
    """``if_absent`` put of a key that already holds different bytes."""


class InvalidKey(RepositoryError, ValueError):
    """A key that is not a relative '/'-separated path."""


def check_key(key: str) -> str:
    """``key`` if it is a usable object key, else InvalidKey.

    A key is a relative path of non-empty '/'-separated parts, none of them
    ``.`` or ``..``, without NUL or backslash (so a key maps to exactly one
    file below a local repository's root and never outside it).
    """
    if not isinstance(key, str) or not key:
        raise InvalidKey(f"invalid object key {key!r}: it must be a non-empty relative path")
    if key.startswith("/") or "\0" in key or "\\" in key:
        raise InvalidKey(f"invalid object key {key!r}: it must be a relative '/'-separated path")
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise InvalidKey(f"invalid object key {key!r}: empty, '.' and '..' parts are not allowed")
    return key


def check_prefix(prefix: str) -> str:
    """A list prefix: "" or any string a key may start with."""
    if prefix and (prefix.startswith("/") or "\0" in prefix or "\\" in prefix):
        raise InvalidKey(f"invalid key prefix {prefix!r}: it must be relative and '/'-separated")
    return prefix


def check_range(key: str, offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise RepositoryError(f"invalid range of {key}: offset {offset} and length {length} must not be negative")


@runtime_checkable
class Repository(Protocol):
    """What the rest of the server may do with a repository."""

    url: str  # display form, never credentials

    def put_stream(self, key: str, chunks: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo: ...

    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo: ...

    def open_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]: ...

    def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    def get_bytes(self, key: str) -> bytes: ...

    def stat(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None: ...

    def free_bytes(self) -> int | None: ...


class Hashing:
    """Passes chunks through while counting them and computing their sha256."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks = chunks
        self.size = 0
        self._sha = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            if chunk:
                self.size += len(chunk)
                self._sha.update(chunk)
                yield chunk

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def sha256_of(chunks: Iterable[bytes]) -> tuple[int, str]:
    """(size, sha256 hex) of a stream of chunks."""
    h = Hashing(chunks)
    for _ in h:
        pass
    return h.size, h.hexdigest()
