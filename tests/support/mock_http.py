"""aioresponses for the pinned aiohttp: mocked responses for pure unit tests.

aioresponses 0.7.x builds a ``ClientResponse`` without the ``stream_writer``
argument aiohttp 3.14 requires (it raises TypeError on every mocked request). It
takes a ``response_class``, so ``MockedResponse`` supplies a stand-in writer: the
request is already "sent" (aioresponses passes ``writer=None``), and aiohttp reads
only the writer's ``output_size`` then. ``mock_http`` registers that class on every
mocked URL.

Example:
    >>> with mock_http() as mocked:
    ...     mocked.get("https://api.example.com/v1?page=1", payload={"items": []})
    ...     async with aiohttp.ClientSession() as http:
    ...         async with http.get("https://api.example.com/v1?page=1") as response:
    ...             await response.json()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import ClientResponse
from aioresponses import aioresponses
from yarl import URL


class _SentRequestWriter:
    """What aiohttp reads of a request's writer once the request is sent."""

    output_size = 0


class MockedResponse(ClientResponse):
    """A ``ClientResponse`` aioresponses can build for aiohttp 3.14 (see the module docstring)."""

    def __init__(self, method: str, url: URL, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentRequestWriter())
        super().__init__(method, url, **kwargs)


class _Mocked(aioresponses):  # type: ignore[misc]
    def add(self, url: Any, method: str = "GET", *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", MockedResponse)
        super().add(url, method, *args, **kwargs)


@contextmanager
def mock_http() -> Iterator[aioresponses]:
    """aioresponses with ``MockedResponse`` as every mocked URL's response class.

    Unmatched requests raise ``aiohttp.ClientConnectionError`` (nothing reaches a
    network); ``requests`` records every call, keyed by (method, URL).
    """
    with _Mocked() as mocked:
        yield mocked
