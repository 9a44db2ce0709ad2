"""S3 faults (issue #6): ``S3FaultProxy`` between the handler and moto.

``AWS_ENDPOINT_URL_S3`` points at the proxy (fixture ``s3_proxy``), which forwards
every call to moto unless told to answer one S3 operation with a fault. Single
PUTs are tested on both paths (lean SigV4 and aioboto3 ``put_object``); multipart
uploads (always aioboto3) use 11 MiB bodies in 5 MiB parts: 5 + 5 + 1.

"Exhausted" means the fault is injected as many times as S3 calls are sent
(``S3_ATTEMPTS``, set as the events' ``s3_max_attempts`` to keep these tests
short; the default is 10), so the item must fail; fewer injections must be ridden out. A dropped
connection may cost one or two sends per attempt: aiohttp itself resends an
idempotent request once when the server closes without answering (RFC 9112
§9.3.1.1), but only when it can replay the body (a bytes body, not a streamed
part). So an exhausting drop is injected twice per attempt and leftovers are
allowed; nothing else follows an UploadPart that failed, so they stay unused.
"""

from __future__ import annotations

from typing import Any

import pytest

from handler.app import lambda_handler
from tests.support.faults import FaultyAPI, S3FaultProxy, expected_bytes, iter_json_zeros
from tests.support.lambda_context import LocalContext
from tests.support.reliability import assert_s3_outcome, event_for, served_body
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private")]

MiB = 1024 * 1024
BIG = 11 * MiB
S3_ATTEMPTS = 3
DROP_SENDS = 2 * S3_ATTEMPTS
PATIENCE = {"s3_max_attempts": S3_ATTEMPTS}
MULTIPART = {"part_size_mb": 5, "memory_budget_mb": 16, "expect_json": False, **PATIENCE}


def run(event: dict[str, Any]) -> tuple[dict[str, Any], LocalContext]:
    context = LocalContext(timeout_s=40)
    return lambda_handler(event, context), context


def put_statuses(proxy: S3FaultProxy) -> list[int]:
    """PutObject statuses of the item (the manifest's PUT, always last, left out)."""
    return proxy.statuses("PutObject")[:-1]


# --------------------------------------------------------------------------- single PUT


@pytest.mark.parametrize(
    ("fault", "times", "lands"),
    [
        ("slowdown", 1, True),
        ("slowdown", S3_ATTEMPTS, False),
        ("drop_connection", 1, True),
        ("expired_token", 1, False),
    ],
    ids=[
        "slowdown-ridden-out",
        "slowdown-exhausted",
        "dropped-ridden-out",
        "expired-credentials",
    ],
)
def test_put_object_faults_on_both_put_paths(
    s3: MotoS3,
    s3_proxy: S3FaultProxy,
    api_server: Any,
    put_path: str,
    fault: str,
    times: int,
    lands: bool,
) -> None:
    # GIVEN a small JSON body and S3 answering the next `times` PutObject calls with `fault`
    url = api_server(ScriptedAPI()).url
    s3_proxy.inject("PutObject", fault, times=times)
    batch = [{"date": "2025-01-01"}]
    # WHEN the handler ingests it
    event = event_for(f"{url}/v1/data", batch=batch, options=PATIENCE, request_id=f"put-{fault}")
    result, context = run(event)
    # THEN transient faults are retried until they pass; otherwise the item fails as s3_error
    assert s3_proxy.pending() == {}
    if lands:
        assert result["status"] == "SUCCESS", result["failures"]
        assert put_statuses(s3_proxy)[-1] == 200
    else:
        [failure] = result["failures"]
        assert failure["kind"] == "s3_error"
        # Credentials that expired are not retried; everything else gets every attempt.
        assert len(put_statuses(s3_proxy)) == times
        assert (failure["side"], failure["attempts"], failure["s3_attempts"]) == ("s3", 1, times)
        assert f"after {times} attempt" in failure["error"]
        if fault == "expired_token":
            assert "ExpiredToken" in failure["error"]
    assert result["manifest_key"] is not None
    assert_s3_outcome(s3, result, {0: served_body(batch[0])}, context=context)


