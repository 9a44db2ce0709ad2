"""Pagination hints and run warnings (CONTRACT §17) from page views, without a network."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict
from yarl import URL

from ingest_core.hints import (
    Ambiguous,
    RunHints,
    choose,
    keep,
    more_pages,
    pagination_flags,
    readings,
)
from ingest_core.pagination import NOT_PARSED, PageView

ENDPOINT = "https://api.example.com/v1/rows.json"

# Page 0 of a Datasette table: a Link header, a next_url field and a cursor in `next`,
# all pointing at the same next page.
DATASETTE_NEXT = f"{ENDPOINT}?grp=a&_next=200"
DATASETTE_BODY = {
    "rows": [{"id": 1}, {"id": 2}],
    "next": "200",
    "next_url": DATASETTE_NEXT,
    "filtered_table_rows_count": 1250,
}


def page(
    value: Any = NOT_PARSED,
    *,
    headers: dict[str, str] | None = None,
    records: int | None = None,
    number: int = 0,
    url: str = f"{ENDPOINT}?grp=a",
) -> PageView:
    return PageView(number, URL(url), CIMultiDict(headers or {}), value, records)


def datasette_page0() -> PageView:
    link = f'<{DATASETTE_NEXT}>; rel="next"'
    return page(keep(DATASETTE_BODY), headers={"Link": link}, records=2)


# --------------------------------------------------------------------- readings


def test_keep_holds_the_next_fields_and_totals_but_never_the_records() -> None:
    body = {
        "data": [{"id": i} for i in range(1000)],
        "meta": {"next_cursor": "abc", "total": 5000, "page": {"size": 100}},
        "links": {"next": {"href": "/v1/rows?page=2"}, "self": {"href": "/v1/rows"}},
        "nextPageToken": None,
    }
    assert keep(body) == {
        "meta": {"next_cursor": "abc", "total": 5000},
        "links": {"next": {"href": "/v1/rows?page=2"}},
    }
    assert keep([1, 2, 3]) == {}


def test_keep_looks_at_a_bounded_number_of_keys() -> None:
    # A body that is one big map of records: the next link after it is not looked for.
    body = {f"id-{i}": {"value": i} for i in range(10_000)}
    assert keep({**body, "next": "/v1/rows?page=2"}) == {}
    assert keep({"next": "/v1/rows?page=2", **body}) == {"next": "/v1/rows?page=2"}


def test_datasette_page0_gives_three_readings_of_the_same_next_page() -> None:
    found = readings(datasette_page0())
    assert [(r.pagination["type"], r.url, r.token) for r in found] == [
        ("link_header", DATASETTE_NEXT, None),
        ("cursor", None, "200"),
        ("json_link", DATASETTE_NEXT, None),
    ]
    assert found[2].flags == "--paginate json_link --next-path next_url"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"next": None, "next_url": None}, []),
        ({"next": ""}, []),
        ({"nextPageToken": "tok"}, [{"type": "cursor", "cursor_path": "nextPageToken"}]),
        ({"meta": {"next_cursor": 42}}, [{"type": "cursor", "cursor_path": "meta.next_cursor"}]),
        (
            {"links": {"next": {"href": "/v1/rows?page=2"}}},
            [{"type": "json_link", "next_path": "links.next.href"}],
        ),
        (
            {"paging": {"next": "https://api.example.com/v1/rows.json?after=x"}},
            [{"type": "json_link", "next_path": "paging.next"}],
        ),
        ({"total_pages": 3}, [{"type": "page_number", "total_pages_path": "total_pages"}]),
        ({"has_next": True, "nextpage": False}, []),
    ],
)
def test_body_fields_are_read_like_dlts_detector(
    body: dict[str, Any], expected: list[dict[str, Any]]
) -> None:
    assert [r.pagination for r in readings(page(keep(body)))] == expected


def test_a_relative_next_link_resolves_against_the_page() -> None:
    (reading,) = readings(page(keep({"next": "/v1/rows.json?page=2"})))
    assert reading.url == "https://api.example.com/v1/rows.json?page=2"


def test_a_total_says_more_pages_only_when_larger_than_the_records() -> None:
    more = page(keep({"total": 500}), records=100)
    done = page(keep({"total": 100}), records=100)
    header = page(headers={"X-Total-Count": "250"}, records=100)
    assert [r.pagination for r in more_pages(more)] == [{"type": "offset", "total_path": "total"}]
    assert more_pages(done) == []
    assert [r.flags for r in more_pages(header)] == [
        "--paginate offset --total-header X-Total-Count"
    ]
    # Records unknown: a total alone proves nothing.
    assert more_pages(page(keep({"total": 500}))) == []


def test_pagination_flags_are_the_fields_with_dashes() -> None:
    from ingest_core.cli.request_flags import PAGINATION_FIELD_FLAGS

    for name, (flag, _, _) in PAGINATION_FIELD_FLAGS.items():
        assert pagination_flags({"type": "cursor", name: "x"}).split()[2] == flag


# ------------------------------------------------------------------------ choose


def test_choose_takes_the_link_header_when_every_reading_agrees() -> None:
    choice = choose(datasette_page0())
    assert choice.pagination == {"type": "link_header"}
    assert "agrees with" in choice.reason and "next_url" in choice.reason
    assert choice.assumed == ()


def test_choose_refuses_when_two_next_links_disagree() -> None:
    view = page(
        keep({"next_url": f"{ENDPOINT}?page=9"}),
        headers={"Link": f'<{ENDPOINT}?page=2>; rel="next"'},
    )
    with pytest.raises(Ambiguous, match=r"disagree.*page=2.*page=9"):
        choose(view)


def test_choose_refuses_a_cursor_that_is_not_in_the_next_link() -> None:
    view = page(keep({"next_url": f"{ENDPOINT}?page=2", "cursor": "zz9"}))
    with pytest.raises(Ambiguous, match=r"\('zz9'\) is not part of the next link"):
        choose(view)


def test_choose_refuses_two_different_cursors() -> None:
    with pytest.raises(Ambiguous, match="more than one cursor"):
        choose(page(keep({"next": "a", "meta": {"next_cursor": "b"}})))


def test_choose_a_lone_cursor_says_which_param_it_assumed() -> None:
    choice = choose(page(keep({"meta": {"next_cursor": "abc"}})))
    assert choice.pagination == {"type": "cursor", "cursor_path": "meta.next_cursor"}
    assert choice.assumed == ("cursor_param 'cursor' (--cursor-param)",)
    given = choose(page(keep({"next_cursor": "abc"})), given={"cursor_param": "after"})
    assert given.pagination == {
        "type": "cursor",
        "cursor_path": "next_cursor",
        "cursor_param": "after",
    }
    assert given.assumed == ()


def test_choose_refuses_a_bare_total_rather_than_guess_offset_or_page_number() -> None:
    with pytest.raises(Ambiguous, match="cannot tell offset from page-number"):
        choose(page(keep({"total": 900}), records=100))


def test_choose_without_any_reading_fetches_one_page() -> None:
    assert choose(page(keep({"rows": []}), records=0)).pagination is None
    assert choose(page(keep({"total": 2}), records=2)).pagination is None


# ---------------------------------------------------------------------- warnings


def test_run_hints_warns_when_every_item_returned_zero_records() -> None:
    hints = RunHints(paginated=False, records_path="rows")
    for _ in range(365):
        hints.on_item(0)
    (warning,) = hints.warnings()
    assert warning["code"] == "no_records"
    assert "all 365 items returned 0 records at rows" in warning["message"]


def test_run_hints_is_quiet_when_one_item_had_records_or_counts_are_unknown() -> None:
    hints = RunHints(paginated=False)
    hints.on_item(0)
    hints.on_item(3)
    unknown = RunHints(paginated=False)
    unknown.on_item(None)
    assert hints.warnings() == [] and unknown.warnings() == []


def test_run_hints_names_the_flags_that_would_follow_an_ignored_next_page() -> None:
    hints = RunHints(paginated=False)
    hints.on_page(datasette_page0())
    hints.on_page(page(keep({"next": None}), records=3))
    hints.on_item(2)
    (warning,) = hints.warnings()
    assert warning["code"] == "next_page_ignored"
    assert warning["responses"] == 1
    assert warning["flags"] == "--paginate link_header"
    assert "--paginate link_header" in warning["message"]


def test_run_hints_ignores_next_links_when_pagination_is_on() -> None:
    hints = RunHints(paginated=True)
    hints.on_page(datasette_page0())
    assert hints.warnings() == []
