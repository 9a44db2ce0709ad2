"""secret_params and OAuth2 (CONTRACT §12) end to end: the handler, moto SSM, a local token server.

A secret query parameter must reach the API on every page and appear nowhere
else: no log record at any level, no result, manifest, key, object or object
metadata, no error text. An OAuth2 token server counts its token requests: one
per run, one more after the API refuses the token with 401, no more when it
refuses that one too; a failing token endpoint once per backoff window.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import boto3
import orjson
import pytest
from aiohttp import web

from handler.app import lambda_handler
from tests.conftest import RAW_BUCKET
from tests.support.lambda_context import LocalContext
from tests.support.paged_api import PagedAPI
from tests.support.reliability import SOURCE, Canary, assert_counts, event_for
from tests.support.servers import MotoS3

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("allow_private", "fresh_secrets"),
]

CURSOR = {"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "after"}


@pytest.fixture
def ssm(s3: MotoS3, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's SSM (the session's moto server serves every service)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", s3.endpoint)
    yield boto3.session.Session(region_name="us-east-1").client("ssm", endpoint_url=s3.endpoint)


def put(ssm: Any, name: str, value: str) -> str:
    ssm.put_parameter(Name=name, Value=value, Type="SecureString", Overwrite=True)
    return f"ssm:{name}"


def everything_stored(s3: MotoS3) -> str:
    parts = []
    for key in s3.list_keys(RAW_BUCKET):
        parts += [
            key,
            s3.get_bytes(RAW_BUCKET, key).decode(),
            json.dumps(s3.head(RAW_BUCKET, key), default=str),
        ]
    return "\n".join(parts)


def test_a_secret_param_reaches_every_page_and_appears_nowhere_else(
    s3: MotoS3, ssm: Any, api_server: Any, caplog: pytest.LogCaptureFixture, canary: Canary
) -> None:
    # GIVEN an API key in SSM that the API requires on every page, DEBUG logging everywhere
    key = f"canary-{uuid.uuid4().hex}"
    ref = put(ssm, "/weather/key", key)
    api = PagedAPI(api_key=key, away_origin=f"http://127.0.0.1:{canary.port}")
    url = api_server(api.app).url
    caplog.set_level(logging.DEBUG)
    # WHEN a link-header chain (links without the key), a cursor chain and a chain whose
    # next link leaves the origin run, each with the key as a secret param
    results = []
    for route, pagination in (
        ("link", {"type": "link_header"}),
        ("cursor", CURSOR),
        ("away", {"type": "link_header"}),
    ):
        event = event_for(
            f"{url}/{route}",
            batch=[{"date": "d"}],
            request_id=f"sec-{route}",
            secret_params={"api_key": ref},
            pagination=pagination,
            records_path=None,
        )
        if route == "cursor":
            event["api_config"]["records_path"] = "items"
        results.append(lambda_handler(event, LocalContext()))
    # THEN the key went with every request to the API, and nothing reached the other origin
    assert [r["status"] for r in results] == ["SUCCESS", "SUCCESS", "FAILED"]
    assert results[2]["failures"][0]["kind"] == "blocked"
    assert api.seen and all(s.query.get("api_key") == key for s in api.seen)
    assert canary.connections() == 0
    # AND it is in no result, object, key, metadata, manifest or log record
    for result in results:
        assert_counts(result)
        assert key not in orjson.dumps(result).decode()
    assert key not in everything_stored(s3)
    for record in caplog.records:
        assert key not in record.getMessage() and key not in repr(record.__dict__)
    # AND the params hash is that of the item's own params
    meta = s3.head(RAW_BUCKET, f"{SOURCE}/sec-link-0-0.json")["Metadata"]
    assert meta["page"] == "0" and "api_key" not in json.dumps(meta)


class TokenServer:
    """A local OAuth2 token endpoint counting what it was asked."""

    def __init__(self, lifetime_s: int = 3600, *, failing: int | None = None) -> None:
        self.issued: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.lifetime_s = lifetime_s
        self.failing = failing  # answer every request with this status instead

    @property
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/token", self._token)
        return app

    def current(self) -> str | None:
        return self.issued[-1] if self.issued else None

    async def _token(self, request: web.Request) -> web.Response:
        self.forms.append(dict(await request.post()))
        if self.failing is not None:
            return web.json_response({"error": "invalid_client"}, status=self.failing)
        self.issued.append(f"tok-{uuid.uuid4().hex}")
        return web.json_response(
            {"access_token": self.issued[-1], "token_type": "Bearer", "expires_in": self.lifetime_s}
        )


def oauth_event(url: str, token_url: str, ssm: Any, dates: list[str], rid: str) -> dict[str, Any]:
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": token_url,
        "client_id": put(ssm, "/app/client-id", "client-abc"),
        "client_secret": put(ssm, "/app/client-secret", "shh-client-secret-123"),
        "scope": "read",
    }
    return event_for(
        f"{url}/cursor",
        batch=[{"date": d} for d in dates],
        request_id=rid,
        pagination=CURSOR,
        records_path="items",
        auth=auth,
    )


def test_oauth2_one_token_per_run_shared_by_every_request(
    s3: MotoS3, ssm: Any, api_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a token server and an API that accepts only the token it issued last
    tokens = TokenServer()
    token_url = api_server(tokens.app).url + "/token"
    api = PagedAPI(bearer=tokens.current)
    url = api_server(api.app).url
    event = oauth_event(url, token_url, ssm, [f"d{i}" for i in range(6)], "oauth")
    caplog.set_level(logging.DEBUG)  # after planting the secrets: that call logs them
    # WHEN 6 items of 3 pages each run at concurrency 8
    result = lambda_handler(event, LocalContext())
    # THEN every page succeeded on one token, fetched once with the client credentials
    assert result["status"] == "SUCCESS" and result["pages_written"] == 18
    assert len(tokens.issued) == 1
    assert tokens.forms[0] == {
        "grant_type": "client_credentials",
        "client_id": "client-abc",
        "client_secret": "shh-client-secret-123",
        "scope": "read",
    }
    assert {s.headers["Authorization"] for s in api.seen} == {f"Bearer {tokens.issued[0]}"}
    # AND neither the token nor the client secret is anywhere
    for secret in (tokens.issued[0], "shh-client-secret-123"):
        assert secret not in orjson.dumps(result).decode()
        assert secret not in everything_stored(s3)
        leaks = [
            r for r in caplog.records if secret in r.getMessage() or secret in repr(r.__dict__)
        ]
        assert not leaks, (secret[:6], leaks[0].name, leaks[0].getMessage()[:300])


def test_oauth2_fetches_one_new_token_when_the_api_answers_401(
    s3: MotoS3, ssm: Any, api_server: Any
) -> None:
    # GIVEN an API that revokes the token in use at its 4th request
    tokens = TokenServer()
    token_url = api_server(tokens.app).url + "/token"
    revoked: set[str | None] = set()
    checks = 0

    def valid() -> str | None:
        nonlocal checks
        checks += 1
        if checks == 4:
            revoked.add(tokens.current())
        return None if tokens.current() in revoked else tokens.current()

    api = PagedAPI(bearer=valid)
    url = api_server(api.app).url
    # WHEN 3 items of 3 pages run
    result = lambda_handler(
        oauth_event(url, token_url, ssm, ["a", "b", "c"], "oauth-401"), LocalContext()
    )
    # THEN the 401s cost exactly one more token, and every page landed on the new one
    assert result["status"] == "SUCCESS" and result["pages_written"] == 9
    assert len(tokens.issued) == 2
    refused = [s for s in api.seen if s.headers["Authorization"] == f"Bearer {tokens.issued[0]}"]
    assert len(api.seen) - len(refused) >= 9 - 3  # pages after the revocation used token 2


# ------------------------------------------------ issue 19: a token endpoint that fails


@pytest.mark.parametrize("status", [400, 500])
def test_oauth2_a_failing_token_endpoint_is_asked_once_per_backoff_window_not_per_item(
    s3: MotoS3, ssm: Any, api_server: Any, status: int
) -> None:
    # GIVEN a token endpoint answering 400 (client revoked) or 500 to every request
    tokens = TokenServer(failing=status)
    token_url = api_server(tokens.app).url + "/token"
    api = PagedAPI(bearer=tokens.current)
    url = api_server(api.app).url
    event = oauth_event(url, token_url, ssm, [f"d{i}" for i in range(40)], f"tok-{status}")
    event["options"]["max_attempts"] = 3
    # WHEN 40 items run, 3 attempts each
    result = lambda_handler(event, LocalContext())
    # THEN every item failed with the token endpoint's answer, the API never asked...
    assert (result["failed"], result["succeeded"]) == (40, 0)
    assert {(f["kind"], f["status"]) for f in result["failures"]} == {("http_status", status)}
    assert api.seen == []
    # ...and the token endpoint was asked once per backoff window (1 s, then 2 s), at
    # most max_attempts times in all: not once per item (40) or per attempt (120)
    assert 1 <= len(tokens.forms) <= 3, len(tokens.forms)


def test_oauth2_an_api_refusing_every_token_costs_two_token_requests(
    s3: MotoS3, ssm: Any, api_server: Any
) -> None:
    # GIVEN an API answering 401 to every token
    tokens = TokenServer()
    token_url = api_server(tokens.app).url + "/token"
    api = PagedAPI(bearer=lambda: "never-this-token")
    url = api_server(api.app).url
    event = oauth_event(url, token_url, ssm, [f"d{i}" for i in range(200)], "tok-401")
    # WHEN 200 items run at concurrency 8
    result = lambda_handler(event, LocalContext())
    # THEN every item failed 401, after one forced renewal for the whole run: the token
    # a 401 made us fetch was refused too, so no other was asked for
    assert (result["failed"], result["succeeded"]) == (200, 0)
    assert {(f["kind"], f["status"]) for f in result["failures"]} == {("http_status", 401)}
    assert len(tokens.forms) <= 2, len(tokens.forms)