def test_a_single_put_over_1_mib_lands_byte_identical_on_both_put_paths(
    s3: MotoS3, s3_proxy: S3FaultProxy, api_server: Any, put_path: str
) -> None:
    # GIVEN a 3 MiB JSON body: under the part size, so one PUT, but over the 1 MiB above
    # which aiohttp warns (ResourceWarning, an error here) that raw bytes block the loop
    body = b"".join(iter_json_zeros(3 * MiB))
    url = api_server(ScriptedAPI({"big": Response(body=body)})).url
    batch = [{"date": "big"}]
    # WHEN the handler ingests it, with one PutObject fault so the body is sent twice
    s3_proxy.inject("PutObject", "slowdown")
    result, context = run(event_for(f"{url}/v1/data", batch=batch, request_id="put-3mib"))
    # THEN it landed whole on either path, after one retry
    assert result["status"] == "SUCCESS", result["failures"]
    assert put_statuses(s3_proxy) == [503, 200]
    assert_s3_outcome(s3, result, {0: body}, context=context)


# --------------------------------------------------------------------------- multipart


@pytest.mark.parametrize(
    ("operation", "fault", "times", "lands"),
    [
        ("UploadPart", "slowdown", 1, True),
        ("UploadPart", "slowdown", S3_ATTEMPTS, False),
        ("UploadPart", "drop_connection", 1, True),
        ("UploadPart", "drop_after_forward", 1, True),
        ("UploadPart", "drop_connection", DROP_SENDS, False),
        ("UploadPart", "expired_token", 1, False),
        ("CompleteMultipartUpload", "slowdown", S3_ATTEMPTS, False),
        ("CompleteMultipartUpload", "internal_error", 1, True),
        ("CompleteMultipartUpload", "error_in_200", 1, True),
        ("CompleteMultipartUpload", "error_in_200", S3_ATTEMPTS, False),
        ("CompleteMultipartUpload", "drop_after_forward", 1, True),
    ],
    ids=[
        "part-slowdown-ridden-out",
        "part-slowdown-exhausted",
        "part-dropped-ridden-out",
        "part-stored-but-answer-lost",
        "part-dropped-exhausted",
        "part-expired-credentials",
        "complete-slowdown-exhausted",
        "complete-500-ridden-out",
        "complete-error-in-200-ridden-out",
        "complete-error-in-200-exhausted",
        "complete-done-but-answer-lost",
    ],
)
def test_multipart_faults(
    s3: MotoS3,
    s3_proxy: S3FaultProxy,
    faulty_api: tuple[FaultyAPI, str],
    operation: str,
    fault: str,
    times: int,
    lands: bool,
) -> None:
    # GIVEN an 11 MiB body (three parts of at most 5 MiB) and a fault on one S3 operation
    api, url = faulty_api
    s3_proxy.inject(operation, fault, times=times)
    batch = [{"key": "big", "size": BIG, "seed": 11}]
    event = event_for(f"{url}/bytes", batch=batch, options=MULTIPART, request_id="mpu")
    # WHEN the handler ingests it
    result, context = run(event)
    # THEN transient faults are ridden out; otherwise the item fails and its upload is aborted
    leftover = DROP_SENDS - S3_ATTEMPTS if times == DROP_SENDS else 0
    assert s3_proxy.pending().get(operation, 0) <= leftover
    if lands:
        assert result["status"] == "SUCCESS", result["failures"]
        assert result["bytes_written"] == BIG
    else:
        [failure] = result["failures"]
        assert failure["kind"] == "s3_error"
        assert operation in failure["error"]
        assert failure["side"] == "s3"
        assert failure["s3_attempts"] == (1 if fault == "expired_token" else S3_ATTEMPTS)
        if operation != "CreateMultipartUpload":
            assert s3_proxy.statuses("AbortMultipartUpload") == [204]
    assert api.hits["big"] == 1  # S3 trouble never re-fetches the body
    assert_s3_outcome(s3, result, {0: expected_bytes(BIG, 11)}, context=context)
