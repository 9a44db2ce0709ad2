"""HTTP side: one pooled aiohttp session, guarded redirects, error translation.

All aiohttp exceptions are translated to the ``FetchError`` family in exactly one
place, ``translate_client_error`` (tests check that every ``aiohttp.ClientError``
subclass is covered). Its messages are built from what we know, never from the
library's text (which quotes the whole URL, query and secret params included):
the error's class, a fixed phrase, the OS error's name, and where the request
went: the endpoint's origin and path, or for a URL the API chose (a redirect
target, a next link) only the endpoint's origin when it is the same, since the
API wrote everything else in it.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import _EXC_SENTINEL
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from yarl import URL

from ingest_core.auth import AuthProvider
from ingest_core.errors import (
    BlockedError,
    FetchConnectionError,
    FetchError,
    FetchTimeout,
    HTTPStatusError,
    InvalidBody,
    TruncatedBody,
)
from ingest_core.netguard import GuardedResolver, NetPolicy, check_url
from ingest_core.redact import clip
from ingest_core.retry import is_retryable_status, parse_retry_after

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DNS_CACHE_TTL_S = 60
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "x-api-key"})
USER_AGENT = "fanout-ingest/0.1 (+https://github.com/fanout-ingest)"
MAX_CONTENT_TYPE = 200
# The leading words of a parser's message ("Invalid header token", "Bad status
# line"); what follows them quotes the raw bytes received, which can be anything.
_SUMMARY_RE = re.compile(r"[A-Za-z][A-Za-z0-9 ,()-]*")
_E = TypeVar("_E", bound=BaseException)
_PRINTABLE_ASCII_RE = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """One request: the URL, its query or JSON body, and the (already resolved) headers.

    ``url`` is the endpoint as configured (a string, checked once per run) or a
    next link of a chain of pages (a ``URL`` carrying its own query).
    """

    url: str | URL
    params: list[tuple[str, str]] | None
    headers: Mapping[str, str]
    secret_header_names: frozenset[str] = frozenset()
    method: str = "GET"
    json: Any = None
    auth: AuthProvider | None = None
    endpoint: str | None = None  # the configured one: errors may name its origin


@dataclass(frozen=True, slots=True)
class RequestShape:
    """How every request of a run is built (CONTRACT §12): method, where params go, secrets.

    Built once per run; ``request`` makes one item's (or one page's) ``FetchRequest``.
    """

    endpoint: str
    headers: Mapping[str, str]
    secret_header_names: frozenset[str] = frozenset()
    method: str = "GET"
    params_in: str = "query"
    secret_params: Mapping[str, str] = field(default_factory=dict)
    auth: AuthProvider | None = None

    def request(
        self,
        params: Mapping[str, Any],
        extra: Sequence[tuple[str, str | int]] = (),
        url: URL | None = None,
    ) -> FetchRequest:
        """The request for ``params`` with ``extra`` (pagination) params set on top.

        ``url`` is a next link: fetched with GET as given, with only the secret
        params its query lacks added (the link carries the rest).
        """
        if url is not None:
            missing = [(k, v) for k, v in self.secret_params.items() if k not in url.query]
            return self._make(url, (missing if self.params_in == "query" else []) or None, None)
        if self.params_in == "json":
            body = {**params, **dict(extra), **self.secret_params}
            return self._make(self.endpoint, None, body, self.method)
        if extra:
            params = {**params, **dict(extra)}
        query = encode_params(params)
        if self.secret_params:
            query.extend(self.secret_params.items())
        return self._make(self.endpoint, query, None, self.method)

    def _make(
        self, url: str | URL, query: list[tuple[str, str]] | None, body: Any, method: str = "GET"
    ) -> FetchRequest:
        return FetchRequest(
            url=url,
            params=query,
            headers=self.headers,
            secret_header_names=self.secret_header_names,
            method=method,
            json=body,
            auth=self.auth,
            endpoint=self.endpoint,
        )


def make_http_session(
    *, concurrency: int, policy: NetPolicy, connect_timeout_s: float, read_timeout_s: float
) -> aiohttp.ClientSession:
    """The run's one session; its pool is sized by ``concurrency`` (STYLE §7).

    aiohttp's default pool of 100 would silently cap a larger semaphore.
    """
    connector = aiohttp.TCPConnector(
        limit=concurrency,
        limit_per_host=0,
        ttl_dns_cache=DNS_CACHE_TTL_S,
        resolver=GuardedResolver(policy=policy),
    )
    # A private seam of the pinned aiohttp; see _BodyErrorsReachTheBody.
    connector._factory = functools.partial(  # type: ignore[assignment]
        _BodyErrorsReachTheBody, loop=connector._loop
    )
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        trust_env=False,  # never route API calls through a proxy from the environment
        headers={"User-Agent": USER_AGENT},
        raise_for_status=False,
    )


class _BodyErrorsReachTheBody(ResponseHandler):
    """aiohttp's protocol, passing a mid-body parser error on to the body reader.

    With aiohttp's C parser (3.14.5), a malformed chunk size after the body has
    started is set on the connection only: the body reader then waits forever,
    and the read timeout has been dropped. A hostile API could hold an item
    until ``attempt_timeout_s``. tests/functional/test_secret_echo.py covers it.
    """

    def set_exception(self, exc: BaseException, exc_cause: BaseException = _EXC_SENTINEL) -> None:
        payload = self._payload
        super().set_exception(exc, exc_cause)
        if not isinstance(exc, HttpProcessingError):
            return  # timeouts and lost connections reach the body already
        if payload is not None and payload.exception() is None and not payload.is_eof():
            error = aiohttp.ClientPayloadError("response body could not be parsed")
            error.__cause__ = exc
            payload.set_exception(error)


def encode_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Query pairs from event params: booleans as true/false, lists as repeated keys."""
    pairs: list[tuple[str, str]] = []
    for name, value in params.items():
        values = value if isinstance(value, list) else [value]
        pairs.extend((name, _scalar(v)) for v in values)
    return pairs


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class open_response:  # lower case: used as a function, ``async with open_response(...)``
    """Send ``request`` following redirects by hand; the block gets a 2xx response.

    Redirects are followed here rather than by aiohttp so that every hop is
    checked against the policy and credentials never cross origins. With an
    auth provider, a 401 gets one more try with fresh credentials. The response
    is released when the block ends, whatever it raised.

    A class, not an ``asynccontextmanager``: every attempt enters one, and the
    generator version cost an async generator and contextlib's frames per attempt
    (docs/PERFORMANCE.md).

    Raises:
        FetchError: any failure, already translated.
    """

    __slots__ = ("policy", "request", "response", "session")

    def __init__(
        self, session: aiohttp.ClientSession, request: FetchRequest, policy: NetPolicy
    ) -> None:
        self.session, self.request, self.policy = session, request, policy

    async def __aenter__(self) -> aiohttp.ClientResponse:
        request, policy = self.request, self.policy
        if isinstance(request.url, str):
            url = _checked_endpoint(request.url, policy)
        else:
            url = check_url(request.url, policy)
        retried = False
        while True:
            headers: Mapping[str, str] = request.headers
            if request.auth is not None:
                headers = {**request.headers, **await request.auth.headers()}
            try:
                self.response = await _follow(self.session, request, url, headers, policy)
            except HTTPStatusError as exc:
                if exc.status != 401 or request.auth is None or retried:
                    raise
                retried = True
                if not await request.auth.on_unauthorized(headers):
                    raise
                continue
            return self.response

    async def __aexit__(self, *exc: object) -> None:
        self.response.release()


