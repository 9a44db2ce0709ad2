"""Local servers for the benchmarks, each run as its own process.

Three servers, all bound to 127.0.0.1:

* ``api``: a fake HTTP API. Any GET answers with a JSON array of exactly
  ``--body-bytes`` bytes whose content is deterministic per query string and
  seed, after an optional latency, or with a 503 at ``--error-rate``. Large
  bodies are streamed in chunks, never held in memory whole.
* ``sink``: a minimal S3-compatible server that accepts PutObject and the
  multipart calls, discards the bytes (counting them and computing real MD5
  ETags) and remembers only key -> (size, ETag). For throughput and memory
  scenarios, where moto would be the bottleneck or hold every body in RAM.
* ``moto``: moto's own server (``python -m moto.server``), the default S3.

``start_servers`` launches an API and an S3 (``moto``, ``sink`` or an external
URL) as subprocesses on free ports, waits until they listen, creates the bucket
and tears everything down on exit. Servers run in other processes on purpose:
their CPU time is never counted as client CPU time.

Command line::

    python -m benchmarks.servers api --port 8080 --latency-ms 100 --body-bytes 9000
    python -m benchmarks.servers sink --port 9000
    python -m benchmarks.servers up --s3 sink --latency-ms 100   # both, until Ctrl-C
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from aiohttp import web

HOST = "127.0.0.1"
DEFAULT_BODY_BYTES = 9_000
RECORD_BYTES = 180  # one record of the fake API's JSON array, separator excluded
STREAM_CHUNK_BYTES = 1 << 20  # large bodies are written in chunks of this size
STREAM_THRESHOLD_BYTES = 4 << 20  # bodies above this are always streamed
SINK_READ_BYTES = 1 << 20
S3_MIN_PART_BYTES = 5 << 20  # S3 rejects smaller parts except the last one
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0
BENCH_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"


# --------------------------------------------------------------------------- API


@dataclasses.dataclass(frozen=True, slots=True)
class ApiOptions:
    """Configuration of the fake API server."""

    latency_ms: float = 0.0
    body_bytes: int = DEFAULT_BODY_BYTES
    error_rate: float = 0.0
    chunked: bool = False
    seed: int = 0
    # A server-side token bucket (one second's worth of tokens); beyond it, 429 with
    # Retry-After at once. 0 = no limit. The throttling scenario's rate-limited API.
    rate_limit_per_s: float = 0.0
    retry_after_s: int = 1
    # Issue 19's healthy API that refuses single requests: by the item's ``i`` param,
    # per 50 items one 429 + Retry-After: 1 on its first request, two 503 +
    # Retry-After: 0 once, one 404 and two 500 for good (``sparse_fate``).
    sparse_refusals: bool = False

    def argv(self) -> list[str]:
        """Command-line flags that reproduce these options."""
        return [
            "--latency-ms",
            str(self.latency_ms),
            "--body-bytes",
            str(self.body_bytes),
            "--error-rate",
            str(self.error_rate),
            "--chunked" if self.chunked else "--no-chunked",
            "--seed",
            str(self.seed),
            "--rate-limit",
            str(self.rate_limit_per_s),
            "--retry-after",
            str(self.retry_after_s),
            "--sparse-refusals" if self.sparse_refusals else "--no-sparse-refusals",
        ]


@dataclasses.dataclass(frozen=True, slots=True)
class BodyLayout:
    """A JSON array of ``count`` equal records; the last one padded to the exact size."""

    size: int
    count: int
    record: bytes  # a full record, without separator
    last: bytes  # the last record, padded so the array has exactly ``size`` bytes

    def chunks(self, chunk_bytes: int = STREAM_CHUNK_BYTES) -> Iterator[bytes]:
        """Yield the body in pieces of about ``chunk_bytes``; never the whole body at once."""
        item = self.record + b","
        per_block = max(1, chunk_bytes // len(item))
        block = item * per_block
        full_blocks, rest = divmod(self.count - 1, per_block)
        yield b"["
        for _ in range(full_blocks):
            yield block
        yield item * rest + self.last + b"]"


def body_layout(size: int, tag: str, record_bytes: int = RECORD_BYTES) -> BodyLayout:
    """Lay out a JSON array body of exactly ``size`` bytes tagged with ``tag``."""
    empty = b'{"tag":"%s","pad":""}' % tag.encode()
    if size < len(empty) + 2:
        raise ValueError(f"body of {size} bytes is too small for one record")
    record_bytes = max(record_bytes, len(empty))
    count = max(1, (size - 1) // (record_bytes + 1))
    if count == 1:
        record_bytes = size - 2
    extra = size - 1 - count * (record_bytes + 1)

    def padded(length: int) -> bytes:
        return b'{"tag":"%s","pad":"%s"}' % (tag.encode(), b"x" * (length - len(empty)))

    return BodyLayout(size, count, padded(record_bytes), padded(record_bytes + extra))


def _tag(seed: int, path: str, query: str) -> str:
    return hashlib.blake2b(f"{seed}|{path}?{query}".encode(), digest_size=8).hexdigest()


class _ServerBucket:
    """The API's own rate limit: ``rate`` tokens a second, one second's worth at most."""

    def __init__(self, rate: float) -> None:
        self.rate, self.tokens, self.updated = rate, rate, time.monotonic()

    def take(self) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


SPARSE_PERIOD = 50
# index % SPARSE_PERIOD -> (status, Retry-After, first request only)
SPARSE_FATES: dict[int, tuple[int, str | None, bool]] = {
    0: (429, "1", True),
    1: (503, "0", True),
    2: (503, "0", True),
    3: (404, None, False),
    4: (500, None, False),
    5: (500, None, False),
}


def sparse_fate(index: int) -> tuple[int, str | None, bool] | None:
    """Item ``index``'s refusal under ``sparse_refusals``: (status, Retry-After, first
    request only), or None for an item answered 200 every time."""
    return SPARSE_FATES.get(index % SPARSE_PERIOD)


def _sparse_refusal(request: web.Request, seen: set[int]) -> web.Response | None:
    index = int(request.query.get("i", "-1"))
    fate = sparse_fate(index)
    if fate is None:
        return None
    status, retry_after, once = fate
    if once and index in seen:
        return None
    seen.add(index)
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return web.json_response({"error": "refused"}, status=status, headers=headers)


def make_api_app(options: ApiOptions) -> web.Application:
    """The fake API as an aiohttp application (also usable in-process)."""
    rng = random.Random(options.seed)
    stats = {"requests": 0, "errors": 0, "bytes": 0, "throttled": 0, "refused": 0}
    bucket = _ServerBucket(options.rate_limit_per_s)
    refused: set[int] = set()

    async def handle(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        refusal = _sparse_refusal(request, refused) if options.sparse_refusals else None
        if refusal is not None:
            stats["refused"] += 1
            stats["throttled"] += refusal.status in (429, 503)
            return refusal
        if not bucket.take():
            stats["throttled"] += 1
            return web.json_response(
                {"error": "rate limited"},
                status=429,
                headers={"Retry-After": str(options.retry_after_s)},
            )
        if options.latency_ms > 0:
            await asyncio.sleep(options.latency_ms / 1000)
        if options.error_rate > 0 and rng.random() < options.error_rate:
            stats["errors"] += 1
            return web.json_response({"error": "unavailable"}, status=503)
        layout = body_layout(
            options.body_bytes, _tag(options.seed, request.path, request.query_string)
        )
        stats["bytes"] += layout.size
        return await _send_body(
            request, layout, chunked=options.chunked, extra=_total_count(request, layout)
        )

    async def stats_handler(_: web.Request) -> web.Response:
        return web.json_response(stats)

    async def reset_handler(_: web.Request) -> web.Response:
        refused.clear()  # the next run's items meet their first-request refusals again
        return web.json_response(stats)

    app = web.Application()
    app.router.add_get("/_stats", stats_handler)
    app.router.add_post("/_reset", reset_handler)
    app.router.add_get("/{tail:.*}", handle)
    return app


def _total_count(request: web.Request, layout: BodyLayout) -> dict[str, str]:
    """``?pages=N`` makes a paginated API: ``X-Total-Count`` announces N pages of records."""
    pages = request.query.get("pages", "")
    return {"X-Total-Count": str(int(pages) * layout.count)} if pages.isdigit() else {}


async def _send_body(
    request: web.Request,
    layout: BodyLayout,
    *,
    chunked: bool,
    extra: dict[str, str] | None = None,
) -> web.StreamResponse:
    headers = {
        "Content-Type": "application/json",
        "X-Record-Count": str(layout.count),
        **(extra or {}),
    }
    if not chunked and layout.size <= STREAM_THRESHOLD_BYTES:
        return web.Response(body=b"".join(layout.chunks()), headers=headers)
    response = web.StreamResponse(headers=headers)
    if chunked:
        response.enable_chunked_encoding()
    else:
        response.content_length = layout.size
    await response.prepare(request)
    for chunk in layout.chunks():
        await response.write(chunk)
    await response.write_eof()
    return response


# -------------------------------------------------------------------------- sink


@dataclasses.dataclass(slots=True)
class _Upload:
    bucket: str
    key: str
    parts: dict[int, tuple[int, bytes]] = dataclasses.field(default_factory=dict)  # n -> size, md5


@dataclasses.dataclass(slots=True)
class SinkState:
    """What the sink remembers: object sizes and ETags, never their bytes."""

    objects: dict[tuple[str, str], tuple[int, str]] = dataclasses.field(default_factory=dict)
    uploads: dict[str, _Upload] = dataclasses.field(default_factory=dict)
    counters: dict[str, int] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(
            (
                "put_object",
                "upload_part",
                "complete",
                "abort",
                "create_mpu",
                "head",
                "bytes_received",
                "errors",
                "slowdown",
            ),
            0,
        )
    )

    def summary(self, bucket: str | None, prefix: str) -> dict[str, Any]:
        """Counters plus the object count and bytes under a prefix (all buckets if None)."""
        count = size = 0
        for (b, key), (length, _) in self.objects.items():
            if (bucket is None or b == bucket) and key.startswith(prefix):
                count += 1
                size += length
        return {
            **self.counters,
            "objects": count,
            "object_bytes": size,
            "open_uploads": len(self.uploads),
        }


def _xml(root: str, **fields: str) -> web.Response:
    body = "".join(f"<{k}>{_escape(v)}</{k}>" for k, v in fields.items())
    text = f'<?xml version="1.0" encoding="UTF-8"?>\n<{root} xmlns="{S3_XMLNS}">{body}</{root}>'
    return web.Response(text=text, content_type="application/xml", headers=_amz_headers())


def _escape(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _amz_headers() -> dict[str, str]:
    return {"x-amz-request-id": uuid.uuid4().hex[:16].upper(), "x-amz-id-2": "sink"}


def _s3_error(status: int, code: str, message: str, state: SinkState) -> web.Response:
    state.counters["errors"] += 1
    text = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>{_escape(message)}</Message><RequestId>sink</RequestId></Error>"
    )
    return web.Response(
        status=status, text=text, content_type="application/xml", headers=_amz_headers()
    )


def _is_aws_chunked(request: web.Request) -> bool:
    encoding = request.headers.get("Content-Encoding", "")
    sha = request.headers.get("x-amz-content-sha256", "")
    return "aws-chunked" in encoding or sha.startswith("STREAMING-")


async def _drain_body(request: web.Request) -> tuple[int, bytes]:
    """Read and discard a request body; return its decoded size and MD5 digest."""
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    if _is_aws_chunked(request):
        async for data in _aws_chunks(request.content):
            md5.update(data)
            size += len(data)
    else:
        async for data in request.content.iter_chunked(SINK_READ_BYTES):
            md5.update(data)
            size += len(data)
    return size, md5.digest()


async def _aws_chunks(stream: Any) -> AsyncIterator[bytes]:
    """Decode the ``aws-chunked`` framing botocore uses for trailing checksums."""
    while True:
        header = await stream.readline()
        if not header:
            raise ValueError("aws-chunked body ended before the final chunk")
        remaining = int(header.split(b";", 1)[0].strip() or b"0", 16)
        if remaining == 0:
            while (await stream.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers: the checksum, which the sink does not verify
            return
        while remaining:
            data = await stream.read(min(remaining, SINK_READ_BYTES))
            if not data:
                raise ValueError("aws-chunked chunk truncated")
            remaining -= len(data)
            yield data
        await stream.readexactly(2)


MAX_SLOWDOWN_STREAK = 6  # so no item meets s3_max_attempts (10) by bad luck


def slowdown_streak(key: str, share: float, seed: int = 0) -> int:
    """How many first PutObjects of ``key`` are answered SlowDown: at least k with
    probability ``share ** k`` (a fair coin per attempt for 0.5), drawn from the item's
    index at the end of the key, so that every run of a scenario meets the same
    refusals; about ``share`` of all writes in all."""
    item = key.rsplit("-", 1)[-1]  # "-17.json": the same item meets the same in every run
    digest = hashlib.blake2b(f"{seed}|{item}".encode(), digest_size=8).digest()
    draw = (int.from_bytes(digest, "big") + 0.5) / 2**64
    streak = 0
    while streak < MAX_SLOWDOWN_STREAK and draw < share ** (streak + 1):
        streak += 1
    return streak


def make_sink_app(slowdown_share: float = 0.0, seed: int = 0) -> web.Application:
    """The S3 sink as an aiohttp application (also usable in-process).

    ``slowdown_share``: about that share of PutObject calls is answered 503 SlowDown,
    each key's first ``slowdown_streak`` of them (issue 19: S3 throttling half the
    writes).
    """
    state = SinkState()
    puts: collections.Counter[str] = collections.Counter()

    def slowed(key: str) -> bool:
        earlier, puts[key] = puts[key], puts[key] + 1
        return earlier < slowdown_streak(key, slowdown_share, seed)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        bucket, _, key = request.path.lstrip("/").partition("/")
        if bucket == "_stats":
            query = request.query
            return web.json_response(state.summary(query.get("bucket"), query.get("prefix", "")))
        try:
            if not key:
                return await _bucket_call(request, state, bucket)
            if slowdown_share and _put_object_call(request) and slowed(key):
                await _drain_body(request)
                state.counters["slowdown"] += 1
                return _s3_error(503, "SlowDown", "Please reduce your request rate.", state)
            return await _object_call(request, state, bucket, key)
        except (ValueError, ElementTree.ParseError) as exc:
            return _s3_error(400, "InvalidRequest", str(exc), state)

    # S3 stores a Content-Encoding: gzip body as sent; aiohttp's server would inflate it
    # and the Content-MD5 of the gzip bytes would then never match.
    app = web.Application(client_max_size=64 << 20, handler_args={"auto_decompress": False})
    app["state"] = state
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


def _put_object_call(request: web.Request) -> bool:
    return request.method == "PUT" and "uploadId" not in request.query


async def _bucket_call(request: web.Request, state: SinkState, bucket: str) -> web.Response:
    if request.method in ("PUT", "HEAD"):
        await request.read()
        return web.Response(status=200, headers={**_amz_headers(), "Location": f"/{bucket}"})
    if request.method == "GET":
        return _xml(
            "ListBucketResult",
            Name=bucket,
            Prefix=request.query.get("prefix", ""),
            KeyCount="0",
            MaxKeys="1000",
            IsTruncated="false",
        )
    if request.method == "POST" and "delete" in request.query:
        root = ElementTree.fromstring(await request.read())
        for element in root.iter():
            if element.tag.endswith("Key") and element.text:
                state.objects.pop((bucket, element.text), None)
        return _xml("DeleteResult")
    return _s3_error(501, "NotImplemented", f"{request.method} on a bucket", state)


async def _object_call(
    request: web.Request, state: SinkState, bucket: str, key: str
) -> web.StreamResponse:
    method, query = request.method, request.query
    if method == "PUT" and "uploadId" in query:
        return await _upload_part(request, state)
    if method == "PUT":
        return await _put_object(request, state, bucket, key)
    if method == "POST" and "uploads" in query:
        return _create_upload(state, bucket, key)
    if method == "POST" and "uploadId" in query:
        return await _complete_upload(request, state, bucket, key)
    if method == "DELETE" and "uploadId" in query:
        state.counters["abort"] += 1
        state.uploads.pop(query["uploadId"], None)
        return web.Response(status=204, headers=_amz_headers())
    if method == "DELETE":
        state.objects.pop((bucket, key), None)
        return web.Response(status=204, headers=_amz_headers())
    if method in ("HEAD", "GET"):
        return _head_object(request, state, bucket, key)
    return _s3_error(501, "NotImplemented", f"{method} on an object", state)


async def _put_object(
    request: web.Request, state: SinkState, bucket: str, key: str
) -> web.Response:
    size, digest = await _drain_body(request)
    state.counters["put_object"] += 1
    state.counters["bytes_received"] += size
    expected = request.headers.get("Content-MD5")
    if expected and base64.b64decode(expected) != digest:
        return _s3_error(400, "BadDigest", "Content-MD5 does not match the body", state)
    etag = f'"{digest.hex()}"'
    state.objects[(bucket, key)] = (size, etag)
    return web.Response(
        status=200, headers={**_amz_headers(), "ETag": etag, **_echo_checksums(request)}
    )


def _echo_checksums(request: web.Request) -> dict[str, str]:
    # S3 echoes the checksum the client sent; the sink does not verify it.
    return {k: v for k, v in request.headers.items() if k.lower().startswith("x-amz-checksum-")}


def _create_upload(state: SinkState, bucket: str, key: str) -> web.Response:
    state.counters["create_mpu"] += 1
    upload_id = uuid.uuid4().hex
    state.uploads[upload_id] = _Upload(bucket, key)
    return _xml("InitiateMultipartUploadResult", Bucket=bucket, Key=key, UploadId=upload_id)


async def _upload_part(request: web.Request, state: SinkState) -> web.Response:
    upload = state.uploads.get(request.query["uploadId"])
    number = int(request.query.get("partNumber", "0"))
    if upload is None:
        await _drain_body(request)
        return _s3_error(404, "NoSuchUpload", "unknown upload id", state)
    if not 1 <= number <= 10_000:
        return _s3_error(400, "InvalidArgument", f"part number {number}", state)
    size, digest = await _drain_body(request)
    state.counters["upload_part"] += 1
    state.counters["bytes_received"] += size
    upload.parts[number] = (size, digest)
    return web.Response(
        status=200,
        headers={**_amz_headers(), "ETag": f'"{digest.hex()}"', **_echo_checksums(request)},
    )


async def _complete_upload(
    request: web.Request, state: SinkState, bucket: str, key: str
) -> web.Response:
    upload = state.uploads.get(request.query["uploadId"])
    if upload is None:
        return _s3_error(404, "NoSuchUpload", "unknown upload id", state)
    root = ElementTree.fromstring(await request.read())
    listed = [
        (int(_child(part, "PartNumber")), _child(part, "ETag").strip('"'))
        for part in root
        if part.tag.endswith("Part")
    ]
    problem = _check_parts(upload, listed)
    if problem:
        return _s3_error(400, *problem, state)
    digests = [upload.parts[n][1] for n, _ in listed]
    etag = f'"{hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"'
    state.objects[(bucket, key)] = (sum(upload.parts[n][0] for n, _ in listed), etag)
    state.uploads.pop(request.query["uploadId"])
    state.counters["complete"] += 1
    return _xml(
        "CompleteMultipartUploadResult",
        Location=f"/{bucket}/{key}",
        Bucket=bucket,
        Key=key,
        ETag=etag,
    )


def _child(element: ElementTree.Element, name: str) -> str:
    for child in element:
        if child.tag.endswith(name):
            return child.text or ""
    raise ValueError(f"missing {name} in CompleteMultipartUpload")


def _check_parts(upload: _Upload, listed: list[tuple[int, str]]) -> tuple[str, str] | None:
    numbers = [n for n, _ in listed]
    if not listed or numbers != sorted(set(numbers)):
        return "InvalidPartOrder", "parts must be listed in ascending order, once each"
    for position, (number, etag) in enumerate(listed):
        if number not in upload.parts or upload.parts[number][1].hex() != etag:
            return "InvalidPart", f"part {number} was not uploaded with that ETag"
        if position < len(listed) - 1 and upload.parts[number][0] < S3_MIN_PART_BYTES:
            return "EntityTooSmall", f"part {number} is smaller than 5 MiB"
    return None


def _head_object(request: web.Request, state: SinkState, bucket: str, key: str) -> web.Response:
    state.counters["head"] += 1
    known = state.objects.get((bucket, key))
    if known is None:
        if request.method == "HEAD":
            return web.Response(status=404, headers=_amz_headers())
        return _s3_error(404, "NoSuchKey", "The specified key does not exist.", state)
    if request.method == "GET":
        return _s3_error(501, "NotImplemented", "the sink discards object bodies", state)
    size, etag = known
    # A HEAD answer carries the object's length with no body; aiohttp keeps an explicit header.
    return web.Response(
        status=200,
        headers={
            **_amz_headers(),
            "ETag": etag,
            "Content-Length": str(size),
            "Last-Modified": "Thu, 01 Jan 2025 00:00:00 GMT",
        },
    )


# ------------------------------------------------------------------ processes


@dataclasses.dataclass(frozen=True, slots=True)
class Servers:
    """Where the started servers listen."""

    api_url: str
    s3_url: str
    s3_kind: str  # "moto", "sink", "url" or "null" (benchmarks/nullserver.py)
    bucket: str
    api_pid: int | None
    s3_pid: int | None
    log_dir: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _wait_listening(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(
        f"server did not listen on port {port} within {READY_TIMEOUT_S}s: {_tail(log)}"
    )


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _launch(argv: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **BENCH_CREDENTIALS, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
    try:
        _wait_listening(proc, port, log)
    except BaseException:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT_S)


def _server_argv(
    kind: str, port: int, api: ApiOptions | None = None, slowdown_share: float = 0.0
) -> list[str]:
    if kind == "moto":
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    extra = api.argv() if api is not None else []
    if kind == "sink" and slowdown_share:
        extra = ["--slowdown-share", str(slowdown_share)]
    return [sys.executable, "-m", "benchmarks.servers", kind, "--port", str(port), *extra]


def create_bucket(s3_url: str, bucket: str) -> None:
    """Create ``bucket`` on the S3 endpoint (an existing bucket is fine)."""
    import boto3  # deferred: only the harness needs boto3 here, not the servers

    client = boto3.client(
        "s3",
        endpoint_url=s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)


@contextlib.contextmanager
def start_servers(
    *,
    api: ApiOptions | None = None,
    s3: str = "moto",
    bucket: str = "bench-raw",
    log_dir: Path | None = None,
    slowdown_share: float = 0.0,
) -> Iterator[Servers]:
    """Start the fake API and an S3 server as subprocesses; stop them on exit.

    Args:
        api: options of the fake API; ``None`` starts no API server.
        s3: ``moto``, ``sink``, or the URL of an S3-compatible server already running.
        bucket: created on the S3 server before yielding.
        log_dir: where server output goes; a temporary directory by default.
        slowdown_share: with ``s3="sink"``, that share of PutObjects is answered SlowDown.
    """
    procs: list[subprocess.Popen[bytes]] = []
    logs = log_dir or Path(tempfile.mkdtemp(prefix="bench-servers-"))
    logs.mkdir(parents=True, exist_ok=True)
    try:
        api_url, api_pid = "", None
        if api is not None:
            port = free_port()
            procs.append(_launch(_server_argv("api", port, api), port, logs / "api.log"))
            api_url, api_pid = f"http://{HOST}:{port}/v1/data", procs[-1].pid
        if s3 in ("moto", "sink"):
            port = free_port()
            argv = _server_argv(s3, port, slowdown_share=slowdown_share)
            procs.append(_launch(argv, port, logs / f"{s3}.log"))
            s3_url, s3_pid, kind = f"http://{HOST}:{port}", procs[-1].pid, s3
        else:
            s3_url, s3_pid, kind = s3.rstrip("/"), None, "url"
        create_bucket(s3_url, bucket)
        yield Servers(api_url, s3_url, kind, bucket, api_pid, s3_pid, logs)
    finally:
        for proc in reversed(procs):
            _stop(proc)


def sink_stats(s3_url: str, *, bucket: str | None = None, prefix: str = "") -> dict[str, Any]:
    """The sink's counters, plus object count and bytes under ``prefix``."""
    import urllib.parse
    import urllib.request

    query = urllib.parse.urlencode({"prefix": prefix, **({"bucket": bucket} if bucket else {})})
    with urllib.request.urlopen(f"{s3_url}/_stats?{query}", timeout=30) as response:
        return dict(json.load(response))


