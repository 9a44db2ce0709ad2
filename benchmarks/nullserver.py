"""The leanest HTTP peer this machine can offer: a static JSON API and a null sink.

One raw-asyncio protocol (no aiohttp, no routing, no per-request task) plays both
parts, in its own process:

* any ``GET`` answers ``200`` with one of ``BODY_VARIANTS`` precomputed JSON arrays
  of exactly ``--body-bytes`` bytes, in turn: varied records (ids, timestamps,
  station codes, floats, short notes), compact and without a raw newline, so gzip
  sees realistic data rather than one record repeated;
* any ``PUT`` or ``POST`` is read to its end and answered ``200`` with an empty
  body and nothing else, as an nginx ``return 200`` would: no ETag, no XML, no
  MD5. Only the path and the size are remembered, for the harness's check.

``GET /_stats?prefix=P`` answers ``{"objects", "object_bytes", "puts", "gets"}``
for the PUT paths containing ``P``, the shape ``servers.count_objects`` reads.

Why not the aiohttp fake API and sink of ``servers.py``: they compute a body per
query string and an MD5 per PUT, and answer with S3's headers. A slower peer makes
the *client* wake up more often per item and parse more headers, which adds the
same few tens of µs to the floor and to ours, and so flatters the ratio
(docs/PERFORMANCE.md, "Round three"). This peer keeps the servers out of the way.

    python -m benchmarks.nullserver --port 9000 --body-bytes 9000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import urllib.parse
from typing import Any

HOST = "127.0.0.1"
BODY_VARIANTS = 64  # served in turn: a 32 KB deflate window never sees a repeat
HEADER_END = b"\r\n\r\n"
MAX_HEADER_BYTES = 64 * 1024
EMPTY_200 = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
STATIONS = ("KSEA", "KPDX", "EGLL", "LFPG", "EDDF", "RJTT", "YSSY", "CYYZ")


def varied_body(size: int, seed: int) -> bytes:
    """A compact JSON array of readings of exactly ``size`` bytes (the last note padded)."""
    rng = random.Random(seed)
    records: list[bytes] = []
    used = 2  # the brackets

    def record(note: str) -> bytes:
        return json.dumps(
            {
                "id": rng.randrange(10**9),
                "ts": f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T"
                f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00Z",
                "station": rng.choice(STATIONS),
                "temp_c": round(rng.uniform(-30, 45), 2),
                "wind_kt": rng.randint(0, 60),
                "ok": rng.random() > 0.1,
                "note": note,
            },
            separators=(",", ":"),
        ).encode()

    while True:
        nxt = record(f"n{rng.randrange(10**6)}")
        if used + len(nxt) + 1 + 120 > size:  # room left for a padded last record
            break
        records.append(nxt)
        used += len(nxt) + 1
    last = record("")
    pad = size - used - len(last)
    if pad < 0:
        raise ValueError(f"body of {size} bytes is too small")
    last = last.replace(b'"note":""', b'"note":"' + b"x" * pad + b'"')
    body = b"[" + b",".join([*records, last]) + b"]"
    assert len(body) == size, (len(body), size)
    return body


class NullState:
    """What the server remembers: PUT path -> size, and request counts."""

    def __init__(self, body_bytes: int) -> None:
        self.responses = [
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (body_bytes, varied_body(body_bytes, seed))
            for seed in range(BODY_VARIANTS)
        ]
        self.turn = 0
        self.objects: dict[str, int] = {}
        self.gets = 0
        self.puts = 0

    def next_body(self) -> bytes:
        self.turn = (self.turn + 1) % len(self.responses)
        return self.responses[self.turn]

    def stats(self, target: str) -> bytes:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
        prefix = query.get("prefix", [""])[0]
        hits = [size for path, size in self.objects.items() if prefix in path]
        body = json.dumps(
            {"objects": len(hits), "object_bytes": sum(hits), "puts": self.puts, "gets": self.gets}
        ).encode()
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


class NullProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length or chunked request bodies, no pipelining needed."""

    def __init__(self, state: NullState) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self._one_request():
            pass

    def _one_request(self) -> bool:
        end = self.buffer.find(HEADER_END)
        if end < 0:
            if len(self.buffer) > MAX_HEADER_BYTES:
                self.transport.close()
            return False
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        method, target, _ = head[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in head[1:])}
        body_at = end + len(HEADER_END)
        size = self._body_size(headers, body_at)
        if size is None:
            return False  # the body is not all here yet
        taken, body_bytes = size
        del self.buffer[: body_at + taken]
        self._answer(method, target, body_bytes)
        return True

    def _body_size(self, headers: dict[str, str], body_at: int) -> tuple[int, int] | None:
        """(bytes to consume after the head, body bytes) once the whole body is buffered."""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._chunked(body_at)
        length = int(headers.get("content-length", "0"))
        return (length, length) if len(self.buffer) - body_at >= length else None

    def _chunked(self, at: int) -> tuple[int, int] | None:
        pos, total = at, 0
        while True:
            line_end = self.buffer.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(bytes(self.buffer[pos:line_end]).split(b";")[0], 16)
            pos = line_end + 2 + size + 2
            if size == 0:
                trailer = self.buffer.find(b"\r\n", line_end + 2)
                if trailer < 0:
                    return None
                return trailer + 2 - at, total
            if len(self.buffer) < pos:
                return None
            total += size

    def _answer(self, method: str, target: str, body_bytes: int) -> None:
        if method == "GET" and target.startswith("/_stats"):
            self.transport.write(self.state.stats(target))
        elif method in ("GET", "HEAD"):
            self.state.gets += 1
            self.transport.write(self.state.next_body())
        else:
            self.state.puts += 1
            self.state.objects[target.split("?", 1)[0]] = body_bytes
            self.transport.write(EMPTY_200)


async def serve(port: int, body_bytes: int) -> None:
    """Listen on 127.0.0.1:``port`` until cancelled."""
    state = NullState(body_bytes)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: NullProtocol(state), HOST, port, backlog=1024)
    print(f"null server listening on http://{HOST}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Run the server in the foreground, on uvloop when it imports (the leanest loop here)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nullserver")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body-bytes", type=int, default=9_000)
    args = parser.parse_args(argv)
    factory: Any = None
    with contextlib.suppress(ImportError):
        import uvloop

        factory = uvloop.new_event_loop
    with contextlib.suppress(KeyboardInterrupt), asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.port, args.body_bytes))


if __name__ == "__main__":
    main()
