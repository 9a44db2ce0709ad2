"""Where bodies land: S3 (single PUT or multipart) or a local folder.

Both writers keep one promise (CONTRACT §7): an object exists under its key only
when it holds exactly the bytes received. Multipart uploads are completed only by
the caller after every byte arrived and are aborted on any error or
cancellation; local files are written to a temporary name and renamed.

S3 single PUTs take a lean path by default: signed by ``sigv4`` (Content-MD5
signed, payload hash ``UNSIGNED-PAYLOAD``) with the aioboto3 session's
(refreshing) credentials and sent on an aiohttp
session of our own, because ``put_object`` spends about ten times the CPU of the
request itself on endpoint rules and signing (docs/PERFORMANCE.md has the
figures). Multipart uploads and HEADs stay on aioboto3.

Every S3 call, on either path, goes through ``s3retry.current().call``: the
patient retries of CONTRACT §14 (botocore's own are off, so attempts are counted
exactly); errors are translated to ``S3WriteError`` here, saying whether they
may be retried and whether S3 was throttling.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar
from urllib.parse import quote

import aiohttp
from yarl import URL

from ingest_core.errors import S3WriteError
from ingest_core.redact import clip
from ingest_core.s3errors import (
    _error_code,
    _error_status,
    _lean_error,
    _s3_error,
    _WrongRegion,
)
from ingest_core.s3retry import current as s3_retry
from ingest_core.sigv4 import host_header, sign_put

log = logging.getLogger(__name__)

T = TypeVar("T")
SMALL_BODY = 256 * 1024
FILE_PART_SIZE = 8 * 1024 * 1024
FILE_READ_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What is stored beside the bytes; never a header value of the API request."""

    content_type: str = "application/json"
    content_encoding: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


class MultipartUpload(Protocol):
    """An object being written in parts."""

    async def upload_part(self, data: bytes | memoryview) -> None:
        """Store the next part (every part but the last is at least 5 MiB).

        ``data`` may be a view of a buffer the caller reuses: read it during
        the call, keep no reference after it.
        """

    async def complete(self) -> None:
        """Make the object visible with every part in order."""

    async def abort(self) -> None:
        """Discard every part; safe to call more than once."""


