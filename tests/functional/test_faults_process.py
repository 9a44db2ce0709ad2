"""Process faults (issue #6): the run itself is stopped, cancelled or out of time mid-upload.

Each test first gets a multipart upload really open in S3: the API sends an 11 MiB
body up to 5.5 MiB and then stalls, so the first 5 MiB part is stored (the fault
proxy shows ``UploadPart`` answered 200) while the rest never comes. Then the run
is stopped, cancelled or reaches its deadline, and the upload must be aborted:
nothing under the key, no incomplete upload, every item accounted for.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from handler.app import lambda_handler
from ingest_core import parse_event, run_job
from ingest_core.runtime import execute, s3_writer
from ingest_core.settings import Settings
from ingest_core.writers import MultipartUpload, ObjectMeta, S3Writer
from tests.conftest import RAW_BUCKET
from tests.support.faults import S3FaultProxy, expected_bytes
from tests.support.lambda_context import LocalContext
from tests.support.reliability import (
    assert_s3_outcome,
    event_for,
    failures_by_index,
    key_for,
    served_body,
)
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private")]

MiB = 1024 * 1024
BIG = 11 * MiB
STALL_S = 60.0  # far beyond every test: the rest of the body never comes
MULTIPART = {"part_size_mb": 5, "memory_budget_mb": 32, "expect_json": False, "concurrency": 4}
POLL_S = 0.05
WAIT_FOR_PARTS_S = 15.0


def stalled_api(slow: list[str], seed: int = 7) -> ScriptedAPI:
    """Every date in ``slow`` gets half of an 11 MiB body, then nothing."""
    body = expected_bytes(BIG, seed)
    return ScriptedAPI({date: Response(body=body, stall_s=STALL_S) for date in slow})


async def parts_stored(proxy: S3FaultProxy, count: int) -> None:
    """Wait until ``count`` UploadPart calls have been answered 200 (bounded)."""
    for _ in range(int(WAIT_FOR_PARTS_S / POLL_S)):
        if proxy.statuses("UploadPart").count(200) >= count:
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"no {count} parts stored in {WAIT_FOR_PARTS_S}s: {proxy.calls}")


async def test_setting_stop_mid_upload_aborts_it_and_reports_the_item_for_redrive(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN a fast item and one whose multipart upload is open with a part stored
    url = api_server(stalled_api(["slow"])).url
    batch = [{"date": "fast"}, {"date": "slow"}]
    job = parse_event(event_for(f"{url}/v1/data", batch=batch, options=MULTIPART, request_id="s"))
    stop = asyncio.Event()
    task = asyncio.create_task(execute(job, stop=stop))
    await parts_stored(s3_proxy, 1)
    # WHEN the run is asked to stop (the CLI's Ctrl-C)
    stop.set()
    outcome = await asyncio.wait_for(task, timeout=20)
    result = outcome.result
    # THEN the upload was aborted and the item is reported as not attempted, for re-drive
    assert (result["succeeded"], result["not_attempted"]) == (1, 1)
    failure = failures_by_index(result)[1]
    assert failure["kind"] == "deadline"
    assert failure["error"] == "interrupted; any upload was aborted"
    assert s3_proxy.statuses("AbortMultipartUpload") == [204]
    assert_s3_outcome(s3, result, {0: served_body(batch[0]), 1: b""})


async def test_cancelling_the_run_mid_upload_aborts_every_open_upload(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN two items with multipart uploads open, each with a part stored
    url = api_server(stalled_api(["slow-a", "slow-b"])).url
    batch = [{"date": "slow-a"}, {"date": "slow-b"}]
    job = parse_event(event_for(f"{url}/v1/data", batch=batch, options=MULTIPART, request_id="c"))
    task = asyncio.create_task(execute(job))
    await parts_stored(s3_proxy, 2)
    # WHEN the task running the job is cancelled (a caller's timeout, a shutdown)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=20)
    # THEN both uploads were aborted before the cancellation finished, and no key exists
    assert sorted(s3_proxy.statuses("AbortMultipartUpload")) == [204, 204]
    assert s3.incomplete_uploads(RAW_BUCKET) == []
    assert s3.list_keys(RAW_BUCKET) == []


def test_the_deadline_arriving_while_uploads_are_open_aborts_them_and_returns_in_time(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN 3 items whose uploads will be open and stalled, 1 fast item, and 6 s on the clock
    slow = ["slow-0", "slow-1", "slow-2"]
    api = stalled_api(slow)
    url = api_server(api).url
    batch = [{"date": d} for d in ["fast", *slow]]
    options = {**MULTIPART, "deadline_margin_s": 2.0}
    context = LocalContext(timeout_s=6, request_id="dl")
    # WHEN the handler runs into the deadline
    result = lambda_handler(event_for(f"{url}/v1/data", batch=batch, options=options), context)
    # THEN it returned in time; the stalled items were cut, their uploads aborted
    assert context.get_remaining_time_in_millis() > 0
    assert (result["succeeded"], result["not_attempted"]) == (1, 3)
    for index in (1, 2, 3):
        failure = failures_by_index(result)[index]
        assert failure["kind"] == "deadline"
        assert failure["error"] == "cancelled at the deadline; any upload was aborted"
    # Every upload begun was aborted (on a loaded machine a part may not have been stored yet).
    begun = s3_proxy.statuses("CreateMultipartUpload").count(200)
    assert begun >= 1 and s3_proxy.statuses("UploadPart").count(200) >= 1
    assert s3_proxy.statuses("AbortMultipartUpload") == [204] * begun
    big = expected_bytes(BIG, 7)
    assert_s3_outcome(
        s3, result, {0: served_body(batch[0]), 1: big, 2: big, 3: big}, context=context
    )


class SlowPartsWriter:
    """An ``S3Writer`` whose parts land in S3 but are answered late.

    It stands in for an ``UploadPart`` still in flight when the deadline comes
    (a slow link to S3): the part is stored, the call has not returned.
    """

    def __init__(self, inner: S3Writer, late_s: float) -> None:
        self._inner, self._late_s = inner, late_s

    def describe(self, key: str) -> str:
        return self._inner.describe(key)

    async def exists(self, key: str) -> bool:
        return await self._inner.exists(key)

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        await self._inner.put(key, data, meta)

    async def put_file(self, key: str, path: Path, content_type: str) -> None:
        await self._inner.put_file(key, path, content_type)

    async def start_multipart(self, key: str, meta: ObjectMeta) -> MultipartUpload:
        return _SlowUpload(await self._inner.start_multipart(key, meta), self._late_s)


class _SlowUpload:
    def __init__(self, inner: MultipartUpload, late_s: float) -> None:
        self._inner, self._late_s = inner, late_s

    async def upload_part(self, data: bytes) -> None:
        await self._inner.upload_part(data)
        await asyncio.sleep(self._late_s)

    async def complete(self) -> None:
        await self._inner.complete()

    async def abort(self) -> None:
        await self._inner.abort()


async def test_the_deadline_arriving_during_an_upload_part_aborts_the_upload(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN an 11 MiB body served at once, whose first UploadPart is still in flight
    # when the deadline comes (the part stored, its answer 60 s late)
    body = expected_bytes(BIG, 9)
    url = api_server(ScriptedAPI({"big": Response(body=body)})).url
    event = event_for(
        f"{url}/v1/data",
        batch=[{"date": "big"}],
        options={**MULTIPART, "deadline_margin_s": 2.0},
        request_id="inflight",
    )
    job = parse_event(event)
    settings = Settings.from_env()
    deadline = time.monotonic() + 4
    # WHEN the engine runs into its deadline
    async with s3_writer(RAW_BUCKET, concurrency=4, settings=settings) as real:
        outcome = await run_job(
            job, writer=SlowPartsWriter(real, late_s=60), settings=settings, deadline=deadline
        )
    # THEN it returned before the deadline, and the stored part was discarded by the abort
    assert time.monotonic() < deadline
    result = outcome.result
    [failure] = result["failures"]
    assert (failure["kind"], result["not_attempted"]) == ("deadline", 1)
    assert s3_proxy.statuses("UploadPart") == [200]
    assert s3_proxy.statuses("AbortMultipartUpload") == [204]
    assert key_for(result, 0) not in s3.list_keys(RAW_BUCKET)
    assert_s3_outcome(s3, result, {0: body})
