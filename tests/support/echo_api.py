"""A raw HTTP/1.1 server that echoes the request's ``Authorization`` into malformed answers.

aiohttp's own server will not emit a broken status line, header or chunk size, so
this one writes bytes to the socket itself. The ``answer`` query parameter picks the answer;
``TOKEN`` in it stands for the whole Authorization value and ``CRED`` for the
credentials without their scheme (what a careless server would put in a URL).
"""

from __future__ import annotations

import socketserver
import threading
import time
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs

LONG_LINE_REPEAT = 1000  # well past aiohttp's 8190-byte line limit

ANSWERS: dict[str, list[bytes]] = {
    "content-length": [b"HTTP/1.1 200 OK\r\nContent-Length: TOKEN\r\n\r\n{}"],
    "header-name": [b"HTTP/1.1 200 OK\r\nTOKEN: x\r\nContent-Length: 2\r\n\r\n{}"],
    "long-line": [
        b"HTTP/1.1 200 OK\r\nX-Echo: " + b"TOKEN" * LONG_LINE_REPEAT + b"\r\n"
        b"Content-Length: 2\r\n\r\n{}"
    ],
    "status-line": [b"HTTP/1.1 TOKEN\r\nContent-Length: 2\r\n\r\n{}"],
    "chunk-size": [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nTOKEN\r\n{}\r\n0\r\n\r\n"
    ],
    # Headers and a first chunk, then (after a pause, so the body has started) a bad size.
    "chunk-size-mid-body": [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n",
        b"TOKEN\r\n{}\r\n0\r\n\r\n",
    ],
    "redirect-unparsable": [
        b"HTTP/1.1 302 Found\r\nLocation: http://[CRED/next\r\nContent-Length: 0\r\n\r\n"
    ],
    "redirect-not-allowed": [
        b"HTTP/1.1 302 Found\r\nLocation: http://CRED.example.test/next\r\n"
        b"Content-Length: 0\r\n\r\n"
    ],
}
# Answers that need no echo: HTTP allows them, aiohttp's server will not send them.
ANSWERS_PLAIN: dict[str, list[bytes]] = {
    # A Latin-1 byte in a header value, allowed by HTTP (RFC 9110 obs-text).
    "latin1-content-type": [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=\xe9t\xe9\r\n"
        b'Content-Length: 10\r\n\r\n[{"a": 1}]'
    ],
    # Brotli from a server that ignores Accept-Encoding (and bytes no decoder accepts).
    "brotli": [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: br\r\n"
        b"Content-Length: 8\r\n\r\n\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"
    ],
}
PAUSE_S = 0.1


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.request.recv(65536)
            if not data:
                return
            head += data
        request_line, *lines = head.split(b"\r\n\r\n")[0].split(b"\r\n")
        query = parse_qs(request_line.split(b" ")[1].partition(b"?")[2].decode())
        token = b""
        for line in lines:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                token = value.strip()
        credentials = token.partition(b" ")[2] or token
        answer = query["answer"][0]
        hits = self.server.hits  # type: ignore[attr-defined]
        hits[answer] = hits.get(answer, 0) + 1
        for index, part in enumerate({**ANSWERS, **ANSWERS_PLAIN}[answer]):
            if index:
                time.sleep(PAUSE_S)
            self.request.sendall(part.replace(b"TOKEN", token).replace(b"CRED", credentials))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    hits: dict[str, int]


class EchoingAPI:
    """Started on a free loopback port by ``with EchoingAPI() as api``; ``api.url``."""

    def __init__(self) -> None:
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hits = {}
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def hits(self) -> dict[str, int]:
        """Requests received per answer."""
        return self._server.hits

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
