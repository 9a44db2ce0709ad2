"""The test support code does what it says: scripted API, fault routes, S3 fault proxy."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import boto3
import botocore.exceptions
import pytest
from aiohttp import web

from tests.conftest import RAW_BUCKET, StartServer
from tests.support.faults import (
    DROPPED,
    FaultyAPI,
    S3FaultProxy,
    expected_bytes,
    expected_sha256,
    gzip_bomb,
    s3_operation,
)
from tests.support.servers import MotoS3, Response, ScriptedAPI, ThreadedApp, default_body

pytestmark = pytest.mark.timeout(30)

MiB = 1024 * 1024


# --------------------------------------------------------------------------- ThreadedApp


def _hello_app() -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    return app


async def _get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


def test_threaded_app_serves_a_sync_caller_that_runs_its_own_loop() -> None:
    # GIVEN an app served from its own thread
    with ThreadedApp(_hello_app()) as server:
        # WHEN sync code runs its own loop against it (as the Lambda handler does)
        text = asyncio.run(_get_text(server.url))
        # THEN it answers on loopback
        assert text == "hello"
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.run(asyncio.sleep(0, result="on the server loop")) == "on the server loop"
    # AND stopping twice is harmless
    server.stop()


async def test_threaded_app_serves_while_the_main_thread_runs_a_loop(
    api_server: StartServer,
) -> None:
    server = api_server(_hello_app())
    assert await _get_text(server.url) == "hello"


# --------------------------------------------------------------------------- ScriptedAPI


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_scripted_api_plays_specs_in_order_and_repeats_the_last(
    api_server: StartServer, http: aiohttp.ClientSession
) -> None:
    # GIVEN one key scripted 503 then 200
    api = ScriptedAPI({"2025-01-03": [Response(status=503), Response(body=b"[1]")]})
    server = api_server(api)
    # WHEN it is hit three times
    statuses, bodies = [], []
    for _ in range(3):
        async with http.get(server.url + "/v1/data", params={"date": "2025-01-03"}) as r:
            statuses.append(r.status)
            bodies.append(await r.read())
    # THEN the script plays, then its last spec repeats
    assert statuses == [503, 200, 200]
    assert bodies[1:] == [b"[1]", b"[1]"]
    assert api.hits["2025-01-03"] == 3


async def test_scripted_api_default_body_and_recorded_headers(
    api_server: StartServer, http: aiohttp.ClientSession
) -> None:
    api = ScriptedAPI()
    server = api_server(api)
    params = {"date": "2025-01-04", "region": "eu"}
    async with http.get(server.url, params=params, headers={"Authorization": "Bearer s3cr3t"}) as r:
        body = await r.read()
    assert r.status == 200
    assert body == default_body(params)
    assert len(json.loads(body)) == 3
    assert api.headers_sent("authorization") == ["Bearer s3cr3t"]
    assert api.requests[0].query == params


@pytest.mark.parametrize(
    "spec",
    [
        Response(drop_mid_body=True),
        Response(short_body=True),
        Response(short_body=True, chunked=True),
    ],
    ids=["drop_mid_body", "short_body", "short_chunked"],
)
async def test_scripted_api_truncations_surface_as_payload_errors(
    api_server: StartServer, http: aiohttp.ClientSession, spec: Response
) -> None:
    server = api_server(ScriptedAPI(default=spec))
    async with http.get(server.url, params={"date": "x"}) as r:
        assert r.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


async def test_scripted_api_stall_trips_a_read_timeout(
    api_server: StartServer, http: aiohttp.ClientSession
) -> None:
    server = api_server(ScriptedAPI(default=Response(stall_s=5)))
    timeout = aiohttp.ClientTimeout(sock_read=0.3)
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(server.url, timeout=timeout) as r:
            await r.read()


async def test_scripted_api_delay_drip_and_chunked(
    api_server: StartServer, http: aiohttp.ClientSession
) -> None:
    spec = Response(body=b"x" * 20, delay_s=0.2, drip_bytes_per_s=50, chunked=True)
    server = api_server(ScriptedAPI(default=spec))
    started = time.monotonic()
    async with http.get(server.url) as r:
        body = await r.read()
    assert body == b"x" * 20
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert time.monotonic() - started >= 0.2 + 0.3  # delay + 20 bytes at 50 B/s (-slack)


# --------------------------------------------------------------------------- FaultyAPI


@pytest.fixture
def faulty(api_server: StartServer) -> Iterator[tuple[FaultyAPI, str]]:
    api = FaultyAPI()
    yield api, api_server(api).url


async def test_faulty_reset_and_short_content_length(
    faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession
) -> None:
    _, url = faulty
    for path in ("/reset-mid-body", "/short-content-length"):
        async with http.get(url + path, params={"size": "4096"}) as r:
            with pytest.raises(aiohttp.ClientPayloadError):
                await r.read()


@pytest.mark.parametrize("when", ["headers", "body"])
async def test_faulty_stall_outlasts_the_read_timeout(
    faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession, when: str
) -> None:
    _, url = faulty
    with pytest.raises(asyncio.TimeoutError):
        async with http.get(
            url + "/stall",
            params={"stall_s": "5", "when": when},
            timeout=aiohttp.ClientTimeout(sock_read=0.3),
        ) as r:
            await r.read()


async def test_faulty_drip_sends_one_byte_per_second(
    faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession
) -> None:
    _, url = faulty
    started = time.monotonic()
    async with http.get(url + "/drip", params={"size": "3"}) as r:
        body = await r.read()
    assert body == b"[0]"
    assert time.monotonic() - started >= 1.9  # bytes leave at t = 0, 1 and 2 s


async def test_faulty_status_times_then_200(
    faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession
) -> None:
    api, url = faulty
    statuses = []
    for _ in range(3):
        async with http.get(url + "/status/503", params={"times": "2", "key": "k1"}) as r:
            statuses.append(r.status)
    async with http.get(url + "/status/404") as r:
        statuses.append(r.status)
    assert statuses == [503, 503, 200, 404]
    assert api.hits["k1"] == 3
    assert api.hits["/status/404"] == 1


async def test_faulty_retry_after_seconds_and_date(
    faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession
) -> None:
    _, url = faulty
    async with http.get(url + "/retry-after-seconds", params={"seconds": "2", "key": "a"}) as r:
        assert (r.status, r.headers["Retry-After"]) == (429, "2")
    async with http.get(url + "/retry-after-seconds", params={"seconds": "2", "key": "a"}) as r:
        assert r.status == 200
    async with http.get(url + "/retry-after-date", params={"seconds": "3", "key": "b"}) as r:
        assert r.status == 429
        ahead = parsedate_to_datetime(r.headers["Retry-After"]).timestamp() - time.time()
        assert 1 < ahead <= 3
    async with http.get(url + "/retry-after-date", params={"key": "b"}) as r:
        assert r.status == 200


async def test_faulty_redirects(faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession) -> None:
    api, url = faulty
    with pytest.raises(aiohttp.TooManyRedirects):
        async with http.get(url + "/redirect-loop", max_redirects=5):
            pass
    assert api.hits["/redirect-loop"] == 5  # aiohttp gives up on reaching max_redirects
    target = url + "/status/418"
    async with http.get(url + "/redirect-to", params={"url": target}, allow_redirects=False) as r:
        assert (r.status, r.headers["Location"]) == (302, target)
    async with http.get(url + "/redirect-to", params={"url": target}) as r:
        assert r.status == 418


async def test_faulty_gzip_bomb_inflates_to_a_json_array(
    faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession
) -> None:
    _, url = faulty
    async with http.get(
        url + "/gzip-bomb", params={"inflated": str(MiB)}, auto_decompress=False
    ) as r:
        raw = await r.read()
    assert r.headers["Content-Encoding"] == "gzip"
    assert len(raw) < MiB // 100
    inflated = gzip.decompress(raw)
    assert len(inflated) == MiB
    assert set(json.loads(inflated)) == {0}
    for size in (2, 3, 4, 5):  # both parities stay valid JSON
        assert len(json.loads(gzip.decompress(gzip_bomb(size)))) == (size - 1) // 2


async def test_faulty_not_json_and_huge_headers(
    faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession
) -> None:
    _, url = faulty
    async with http.get(url + "/not-json") as r:
        assert (r.status, r.content_type) == (200, "text/html")
        assert (await r.read()).startswith(b"<!DOCTYPE html>")
    # aiohttp reports an over-long response header as ClientResponseError status 400.
    with pytest.raises(aiohttp.ClientResponseError, match="8190"):
        async with http.get(url + "/huge-headers"):
            pass


async def test_faulty_stale_keepalive_cuts_a_reused_connection(
    faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession
) -> None:
    api, url = faulty
    # GIVEN one answered request, whose connection goes back to the pool
    async with http.get(url + "/stale-keepalive") as r:
        assert r.status == 200
        await r.read()
    # WHEN a non-idempotent request reuses it
    # THEN the server cut it (GET would be retried by aiohttp on a new connection)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with http.post(url + "/stale-keepalive"):
            pass
    assert api.stale_connections_cut == 1
    # AND a GET reusing a connection is cut, then retried by aiohttp, and succeeds
    async with http.get(url + "/stale-keepalive") as r:
        assert r.status == 200
    async with http.get(url + "/stale-keepalive") as r:
        assert r.status == 200
    assert api.stale_connections_cut == 2


@pytest.mark.parametrize("chunked", ["0", "1"])
async def test_faulty_bytes_are_deterministic(
    faulty: tuple[FaultyAPI, str], http: aiohttp.ClientSession, chunked: str
) -> None:
    _, url = faulty
    size = 3 * 64 * 1024 + 17
    params = {"size": str(size), "seed": "7", "chunked": chunked}
    async with http.get(url + "/bytes", params=params) as r:
        body = await r.read()
    assert r.headers.get("Transfer-Encoding") == ("chunked" if chunked == "1" else None)
    assert body == expected_bytes(size, 7)
    assert expected_sha256(size, 7) != expected_sha256(size, 8)
    assert expected_bytes(10, 7) == body[:10]


# --------------------------------------------------------------------------- MotoS3 + env


def test_s3_fixture_is_reachable_from_the_environment(s3: MotoS3) -> None:
    # GIVEN only what the environment says (endpoint, dummy credentials, region)
    client = boto3.session.Session().client("s3")
    try:
        # WHEN an object is written through a client configured by it
        client.put_object(Bucket=RAW_BUCKET, Key="a/b.json", Body=b"[]")
    finally:
        client.close()
    # THEN moto has it
    assert s3.list_keys(RAW_BUCKET) == ["a/b.json"]
    assert s3.get_bytes(RAW_BUCKET, "a/b.json") == b"[]"
    assert s3.incomplete_uploads(RAW_BUCKET) == []


def test_s3_fixture_starts_empty(s3: MotoS3) -> None:
    assert s3.list_keys(RAW_BUCKET) == []


async def test_moto_sends_one_server_header(s3: MotoS3, http: aiohttp.ClientSession) -> None:
    # aiohttp in dev mode rejects moto's stock Server + server pair (MotoS3 drops one).
    async with http.post(f"{s3.endpoint}/{RAW_BUCKET}/k?uploads") as r:
        await r.read()
    assert len(r.headers.getall("Server")) == 1


# --------------------------------------------------------------------------- S3FaultProxy


@pytest.fixture
def proxy(s3: MotoS3) -> Iterator[S3FaultProxy]:
    with S3FaultProxy(s3) as running:
        yield running


@pytest.fixture
def proxied_client(s3: MotoS3, proxy: S3FaultProxy) -> Any:
    return s3.client(endpoint_url=proxy.endpoint, max_attempts=1)


def _multipart(client: Any, key: str) -> tuple[str, list[dict[str, Any]]]:
    upload_id = client.create_multipart_upload(Bucket=RAW_BUCKET, Key=key)["UploadId"]
    part = client.upload_part(
        Bucket=RAW_BUCKET, Key=key, UploadId=upload_id, PartNumber=1, Body=b"p" * (5 * MiB)
    )
    return upload_id, [{"PartNumber": 1, "ETag": part["ETag"]}]


def test_proxy_passes_objects_through_unchanged(
    s3: MotoS3, proxy: S3FaultProxy, proxied_client: Any
) -> None:
    client = proxied_client
    body = expected_bytes(100_000, "proxy")
    client.put_object(Bucket=RAW_BUCKET, Key="k/one.bin", Body=body, ContentEncoding="gzip")
    assert client.head_object(Bucket=RAW_BUCKET, Key="k/one.bin")["ContentLength"] == len(body)
    got = client.get_object(Bucket=RAW_BUCKET, Key="k/one.bin")
    assert got["Body"].read() == body
    assert got["ContentEncoding"] == "gzip"
    upload_id, parts = _multipart(client, "k/two.bin")
    client.complete_multipart_upload(
        Bucket=RAW_BUCKET, Key="k/two.bin", UploadId=upload_id, MultipartUpload={"Parts": parts}
    )
    assert s3.get_bytes(RAW_BUCKET, "k/two.bin") == b"p" * (5 * MiB)
    assert [op for op, _ in proxy.calls] == [
        "PutObject",
        "HeadObject",
        "GetObject",
        "CreateMultipartUpload",
        "UploadPart",
        "CompleteMultipartUpload",
    ]
    assert {status for _, status in proxy.calls} == {200}


@pytest.mark.parametrize(
    ("operation", "fault", "code"),
    [
        ("PutObject", "slowdown", "SlowDown"),
        ("GetObject", "internal_error", "InternalError"),
        ("HeadObject", "slowdown", "503"),  # a HEAD error has no body, only a status
        ("PutObject", "expired_token", "ExpiredToken"),
    ],
)
def test_proxy_injects_error_responses_once(
    proxy: S3FaultProxy, proxied_client: Any, operation: str, fault: str, code: str
) -> None:
    client = proxied_client
    client.put_object(Bucket=RAW_BUCKET, Key="k", Body=b"x")
    call: Callable[[], object] = {
        "PutObject": lambda: client.put_object(Bucket=RAW_BUCKET, Key="k", Body=b"y"),
        "GetObject": lambda: client.get_object(Bucket=RAW_BUCKET, Key="k"),
        "HeadObject": lambda: client.head_object(Bucket=RAW_BUCKET, Key="k"),
    }[operation]
    proxy.inject(operation, fault, times=1)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        call()
    assert caught.value.response["Error"]["Code"] == code
    call()  # the fault fired once only
    assert proxy.fired == [(operation, fault)]
    assert proxy.pending() == {}


def test_proxy_error_in_200_fails_complete_multipart_upload(
    s3: MotoS3, proxy: S3FaultProxy, proxied_client: Any
) -> None:
    client = proxied_client
    upload_id, parts = _multipart(client, "big.bin")
    proxy.inject("CompleteMultipartUpload", "error_in_200")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.complete_multipart_upload(
            Bucket=RAW_BUCKET, Key="big.bin", UploadId=upload_id, MultipartUpload={"Parts": parts}
        )
    assert caught.value.response["Error"]["Code"] == "InternalError"
    assert proxy.statuses("CompleteMultipartUpload") == [200]
    assert [u["UploadId"] for u in s3.incomplete_uploads(RAW_BUCKET)] == [upload_id]
    client.abort_multipart_upload(Bucket=RAW_BUCKET, Key="big.bin", UploadId=upload_id)
    assert s3.incomplete_uploads(RAW_BUCKET) == []
    assert ("AbortMultipartUpload", 204) in proxy.calls


@pytest.mark.parametrize(
    ("fault", "stored"), [("drop_connection", False), ("drop_after_forward", True)]
)
def test_proxy_drops_connections(
    s3: MotoS3, proxy: S3FaultProxy, proxied_client: Any, fault: str, stored: bool
) -> None:
    proxy.inject("PutObject", fault)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        proxied_client.put_object(Bucket=RAW_BUCKET, Key="dropped", Body=b"x")
    assert proxy.calls == [("PutObject", DROPPED)]
    assert (s3.list_keys(RAW_BUCKET) == ["dropped"]) is stored


def test_proxy_rejects_unknown_names(proxy: S3FaultProxy) -> None:
    with pytest.raises(ValueError, match="operation"):
        proxy.inject("PutObjekt", "slowdown")
    with pytest.raises(ValueError, match="fault"):
        proxy.inject("PutObject", "slow")


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("PUT", "/b/k", {}, "PutObject"),
        ("PUT", "/b/k", {"partNumber": "1", "uploadId": "u"}, "UploadPart"),
        ("POST", "/b/k", {"uploads": ""}, "CreateMultipartUpload"),
        ("POST", "/b/k", {"uploadId": "u"}, "CompleteMultipartUpload"),
        ("DELETE", "/b/k", {"uploadId": "u"}, "AbortMultipartUpload"),
        ("HEAD", "/b/a/b/c.json", {}, "HeadObject"),
        ("GET", "/b/k", {}, "GetObject"),
        ("GET", "/b", {"uploads": ""}, "ListMultipartUploads"),
        ("GET", "/b", {"list-type": "2", "prefix": "p"}, "ListObjectsV2"),
        ("PUT", "/b", {}, "CreateBucket"),
        ("PUT", "/b/k", {"tagging": ""}, "Other"),
        ("GET", "/b/k", {"x-id": "GetObject"}, "GetObject"),
    ],
)
def test_s3_operation_names(method: str, path: str, query: dict[str, str], expected: str) -> None:
    assert s3_operation(method, path, query) == expected
