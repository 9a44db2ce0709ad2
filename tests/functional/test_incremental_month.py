"""A simulated month of scheduled incremental runs (CONTRACT §15), unpacked and packed.

A fake clock drives one run per day, the schedule's event ``start: today-3d, end:
yesterday`` resolved against it; the API is a local server whose answers are
scripted per day, S3 is moto. Along the month: three days fail once, one day fails
three runs in a row, a week passes without runs (the next run's sliding start is
then after the watermark: it must catch up), and one run is killed outright (as
Lambda kills at its deadline: nothing after, not even the state write).

At the end every day of the month is in S3 exactly once, the watermark is at its
last day with nothing listed after it, and the API was asked for each day once
plus once per run in which that day had not landed: a landed day is never
fetched again.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from ingest_core import parse_event
from ingest_core.netguard import NetPolicy
from ingest_core.runtime import execute
from ingest_core.state import default_state_key
from tests.conftest import RAW_BUCKET
from tests.support.servers import DEFAULT_RECORDS, MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("allow_private")]

MONTH = [date(2025, 1, 1) + timedelta(days=k) for k in range(31)]
# The clock reads 06:15 UTC on each run day: the first run (Jan 4) covers Jan 1-3.
FIRST_RUN, LAST_RUN = date(2025, 1, 4), date(2025, 2, 1)
NO_RUNS = {date(2025, 1, 15) + timedelta(days=k) for k in range(7)}  # a week: Jan 15-21
FAIL_ONCE = {date(2025, 1, 2), date(2025, 1, 8), date(2025, 1, 18)}
FAIL_THREE_RUNS = date(2025, 1, 25)  # fails in the runs of Jan 26, 27 and 28
KILLED_RUN = date(2025, 1, 12)  # fetches Jan 11, which hangs; the run is killed
KILL_AFTER_S = 1.5
HANG_S = 30.0
RUN_DEADLINE_S = 60.0


def iso(day: date) -> str:
    return day.isoformat()


def scripted_api() -> ScriptedAPI:
    failing = Response(status=500)
    script: dict[str, list[Response]] = {iso(day): [failing, Response()] for day in FAIL_ONCE}
    script[iso(FAIL_THREE_RUNS)] = [failing, failing, failing, Response()]
    script[iso(KILLED_RUN - timedelta(days=1))] = [Response(delay_s=HANG_S), Response()]
    return ScriptedAPI(script)


def schedule_event(url: str, source_id: str, packed: bool) -> dict[str, Any]:
    options: dict[str, Any] = {"concurrency": 4, "max_attempts": 1}
    if packed:
        options["pack"] = {"unit": "record"}
    return {
        "api_config": {
            "endpoint": f"{url}/v1/data",
            "raw_bucket": RAW_BUCKET,
            "source_id": source_id,
        },
        "options": options,
        "date_range": {"start": "today-3d", "end": "yesterday", "incremental": True},
    }


async def run_day(event: dict[str, Any], day: date) -> dict[str, Any] | None:
    """One scheduled run on ``day``; None when it was killed."""
    now = datetime(day.year, day.month, day.day, 6, 15, tzinfo=UTC)
    job = parse_event(
        event,
        default_request_id=f"sched-{iso(day)}",
        policy=NetPolicy(allow_private_networks=True),
        now=now,
    )
    loop = asyncio.get_running_loop()
    run = execute(job, deadline=loop.time() + RUN_DEADLINE_S)
    if day == KILLED_RUN:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(run, KILL_AFTER_S)  # cancelled: as a killed Lambda
        return None
    return (await run).result


async def the_month(event: dict[str, Any]) -> list[dict[str, Any] | None]:
    days = (FIRST_RUN + timedelta(days=k) for k in range((LAST_RUN - FIRST_RUN).days + 1))
    return [await run_day(event, day) for day in days if day not in NO_RUNS]


def expected_hits() -> Counter[str]:
    """Once per day, plus once per run in which the day had not landed."""
    hits = Counter({iso(day): 1 for day in MONTH})
    for day in FAIL_ONCE:
        hits[iso(day)] += 1
    hits[iso(FAIL_THREE_RUNS)] += 3
    hits[iso(KILLED_RUN - timedelta(days=1))] += 1  # its hit in the killed run
    return hits


def records_per_day(s3: MotoS3, source_id: str, packed: bool) -> dict[str, Counter[str]]:
    """For each object under the source: how many records of each day it holds."""
    found: dict[str, Counter[str]] = {}
    for key in s3.list_keys(RAW_BUCKET, prefix=f"{source_id}/"):
        if "/_" in key:
            continue  # the state and the manifests
        raw = s3.get_bytes(RAW_BUCKET, key)
        if packed:
            rows = [json.loads(line) for line in gzip.decompress(raw).splitlines()]
        else:
            rows = json.loads(raw)
        found[key] = Counter(row["date"] for row in rows)
    return found


@pytest.mark.parametrize("packed", [False, True], ids=["unpacked", "packed"])
def test_a_month_of_daily_runs_lands_every_day_exactly_once(
    s3: MotoS3, api_server: Any, packed: bool
) -> None:
    # GIVEN the schedule's event and an API with failing days and a hanging one
    api = scripted_api()
    server = api_server(api)
    source_id = f"month-{'packed' if packed else 'objects'}"
    event = schedule_event(server.url, source_id, packed)
    # WHEN a month of daily runs goes, with a week off and one run killed
    results = asyncio.run(the_month(event))
    # THEN each day's records are in exactly one object, named by the day
    objects = records_per_day(s3, source_id, packed)
    suffix = ".ndjson.gz" if packed else ".json"
    assert sorted(objects) == [f"{source_id}/{iso(day)}{suffix}" for day in MONTH]
    for key, days in objects.items():
        assert days == Counter({key.removeprefix(f"{source_id}/")[:10]: DEFAULT_RECORDS})
    # AND the watermark is at the last day, nothing listed after it
    state_key = default_state_key(f"{server.url}/v1/data", "date", "1d", {})
    state = json.loads(s3.get_bytes(RAW_BUCKET, f"{source_id}/_state/{state_key}.json"))
    assert (state["watermark"], state["landed"]) == (iso(MONTH[-1]), [])
    # AND a day was fetched again only in runs where it had not landed
    assert api.hits == expected_hits()
    # AND the run after the week off caught up from the watermark, not from its start
    after_break = results[-(LAST_RUN - max(NO_RUNS)).days]
    assert after_break is not None
    assert after_break["incremental"]["first_date"] == iso(min(NO_RUNS) - timedelta(days=1))
    assert all(r is None or r["incremental"]["state_error"] is None for r in results)
