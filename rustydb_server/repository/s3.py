"""A repository in an S3 bucket (AWS or any S3-compatible store), over botocore (the core of boto3).

``s3://bucket/prefix``: every key is stored as ``prefix/key``. Where the
client connects and with which credentials comes from the server's settings
(``repository_s3_endpoint_url``, ``repository_s3_region``,
``repository_s3_force_path_style``, ``repository_s3_credentials_file``) and,
for whatever they leave unset, from the standard AWS chain (AWS_* environment
variables, ~/.aws/credentials and ~/.aws/config, instance roles). Credentials
never come from a command line.

Writes: an object smaller than ``repository_s3_part_size`` is one PutObject;
a larger one is a multipart upload whose parts (that size each) are sent by
up to ``repository_s3_concurrency`` threads at once, so memory stays bounded
at about concurrency x part size. Every part (and every single-request
object) carries its checksum (``repository_s3_checksum``: CRC32C by default,
SHA-256, or Content-MD5 for stores without S3's newer checksums), which the
store verifies before it accepts the part; that checksum is in the signed headers, so the
body is sent as UNSIGNED-PAYLOAD (not hashed again for the signature). The object appears
under its key only when CompleteMultipartUpload
succeeds; a failed or interrupted upload is aborted, and an upload of the
same key left behind by a crash is aborted by the next put of that key.
``if_absent`` adds ``If-None-Match: *`` so the store itself refuses to
replace an object that appeared meanwhile.

Reads: ``open_stream`` of a large object fetches ranges of it in parallel
(``If-Match`` its ETag, so an object replaced during the read fails instead
of mixing two versions) and yields them in order.
"""

from __future__ import annotations

import base64
import configparser
import copy
import functools
import hashlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

import botocore.exceptions
import botocore.session
import crc32c
from botocore.config import Config

from .base import (
    ObjectExists,
    ObjectInfo,
    ObjectNotFound,
    RepositoryError,
    check_key,
    check_prefix,
    check_range,
    sha256_of,
)

DEFAULT_PART_SIZE = 16 << 20
MIN_PART_SIZE = 5 << 20  # S3's smallest part (all but the last)
DEFAULT_CONCURRENCY = 4
#: ranges fetched by open_stream are at least this large
READ_RANGE = 8 << 20

_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "403"}
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


def parse_url(url: str) -> tuple[str, str]:
    """(bucket, prefix without slashes at either end) of ``s3://bucket/prefix``."""
    if not url.startswith("s3://"):
        raise RepositoryError(f"{url!r} is not an s3://bucket/prefix URL")
    rest = url[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise RepositoryError(f"repository URL {url!r} names no bucket: write s3://bucket/prefix")
    if "@" in bucket or ":" in bucket:
        raise RepositoryError(  # the URL is not repeated: it may hold a secret
            "an s3:// repository URL must not carry credentials or a port: the endpoint goes in "
            "repository_s3_endpoint_url (or AWS_ENDPOINT_URL), credentials in repository_s3_credentials_file "
            "or the AWS environment"
        )
    prefix = prefix.strip("/")
    if prefix:
        check_prefix(prefix)
    return bucket, prefix


def _setting(settings, name: str, default):
    if settings is None:
        return default
    try:
        value = settings[name]
    except (KeyError, LookupError):
        return default
    return default if value in (None, "") else value


def read_credentials_file(path: str) -> dict[str, str]:
    """Access key id, secret (and session token) from an AWS-style credentials file ([default] section)."""
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f)
    except OSError as e:
        raise RepositoryError(
            f"cannot read the S3 credentials file {path} (repository_s3_credentials_file): {e.strerror or e}; "
            "check the path and that the server's user may read it"
        ) from None
    except configparser.Error:
        raise RepositoryError(
            f"the S3 credentials file {path} is not in the AWS credentials format "
            "([default] with aws_access_key_id and aws_secret_access_key)"
        ) from None
    section = parser["default"] if parser.has_section("default") else None
    if section is None or not section.get("aws_access_key_id") or not section.get("aws_secret_access_key"):
        raise RepositoryError(
            f"the S3 credentials file {path} has no [default] section with aws_access_key_id and aws_secret_access_key"
        )
    out = {
        "aws_access_key_id": section["aws_access_key_id"].strip(),
        "aws_secret_access_key": section["aws_secret_access_key"].strip(),
    }
    if section.get("aws_session_token"):
        out["aws_session_token"] = section["aws_session_token"].strip()
    return out


