"""Secrets (issue #6): a bearer token from Secrets Manager reaches the API and nothing else.

The token lives in moto's Secrets Manager (the session's moto server serves every
service; ``AWS_ENDPOINT_URL_SECRETS_MANAGER`` points there: botocore derives the
name from the service id "Secrets Manager", so ``..._SECRETSMANAGER`` would be
ignored) and is resolved by the
handler through Powertools Parameters. It must be sent to the API and appear in no
log record at any level (DEBUG on the root, aiohttp, botocore, aiobotocore, boto3,
urllib3, Powertools and our own loggers), on stdout/stderr, in the result, the
manifest, any object or object metadata, or any exception text, also when the API
answers 401/403 and when the connection fails mid-request.
"""

from __future__ import annotations

import io
import json
import logging
import socket
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import orjson
import pytest

from handler import app
from handler.app import lambda_handler
from ingest_core import PartialFailureError, SecretResolutionError, resolve_secret_headers
from tests.conftest import RAW_BUCKET
from tests.support.faults import FaultyAPI
from tests.support.lambda_context import LocalContext
from tests.support.reliability import assert_counts, event_for
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("allow_private", "fresh_secrets"),
]

SECRET_NAME = "prod/api-token"
DEBUG_LOGGERS = (
    "",
    "aiohttp",
    "aiobotocore",
    "botocore",
    "boto3",
    "urllib3",
    "aws_lambda_powertools",
    "ingest_core",
    "handler",
)


@dataclass
class Vault:
    """The moto Secrets Manager / SSM of one test and the token it holds."""

    token: str
    endpoint: str

    def client(self, service: str) -> Any:
        return boto3.session.Session(region_name="us-east-1").client(
            service, endpoint_url=self.endpoint
        )

    def put_secret(self, name: str, value: str) -> None:
        self.client("secretsmanager").create_secret(Name=name, SecretString=value)