class ObjectWriter(Protocol):
    """The engine's storage seam (STYLE §5)."""

    def describe(self, key: str) -> str:
        """A URI a person can use to find ``key`` (``s3://…`` or a path)."""

    async def exists(self, key: str) -> bool:
        """True when an object is already stored under ``key``."""

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        """Store a whole object in one request.

        ``data`` may be a view of the caller's buffer: read it during the call,
        keep no reference after it.
        """

    async def start_multipart(self, key: str, meta: ObjectMeta) -> MultipartUpload:
        """Begin an object too large for one request."""

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Store a local file (the manifest)."""


async def with_s3_retries(operation: str, send: Callable[[], Awaitable[T]]) -> T:
    """An SDK call made outside the writer, with the writer's patient retries.

    The writer's client has botocore's own retries off (``runtime.s3_config``), so
    a caller sharing it (the incremental state store) retries here: throttling,
    5xx and dropped connections as the writer does. What is not retried, or still
    fails after the last attempt, is raised as botocore's own exception, so the
    caller's handling of ``NoSuchKey`` or ``PreconditionFailed`` stays as it was.
    """

    async def once() -> T:
        try:
            return await send()
        except Exception as exc:
            error = _s3_error(operation, exc)
            if error.retryable:
                raise error from exc
            raise

    try:
        return await s3_retry().call(once)
    except S3WriteError as exc:
        if isinstance(exc.__cause__, Exception):
            raise exc.__cause__ from None
        raise


async def put_file_in_parts(
    writer: ObjectWriter, key: str, path: Path, meta: ObjectMeta, part_size: int = FILE_PART_SIZE
) -> None:
    """Store a local file with at most one part of it in memory at a time."""
    with path.open("rb") as source:
        first = await asyncio.to_thread(source.read, part_size)
        if len(first) < part_size:
            await writer.put(key, first, meta)
            return
        upload = await writer.start_multipart(key, meta)
        try:
            part = first
            while part:
                await upload.upload_part(part)
                part = await asyncio.to_thread(source.read, part_size)
            await upload.complete()
        except BaseException:
            await abort_upload(upload, key)
            raise


async def abort_upload(upload: MultipartUpload, key: str) -> None:
    """Abort ``upload`` in a task of its own; never raises, failures are logged.

    When the calling task is being cancelled (a stop, the deadline, an attempt's
    timeout) it does not wait for S3's answer: the abort goes on by itself (the
    engine's ``UploadTracker`` waits for it, within the deadline, before the run
    returns), so a slow AbortMultipartUpload cannot hold a worker past its time.
    """
    abort = asyncio.ensure_future(upload.abort())
    abort.add_done_callback(lambda task: _log_abort_failure(task, upload, key))
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        return
    try:
        await asyncio.shield(abort)
    except Exception:
        pass  # logged by the callback, with the key and the upload id


def _log_abort_failure(task: asyncio.Future[None], upload: MultipartUpload, key: str) -> None:
    if task.cancelled() or task.exception() is None:
        return
    log.warning(
        "abort of multipart upload failed (the bucket's lifecycle rule reaps it)",
        extra={"key": key, "upload_id": getattr(upload, "upload_id", None)},
        exc_info=task.exception(),
    )


# ---------------------------------------------------------------------------- S3


class S3Writer:
    """Writes to one bucket through an aioboto3 client (and a lean PUT path)."""

    def __init__(
        self,
        *,
        client: Any,
        bucket: str,
        credentials: Any = None,
        http: aiohttp.ClientSession | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        """Args:
        client: an open aioboto3 S3 client (its config carries the retry mode).
        bucket: the bucket every key goes to.
        credentials: the aioboto3 session's credentials; with ``http``, enables
            the lean PUT path.
        http: an aiohttp session for lean PUTs (not the API's: the S3 endpoint
            is trusted and must not pass through the SSRF guard).
        endpoint_url: the operator's S3-compatible endpoint, if any (path-style).
        """
        self._client = client
        self.bucket = bucket
        self._credentials = credentials
        self._http = http
        self.lean = credentials is not None and http is not None
        self._region = client.meta.region_name or "us-east-1"
        self._base = _object_base_url(endpoint_url, bucket, self._region)
        self._host = host_header(self._base)

    @property
    def client(self) -> Any:
        """The aioboto3 S3 client this writer uses (bucket set-up, reading objects back)."""
        return self._client

    def describe(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    async def exists(self, key: str) -> bool:
        return await s3_retry().call(lambda: self._head(key))

    async def _head(self, key: str) -> bool:
        try:
            await self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _error_status(exc) == 404:
                return False
            raise _s3_error("HeadObject", exc) from exc
        return True

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        if self.lean:
            try:
                await self._lean_put(key, _Payload.of_bytes(data), meta)
                return
            except _WrongRegion:
                self.lean = False  # let botocore's redirector find the bucket's region
        await self._sdk_put(key, data, meta)

    async def start_multipart(self, key: str, meta: ObjectMeta) -> MultipartUpload:
        answer = await s3_retry().call(lambda: self._create_multipart(key, meta))
        return S3MultipartUpload(self._client, self.bucket, key, answer["UploadId"])

    async def _create_multipart(self, key: str, meta: ObjectMeta) -> Any:
        try:
            return await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ChecksumAlgorithm="CRC32", **_sdk_meta(meta)
            )
        except Exception as exc:
            raise _s3_error("CreateMultipartUpload", exc) from exc

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        """Upload a local file (the manifest), streamed, never whole in memory.

        On the lean path it is one PUT streamed from disk (hashed first, in a
        thread): a run that wrote only single PUTs never wakes botocore's lazily
        loaded S3 model just for its manifest (that cost ~20 MiB at the end of a
        100,000-item run). Otherwise it goes in parts through the SDK.
        """
        meta = ObjectMeta(content_type=content_type)
        if self.lean:
            try:
                await self._lean_put(key, await _Payload.of_file(path), meta)
                return
            except _WrongRegion:
                self.lean = False
        await put_file_in_parts(self, key, path, meta)

    async def _sdk_put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        await s3_retry().call(lambda: self._sdk_put_once(key, data, meta))

    async def _sdk_put_once(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        try:
            await self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=_body(data),
                ChecksumAlgorithm="CRC32",
                **_sdk_meta(meta),
            )
        except Exception as exc:
            raise _s3_error("PutObject", exc) from exc

    async def _lean_put(self, key: str, payload: _Payload, meta: ObjectMeta) -> None:
        await s3_retry().call(lambda: self._lean_put_once(key, payload, meta))

    async def _lean_put_once(self, key: str, payload: _Payload, meta: ObjectMeta) -> None:
        assert self._http is not None
        url = URL(self._base + quote(key, safe="/~"), encoded=True)
        headers = await self._signed_headers(url, payload, meta)
        try:
            with payload.open() as body:
                async with self._http.put(url, data=body, headers=headers) as resp:
                    if resp.status == 200:
                        return
                    raise _lean_error(resp.status, await resp.read())
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise S3WriteError(
                clip(f"PutObject: {type(exc).__name__}: {exc}", 500), retryable=True
            ) from exc

    async def _signed_headers(
        self, url: URL, payload: _Payload, meta: ObjectMeta
    ) -> dict[str, str]:
        # Frozen per request: refreshing credentials (a role's) renew themselves here.
        frozen = await self._credentials.get_frozen_credentials()
        headers = _lean_meta_headers(meta)
        headers["Content-MD5"] = payload.md5_b64
        headers["Content-Length"] = str(payload.size)
        return sign_put(
            host=self._host,
            path=url.raw_path,
            region=self._region,
            credentials=frozen,
            headers=headers,
        )


@dataclass(frozen=True, slots=True)
class _Payload:
    """A lean PUT's body (bytes, or a file streamed from disk) and its MD5.

    Only the MD5: it goes as ``Content-MD5``, a signed header, so S3 verifies the
    bytes; the payload itself is not hashed for the signature (``sigv4``).
    """

    md5_b64: str
    size: int
    data: bytes | memoryview | None = None
    path: Path | None = None

    @classmethod
    def of_bytes(cls, data: bytes | memoryview) -> _Payload:
        return cls(base64.b64encode(hashlib.md5(data).digest()).decode(), len(data), data=data)

    @classmethod
    async def of_file(cls, path: Path) -> _Payload:
        return await asyncio.to_thread(cls._hash_file, path)

    @classmethod
    def _hash_file(cls, path: Path) -> _Payload:
        md5, size = hashlib.md5(), 0
        with path.open("rb") as source:
            while chunk := source.read(FILE_READ_CHUNK):
                md5.update(chunk)
                size += len(chunk)
        return cls(base64.b64encode(md5.digest()).decode(), size, path=path)

    @contextmanager
    def open(self) -> Iterator[bytes | memoryview | PartStream | IO[bytes]]:
        """The body to hand to aiohttp, afresh per attempt: bytes, a stream, or the file.

        A large body goes as a ``PartStream``: handed over whole, Python 3.11's
        socket transport copies whatever the socket does not take at once, a
        second copy of the body outside the memory budget.
        """
        if self.path is None:
            data = self.data if self.data is not None else b""
            yield PartStream(data) if len(data) > SMALL_BODY else data
            return
        with self.path.open("rb") as source:
            yield source


class S3MultipartUpload:
    """One multipart upload; parts are sent in order as they fill."""

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str) -> None:
        self._client, self._bucket, self._key, self._upload_id = client, bucket, key, upload_id
        self._parts: list[dict[str, Any]] = []
        self._done = False

    @property
    def key(self) -> str:
        return self._key

    @property
    def upload_id(self) -> str:
        """S3's id of the upload: with the key, what names it in logs and results."""
        return self._upload_id

    async def upload_part(self, data: bytes | memoryview) -> None:
        # A retry resends the same bytes: ``data`` stays valid until this returns.
        await s3_retry().call(lambda: self._upload_part_once(data))

    async def _upload_part_once(self, data: bytes | memoryview) -> None:
        number = len(self._parts) + 1
        try:
            answer = await self._client.upload_part(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=PartStream(data),
                ChecksumAlgorithm="CRC32",
            )
        except Exception as exc:
            raise _s3_error("UploadPart", exc) from exc
        part = {"PartNumber": number, "ETag": answer["ETag"]}
        if answer.get("ChecksumCRC32"):
            part["ChecksumCRC32"] = answer["ChecksumCRC32"]
        self._parts.append(part)

    async def complete(self) -> None:
        await s3_retry().call(self._complete_once)
        self._done = True

    async def _complete_once(self) -> None:
        try:
            await self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        except Exception as exc:
            raise _s3_error("CompleteMultipartUpload", exc) from exc

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        await s3_retry().call(self._abort_once)

    async def _abort_once(self) -> None:
        try:
            await self._client.abort_multipart_upload(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
            )
        except Exception as exc:
            if _error_code(exc) == "NoSuchUpload":
                return  # already gone: a Complete cut short may have landed after all
            # The bucket's lifecycle rule reaps what an abort could not.
            raise _s3_error("AbortMultipartUpload", exc) from exc


