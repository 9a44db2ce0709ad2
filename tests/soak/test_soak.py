"""Soak (issue #6): 20,000 items, ~10% API faults plus S3 faults, concurrency 128, one process.

Run it with ``pytest -m soak -s -W error::ResourceWarning tests/soak`` (deselected by
default). It prints the figures docs/RELIABILITY.md quotes.

What runs where, and why:

- The ingester (``runtime.execute``, the handler's engine and S3 writer) and a lean
  API run in this process. The API decides each item's fault from its params and
  keeps only a fixed-size hit table: ``ScriptedAPI`` records every request, which
  would grow the very RSS being measured.
- moto runs in a child process (``moto_server``): in-process, its 20,000 stored
  objects would be counted as the ingester's memory. ``S3FaultProxy`` sits in front
  of it and fails a PutObject now and then while the run goes.
- Objects are checked through ListObjectsV2: a single PUT's ETag is the MD5 of its
  bytes, so 20 list pages prove every body byte for byte without 20,000 GETs.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import orjson
import psutil
import pytest
from aiohttp import web
from botocore.config import Config

from ingest_core import ItemResult, parse_event
from ingest_core.fetcher import encode_params
from ingest_core.runtime import execute
from tests.conftest import RAW_BUCKET, StartServer
from tests.support.faults import S3FaultProxy
from tests.support.servers import Response, default_body, send_faulty

pytestmark = [pytest.mark.soak, pytest.mark.timeout(600), pytest.mark.usefixtures("allow_private")]

ITEMS = 20_000
CONCURRENCY = 128
WARM_ITEMS = 5_000
# RSS may grow this much between item 5,000 and the end: the run's own bounded state
# (1,000 failure entries, 10,000 latency samples) and allocator noise, not per item.
RSS_MARGIN_MIB = 24
S3_FAULT_EVERY = 200  # one PutObject fault per this many finished items
SOURCE = "soak-src"
REQUEST_ID = "soak"
MIB = 1024 * 1024
START_TIMEOUT_S = 20.0

# i % 100 -> (fault, answers): the first answers of the item's requests, then 200.
FAULTS: dict[int, tuple[str, list[Response]]] = {
    0: ("503 once", [Response(status=503)]),
    1: ("503 once", [Response(status=503)]),
    2: ("502 once", [Response(status=502)]),
    3: ("504 once", [Response(status=504)]),
    4: ("429 + Retry-After 1 once", [Response(status=429, headers={"Retry-After": "1"})]),
    5: ("reset mid-body once", [Response(drop_mid_body=True, records=40)]),
    6: ("short body once", [Response(short_body=True)]),
    7: ("404 always", [Response(status=404)] * 10),
    8: ("HTML 200 always", [Response(body=b"<html>down</html>")] * 10),
    9: ("500 always", [Response(status=500)] * 10),
}
PERMANENT = {7: ("http_status", 404, 1), 8: ("invalid_body", None, 1), 9: ("http_status", 500, 3)}
S3_FAULTS = itertools.cycle(["slowdown", "internal_error", "drop_connection"])


class SoakAPI:
    """Item ``n`` (param ``n``) answers as FAULTS[n % 100] says; a fixed hit table."""

    def __init__(self, items: int) -> None:
        self.hits = [0] * items
        self.app = web.Application()
        self.app.router.add_get("/v1/data", self._handle)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        n = int(request.query["n"])
        hit, self.hits[n] = self.hits[n], self.hits[n] + 1
        answers = FAULTS.get(n % 100, ("", []))[1]
        spec = answers[hit] if hit < len(answers) else Response()
        body = spec.body if spec.body is not None else _body(request, spec)
        return await send_faulty(request, spec, body)


def _body(request: web.Request, spec: Response) -> bytes:
    if 200 <= spec.status < 300:
        return default_body(dict(request.query), spec.records)
    return b'{"error": "scripted"}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def moto_process() -> Iterator[str]:
    """moto in a child process on 127.0.0.1; yields its endpoint."""
    port = free_port()
    command = [
        str(Path(sys.executable).with_name("moto_server")),
        "-H",
        "127.0.0.1",
        "-p",
        str(port),
    ]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(int(START_TIMEOUT_S / 0.1)):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise RuntimeError("moto_server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        child.terminate()
        child.wait(timeout=10)


@pytest.fixture
def s3_client(moto_process: str) -> Iterator[Any]:
    client = boto3.session.Session(region_name="us-east-1").client(
        "s3", endpoint_url=moto_process, config=Config(proxies={}, retries={"mode": "standard"})
    )
    try:
        client.create_bucket(Bucket=RAW_BUCKET)
        yield client
    finally:
        client.close()


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / MIB


def open_sessions() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, aiohttp.ClientSession) and not o.closed)


def etags(client: Any) -> dict[str, str]:
    """Every data key and its ETag (manifests left out)."""
    found: dict[str, str] = {}
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=RAW_BUCKET, Prefix=f"{SOURCE}/{REQUEST_ID}-"
    ):
        found.update({item["Key"]: item["ETag"].strip('"') for item in page.get("Contents", [])})
    return found


def wait_for_fds(limit: int) -> int:
    """Open file descriptors, once they are back to ``limit`` (bounded wait)."""
    for _ in range(50):
        fds = psutil.Process().num_fds()
        if fds <= limit:
            return fds
        time.sleep(0.1)
    return psutil.Process().num_fds()


async def test_soak_20000_items_with_faults_loses_nothing_and_stays_flat(
    api_server: StartServer,
    moto_process: str,
    s3_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN 20,000 items, 10% with API faults (7% transient, 3% permanent), a PutObject
    # fault every 200 items, moto behind the fault proxy, concurrency 128
    api = SoakAPI(ITEMS)
    url = api_server(api.app).url
    with S3FaultProxy(moto_process) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        event = {
            "api_config": {
                "endpoint": f"{url}/v1/data",
                "raw_bucket": RAW_BUCKET,
                "source_id": SOURCE,
            },
            "batch": [{"n": n} for n in range(ITEMS)],
            # adaptive on (the default): these 429s and 503s are per item, not a rate
            # limit, and must neither shrink the limit nor pause the origin (CONTRACT §14)
            "options": {"concurrency": CONCURRENCY, "max_attempts": 3},
            "request_id": REQUEST_ID,
        }
        job = parse_event(event)
        fds_before = psutil.Process().num_fds()
        samples: list[tuple[int, float]] = []
        done = 0

        def on_item(result: ItemResult) -> None:
            nonlocal done
            done += 1
            if done % S3_FAULT_EVERY == 0:
                proxy.inject("PutObject", next(S3_FAULTS))
            if done % 1000 == 0:
                samples.append((done, rss_mib()))

        # WHEN one process ingests them
        started = time.monotonic()
        outcome = await execute(job, on_item=on_item)
        elapsed = time.monotonic() - started
        rss_end = rss_mib()
        s3_faults = len(proxy.fired)
    result = outcome.result

    # THEN nothing is lost: counts add up, exactly the permanent faults failed, with their kind
    assert result["succeeded"] + result["failed"] + result["not_attempted"] == ITEMS
    assert result["not_attempted"] == 0 and not result["failures_truncated"]
    failures = {f["index"]: f for f in result["failures"]}
    s3_failed = {i for i, f in failures.items() if f["kind"] == "s3_error"}
    assert len(s3_failed) <= ITEMS // 1000  # three faults in a row on one PUT: rare
    for index, failure in failures.items():
        if index in s3_failed:
            continue
        assert index % 100 in PERMANENT, failure
        assert (failure["kind"], failure["status"], failure["attempts"]) == PERMANENT[index % 100]
    assert len(failures) - len(s3_failed) == ITEMS * len(PERMANENT) // 100
    # AND the per-item 429s and 503s were answered per item: the API's limit never
    # moved and no pace was learned (each would have cost the run its speed)
    adaptive = result["adaptive"]
    assert adaptive["enabled"] and adaptive["api_lowest"] == CONCURRENCY, adaptive
    assert adaptive["api_pace_lowest_per_s"] is None, adaptive
    # AND every succeeded object holds exactly the served bytes; failed keys hold nothing
    stored = etags(s3_client)
    expected = {
        f"{SOURCE}/{REQUEST_ID}-{n}.json": hashlib.md5(
            default_body(dict(encode_params({"n": n}))), usedforsecurity=False
        ).hexdigest()
        for n in range(ITEMS)
        if n not in failures
    }
    assert stored == expected
    assert s3_client.list_multipart_uploads(Bucket=RAW_BUCKET).get("Uploads", []) == []
    manifest = s3_client.get_object(Bucket=RAW_BUCKET, Key=result["manifest_key"])["Body"]
    with manifest:
        lines = manifest.read().splitlines()
    assert sorted(orjson.loads(line)["index"] for line in lines) == list(range(ITEMS))
    # AND memory stayed flat after warm-up, and nothing was left open
    rss_warm = dict(samples)[WARM_ITEMS]
    assert rss_end - rss_warm < RSS_MARGIN_MIB, samples
    assert open_sessions() == 0  # the ingester's and, now it is stopped, the proxy's
    fds_end = wait_for_fds(fds_before)
    assert fds_end <= fds_before
    print(
        "\nSOAK",
        orjson.dumps(
            {
                "items": ITEMS,
                "concurrency": CONCURRENCY,
                "seconds": round(elapsed, 1),
                "items_per_s": round(ITEMS / elapsed),
                "succeeded": result["succeeded"],
                "failed": result["failed"],
                "retries": result["retries"],
                "throttled": result["throttled"],
                "adaptive": result["adaptive"],
                "api_requests": sum(api.hits),
                "s3_faults_fired": s3_faults,
                "s3_error_items": len(s3_failed),
                "rss_mib_at_5000": round(rss_warm, 1),
                "rss_mib_at_end": round(rss_end, 1),
                "rss_mib_samples": [[n, round(r, 1)] for n, r in samples],
                "fds_before_after": [fds_before, fds_end],
            }
        ).decode(),
    )
