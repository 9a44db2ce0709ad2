"""``api_config.auth`` (CONTRACT §12): OAuth2 client credentials and HTTP basic.

Every credential in the config is a secret reference, resolved at run time (off
the event loop). One provider serves a whole run:

- ``OAuth2ClientCredentials`` fetches one token for the run, shared by every
  request (one token request in flight at most), fetches a new one shortly before
  it expires, and once more when the API answers 401 to a token (``on_unauthorized``);
  a 401 to that renewed token fails the item without asking for another: the
  credentials, not the token, are refused. A failing token endpoint is asked once
  per backoff window for the whole run (1, 2, 4 ... 60 s); the requests in between
  fail at once with its last answer, so 40 items cost one token request, not 40.
  The token URL passes the same SSRF checks as the endpoint. The token and the
  client secret never appear in a log, a result or an exception message.
- ``BasicAuth`` sends ``Authorization: Basic``.

The fetcher asks the provider for its headers on every request and only ever
sends them to the endpoint's origin (they are dropped on cross-origin redirects).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Literal, Protocol

import aiohttp
import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo, field_validator
from yarl import URL

from ingest_core.errors import (
    BlockedError,
    FetchConnectionError,
    FetchError,
    FetchTimeout,
    HTTPStatusError,
)
from ingest_core.netguard import NetPolicy, check_url
from ingest_core.redact import register_secret
from ingest_core.retry import is_retryable_status

SECRET_REF_PATTERN = r"^(secretsmanager:[^#\s]+(#[^#\s]+)?|ssm:/[^\s]+)$"
# Renew this long before expiry, so no request goes out with a token about to lapse.
REFRESH_MARGIN_S = 60.0
DEFAULT_TOKEN_LIFETIME_S = 3600.0
MAX_TOKEN_RESPONSE_BYTES = 64 * 1024
# After a failed token request, the next one waits this long, doubling per failure.
TOKEN_BACKOFF_BASE_S = 1.0
TOKEN_BACKOFF_CAP_S = 60.0
_SECRET_REF_RE = re.compile(SECRET_REF_PATTERN)


def _is_reference(value: str) -> str:
    if not _SECRET_REF_RE.match(value):
        # The value is never echoed: it may be the credential itself.
        raise ValueError(
            "must be a reference (secretsmanager:NAME, secretsmanager:NAME#json_key"
            " or ssm:/param/name), never a secret"
        )
    return value


SecretRef = Annotated[str, AfterValidator(_is_reference)]


class OAuth2Config(BaseModel):
    """``{"type": "oauth2_client_credentials", "token_url", "client_id", "client_secret"}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: SecretRef
    client_secret: SecretRef
    scope: str | None = None

    @field_validator("token_url")
    @classmethod
    def _token_url_allowed(cls, value: str, info: ValidationInfo) -> str:
        context = info.context or {}
        policy = context.get("policy")
        try:
            check_url(value, policy if isinstance(policy, NetPolicy) else NetPolicy.from_env())
        except BlockedError as exc:
            raise ValueError(str(exc)) from None
        return value


