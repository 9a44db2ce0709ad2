"""An API that writes back every secret it is sent, in every place an answer has (issue 20).

``HostileAPI`` is an aiohttp app (serve it with the ``api_server`` fixture). The
answer to a request is picked by its ``answer`` query parameter, or by its
``date`` parameter (the *n*-th day of ``DAY_ZERO`` gets ``answers[n]``), so a
``backfill --start --end`` run meets one answer per item. What it echoes:

- ``POST /token``: an OAuth2 token endpoint handing out ``access_token``;
- ``TOKEN``: the ``Authorization`` value as received; ``CRED``: it without its
  scheme; ``KEY``: the ``api_key`` query (or JSON body) parameter, decoded;
- into a 2xx body (data: it is stored as received), an error body, response
  headers, a ``Location`` (host, path, query), a ``Link: rel="next"`` (host,
  path, query), a total of a paginated answer, and raw malformed answers
  (status line, header name, chunk size) written to the socket;
- redirects to ``blackhole`` (a port whose backlog is full: the connection times
  out) and ``refused`` (a closed port), with the secrets in the path and query.

``ConnectTimeoutPort`` and ``closed_port`` are those two targets.
"""

from __future__ import annotations

import datetime as dt
import json
import socket
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self
from urllib.parse import quote

from aiohttp import web

from tests.support.echo_api import ANSWERS as ECHO_ANSWERS

DAY_ZERO = dt.date(2025, 1, 1)
SECRET_PARAM = "api_key"
BACKLOG_FILLERS = 4  # more than a listen(0) backlog holds on Linux
# echo_api's malformed answers (TOKEN, CRED), and the secret param (KEY) in two more.
RAW_ANSWERS: dict[str, list[bytes]] = {
    **ECHO_ANSWERS,
    "key-content-length": [b"HTTP/1.1 200 OK\r\nX-K: KEY\r\nContent-Length: KEY\r\n\r\n{}"],
    "key-location": [
        b"HTTP/1.1 302 Found\r\nLocation: http://[KEY/next?k=KEY\r\nContent-Length: 0\r\n\r\n"
    ],
}


