"""Paginators (CONTRACT §11) without a network: each type, the shared chain rules, the config."""

from __future__ import annotations

from typing import Any

import pytest
from multidict import CIMultiDict
from yarl import URL

from ingest_core import InvalidEventError, parse_event
from ingest_core.errors import BlockedError, PaginationError
from ingest_core.netguard import NetPolicy
from ingest_core.pagination import (
    NOT_PARSED,
    PageRequest,
    PageView,
    PaginationConfig,
    make_chain,
    next_link,
    project,
)

ENDPOINT = "https://api.example.com/v1/items"
OPEN = NetPolicy()


def view(
    number: int = 0,
    *,
    value: Any = NOT_PARSED,
    records: int | None = None,
    headers: dict[str, str] | None = None,
    url: str = ENDPOINT + "?date=2025-01-01",
) -> PageView:
    return PageView(number, URL(url), CIMultiDict(headers or {}), value, records)


def chain(**config: Any) -> Any:
    return make_chain(PaginationConfig(**config), ENDPOINT, OPEN)


# ------------------------------------------------------------------ link header


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('<https://a.example/p2>; rel="next"', "https://a.example/p2"),
        ('<https://a/p1>; rel="prev", <https://a/p3>; rel="next"', "https://a/p3"),
        ("<https://a/p3>; rel=next", "https://a/p3"),
        ('<https://a/p3>; title="x, y"; rel="last next"', "https://a/p3"),
        ('<https://a/p3>; rel="last"', None),
        ("", None),
        (None, None),
    ],
)
def test_next_link_reads_rfc8288_rel_next(header: str | None, expected: str | None) -> None:
    assert next_link(header) == expected


def test_link_header_follows_absolute_and_relative_links() -> None:
    c = chain(type="link_header")
    assert c.first() == PageRequest()
    absolute = c.after(view(0, headers={"Link": f'<{ENDPOINT}?page=2>; rel="next"'}))
    assert absolute is not None and str(absolute.url) == f"{ENDPOINT}?page=2"
    relative = c.after(
        view(1, headers={"Link": '<items?page=3>; rel="next"'}, url=f"{ENDPOINT}?page=2")
    )
    # Relative links resolve against the page they came from.
    assert relative is not None and str(relative.url) == f"{ENDPOINT}?page=3"
    assert c.after(view(2, headers={}, url=f"{ENDPOINT}?page=3")) is None


def test_link_header_reads_rel_next_from_any_of_several_link_fields() -> None:
    # GIVEN a response with two Link fields, rel="prev" first (property finding 3)
    headers = CIMultiDict(
        [("Link", f'<{ENDPOINT}?p=0>; rel="prev"'), ("Link", f'<{ENDPOINT}?p=2>; rel="next"')]
    )
    # WHEN the chain reads it THEN the next link of the second field is followed
    got = chain(type="link_header").after(PageView(0, URL(ENDPOINT), headers, NOT_PARSED, 1))
    assert got is not None and str(got.url) == f"{ENDPOINT}?p=2"


def test_a_next_link_to_another_origin_is_blocked_before_anything_is_sent() -> None:
    c = chain(type="link_header")
    for target in (
        "https://evil.example/steal",
        "http://api.example.com/v1/items?page=2",
        "https://api.example.com:8443/v1/items",
    ):
        with pytest.raises(BlockedError, match="another origin"):
            c.after(view(0, headers={"Link": f'<{target}>; rel="next"'}))


def test_a_next_link_back_to_a_fetched_page_is_a_loop() -> None:
    c = chain(type="link_header")
    with pytest.raises(PaginationError, match="loop"):
        c.after(view(0, headers={"Link": '<?date=2025-01-01>; rel="next"'}))


# -------------------------------------------------------------------- json link