def _object_base_url(endpoint_url: str | None, bucket: str, region: str) -> str:
    """Path-style under a configured endpoint; virtual-hosted on AWS when the name allows."""
    if endpoint_url:
        return f"{endpoint_url.rstrip('/')}/{bucket}/"
    if "." in bucket:
        return f"https://s3.{region}.amazonaws.com/{bucket}/"
    return f"https://{bucket}.s3.{region}.amazonaws.com/"


class PartStream:
    """A read-only, seekable view of one part that nothing copies whole.

    botocore turns a ``bytes`` Body into an ``io.BytesIO``, and aiohttp's
    ``BytesIOPayload`` then unshares (copies) that buffer, so every part in
    flight existed twice; any other ``io.IOBase`` is read in 64 KiB chunks on
    executor threads, whose malloc arenas held RSS well above the budget
    (16 x 64 MiB bodies peaked at 436 MiB against a 128 MiB budget). This is
    deliberately not an ``io.IOBase``: botocore only needs ``read``/``seek``/
    ``tell`` (checksums, retries) and aiohttp streams it as an async iterable
    of memoryview slices, on the event loop, without copies.
    """

    CHUNK = 256 * 1024

    def __init__(self, data: bytes | memoryview) -> None:
        self._view = memoryview(data)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: len(self._view)}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = len(self._view) if size is None or size < 0 else self._pos + size
        chunk = bytes(self._view[self._pos : end])
        self._pos += len(chunk)
        return chunk

    def __len__(self) -> int:
        return len(self._view)

    async def __aiter__(self) -> AsyncIterator[memoryview]:
        while self._pos < len(self._view):
            chunk = self._view[self._pos : self._pos + self.CHUNK]
            self._pos += len(chunk)
            yield chunk


