"""Repositories: a local directory or an S3 bucket prefix behind one interface.

``open_repository(url_or_path)`` gives the implementation for a URL:
``s3://bucket/prefix`` is an ``S3Repository`` (botocore, imported only then),
anything else a ``LocalRepository`` directory. The contract is in
``base.py``; the layout inside a repository is ``backups/<backup_id>/...``,
``catalog/<backup_id>.json`` + ``catalog/index.json`` and ``wal/<segment>``.
"""

from __future__ import annotations

from .base import (
    InvalidKey,
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    Repository,
    RepositoryError,
)
from .local import LocalRepository

__all__ = [
    "InvalidKey",
    "LocalRepository",
    "ObjectExists",
    "ObjectInfo",
    "ObjectNotFound",
    "Repository",
    "RepositoryError",
    "is_s3_url",
    "open_repository",
]

S3_SCHEME = "s3://"


def is_s3_url(url_or_path: str) -> bool:
    return isinstance(url_or_path, str) and url_or_path.startswith(S3_SCHEME)


def open_repository(url_or_path: str, settings=None) -> Repository:
    """The repository ``url_or_path`` names: ``s3://bucket/prefix`` or a local directory.

    ``settings`` (the server's settings, or any mapping with the
    ``repository_s3_*`` names) supplies the S3 endpoint, region, addressing,
    credentials file and upload tuning; without it the S3 client takes them
    from the standard AWS environment and files.
    """
    if not url_or_path:
        raise RepositoryError("no repository given: name a directory or an s3://bucket/prefix URL")
    if is_s3_url(url_or_path):
        from .s3 import S3Repository  # botocore loads only where S3 is used

        return S3Repository.from_url(url_or_path, settings)
    return LocalRepository(url_or_path)