def test_json_link_reads_the_url_at_next_path_and_stops_on_null_or_empty() -> None:
    c = chain(type="json_link", next_path="links.next")
    got = c.after(view(0, value={"links": {"next": "/v1/items?after=9"}}, records=3))
    assert got is not None and str(got.url) == "https://api.example.com/v1/items?after=9"
    for body in ({"links": {"next": None}}, {"links": {"next": ""}}, {"links": {}}, {}):
        assert chain(type="json_link", next_path="links.next").after(view(0, value=body)) is None


def test_json_link_on_a_body_it_cannot_read_fails_with_kind_pagination() -> None:
    c = chain(type="json_link", next_path="next")
    with pytest.raises(PaginationError, match="next_path"):
        c.after(view(0, value=NOT_PARSED))


# ----------------------------------------------------------------------- cursor


def test_cursor_sets_cursor_param_until_the_cursor_is_absent() -> None:
    c = chain(type="cursor", cursor_path="meta.next_cursor", cursor_param="after")
    got = c.after(view(0, value={"meta": {"next_cursor": "abc"}}, records=2))
    assert got == PageRequest(params=(("after", "abc"),), token="cursor:abc")
    numeric = c.after(view(1, value={"meta": {"next_cursor": 17}}, records=2))
    assert numeric is not None and numeric.params == (("after", "17"),)
    assert c.after(view(2, value={"meta": {"next_cursor": None}}, records=2)) is None


def test_a_cursor_seen_before_is_a_loop() -> None:
    c = chain(type="cursor", cursor_path="next")
    c.after(view(0, value={"next": "a"}, records=1, url=ENDPOINT))
    c.after(view(1, value={"next": "b"}, records=1, url=ENDPOINT + "?cursor=a"))
    with pytest.raises(PaginationError, match="loop"):
        c.after(view(2, value={"next": "a"}, records=1, url=ENDPOINT + "?cursor=b"))


def test_a_cursor_that_is_an_object_fails_clearly() -> None:
    with pytest.raises(PaginationError, match="dict, not a string"):
        chain(type="cursor", cursor_path="next").after(view(0, value={"next": {"x": 1}}))


def test_header_cursor_reads_the_response_header() -> None:
    c = chain(type="header_cursor", cursor_header="X-Next-Cursor")
    got = c.after(view(0, headers={"x-next-cursor": "zz"}, records=5))
    assert got is not None and got.params == (("cursor", "zz"),)
    assert c.after(view(1, headers={}, records=5)) is None


def test_a_page_with_zero_records_stops_every_type() -> None:
    c = chain(type="cursor", cursor_path="next")
    assert c.after(view(0, value={"next": "more", "items": []}, records=0)) is None


def test_max_pages_fails_the_chain_instead_of_stopping_silently() -> None:
    c = chain(type="cursor", cursor_path="next", max_pages=2)
    assert c.after(view(0, value={"next": "a"}, records=1)) is not None
    with pytest.raises(PaginationError, match=r"max_pages \(2\)"):
        c.after(view(1, value={"next": "b"}, records=1))


# ------------------------------------------------------------ offset and pages


def test_offset_counts_in_limits_and_stops_on_a_short_page() -> None:
    c = chain(type="offset", limit=10, offset_param="skip", limit_param="take")
    assert c.first().params == (("skip", 0), ("take", 10))
    second = c.after(view(0, records=10))
    assert second is not None and second.params == (("skip", 10), ("take", 10))
    assert c.after(view(1, records=9)) is None


def test_offset_stops_at_the_total_from_a_header_or_the_body() -> None:
    by_header = chain(type="offset", limit=10, total_header="X-Total-Count", parallel=False)
    assert by_header.fan_out(view(0, records=10, headers={"X-Total-Count": "20"})) is None
    assert by_header.after(view(0, records=10, headers={"X-Total-Count": "20"})) is not None
    assert by_header.after(view(1, records=10, headers={"X-Total-Count": "20"})) is None
    by_body = chain(type="offset", limit=10, total_path="meta.total")
    assert by_body.after(view(0, value={"meta": {"total": 10}}, records=10)) is None