def _b64sha256(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _b64crc32c(data: bytes | memoryview) -> str:
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


def _b64md5(data: bytes | memoryview) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


#: The checksum sent with every part (and single-request object), which the
#: store verifies before it takes it: setting value -> (request field, function,
#: S3 ChecksumAlgorithm or None). crc32c is hardware-accelerated (several GB/s);
#: sha256 costs a core about 1.6 s per GB here; md5 (Content-MD5) is what
#: stores without S3's newer checksums still verify.
CHECKSUMS = {
    "crc32c": ("ChecksumCRC32C", _b64crc32c, "CRC32C"),
    "sha256": ("ChecksumSHA256", _b64sha256, "SHA256"),
    "md5": ("ContentMD5", _b64md5, None),
}
DEFAULT_CHECKSUM = "crc32c"


class S3Repository:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        force_path_style: bool = False,
        credentials: dict[str, str] | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        checksum: str = DEFAULT_CHECKSUM,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.endpoint_url = endpoint_url or None
        self.part_size = max(MIN_PART_SIZE, int(part_size))
        self.concurrency = max(1, int(concurrency))
        if checksum not in CHECKSUMS:
            raise RepositoryError(f"unknown S3 checksum {checksum!r}: use one of {', '.join(CHECKSUMS)}")
        self.checksum = checksum
        self._checksum_field, self._checksum_of, self._checksum_algorithm = CHECKSUMS[checksum]
        s3_options = {"addressing_style": "path"} if force_path_style else {}
        # The body of a request is not hashed again for its signature (UNSIGNED-PAYLOAD):
        # every part already carries its own checksum (CRC32C by default) in the signed
        # headers, which the store verifies. botocore would otherwise compute a SHA-256 of
        # every byte sent (over https too, since the checksum is ours, not its own): a
        # fifth of the server's CPU during a backup into S3.
        s3_options["payload_signing_enabled"] = False
        config = Config(
            s3=s3_options,
            retries={"max_attempts": 4, "mode": "standard"},
            max_pool_connections=max(10, 2 * self.concurrency),
            connect_timeout=10,
            read_timeout=120,
            # The checksums this module computes itself (one per part) are
            # the ones sent; no extra ones a store might not know.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            # boto3's S3 client is botocore's plus transfer helpers this module does not use;
            # botocore's own starts ~50 ms sooner (that is part of every restore tool's time).
            self._client = botocore.session.Session().create_client(
                "s3", endpoint_url=self.endpoint_url, region_name=region or None, config=config, **(credentials or {})
            )
        except (botocore.exceptions.BotoCoreError, ValueError) as e:
            raise RepositoryError(f"repository {self.url}: cannot set up the S3 client: {e}") from None
        self._bucket_checked = False
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str, settings=None) -> S3Repository:
        bucket, prefix = parse_url(url)
        credentials = None
        creds_file = _setting(settings, "repository_s3_credentials_file", "")
        if creds_file:
            credentials = read_credentials_file(creds_file)
        return cls(
            bucket,
            prefix,
            endpoint_url=_setting(settings, "repository_s3_endpoint_url", None),
            region=_setting(settings, "repository_s3_region", None),
            force_path_style=bool(_setting(settings, "repository_s3_force_path_style", False)),
            credentials=credentials,
            part_size=_setting(settings, "repository_s3_part_size", DEFAULT_PART_SIZE),
            concurrency=_setting(settings, "repository_s3_concurrency", DEFAULT_CONCURRENCY),
            checksum=_setting(settings, "repository_s3_checksum", DEFAULT_CHECKSUM),
        )

    def __repr__(self) -> str:
        return f"S3Repository({self.url!r}, endpoint={self.endpoint_url!r})"

    def with_prefix(self, prefix: str) -> S3Repository:
        """The same bucket, settings and client under ``prefix`` (a client costs about 0.1 s
        of CPU to make: a restore reads a repository and its wal/ prefix with one)."""
        other = copy.copy(self)
        other.prefix = prefix.strip("/")
        if other.prefix:
            check_prefix(other.prefix)
        other.url = f"s3://{self.bucket}/{other.prefix}" if other.prefix else f"s3://{self.bucket}"
        other._lock = threading.Lock()
        return other

    # ------------------------------------------------------------ helpers
    def _full(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _where(self) -> str:
        return f"{self.url} (endpoint {self.endpoint_url})" if self.endpoint_url else self.url

    def _error(self, what: str, key: str, e: Exception) -> RepositoryError:
        """A RepositoryError for ``e`` that says what failed, why and what to do."""
        where = self._where()
        if isinstance(e, RepositoryError):
            return e
        if isinstance(e, botocore.exceptions.NoCredentialsError):
            return RepositoryError(
                f"repository {where}: cannot {what} {key}: no S3 credentials found; set "
                "repository_s3_credentials_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile "
                "in ~/.aws/credentials"
            )
        if isinstance(e, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionError):
            return RepositoryError(
                f"repository {where}: cannot {what} {key}: the store cannot be reached ({e}); check that it is "
                "up and that repository_s3_endpoint_url (or AWS_ENDPOINT_URL) names it"
            )
        if isinstance(e, botocore.exceptions.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            message = e.response.get("Error", {}).get("Message") or code
            if code == "NoSuchBucket":
                return RepositoryError(
                    f"repository {where}: cannot {what} {key}: bucket {self.bucket} does not exist; "
                    "create it, or correct the repository URL"
                )
            if code in _DENIED:
                return RepositoryError(
                    f"repository {where}: cannot {what} {key}: access denied ({code}: {message}); check the "
                    "access key and secret (repository_s3_credentials_file or the AWS environment) and that they "
                    f"may read and write bucket {self.bucket}"
                )
            if code in _NOT_FOUND:
                return ObjectNotFound(f"repository {where}: no object {key}")
            return RepositoryError(f"repository {where}: cannot {what} {key}: {code}: {message}")
        if isinstance(e, botocore.exceptions.BotoCoreError):
            return RepositoryError(f"repository {where}: cannot {what} {key}: {e}")
        return RepositoryError(f"repository {where}: cannot {what} {key}: {e}")

    @staticmethod
    def _code(e: Exception) -> str:
        if isinstance(e, botocore.exceptions.ClientError):
            return str(e.response.get("Error", {}).get("Code", ""))
        return ""

    def _check_bucket(self, key: str) -> None:
        """A missing object in a missing bucket is a missing bucket (HEAD answers both with a bare 404)."""
        if self._bucket_checked:
            return
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            if self._code(e) in ("404", "NoSuchBucket", "NotFound"):
                raise RepositoryError(
                    f"repository {self._where()}: cannot look at {key}: bucket {self.bucket} does not exist; "
                    "create it, or correct the repository URL"
                ) from None
            raise self._error("look at", key, e) from None
        self._bucket_checked = True

    # --------------------------------------------------------------- write
    def put_bytes(self, key: str, data: bytes, *, if_absent: bool = False) -> ObjectInfo:
        return self.put_stream(key, [data], if_absent=if_absent)

    def put_stream(self, key: str, chunks: Iterable[bytes], *, if_absent: bool = False) -> ObjectInfo:
        full = self._full(key)
        if if_absent:
            existing = self.stat(key)
            if existing is not None:
                size, digest = sha256_of(chunks)
                return self._same_or_exists(key, existing, size, digest)
        parts = _Parts(chunks, self.part_size, digest=if_absent)
        first = parts.next_part()
        try:
            if parts.done:  # the whole object fits in one part: one PutObject
                data = first or b""
                extra = {"IfNoneMatch": "*"} if if_absent else {}
                extra[self._checksum_field] = self._checksum_of(data)
                self._client.put_object(Bucket=self.bucket, Key=full, Body=data, **extra)
            else:
                self._multipart(full, first, parts, if_absent)
        except Exception as e:
            if if_absent and self._code(e) in ("PreconditionFailed", "412"):
                for _ in parts.rest():  # the rest of the stream, for its digest
                    pass
                existing = self.stat(key)
                if existing is not None:
                    return self._same_or_exists(key, existing, parts.size, parts.hexdigest())
            if isinstance(e, RepositoryError):
                raise
            if isinstance(e, botocore.exceptions.BotoCoreError | botocore.exceptions.ClientError):
                raise self._error("write", key, e) from None
            raise
        info = self.stat(key)
        if info is None:
            raise RepositoryError(f"repository {self._where()}: {key} was written but cannot be found after it")
        return info

    def _multipart(self, full: str, first: bytes, parts: _Parts, if_absent: bool) -> None:
        upload_id = self._begin_upload(full)
        done: list[dict] = []
        try:
            with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-put") as pool:
                in_flight: set[Future] = set()
                number = 0
                part = first
                while part is not None:
                    number += 1
                    in_flight.add(pool.submit(self._upload_part, full, upload_id, number, part))
                    # The next part is cut while the store takes these; it goes as soon as any
                    # of them is done (waiting for the oldest left a sender idle behind it).
                    part = parts.next_part()
                    if part is not None and len(in_flight) >= self.concurrency:
                        finished, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                        done.extend(f.result() for f in finished)
                done.extend(f.result() for f in in_flight)
            self._complete_upload(full, upload_id, done, if_absent)
        except BaseException:
            self._abort_upload(full, upload_id)
            raise

    def _begin_upload(self, full: str) -> str:
        """A new multipart upload of ``full`` (any left by an earlier cut-off put aborted first); its id."""
        self._abort_stale(full)
        upload = self._client.create_multipart_upload(
            Bucket=self.bucket,
            Key=full,
            **({"ChecksumAlgorithm": self._checksum_algorithm} if self._checksum_algorithm else {}),
        )
        return upload["UploadId"]

    def _complete_upload(self, full: str, upload_id: str, parts: list[dict], if_absent: bool) -> None:
        """Make the upload's object visible under ``full``; with ``if_absent``, never over another."""
        extra = {"IfNoneMatch": "*"} if if_absent else {}
        self._client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=full,
            UploadId=upload_id,
            MultipartUpload={"Parts": sorted(parts, key=lambda p: p["PartNumber"])},
            **extra,
        )

    def _abort_upload(self, full: str, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except Exception:
            pass  # left for the next put of this key, which aborts it

    def open_upload(self, key: str, *, if_absent: bool = False, wait_budget: float = 10.0) -> StreamedUpload:
        """A multipart upload of ``key`` fed by ``write`` as the bytes are produced (a tee of a
        file being written), finished by ``finish``; see StreamedUpload. Nothing is sent from the
        caller's thread: the upload starts in the background."""
        return StreamedUpload(self, key, if_absent=if_absent, wait_budget=wait_budget)

    def _upload_part(self, full: str, upload_id: str, number: int, data: bytes) -> dict:
        field = self._checksum_field
        checksum = self._checksum_of(data)
        r = self._client.upload_part(
            Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=data, **{field: checksum}
        )
        returned = r.get(field)
        if returned is not None and returned != checksum:
            raise RepositoryError(
                f"repository {self._where()}: part {number} of {full}: the store computed checksum {returned}, "
                f"the part sent has {checksum}; the upload is aborted"
            )
        if self._checksum_algorithm is None:  # Content-MD5: checked on arrival, not part of the completion
            return {"PartNumber": number, "ETag": r["ETag"]}
        return {"PartNumber": number, "ETag": r["ETag"], field: checksum}

    def _abort_stale(self, full: str) -> None:
        """Abort uploads of exactly this key left by an earlier put that was cut off."""
        try:
            r = self._client.list_multipart_uploads(Bucket=self.bucket, Prefix=full)
        except Exception:
            return  # a store without the listing: nothing to clean here
        for u in r.get("Uploads", []) or []:
            if u.get("Key") == full:
                try:
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=u["UploadId"])
                except Exception:
                    pass

    def abort_incomplete_uploads(self, prefix: str = "") -> int:
        """Abort every incomplete multipart upload under ``prefix``; how many were aborted."""
        full = self._full(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        count = 0
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                for u in page.get("Uploads", []) or []:
                    self._client.abort_multipart_upload(Bucket=self.bucket, Key=u["Key"], UploadId=u["UploadId"])
                    count += 1
        except Exception as e:
            raise self._error("clean up uploads under", prefix or "(all keys)", e) from None
        return count

    def _same_or_exists(self, key: str, existing: ObjectInfo, size: int, digest: str) -> ObjectInfo:
        if existing.size == size:
            _, theirs = sha256_of(self.open_stream(key))
            if theirs == digest:
                return existing
        raise ObjectExists(
            f"repository {self._where()}: {key} already exists with different content ({existing.size} bytes); "
            "it is never overwritten: another server may be writing to the same repository"
        )

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._full(key))
        except Exception as e:
            if self._code(e) in _NOT_FOUND - {"404"}:
                return
            raise self._error("delete", key, e) from None

    # ---------------------------------------------------------------- read
    def stat(self, key: str) -> ObjectInfo | None:
        full = self._full(key)
        try:
            r = self._client.head_object(Bucket=self.bucket, Key=full)
        except Exception as e:
            if self._code(e) in _NOT_FOUND:
                self._check_bucket(key)
                return None
            raise self._error("look at", key, e) from None
        return ObjectInfo(
            key=key,
            size=int(r["ContentLength"]),
            mtime=r["LastModified"].timestamp(),
            etag=(r.get("ETag") or "").strip('"') or None,
        )

    def get_bytes(self, key: str) -> bytes:
        try:
            r = self._client.get_object(Bucket=self.bucket, Key=self._full(key))
            with r["Body"] as body:
                return body.read()
        except Exception as e:
            raise self._error("read", key, e) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_range(key, offset, length)
        if length == 0:
            if self.stat(key) is None:
                raise ObjectNotFound(f"repository {self._where()}: no object {key}")
            return b""
        return self._range(key, offset, length, None)

    def _range(self, key: str, offset: int, length: int, etag: str | None) -> bytes:
        extra = {"IfMatch": f'"{etag}"'} if etag else {}
        try:
            r = self._client.get_object(
                Bucket=self.bucket, Key=self._full(key), Range=f"bytes={offset}-{offset + length - 1}", **extra
            )
            with r["Body"] as body:
                return body.read()
        except Exception as e:
            code = self._code(e)
            if code == "InvalidRange":
                if self.stat(key) is None:
                    raise ObjectNotFound(f"repository {self._where()}: no object {key}") from None
                return b""
            if code in ("PreconditionFailed", "412"):
                raise RepositoryError(
                    f"repository {self._where()}: {key} was replaced while it was being read; read it again"
                ) from None
            raise self._error("read", key, e) from None

    def open_stream(self, key: str, chunk_size: int = 1 << 20) -> Iterator[bytes]:
        info = self.stat(key)  # a missing key fails here, not at the first chunk
        if info is None:
            raise ObjectNotFound(f"repository {self._where()}: no object {key}")
        return self._stream(info, max(1, chunk_size))

    def _stream(self, info: ObjectInfo, chunk_size: int) -> Iterator[bytes]:
        span = max(READ_RANGE, chunk_size)
        if info.size <= span:
            data = self._range(info.key, 0, info.size, info.etag) if info.size else b""
            yield from _pieces(data, chunk_size)
            return
        with ThreadPoolExecutor(self.concurrency, thread_name_prefix="s3-get") as pool:
            ahead: deque[Future] = deque()
            next_offset = 0
            try:
                while next_offset < info.size or ahead:
                    while next_offset < info.size and len(ahead) < self.concurrency:
                        n = min(span, info.size - next_offset)
                        ahead.append(pool.submit(self._range, info.key, next_offset, n, info.etag))
                        next_offset += n
                    yield from _pieces(ahead.popleft().result(), chunk_size)
            finally:
                for f in ahead:
                    f.cancel()

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        check_prefix(prefix)
        base = f"{self.prefix}/" if self.prefix else ""
        found: list[ObjectInfo] = []
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base + prefix):
                for o in page.get("Contents", []) or []:
                    key = o["Key"][len(base) :]
                    if not key or key.endswith("/"):
                        continue  # a "directory" marker some tools write
                    found.append(
                        ObjectInfo(
                            key=key,
                            size=int(o["Size"]),
                            mtime=o["LastModified"].timestamp(),
                            etag=(o.get("ETag") or "").strip('"') or None,
                        )
                    )
        except Exception as e:
            raise self._error("list", prefix or "(all keys)", e) from None
        found.sort(key=lambda i: i.key)
        return iter(found)

    def free_bytes(self) -> int | None:
        return None


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class _Parts:
    """Cuts a stream of chunks into parts of ``part_size`` bytes (the last one
    shorter), copying each byte once (into its part); with ``digest`` it also
    hashes everything that passes (SHA-256, for the ``if_absent`` comparison)."""

    def __init__(self, chunks: Iterable[bytes], part_size: int, *, digest: bool = False):
        self._it = iter(chunks)
        self._part_size = part_size
        self._pending: list[memoryview] = []
        self._pending_size = 0
        self.done = False
        self.size = 0
        self._sha = hashlib.sha256() if digest else None

    def next_part(self) -> bytes | None:
        """The next part, or None after the last. ``done`` turns true once the stream has ended."""
        while not self.done and self._pending_size < self._part_size:
            try:
                chunk = next(self._it)
            except StopIteration:
                self.done = True
                break
            if chunk:
                if not isinstance(chunk, bytes):  # a buffer the caller may refill once it has the next chunk
                    chunk = bytes(chunk)
                view = memoryview(chunk)
                self._pending.append(view)
                self._pending_size += len(view)
                self.size += len(view)
                if self._sha is not None:
                    self._sha.update(view)
        if not self._pending_size:
            return None
        take, pieces = self._part_size, []
        while take and self._pending:
            head = self._pending[0]
            if len(head) <= take:
                pieces.append(self._pending.pop(0))
                take -= len(head)
            else:
                pieces.append(head[:take])
                self._pending[0] = head[take:]
                take = 0
        part = b"".join(pieces)
        self._pending_size -= len(part)
        return part

    def rest(self) -> Iterator[bytes]:
        while True:
            p = self.next_part()
            if not p:
                return
            yield p

    def hexdigest(self) -> str:
        assert self._sha is not None
        return self._sha.hexdigest()


class StreamedUpload:
    """A multipart upload fed as its bytes are produced: ``write`` from the
    producer's thread, ``finish`` once the stream is whole, ``abort`` to drop it.

    The producer never talks to the store: ``write`` copies the bytes into
    part buffers and hands each full one to a bounded queue (``concurrency``
    parts), from which a thread of its own creates the upload and sends the
    parts, ``concurrency`` at once, each with its checksum, as ``put_stream``
    does. A part's buffer is filled again once the store has taken it, so a
    long upload copies each byte once into memory that is already there
    (a new 16 MB buffer per part cost the producer's thread as much again in
    page faults as the copy). Memory: about (2 x concurrency + 2) x part size.
    A full queue makes ``write`` wait, at most ``wait_budget`` seconds in all;
    past that the producer goes on at its own speed: if the store took a part
    lately (slower than the producer, not hung), the upload keeps what it was
    handed (``detached_at`` bytes) and ``finish(rest_from=FILE)`` reads the
    rest back from the complete file that holds the same bytes; else the
    streamed upload is given up (whoever owns the bytes uploads them later
    from elsewhere). A failed part, a store that cannot be reached or
    ``abort`` give it up too;
    the multipart upload is then aborted, so nothing is left listed or
    half-written under the key. ``error`` says why it was given up; ``finish``
    raises RepositoryError with it. ``timeline()`` says where the time went.
    """

    def __init__(self, repo: S3Repository, key: str, *, if_absent: bool = False, wait_budget: float = 10.0):
        self.repo = repo
        self.key = key
        self._full = repo._full(key)
        self._if_absent = if_absent
        self._part_size = repo.part_size
        self._queue: queue.Queue = queue.Queue(maxsize=repo.concurrency)
        self._buffer: bytearray | None = None  # the part being filled
        self._filled = 0  # bytes in it
        self._free: deque[bytearray] = deque()  # part buffers the store has taken, to fill again
        self._numbered = 0
        self._queued = 0  # bytes handed to the sender in parts
        #: set once the store fell behind the wait budget while still taking parts: the
        #: stream's bytes from here on are not kept; finish(rest_from=FILE) reads them back
        self.detached_at: int | None = None
        self._last_ack_at: float | None = None  # when the store last took a part
        self._final: bytes | None = None  # the last (short) part, once the stream has ended
        self._last_sent = False  # the last (short) part handed over
        self._end_sent = False  # and the end of the parts after it
        self.size = 0  # bytes written so far
        self.wait_budget = max(0.0, float(wait_budget))
        self.waited = 0.0  # seconds the producer spent waiting on a full queue
        self.error: str | None = None
        self._given_up = threading.Event()
        self._lock = threading.Lock()
        self._info: ObjectInfo | None = None
        # The timeline (time.monotonic()), for timeline().
        self._opened = time.monotonic()
        self._first_part_at: float | None = None  # the first part's request began
        self._last_byte_at: float | None = None  # the producer's last byte arrived
        self._acked = 0  # bytes the store has taken
        self._acked_at_last_byte = 0
        self._parts_done_at: float | None = None  # the store had taken every part
        self._completed_at: float | None = None  # the object was complete under its key
        self._thread = threading.Thread(target=self._run, name="s3-stream", daemon=True)
        self._thread.start()

    @property
    def given_up(self) -> bool:
        return self._given_up.is_set()

    def timeline(self) -> dict:
        """Where a completed upload's time went, in seconds: ``first_part_s`` from the upload's
        opening to its first part's request; ``behind_bytes`` not yet taken by the store when
        the producer's last byte came; ``tail_s`` from that last byte until the object was
        complete under its key, of which ``complete_s`` after the store had taken every part
        (CompleteMultipartUpload and the check of the object's size); ``read_back_bytes``: what
        the store, slower than the producer past the wait budget, took from the file instead."""

        def since(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else round(b - a, 3)

        return {
            "first_part_s": since(self._opened, self._first_part_at),
            "behind_bytes": self.size - self._acked_at_last_byte if self._last_byte_at is not None else None,
            "tail_s": since(self._last_byte_at, self._completed_at),
            "complete_s": since(self._parts_done_at, self._completed_at),
            "read_back_bytes": 0 if self.detached_at is None else self.size - self.detached_at,
        }

    # ------------------------------------------------------------ producer
    def write(self, data) -> None:
        """Add the next bytes (never blocks longer than what is left of the wait budget).
        They are copied before this returns: ``data`` may be a buffer its owner refills."""
        if self._given_up.is_set():
            self._buffer, self._filled = None, 0
            return
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        self.size += len(view)
        part_size = self._part_size
        while view and not self._given_up.is_set() and self.detached_at is None:
            if self._buffer is None:
                self._buffer = self._free.popleft() if self._free else bytearray(part_size)
            n = min(len(view), part_size - self._filled)
            self._buffer[self._filled : self._filled + n] = view[:n]
            self._filled += n
            view = view[n:]
            if self._filled == part_size:
                part, self._buffer, self._filled = self._buffer, None, 0
                self._send(part, wait=True)

    def _take_final(self) -> bytes | None:
        """The last part (what is left of the stream, or the one empty part of an empty
        stream) as its own bytes, made once; None when there is none to send."""
        if self.detached_at is not None:
            return None
        if self._final is None and (self._filled or not self._numbered):
            self._final = bytes(memoryview(self._buffer)[: self._filled]) if self._buffer is not None else b""
            if self._buffer is not None:
                self._free.append(self._buffer)
            self._buffer, self._filled = None, 0
        return self._final

    def _send(self, part, *, wait: bool, cancel: threading.Event | None = None) -> None:
        self._numbered += 1
        item = (self._numbered, part)
        try:
            self._queue.put_nowait(item)
            self._queued += len(part)
            return
        except queue.Full:
            pass
        if not wait:  # finishing: the producer is done, the wait no longer slows anything
            while not self._given_up.is_set():
                if cancel is not None and cancel.is_set():
                    self.abort("the upload was cancelled")
                    return
                try:
                    self._queue.put(item, timeout=0.1)
                    self._queued += len(part)
                    return
                except queue.Full:
                    continue
            return
        left = self.wait_budget - self.waited
        t0 = time.monotonic()
        try:
            if left <= 0:
                raise queue.Full
            self._queue.put(item, timeout=left)
            self._queued += len(part)
        except queue.Full:
            last_ack = self._last_ack_at
            if last_ack is not None and time.monotonic() - last_ack < max(1.0, self.wait_budget):
                # Slower than the backup, but taking parts: the upload goes on with what it
                # has; the rest is read back from the complete file (finish(rest_from=...)).
                self._numbered -= 1
                self.detached_at = self._queued
                self._buffer, self._filled = None, 0
                if isinstance(part, bytearray):
                    self._free.append(part)
            else:
                self._give_up(
                    f"the store took more than {self.wait_budget:g} s in all (repository_s3_stream_wait) to take "
                    "the parts of the backup as fast as it was written; the streamed upload was given up so as "
                    "not to slow the backup"
                )
        finally:
            self.waited += time.monotonic() - t0

    def _ended(self) -> None:
        if self._last_byte_at is None:
            self._last_byte_at = time.monotonic()
            self._acked_at_last_byte = self._acked

    def end(self) -> None:
        """Every byte was written: hand the last part over now if the queue has room for it
        (never waits; ``finish`` sends whatever this could not)."""
        self._ended()
        if self._given_up.is_set() or self._last_sent or self.detached_at is not None:
            return
        final = self._take_final()
        if final is not None:
            try:
                self._queue.put_nowait((self._numbered + 1, final))
            except queue.Full:
                return
            self._numbered += 1
        self._last_sent = True
        try:
            self._queue.put_nowait(None)
            self._end_sent = True
        except queue.Full:
            pass

    def finish(self, cancel: threading.Event | None = None, *, rest_from: str | None = None) -> ObjectInfo:
        """Send what is left, wait until the object is complete under its key; its ObjectInfo.
        RepositoryError if the upload was given up; with ``cancel`` set meanwhile, it is aborted.
        ``rest_from``: the file that holds every byte written (the backup file, complete now),
        from which an upload that fell behind (``detached_at``) reads the bytes it did not keep;
        without it, such an upload is given up."""
        self._ended()
        if self.detached_at is not None and not self._given_up.is_set():
            if rest_from is None:
                self._give_up(
                    f"the store took more than {self.wait_budget:g} s in all (repository_s3_stream_wait) to take "
                    "the parts of the backup as fast as it was written, and the rest of it cannot be read back"
                )
            else:
                self._send_rest(rest_from, cancel)
        if not self._given_up.is_set():
            if not self._last_sent:
                final = self._take_final()
                if final is not None:
                    self._send(final, wait=False)
                self._last_sent = True
            if not self._end_sent:
                self._send_end()
        while self._thread.is_alive():
            if cancel is not None and cancel.is_set():
                self.abort("the upload was cancelled")
            self._thread.join(0.1)
        if self._info is None:
            raise RepositoryError(
                f"repository {self.repo._where()}: the streamed upload of {self.key} was given up: {self.error}"
            )
        return self._info

    def abort(self, reason: str = "the upload was abandoned") -> None:
        """Give the upload up (the parts sent are dropped by the store); returns at once."""
        self._give_up(reason)

    def join(self, timeout: float | None = None) -> bool:
        """Wait, at most ``timeout`` seconds, until the upload is over in the store (complete,
        or aborted after ``abort``); whether it is."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _send_rest(self, path: str, cancel: threading.Event | None) -> None:
        """The bytes from ``detached_at`` on, read back from the complete file at ``path``, as
        the next parts (the last one shorter), into the part buffers the store has taken."""
        part_size = self._part_size
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size != self.size:
                    raise OSError(f"it holds {os.fstat(f.fileno()).st_size} bytes, {self.size} were written")
                f.seek(self.detached_at)
                while not self._given_up.is_set():
                    if cancel is not None and cancel.is_set():
                        self.abort("the upload was cancelled")
                        return
                    buffer = self._free.popleft() if self._free else bytearray(part_size)
                    n = f.readinto(buffer)
                    if n == part_size:
                        self._send(buffer, wait=False, cancel=cancel)
                        continue
                    if n or not self._numbered:
                        self._send(bytes(memoryview(buffer)[:n]), wait=False, cancel=cancel)
                    self._last_sent = True
                    return
        except OSError as e:
            self._give_up(f"the rest of the upload cannot be read back from {path}: {e.strerror or e}")

    # ------------------------------------------------------------ background
    def _send_end(self) -> None:
        while not self._given_up.is_set():
            try:
                self._queue.put(None, timeout=0.1)
                return
            except queue.Full:
                continue

    def _give_up(self, reason: str) -> None:
        with self._lock:
            if self._given_up.is_set() or self._info is not None:
                return
            self.error = reason
            self._given_up.set()
        self._drain()
        try:
            self._queue.put_nowait(None)  # wakes the sender if it waits for a part
        except queue.Full:
            pass

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def _slot(self, slots: threading.Semaphore) -> bool:
        """Wait for a free sender (``concurrency`` parts in flight at most); False once given up."""
        while not self._given_up.is_set():
            if slots.acquire(timeout=0.1):
                return True
        return False

    def _run(self) -> None:
        repo, full = self.repo, self._full
        upload_id = None
        try:
            upload_id = repo._begin_upload(full)
            done: list[dict] = []
            slots = threading.Semaphore(repo.concurrency)

            def part_done(data, future: Future) -> None:
                error = future.exception()
                if error is not None:
                    slots.release()
                    self._give_up(str(repo._error("write", self.key, error)))
                    return
                done.append(future.result())
                with self._lock:
                    self._acked += len(data)
                    self._last_ack_at = time.monotonic()
                if isinstance(data, bytearray):  # a whole part's buffer: the producer fills it again
                    self._free.append(data)
                slots.release()

            with ThreadPoolExecutor(repo.concurrency, thread_name_prefix="s3-put") as pool:
                while True:
                    item = self._queue.get()
                    if item is None or not self._slot(slots):
                        break
                    number, data = item
                    if self._first_part_at is None:
                        self._first_part_at = time.monotonic()
                    future = pool.submit(repo._upload_part, full, upload_id, number, data)
                    future.add_done_callback(functools.partial(part_done, data))
                    del item, data
            self._parts_done_at = time.monotonic()
            if self._given_up.is_set():
                return
            repo._complete_upload(full, upload_id, done, self._if_absent)
            upload_id = None  # complete: nothing to abort
            info = repo.stat(self.key)
            if info is None or info.size != self.size:
                raise RepositoryError(
                    f"repository {repo._where()}: {self.key} was uploaded with {self.size} bytes but the store "
                    f"holds {'nothing' if info is None else f'{info.size} bytes'} under it"
                )
            self._completed_at = time.monotonic()
            with self._lock:
                if not self._given_up.is_set():
                    self._info = info
        except Exception as e:
            if repo._code(e) in ("PreconditionFailed", "412"):
                self._give_up(f"{self.key} already exists in the repository; it is never overwritten")
            else:
                self._give_up(str(repo._error("write", self.key, e)))
        finally:
            self._drain()
            if upload_id is not None:
                repo._abort_upload(full, upload_id)