async def _follow(
    session: aiohttp.ClientSession,
    request: FetchRequest,
    url: URL,
    headers: Mapping[str, str],
    policy: NetPolicy,
) -> aiohttp.ClientResponse:
    """The first non-redirect answer, which must be a 2xx (returned unreleased)."""
    hop = _Hop(request.method, request.params, request.json, dict(headers))
    for redirects in range(MAX_REDIRECTS + 1):
        response = await _send(session, url, hop, request, redirected=redirects > 0)
        if response.status not in REDIRECT_STATUSES:
            try:
                _raise_for_status(response)
            except BaseException:
                response.release()
                raise
            return response
        try:
            next_url = _redirect_target(response, policy)
        finally:
            response.release()
        hop = hop.redirected(response.status, url, next_url, request.secret_header_names)
        url = next_url
    raise HTTPStatusError(
        f"more than {MAX_REDIRECTS} redirects", status=response.status, retryable=False
    )


@dataclass(frozen=True, slots=True)
class _Hop:
    """What one hop of a redirect chain sends."""

    method: str
    params: list[tuple[str, str]] | None
    json: Any
    headers: dict[str, str]

    def redirected(self, status: int, url: URL, target: URL, secret_names: frozenset[str]) -> _Hop:
        # 307/308 repeat the request as it was; the others become a plain GET (as browsers do).
        keep = status in (307, 308)
        body = self.json if keep else None
        cross = target.origin() != url.origin()
        if cross and body is not None:
            raise BlockedError("a redirect to another origin would resend the request body")
        headers = _same_origin_only(self.headers, secret_names) if cross else self.headers
        return _Hop(self.method if keep else "GET", None, body, headers)


@functools.lru_cache(maxsize=64)
def _checked_endpoint(url: str, policy: NetPolicy) -> URL:
    """``check_url`` for the endpoint, once per distinct URL and policy, not per request.

    A pure function of its (immutable) arguments; redirect targets are still
    checked on every hop, and resolved addresses in the connector.
    """
    return check_url(url, policy)


