"""Fault injection for the reliability suite: a misbehaving API and a faulty S3 proxy.

``FaultyAPI`` serves one named fault per path (see its docstring). ``S3FaultProxy``
sits in front of an S3 endpoint (moto), forwards every request unchanged and, when
told to, answers a given S3 operation with a fault instead.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import json
import random
import threading
import time
import weakref
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from types import TracebackType
from typing import Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from tests.support.servers import (
    CLIENT_MAX_SIZE,
    LOOPBACK,
    MotoS3,
    RecordingApp,
    Response,
    ThreadedApp,
    cut_connection,
    default_body,
    send_faulty,
)

BLOCK_SIZE = 64 * 1024
DEFAULT_SIZE = 64 * 1024
# Upper bound on any server-side sleep, so a typo in a test cannot hang teardown
# (handlers are also cancelled when their client goes away).
MAX_STALL_S = 300.0
HUGE_HEADER_SIZE = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAINTENANCE_PAGE = (
    b"<!DOCTYPE html><html><head><title>Down for maintenance</title></head>"
    b"<body><h1>We'll be back soon</h1></body></html>"
)


# --------------------------------------------------------------------------- bodies


def iter_expected_bytes(size: int, seed: int | str = 0) -> Iterator[bytes]:
    """The deterministic body of ``/bytes?size=N&seed=S``, in blocks of BLOCK_SIZE.

    Each block comes from its own seeded PRNG, so any prefix can be generated
    without the rest and two seeds never share a block.
    """
    for index, start in enumerate(range(0, size, BLOCK_SIZE)):
        block = random.Random(f"{seed}:{index}").randbytes(BLOCK_SIZE)
        yield block[: min(BLOCK_SIZE, size - start)]


def expected_bytes(size: int, seed: int | str = 0) -> bytes:
    """All ``size`` bytes ``/bytes?size=N&seed=S`` serves."""
    return b"".join(iter_expected_bytes(size, seed))


def expected_sha256(size: int, seed: int | str = 0) -> str:
    """SHA-256 hex of expected_bytes, without holding them all in memory."""
    digest = hashlib.sha256()
    for block in iter_expected_bytes(size, seed):
        digest.update(block)
    return digest.hexdigest()


def iter_json_zeros(size: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """A valid JSON array of exactly ``size`` bytes (``[0,0,...,0]``), in pieces."""
    if size < 2:
        raise ValueError("a JSON array needs at least 2 bytes")
    inner = size - 2
    chunk -= chunk % 2  # keeps every piece aligned on "0,"
    yield b"["
    for start in range(0, inner, chunk):
        piece = (b"0," * (chunk // 2))[: min(chunk, inner - start)]
        if start + len(piece) == inner and piece.endswith(b","):
            piece = piece[:-1] + b" "  # whitespace before "]" keeps it valid
        yield piece
    yield b"]"


@functools.lru_cache(maxsize=8)
def gzip_bomb(inflated: int) -> bytes:
    """Gzip bytes that inflate to ``iter_json_zeros(inflated)`` (about 1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31 = gzip framing
    parts = [compressor.compress(piece) for piece in iter_json_zeros(inflated)]
    parts.append(compressor.flush())
    return b"".join(parts)


# --------------------------------------------------------------------------- FaultyAPI


class FaultyAPI(RecordingApp):
    """An API with one named fault per path.

    Routes (sizes in bytes; ``key`` scopes the ``times`` counters):

    - ``/reset-mid-body?size=N``: Content-Length N, half the body, then a TCP RST.
    - ``/short-content-length?size=N``: advertises N + 100 bytes, sends N, closes.
    - ``/stall?stall_s=S&when=headers|body``: sleeps S before the headers (default)
      or after half the body.
    - ``/drip?size=N&rate=R``: N bytes (default 10) at R bytes/s (default 1).
    - ``/status/{code}?times=N&key=K``: ``code`` for the first N hits of K, then 200;
      every hit if ``times`` is absent.
    - ``/retry-after-seconds?seconds=S&times=N&key=K&status=429``: status with
      ``Retry-After: S`` for N hits (default 1), then 200.
    - ``/retry-after-date?...``: the same with ``Retry-After`` as an HTTP-date S
      seconds ahead (whole seconds: HTTP-dates have no fraction).
    - ``/redirect-loop``: 302 to itself (with a hop counter) forever.
    - ``/redirect-to?url=U&status=302``: redirects to any URL, e.g. a loopback one.
    - ``/gzip-bomb?inflated=N``: ``Content-Encoding: gzip`` of a JSON array of N bytes.
    - ``/not-json``: 200 text/html maintenance page.
    - ``/huge-headers?size=N``: header ``X-Huge`` of N bytes (default 64 KiB).
    - ``/stale-keepalive``: see _stale_keepalive.
    - ``/bytes?size=N&seed=S&chunked=1``: expected_bytes(N, S), Content-Length unless
      chunked.

    200 bodies are ``default_body(params)``. ``hits`` are keyed by the ``key``
    query parameter when given, else by the path.
    """

    def __init__(self) -> None:
        super().__init__()
        # Connections that have been answered once; weak so closed ones drop out.
        self._seen_transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self._stale_cut = 0
        self._app = web.Application(client_max_size=CLIENT_MAX_SIZE)
        routes = {
            "/reset-mid-body": self._reset_mid_body,
            "/short-content-length": self._short_content_length,
            "/stall": self._stall,
            "/drip": self._drip,
            "/status/{code:\\d+}": self._status,
            "/retry-after-seconds": self._retry_after_seconds,
            "/retry-after-date": self._retry_after_date,
            "/redirect-loop": self._redirect_loop,
            "/redirect-to": self._redirect_to,
            "/gzip-bomb": self._gzip_bomb,
            "/not-json": self._not_json,
            "/huge-headers": self._huge_headers,
            "/stale-keepalive": self._stale_keepalive,
            "/bytes": self._bytes,
        }
        for path, handler in routes.items():
            self._app.router.add_route("*", path, handler)

    @property
    def app(self) -> web.Application:
        return self._app

    @property
    def stale_connections_cut(self) -> int:
        """How many reused connections /stale-keepalive has cut."""
        with self._lock:
            return self._stale_cut

    def _hit(self, request: web.Request) -> int:
        return self._record(request, request.query.get("key", request.path))

    async def _reset_mid_body(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        body = default_body_of_size(_int(request, "size", DEFAULT_SIZE))
        return await send_faulty(request, Response(drop_mid_body=True), body, reset=True)

    async def _short_content_length(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        body = default_body_of_size(_int(request, "size", DEFAULT_SIZE))
        return await send_faulty(request, Response(short_body=True), body)

    async def _stall(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        stall = min(float(request.query.get("stall_s", "30")), MAX_STALL_S)
        body = default_body(dict(request.query))
        if request.query.get("when", "headers") == "headers":
            await asyncio.sleep(stall)
            return await send_faulty(request, Response(), body)
        return await send_faulty(request, Response(stall_s=stall), body)

    async def _drip(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        rate = float(request.query.get("rate", "1"))
        body = default_body_of_size(_int(request, "size", 10))
        return await send_faulty(request, Response(drip_bytes_per_s=rate), body)

    async def _status(self, request: web.Request) -> web.StreamResponse:
        earlier = self._hit(request)
        times = request.query.get("times")
        if times is None or earlier < int(times):
            return _json(int(request.match_info["code"]), {"error": "scripted"})
        return _ok(request)

    async def _retry_after_seconds(self, request: web.Request) -> web.StreamResponse:
        return self._retry_after(request, request.query.get("seconds", "1"))

    async def _retry_after_date(self, request: web.Request) -> web.StreamResponse:
        ahead = float(request.query.get("seconds", "1"))
        return self._retry_after(request, formatdate(time.time() + ahead, usegmt=True))

    def _retry_after(self, request: web.Request, value: str) -> web.StreamResponse:
        earlier = self._hit(request)
        if earlier < _int(request, "times", 1):
            response = _json(_int(request, "status", 429), {"error": "slow down"})
            response.headers["Retry-After"] = value
            return response
        return _ok(request)

    async def _redirect_loop(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        hop = _int(request, "hop", 0) + 1
        raise web.HTTPFound(f"/redirect-loop?hop={hop}")

    async def _redirect_to(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        status = _int(request, "status", 302)
        if status not in REDIRECT_STATUSES:
            raise web.HTTPBadRequest(text=f"not a redirect status: {status}")
        return web.Response(status=status, headers={"Location": request.query["url"]})

    async def _gzip_bomb(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        inflated = _int(request, "inflated", 10 * 1024 * 1024)
        body = await asyncio.to_thread(gzip_bomb, inflated)
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(body=body, headers=headers)

    async def _not_json(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        return web.Response(body=MAINTENANCE_PAGE, content_type="text/html")

    async def _huge_headers(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        size = _int(request, "size", HUGE_HEADER_SIZE)
        response = _ok(request)
        response.headers["X-Huge"] = "a" * size
        return response

    async def _stale_keepalive(self, request: web.Request) -> web.StreamResponse:
        """Answer a connection's first request; cut it when the client reuses it.

        How the fault is produced: a real server closes an idle keep-alive socket
        just as the client sends on it. Closing right after the response would be a
        race (the client may notice the FIN first and quietly open a new
        connection), so this route instead remembers each connection it answered
        and aborts that connection, without a response, on the next request it
        carries. The client therefore always sends a request into a dead pooled
        connection. aiohttp retries such a failure once on a fresh connection for
        idempotent methods (GET: hits 1, 2 cut, 3 answered); POST raises
        ServerDisconnectedError.
        """
        self._hit(request)
        transport = request.transport
        if transport is not None and transport in self._seen_transports:
            with self._lock:
                self._stale_cut += 1
            transport.abort()
            return web.Response()  # never sent; aiohttp sees the client gone
        if transport is not None:
            self._seen_transports.add(transport)
        response = _ok(request)
        response.headers["Connection"] = "keep-alive"
        response.headers["Keep-Alive"] = "timeout=60"
        return response

    async def _bytes(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        size = _int(request, "size", DEFAULT_SIZE)
        seed = request.query.get("seed", "0")
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        if request.query.get("chunked", "0") in ("1", "true"):
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        await response.prepare(request)
        for block in iter_expected_bytes(size, _seed(seed)):
            await response.write(block)
        await response.write_eof()
        return response


def default_body_of_size(size: int) -> bytes:
    """A JSON array body of exactly ``size`` bytes (>= 2)."""
    return b"".join(iter_json_zeros(size))


def _seed(value: str) -> int | str:
    # /bytes?seed=7 must match expected_bytes(n, 7) as well as expected_bytes(n, "7").
    return int(value) if value.lstrip("-").isdigit() else value


def _int(request: web.Request, name: str, default: int) -> int:
    return int(request.query.get(name, default))


def _json(status: int, payload: object) -> web.Response:
    return web.Response(status=status, text=json.dumps(payload), content_type="application/json")


def _ok(request: web.Request) -> web.Response:
    return web.Response(body=default_body(dict(request.query)), content_type="application/json")


# --------------------------------------------------------------------------- S3FaultProxy

S3_OPERATIONS = frozenset(
    {
        "AbortMultipartUpload",
        "CompleteMultipartUpload",
        "CopyObject",
        "CreateBucket",
        "CreateMultipartUpload",
        "DeleteBucket",
        "DeleteObject",
        "DeleteObjects",
        "GetObject",
        "HeadBucket",
        "HeadObject",
        "ListBuckets",
        "ListMultipartUploads",
        "ListObjects",
        "ListObjectsV2",
        "ListParts",
        "PutObject",
        "UploadPart",
        "Other",
    }
)
ANY_OPERATION = "*"


def _s3_error(status: int, code: str, message: str) -> tuple[int, bytes]:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        "<RequestId>FAULTPROXY</RequestId><HostId>fault-proxy</HostId></Error>"
    )
    return status, body.encode()


# fault -> (status, XML body) answered instead of forwarding.
ERROR_FAULTS: Mapping[str, tuple[int, bytes]] = {
    "slowdown": _s3_error(503, "SlowDown", "Please reduce your request rate."),
    "internal_error": _s3_error(500, "InternalError", "We encountered an internal error."),
    "expired_token": _s3_error(400, "ExpiredToken", "The provided token has expired."),
    # A permission refused: not retried, so the write fails for good.
    "access_denied": _s3_error(403, "AccessDenied", "Access Denied"),
    # S3 can fail CompleteMultipartUpload (and copies) after a 200 status line;
    # botocore must read the body and treat it as an error.
    "error_in_200": _s3_error(200, "InternalError", "We encountered an internal error."),
}
DROP_FAULTS = frozenset({"drop_connection", "drop_after_forward"})
# Faults that take time (``delay_s`` of ``inject``): see S3FaultProxy.
SLOW_FAULTS = frozenset({"hang", "delay_request", "delay_answer"})
FAULTS = frozenset(ERROR_FAULTS) | DROP_FAULTS | SLOW_FAULTS
DROPPED = 0  # the status recorded in ``calls`` when no response was sent
HUNG = -1  # the status recorded in ``calls`` when a request is left unanswered
DEFAULT_DELAY_S = 1.0

# RFC 9110 hop-by-hop headers, plus framing the proxy recomputes.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "expect",
    }
)
_OBJECT_SUBRESOURCES = frozenset(
    {"acl", "attributes", "legal-hold", "restore", "retention", "select", "tagging", "torrent"}
)
_LIST_PARAMS = frozenset({"delimiter", "encoding-type", "marker", "max-keys", "prefix"})


def s3_operation(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str] | None = None
) -> str:
    """Name the S3 operation of a path-style request, as far as the proxy needs.

    Args:
        method: HTTP method.
        path: ``/bucket`` or ``/bucket/key`` (path-style addressing, as an IP endpoint gets).
        query: query parameters.
        headers: request headers (tells CopyObject from PutObject).

    Returns:
        An element of S3_OPERATIONS; "Other" for anything not told apart.
    """
    if "x-id" in query:  # newer botocore names the operation itself
        return query["x-id"]
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return "ListBuckets" if method == "GET" else "Other"
    if key:
        return _object_operation(method, query, headers or {})
    return _bucket_operation(method, query)


def _object_operation(method: str, query: Mapping[str, str], headers: Mapping[str, str]) -> str:
    if _OBJECT_SUBRESOURCES.intersection(query):
        return "Other"
    upload = "uploadId" in query
    if method == "PUT":
        if upload:
            return "UploadPart"
        copying = any(name.lower() == "x-amz-copy-source" for name in headers)
        return "CopyObject" if copying else "PutObject"
    if method == "POST":
        if "uploads" in query:
            return "CreateMultipartUpload"
        return "CompleteMultipartUpload" if upload else "Other"
    if method == "DELETE":
        return "AbortMultipartUpload" if upload else "DeleteObject"
    if method == "GET":
        return "ListParts" if upload else "GetObject"
    return "HeadObject" if method == "HEAD" else "Other"


def _bucket_operation(method: str, query: Mapping[str, str]) -> str:
    if method == "GET":
        if "uploads" in query:
            return "ListMultipartUploads"
        if "list-type" in query:
            return "ListObjectsV2"
        return "ListObjects" if _LIST_PARAMS.issuperset(query) else "Other"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if query:
        return "Other"
    by_method = {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}
    return by_method.get(method, "Other")


@dataclass(slots=True)
class _Injection:
    fault: str
    remaining: int
    delay_s: float = DEFAULT_DELAY_S


class S3FaultProxy:
    """A reverse proxy in front of an S3 endpoint that fails chosen operations.

    Requests are forwarded byte for byte (method, raw path and query, headers
    including Host and the SigV4 Authorization, body); responses come back the same
    way. Faults:

    - ``slowdown``: 503 SlowDown; ``internal_error``: 500 InternalError;
      ``expired_token``: 400 ExpiredToken; ``access_denied``: 403 AccessDenied. Not
      forwarded.
    - ``error_in_200``: 200 whose body is an ``<Error>`` (InternalError). Not forwarded,
      so a CompleteMultipartUpload hit this way leaves the upload incomplete.
    - ``drop_connection``: reads the request, then closes without answering. Not
      forwarded.
    - ``drop_after_forward``: forwards (the operation takes effect), then closes
      without answering: the client cannot know it succeeded.
    - ``hang``: accepts the request and never answers (until the client gives up,
      or MAX_STALL_S). Not forwarded; recorded with status HUNG.
    - ``delay_request``: waits ``delay_s``, then forwards: a slow link. A client that
      gives up meanwhile cancels it, so the request never reaches S3.
    - ``delay_answer``: forwards at once (the operation takes effect), then holds the
      answer ``delay_s``: S3 applied it, the client does not know yet.

    Example:
        >>> with S3FaultProxy(moto) as proxy:
        ...     proxy.inject("UploadPart", "slowdown", times=2)
        ...     monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
    """

    def __init__(self, upstream: str | MotoS3, *, host: str = LOOPBACK) -> None:
        """Prepare (not start) a proxy.

        Args:
            upstream: the S3 endpoint URL, or a started MotoS3.
            host: address to bind; keep the loopback default.
        """
        self._upstream = upstream.endpoint if isinstance(upstream, MotoS3) else upstream
        self._upstream = self._upstream.rstrip("/")
        self._lock = threading.Lock()
        self._faults: dict[str, deque[_Injection]] = {}
        self._rates: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._streaks: dict[str, tuple[str, Callable[[str], int]]] = {}
        self._calls_per_path: Counter[str] = Counter()
        self._random = random.Random(0)
        self._calls: list[tuple[str, int]] = []
        self._fired: list[tuple[str, str]] = []
        self._session: aiohttp.ClientSession | None = None
        app = web.Application(client_max_size=CLIENT_MAX_SIZE)
        app.cleanup_ctx.append(self._client_session)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # auto_decompress=False: a body sent with Content-Encoding gzip must reach S3
        # still compressed, exactly as the client signed and sent it.
        self._server = ThreadedApp(app, host=host, auto_decompress=False)

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``AWS_ENDPOINT_URL_S3``."""
        return self._server.url

    @property
    def url(self) -> str:
        return self._server.url

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def calls(self) -> list[tuple[str, int]]:
        """(operation, status) per request, in order; status DROPPED (0) if cut."""
        with self._lock:
            return list(self._calls)

    @property
    def fired(self) -> list[tuple[str, str]]:
        """(operation, fault) per injected fault that fired, in order."""
        with self._lock:
            return list(self._fired)

    def statuses(self, operation: str) -> list[int]:
        """The statuses ``operation`` got, in order."""
        return [status for op, status in self.calls if op == operation]

    def inject(
        self, operation: str, fault: str, times: int = 1, *, delay_s: float = DEFAULT_DELAY_S
    ) -> None:
        """Answer the next ``times`` calls of ``operation`` with ``fault``.

        Args:
            operation: an S3_OPERATIONS name, or "*" for any operation. Faults
                queue per operation; an operation's own queue goes before "*".
            fault: one of FAULTS.
            times: how many calls to fail (>= 1).
            delay_s: how long ``delay_request`` and ``delay_answer`` wait.
        """
        if operation != ANY_OPERATION and operation not in S3_OPERATIONS:
            raise ValueError(f"unknown S3 operation {operation!r}; one of {sorted(S3_OPERATIONS)}")
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; one of {sorted(FAULTS)}")
        if times < 1:
            raise ValueError("times must be >= 1")
        with self._lock:
            injection = _Injection(fault, times, min(delay_s, MAX_STALL_S))
            self._faults.setdefault(operation, deque()).append(injection)

    def fail_at_rate(
        self, operations: list[str], rate: float, faults: tuple[str, ...], *, seed: int = 0
    ) -> None:
        """Answer a random share ``rate`` of the calls of ``operations`` with one of ``faults``.

        A sustained fault rate, as a throttling S3 gives, on top of any queued
        ``inject``; ``rate=0`` turns it off. Seeded, so a failing run can be replayed.
        """
        for operation in operations:
            if operation not in S3_OPERATIONS:
                raise ValueError(f"unknown S3 operation {operation!r}")
        if not set(faults) <= FAULTS or not 0 <= rate <= 1:
            raise ValueError(f"faults must be some of {sorted(FAULTS)} and 0 <= rate <= 1")
        with self._lock:
            self._random = random.Random(seed)
            for operation in operations:
                self._rates[operation] = (rate, faults)

    def fail_first_calls(self, operation: str, fault: str, streak: Callable[[str], int]) -> None:
        """Answer the first ``streak(path)`` calls of ``operation`` on each path with ``fault``.

        A schedule per object rather than per arrival: two runs writing the same items
        meet the same faults whatever the order their requests arrive in.
        """
        if operation not in S3_OPERATIONS or fault not in FAULTS:
            raise ValueError(f"unknown S3 operation {operation!r} or fault {fault!r}")
        with self._lock:
            self._streaks[operation] = (fault, streak)

    def pending(self) -> dict[str, int]:
        """Faults not yet fired, per operation."""
        with self._lock:
            return {op: sum(i.remaining for i in q) for op, q in self._faults.items() if q}

    def clear(self) -> None:
        """Forget injected faults and recorded calls."""
        with self._lock:
            self._faults.clear()
            self._rates.clear()
            self._streaks.clear()
            self._calls_per_path.clear()
            self._calls.clear()
            self._fired.clear()

    def start(self) -> Self:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Everything below runs in the proxy's thread.

    async def _client_session(self, app: web.Application) -> AsyncIterator[None]:
        # force_close: a new upstream connection per request, so a pooled one the
        # upstream has dropped can never turn into an error the test did not inject.
        connector = aiohttp.TCPConnector(force_close=True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            self._session = session
            yield
            self._session = None

    def _take_fault(self, operation: str, path: str = "") -> _Injection | None:
        with self._lock:
            if operation in self._streaks:
                fault, streak = self._streaks[operation]
                earlier, self._calls_per_path[path] = (
                    self._calls_per_path[path],
                    self._calls_per_path[path] + 1,
                )
                if earlier < streak(path):
                    self._fired.append((operation, fault))
                    return _Injection(fault, 1)
            for name in (operation, ANY_OPERATION):
                queue = self._faults.get(name)
                if queue:
                    injection = queue[0]
                    injection.remaining -= 1
                    if injection.remaining == 0:
                        queue.popleft()
                    self._fired.append((operation, injection.fault))
                    return injection
            rate, faults = self._rates.get(operation, (0.0, ()))
            if rate and self._random.random() < rate:
                fault = self._random.choice(faults)
                self._fired.append((operation, fault))
                return _Injection(fault, 1)
        return None

    def _record(self, operation: str, status: int) -> None:
        with self._lock:
            self._calls.append((operation, status))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        operation = s3_operation(request.method, request.path, request.query, request.headers)
        body = await request.read()
        injection = self._take_fault(operation, request.path)
        fault = injection.fault if injection is not None else None
        delay_s = injection.delay_s if injection is not None else 0.0
        if fault == "hang":
            self._record(operation, HUNG)
            await asyncio.sleep(MAX_STALL_S)  # cancelled when the client goes away
            await cut_connection(request, reset=False)
            return web.Response()
        if fault == "delay_request":
            await asyncio.sleep(delay_s)
        if fault is not None and fault in ERROR_FAULTS:
            status, xml = ERROR_FAULTS[fault]
            self._record(operation, status)
            return web.Response(status=status, body=xml, content_type="application/xml")
        if fault == "drop_connection":
            self._record(operation, DROPPED)
            await cut_connection(request, reset=False)
            return web.Response()
        response = await self._forward(request, body)
        if fault == "drop_after_forward":
            self._record(operation, DROPPED)
            await cut_connection(request, reset=False)
            return web.Response()
        self._record(operation, response.status)
        if fault == "delay_answer":
            await asyncio.sleep(delay_s)
        return response

    async def _forward(self, request: web.Request, body: bytes) -> web.Response:
        assert self._session is not None
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _HOP_BY_HOP
        )
        async with self._session.request(
            request.method,
            URL(self._upstream + request.raw_path, encoded=True),
            headers=headers,
            # BytesIO, not bytes: aiohttp warns (ResourceWarning) on bytes over 1 MiB.
            data=io.BytesIO(body) if body else None,
            allow_redirects=False,
            # Send exactly the client's headers: nothing aiohttp would add on its own.
            skip_auto_headers=("Accept", "Accept-Encoding", "Content-Type", "User-Agent"),
        ) as upstream:
            payload = await upstream.read()
            return _mirror(request, upstream, payload)


def _mirror(request: web.Request, upstream: aiohttp.ClientResponse, payload: bytes) -> web.Response:
    keep_length = request.method == "HEAD"  # a HEAD's Content-Length is the object's
    headers = CIMultiDict(
        (name, value)
        for name, value in upstream.headers.items()
        if name.lower() not in _HOP_BY_HOP or (keep_length and name.lower() == "content-length")
    )
    return web.Response(status=upstream.status, body=payload, headers=headers)


# --------------------------------------------------------------------------- RateLimitedAPI


class RateLimitedAPI(RecordingApp):
    """An API with a server-side token bucket, as a rate-limited real API has.

    ``rate_per_s`` tokens a second, at most ``capacity`` held (one second's worth
    by default). A request that finds a token is answered 200 after ``delay_s``
    (``default_body`` of its query); one that finds none is answered at once
    with 429 and ``Retry-After: retry_after``. ``admitted`` and ``rejected`` count
    them.
    """

    def __init__(
        self,
        rate_per_s: float,
        *,
        capacity: float | None = None,
        delay_s: float = 0.1,
        retry_after: str = "1",
    ) -> None:
        super().__init__()
        self.rate, self.capacity = rate_per_s, capacity if capacity is not None else rate_per_s
        self.delay_s, self.retry_after = delay_s, retry_after
        self._tokens = self.capacity
        self._updated = time.monotonic()
        self.admitted = 0
        self.rejected = 0
        self._app = web.Application()
        self._app.router.add_get("/{tail:.*}", self._handle)

    @property
    def app(self) -> web.Application:
        return self._app

    def _take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.capacity, self._tokens + (now - self._updated) * self.rate)
            self._updated = now
            if self._tokens >= 1:
                self._tokens -= 1
                self.admitted += 1
                return True
            self.rejected += 1
            return False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._record(request, request.path)
        if not self._take():
            response = _json(429, {"error": "rate limited"})
            response.headers["Retry-After"] = self.retry_after
            return response
        await asyncio.sleep(self.delay_s)
        return _ok(request)