class ConnectTimeoutPort:
    """A loopback port that never completes a handshake: ``listen(0)`` with a full backlog.

    The kernel drops further SYNs once the backlog is full, so a client's connect
    times out (``ConnectionTimeoutError``), as against a filtered host.
    """

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(0)
        self.port: int = self._listener.getsockname()[1]
        self._fillers: list[socket.socket] = []
        for _ in range(BACKLOG_FILLERS):
            filler = socket.socket()
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", self.port))
            except BlockingIOError:
                pass
            self._fillers.append(filler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sock in [*self._fillers, self._listener]:
            sock.close()


def closed_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def day(index: int) -> str:
    """The date whose item gets ``answers[index]``."""
    return (DAY_ZERO + dt.timedelta(days=index)).isoformat()


Echo = Callable[[web.Request, dict[str, str]], web.StreamResponse]

# Every answer; next links and totals only mean something with pagination.
ANSWER_NAMES: tuple[str, ...] = (
    "ok",
    "ok-echo-headers",
    "error-body",
    "unauthorized",
    "redirect-host",
    "redirect-path",
    "redirect-loop",
    "redirect-blackhole",
    "redirect-refused",
    "next-link-host",
    "next-link-path",
    "next-link-loop",
    "total",
    *(f"raw-{name}" for name in RAW_ANSWERS),
)


class HostileAPI:
    """The aiohttp app; ``answers`` is the answer of each day, in order."""

    def __init__(self, answers: Sequence[str], *, blackhole: str, refused: str) -> None:
        self.answers = list(answers)
        self.blackhole = blackhole
        self.refused = refused
        self.access_token = ""  # what POST /token hands out (OAuth2 client credentials)
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            return await self._token(request)
        secrets = await _secrets_of(request)
        answer = request.query.get("answer") or self._answer_for(request.query.get("date"))
        if _later_page(request) and answer not in ("total", "next-link-loop"):
            return web.json_response([])  # 0 records: the chain ends
        if answer.startswith("raw-"):
            return await _raw(request, RAW_ANSWERS[answer[4:]], secrets)
        return _ANSWERS[answer](self, request, secrets)

    async def _token(self, request: web.Request) -> web.StreamResponse:
        """The token endpoint: the token, with the client's credentials echoed in headers."""
        form = await request.post()
        echoed = {f"X-Echo-{k}": _one_line(str(v)) for k, v in form.items() if k.startswith("c")}
        body = {"access_token": self.access_token, "expires_in": 3600, "token_type": "Bearer"}
        return web.json_response(body, headers=echoed)

    def _answer_for(self, date: str | None) -> str:
        if not date:
            return "ok"
        index = (dt.date.fromisoformat(date) - DAY_ZERO).days
        return self.answers[index] if 0 <= index < len(self.answers) else "ok"


def _later_page(request: web.Request) -> bool:
    """A page after the first of page_number or cursor pagination."""
    page = request.query.get("page", "")
    return "cursor" in request.query or (page.isdigit() and int(page) > 1)


async def _secrets_of(request: web.Request) -> dict[str, str]:
    token = request.headers.get("Authorization", "")
    key = request.query.get(SECRET_PARAM, "")
    if not key and request.can_read_body:
        try:
            body = json.loads(await request.read())
            key = str(body.get(SECRET_PARAM, "")) if isinstance(body, dict) else ""
        except ValueError:
            key = ""
    return {"TOKEN": token, "CRED": token.partition(" ")[2] or token, "KEY": key}


def _all(secrets: dict[str, str]) -> str:
    return " ".join(secrets.values())


def _echo_headers(secrets: dict[str, str]) -> dict[str, str]:
    # Header values must be one line; a secret's own CR/LF would split the answer.
    return {f"X-Echo-{name}": _one_line(value) for name, value in secrets.items() if value}


def _one_line(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ")


def _ok(api: HostileAPI, request: web.Request, secrets: dict[str, str]) -> web.StreamResponse:
    # Data: the secrets are stored as the API wrote them (a value it returns is data).
    return web.json_response([{"echo": _all(secrets)}])


def _ok_headers(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    return web.json_response([{"n": 1}], headers=_echo_headers(s))


def _error_body(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    body = {"error": f"bad credentials {_all(s)}", "token": s["TOKEN"], "key": s["KEY"]}
    return web.json_response(body, status=500, headers=_echo_headers(s))


def _unauthorized(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    headers = {**_echo_headers(s), "WWW-Authenticate": f'Bearer error="{_one_line(s["CRED"])}"'}
    return web.json_response({"error": s["TOKEN"]}, status=401, headers=headers)


def _redirect(location: str, s: dict[str, str]) -> web.StreamResponse:
    return web.Response(status=302, headers={"Location": location, **_echo_headers(s)})


def _host_label(text: str) -> str:
    return _one_line(text).replace("/", "-").replace("?", "-").replace("#", "-")


def _redirect_host(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    return _redirect(f"http://{_host_label(s['CRED'])}.example.test/next?k={quote(s['KEY'])}", s)


def _redirect_path(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    # Same origin: followed, and answered with an error that echoes again.
    return _redirect(f"/{quote(s['CRED'])}/{quote(s['KEY'])}?answer=error-body&k={s['KEY']}", s)


def _redirect_loop(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    return _redirect(f"/loop/{quote(s['CRED'])}?answer=redirect-loop&k={quote(s['KEY'])}", s)


def _to(base: str) -> Echo:
    def redirect(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
        target = getattr(api, base)
        return _redirect(f"{target}/{quote(s['CRED'])}?k={quote(s['KEY'])}&t={s['TOKEN']}", s)

    return redirect  # type: ignore[return-value]


def _link(api: HostileAPI, target: str, s: dict[str, str]) -> web.StreamResponse:
    # In the Link header (link_header) and the body (json_link, or a cursor).
    headers = {"Link": f'<{target}>; rel="next"', **_echo_headers(s)}
    return web.json_response({"data": [{"n": 1}], "next": target}, headers=headers)


def _next_host(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    return _link(api, f"http://{_host_label(s['CRED'])}.example.test/p?k={quote(s['KEY'])}", s)


def _next_path(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    return _link(api, f"/p/{quote(s['CRED'])}?answer=error-body&k={quote(s['KEY'])}", s)


def _next_loop(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    return _link(api, f"{request.path_qs}", s)


def _total(api: HostileAPI, request: web.Request, s: dict[str, str]) -> web.StreamResponse:
    return web.json_response({"data": [{"n": 1}], "total": s["KEY"]}, headers=_echo_headers(s))


async def _raw(request: web.Request, parts: list[bytes], s: dict[str, str]) -> web.StreamResponse:
    """Bytes no HTTP server would send, the secrets in them, then the connection closed."""
    transport = request.transport
    assert transport is not None
    for part in parts:
        data = part.replace(b"TOKEN", s["TOKEN"].encode()).replace(b"CRED", s["CRED"].encode())
        transport.write(data.replace(b"KEY", s["KEY"].encode()))
    transport.close()
    return web.Response()  # never sent: the connection is gone


_ANSWERS: dict[str, Echo] = {
    "ok": _ok,
    "ok-echo-headers": _ok_headers,
    "error-body": _error_body,
    "unauthorized": _unauthorized,
    "redirect-host": _redirect_host,
    "redirect-path": _redirect_path,
    "redirect-loop": _redirect_loop,
    "redirect-blackhole": _to("blackhole"),
    "redirect-refused": _to("refused"),
    "next-link-host": _next_host,
    "next-link-path": _next_path,
    "next-link-loop": _next_loop,
    "total": _total,
}
