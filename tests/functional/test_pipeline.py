"""One pipeline (CONTRACT §16): where pagination, packing, the sink and the clock meet.

Each test reproduces one row of issue 17's table against a real paginated API on
loopback and a real local folder (or moto), and checks the guarantee that row broke:
the counts add up, every page that may be stored is in its item's ``keys``, every
429 is counted, a bug is kind ``internal``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from ingest_core import LocalDirWriter, parse_event, run_job
from ingest_core.engine import RunOutcome
from ingest_core.netguard import NetPolicy
from ingest_core.settings import Settings
from ingest_core.writers import ObjectMeta
from tests.conftest import StartServer
from tests.support.paged_api import PagedAPI
from tests.support.reliability import assert_counts, event_for

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("allow_private")]

PERMISSIVE = NetPolicy(allow_private_networks=True)
PAGE_KEYS = "{source_id}/{request_id}-{index}-p{page}.json"


async def ingest(
    url: str,
    dest: Path,
    *,
    dates: list[str],
    pagination: dict[str, Any] | None,
    options: dict[str, Any] | None = None,
    writer: LocalDirWriter | None = None,
    deadline: float | None = None,
    **api: Any,
) -> RunOutcome:
    """Run one job against ``url`` into the folder ``dest``."""
    if pagination is not None:
        api.setdefault("key_template", PAGE_KEYS)
    event = event_for(
        url,
        batch=[{"date": d} for d in dates],
        request_id="r",
        options={"concurrency": 4, **(options or {})},
        pagination=pagination,
        **api,
    )
    job = parse_event(event, policy=PERMISSIVE)
    outcome = await run_job(
        job,
        writer=writer or LocalDirWriter(dest),
        settings=Settings(policy=PERMISSIVE),
        deadline=deadline,
    )
    assert_counts(outcome.result)
    return outcome


def manifest_lines(dest: Path, outcome: RunOutcome) -> list[dict[str, Any]]:
    key = outcome.result["manifest_key"]
    lines = [orjson.loads(line) for line in (dest / key).read_bytes().splitlines()]
    return sorted(lines, key=lambda line: line["index"])


OFFSET = {"type": "offset", "limit": 10, "total_header": "X-Total-Count"}
TOTAL_FITS = {  # route, pagination, records on the API, records_path
    "total_pages 1": (
        "pages",
        {"type": "page_number", "total_pages_path": "total_pages"},
        7,
        "items",
    ),
    "offset total <= limit": ("offset", OFFSET, 10, "items"),
    # Without records_path the page's body is one record: 1 is not 0, so the total decides.
    "total 0": ("offset", {"type": "offset", "limit": 10, "total_path": "total"}, 0, None),
}


@pytest.mark.parametrize("case", list(TOTAL_FITS))
async def test_a_total_that_fits_on_page_0_with_parallel_pages_writes_one_page(
    tmp_path: Path, api_server: StartServer, case: str
) -> None:
    # GIVEN an API whose announced total fits on the first page, parallel pages on (default)
    route, pagination, total, records_path = TOTAL_FITS[case]
    api = PagedAPI(total=total)
    url = api_server(api.app).url
    # WHEN two items are ingested
    outcome = await ingest(
        f"{url}/{route}",
        tmp_path,
        dates=["a", "b"],
        pagination=pagination,
        records_path=records_path,
    )
    # THEN both succeed with their one page, listed in the manifest
    result = outcome.result
    assert result["status"] == "SUCCESS", result["failures"]
    assert result["pages_written"] == 2
    for line in manifest_lines(tmp_path, outcome):
        assert line["pages"] == 1 and len(line["keys"]) == 1
        assert (tmp_path / line["keys"][0]).exists()


async def test_a_failing_page_s_429s_are_counted(tmp_path: Path, api_server: StartServer) -> None:
    # GIVEN a chain whose page 1 answers 429 to every attempt
    api = PagedAPI(faults={("/cursor", 10): [429, 429, 429]})
    url = api_server(api.app).url
    pagination = {"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "after"}
    # WHEN it is ingested with 3 attempts a page
    outcome = await ingest(
        f"{url}/cursor",
        tmp_path,
        dates=["a"],
        pagination=pagination,
        options={"max_attempts": 3, "adaptive": False},
    )
    # THEN the item failed and its three throttled answers are counted
    result = outcome.result
    assert result["failed"] == 1
    assert result["throttled"] == 3
    [line] = manifest_lines(tmp_path, outcome)
    assert line["attempts"] == 3 and line["pages"] == 1  # page 0, then page 1's three


async def test_a_paginated_item_that_never_sent_a_request_is_not_attempted(
    tmp_path: Path, api_server: StartServer
) -> None:
    # GIVEN one-page chains and a fixed rate of 1 request/s: the second item starts at
    # once but its token comes at +1.0 s, between stop_starting (+0.8) and the hard stop (+1.3)
    api = PagedAPI(total=10)
    url = api_server(api.app).url
    pagination = {"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "after"}
    # WHEN two items run with one worker under a 1.8 s deadline (margin 1 s)
    outcome = await ingest(
        f"{url}/cursor",
        tmp_path,
        dates=["a", "b"],
        pagination=pagination,
        options={"concurrency": 1, "rate_limit_per_s": 1.0, "deadline_margin_s": 1.0},
        deadline=time.monotonic() + 1.8,
    )
    # THEN the item that sent nothing is not attempted, with 0 attempts
    result = outcome.result
    never = [f for f in result["failures"] if f["attempts"] == 0]
    assert result["not_attempted"] >= 1, result["failures"]
    assert never and all(f["kind"] == "deadline" for f in never)
    assert not [f for f in result["failures"] if f["kind"] == "deadline" and f["attempts"] == 1]


class _HeldPage1(LocalDirWriter):
    """Page 1's write never gets an answer (S3 may apply it); every other write lands."""

    def __init__(self, root: Path, held: asyncio.Event) -> None:
        super().__init__(root)
        self.held = held

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        if key.endswith("-p1.json"):
            self.held.set()
            await asyncio.Event().wait()
        await super().put(key, data, meta)


