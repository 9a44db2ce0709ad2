"""The deadline is a hard limit, and no upload is left open unreported (issue 14).

S3 sits behind ``S3FaultProxy`` (fixture ``s3_proxy``), which can leave a request
unanswered (``hang``), hold it before it reaches S3 (``delay_request``, a slow
link) or hold S3's answer after it was applied (``delay_answer``). The engine
runs through ``runtime.execute`` with a real S3 writer, as the handler does, and
must return before its deadline whatever S3 does; every multipart upload it began
is completed, aborted, or named in the result and the log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from ingest_core import InvalidEventError, parse_event, run_job
from ingest_core.runtime import execute
from ingest_core.writers import LocalDirWriter
from tests.conftest import RAW_BUCKET
from tests.support.faults import S3FaultProxy, expected_bytes
from tests.support.paged_api import PagedAPI
from tests.support.reliability import (
    SOURCE,
    assert_counts,
    event_for,
    failures_by_index,
    key_for,
)
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("allow_private")]

MiB = 1024 * 1024
BIG = 11 * MiB
STALL_S = 60.0
MULTIPART = {"part_size_mb": 5, "memory_budget_mb": 32, "expect_json": False, "concurrency": 4}
POLL_S = 0.05
WAIT_S = 15.0
NEVER_S = 60.0  # an answer this late never comes within a test


@contextmanager
def logged(caplog: pytest.LogCaptureFixture, *names: str) -> Iterator[None]:
    """Capture these loggers even when Powertools stopped them propagating."""
    # Loggers that still propagate reach caplog through the root logger already.
    loggers = [logging.getLogger(name) for name in names if not logging.getLogger(name).propagate]
    for logger in loggers:
        logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)


def messages(caplog: pytest.LogCaptureFixture) -> list[tuple[str, dict[str, Any]]]:
    return [(record.getMessage(), record.__dict__) for record in caplog.records]


async def until(condition: Any, what: str) -> None:
    """Wait (bounded) until ``condition()`` is true."""
    for _ in range(int(WAIT_S / POLL_S)):
        if condition():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"not within {WAIT_S}s: {what}")


def stalled_api(dates: list[str], seed: int = 7) -> ScriptedAPI:
    """Each date gets half of an 11 MiB body, then nothing: one part stored, upload open."""
    body = expected_bytes(BIG, seed)
    return ScriptedAPI({date: Response(body=body, stall_s=STALL_S) for date in dates})


# --------------------------------------------------------------------------- deadline


async def test_an_s3_that_never_answers_cannot_keep_the_run_past_its_deadline(
    s3: MotoS3,
    s3_proxy: S3FaultProxy,
    api_server: Any,
    put_path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN 4 small items and an S3 that accepts every connection and never answers
    url = api_server(ScriptedAPI()).url
    batch = [{"date": f"2025-01-0{i}"} for i in range(1, 5)]
    options = {"deadline_margin_s": 2.0}
    job = parse_event(event_for(f"{url}/v1/data", batch=batch, options=options, request_id="h"))
    s3_proxy.inject("*", "hang", times=1000)
    deadline = time.monotonic() + 4
    # WHEN the run meets its deadline with every PUT (and the manifest's) unanswered
    with logged(caplog, "ingest_core.engine"):
        outcome = await asyncio.wait_for(execute(job, deadline=deadline), timeout=40)
    # THEN it returned before the deadline, saying the manifest was not written and
    # that each item's PUT was cut in flight (S3 may have stored it)
    assert time.monotonic() < deadline
    result = outcome.result
    assert_counts(result)
    assert result["manifest_key"] is None
    assert result["manifest_error"].startswith("not written")
    assert (result["failed"], result["write_unknown"]) == (4, 4)
    assert {f["kind"] for f in result["failures"]} == {"deadline"}
    assert "may exist" in result["failures"][0]["error"]
    assert any(m == "could not write the manifest" for m, _ in messages(caplog))


@pytest.mark.parametrize(
    "abort_fault", ["delay_request", "hang", "expired_token"], ids=["slow", "unanswered", "refused"]
)
async def test_aborts_at_the_deadline_finish_in_its_budget_or_are_named_as_left_open(
    s3: MotoS3,
    s3_proxy: S3FaultProxy,
    api_server: Any,
    abort_fault: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # GIVEN an item whose multipart upload is open with a part stored when the deadline
    # comes, and an AbortMultipartUpload that is slow (0.3 s), never answered or refused
    url = api_server(stalled_api(["slow"])).url
    options = {**MULTIPART, "deadline_margin_s": 2.0}
    event = event_for(f"{url}/v1/data", batch=[{"date": "slow"}], options=options, request_id="a")
    job = parse_event(event)
    s3_proxy.inject("AbortMultipartUpload", abort_fault, delay_s=0.3)
    deadline = time.monotonic() + 6
    # WHEN the run meets its deadline
    with logged(caplog, "ingest_core.uploads"):
        outcome = await asyncio.wait_for(execute(job, deadline=deadline), timeout=40)
    # THEN it returned before the deadline, the manifest written, the item for re-drive
    assert time.monotonic() < deadline
    result = outcome.result
    assert_counts(result)
    assert result["not_attempted"] == 1 and result["manifest_key"] is not None
    key = key_for(result, 0)
    open_uploads = s3.incomplete_uploads(RAW_BUCKET)
    if abort_fault == "delay_request":
        # the slow abort finished within the budget
        assert s3_proxy.statuses("AbortMultipartUpload") == [204]
        assert open_uploads == [] and result["uploads_left_open"] == []
        return
    # the others are named, with key and upload id, in the result and the log
    [upload] = open_uploads
    named = {"key": key, "upload_id": upload["UploadId"]}
    [left] = result["uploads_left_open"]
    assert {k: left[k] for k in named} == named and result["uploads_left_open_count"] == 1
    why = "abort failed" if abort_fault == "expired_token" else "abort unanswered"
    assert left["reason"].startswith(why)
    logged_open = [x for m, x in messages(caplog) if "possibly left open" in m]
    assert [(x["key"], x["upload_id"]) for x in logged_open] == [(key, upload["UploadId"])]


async def test_a_token_granted_after_the_stop_time_sends_nothing(
    api_server: Any, tmp_path: Path
) -> None:
    # GIVEN an API that records when each request arrives, 2 requests a second allowed,
    # and a deadline that stops new requests 1.5 s from now
    arrivals: list[float] = []

    async def handle(request: web.Request) -> web.Response:
        arrivals.append(time.monotonic())
        return web.json_response([1])

    app = web.Application()
    app.router.add_get("/v1/data", handle)
    url = api_server(app).url
    options = {"rate_limit_per_s": 2, "concurrency": 8, "deadline_margin_s": 3.0}
    batch = [{"date": f"d{i}"} for i in range(20)]
    job = parse_event(event_for(f"{url}/v1/data", batch=batch, options=options, request_id="t"))
    deadline = time.monotonic() + 4.5
    stop_starting = deadline - 3.0
    # WHEN the run goes until its deadline, workers queued for tokens
    outcome = await run_job(job, writer=LocalDirWriter(tmp_path), deadline=deadline)
    # THEN no request reached the API after the stop-starting time; the rest were not sent
    result = outcome.result
    assert_counts(result)
    assert arrivals and max(arrivals) < stop_starting
    assert result["succeeded"] == len(arrivals)
    assert result["not_attempted"] == 20 - len(arrivals)


@pytest.mark.parametrize("margin", [0, 0.5])
def test_a_margin_that_leaves_no_room_to_clean_up_is_refused(margin: float) -> None:
    # GIVEN a deadline margin under the minimum (0 put the hard stop at the deadline)
    event = event_for("https://api.example.com/v1/data", batch=[{"d": 1}])
    event["options"]["deadline_margin_s"] = margin
    # WHEN the event is parsed THEN it is refused, naming the field
    with pytest.raises(InvalidEventError, match="deadline_margin_s"):
        parse_event(event)


# --------------------------------------------------------------------------- open uploads


async def test_a_stop_during_create_multipart_upload_still_aborts_the_upload(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN an 11 MiB body and a CreateMultipartUpload that S3 applies but answers 2 s late
    body = expected_bytes(BIG, 3)
    url = api_server(ScriptedAPI({"big": Response(body=body)})).url
    job = parse_event(
        event_for(f"{url}/v1/data", batch=[{"date": "big"}], options=MULTIPART, request_id="c")
    )
    s3_proxy.inject("CreateMultipartUpload", "delay_answer", delay_s=2.0)
    stop = asyncio.Event()
    task = asyncio.create_task(execute(job, stop=stop))
    await until(lambda: s3_proxy.statuses("CreateMultipartUpload") == [200], "upload created")
    # WHEN the run is stopped before the upload id came back
    stop.set()
    outcome = await asyncio.wait_for(task, timeout=30)
    # THEN the upload was aborted once its id arrived, before the run returned
    result = outcome.result
    assert_counts(result)
    assert result["not_attempted"] == 1
    assert s3_proxy.statuses("AbortMultipartUpload") == [204]
    assert s3.incomplete_uploads(RAW_BUCKET) == [] and result["uploads_left_open"] == []


async def test_create_unanswered_at_the_deadline_is_named_by_its_key(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN a CreateMultipartUpload that S3 applies and answers only after the deadline
    body = expected_bytes(BIG, 4)
    url = api_server(ScriptedAPI({"big": Response(body=body)})).url
    options = {**MULTIPART, "deadline_margin_s": 2.0}
    job = parse_event(
        event_for(f"{url}/v1/data", batch=[{"date": "big"}], options=options, request_id="u")
    )
    s3_proxy.inject("CreateMultipartUpload", "delay_answer", delay_s=NEVER_S)
    deadline = time.monotonic() + 4
    # WHEN the run meets its deadline
    outcome = await asyncio.wait_for(execute(job, deadline=deadline), timeout=40)
    # THEN it returned in time and names the key whose upload may be open (id unknown)
    assert time.monotonic() < deadline
    result = outcome.result
    assert result["uploads_left_open"] == [
        {
            "key": key_for(result, 0),
            "upload_id": None,
            "reason": "CreateMultipartUpload unanswered at the deadline",
        }
    ]


@pytest.mark.parametrize("cut_by", ["stop", "attempt_timeout"])
async def test_an_item_cut_while_aborting_still_gets_its_abort_to_s3(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any, cut_by: str
) -> None:
    # GIVEN an 11 MiB body cut off after one part was stored (so the item aborts its
    # upload) and an AbortMultipartUpload that takes 3 s to reach S3 (a slow link)
    body = expected_bytes(BIG, 5)
    url = api_server(ScriptedAPI({"cut": Response(body=body, drop_mid_body=True)})).url
    options: dict[str, Any] = {**MULTIPART, "max_attempts": 1}
    if cut_by == "attempt_timeout":
        options["attempt_timeout_s"] = 2.0
    job = parse_event(
        event_for(f"{url}/v1/data", batch=[{"date": "cut"}], options=options, request_id="x")
    )
    s3_proxy.inject("AbortMultipartUpload", "delay_request", delay_s=3.0)
    stop = asyncio.Event()
    # WHEN the item is cut while its abort is on the way (a stop, or its attempt's timeout)
    task = asyncio.create_task(execute(job, stop=stop))
    if cut_by == "stop":
        await until(lambda: ("AbortMultipartUpload", "delay_request") in s3_proxy.fired, "abort")
        stop.set()
    outcome = await asyncio.wait_for(task, timeout=30)
    # THEN the abort still reached S3 before the run (and its S3 client) ended
    assert_counts(outcome.result)
    assert s3_proxy.statuses("UploadPart") == [200]
    assert s3_proxy.statuses("AbortMultipartUpload") == [204]
    assert s3.incomplete_uploads(RAW_BUCKET) == []
    assert outcome.result["uploads_left_open"] == []


# --------------------------------------------------------------------------- unknown writes


async def test_a_put_cut_after_s3_stored_it_is_reported_as_write_unknown(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any, put_path: str
) -> None:
    # GIVEN one small item whose PutObject S3 applies but answers only after the deadline
    url = api_server(ScriptedAPI()).url
    options = {"deadline_margin_s": 2.0}
    event = event_for(f"{url}/v1/data", batch=[{"date": "d"}], options=options, request_id="w")
    job = parse_event(event)
    s3_proxy.inject("PutObject", "delay_answer", delay_s=NEVER_S)
    deadline = time.monotonic() + 4
    # WHEN the deadline cuts the PUT
    outcome = await asyncio.wait_for(execute(job, deadline=deadline), timeout=40)
    # THEN the object exists, and the item says its write is unknown (not "not attempted")
    assert time.monotonic() < deadline
    result = outcome.result
    assert_counts(result)
    assert (result["failed"], result["write_unknown"], result["not_attempted"]) == (1, 1, 0)
    assert failures_by_index(result)[0]["kind"] == "deadline"
    assert key_for(result, 0) in s3.list_keys(RAW_BUCKET)
    [line] = s3.get_bytes(RAW_BUCKET, result["manifest_key"]).splitlines()
    assert json.loads(line)["status"] == "write_unknown"


async def test_a_complete_cut_after_s3_applied_it_is_write_unknown_and_leaves_nothing_open(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN an 11 MiB body whose CompleteMultipartUpload S3 applies but answers too late
    body = expected_bytes(BIG, 6)
    url = api_server(ScriptedAPI({"big": Response(body=body)})).url
    options = {**MULTIPART, "deadline_margin_s": 2.0}
    job = parse_event(
        event_for(f"{url}/v1/data", batch=[{"date": "big"}], options=options, request_id="k")
    )
    s3_proxy.inject("CompleteMultipartUpload", "delay_answer", delay_s=NEVER_S)
    deadline = time.monotonic() + 5
    # WHEN the deadline cuts the Complete
    outcome = await asyncio.wait_for(execute(job, deadline=deadline), timeout=40)
    # THEN the object is whole in S3, the item's write is unknown, and no upload is open
    assert time.monotonic() < deadline
    result = outcome.result
    assert_counts(result)
    assert result["write_unknown"] == 1
    assert s3.get_bytes(RAW_BUCKET, key_for(result, 0)) == body
    assert s3.incomplete_uploads(RAW_BUCKET) == [] and result["uploads_left_open"] == []


async def test_a_later_page_cut_after_s3_stored_it_makes_the_item_write_unknown(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN a cursor-paginated item of 3 pages whose second page's PutObject S3 applies
    # but answers only after the deadline (the first page's PUT goes through)
    url = api_server(PagedAPI().app).url
    pagination = {"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "after"}
    event = event_for(
        f"{url}/cursor",
        batch=[{"date": "d1"}],
        options={"deadline_margin_s": 2.0},
        request_id="pw",
        pagination=pagination,
        records_path="items",
    )
    job = parse_event(event)
    s3_proxy.inject("PutObject", "delay_answer", delay_s=0.0)
    s3_proxy.inject("PutObject", "delay_answer", delay_s=NEVER_S)
    deadline = time.monotonic() + 4
    # WHEN the deadline cuts that PUT
    outcome = await asyncio.wait_for(execute(job, deadline=deadline), timeout=40)
    # THEN the item's write is unknown (a page may exist), not "not attempted"
    assert time.monotonic() < deadline
    result = outcome.result
    assert_counts(result)
    assert (result["write_unknown"], result["not_attempted"]) == (1, 0)
    assert f"{SOURCE}/pw-0-1.json" in s3.list_keys(RAW_BUCKET)


async def test_a_pack_whose_complete_and_abort_never_answer_cannot_keep_the_run(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN 8 items of 1 MiB packed into one object (a multipart upload of 5 MiB parts),
    # and an S3 that creates the upload but then never answers: not a part, not the
    # abort that follows when the pack cannot be completed in time
    body = b"[" + b"0," * (MiB // 2 - 1) + b"0]"
    url = api_server(ScriptedAPI(default=Response(body=body))).url
    batch = [{"date": f"2025-01-0{i}"} for i in range(1, 9)]
    options = {
        "deadline_margin_s": 2.0,
        "part_size_mb": 5,
        "memory_budget_mb": 32,
        "pack": {"unit": "response", "compression": "none"},
    }
    job = parse_event(event_for(f"{url}/v1/data", batch=batch, options=options, request_id="p"))
    for operation in ("UploadPart", "CompleteMultipartUpload", "AbortMultipartUpload", "PutObject"):
        s3_proxy.inject(operation, "hang", times=100)
    deadline = time.monotonic() + 4
    # WHEN the run meets its deadline with the pack still open
    outcome = await asyncio.wait_for(execute(job, deadline=deadline), timeout=40)
    # THEN it returned in time, the pack's items failed, and the open upload is named
    assert time.monotonic() < deadline
    result = outcome.result
    assert_counts(result)
    assert result["succeeded"] == 0
    [left] = result["uploads_left_open"]
    [upload] = s3.incomplete_uploads(RAW_BUCKET)
    assert left["upload_id"] == upload["UploadId"]


async def test_a_put_cut_by_the_attempt_timeout_after_s3_stored_it_is_write_unknown(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any
) -> None:
    # GIVEN one item whose PutObject S3 applies but answers after the attempt's timeout
    url = api_server(ScriptedAPI()).url
    options = {"attempt_timeout_s": 1.0, "max_attempts": 1}
    event = event_for(f"{url}/v1/data", batch=[{"date": "d"}], options=options, request_id="at")
    s3_proxy.inject("PutObject", "delay_answer", delay_s=5.0)
    # WHEN the attempt times out with the PUT in flight, and the item fails
    outcome = await asyncio.wait_for(execute(parse_event(event)), timeout=40)
    # THEN the item keeps its failure kind but says the object may exist (it does)
    result = outcome.result
    assert_counts(result)
    assert (result["failed"], result["write_unknown"]) == (1, 1)
    [failure] = result["failures"]
    assert failure["kind"] == "timeout" and "may exist" in failure["error"]
    assert key_for(result, 0) in s3.list_keys(RAW_BUCKET)
