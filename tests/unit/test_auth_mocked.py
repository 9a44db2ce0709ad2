"""The OAuth2 token request over aiohttp (aioresponses; CONTRACT §12).

tests/unit/test_auth.py injects the token call to test caching and renewal; here
the provider makes its real call (``_token_request``) through an aiohttp session
whose answers aioresponses scripts (``tests.support.mock_http``): the form it
posts, how each kind of answer fails, and that no failure names the secret.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from yarl import URL

from ingest_core.auth import OAuth2ClientCredentials, OAuth2Config
from ingest_core.errors import FetchConnectionError, FetchError, HTTPStatusError
from ingest_core.netguard import NetPolicy
from tests.support.mock_http import mock_http

TOKEN_URL = "https://auth.example.com/oauth/token"
SECRET = "s3cr3t-value"
CONFIG = OAuth2Config(
    type="oauth2_client_credentials",
    token_url=TOKEN_URL,
    client_id="ssm:/app/id",
    client_secret="ssm:/app/secret",
    scope="read:data",
)
VALUES = {"ssm:/app/id": "the-id", "ssm:/app/secret": SECRET}


def resolve(label: str, ref: str) -> str:
    return VALUES[ref]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def provider(http: aiohttp.ClientSession) -> OAuth2ClientCredentials:
    return OAuth2ClientCredentials(CONFIG, http, NetPolicy(), resolve)


async def test_the_token_is_fetched_once_with_a_form_post_and_sent_as_bearer(
    http: aiohttp.ClientSession,
) -> None:
    # GIVEN a token endpoint answering one token
    with mock_http() as mocked:
        mocked.post(TOKEN_URL, payload={"access_token": "tok-1", "expires_in": 3600})
        auth = provider(http)
        # WHEN two requests ask for headers
        first, second = await auth.headers(), await auth.headers()
        calls = mocked.requests[("POST", URL(TOKEN_URL))]
    # THEN one POST carried the client credentials and scope as a form
    assert first == second == {"Authorization": "Bearer tok-1"}
    assert len(calls) == 1
    assert calls[0].kwargs["data"] == {
        "grant_type": "client_credentials",
        "client_id": "the-id",
        "client_secret": SECRET,
        "scope": "read:data",
    }
    assert calls[0].kwargs["allow_redirects"] is False


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (401, False)]
)
async def test_a_token_endpoint_error_status_fails_with_its_status_and_retryability(
    http: aiohttp.ClientSession, status: int, retryable: bool
) -> None:
    with mock_http() as mocked:
        mocked.post(TOKEN_URL, status=status, payload={"error": "nope"})
        with pytest.raises(HTTPStatusError) as caught:
            await provider(http).headers()
    assert caught.value.status == status
    assert caught.value.retryable is retryable
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "answer",
    [
        {"body": "<html>login</html>", "content_type": "text/html"},
        {"payload": {"error": "invalid_client"}},
        {"payload": {"access_token": ""}},
        {"payload": {"access_token": "a\r\nInjected: yes"}},
    ],
)
async def test_a_200_without_a_usable_token_is_not_retried(
    http: aiohttp.ClientSession, answer: dict[str, Any]
) -> None:
    with mock_http() as mocked:
        mocked.post(TOKEN_URL, **answer)
        with pytest.raises(FetchError, match="usable access_token") as caught:
            await provider(http).headers()
    assert caught.value.retryable is False


async def test_a_connection_failure_names_neither_the_form_nor_the_secret(
    http: aiohttp.ClientSession,
) -> None:
    # GIVEN a token endpoint that drops the connection
    with mock_http() as mocked:
        mocked.post(TOKEN_URL, exception=aiohttp.ServerDisconnectedError())
        with pytest.raises(FetchConnectionError) as caught:
            await provider(http).headers()
    # THEN the error says what failed, and nothing of the form
    message = str(caught.value)
    assert "token endpoint" in message
    assert SECRET not in message and "the-id" not in message
    assert caught.value.__cause__ is None  # the aiohttp error (and its request) is dropped


async def test_a_refused_token_is_renewed_once_through_the_endpoint(
    http: aiohttp.ClientSession,
) -> None:
    with mock_http() as mocked:
        mocked.post(TOKEN_URL, payload={"access_token": "tok-1", "expires_in": 3600})
        mocked.post(TOKEN_URL, payload={"access_token": "tok-2", "expires_in": 3600})
        auth = provider(http)
        stale = await auth.headers()
        # WHEN the API refuses tok-1 (a 401 seen by one request)
        assert await auth.on_unauthorized(stale) is True
        # THEN the next headers carry tok-2, after exactly two token requests
        assert await auth.headers() == {"Authorization": "Bearer tok-2"}
        assert len(mocked.requests[("POST", URL(TOKEN_URL))]) == 2
