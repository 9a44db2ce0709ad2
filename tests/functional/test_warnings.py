"""Runs that look wrong say so in the result's ``warnings`` (issue 22, point 3), on every
path: the Lambda handler and the CLI. A warning never fails the run.
"""

from __future__ import annotations

from typing import Any

import pytest

from handler.app import lambda_handler
from tests.support.lambda_context import LocalContext
from tests.support.paged_api import PagedAPI
from tests.support.reliability import event_for
from tests.support.servers import MotoS3

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private")]

DATES = [{"date": f"2025-01-0{d}"} for d in range(1, 6)]


def run(event: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = lambda_handler(event, LocalContext(timeout_s=30))
    return result


def test_a_next_page_ignored_while_pagination_is_off_is_a_warning_naming_the_flags(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN an API with 25 records a date, 10 to a page, next pages in a Link header
    url = api_server(PagedAPI().app).url
    # WHEN five dates are fetched without pagination
    result = run(event_for(f"{url}/link", batch=DATES))
    # THEN the run succeeds with 10 of 25 records a date, and warns about the next pages
    assert (result["status"], result["records_ingested"]) == ("SUCCESS", 50)
    (warning,) = result["warnings"]
    assert warning["code"] == "next_page_ignored"
    assert warning["responses"] == 5
    assert warning["pagination"] == {"type": "link_header"}
    assert warning["flags"] == "--paginate link_header"


@pytest.mark.parametrize(
    ("route", "flags"),
    [
        ("json", "--paginate json_link --next-path links.next"),
        ("cursor", "--paginate cursor --cursor-path meta.next_cursor"),
        ("offset", "--paginate offset --total-path total"),
        ("pages", "--paginate page_number --total-pages-path total_pages"),
    ],
)
def test_each_kind_of_next_page_names_the_pagination_that_follows_it(
    s3: MotoS3, api_server: Any, route: str, flags: str
) -> None:
    url = api_server(PagedAPI().app).url
    result = run(event_for(f"{url}/{route}", batch=DATES[:2], records_path="items"))
    assert result["status"] == "SUCCESS"
    assert [w["flags"] for w in result["warnings"]] == [flags]


def test_every_item_empty_is_a_warning_and_one_record_is_enough_to_silence_it(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN an API that holds nothing for the first dates
    api = PagedAPI(totals={d["date"]: 0 for d in DATES})
    url = api_server(api.app).url
    # WHEN every date is empty, and then when one is not
    empty = run(event_for(f"{url}/cursor", batch=DATES, records_path="items"))
    api.totals[DATES[-1]["date"]] = 1
    one = run(event_for(f"{url}/cursor", batch=DATES, records_path="items"))
    # THEN only the all-empty run warns, and both succeed
    assert empty["status"] == one["status"] == "SUCCESS"
    assert [w["code"] for w in empty["warnings"]] == ["no_records"]
    assert "all 5 items returned 0 records at items" in empty["warnings"][0]["message"]
    assert one["warnings"] == []


def test_a_paginated_run_that_follows_every_page_has_no_warning(
    s3: MotoS3, api_server: Any
) -> None:
    url = api_server(PagedAPI().app).url
    event = event_for(
        f"{url}/link",
        batch=DATES[:2],
        pagination={"type": "link_header"},
        key_template="{source_id}/{request_id}-{index}-{page}.json",
    )
    result = run(event)
    assert (result["status"], result["records_ingested"], result["warnings"]) == (
        "SUCCESS",
        50,
        [],
    )
