"""``backfill --incremental``, ``state show|set|clear`` and relative dates on the command line.

The command runs in-process (``main``) so its clock can be set; the API and S3
are real local servers.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ingest_core import parse_event
from ingest_core.cli import backfill, main, plan
from ingest_core.netguard import NetPolicy
from ingest_core.runtime import execute
from ingest_core.state import default_state_key
from tests.conftest import RAW_BUCKET
from tests.support.servers import MotoS3, Response, ScriptedAPI

pytestmark = [pytest.mark.timeout(90)]

MARCH_FIRST = datetime(2025, 3, 1, 0, 10, tzinfo=UTC)
NEW_YEAR = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)


def feb(day: int) -> str:
    return f"2025-02-{day:02d}"


def incremental_backfill(url: str, dest: str | Path, *extra: str) -> list[str]:
    return [
        "backfill",
        "--endpoint",
        f"{url}/v1/data",
        "--allow-private-networks",
        "--source-id",
        "weather",
        "--start",
        "today-5d",
        "--end",
        "yesterday",
        "--dest",
        str(dest),
        "--incremental",
        "--max-attempts",
        "1",
        "--progress",
        "off",
        *extra,
    ]


def test_daily_incremental_backfill_over_a_month_end(
    tmp_path: Path,
    api_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the clock just past midnight on 1 March, and the 26th failing once
    monkeypatch.setattr(backfill, "utc_now", lambda: MARCH_FIRST)
    monkeypatch.chdir(tmp_path)
    api = ScriptedAPI({feb(26): [Response(status=500), Response()]})
    server = api_server(api)
    args = incremental_backfill(server.url, tmp_path / "lake")
    # WHEN "today-5d .. yesterday" runs THEN it covers 24-28 February and stops before the 26th
    assert main(args) == 1
    assert api.hits == Counter({feb(d): 1 for d in range(24, 29)})
    assert "watermark: (none) -> 2025-02-25" in capsys.readouterr().out
    # WHEN it runs again THEN it fetches the 26th only: every other day has landed
    assert main([*args, "--progress", "plain"]) == 0
    assert api.hits == Counter({feb(24): 1, feb(25): 1, feb(26): 2, feb(27): 1, feb(28): 1})
    out, err = capsys.readouterr()
    assert "watermark: 2025-02-25 -> 2025-02-28" in out
    assert "already landed, not fetched again: 2 steps" in out
    # AND its progress counts the one day it fetches, not the 5 of the range
    assert "backfill: 1 items after the watermark" in err
    assert "backfill: 1/1 (100.0%)" in err
    # WHEN it runs a third time the same day THEN nothing new, and no request
    assert main(args) == 0
    assert sum(api.hits.values()) == 6
    assert "nothing new: every step up to 2025-02-28 has landed" in capsys.readouterr().out
    # AND each day has one object, named by its date (not the run, not the words)
    keys = sorted(p.name for p in (tmp_path / "lake" / "weather").glob("*.json"))
    assert keys == [f"{feb(d)}.json" for d in range(24, 29)]


def test_plan_resolves_relative_dates_across_a_year_end(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(plan, "utc_now", lambda: NEW_YEAR)
    assert main(["plan", "--start", "today-2d", "--end", "today", "--jsonl"]) == 0
    dates = [json.loads(line)["params"]["date"] for line in capsys.readouterr().out.splitlines()]
    assert dates == ["2025-12-30", "2025-12-31", "2026-01-01"]


def test_bad_relative_dates_are_bad_usage_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", "--start", "today", "--end", "tomorrow"]) == 2
    assert "error: --end: 'tomorrow' is not" in capsys.readouterr().err


def _state(*args: str) -> list[str]:
    return ["state", *args]


def test_state_show_set_clear_in_s3(s3: MotoS3, capsys: pytest.CaptureFixture[str]) -> None:
    # GIVEN the location a run with these flags uses, under an S3 prefix
    where = [
        "--dest",
        f"s3://{RAW_BUCKET}/landing",
        "--source-id",
        "weather",
        "--endpoint",
        "https://api.example.com/v1/data",
    ]
    state_key = default_state_key("https://api.example.com/v1/data", "date", "1d", {})
    key = f"landing/weather/_state/{state_key}.json"

    def shown() -> dict[str, Any]:
        assert main(_state("show", *where)) == 0
        return dict(json.loads(capsys.readouterr().out))

    # WHEN nothing was run THEN show says there is no watermark
    assert shown() == {"state": f"s3://{RAW_BUCKET}/{key}", "watermark": None}
    # WHEN set THEN the object holds it, and show prints it
    assert main(_state("set", "2025-02-28", *where)) == 0
    capsys.readouterr()
    assert json.loads(s3.get_bytes(RAW_BUCKET, key))["watermark"] == "2025-02-28"
    assert shown()["watermark"] == "2025-02-28"
    # WHEN set back THEN it moves back (an operator may do that on purpose)
    assert main(_state("set", "2025-02-01", *where)) == 0
    capsys.readouterr()
    assert shown()["watermark"] == "2025-02-01"
    # WHEN cleared THEN the object is gone
    assert main(_state("clear", *where)) == 0
    assert json.loads(capsys.readouterr().out)["removed"] is True
    assert key not in s3.list_keys(RAW_BUCKET)


def test_state_refuses_bad_dates_and_names_a_malformed_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--dest", str(tmp_path), "--source-id", "weather", "--state-key", "daily"]
    # WHEN a watermark is not a date of the format THEN bad usage, nothing written
    assert main(_state("set", "28/02/2025", *where)) == 2
    assert "DATE: '28/02/2025' is not a date of the format" in capsys.readouterr().err
    state_file = tmp_path / "weather" / "_state" / "daily.json"
    assert not state_file.exists()
    # GIVEN a malformed state file WHEN shown THEN exit 1 naming it, and it is left alone
    state_file.parent.mkdir(parents=True)
    state_file.write_text("[]")
    assert main(_state("show", *where)) == 1
    assert str(state_file) in capsys.readouterr().err
    assert state_file.read_text() == "[]"
    # WHEN set over it THEN it is replaced with a good one
    assert main(_state("set", "2025-02-28", *where)) == 0
    assert json.loads(state_file.read_text())["watermark"] == "2025-02-28"


def test_incremental_backfill_to_s3_keeps_its_watermark_under_the_prefix(
    s3: MotoS3,
    tmp_path: Path,
    api_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN an incremental backfill into S3 under a prefix, with a named state key
    monkeypatch.setattr(backfill, "utc_now", lambda: MARCH_FIRST)
    monkeypatch.chdir(tmp_path)  # where a re-drive file would go
    api = ScriptedAPI()
    server = api_server(api)
    dest = f"s3://{RAW_BUCKET}/landing"
    args = incremental_backfill(server.url, dest, "--state-key", "daily")
    # WHEN it runs THEN every day lands and the watermark is beside the objects
    assert main(args) == 0, capsys.readouterr()
    key = "landing/weather/_state/daily.json"
    assert json.loads(s3.get_bytes(RAW_BUCKET, key))["watermark"] == feb(28)
    # AND 'state show' finds it with the same flags
    capsys.readouterr()
    where = ["--dest", dest, "--source-id", "weather", "--state-key", "daily"]
    assert main(["state", "show", *where]) == 0
    assert json.loads(capsys.readouterr().out)["watermark"] == feb(28)
    # WHEN it is moved back a day THEN the next run fetches exactly that day
    assert main(["state", "set", feb(27), *where]) == 0
    seen = api.hits
    assert main(args) == 0
    assert api.hits - seen == Counter({feb(28): 1})


@pytest.mark.usefixtures("allow_private")
def test_state_show_and_set_find_an_event_with_numeric_extra_params(
    tmp_path: Path, api_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # GIVEN an incremental event whose extra_params hold limit: 100 as a number
    server = api_server(ScriptedAPI())
    endpoint = f"{server.url}/v1/data"
    body = {
        "api_config": {"endpoint": endpoint, "raw_bucket": RAW_BUCKET, "source_id": "weather"},
        "date_range": {
            "start": feb(1),
            "end": feb(3),
            "incremental": True,
            "extra_params": {"limit": 100},
        },
    }
    job = parse_event(
        body, default_request_id="ev-1", policy=NetPolicy(allow_private_networks=True)
    )
    assert asyncio.run(execute(job, local_dir=tmp_path)).result["status"] == "SUCCESS"
    # WHEN the CLI looks for it with --query limit=100 (a string)
    where = ["--dest", str(tmp_path), "--source-id", "weather", "--endpoint", endpoint]
    where += ["--query", "limit=100"]
    assert main(["state", "show", *where]) == 0
    # THEN it finds the event's state object, and 'set' replaces that same object
    assert json.loads(capsys.readouterr().out)["watermark"] == feb(3)
    assert main(["state", "set", feb(2), *where]) == 0
    assert len(list((tmp_path / "weather" / "_state").glob("*.json"))) == 1


@pytest.mark.parametrize("command", ["backfill", "plan"])
def test_a_relative_date_out_of_range_is_bad_usage_naming_the_flag(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [command, "--start", "today-999999d", "--end", "today"]
    if command == "backfill":
        args += ["--endpoint", "https://api.example.com/v1/data", "--source-id", "s"]
        args += ["--dest", str(tmp_path), "--incremental"]
    assert main(args) == 2
    assert "--start: 'today-999999d' is out of range" in capsys.readouterr().err


def test_a_packed_incremental_backfill_under_a_prefix_packs_one_object_per_day(
    s3: MotoS3,
    tmp_path: Path,
    api_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # GIVEN the 26th failing once, and a packed incremental backfill into S3 under a prefix
    monkeypatch.setattr(backfill, "utc_now", lambda: MARCH_FIRST)
    monkeypatch.chdir(tmp_path)
    server = api_server(ScriptedAPI({feb(26): [Response(status=500), Response()]}))
    args = incremental_backfill(server.url, f"s3://{RAW_BUCKET}/landing", "--pack", "record")
    # WHEN it runs twice
    assert main(args) == 1
    assert main(args) == 0, capsys.readouterr()
    # THEN each day is one object named by it, under the prefix: the 26th's re-fetch is alone
    packs = [k for k in s3.list_keys(RAW_BUCKET, prefix="landing/weather/") if "/_" not in k]
    assert packs == [f"landing/weather/{feb(d)}.ndjson.gz" for d in range(24, 29)]
