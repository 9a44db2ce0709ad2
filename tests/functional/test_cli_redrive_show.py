"""A re-drive keeps or refuses every flag (issue 22, point 4); ``show`` prints every page
of an unpacked paginated item (point 5). Both as a user runs them: the real command.
"""

# The run_cli fixture is test_cli's, imported: its name reappears as a parameter.
# ruff: noqa: F811

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartServer
from tests.functional.test_cli import cli_env, run_cli  # noqa: F401 (fixtures)
from tests.support.paged_api import PagedAPI

pytestmark = pytest.mark.timeout(90)

SOURCE = "paged"
RID = "backfill-20250101-20250102-1d"


def paged_backfill(url: str, dest: Path, *extra: str) -> list[str]:
    return [
        "backfill",
        "--endpoint",
        f"{url}/cursor",
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
        "--paginate",
        "cursor",
        "--cursor-path",
        "meta.next_cursor",
        "--cursor-param",
        "after",
        *extra,
    ]


def test_a_max_pages_failure_is_re_driven_with_a_higher_max_pages(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN 25 records a day in pages of 10, fetched with at most 2 pages per item
    api = PagedAPI()
    url = api_server(api.app).url
    first = run_cli(*paged_backfill(url, tmp_path / "out", "--max-pages", "2"))
    assert first.returncode == 1, first.stderr
    redrive = tmp_path / f"fanout-redrive-{RID}.jsonl"
    assert [json.loads(line)["kind"] for line in redrive.read_text().splitlines()[1:]] == [
        "pagination",
        "pagination",
    ]
    # WHEN the re-drive raises the limit (and changes how many run at once)
    retried = run_cli(
        "backfill", "--retry-from", str(redrive), "--max-pages", "5", "--concurrency", "1", "--json"
    )
    # THEN the higher limit is applied: every page of both days lands, and it says so
    assert retried.returncode == 0, retried.stderr
    result = json.loads(retried.stdout)
    assert (result["succeeded"], result["pages_written"], result["records_ingested"]) == (2, 6, 50)
    assert "applied on top of the re-drive file: --max-pages 5" in retried.stderr
    assert "--concurrency 1" in retried.stderr


def test_a_re_drive_refuses_flags_that_change_the_request_shape_naming_why(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN a re-drive file of a paginated run that failed on max_pages
    api = PagedAPI()
    url = api_server(api.app).url
    assert run_cli(*paged_backfill(url, tmp_path / "out", "--max-pages", "2")).returncode == 1
    redrive = tmp_path / f"fanout-redrive-{RID}.jsonl"
    seen = len(api.seen)
    # WHEN it is retried with a method, a paginator and a secret param of its own
    done = run_cli(
        "backfill",
        "--retry-from",
        str(redrive),
        "--method",
        "POST",
        "--paginate",
        "offset",
        "--secret-param",
        "api_key=ssm:/api/key",
        "--max-pages",
        "1",
    )
    # THEN it is bad usage naming each flag and why, and nothing was fetched
    assert done.returncode == 2, done.stderr
    for flag, carried in (
        ("--method", 'api_config.method, which the re-drive file carries ("GET")'),
        ("--paginate", 'api_config.pagination.type, which the re-drive file carries ("cursor")'),
        ("--secret-param", "api_config.secret_params"),
        ("--max-pages", "lower than the re-drive file's max_pages (2)"),
    ):
        assert f"error: {flag}: " in done.stderr and carried in done.stderr, flag
    assert len(api.seen) == seen


def test_show_prints_every_page_of_an_unpacked_paginated_item(
    api_server: StartServer, run_cli: Callable[..., Any], tmp_path: Path
) -> None:
    # GIVEN a paginated backfill stored one object per page (3 pages a day)
    api = PagedAPI()
    url = api_server(api.app).url
    assert run_cli(*paged_backfill(url, tmp_path / "out")).returncode == 0
    manifest = tmp_path / "out" / SOURCE / "_manifests" / f"{RID}.json"
    # WHEN item 0 is shown
    done = run_cli("show", str(manifest), "--index", "0")
    # THEN all 25 records of its 3 pages are printed in order, each page named on stderr
    assert done.returncode == 0, done.stderr
    bodies = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["n"] for body in bodies for r in body["items"]] == list(range(25))
    assert [line.split(": ")[-1] for line in done.stderr.splitlines()] == [
        "page 0 of 3",
        "page 1 of 3",
        "page 2 of 3",
    ]
    # AND --page picks one page, naming the range when it is out of it
    one = run_cli("show", str(manifest), "--index", "0", "--page", "2")
    assert [r["n"] for r in json.loads(one.stdout)["items"]] == list(range(20, 25))
    beyond = run_cli("show", str(manifest), "--index", "0", "--page", "3")
    assert beyond.returncode == 2 and "--page: item 0 has pages 0 to 2" in beyond.stderr