def test_offset_fans_out_every_remaining_page_once_the_total_is_known() -> None:
    c = chain(type="offset", limit=10, total_path="total")
    rest = c.fan_out(view(0, value={"total": 35}, records=10))
    assert rest is not None
    assert [r.params[0] for r in rest] == [("offset", 10), ("offset", 20), ("offset", 30)]
    # No total: page by page.
    assert chain(type="offset", limit=10).fan_out(view(0, records=10)) is None


def test_a_total_beyond_max_pages_fails_before_fetching_more() -> None:
    c = chain(type="page_number", total_pages_path="pages", max_pages=5)
    with pytest.raises(PaginationError, match="announces 6 pages"):
        c.fan_out(view(0, value={"pages": 6}, records=1))


def test_page_number_counts_from_start_page_and_stops_at_total_pages() -> None:
    c = chain(type="page_number", start_page=0, page_param="p", total_pages_path="meta.pages")
    assert c.first().params == (("p", 0),)
    body = {"meta": {"pages": 2}}
    nxt = c.after(view(0, value=body, records=5))
    assert nxt is not None and nxt.params == (("p", 1),)
    assert c.after(view(1, value=body, records=5)) is None


def test_page_number_turns_a_record_total_into_pages_using_the_first_page_size() -> None:
    c = chain(type="page_number", total_header="X-Total-Count")
    rest = c.fan_out(view(0, records=25, headers={"X-Total-Count": "60"}))
    assert rest is not None and [r.params for r in rest] == [(("page", 2),), (("page", 3),)]


def test_a_total_that_is_not_a_number_fails_clearly() -> None:
    c = chain(type="offset", total_path="total")
    with pytest.raises(PaginationError, match="whole number"):
        c.fan_out(view(0, value={"total": "lots"}, records=100))


# ------------------------------------------------ hostile totals and links (issue 17)