def count_objects(servers: Servers, prefix: str) -> tuple[int, int]:
    """Number and total size of the objects under ``prefix`` in the benchmark bucket."""
    if servers.s3_kind in ("sink", "null"):  # the null sink (nullserver.py) answers alike
        stats = sink_stats(servers.s3_url, bucket=servers.bucket, prefix=prefix)
        return int(stats["objects"]), int(stats["object_bytes"])
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=servers.s3_url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    count = size = 0
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=servers.bucket, Prefix=prefix
    ):
        for entry in page.get("Contents", []):
            count += 1
            size += int(entry["Size"])
    return count, size


# ------------------------------------------------------------------------ CLI


def _serve(app: web.Application, port: int, label: str, **server: Any) -> None:
    print(f"{label} listening on http://{HOST}:{port}", flush=True)
    web.run_app(
        app,
        host=HOST,
        port=port,
        access_log=None,
        print=None,
        handle_signals=True,
        shutdown_timeout=1.0,
        **server,
    )


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.servers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("api", "sink", "up"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--port", type=int, default=0, help="0 picks a free port")
        if name in ("api", "up"):
            cmd.add_argument("--latency-ms", type=float, default=0.0)
            cmd.add_argument("--body-bytes", type=int, default=DEFAULT_BODY_BYTES)
            cmd.add_argument("--error-rate", type=float, default=0.0)
            cmd.add_argument("--chunked", action=argparse.BooleanOptionalAction, default=False)
            cmd.add_argument("--seed", type=int, default=0)
            cmd.add_argument("--rate-limit", type=float, default=0.0, help="requests/s; 0 = off")
            cmd.add_argument("--retry-after", type=int, default=1, help="seconds, on a 429")
            cmd.add_argument(
                "--sparse-refusals",
                action=argparse.BooleanOptionalAction,
                default=False,
                help="refuse single requests by the item's i param (issue 19)",
            )
        if name == "sink":
            cmd.add_argument(
                "--slowdown-share", type=float, default=0.0, help="PutObjects answered SlowDown"
            )
        if name == "up":
            cmd.add_argument("--s3", default="moto", help="moto, sink or an S3 URL")
            cmd.add_argument("--bucket", default="bench-raw")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run one server in the foreground (or ``up``: an API and an S3 until Ctrl-C)."""
    args = _parse_args(argv)
    port = args.port or free_port()
    if args.command == "sink":
        # A gzip object (Content-Encoding: gzip) must be read as sent: its Content-MD5
        # is of the compressed bytes.
        _serve(make_sink_app(args.slowdown_share), port, "sink", auto_decompress=False)
        return
    options = ApiOptions(
        args.latency_ms,
        args.body_bytes,
        args.error_rate,
        args.chunked,
        args.seed,
        rate_limit_per_s=args.rate_limit,
        retry_after_s=args.retry_after,
        sparse_refusals=args.sparse_refusals,
    )
    if args.command == "api":
        _serve(make_api_app(options), port, "api")
        return
    with start_servers(api=options, s3=args.s3, bucket=args.bucket) as servers:
        print(json.dumps(dataclasses.asdict(servers), default=str), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
