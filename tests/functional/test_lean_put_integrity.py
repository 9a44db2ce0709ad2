"""The lean PUT leaves the payload hash out but keeps the body verifiable.

Its SigV4 payload hash is ``UNSIGNED-PAYLOAD`` (no SHA-256 of every body); the
body's MD5 goes as ``Content-MD5``, which S3 checks against the bytes it received
and which is one of the signed headers, so it cannot be swapped in transit.
"""

from __future__ import annotations

import base64
import hashlib
from types import SimpleNamespace

import aiohttp
from aiohttp import web

from ingest_core.sigv4 import UNSIGNED_PAYLOAD, Credentials
from ingest_core.writers import ObjectMeta, S3Writer
from tests.conftest import StartServer


class _Md5CheckingS3:
    """Answers PUTs as S3 does about Content-MD5: 400 BadDigest when it does not match."""

    def __init__(self) -> None:
        self.seen: list[tuple[dict[str, str], bytes]] = []
        self.app = web.Application()
        self.app.router.add_put("/{tail:.*}", self._put)

    async def _put(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.seen.append((dict(request.headers), body))
        sent = request.headers.get("Content-MD5")
        if sent is not None and sent != base64.b64encode(hashlib.md5(body).digest()).decode():
            return web.Response(status=400, text="<Error><Code>BadDigest</Code></Error>")
        return web.Response(status=200)


class _FrozenCredentials:
    async def get_frozen_credentials(self) -> Credentials:
        return Credentials("AKIDEXAMPLE", "secret")


async def test_lean_put_sends_a_signed_md5_and_no_payload_hash(api_server: StartServer) -> None:
    # GIVEN an S3 stand-in that checks Content-MD5, and a lean writer pointed at it
    s3 = _Md5CheckingS3()
    server = api_server(s3)
    body = b'[{"a": 1}, {"b": 2}]' * 400
    async with aiohttp.ClientSession() as http:
        writer = S3Writer(
            client=SimpleNamespace(meta=SimpleNamespace(region_name="us-east-1")),
            bucket="raw-bucket",
            credentials=_FrozenCredentials(),
            http=http,
            endpoint_url=server.url,
        )
        # WHEN one body is written
        await writer.put("src/2025-01-01/r-0.json", body, ObjectMeta())
    # THEN it arrived whole, with its MD5 as a signed header and no SHA-256 of the body
    [(headers, received)] = s3.seen
    assert received == body
    assert headers["Content-MD5"] == base64.b64encode(hashlib.md5(body).digest()).decode()
    assert headers["x-amz-content-sha256"] == UNSIGNED_PAYLOAD
    signed = headers["Authorization"].split("SignedHeaders=")[1].split(",")[0].split(";")
    assert {"content-md5", "host", "x-amz-content-sha256", "x-amz-date"} <= set(signed)
