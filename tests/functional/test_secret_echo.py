"""A hostile API echoes the secret token back (issue 14): it must appear nowhere.

The token is resolved from moto's Secrets Manager by the handler (fixtures of
test_secrets.py). ``EchoingAPI`` puts it into each kind of malformed answer
aiohttp's parser rejects, and into redirect targets; the canary is then looked for
in ``failures[].error``, the manifest, ``PartialFailureError`` (text, chain and
result) and every log record at every level.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest

from handler.app import lambda_handler
from ingest_core import PartialFailureError
from tests.conftest import RAW_BUCKET
from tests.functional import test_secrets as secrets_suite
from tests.functional.test_secrets import (
    Capture,
    Vault,
    assert_stored_nowhere,
    exception_texts,
    secret_event,
)
from tests.support.echo_api import ANSWERS, EchoingAPI
from tests.support.lambda_context import LocalContext
from tests.support.reliability import assert_counts
from tests.support.servers import MotoS3

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("allow_private", "fresh_secrets"),
]

vault = secrets_suite.vault
capture = secrets_suite.capture

EXPECTED_KINDS = {
    "content-length": "connection",
    "header-name": "connection",
    "long-line": "connection",
    "status-line": "connection",
    "chunk-size": "connection",
    "chunk-size-mid-body": "truncated",
    "redirect-unparsable": "blocked",
    "redirect-not-allowed": "blocked",
}


@pytest.fixture
def echoing_api() -> Iterator[EchoingAPI]:
    with EchoingAPI() as api:
        yield api


def test_every_answer_is_covered() -> None:
    assert set(EXPECTED_KINDS) == set(ANSWERS)


def test_a_token_echoed_into_malformed_answers_and_redirects_leaks_nowhere(
    s3: MotoS3,
    vault: Vault,
    capture: Capture,
    echoing_api: EchoingAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # GIVEN an API that echoes the Authorization value into every kind of broken
    # answer, an allow-list that admits only its own host, and DEBUG logs everywhere
    monkeypatch.setenv("FANOUT_ALLOWED_HOSTS", "127.0.0.1")
    credentials = vault.token.partition(" ")[2]
    answers = list(ANSWERS)
    event = secret_event(f"{echoing_api.url}/v1/data", [], fail_on_error=True, max_attempts=1)
    event["batch"] = [{"answer": answer} for answer in answers]
    # WHEN the handler ingests one item per answer
    with pytest.raises(PartialFailureError) as caught:
        lambda_handler(event, LocalContext(timeout_s=30))
    # THEN each failed with the kind chosen for it, with a summary as its error
    result = caught.value.result
    assert_counts(result)
    kinds = {answers[f["index"]]: f["kind"] for f in result["failures"]}
    assert kinds == EXPECTED_KINDS
    errors = {answers[f["index"]]: f["error"] for f in result["failures"]}
    assert errors["header-name"] == "malformed response: Invalid header token"
    assert errors["redirect-unparsable"] == (
        "HTTP 302 redirect to a Location that is not a valid URL"
    )
    # AND neither the token nor its credentials are in the result, the exception,
    # the manifest, any object or any log record (no fragment either: "sk-live")
    for canary in (vault.token, credentials, credentials[:12]):
        assert canary not in orjson.dumps(result).decode()
        assert canary not in exception_texts(caught.value)
        assert_stored_nowhere(s3, canary)
        capture.assert_no(canary)
    manifest = s3.get_bytes(RAW_BUCKET, result["manifest_key"]).decode()
    assert manifest.count('"status":"failed"') == len(answers)
