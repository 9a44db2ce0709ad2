"""``--retry-from`` keeps or refuses every flag (issue 22, point 4), on the real parser."""

from __future__ import annotations

from typing import Any

import pytest

from ingest_core.cli import build_parser
from ingest_core.cli.common import UsageError
from ingest_core.cli.redrive import RedriveContext, redrive_event
from ingest_core.cli.runner import SHARED_EVENT_FLAGS

PAGINATION = {"type": "cursor", "cursor_path": "meta.next", "cursor_param": "after", "max_pages": 3}
CONTEXT = RedriveContext(
    request_id="backfill-20250101-20250102-1d",
    dest="/data",
    manifest_prefix="",
    api_config={
        "endpoint": "https://api.example.com/v1/items",
        "source_id": "items",
        "raw_bucket": "local-folder",
        "key_template": "{source_id}/{request_id}-{index}-{page}.json",
        "pagination": PAGINATION,
        "secret_params": {"api_key": "ssm:/api/key"},
    },
    options={"concurrency": 16, "max_attempts": 2},
)
ITEMS = [{"index": 1, "params": {"date": "2025-01-02"}}]
BACKFILL_FLAGS = ("start", "end", "param", "step", "format", "state_key", "incremental")


def event_for(
    *flags: str, context: RedriveContext = CONTEXT
) -> tuple[dict[str, Any], tuple[str, ...]]:
    args = build_parser().parse_args(["backfill", "--retry-from", "f.jsonl", *flags])
    return redrive_event(args, context, ITEMS, SHARED_EVENT_FLAGS + BACKFILL_FLAGS)


def refused(*flags: str) -> dict[str, str]:
    with pytest.raises(UsageError) as caught:
        event_for(*flags)
    return dict(caught.value.problems)


def test_without_flags_the_file_is_run_as_it_was() -> None:
    event, applied = event_for()
    assert event == {
        "api_config": CONTEXT.api_config,
        "options": CONTEXT.options,
        "request_id": CONTEXT.request_id,
        "Items": ITEMS,
    }
    assert applied == ()


def test_flags_of_how_the_run_goes_are_applied_and_reported() -> None:
    event, applied = event_for(
        "--max-pages", "50", "--concurrency", "4", "--read-timeout", "9", "--no-parallel-pages"
    )
    assert event["api_config"]["pagination"] == {**PAGINATION, "max_pages": 50, "parallel": False}
    assert event["options"] == {"concurrency": 4, "max_attempts": 2, "read_timeout_s": 9.0}
    assert set(applied) == {
        "--max-pages 50",
        "--no-parallel-pages",
        "--concurrency 4",
        "--read-timeout 9.0",
    }


def test_flags_given_with_the_files_own_values_change_nothing() -> None:
    event, applied = event_for(
        "--paginate", "cursor", "--cursor-param", "after", "--method", "GET", "--max-pages", "3"
    )
    assert event["api_config"] == CONTEXT.api_config and applied == ()


@pytest.mark.parametrize(
    ("flags", "flag", "reason"),
    [
        (["--max-pages", "2"], "--max-pages", "lower than the re-drive file's max_pages (3)"),
        (
            ["--paginate", "offset"],
            "--paginate",
            'api_config.pagination.type, which the re-drive file carries ("cursor")',
        ),
        (["--cursor-path", "next"], "--cursor-path", "api_config.pagination.cursor_path"),
        (
            ["--method", "POST"],
            "--method",
            'api_config.method, which the re-drive file carries ("GET")',
        ),
        (["--params-in", "json"], "--params-in", "api_config.params_in"),
        (["--secret-param", "token=ssm:/x"], "--secret-param", "api_config.secret_params"),
        (
            ["--auth", '{"type": "basic", "username": "ssm:/u", "password": "ssm:/p"}'],
            "--auth",
            "api_config.auth",
        ),
        (
            ["--pack", "record"],
            "--pack",
            "options.pack.unit, which the re-drive file carries (not set)",
        ),
        (["--compress"], "--compress", "options.compress"),
        (["--endpoint", "https://other.example/x"], "--endpoint", "the re-drive file carries it"),
        (["--records-path", "rows"], "--records-path", "the re-drive file carries it"),
        (["--start", "2025-01-01"], "--start", "the re-drive file carries it"),
        (["--incremental"], "--incremental", "the re-drive file carries it"),
    ],
)
def test_flags_that_would_change_the_request_shape_are_refused_with_the_reason(
    flags: list[str], flag: str, reason: str
) -> None:
    problems = refused(*flags)
    assert flag in problems, problems
    assert reason in problems[flag]
    if flag != "--max-pages":
        assert "keep the keys and requests of the run that failed them" in problems[flag]


def test_paginating_a_file_of_an_unpaginated_run_is_refused() -> None:
    plain = RedriveContext(
        request_id="r",
        dest="/d",
        manifest_prefix="",
        api_config={"endpoint": "https://a.example/x"},
        options={},
    )
    with pytest.raises(UsageError) as caught:
        event_for("--paginate", "link_header", "--max-pages", "9", context=plain)
    problems = dict(caught.value.problems)
    assert "was not paginated" in problems["--paginate"]
    assert "was not paginated" in problems["--max-pages"]


def test_every_refusal_is_reported_at_once() -> None:
    problems = refused("--method", "POST", "--pack", "response", "--source-id", "x")
    assert set(problems) == {"--method", "--pack", "--source-id"}