@pytest.fixture
def vault(s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Vault:
    """A token stored as ``prod/api-token``; Secrets Manager and SSM point at moto.

    ``AWS_ENDPOINT_URL`` too, as a safety net: any AWS call this test did not
    foresee goes to moto on loopback, never to AWS.
    """
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", s3.endpoint)
    vault = Vault(token=f"Bearer sk-live-{uuid.uuid4().hex}", endpoint=s3.endpoint)
    vault.put_secret(SECRET_NAME, vault.token)
    return vault


@dataclass
class Capture:
    """Everything the process said while a test ran."""

    caplog: pytest.LogCaptureFixture
    capfd: pytest.CaptureFixture[str]
    powertools: io.StringIO

    def texts(self) -> list[str]:
        out, err = self.capfd.readouterr()
        texts = [out, err, self.powertools.getvalue()]
        for record in self.caplog.records:
            texts.append(record.getMessage())
            texts.append(repr(record.__dict__))
            if record.exc_info:
                texts.append("".join(traceback.format_exception(*record.exc_info)))
        return texts

    def reset(self) -> None:
        """Forget what was said so far (the test's own boto3 calls that plant secrets)."""
        self.caplog.clear()
        self.capfd.readouterr()
        self.powertools.seek(0)
        self.powertools.truncate()

    def assert_no(self, secret: str) -> None:
        leaks = [text for text in self.texts() if secret in text]
        assert not leaks, f"the secret leaked into {len(leaks)} log texts: {leaks[0][:300]}"


@pytest.fixture
def capture(
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Capture]:
    """DEBUG everywhere; the Powertools logger (which does not propagate) into a buffer."""
    for name in DEBUG_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    powertools = logging.getLogger(app.logger.name)
    buffer = io.StringIO()
    for handler in powertools.handlers:
        monkeypatch.setattr(handler, "stream", buffer)
    old_level = powertools.level
    powertools.setLevel(logging.DEBUG)
    powertools.addHandler(caplog.handler)
    try:
        yield Capture(caplog, capfd, buffer)
    finally:
        powertools.removeHandler(caplog.handler)
        powertools.setLevel(old_level)


def secret_event(url: str, dates: list[str], **options: Any) -> dict[str, Any]:
    return event_for(
        url,
        batch=[{"date": d} for d in dates],
        options=options,
        request_id="sec",
        secret_headers={"Authorization": f"secretsmanager:{SECRET_NAME}"},
        headers={"Accept": "application/json"},
    )


def assert_stored_nowhere(s3: MotoS3, secret: str) -> None:
    """No object, manifest or object metadata in the bucket holds the secret."""
    for key in s3.list_keys(RAW_BUCKET):
        assert secret.encode() not in s3.get_bytes(RAW_BUCKET, key), key
        assert secret not in json.dumps(s3.head(RAW_BUCKET, key), default=str), key


def exception_texts(exc: BaseException) -> str:
    """The chain as a traceback prints it, plus the repr and attributes of each link.

    Links are followed as ``traceback`` does: ``__cause__``, else ``__context__``
    unless suppressed by ``raise ... from None``.
    """
    parts = ["".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    for _ in range(20):  # bounded walk of the chain
        if seen is None:
            break
        parts.append(repr(seen))
        parts.append(repr(getattr(seen, "__dict__", {})))
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return "\n".join(parts)


def test_the_token_is_sent_to_the_api_and_appears_nowhere_else(
    s3: MotoS3, vault: Vault, api_server: Any, capture: Capture
) -> None:
    # GIVEN a secret header resolved from Secrets Manager, and DEBUG logging everywhere
    api = ScriptedAPI()
    url = api_server(api).url
    # WHEN the handler ingests 3 items
    result = lambda_handler(secret_event(f"{url}/v1/data", ["a", "b", "c"]), LocalContext())
    # THEN the API received the token on every request
    assert result["status"] == "SUCCESS"
    assert api.headers_sent("Authorization") == [vault.token] * 3
    # AND the token is in no log line, output, result, object, manifest or metadata
    assert vault.token not in orjson.dumps(result).decode()
    capture.assert_no(vault.token)
    assert_stored_nowhere(s3, vault.token)
    # AND the capture really saw DEBUG records from botocore and the summary line
    assert any(r.name.startswith("botocore") for r in capture.caplog.records)
    assert "ingest summary" in capture.powertools.getvalue()


@pytest.mark.parametrize("status", [401, 403])
def test_an_api_refusing_the_token_fails_the_items_without_echoing_it(
    s3: MotoS3, vault: Vault, api_server: Any, capture: Capture, status: int
) -> None:
    # GIVEN an API that refuses the token, and fail_on_error so the handler raises
    api = ScriptedAPI(default=Response(status=status))
    url = api_server(api).url
    # WHEN the handler runs
    with pytest.raises(PartialFailureError) as caught:
        lambda_handler(
            secret_event(f"{url}/v1/data", ["a", "b"], fail_on_error=True), LocalContext()
        )
    # THEN the items failed with the status, once each (4xx is not retried)
    result = caught.value.result
    assert_counts(result)
    assert {(f["kind"], f["status"], f["attempts"]) for f in result["failures"]} == {
        ("http_status", status, 1)
    }
    assert api.headers_sent("Authorization") == [vault.token] * 2
    # AND the token is in no exception text, result, log line or object
    assert vault.token not in exception_texts(caught.value)
    assert vault.token not in orjson.dumps(result).decode()
    capture.assert_no(vault.token)
    assert_stored_nowhere(s3, vault.token)


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("fault", ["reset-mid-body", "connection-refused"])
def test_connection_errors_carrying_the_request_do_not_leak_it(
    s3: MotoS3,
    vault: Vault,
    api_server: Any,
    capture: Capture,
    fault: str,
) -> None:
    # GIVEN an API that resets the connection mid-body, or a port that refuses connections
    if fault == "reset-mid-body":
        url = f"{api_server(FaultyAPI()).url}/reset-mid-body"
    else:
        url = f"http://127.0.0.1:{closed_port()}/v1/data"
    event = secret_event(url, ["a"], fail_on_error=True, max_attempts=2, connect_timeout_s=2)
    # WHEN the handler runs
    with pytest.raises(PartialFailureError) as caught:
        lambda_handler(event, LocalContext())
    # THEN the item failed with a connection kind, and the token leaked nowhere
    [failure] = caught.value.result["failures"]
    assert failure["kind"] in {"truncated", "connection"}
    assert vault.token not in exception_texts(caught.value)
    assert vault.token not in orjson.dumps(caught.value.result).decode()
    capture.assert_no(vault.token)
    assert_stored_nowhere(s3, vault.token)


def test_a_redirect_to_another_origin_drops_the_secret_header(
    s3: MotoS3, vault: Vault, api_server: Any, capture: Capture
) -> None:
    # GIVEN an API that redirects one item to another origin and one to its own origin
    first = FaultyAPI()
    other = ScriptedAPI()
    first_url, other_url = api_server(first).url, api_server(other).url
    event = secret_event(f"{first_url}/redirect-to", [])
    event["batch"] = [
        {"key": "away", "url": f"{other_url}/v1/data?date=x"},
        {"key": "home", "url": "/status/200?key=home-target"},
    ]
    # WHEN the handler follows both redirects
    result = lambda_handler(event, LocalContext())
    # THEN both landed; the other origin never saw the token, the same origin did
    assert result["status"] == "SUCCESS", result["failures"]
    assert other.headers_sent("Authorization") == []
    assert other.headers_sent("Accept") == ["application/json"]  # plain headers still go
    home = [r for r in first.requests if r.path == "/status/200"]
    assert [r.headers.get("Authorization") for r in home] == [vault.token]
    capture.assert_no(vault.token)


def test_json_key_and_ssm_references_resolve_to_their_values(
    s3: MotoS3, vault: Vault, api_server: Any
) -> None:
    # GIVEN a JSON secret with a token field, and an SSM SecureString
    vault.put_secret("prod/api-json", json.dumps({"token": "json-token-1", "other": "x"}))
    vault.client("ssm").put_parameter(
        Name="/prod/api-key", Value="ssm-token-2", Type="SecureString"
    )
    api = ScriptedAPI()
    event = secret_event(f"{api_server(api).url}/v1/data", ["a"])
    event["api_config"]["secret_headers"] = {
        "Authorization": "secretsmanager:prod/api-json#token",
        "X-Api-Key": "ssm:/prod/api-key",
    }
    # WHEN handled
    result = lambda_handler(event, LocalContext())
    # THEN each header carried its resolved value
    assert result["status"] == "SUCCESS"
    assert api.headers_sent("Authorization") == ["json-token-1"]
    assert api.headers_sent("X-Api-Key") == ["ssm-token-2"]


@pytest.mark.parametrize(
    ("ref", "stored", "reason"),
    [
        ("secretsmanager:prod/missing", None, "could not be resolved"),
        ("secretsmanager:prod/two-lines", "line-one-secret\nline-two-secret", "single-line"),
        ("secretsmanager:prod/doc#absent", '{"token": "doc-secret-value"}', "no key 'absent'"),
        ("secretsmanager:prod/not-json#token", "plain-secret-value", "not a JSON object"),
    ],
    ids=["missing", "two-lines", "json-key-absent", "not-json"],
)
def test_a_reference_that_cannot_be_resolved_names_the_reference_not_the_value(
    vault: Vault, capture: Capture, ref: str, stored: str | None, reason: str
) -> None:
    # GIVEN a secret reference that is missing or holds an unusable value
    name = ref.removeprefix("secretsmanager:").partition("#")[0]
    if stored is not None:
        vault.put_secret(name, stored)
    capture.reset()
    # WHEN it is resolved
    with pytest.raises(SecretResolutionError) as caught:
        resolve_secret_headers({"Authorization": ref})
    # THEN the error names the header and the reference, and shows no stored value
    message = str(caught.value)
    assert f"secret_headers.Authorization ({ref})" in message and reason in message
    for value in ("line-one-secret", "doc-secret-value", "plain-secret-value"):
        assert value not in exception_texts(caught.value)
        capture.assert_no(value)