def _same_origin_only(headers: Mapping[str, str], secret_names: frozenset[str]) -> dict[str, str]:
    """Drop credentials before following a redirect to another origin (as browsers do)."""
    dropped = {name.lower() for name in secret_names} | CREDENTIAL_HEADERS
    return {k: v for k, v in headers.items() if k.lower() not in dropped}


@dataclass(frozen=True, slots=True)
class Place:
    """Where a request went, as an error may name it."""

    text: str
    chosen_by_api: bool  # a redirect target or next link: the API wrote its URL


def _place(url: URL, request: FetchRequest, *, redirected: bool) -> Place:
    if not redirected and isinstance(request.url, str):
        return Place(f"{url.origin()}{url.raw_path}", chosen_by_api=False)
    what = "a redirect target" if redirected else "a next link"
    known = _origin_of(request.endpoint) if request.endpoint else None
    if known is not None and url.origin() == known:
        return Place(f"{what} on {known}", chosen_by_api=True)
    return Place(what, chosen_by_api=True)


@functools.lru_cache(maxsize=64)
def _origin_of(endpoint: str) -> URL | None:
    try:
        return URL(endpoint).origin()
    except ValueError:  # checked before any request; an unusable one names nothing
        return None


async def _send(
    session: aiohttp.ClientSession, url: URL, hop: _Hop, request: FetchRequest, *, redirected: bool
) -> aiohttp.ClientResponse:
    """One hop; an error names where it went (``_place``, built only then: ~2.6 µs a request)."""
    try:
        if hop.method == "GET" and hop.json is None:
            return await session.get(
                url, params=hop.params, headers=hop.headers, allow_redirects=False
            )
        return await session.request(
            hop.method,
            url,
            params=hop.params,
            json=hop.json,
            headers=hop.headers,
            allow_redirects=False,
        )
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        place = _place(url, request, redirected=redirected)
        raise translate_client_error(exc, place=place) from exc
    except ValueError as exc:
        # yarl or aiohttp refusing a URL they cannot build; their message quotes it.
        raise BlockedError(f"the URL could not be used ({type(exc).__name__})") from exc


def _redirect_target(response: aiohttp.ClientResponse, policy: NetPolicy) -> URL:
    location = response.headers.get("Location")
    if not location:
        raise HTTPStatusError(
            f"HTTP {response.status} redirect without Location",
            status=response.status,
            retryable=False,
        )
    try:
        target = response.url.join(URL(location))
    except (ValueError, TypeError):
        # Refused like any URL check_url cannot parse; yarl's message would quote it.
        raise BlockedError(
            f"HTTP {response.status} redirect to a Location that is not a valid URL"
        ) from None
    try:
        return check_url(target, policy)
    except BlockedError as exc:
        # The API wrote the target: name the refusal, never its host or scheme.
        raise BlockedError(f"HTTP {response.status} redirect refused: {exc.reason}") from None


def _raise_for_status(response: aiohttp.ClientResponse) -> None:
    if 200 <= response.status < 300:
        return
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    raise HTTPStatusError(
        f"HTTP {response.status}",
        status=response.status,
        retryable=is_retryable_status(response.status),
        retry_after_s=retry_after,
    )


async def iter_body(response: aiohttp.ClientResponse, chunk_size: int) -> AsyncIterator[bytes]:
    """The decoded body in chunks of at most ``chunk_size``, errors translated."""
    try:
        async for chunk in response.content.iter_chunked(chunk_size):
            yield chunk
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise translate_client_error(exc, mid_body=True) from exc


# Order matters: the first matching class wins, so subclasses come first.
# (aiohttp class, ours, retryable, what the message says happened)
_TRANSLATIONS: tuple[tuple[type[BaseException], type[FetchError], bool, str], ...] = (
    (aiohttp.ClientPayloadError, TruncatedBody, True, "the body could not be read"),
    (aiohttp.ConnectionTimeoutError, FetchTimeout, True, "connect timeout"),
    (aiohttp.SocketTimeoutError, FetchTimeout, True, "read timeout"),
    (aiohttp.ServerTimeoutError, FetchTimeout, True, "timeout"),
    (aiohttp.ClientConnectorCertificateError, FetchConnectionError, False, "TLS certificate"),
    (aiohttp.ClientSSLError, FetchConnectionError, False, "TLS error"),
    (aiohttp.ServerFingerprintMismatch, FetchConnectionError, False, "TLS fingerprint mismatch"),
    (aiohttp.InvalidURL, BlockedError, False, "URL refused by the HTTP client"),
    (aiohttp.ClientConnectionResetError, FetchConnectionError, True, "connection reset"),
    (aiohttp.ServerDisconnectedError, FetchConnectionError, True, "server disconnected"),
    (aiohttp.ClientConnectorError, FetchConnectionError, True, "cannot connect"),
    (aiohttp.ClientOSError, FetchConnectionError, True, "connection error"),
    (aiohttp.ClientConnectionError, FetchConnectionError, True, "connection error"),
    (aiohttp.ClientResponseError, FetchConnectionError, True, "unexpected response"),
    (aiohttp.ClientError, FetchConnectionError, True, "HTTP client error"),
    (asyncio.TimeoutError, FetchTimeout, True, "timeout"),
    (OSError, FetchConnectionError, True, "connection error"),
)


