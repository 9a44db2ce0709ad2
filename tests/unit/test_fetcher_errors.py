"""Every aiohttp client error maps to one of ours (STYLE §4)."""

from __future__ import annotations

import inspect
import ssl

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey, RequestInfo
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ingest_core.errors import BlockedError, FetchError, TruncatedBody
from ingest_core.fetcher import encode_params, translate_client_error


def all_client_errors() -> list[type[BaseException]]:
    found = {
        obj
        for _, obj in inspect.getmembers(aiohttp)
        if inspect.isclass(obj) and issubclass(obj, aiohttp.ClientError)
    }
    return sorted(found, key=lambda cls: cls.__name__)


def instance_of(cls: type[BaseException]) -> BaseException:
    """A real instance, built with the constructor its family takes."""
    url = URL("https://api.example.com/v1")
    key = ConnectionKey("api.example.com", 443, True, True, None, None, None)
    info = RequestInfo(url, "GET", CIMultiDictProxy(CIMultiDict()), url)
    if issubclass(cls, aiohttp.ClientConnectorCertificateError):
        return cls(key, ssl.SSLCertVerificationError("bad cert"))
    if issubclass(cls, aiohttp.ClientConnectorError):
        return cls(key, OSError(111, "refused"))
    if issubclass(cls, aiohttp.ClientResponseError):
        return cls(info, (), status=400, message="bad")
    if issubclass(cls, aiohttp.ServerFingerprintMismatch):
        return cls(b"expected", b"got", "api.example.com", 443)
    if issubclass(cls, aiohttp.InvalidURL):
        return cls(url, "bad url")
    return cls("boom")


@pytest.mark.parametrize("cls", all_client_errors(), ids=lambda c: c.__name__)
def test_every_client_error_is_translated(cls: type[BaseException]) -> None:
    error = translate_client_error(instance_of(cls))
    assert isinstance(error, FetchError)
    assert error.kind.value in {
        "http_status",
        "timeout",
        "connection",
        "truncated",
        "blocked",
    }


def test_payload_error_is_truncated_and_timeouts_are_timeouts() -> None:
    assert isinstance(translate_client_error(aiohttp.ClientPayloadError("x")), TruncatedBody)
    assert translate_client_error(TimeoutError()).kind.value == "timeout"
    assert translate_client_error(aiohttp.ServerDisconnectedError(), mid_body=True).kind.value == (
        "truncated"
    )


def test_a_blocked_address_inside_a_connector_error_stays_blocked() -> None:
    blocked = BlockedError("loopback")
    wrapper = aiohttp.ClientConnectorDNSError(None, blocked)  # type: ignore[arg-type]
    assert translate_client_error(wrapper) is blocked


def test_non_client_errors_are_programming_errors() -> None:
    with pytest.raises(TypeError):
        translate_client_error(ValueError("bug"))


def test_encode_params() -> None:
    assert encode_params({"a": True, "b": [1, "x"], "c": 1.5}) == [
        ("a", "true"),
        ("b", "1"),
        ("b", "x"),
        ("c", "1.5"),
    ]
