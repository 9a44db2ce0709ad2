"""Local servers for functional tests: a threaded aiohttp host, moto S3, a scripted API.

All servers bind 127.0.0.1 on a port the OS picks (port 0), so parallel runs
never collide and nothing listens beyond loopback.

Why a thread per aiohttp app: the code under test owns its event loop (the
Lambda handler is sync and calls ``asyncio.run``; async tests run on
pytest-asyncio's loop). A server on its own loop in its own thread keeps
answering whatever the main thread does, including blocking calls.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import struct
import threading
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

import boto3
from aiohttp import web
from botocore.config import Config
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
)
from moto.moto_server.werkzeug_app import create_backend_app as create_moto_app
from moto.server import ThreadedMotoServer
from multidict import CIMultiDict, CIMultiDictProxy
from werkzeug.serving import make_server

LOOPBACK = "127.0.0.1"
REGION = "us-east-1"
DUMMY_CREDENTIAL = "testing"
START_TIMEOUT_S = 10.0
# Handlers still running at stop() (a stalled route, say) get this long, then are
# cancelled; aiohttp's own default of 60 s would make every teardown slow.
SHUTDOWN_TIMEOUT_S = 2.0
# A request body may be a multipart part (>= 5 MiB); aiohttp's default cap is 1 MiB.
CLIENT_MAX_SIZE = 1 << 30
DEFAULT_KEY_PARAM = "date"
DEFAULT_RECORDS = 3
# How long a faulty handler waits after writing before it cuts the connection, so
# the bytes already written reach the client before the FIN or RST does.
FLUSH_GRACE_S = 0.05
# Extra bytes a short_body response advertises beyond what it sends.
SHORT_BODY_MISSING = 100
DRIP_TICK_S = 0.1

T = TypeVar("T")


class HasApp(Protocol):
    """Anything that carries an aiohttp application (ScriptedAPI, FaultyAPI, ...)."""

    @property
    def app(self) -> web.Application: ...


# --------------------------------------------------------------------------- ThreadedApp


class ThreadedApp:
    """An aiohttp application served from a background thread with its own event loop.

    Example:
        >>> with ThreadedApp(app) as server:
        ...     asyncio.run(fetch(server.url))
    """

    def __init__(
        self,
        app: web.Application | HasApp,
        *,
        host: str = LOOPBACK,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT_S,
        handler_cancellation: bool = True,
        **runner_kwargs: Any,
    ) -> None:
        """Prepare (not start) a server.

        Args:
            app: the application, or an object with an ``app`` attribute.
            host: address to bind; keep the loopback default.
            shutdown_timeout: grace for in-flight handlers at stop().
            handler_cancellation: cancel a handler when its client disconnects, so a
                stalled route does not outlive the client that gave up on it.
            **runner_kwargs: more ``web.AppRunner`` / request-handler options, e.g.
                ``auto_decompress=False`` to read request bodies as sent.
        """
        self._app = app if isinstance(app, web.Application) else app.app
        self._host = host
        self._shutdown_timeout = shutdown_timeout
        self._handler_cancellation = handler_cancellation
        self._runner_kwargs = runner_kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The server's event loop (for ``run``; never run anything else on it)."""
        if self._loop is None:
            raise RuntimeError("server not started")
        return self._loop

    def start(self) -> Self:
        """Start serving; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        ready: concurrent.futures.Future[int] = concurrent.futures.Future()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name=f"ThreadedApp-{id(self):x}", daemon=True
        )
        self._thread.start()
        try:
            self._port = ready.result(timeout=START_TIMEOUT_S)
        except BaseException:
            self._thread.join(timeout=START_TIMEOUT_S)
            self._thread = None
            raise
        return self

    def stop(self) -> None:
        """Stop serving: close connections, clean up the runner, close the loop, join."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=self._shutdown_timeout + START_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"{thread.name} did not stop")
        self._thread = None

    def run(self, coro: Awaitable[T], timeout: float = START_TIMEOUT_S) -> T:
        """Run a coroutine on the server's loop from another thread and return its result."""

        async def wrapper() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"<ThreadedApp {where}>"

    # Everything below runs in the server thread.

    def _serve(self, ready: concurrent.futures.Future[int]) -> None:
        loop = self.loop
        runner = web.AppRunner(
            self._app,
            access_log=None,
            shutdown_timeout=self._shutdown_timeout,
            handler_cancellation=self._handler_cancellation,
            **self._runner_kwargs,
        )
        try:
            loop.run_until_complete(self._listen(runner))
        except BaseException as exc:
            ready.set_exception(exc)
            self._close_loop(loop, runner)
            return
        ready.set_result(runner.addresses[0][1])
        try:
            loop.run_forever()
        finally:
            self._close_loop(loop, runner)

    async def _listen(self, runner: web.AppRunner) -> None:
        await runner.setup()
        await web.TCPSite(runner, self._host, 0).start()

    @staticmethod
    def _close_loop(loop: asyncio.AbstractEventLoop, runner: web.AppRunner) -> None:
        try:
            loop.run_until_complete(runner.cleanup())
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