def translate_client_error(
    exc: BaseException, *, mid_body: bool = False, place: Place | None = None
) -> FetchError:
    """Map an aiohttp (or socket) exception to ours; the one place that does so.

    A connection lost after the body started is ``TruncatedBody``: the bytes we
    have are not the whole answer. Messages are built from what we know (see
    the module docstring): never a header value, a query string, or a URL the
    API chose.
    """
    blocked = _blocked_cause(exc)
    if blocked is not None:
        if place is not None and place.chosen_by_api:
            return BlockedError(f"{place.text} refused: {blocked.reason}")
        return blocked
    if _caused_by(exc, ContentEncodingError):
        # Brotli without the Brotli package, a corrupt gzip: a retry gets the same bytes.
        return InvalidBody("the body's Content-Encoding could not be decoded")
    if isinstance(exc, aiohttp.ClientResponseError) and exc.status >= 400:
        # aiohttp reports malformed answers (e.g. oversized headers) as a 400 it made up.
        # Its message quotes the bytes received, which may echo a credential: summarise.
        return FetchConnectionError(f"malformed response: {_parser_summary(exc.message)}")
    if isinstance(exc, aiohttp.InvalidURL):
        # Its text is the URL itself; the description says what is wrong with it.
        return BlockedError(f"URL refused by the HTTP client: {exc.description or 'invalid'}")
    for source, target, retryable, phrase in _TRANSLATIONS:
        if isinstance(exc, source):
            if mid_body and target is FetchConnectionError:
                target = TruncatedBody
            error = target(_describe(exc, phrase, place))
            error.retryable = retryable
            return error
    raise TypeError(f"not an HTTP client error: {type(exc).__name__}")  # programming error


def _blocked_cause(exc: BaseException) -> BlockedError | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, BlockedError):
            return seen
        nested = getattr(seen, "os_error", None)
        if isinstance(nested, BlockedError):
            return nested
        seen = seen.__cause__ or seen.__context__
    return None


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return _cause_of_type(exc, kind) is not None


def _cause_of_type(exc: BaseException, kind: type[_E]) -> _E | None:
    seen: BaseException | None = exc
    for _ in range(10):  # causes can loop; aiohttp's chains are 2-3 deep
        if seen is None:
            return None
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _parser_summary(message: object) -> str:
    """The leading words of an HTTP parser's message, never the bytes it quotes."""
    first = str(message).split("\n", 1)[0].split(":", 1)[0].strip()
    match = _SUMMARY_RE.match(first)
    return clip(match.group(0).strip(), 100) if match else "unparsable"


def _describe(exc: BaseException, phrase: str, place: Place | None) -> str:
    """``ConnectionTimeoutError: connect timeout (https://api.example.com/v1/data)``.

    A payload error adds the leading words of the parser's message; an OS error
    its errno's description (``Connection refused``); nothing else of the
    library's text, which quotes the URL and its query.
    """
    text = f"{type(exc).__name__}: {phrase}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        text = f"{type(exc).__name__}: {_parser_summary(exc)}"
        parser_error = _cause_of_type(exc, HttpProcessingError)
        if parser_error is not None:
            text = f"{text}: {_parser_summary(parser_error.message)}"
    elif (number := _errno_of(exc)) is not None:
        text = f"{text}: {os.strerror(number)}"
    return f"{text} ({place.text})" if place is not None else text


def _errno_of(exc: BaseException) -> int | None:
    os_error = getattr(exc, "os_error", exc)  # ClientConnectorError wraps the OSError
    number = getattr(os_error, "errno", None)
    return number if isinstance(number, int) and number in errno.errorcode else None


def safe_content_type(value: str | None) -> str | None:
    """The response's ``Content-Type`` as printable ASCII, or None.

    HTTP allows Latin-1 bytes in header values; S3 metadata and SigV4's
    canonical headers do not. The media type alone is kept when its parameters
    hold other bytes; a value that is unreadable even so counts as absent.
    """
    if value is None:
        return None
    value = value.split(",")[0].strip()[:MAX_CONTENT_TYPE]
    if _PRINTABLE_ASCII_RE.fullmatch(value):
        return value or None
    media_type = value.split(";")[0].strip()
    return media_type if media_type and _PRINTABLE_ASCII_RE.fullmatch(media_type) else None
