"""The pagination and request-shape flags of ``backfill`` and ``bench``, as a subprocess."""

# The run_cli/run_many fixtures are test_cli's, imported: their names reappear as parameters.
# ruff: noqa: F811

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartServer
from tests.functional.test_cli import cli_env, run_cli, run_many  # noqa: F401 (fixtures)
from tests.support.paged_api import PagedAPI

pytestmark = pytest.mark.timeout(90)

SOURCE = "paged"
RID = "backfill-20250101-20250102-1d"


def backfill(url: str, dest: Path, *extra: str) -> list[str]:
    return [
        "backfill",
        "--endpoint",
        url,
        "--source-id",
        SOURCE,
        "--start",
        "2025-01-01",
        "--end",
        "2025-01-02",
        "--dest",
        str(dest),
        "--records-path",
        "items",
        *extra,
    ]


def test_paginate_flags_write_every_page_under_the_paginated_default_key(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN an API serving 25 records a day, 10 to a page
    api = PagedAPI()
    url = api_server(api.app).url
    # WHEN a two-day backfill follows its cursor given by flags
    done = run_cli(
        *backfill(
            f"{url}/cursor",
            tmp_path / "out",
            "--paginate",
            "cursor",
            "--cursor-path",
            "meta.next_cursor",
            "--cursor-param",
            "after",
            "--json",
        )
    )
    # THEN it exits 0 with 3 pages per day under {index}-{page} keys
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["pages_written"], result["records_ingested"]) == (6, 50)
    for index in (0, 1):
        for page in range(3):
            assert (tmp_path / "out" / SOURCE / f"{RID}-{index}-{page}.json").is_file()


def test_pagination_json_and_field_flags_combine(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    api = PagedAPI()
    url = api_server(api.app).url
    pagination = json.dumps({"type": "offset", "limit": 5, "total_header": "X-Total-Count"})
    # --limit overrides the object's limit; --no-parallel-pages its parallel
    done = run_cli(
        *backfill(
            f"{url}/offset",
            tmp_path / "out",
            "--pagination",
            pagination,
            "--limit",
            "10",
            "--no-parallel-pages",
            "--json",
        )
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pages_written"] == 6
    assert {s.query["limit"] for s in api.seen} == {"10"}


def test_post_with_a_json_body_from_flags(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    api = PagedAPI()
    url = api_server(api.app).url
    done = run_cli(
        *backfill(
            f"{url}/search",
            tmp_path / "out",
            "--method",
            "POST",
            "--params-in",
            "json",
            "--pagination",
            '{"type": "cursor", "cursor_path": "meta.next_cursor"}',
            "--json",
        )
    )
    assert done.returncode == 0, done.stderr
    assert api.seen[0].body == {"date": "2025-01-01"} or api.seen[0].body == {"date": "2025-01-02"}
    assert json.loads(done.stdout)["pages_written"] == 6


BAD_FLAGS: list[tuple[list[str], str, str]] = [
    (["--paginate", "cursor"], "--cursor-path", "required by type 'cursor'"),
    (["--limit", "5"], "--paginate", "required with --limit"),
    (["--paginate", "offset", "--limit", "-1"], "--limit", "greater than or equal to 1"),
    (
        ["--paginate", "offset", "--key-template", "{source_id}/{index}.json"],
        "--key-template",
        "{page}",
    ),
    (["--params-in", "json"], "--params-in", "needs method POST"),
    (["--pagination", "{not json"], "--pagination", "not valid JSON"),
    (["--secret-param", "api_key=plaintext"], "--secret-param", "must be a reference"),
    (["--auth", '{"type": "basic", "username": "u"}'], "--auth (basic.username)", "reference"),
]


def test_bad_request_flags_exit_2_naming_the_flag(
    run_many: Callable[..., Any], tmp_path: Path
) -> None:
    commands = [
        backfill("http://127.0.0.1:9/x", tmp_path / "out", *flags) for flags, _, _ in BAD_FLAGS
    ]
    for (flags, flag, words), done in zip(BAD_FLAGS, run_many(commands), strict=True):
        assert done.returncode == 2, (flags, done.stderr)
        assert f"error: {flag}: " in done.stderr and words in done.stderr, (flags, done.stderr)
    assert not (tmp_path / "out").exists()


def test_bench_follows_pages(api_server: StartServer, run_cli: Callable[..., Any]) -> None:
    api = PagedAPI()
    url = api_server(api.app).url
    done = run_cli(
        "bench",
        "--endpoint",
        f"{url}/link",
        "--allow-private-networks",
        "--query",
        "date=d",
        "--requests",
        "4",
        "--concurrency",
        "2",
        "--paginate",
        "link_header",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    assert api.hits("/link") == 4 * 3