async def test_a_parallel_page_cut_in_its_write_is_in_the_item_s_keys(
    tmp_path: Path, api_server: StartServer
) -> None:
    # GIVEN three parallel pages: page 1's write hangs, page 2 fails for good (404)
    api = PagedAPI(faults={("/pages", 20): [404]})
    url = api_server(api.app).url
    pagination = {"type": "page_number", "total_pages_path": "total_pages"}
    writer = _HeldPage1(tmp_path, asyncio.Event())
    # WHEN the item is ingested
    outcome = await ingest(
        f"{url}/pages",
        tmp_path,
        dates=["a"],
        pagination=pagination,
        writer=writer,
        records_path="items",
    )
    # THEN page 1's write was cut, so the item may have it: its key is listed
    assert writer.held.is_set()
    [line] = manifest_lines(tmp_path, outcome)
    assert line["status"] == "write_unknown", line
    assert any(key.endswith("-p1.json") for key in line["keys"]), line["keys"]
    assert any(key.endswith("-p0.json") for key in line["keys"]), line["keys"]


class _Buggy(LocalDirWriter):
    """A writer with a bug: an item's PUT raises an exception outside the tool's tree."""

    async def put(self, key: str, data: bytes | memoryview, meta: ObjectMeta) -> None:
        if "_manifests" not in key:
            raise KeyError("a bug")
        await super().put(key, data, meta)


async def test_an_unexpected_exception_is_kind_internal_logged_once(
    tmp_path: Path, api_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    # GIVEN a writer whose PUT has a bug
    api = PagedAPI()
    url = api_server(api.app).url
    caplog.set_level(logging.ERROR)
    # WHEN an unpaginated item is written through it
    outcome = await ingest(
        f"{url}/link", tmp_path, dates=["a"], pagination=None, writer=_Buggy(tmp_path)
    )
    # THEN it failed as internal, naming the exception's type, logged at ERROR once
    [failure] = outcome.result["failures"]
    assert failure["kind"] == "internal", failure
    assert "KeyError" in failure["error"]
    assert failure["attempts"] == 1
    logged = [r for r in caplog.records if r.levelno >= logging.ERROR and r.exc_info]
    assert len(logged) == 1