# --------------------------------------------------------------------------- MotoS3


def _single_server_header(app: Any) -> Any:
    """WSGI middleware: drop the app's ``Server`` header; werkzeug sends its own.

    moto adds ``server: amazon.com`` and werkzeug always adds ``Server: Werkzeug/..``.
    aiohttp's strict parser (``python -X dev`` / PYTHONASYNCIODEBUG) rejects the
    duplicate, which would fail every aiobotocore and proxy call in dev mode.
    """

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            kept = [(name, value) for name, value in headers if name.lower() != "server"]
            return start_response(status, kept, exc_info)

        return app(environ, start)

    return wrapped


class _MotoServer(ThreadedMotoServer):
    """ThreadedMotoServer with one Server header per response (see above).

    Overrides moto's private ``_server_entry`` (same body, app wrapped);
    ``test_moto_sends_one_server_header`` fails should moto change it.
    """

    def _server_entry(self) -> None:
        app = _single_server_header(DomainDispatcherApplication(create_moto_app))
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


class MotoS3:
    """A moto S3 server on 127.0.0.1:<free port>, plus boto3 helpers for assertions."""

    def __init__(self, *, host: str = LOOPBACK, region: str = REGION) -> None:
        self._host = host
        self._region = region
        self._server: ThreadedMotoServer | None = None
        self._port: int | None = None
        self._session: boto3.session.Session | None = None
        self._clients: list[Any] = []
        self._helper: Any = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("moto not started")
        return self._port

    @property
    def endpoint(self) -> str:
        """Base URL to use as ``AWS_ENDPOINT_URL_S3``."""
        return f"http://{self._host}:{self.port}"

    def start(self) -> Self:
        if self._server is not None:
            raise RuntimeError("moto already started")
        server = _MotoServer(ip_address=self._host, port=0, verbose=False)
        server.start()
        self._server = server
        self._port = server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        self.close_clients()
        server, self._server = self._server, None
        if server is None:
            return
        server.stop()
        # ThreadedMotoServer.stop() shuts the serve loop down but never closes the
        # listening socket, which would surface later as a ResourceWarning.
        wsgi_server = getattr(server, "_server", None)
        if wsgi_server is not None:
            wsgi_server.server_close()

    def client(self, *, endpoint_url: str | None = None, max_attempts: int | None = None) -> Any:
        """A boto3 S3 client with dummy credentials; closed by close_clients()/stop().

        Args:
            endpoint_url: defaults to this server; pass a proxy's endpoint to go through it.
            max_attempts: total attempts per call (1 = no retries); botocore's default if None.
        """
        retries: dict[str, Any] = {"mode": "standard"}
        if max_attempts is not None:
            retries["total_max_attempts"] = max_attempts
        client = self._boto_session().client(
            "s3",
            endpoint_url=endpoint_url or self.endpoint,
            # An explicit empty map: loopback traffic never goes through an env proxy.
            config=Config(retries=retries, proxies={}, connect_timeout=5, read_timeout=30),
        )
        self._clients.append(client)
        return client

    def close_clients(self) -> None:
        """Close every client made by client(), releasing pooled sockets."""
        clients, self._clients, self._helper = self._clients, [], None
        for client in clients:
            client.close()

    def reset(self) -> None:
        """Forget all buckets and objects (moto's ``POST /moto-api/reset``)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=START_TIMEOUT_S) as response:
            response.read()

    def create_bucket(self, name: str) -> None:
        self._client().create_bucket(Bucket=name)

    def list_keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under prefix, sorted."""
        paginator = self._client().get_paginator("list_objects_v2")
        keys: list[str] = []
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def get_bytes(self, bucket: str, key: str) -> bytes:
        body = self._client().get_object(Bucket=bucket, Key=key)["Body"]
        with body:
            data: bytes = body.read()
        return data

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        """HeadObject's response (ContentLength, ContentEncoding, Metadata, ...)."""
        response: dict[str, Any] = self._client().head_object(Bucket=bucket, Key=key)
        return response

    def incomplete_uploads(self, bucket: str) -> list[dict[str, Any]]:
        """Multipart uploads begun and neither completed nor aborted."""
        response = self._client().list_multipart_uploads(Bucket=bucket)
        uploads: list[dict[str, Any]] = response.get("Uploads", [])
        return uploads

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _boto_session(self) -> boto3.session.Session:
        # Own session, not boto3's global default: that one freezes whatever the
        # environment held the first time any test touched boto3.
        if self._session is None:
            self._session = boto3.session.Session(
                aws_access_key_id=DUMMY_CREDENTIAL,
                aws_secret_access_key=DUMMY_CREDENTIAL,
                region_name=self._region,
            )
        return self._session

    def _client(self) -> Any:
        if self._helper is None:
            self._helper = self.client()
        return self._helper


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: CIMultiDictProxy[str]
    key: str


