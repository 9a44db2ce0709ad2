"""Paginators over sequences of real aiohttp responses (aioresponses; CONTRACT §11).

tests/unit/test_paginators.py hands each paginator a hand-built ``PageView``. Here
every page is a ``ClientResponse`` aiohttp parsed from a mocked answer
(``tests.support.mock_http``), so what a paginator reads is what it will meet:
aiohttp's case-insensitive multi-valued headers, the response's own URL for
relative links, JSON bodies. ``walk`` drives a chain the way the engine does
(page 0, the fan-out when a total is known, then page after page) and returns
the URLs it requested.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict
from yarl import URL

from ingest_core.errors import BlockedError, PaginationError
from ingest_core.netguard import NetPolicy
from ingest_core.pagination import PageRequest, PageView, PaginationConfig, make_chain, project
from tests.support.mock_http import mock_http

ENDPOINT = "https://api.example.com/v1/items"
PARAMS = {"date": "2025-01-01"}
MAX_WALK = 50  # a chain that does not end fails the test instead of spinning


def url_of(request: PageRequest) -> URL:
    """The URL the engine sends for ``request``: a next link as given, else the endpoint."""
    if request.url is not None:
        return request.url
    return URL(ENDPOINT).update_query({**PARAMS, **dict(request.params)})


async def fetch(
    http: aiohttp.ClientSession, config: PaginationConfig, number: int, request: PageRequest
) -> PageView:
    async with http.get(url_of(request)) as response:
        value = await response.json()
        records = value if isinstance(value, list) else value.get("items", [])
        kept = value if isinstance(value, list) else project(value, config.paths)
        return PageView(number, response.url, response.headers, kept, len(records))


async def walk(**pagination: Any) -> list[str]:
    """Every URL a chain of ``pagination`` requests, in order, until it ends."""
    config = PaginationConfig(**pagination)
    chain = make_chain(config, ENDPOINT, NetPolicy())
    sent: list[str] = []
    async with aiohttp.ClientSession() as http:
        request: PageRequest | None = chain.first()
        number = 0
        while request is not None and number < MAX_WALK:
            sent.append(str(url_of(request)))
            page = await fetch(http, config, number, request)
            if number == 0 and (rest := chain.fan_out(page)) is not None:
                for n, later in enumerate(rest, start=1):
                    sent.append(str(url_of(later)))
                    await fetch(http, config, n, later)
                return sent
            request = chain.after(page)
            number += 1
    return sent


def query(**params: Any) -> str:
    return str(URL(ENDPOINT).update_query({**PARAMS, **params}))


async def test_link_header_follows_relative_links_against_the_page_they_came_from() -> None:
    # GIVEN three pages whose Link headers are relative (RFC 8288 resolves them
    # against the response's URL, not the endpoint)
    with mock_http() as mocked:
        relative = '<items?date=2025-01-01&p=2>; rel="next"'
        mocked.get(query(), payload=[1], headers={"Link": relative})
        query_only = '<?date=2025-01-01&p=3>; rel="next"'
        mocked.get(query(p=2), payload=[2], headers={"Link": query_only})
        mocked.get(query(p=3), payload=[3])
        # WHEN the chain walks them
        sent = await walk(type="link_header")
    # THEN it requests each page once, in order, and stops without a next link
    assert sent == [query(), query(p=2), query(p=3)]


async def test_link_header_finds_rel_next_in_a_second_link_header_field() -> None:
    # GIVEN a page with two Link header fields, rel="prev" first (RFC 8288 allows
    # several; aiohttp keeps each one)
    headers = CIMultiDict(
        [
            ("Link", f'<{query(p=0)}>; rel="prev"'),
            ("Link", f'<{query(p=2)}>; rel="next"'),
        ]
    )
    with mock_http() as mocked:
        mocked.get(query(), payload=[1], headers=headers)
        mocked.get(query(p=2), payload=[2])
        sent = await walk(type="link_header")
    # THEN the next link in the second field is followed
    assert sent == [query(), query(p=2)]


async def test_header_cursor_reads_the_header_whatever_its_case() -> None:
    with mock_http() as mocked:
        mocked.get(query(), payload={"items": [1]}, headers={"x-next-cursor": "c2"})
        mocked.get(query(cursor="c2"), payload={"items": [2]}, headers={"X-NEXT-CURSOR": ""})
        sent = await walk(type="header_cursor", cursor_header="X-Next-Cursor")
    assert sent == [query(), query(cursor="c2")]


async def test_json_link_and_cursor_stop_on_null_and_on_an_empty_page() -> None:
    with mock_http() as mocked:
        mocked.get(query(), payload={"items": [1], "meta": {"next": query(after=1)}})
        mocked.get(query(after=1), payload={"items": [], "meta": {"next": query(after=2)}})
        sent = await walk(type="json_link", next_path="meta.next")
    # the empty page ends the chain although it names a next link
    assert sent == [query(), query(after=1)]
    with mock_http() as mocked:
        mocked.get(query(), payload={"items": [1], "meta": {"c": "x"}})
        mocked.get(query(cursor="x"), payload={"items": [2], "meta": {"c": None}})
        assert await walk(type="cursor", cursor_path="meta.c") == [query(), query(cursor="x")]


@pytest.mark.parametrize("parallel", [True, False])
async def test_offset_with_a_total_header_requests_every_page_once(parallel: bool) -> None:
    # GIVEN 5 records, 2 to a page, the total in a lower-case header
    pages = {0: [0, 1], 2: [2, 3], 4: [4]}
    with mock_http() as mocked:
        for offset, items in pages.items():
            mocked.get(
                query(offset=offset, limit=2),
                payload={"items": items},
                headers={"x-total-count": "5"},
            )
        sent = await walk(type="offset", limit=2, total_header="X-Total-Count", parallel=parallel)
    # THEN each of the 3 pages is requested once, fanned out or page by page
    assert sent == [query(offset=o, limit=2) for o in pages]


async def test_page_number_fan_out_beyond_max_pages_fails_before_any_later_request() -> None:
    with mock_http() as mocked:
        mocked.get(query(page=1), payload={"items": [1], "total_pages": 1_000_000_000})
        with pytest.raises(PaginationError, match="max_pages"):
            await walk(type="page_number", total_pages_path="total_pages", max_pages=10)
        assert list(mocked.requests) == [("GET", URL(query(page=1)))]


async def test_a_next_link_to_another_origin_is_blocked_and_never_requested() -> None:
    with mock_http() as mocked:
        mocked.get(query(), payload=[1], headers={"Link": '<https://evil.example/x>; rel="next"'})
        with pytest.raises(BlockedError, match="another origin"):
            await walk(type="link_header")
        assert [url.host for _, url in mocked.requests] == ["api.example.com"]