class BasicAuthConfig(BaseModel):
    """``{"type": "basic", "username": REF, "password": REF}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["basic"]
    username: SecretRef
    password: SecretRef


AuthConfig = OAuth2Config | BasicAuthConfig
# Resolves secret references to values (``secrets.resolve_secret``); blocking.
Resolve = Callable[[str, str], str]
# Posts the form to the token URL; returns the token and its lifetime in seconds.
TokenRequest = Callable[[URL, dict[str, str]], Awaitable[tuple[str, float]]]


class AuthProvider(Protocol):
    """What the fetcher needs from an auth method."""

    async def headers(self) -> Mapping[str, str]:
        """Headers to add to an API request (fetching a token when needed)."""
        ...

    async def on_unauthorized(self, sent: Mapping[str, str]) -> bool:
        """The API answered 401 to ``sent``: True when a retry with new headers makes sense."""
        ...

    def secrets(self) -> list[str]:
        """Every credential value known so far, for redaction."""
        ...


@dataclass(slots=True)
class BasicAuth:
    """HTTP basic auth from two secret references."""

    config: BasicAuthConfig
    resolve: Resolve
    _header: dict[str, str] | None = None
    _values: list[str] = field(default_factory=list)

    async def headers(self) -> Mapping[str, str]:
        if self._header is None:
            user, password = await asyncio.gather(
                asyncio.to_thread(self.resolve, "auth.username", self.config.username),
                asyncio.to_thread(self.resolve, "auth.password", self.config.password),
            )
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            register_secret(token)
            self._values = [password, token]
            self._header = {"Authorization": f"Basic {token}"}
        return self._header

    async def on_unauthorized(self, sent: Mapping[str, str]) -> bool:
        return False  # the same credentials would be refused again

    def secrets(self) -> list[str]:
        return list(self._values)


@dataclass(slots=True)
class OAuth2ClientCredentials:
    """One OAuth2 token per run, shared by every request and renewed before expiry."""

    config: OAuth2Config
    http: aiohttp.ClientSession
    policy: NetPolicy
    resolve: Resolve
    clock: Callable[[], float] = time.monotonic
    # The token endpoint call; injectable so tests need no server (aioresponses
    # cannot mock the pinned aiohttp).
    request_token: TokenRequest | None = None
    token: str | None = None
    expires_at: float = 0.0
    token_requests: int = 0
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _client: tuple[str, str] | None = None
    _renewed_after_401: str | None = None  # the token a 401 made us fetch
    _failure: FetchError | None = None  # the token endpoint's last failure...
    _failures: int = 0  # ...how many in a row...
    _retry_at: float = 0.0  # ...and when it may be asked again

    async def headers(self) -> Mapping[str, str]:
        token = self.token
        if token is None or self.clock() >= self.expires_at:
            token = await self._renew(stale=token)
        return {"Authorization": f"Bearer {token}"}

    async def on_unauthorized(self, sent: Mapping[str, str]) -> bool:
        stale = sent.get("Authorization", "").removeprefix("Bearer ") or None
        if stale is not None and stale == self._renewed_after_401:
            return False  # a fresh token refused too: another would be refused as well
        await self._renew(stale=stale, forced=True)
        return True

    def secrets(self) -> list[str]:
        found = [self.token] if self.token else []
        return found + ([self._client[1]] if self._client else [])

    async def _renew(self, *, stale: str | None, forced: bool = False) -> str:
        async with self._lock:  # one token request in flight; the others wait for it
            current = self.token
            if current is not None and current != stale:
                return current  # renewed by another request while this one waited
            if current is not None and not forced and self.clock() < self.expires_at:
                return current
            token, lifetime = await self._fetch_or_back_off()
            register_secret(token)
            margin = min(REFRESH_MARGIN_S, lifetime / 10)
            self.token, self.expires_at = token, self.clock() + lifetime - margin
            self._renewed_after_401 = token if forced else None
            return token

    async def _fetch_or_back_off(self) -> tuple[str, float]:
        """A token, or the endpoint's last failure again while its backoff window lasts."""
        if self._failure is not None and self.clock() < self._retry_at:
            raise _again(self._failure, self._retry_at - self.clock())
        try:
            found = await self._fetch()
        except FetchError as exc:
            self._failures += 1
            window = min(TOKEN_BACKOFF_CAP_S, TOKEN_BACKOFF_BASE_S * 2 ** (self._failures - 1))
            self._failure, self._retry_at = exc, self.clock() + window
            raise
        self._failure, self._failures = None, 0
        return found

    async def _fetch(self) -> tuple[str, float]:
        if self._client is None:
            client_id, secret = await asyncio.gather(
                asyncio.to_thread(self.resolve, "auth.client_id", self.config.client_id),
                asyncio.to_thread(self.resolve, "auth.client_secret", self.config.client_secret),
            )
            self._client = (client_id, secret)
        form = {"grant_type": "client_credentials", "client_id": self._client[0]}
        form["client_secret"] = self._client[1]
        if self.config.scope:
            form["scope"] = self.config.scope
        self.token_requests += 1
        url = check_url(self.config.token_url, self.policy)
        if self.request_token is not None:
            return await self.request_token(url, form)
        return await _token_request(self.http, url, form)


def _again(error: FetchError, wait_s: float) -> FetchError:
    """A fresh error repeating the token endpoint's last failure (no request was made)."""
    text = f"{error} (the token endpoint is asked again in {wait_s:.1f} s)"
    if isinstance(error, HTTPStatusError):
        return HTTPStatusError(text, status=error.status or 0, retryable=error.retryable)
    again = FetchError(text, status=error.status)
    again.kind, again.retryable = error.kind, error.retryable
    return again


async def _token_request(
    http: aiohttp.ClientSession, url: URL, form: dict[str, str]
) -> tuple[str, float]:
    try:
        async with http.post(
            url, data=form, headers={"Accept": "application/json"}, allow_redirects=False
        ) as response:
            body = await response.content.read(MAX_TOKEN_RESPONSE_BYTES)
            status = response.status
    except TimeoutError as exc:
        raise FetchTimeout("token endpoint timed out") from exc
    except (aiohttp.ClientError, OSError) as exc:
        # The message names the host at most; the form (with the secret) is never shown.
        raise FetchConnectionError(f"token endpoint: {type(exc).__name__}") from None
    if not 200 <= status < 300:
        raise HTTPStatusError(
            f"token endpoint answered HTTP {status}",
            status=status,
            retryable=is_retryable_status(status),
        )
    return _parse_token(body)


def _parse_token(body: bytes) -> tuple[str, float]:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    token = document.get("access_token") if isinstance(document, dict) else None
    if not isinstance(token, str) or not token or "\n" in token or "\r" in token:
        error = FetchError("token endpoint answered without a usable access_token")
        error.retryable = False
        raise error
    assert isinstance(document, dict)
    expires_in = document.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 0.0
    return token, lifetime or DEFAULT_TOKEN_LIFETIME_S


def make_auth(
    config: AuthConfig | None, *, http: aiohttp.ClientSession, policy: NetPolicy, resolve: Resolve
) -> AuthProvider | None:
    """The provider for ``config`` (None without auth), for one run."""
    if config is None:
        return None
    if isinstance(config, BasicAuthConfig):
        return BasicAuth(config, resolve)
    return OAuth2ClientCredentials(config, http, policy, resolve)