def _body(data: bytes | memoryview) -> bytes | PartStream:
    """Large bodies as a ``PartStream`` (see there); small ones as bytes."""
    return PartStream(data) if len(data) > SMALL_BODY else bytes(data)


def _sdk_meta(meta: ObjectMeta) -> dict[str, Any]:
    extra: dict[str, Any] = {"ContentType": meta.content_type, "Metadata": dict(meta.metadata)}
    if meta.content_encoding:
        extra["ContentEncoding"] = meta.content_encoding
    return extra


def _lean_meta_headers(meta: ObjectMeta) -> dict[str, str]:
    headers = {"Content-Type": meta.content_type}
    if meta.content_encoding:
        headers["Content-Encoding"] = meta.content_encoding
    for name, value in meta.metadata.items():
        headers[f"x-amz-meta-{name}"] = value
    return headers


# The local folder writer lives in localdir.py; imported last, as it builds on the
# protocols above, and re-exported so ``writers`` stays the one place writers come from.
from ingest_core.localdir import LocalDirWriter, LocalUpload  # noqa: E402

__all__ = [
    "LocalDirWriter",
    "LocalUpload",
    "MultipartUpload",
    "ObjectMeta",
    "ObjectWriter",
    "PartStream",
    "S3MultipartUpload",
    "S3Writer",
    "abort_upload",
    "put_file_in_parts",
    "with_s3_retries",
]