class RecordingApp:
    """Thread-safe hit counters and a request log shared by the scripted servers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hits: Counter[str] = Counter()
        self._requests: list[RecordedRequest] = []

    @property
    def hits(self) -> Counter[str]:
        """A snapshot of hits per key."""
        with self._lock:
            return Counter(self._hits)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    def headers_sent(self, name: str) -> list[str]:
        """Every value of header ``name`` received, across all requests."""
        return [v for r in self.requests for v in r.headers.getall(name, [])]

    def clear(self) -> None:
        with self._lock:
            self._hits.clear()
            self._requests.clear()

    def _record(self, request: web.Request, key: str) -> int:
        """Log the request; return how many earlier hits ``key`` had."""
        recorded = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            key=key,
        )
        with self._lock:
            earlier = self._hits[key]
            self._hits[key] += 1
            self._requests.append(recorded)
        return earlier


# --------------------------------------------------------------------------- ScriptedAPI


@dataclass(frozen=True, slots=True, kw_only=True)
class Response:
    """What ScriptedAPI does for one hit.

    Attributes:
        status: HTTP status.
        body: bytes to send; None = ``default_body(params, records)`` for 2xx, a small
            JSON error object otherwise.
        headers: extra response headers (override Content-Type here).
        delay_s: sleep before sending anything.
        stall_s: sleep after the headers and the first half of the body.
        drip_bytes_per_s: send the body at this rate (0 = at once).
        chunked: Transfer-Encoding chunked instead of Content-Length.
        drop_mid_body: send headers and half the body, then abort the connection.
        short_body: advertise more bytes than sent (Content-Length + SHORT_BODY_MISSING,
            or a chunked body without its last chunk), then close.
        records: records in the default body.
    """

    status: int = 200
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    stall_s: float = 0.0
    drip_bytes_per_s: float = 0.0
    chunked: bool = False
    drop_mid_body: bool = False
    short_body: bool = False
    records: int = DEFAULT_RECORDS


def default_body(params: Mapping[str, str], records: int = DEFAULT_RECORDS) -> bytes:
    """The default 200 body: a JSON array of ``records`` objects, each the params + ``i``."""
    items = [{**params, "i": i} for i in range(records)]
    return json.dumps(items, sort_keys=True, separators=(",", ":")).encode()


Script = Mapping[str, Response | Sequence[Response]]


class ScriptedAPI(RecordingApp):
    """An API whose answer to each request is scripted per value of one query parameter.

    Hit *n* for key K gets ``script[K][n]``; the last spec repeats once the list is
    used up; unscripted keys get ``default``. Any path and method is accepted.

    Example:
        >>> api = ScriptedAPI({"2025-01-03": [Response(status=503), Response()]})
        >>> # first ?date=2025-01-03 -> 503, every later one -> 200 + default body
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        key_param: str = DEFAULT_KEY_PARAM,
        default: Response | None = None,
    ) -> None:
        super().__init__()
        self.key_param = key_param
        self._default = default or Response()
        self._script: dict[str, tuple[Response, ...]] = {}
        for key, specs in (script or {}).items():
            self.set_script(key, specs)
        self._app = web.Application(client_max_size=CLIENT_MAX_SIZE)
        self._app.router.add_route("*", "/{tail:.*}", self._handle)

    @property
    def app(self) -> web.Application:
        return self._app

    def set_script(self, key: str, specs: Response | Sequence[Response]) -> None:
        """(Re)script ``key``; hit counting for it carries on from where it is."""
        specs = (specs,) if isinstance(specs, Response) else tuple(specs)
        if not specs:
            raise ValueError(f"empty script for {key!r}")
        with self._lock:
            self._script[key] = specs

    def _spec_for(self, key: str, hit: int) -> Response:
        with self._lock:
            specs = self._script.get(key)
        if specs is None:
            return self._default
        return specs[min(hit, len(specs) - 1)]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get(self.key_param, "")
        spec = self._spec_for(key, self._record(request, key))
        if spec.delay_s:
            await asyncio.sleep(spec.delay_s)
        return await send_faulty(request, spec, _body_for(spec, dict(request.query)))


