"""Answers built to misbehave (issue 14): each fails with the right kind, or is written.

A ``Retry-After`` no parser reads, a Latin-1 ``Content-Type``, a body in an
encoding aiohttp cannot decode, an unparsable redirect target. Raw answers come
from ``EchoingAPI`` (aiohttp's server will not send them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from handler.app import lambda_handler
from tests.conftest import RAW_BUCKET, StartServer
from tests.support.echo_api import EchoingAPI
from tests.support.lambda_context import LocalContext
from tests.support.reliability import assert_counts, event_for, key_for
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private")]


@pytest.fixture
def raw_api() -> Iterator[EchoingAPI]:
    with EchoingAPI() as api:
        yield api


def run(event: dict[str, Any]) -> dict[str, Any]:
    return lambda_handler(event, LocalContext(timeout_s=30))


@pytest.mark.parametrize("value", ["²", "1²", "\uff11\uff10", "soon", "Fri, 31 Dec 99999 0:0:0"])
def test_an_unreadable_retry_after_is_ignored_and_the_503_keeps_its_kind(
    s3: MotoS3, api_server: StartServer, caplog: pytest.LogCaptureFixture, value: str
) -> None:
    # GIVEN an API answering 503 with a Retry-After no parser reads ("²".isdigit() is True)
    api = ScriptedAPI(default=Response(status=503, headers={"Retry-After": value}))
    url = api_server(api).url
    caplog.set_level(logging.ERROR)
    # WHEN one item is ingested with 3 attempts
    result = run(event_for(f"{url}/v1", batch=[{"date": "d"}], options={"max_attempts": 3}))
    # THEN it failed as http_status 503 after every attempt, with no traceback logged
    assert_counts(result)
    [failure] = result["failures"]
    assert (failure["kind"], failure["status"], failure["attempts"]) == ("http_status", 503, 3)
    assert api.hits["d"] == 3
    assert not [r for r in caplog.records if r.exc_info]


def test_a_latin1_content_type_does_not_lose_a_good_200(
    s3: MotoS3, raw_api: EchoingAPI, put_path: str
) -> None:
    # GIVEN an API whose Content-Type holds a Latin-1 byte (HTTP allows it)
    event = event_for(f"{raw_api.url}/v1", batch=[{"answer": "latin1-content-type"}])
    # WHEN the item is ingested, on the lean PUT path and on the SDK path
    result = run(event)
    # THEN the body is written, with the media type kept and the odd parameter dropped
    assert (result["succeeded"], result["failed"]) == (1, 0), result["failures"]
    key = key_for(result, 0)
    assert s3.get_bytes(RAW_BUCKET, key) == b'[{"a": 1}]'
    assert s3.head(RAW_BUCKET, key)["ContentType"] == "application/json"


def test_a_body_aiohttp_cannot_decode_fails_invalid_body_at_once(
    s3: MotoS3, raw_api: EchoingAPI
) -> None:
    # GIVEN an API sending brotli (or bytes no decoder accepts) whatever Accept-Encoding says
    event = event_for(
        f"{raw_api.url}/v1", batch=[{"answer": "brotli"}], options={"max_attempts": 4}
    )
    # WHEN the item is ingested with 4 attempts
    result = run(event)
    # THEN it failed as invalid_body after one request: a retry gets the same bytes
    assert_counts(result)
    [failure] = result["failures"]
    assert (failure["kind"], failure["attempts"]) == ("invalid_body", 1)
    assert failure["error"] == "the body's Content-Encoding could not be decoded"
    assert raw_api.hits["brotli"] == 1


def test_an_unparsable_redirect_target_is_blocked_with_a_summary(
    s3: MotoS3, raw_api: EchoingAPI, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN an API redirecting to "http://[..." (yarl raises ValueError on it)
    caplog.set_level(logging.ERROR)
    event = event_for(
        f"{raw_api.url}/v1", batch=[{"answer": "redirect-unparsable"}], options={"max_attempts": 3}
    )
    # WHEN the item is ingested
    result = run(event)
    # THEN it is blocked at once, with a summary and no "unexpected error" traceback
    [failure] = result["failures"]
    assert (failure["kind"], failure["attempts"]) == ("blocked", 1)
    assert failure["error"] == "HTTP 302 redirect to a Location that is not a valid URL"
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://169.254.170.2/v2/credentials/x",
        "http://[fd00:ec2::254]/latest/meta-data/",
    ],
)
def test_a_local_api_redirecting_to_cloud_metadata_is_blocked_under_the_flag(
    s3: MotoS3, api_server: StartServer, location: str
) -> None:
    # GIVEN FANOUT_ALLOW_PRIVATE_NETWORKS=true (a local API) and that API answering 302
    # to a metadata address, as a new user's test setup did
    api = ScriptedAPI(default=Response(status=302, headers={"Location": location}))
    url = api_server(api).url
    # WHEN the item is ingested
    result = run(event_for(f"{url}/v1", batch=[{"date": "d"}], options={"max_attempts": 3}))
    # THEN the redirect is refused before any connection, once, naming the reason
    [failure] = result["failures"]
    assert (failure["kind"], failure["attempts"]) == ("blocked", 1)
    assert "cloud metadata address" in failure["error"]
    assert api.hits["d"] == 1
