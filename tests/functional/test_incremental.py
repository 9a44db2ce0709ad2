"""Incremental runs end to end (CONTRACT §15): the Lambda handler, a local API, moto S3.

Each run's API hits are counted per date, so "fetches nothing before the
watermark" is checked against what the API actually saw.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from handler.app import lambda_handler
from ingest_core import StateError, parse_event
from ingest_core.errors import StateConflict
from ingest_core.netguard import NetPolicy
from ingest_core.runtime import execute
from ingest_core.state import (
    Progress,
    S3StateStore,
    Versioned,
    Watermark,
    advance,
    default_state_key,
)
from tests.conftest import RAW_BUCKET
from tests.support.lambda_context import LocalContext
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(90), pytest.mark.usefixtures("allow_private")]

SOURCE = "inc-source"


def jan(day: int) -> str:
    return f"2025-01-{day:02d}"


def incremental_event(url: str, start: str, end: str, **date_range: Any) -> dict[str, Any]:
    return {
        "api_config": {"endpoint": f"{url}/v1/data", "raw_bucket": RAW_BUCKET, "source_id": SOURCE},
        "options": {"concurrency": 4, "max_attempts": 1},
        "date_range": {"start": start, "end": end, "incremental": True, **date_range},
    }


def state_key_for(url: str) -> str:
    return f"{SOURCE}/_state/{default_state_key(f'{url}/v1/data', 'date', '1d', {})}.json"


def state_in(s3: MotoS3, url: str) -> dict[str, Any]:
    return dict(json.loads(s3.get_bytes(RAW_BUCKET, state_key_for(url))))


def watermark_in(s3: MotoS3, url: str) -> str:
    return str(json.loads(s3.get_bytes(RAW_BUCKET, state_key_for(url)))["watermark"])


def hits_since(api: ScriptedAPI, before: Counter[str]) -> Counter[str]:
    now = api.hits
    return Counter({date: now[date] - before[date] for date in now if now[date] > before[date]})


def test_a_failing_day_holds_the_watermark_and_only_it_is_fetched_again(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN ten days of which the fifth fails
    api = ScriptedAPI({jan(5): Response(status=500)})
    server = api_server(api)
    event = incremental_event(server.url, jan(1), jan(10))
    # WHEN the first incremental run goes
    first = lambda_handler(event, LocalContext(request_id="run-1"))
    # THEN the watermark stops the day before the failure; the days after it are listed
    assert (first["succeeded"], first["failed"]) == (9, 1)
    assert first["incremental"]["watermark_before"] is None
    assert first["incremental"]["watermark_after"] == jan(4) == watermark_in(s3, server.url)
    assert first["incremental"]["steps_behind"] == 1
    assert state_in(s3, server.url)["landed"] == [jan(d) for d in range(6, 11)]
    # WHEN the day recovers and the next run goes
    api.set_script(jan(5), Response())
    seen = api.hits
    second = lambda_handler(event, LocalContext(request_id="run-2"))
    # THEN it fetches the failed day only: a landed day is never fetched again
    assert hits_since(api, seen) == Counter({jan(5): 1})
    assert second["requested"] == 1 and second["status"] == "SUCCESS"
    assert second["incremental"]["first_date"] == jan(5)
    assert second["incremental"]["already_landed"] == 5
    assert second["incremental"]["steps_behind"] == 0
    assert watermark_in(s3, server.url) == jan(10)
    assert state_in(s3, server.url)["landed"] == []
    # AND each day has one object, named by the day
    days = [k for k in s3.list_keys(RAW_BUCKET, prefix=f"{SOURCE}/") if "/_" not in k]
    assert days == [f"{SOURCE}/{jan(d)}.json" for d in range(1, 11)]


def test_a_run_with_nothing_new_fetches_nothing_and_says_so(s3: MotoS3, api_server: Any) -> None:
    # GIVEN a range already ingested up to its end
    api = ScriptedAPI()
    server = api_server(api)
    event = incremental_event(server.url, jan(1), jan(3))
    lambda_handler(event, LocalContext(request_id="run-a"))
    seen, keys = api.hits, set(s3.list_keys(RAW_BUCKET))
    # WHEN it runs again
    result = lambda_handler(event, LocalContext(request_id="run-b"))
    # THEN no request, no object, no manifest: a result saying there was nothing new
    assert hits_since(api, seen) == Counter()
    assert set(s3.list_keys(RAW_BUCKET)) == keys
    assert result["status"] == "SUCCESS" and result["requested"] == 0
    assert result["manifest_key"] is None
    assert result["incremental"]["nothing_new"] is True
    assert result["incremental"]["watermark_after"] == jan(3)


def test_a_deadline_cut_leaves_the_watermark_at_the_last_contiguous_success(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN ten days of which the fourth never answers in time, and 8 s on the clock
    api = ScriptedAPI({jan(4): Response(delay_s=60)})
    server = api_server(api)
    event = incremental_event(server.url, jan(1), jan(10))
    event["options"]["deadline_margin_s"] = 1.0
    # WHEN the run is cut by its deadline
    result = lambda_handler(event, LocalContext(timeout_s=8.0, request_id="cut-1"))
    # THEN the fourth day is not attempted and the watermark stays before it
    assert [f["params"]["date"] for f in result["failures"]] == [jan(4)]
    assert result["not_attempted"] == 1
    assert watermark_in(s3, server.url) == jan(3)
    # WHEN the next scheduled run finds the API well again
    api.set_script(jan(4), Response())
    seen = api.hits
    lambda_handler(event, LocalContext(request_id="cut-2"))
    # THEN it starts at the fourth day and the watermark reaches the end
    assert min(hits_since(api, seen)) == jan(4)
    assert watermark_in(s3, server.url) == jan(10)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"watermark": 20250103, "updated_at": "x", "request_id": "y"}',
        b'{"watermark": "03/01/2025", "updated_at": "x", "request_id": "y"}',
    ],
    ids=["unreadable", "wrong-shape", "not-a-date-of-the-format"],
)
def test_a_bad_state_object_is_an_error_naming_it_and_never_reset(
    s3: MotoS3, api_server: Any, body: bytes
) -> None:
    # GIVEN a state object that cannot be used
    api = ScriptedAPI()
    server = api_server(api)
    key = state_key_for(server.url)
    s3.client().put_object(Bucket=RAW_BUCKET, Key=key, Body=body)
    # WHEN an incremental run starts THEN it fails naming the object, before any request
    event = incremental_event(server.url, jan(1), jan(3))
    with pytest.raises(StateError, match=f"s3://{RAW_BUCKET}/{key}"):
        lambda_handler(event, LocalContext(request_id="bad-state"))
    assert sum(api.hits.values()) == 0
    assert s3.get_bytes(RAW_BUCKET, key) == body


class _Interleaved(S3StateStore):
    """Both racers read before either writes; ``second`` writes only after ``first``."""

    def __init__(self, *args: Any, barrier: asyncio.Barrier, first_done: asyncio.Event) -> None:
        super().__init__(*args)
        self._barrier, self._first_done = barrier, first_done
        self.reads = 0
        self.conflicts = 0
        self.is_first = False

    async def read(self) -> Versioned | None:
        current = await super().read()
        self.reads += 1
        if self.reads == 1:
            await self._barrier.wait()
        return current

    async def write(self, state: Watermark, *, version: str | None) -> None:
        if not self.is_first and not self._first_done.is_set():
            await self._first_done.wait()
        try:
            await super().write(state, version=version)
        except StateConflict:
            self.conflicts += 1
            raise
        finally:
            if self.is_first:
                self._first_done.set()


def proved(anchor: str | None, until: str) -> Progress:
    """A run over Jan 1-10 after ``anchor`` whose days landed up to ``until``."""
    days = [jan(d) for d in range(1, 11) if anchor is None or jan(d) > anchor]
    return Progress(anchor or "2024-12-31", lambda: iter(days), {d for d in days if d <= until})


async def _race(
    s3: MotoS3, first: str, second: str, anchor: str | None
) -> tuple[str, _Interleaved]:
    from ingest_core.runtime import aws_session

    key = f"{SOURCE}/_state/race.json"
    barrier, first_done = asyncio.Barrier(2), asyncio.Event()
    async with aws_session().client("s3", endpoint_url=s3.endpoint) as client:
        a = _Interleaved(client, RAW_BUCKET, key, barrier=barrier, first_done=first_done)
        b = _Interleaved(client, RAW_BUCKET, key, barrier=barrier, first_done=first_done)
        a.is_first = True
        fmt = "%Y-%m-%d"
        await asyncio.gather(
            advance(a, proved(anchor, first), fmt=fmt, request_id="a"),
            advance(b, proved(anchor, second), fmt=fmt, request_id="b"),
        )
    return str(json.loads(s3.get_bytes(RAW_BUCKET, key))["watermark"]), b


@pytest.mark.parametrize(("first", "second"), [(jan(9), jan(6)), (jan(6), jan(9))])
@pytest.mark.parametrize("existing", [None, jan(2)], ids=["first-write", "if-match"])
def test_two_runs_racing_on_s3_end_at_the_later_watermark(
    s3: MotoS3, first: str, second: str, existing: str | None
) -> None:
    # GIVEN no state (If-None-Match: *) or an older one (If-Match on its ETag)
    if existing is not None:
        body = Watermark(existing, "t", "old").to_json()
        s3.client().put_object(Bucket=RAW_BUCKET, Key=f"{SOURCE}/_state/race.json", Body=body)
    # WHEN two runs read the same state and both try to advance it, one after the other
    final, loser = asyncio.run(_race(s3, first, second, existing))
    # THEN moto refused the second write (412), which re-read and kept the later date
    assert loser.conflicts == 1
    assert final == max(first, second)


def test_two_concurrent_runs_into_one_folder_keep_the_max_they_proved(
    tmp_path: Path, api_server: Any
) -> None:
    # GIVEN ten days whose seventh fails on its first hit only
    api = ScriptedAPI({jan(7): [Response(status=500), Response()]})
    server = api_server(api)
    event = incremental_event(server.url, jan(1), jan(10))

    async def both() -> list[dict[str, Any]]:
        jobs = [
            parse_event({**event, "request_id": rid}, policy=NetPolicy(allow_private_networks=True))
            for rid in ("left", "right")
        ]
        outcomes = await asyncio.gather(*(execute(job, local_dir=tmp_path) for job in jobs))
        return [outcome.result for outcome in outcomes]

    # WHEN two runs go at once: one of them meets the failure
    results = asyncio.run(both())
    # THEN one proved up to the 6th, the other to the 10th, and the 10th is kept
    afters = sorted(r["incremental"]["watermark_after"] for r in results)
    assert sorted(r["failed"] for r in results) == [0, 1]
    state_file = tmp_path / state_key_for(server.url)
    assert json.loads(state_file.read_text())["watermark"] == jan(10)
    assert afters[-1] == jan(10)


def day_keys(s3: MotoS3) -> list[str]:
    """Every object under the source's prefix but the state and the manifests."""
    return [k for k in s3.list_keys(RAW_BUCKET, prefix=f"{SOURCE}/") if "/_" not in k]