def _body_for(spec: Response, params: Mapping[str, str]) -> bytes:
    if spec.body is not None:
        return spec.body
    if 200 <= spec.status < 300:
        return default_body(params, spec.records)
    return json.dumps({"error": f"HTTP {spec.status}"}).encode()


async def send_faulty(
    request: web.Request, spec: Response, body: bytes, *, reset: bool = False
) -> web.StreamResponse:
    """Send ``body`` the way ``spec`` says, faults included (``delay_s`` excepted).

    Args:
        request: the request being answered.
        spec: status, headers and faults.
        body: the full body; faults send less of it.
        reset: cut a drop_mid_body connection with a TCP RST instead of a FIN.
    """
    response = web.StreamResponse(status=spec.status)
    response.content_type = "application/json"
    response.headers.update(spec.headers)
    if spec.chunked:
        response.enable_chunked_encoding()
    else:
        extra = SHORT_BODY_MISSING if spec.short_body else 0
        response.content_length = len(body) + extra
    await response.prepare(request)
    half = len(body) // 2
    await _write(response, body[:half], spec.drip_bytes_per_s)
    if spec.drop_mid_body:
        await cut_connection(request, reset=reset)
        return response
    if spec.stall_s:
        await asyncio.sleep(spec.stall_s)
    await _write(response, body[half:], spec.drip_bytes_per_s)
    if spec.short_body:
        await cut_connection(request, reset=False)
        return response
    await response.write_eof()
    return response


async def _write(response: web.StreamResponse, data: bytes, rate: float) -> None:
    if not data:
        return
    if rate <= 0:
        await response.write(data)
        return
    step = max(1, int(rate * DRIP_TICK_S))
    for start in range(0, len(data), step):
        await response.write(data[start : start + step])
        await asyncio.sleep(step / rate)


async def cut_connection(request: web.Request, *, reset: bool) -> None:
    """Drop the client's connection after letting already-written bytes go out.

    Args:
        request: whose connection to cut.
        reset: send a TCP RST (SO_LINGER 0) instead of a FIN.

    The handler then returns its (prepared) response; aiohttp's write_eof on the
    closed transport raises ConnectionError, which it treats as a client disconnect.
    """
    await asyncio.sleep(FLUSH_GRACE_S)
    transport = request.transport
    if transport is None or transport.is_closing():
        return
    if reset:
        _set_linger_zero(transport)
    transport.abort()


def _set_linger_zero(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
