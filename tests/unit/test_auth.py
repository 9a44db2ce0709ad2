"""Auth providers (CONTRACT §12) without a network: the token endpoint is a fake.

Caching and renewal are timed with an injected token call and clock; the real
token request over aiohttp is in test_auth_mocked.py (aioresponses), and the
functional tests use a real token server."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from yarl import URL

from ingest_core.auth import (
    TOKEN_BACKOFF_BASE_S,
    BasicAuth,
    BasicAuthConfig,
    OAuth2ClientCredentials,
    OAuth2Config,
    _parse_token,
)
from ingest_core.errors import FetchError, HTTPStatusError
from ingest_core.netguard import NetPolicy

TOKEN_URL = "https://auth.example.com/token"
CONFIG = OAuth2Config(
    type="oauth2_client_credentials",
    token_url=TOKEN_URL,
    client_id="ssm:/app/id",
    client_secret="ssm:/app/secret",
)
VALUES = {
    "ssm:/app/id": "the-id",
    "ssm:/app/secret": "the-secret",
    "ssm:/u": "user",
    "ssm:/p": "pw",
}


def resolve(label: str, ref: str) -> str:
    return VALUES[ref]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """Answers token requests with tok-1, tok-2, ... and the given lifetimes."""

    def __init__(self, *lifetimes: float) -> None:
        self.lifetimes = list(lifetimes)
        self.forms: list[dict[str, str]] = []

    async def __call__(self, url: URL, form: dict[str, str]) -> tuple[str, float]:
        assert str(url) == TOKEN_URL
        self.forms.append(form)
        await asyncio.sleep(0.01)  # concurrent callers pile up behind the first
        return f"tok-{len(self.forms)}", self.lifetimes[len(self.forms) - 1]


def provider(clock: Clock, endpoint: TokenEndpoint) -> OAuth2ClientCredentials:
    http: Any = None  # never used: the token call is injected
    return OAuth2ClientCredentials(
        CONFIG, http, NetPolicy(), resolve, clock=clock, request_token=endpoint
    )


async def test_one_token_shared_by_concurrent_requests_until_shortly_before_expiry() -> None:
    clock = Clock()
    endpoint = TokenEndpoint(600, 600)
    auth = provider(clock, endpoint)
    # GIVEN 20 requests asking at once
    got = await asyncio.gather(*(auth.headers() for _ in range(20)))
    assert {h["Authorization"] for h in got} == {"Bearer tok-1"}
    assert auth.token_requests == 1
    # WHEN the clock nears the renewal margin (min(60 s, lifetime/10) before expiry)
    clock.now += 600 - 60 - 1
    assert (await auth.headers())["Authorization"] == "Bearer tok-1"
    clock.now += 2
    # THEN the next requests fetch one new token between them
    got = await asyncio.gather(*(auth.headers() for _ in range(5)))
    assert {h["Authorization"] for h in got} == {"Bearer tok-2"}
    assert auth.token_requests == 2


async def test_a_short_lived_token_is_renewed_a_tenth_of_its_life_early() -> None:
    clock = Clock()
    auth = provider(clock, TokenEndpoint(100, 100))
    await auth.headers()
    clock.now += 89
    await auth.headers()
    assert auth.token_requests == 1
    clock.now += 2
    await auth.headers()
    assert auth.token_requests == 2


async def test_a_401_renews_once_even_when_many_requests_saw_it() -> None:
    auth = provider(Clock(), TokenEndpoint(3600, 3600))
    stale = await auth.headers()
    retry = await asyncio.gather(*(auth.on_unauthorized(stale) for _ in range(8)))
    assert all(retry) and auth.token_requests == 2
    assert (await auth.headers())["Authorization"] == "Bearer tok-2"


async def test_the_token_request_carries_the_client_credentials_as_a_form() -> None:
    endpoint = TokenEndpoint(3600)
    await provider(Clock(), endpoint).headers()
    assert endpoint.forms == [
        {"grant_type": "client_credentials", "client_id": "the-id", "client_secret": "the-secret"}
    ]


@pytest.mark.parametrize(
    ("body", "usable"),
    [
        (b'{"access_token": "abc", "expires_in": 30}', ("abc", 30.0)),
        (b'{"access_token": "abc"}', ("abc", 3600.0)),
        (b'{"error": "invalid_client"}', None),
        (b"<html>", None),
    ],
)
def test_token_responses_are_read_strictly(body: bytes, usable: Any) -> None:
    if usable is None:
        with pytest.raises(FetchError, match="usable access_token"):
            _parse_token(body)
    else:
        assert _parse_token(body) == usable


async def test_basic_auth_header_from_references() -> None:
    auth = BasicAuth(BasicAuthConfig(type="basic", username="ssm:/u", password="ssm:/p"), resolve)
    header = (await auth.headers())["Authorization"]
    assert header == "Basic " + base64.b64encode(b"user:pw").decode()
    assert await auth.on_unauthorized({"Authorization": header}) is False


class FailingEndpoint:
    """A token endpoint answering ``status`` until ``healthy`` is set, then tok-N."""

    def __init__(self, status: int) -> None:
        self.status, self.healthy, self.calls = status, False, 0

    async def __call__(self, url: URL, form: dict[str, str]) -> tuple[str, float]:
        self.calls += 1
        await asyncio.sleep(0.01)  # concurrent callers pile up behind the first
        if not self.healthy:
            raise HTTPStatusError(
                f"token endpoint answered HTTP {self.status}",
                status=self.status,
                retryable=self.status >= 500,
            )
        return f"tok-{self.calls}", 3600


@pytest.mark.parametrize("status", [400, 500])
async def test_a_failing_token_endpoint_is_asked_once_per_backoff_window_for_the_run(
    status: int,
) -> None:
    # GIVEN a token endpoint that fails (400: client revoked; 500: down)
    clock = Clock()
    endpoint = FailingEndpoint(status)
    http: Any = None  # never used: the token call is injected
    auth = OAuth2ClientCredentials(
        CONFIG, http, NetPolicy(), resolve, clock=clock, request_token=endpoint
    )

    async def ask() -> BaseException | None:
        try:
            await auth.headers()
        except HTTPStatusError as exc:
            return exc
        return None

    # WHEN 40 requests want a token at once, then again just before the window ends
    first = await asyncio.gather(*(ask() for _ in range(40)))
    clock.now += TOKEN_BACKOFF_BASE_S - 0.01
    again = await asyncio.gather(*(ask() for _ in range(40)))
    # THEN one token request was made; all 80 failed with its answer and its retryability
    assert endpoint.calls == 1
    for error in first + again:
        assert isinstance(error, HTTPStatusError)
        assert (error.status, error.retryable) == (status, status >= 500)
        assert "the token endpoint is asked again in" in str(error) or error is first[0]
    # AND past the window one more request goes, and the next window is twice as long
    clock.now += 0.02
    await asyncio.gather(*(ask() for _ in range(40)))
    assert endpoint.calls == 2
    clock.now += 2 * TOKEN_BACKOFF_BASE_S - 0.01
    await ask()
    assert endpoint.calls == 2
    # AND once the endpoint recovers, the next window's one request brings the token
    endpoint.healthy = True
    clock.now += 0.02
    assert await asyncio.gather(*(ask() for _ in range(40))) == [None] * 40
    assert endpoint.calls == 3


async def test_a_renewed_token_the_api_refuses_too_is_not_renewed_again() -> None:
    # GIVEN an API refusing every token: the first 401 renews the token once
    auth = provider(Clock(), TokenEndpoint(3600, 3600, 3600))
    first = await auth.headers()
    assert await auth.on_unauthorized(first) is True
    renewed = await auth.headers()
    assert renewed != first
    # WHEN the renewed token is refused too, by many requests
    retry = await asyncio.gather(*(auth.on_unauthorized(renewed) for _ in range(8)))
    # THEN none of them asks for another token: 2 token requests in all
    assert retry == [False] * 8
    assert auth.token_requests == 2
