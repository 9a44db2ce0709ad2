"""Pagination end to end (CONTRACT §11, §12): the handler, a paginated API on loopback, moto S3.

Every type against a real server; relative and absolute links; a loop; a next link
to another origin (a canary socket that must see no connection); a fault mid-chain
then a re-drive onto the same keys; an empty first page; totals that disagree with
the pages; POST with the params in a JSON body; parallel pages.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from handler.app import lambda_handler
from tests.conftest import RAW_BUCKET
from tests.support.lambda_context import LocalContext
from tests.support.paged_api import PagedAPI
from tests.support.reliability import SOURCE, Canary, assert_counts, event_for
from tests.support.servers import MotoS3

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private")]

PAGINATIONS: dict[str, dict[str, Any]] = {
    "link": {"type": "link_header"},
    "json": {"type": "json_link", "next_path": "links.next"},
    "cursor": {"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "after"},
    "hcursor": {"type": "header_cursor", "cursor_header": "X-Next-Cursor", "cursor_param": "after"},
    "offset": {"type": "offset", "limit": 10, "total_header": "X-Total-Count"},
    "pages": {"type": "page_number", "total_pages_path": "total_pages"},
}
RECORDS_PATHS = {
    "json": "items",
    "cursor": "items",
    "hcursor": "items",
    "offset": "items",
    "pages": "items",
}


def run(url: str, route: str, dates: list[str], *, request_id: str = "pg", **api: Any) -> Any:
    api.setdefault("pagination", PAGINATIONS.get(route))
    if route in RECORDS_PATHS:
        api.setdefault("records_path", RECORDS_PATHS[route])
    event = event_for(
        f"{url}/{route}", batch=[{"date": d} for d in dates], request_id=request_id, **api
    )
    result = lambda_handler(event, LocalContext())
    assert_counts(result)
    return result


def manifest(s3: MotoS3, result: dict[str, Any]) -> list[dict[str, Any]]:
    lines = s3.get_bytes(RAW_BUCKET, result["manifest_key"]).splitlines()
    return sorted((orjson.loads(line) for line in lines), key=lambda line: line["index"])


def stored_records(s3: MotoS3, key: str, records_path: str | None) -> list[Any]:
    value = json.loads(s3.get_bytes(RAW_BUCKET, key))
    return value if records_path is None else value[records_path]


@pytest.mark.parametrize("route", list(PAGINATIONS))
def test_every_type_writes_every_page_of_every_item(
    s3: MotoS3, api_server: Any, route: str
) -> None:
    # GIVEN 2 items of 25 records, served 10 to a page (3 pages each)
    api = PagedAPI()
    url = api_server(api.app).url
    # WHEN the handler ingests them
    result = run(url, route, ["d1", "d2"])
    # THEN both items succeed with 3 pages each, every record once
    assert result["status"] == "SUCCESS", result["failures"]
    assert result["pages_written"] == 6
    assert result["records_ingested"] == 50
    lines = manifest(s3, result)
    for line, date in zip(lines, ["d1", "d2"], strict=True):
        assert line["pages"] == 3 and line["records"] == 25
        assert line["keys"] == [f"{SOURCE}/pg-{line['index']}-{p}.json" for p in range(3)]
        got = [r for key in line["keys"] for r in stored_records(s3, key, RECORDS_PATHS.get(route))]
        assert got == api.records_of(date)
    # AND the objects say which page they are
    assert s3.head(RAW_BUCKET, f"{SOURCE}/pg-0-2.json")["Metadata"]["page"] == "2"


@pytest.mark.parametrize("absolute", [False, True])
def test_link_header_follows_relative_and_absolute_links(
    s3: MotoS3, api_server: Any, absolute: bool
) -> None:
    api = PagedAPI(absolute_links=absolute)
    url = api_server(api.app).url
    result = run(url, "link", ["d"])
    assert result["status"] == "SUCCESS" and result["pages_written"] == 3
    assert [s.query.get("after") for s in api.seen] == [None, "10", "20"]


def test_a_cursor_loop_fails_the_item_with_kind_pagination(s3: MotoS3, api_server: Any) -> None:
    api = PagedAPI()
    url = api_server(api.app).url
    result = run(
        url, "loop", ["d"], pagination={"type": "cursor", "cursor_path": "meta.next_cursor"}
    )
    assert result["status"] == "FAILED"
    (failure,) = result["failures"]
    assert failure["kind"] == "pagination" and "loop" in failure["error"]
    # The two pages fetched before the loop showed are written and findable.
    (line,) = manifest(s3, result)
    assert line["pages"] == 2 and line["keys"] == [f"{SOURCE}/pg-0-0.json", f"{SOURCE}/pg-0-1.json"]
    assert api.hits("/loop") == 2


def test_max_pages_fails_a_chain_that_goes_on(s3: MotoS3, api_server: Any) -> None:
    api = PagedAPI(total=100)
    url = api_server(api.app).url
    pagination = {**PAGINATIONS["cursor"], "max_pages": 4}
    result = run(url, "cursor", ["d"], pagination=pagination)
    (failure,) = result["failures"]
    assert failure["kind"] == "pagination" and "max_pages (4)" in failure["error"]
    assert api.hits("/cursor") == 4


def test_a_next_link_to_another_origin_is_blocked_and_never_contacted(
    s3: MotoS3, api_server: Any, canary: Canary
) -> None:
    # GIVEN an API whose next link points at another origin (a listening canary)
    api = PagedAPI(away_origin=f"http://127.0.0.1:{canary.port}")
    url = api_server(api.app).url
    # WHEN the chain reaches it
    result = run(url, "away", ["d"], pagination={"type": "link_header"})
    # THEN the item fails as blocked, and nothing connected to the other origin
    (failure,) = result["failures"]
    assert failure["kind"] == "blocked" and "another origin" in failure["error"]
    assert canary.connections() == 0


@pytest.mark.parametrize(
    "link", ["mailto:ops@example.com", "file:///etc/passwd", "data:application/json,%7B%7D"]
)
def test_a_next_link_that_is_not_http_fails_blocked_with_page_0_listed(
    s3: MotoS3, api_server: Any, link: str
) -> None:
    # GIVEN an API whose first page links "next" to a URL that is not http(s)
    api = PagedAPI(away_origin=link)
    url = api_server(api.app).url
    # WHEN the chain reaches it
    result = run(url, "away", ["d"], request_id="scheme", pagination={"type": "link_header"})
    # THEN the item fails as blocked, by name, not as a connection error with a traceback
    (failure,) = result["failures"]
    assert failure["kind"] == "blocked" and "not http(s)" in failure["error"], failure
    assert "Traceback" not in failure["error"]
    # AND page 0, which is in S3, is in the item's manifest line
    (line,) = manifest(s3, result)
    assert line["keys"] == [f"{SOURCE}/scheme-0-0.json"] and line["pages"] == 1
    assert s3.list_keys(RAW_BUCKET, f"{SOURCE}/scheme-0-") == [f"{SOURCE}/scheme-0-0.json"]


@pytest.mark.parametrize("total", ["\u00b2", "\u0663", "9" * 5000])
def test_a_total_that_is_not_ascii_digits_fails_as_pagination_with_page_0_listed(
    s3: MotoS3, api_server: Any, total: str
) -> None:
    # GIVEN an API announcing a total of "²" (or an Arabic-Indic 3, or 5,000 digits)
    api = PagedAPI(announced_total=total)
    url = api_server(api.app).url
    # WHEN the offset chain reads the total header
    result = run(url, "offset", ["d"], request_id="total")
    # THEN the item fails with kind pagination naming the header; page 0 is listed
    (failure,) = result["failures"]
    assert failure["kind"] == "pagination" and "X-Total-Count" in failure["error"], failure
    (line,) = manifest(s3, result)
    assert line["keys"] == [f"{SOURCE}/total-0-0.json"]
    assert api.hits("/offset") == 1


@pytest.mark.parametrize("pack", [None, {"unit": "record"}])
def test_a_billion_page_total_fails_max_pages_before_building_a_request(
    s3: MotoS3, api_server: Any, pack: dict[str, str] | None
) -> None:
    # GIVEN an API whose first page announces total_pages 1,000,000,000 (max_pages 1000)
    api = PagedAPI(announced_pages=10**9)
    url = api_server(api.app).url
    # WHEN fetched with parallel pages (the default)
    options = {"pack": pack} if pack else {}
    result = run(url, "pages", ["d"], request_id="huge", options=options)
    # THEN the item fails with kind pagination at once: no 1e9 requests built (gigabytes)
    (failure,) = result["failures"]
    assert failure["kind"] == "pagination", failure
    assert "announces 1000000000 pages, more than max_pages (1000)" in failure["error"]
    assert api.hits("/pages") == 1
    if pack is None:  # AND page 0, which is in S3, is listed
        assert manifest(s3, result)[0]["keys"] == [f"{SOURCE}/huge-0-0.json"]


def test_a_fault_mid_chain_fails_the_item_and_a_redrive_restarts_onto_the_same_keys(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN the third page of item 0 answers 400 (not retried) once; item 1 has 2 pages
    api = PagedAPI(faults={("/cursor", 20): [400]}, totals={"d1": 15})
    url = api_server(api.app).url
    first = run(url, "cursor", ["d0", "d1"], request_id="redrive")
    # THEN item 0 fails with the pages before the fault written and listed
    assert (first["succeeded"], first["failed"]) == (1, 1)
    assert first["failures"][0]["kind"] == "http_status"
    lines = manifest(s3, first)
    assert lines[0]["status"] == "failed" and lines[0]["pages"] == 2
    assert first["pages_written"] == 2  # only the succeeded item's pages count
    # WHEN the failed item is re-driven under the same request id
    again = run(url, "cursor", ["d0"], request_id="redrive")
    # THEN its chain starts at page 0 again and lands on the same keys
    assert again["status"] == "SUCCESS" and again["pages_written"] == 3
    assert manifest(s3, again)[0]["keys"] == [f"{SOURCE}/redrive-0-{p}.json" for p in range(3)]
    assert sorted(s3.list_keys(RAW_BUCKET, f"{SOURCE}/redrive-0-")) == [
        f"{SOURCE}/redrive-0-{p}.json" for p in range(3)
    ]


def test_a_retryable_fault_mid_chain_is_retried_and_counted(s3: MotoS3, api_server: Any) -> None:
    api = PagedAPI(faults={("/cursor", 10): [503]})
    url = api_server(api.app).url
    result = run(url, "cursor", ["d"], options={"max_attempts": 3})
    assert result["status"] == "SUCCESS" and result["retries"] == 1
    assert result["throttled"] == 1  # a 503 asks the client to slow down (CONTRACT §14)
    assert manifest(s3, result)[0]["attempts"] == 2


def test_a_chain_that_fails_after_a_throttled_page_still_counts_the_throttle(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN page 1 answers 503 once (retried), then page 2 answers 400 (not retried)
    api = PagedAPI(faults={("/cursor", 10): [503], ("/cursor", 20): [400]})
    url = api_server(api.app).url
    # WHEN the item is ingested
    result = run(url, "cursor", ["d"], options={"max_attempts": 3})
    # THEN it fails on page 2, and the 503 of page 1 is still counted as a throttle
    assert result["failed"] == 1 and result["failures"][0]["kind"] == "http_status"
    assert result["throttled"] == 1


@pytest.mark.parametrize("unit", ["response", "record"])
def test_a_packed_chain_counts_the_throttles_of_its_pages(
    s3: MotoS3, api_server: Any, unit: str
) -> None:
    # GIVEN a packed run whose item's page 1 answers 503 once
    api = PagedAPI(faults={("/cursor", 10): [503]})
    url = api_server(api.app).url
    # WHEN it is ingested
    options = {"max_attempts": 3, "pack": {"unit": unit, "compression": "none"}}
    result = run(url, "cursor", ["d"], options=options)
    # THEN the item lands in the pack and its page's 503 is in the result's throttled
    assert result["status"] == "SUCCESS", result["failures"]
    assert (result["retries"], result["throttled"]) == (1, 1)
    assert result["records_ingested"] == 25


def test_an_empty_first_page_is_written_and_ends_the_chain(s3: MotoS3, api_server: Any) -> None:
    api = PagedAPI(totals={"empty": 0})
    url = api_server(api.app).url
    for route in ("cursor", "offset", "pages"):
        result = run(url, route, ["empty"], request_id=f"e-{route}")
        assert result["status"] == "SUCCESS" and result["pages_written"] == 1, route
        assert result["records_ingested"] == 0
    assert api.hits("/cursor") == api.hits("/offset") == api.hits("/pages") == 1


def test_a_total_smaller_than_the_data_fetches_the_announced_pages(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN an API that holds 25 records but announces 15
    api = PagedAPI(announced_total=15)
    url = api_server(api.app).url
    # THEN the chain trusts the total: 2 pages, 20 records
    result = run(url, "offset", ["d"])
    assert result["status"] == "SUCCESS"
    assert (result["pages_written"], result["records_ingested"]) == (2, 20)


def test_a_total_larger_than_the_data_writes_the_empty_pages_it_announced(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN an API that holds 25 records but announces 50 (5 pages)
    api = PagedAPI(announced_total=50)
    url = api_server(api.app).url
    # THEN in parallel every announced page is fetched; the empty ones are written too
    parallel = run(url, "pages", ["d"], request_id="par")
    assert (parallel["pages_written"], parallel["records_ingested"]) == (5, 25)
    # AND page by page, the first empty page ends the chain
    paged = run(
        url,
        "pages",
        ["d"],
        request_id="seq",
        pagination={**PAGINATIONS["pages"], "parallel": False},
    )
    assert (paged["pages_written"], paged["records_ingested"]) == (4, 25)


def test_post_with_params_and_cursor_in_a_json_body(s3: MotoS3, api_server: Any) -> None:
    api = PagedAPI()
    url = api_server(api.app).url
    result = run(
        url,
        "search",
        ["d"],
        method="POST",
        params_in="json",
        records_path="items",
        pagination={"type": "cursor", "cursor_path": "meta.next_cursor"},
    )
    assert result["status"] == "SUCCESS" and result["pages_written"] == 3
    assert [s.body for s in api.seen] == [
        {"date": "d"},
        {"date": "d", "cursor": "10"},
        {"date": "d", "cursor": "20"},
    ]
    assert all(s.query == {} for s in api.seen)


def test_parallel_pages_overlap_and_stay_within_concurrency(s3: MotoS3, api_server: Any) -> None:
    # GIVEN 2 items of 6 pages, each page taking 0.3 s
    api = PagedAPI(total=60, latency_s=0.3)
    url = api_server(api.app).url
    # WHEN fetched with concurrency 4
    result = run(url, "offset", ["a", "b"], options={"concurrency": 4})
    # THEN all 12 pages land, more pages in flight at once than items, never more than 4
    assert result["status"] == "SUCCESS" and result["pages_written"] == 12
    assert api.max_in_flight == 4


def test_parallel_false_fetches_one_page_at_a_time_per_item(s3: MotoS3, api_server: Any) -> None:
    api = PagedAPI(total=60, latency_s=0.1)
    url = api_server(api.app).url
    pagination = {**PAGINATIONS["offset"], "parallel": False}
    result = run(url, "offset", ["a"], options={"concurrency": 4}, pagination=pagination)
    assert result["pages_written"] == 6 and api.max_in_flight == 1