class _CountingBuilds:
    """Counts the requests a paginator class builds; refuses more than ``allowed``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, paginator: Any, allowed: int) -> None:
        self.built, self.allowed = 0, allowed
        build = type(paginator)._at

        def counted(this: Any, number: int) -> PageRequest:
            self.built += 1
            assert self.built <= self.allowed, f"built {self.built} requests (max {allowed})"
            return build(this, number)  # type: ignore[no-any-return]

        monkeypatch.setattr(type(paginator), "_at", counted)


@pytest.mark.parametrize(
    ("config", "first"),
    [
        ({"type": "page_number", "total_pages_path": "pages"}, view(0, value={"pages": 10**9})),
        (
            {"type": "offset", "limit": 1, "total_header": "X-Total-Count"},
            view(0, records=1, headers={"X-Total-Count": str(10**9)}),
        ),
    ],
)
def test_a_huge_total_fails_max_pages_before_any_page_request_is_built(
    config: dict[str, Any], first: PageView, monkeypatch: pytest.MonkeyPatch
) -> None:
    # GIVEN a chain whose first page announces a billion pages (max_pages 1000)
    c = chain(**config)
    builds = _CountingBuilds(monkeypatch, c.paginator, allowed=1000)
    # WHEN it fans out
    with pytest.raises(PaginationError, match=r"more than max_pages \(1000\)"):
        c.fan_out(first)
    # THEN not one request was built to find that out
    assert builds.built == 0


def test_parallel_pages_are_built_one_at_a_time_as_they_are_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    c = chain(type="page_number", total_pages_path="pages", max_pages=5)
    builds = _CountingBuilds(monkeypatch, c.paginator, allowed=4)
    rest = c.fan_out(view(0, value={"pages": 5}, records=3))
    assert rest is not None and len(rest) == 4 and builds.built == 0
    assert rest[0].params == (("page", 2),) and rest[-1].params == (("page", 5),)
    assert [r.params for r in rest[1:3]] == [(("page", 3),), (("page", 4),)]
    with pytest.raises(IndexError):
        rest[4]


@pytest.mark.parametrize(
    "total",
    [
        "\u00b2",  # superscript two: str.isdigit() says yes, int() says no
        "\u0663",  # Arabic-Indic three: int() reads it as 3
        "1" * 400,  # a float division of it overflows
        "9" * 5000,  # beyond int()'s digit limit
        "-5",
        "2.5",
        "0x10",
    ],
)
def test_a_total_is_ascii_digits_or_a_pagination_failure(total: str) -> None:
    # GIVEN a total header that is not plain ASCII digits (or absurdly long)
    for config in (
        {"type": "offset", "limit": 10, "total_header": "X-Total-Count"},
        {"type": "page_number", "total_header": "X-Total-Count"},
    ):
        c = chain(**config)
        first = view(0, records=10, headers={"X-Total-Count": total})
        # WHEN the chain reads it, in parallel or page by page
        # THEN it fails with kind pagination, naming the header
        with pytest.raises(PaginationError, match="X-Total-Count is not a whole number"):
            c.fan_out(first)
        with pytest.raises(PaginationError, match="X-Total-Count is not a whole number"):
            c.after(first)


def test_a_total_of_ascii_digits_with_blanks_is_read() -> None:
    c = chain(type="offset", limit=10, total_header="X-Total-Count")
    rest = c.fan_out(view(0, records=10, headers={"X-Total-Count": " 0035 "}))
    assert rest is not None and [r.params[0] for r in rest] == [
        ("offset", 10),
        ("offset", 20),
        ("offset", 30),
    ]


@pytest.mark.parametrize(
    "link",
    [
        "mailto:ops@example.com",
        "file:///etc/passwd",
        "data:application/json,%7B%7D",
        "javascript:alert(1)",
        "http:///no-host",
    ],
)
def test_a_next_link_that_is_not_http_is_blocked_by_name(link: str) -> None:
    # GIVEN a page whose next link (header or body) is not an http(s) URL
    by_header = chain(type="link_header")
    by_body = chain(type="json_link", next_path="next")
    # WHEN the chain reads it THEN it is refused as blocked, naming the scheme
    with pytest.raises(BlockedError, match=r"not http\(s\)"):
        by_header.after(view(0, headers={"Link": f'<{link}>; rel="next"'}))
    with pytest.raises(BlockedError, match=r"not http\(s\)"):
        by_body.after(view(0, value={"next": link}, records=1))


# --------------------------------------------------------------- configuration

API = {"endpoint": ENDPOINT, "raw_bucket": "raw-bucket", "source_id": "src"}


def problems(pagination: Any, **api: Any) -> dict[str, str]:
    event = {
        "api_config": {**API, "pagination": pagination, **api},
        "batch": [{"d": 1}],
    }
    with pytest.raises(InvalidEventError) as caught:
        parse_event(event, default_request_id="r", policy=OPEN)
    return dict(caught.value.problems)


@pytest.mark.parametrize(
    ("pagination", "api", "field"),
    [
        ({"type": "scroll"}, {}, "api_config.pagination.type"),
        ({"type": "cursor"}, {}, "api_config.pagination.cursor_path"),
        ({"type": "json_link"}, {}, "api_config.pagination.next_path"),
        ({"type": "header_cursor"}, {}, "api_config.pagination.cursor_header"),
        ({"type": "offset", "limit": -1}, {}, "api_config.pagination.limit"),
        ({"type": "offset", "max_pages": 0}, {}, "api_config.pagination.max_pages"),
        ({"type": "offset", "cursor_path": "x"}, {}, "api_config.pagination.cursor_path"),
        ({"type": "cursor", "cursor_path": "a..b"}, {}, "api_config.pagination.cursor_path"),
        ({"type": "offset", "bogus": 1}, {}, "api_config.pagination.bogus"),
        (
            {"type": "offset"},
            {"key_template": "{source_id}/{index}.json"},
            "api_config.key_template",
        ),
        ({"type": "offset"}, {"params_in": "json"}, "api_config.params_in"),
    ],
)
def test_bad_pagination_configs_name_the_field(
    pagination: Any, api: dict[str, Any], field: str
) -> None:
    assert field in problems(pagination, **api)


def test_page_in_a_template_without_pagination_is_refused() -> None:
    event = {
        "api_config": {**API, "key_template": "{source_id}/{index}-{page}.json"},
        "batch": [{}],
    }
    with pytest.raises(InvalidEventError, match="needs pagination"):
        parse_event(event, default_request_id="r", policy=OPEN)


def test_pagination_defaults_the_key_to_one_object_per_page() -> None:
    job = parse_event(
        {"api_config": {**API, "pagination": {"type": "link_header"}}, "batch": [{}]},
        default_request_id="r",
        policy=OPEN,
    )
    assert job.api.key_template == "{source_id}/{request_id}-{index}-{page}.json"
    assert (
        job.api.template.render(source_id="s", request_id="r", index=3, params={}, page=7)
        == "s/r-3-7.json"
    )


def test_secret_params_must_be_references() -> None:
    event = {"api_config": {**API, "secret_params": {"api_key": "hunter2-plain"}}, "batch": [{}]}
    with pytest.raises(InvalidEventError) as caught:
        parse_event(event, default_request_id="r", policy=OPEN)
    assert "api_config.secret_params" in dict(caught.value.problems)
    assert "hunter2-plain" not in str(caught.value)


def test_auth_credentials_must_be_references_and_the_token_url_is_checked() -> None:
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": "http://169.254.169.254/token",
        "client_id": "plain-id",
        "client_secret": "ssm:/x",
    }
    event = {"api_config": {**API, "auth": auth}, "batch": [{}]}
    with pytest.raises(InvalidEventError) as caught:
        parse_event(event, default_request_id="r", policy=OPEN)
    fields = dict(caught.value.problems)
    assert "api_config.auth.oauth2_client_credentials.token_url" in fields
    assert "api_config.auth.oauth2_client_credentials.client_id" in fields


def test_a_page_keeps_only_the_paths_its_paginator_reads() -> None:
    config = PaginationConfig(type="cursor", cursor_path="meta.next", cursor_param="c")
    body = {"items": list(range(1000)), "meta": {"next": "abc", "other": [1, 2]}}
    assert project(body, config.paths) == {"meta": {"next": "abc"}}
    assert project([1, 2, 3], PaginationConfig(type="link_header").paths) == {}


def test_a_distributed_map_batch_carries_pagination_and_request_shape_in_batch_input() -> None:
    # GIVEN what an ItemBatcher delivers, the request shape in BatchInput.api_config
    api = {
        **API,
        "method": "POST",
        "params_in": "json",
        "secret_params": {"api_key": "ssm:/weather/key"},
        "pagination": {"type": "cursor", "cursor_path": "next"},
    }
    event = {
        "BatchInput": {"api_config": api, "request_id": "exec-1"},
        "Items": [{"index": 7, "params": {"date": "2025-01-01"}}],
    }
    job = parse_event(event, policy=OPEN)
    # THEN the job has it all, with the paginated default key
    assert job.api.pagination is not None and job.api.pagination.type == "cursor"
    assert (job.api.method, job.api.params_in) == ("POST", "json")
    assert job.api.key_template.endswith("-{page}.json")
    # AND a bad field is named under BatchInput
    bad = {
        **event,
        "BatchInput": {
            **event["BatchInput"],
            "api_config": {**api, "pagination": {"type": "cursor"}},
        },
    }
    with pytest.raises(InvalidEventError) as caught:
        parse_event(bad, policy=OPEN)
    assert "BatchInput.api_config.pagination.cursor_path" in dict(caught.value.problems)