def test_the_documented_schedule_event_never_writes_a_day_twice(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN the schedule's event as documented (no request_id, no key_template), Jan 3 failing
    api = ScriptedAPI({jan(3): [Response(status=500), Response()]})
    server = api_server(api)
    event = incremental_event(server.url, jan(1), jan(5))
    # WHEN two daily runs go, each with its own Lambda request id
    first = lambda_handler(event, LocalContext(request_id="sched-1"))
    second = lambda_handler(event, LocalContext(request_id="sched-2"))
    # THEN every day exists exactly once under the source's prefix
    assert (first["failed"], second["status"]) == (1, "SUCCESS")
    assert day_keys(s3) == [f"{SOURCE}/{jan(d)}.json" for d in range(1, 6)]
    assert watermark_in(s3, server.url) == jan(5)


def test_a_later_start_catches_up_from_the_watermark_and_skips_no_day(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN a watermark at Jan 3, then a week without runs
    api = ScriptedAPI()
    server = api_server(api)
    lambda_handler(incremental_event(server.url, jan(1), jan(3)), LocalContext(request_id="r1"))
    seen = api.hits
    # WHEN the next run's sliding start is Jan 8 (a "today-3d" a week later)
    result = lambda_handler(
        incremental_event(server.url, jan(8), jan(10)), LocalContext(request_id="r2")
    )
    # THEN it covers from the day after the watermark: Jan 4-7 are not skipped
    assert hits_since(api, seen) == Counter({jan(d): 1 for d in range(4, 11)})
    assert result["incremental"]["first_date"] == jan(4)
    assert result["incremental"]["steps_behind"] == 0
    assert watermark_in(s3, server.url) == jan(10)


def test_max_catch_up_bounds_a_run_oldest_first_and_says_what_is_behind(
    s3: MotoS3, api_server: Any
) -> None:
    # GIVEN a watermark at Jan 3 and a run over Jan 8-10 allowed 4 steps
    api = ScriptedAPI()
    server = api_server(api)
    lambda_handler(incremental_event(server.url, jan(1), jan(3)), LocalContext(request_id="r1"))
    event = incremental_event(server.url, jan(8), jan(10))
    event["options"]["max_catch_up"] = 4
    seen = api.hits
    # WHEN it runs THEN it fetches the 4 oldest missing days and says 3 are still behind
    first = lambda_handler(event, LocalContext(request_id="r2"))
    assert hits_since(api, seen) == Counter({jan(d): 1 for d in range(4, 8)})
    assert (first["incremental"]["steps_behind"], watermark_in(s3, server.url)) == (3, jan(7))
    # WHEN it runs again THEN the rest, and nothing is behind
    seen = api.hits
    second = lambda_handler(event, LocalContext(request_id="r3"))
    assert hits_since(api, seen) == Counter({jan(d): 1 for d in range(8, 11)})
    assert (second["incremental"]["steps_behind"], watermark_in(s3, server.url)) == (0, jan(10))
