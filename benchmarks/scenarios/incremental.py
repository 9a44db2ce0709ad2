"""Issues 12 and 18: what a scheduled incremental run costs once the history is in.

A year of daily history is ingested by one incremental run; then each "next day"
runs the same event with the range one day longer. It should make exactly one API
request (the new day) and take a fraction of any re-run: the state read and its
conditional write are all it adds to that request. Then a week passes without
runs: the next run catches up with exactly seven requests. Peers, measured in the
same worker: the day after the history as a full re-run (every day fetched again)
and as a ``skip_existing`` re-run onto the same per-day keys (a HEAD per landed
day, then the new one). API requests are counted from the results: items fetched
plus their retries (the bench API never fails, so there are none).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from datetime import date, timedelta
from typing import Any

from benchmarks.measure import SMALL_BODY_BYTES, Bench
from benchmarks.peers import REPO_ROOT, LocalContext, worker_env
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, start_servers

HISTORY_DAYS = 365
QUICK_HISTORY_DAYS = 365  # the claim is about a year of history: cheap even when quick
WEEK_DAYS = 7  # days without runs before the catch-up
NEXT_DAYS = 5  # scheduled runs measured after the history, one new day each
QUICK_NEXT_DAYS = 3
LATENCY_MS = 20
CONCURRENCY = 32
FIRST_DAY = date(2024, 1, 1)
SOURCE_ID = "bench-incremental"
WORKER_TIMEOUT_S = 600
# A daily run must take at most this share of the cheaper re-run peer's wall time.
MAX_DAILY_SHARE_OF_RERUN = 0.25


def run(bench: Bench) -> Section:
    """History, then daily runs, against the full and skip_existing re-runs of the same day."""
    days = bench.size(full=HISTORY_DAYS, quick=QUICK_HISTORY_DAYS)
    next_days = bench.size(full=NEXT_DAYS, quick=QUICK_NEXT_DAYS)
    # The watermark lives in S3 and needs GetObject and conditional PutObject: the
    # sink has neither, so moto (or the given URL) stands in.
    s3 = bench.s3_choice if bench.s3_choice not in ("sink",) else "moto"
    with start_servers(
        api=ApiOptions(latency_ms=LATENCY_MS, body_bytes=SMALL_BODY_BYTES),
        s3=s3,
        log_dir=bench.log_dir / "servers-incremental",
    ) as servers:
        record = _run_worker(servers.api_url, servers.s3_url, servers.bucket, days, next_days)
        s3_kind = servers.s3_kind
    section = Section(
        "incremental",
        "Incremental runs (issues 12, 18)",
        f"API answers after {LATENCY_MS} ms with 9,000-byte bodies; concurrency {CONCURRENCY}; "
        f"S3: {s3_kind} (the watermark needs GetObject and conditional PutObject). One "
        f"incremental run ingests {days} days, then {next_days} scheduled runs each add one "
        "day, and after a week without runs one run catches up; the peers answer the same "
        "next day by re-running everything, or by re-running with skip_existing onto the "
        "same per-day keys. All in one worker process "
        "calling lambda_handler; medians of the scheduled runs.",
    )
    section.tables.append(_table(record))
    section.verdicts.append(_verdict(record, days))
    section.raw = record
    return section


def _run_worker(
    api_url: str, s3_url: str, bucket: str, days: int, next_days: int
) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.scenarios.incremental", api_url, bucket]
    argv += [str(days), str(next_days)]
    done = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=worker_env(s3_url),
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        return {"status": "failed", "error": done.stderr[-2000:]}
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def _table(record: dict[str, Any]) -> Table:
    rows = []
    for name, label in (
        ("history", "history: one incremental run over every day"),
        ("daily", "next day, incremental (median)"),
        ("nothing_new", "same day again, incremental: nothing new"),
        ("catch_up", f"after {WEEK_DAYS} days without runs, incremental catch-up"),
        ("skip_existing", "next day, skip_existing re-run onto the history's keys"),
        ("full", "next day, full re-run"),
    ):
        run = record.get(name)
        if run is None:
            continue
        rows.append(
            [
                label,
                run["wall_s"],
                run["requested"],
                run["fetched"],
                run["skipped"],
                run["watermark"],
            ]
        )
    return Table(
        "A scheduled run against its peers",
        ["run", "wall s", "items run", "API requests", "HEAD-skipped", "watermark after"],
        rows,
    )


def _verdict(record: dict[str, Any], days: int) -> Verdict:
    claim = (
        f"after {days} days of history, a daily run makes one API request, a catch-up after"
        f" {WEEK_DAYS} days without runs makes {WEEK_DAYS}, and a daily run takes at most "
        f"{MAX_DAILY_SHARE_OF_RERUN:.0%} of the cheaper re-run (full or skip_existing)"
    )
    if record.get("status") != "ok":
        return Verdict("I12", claim, f"worker {record.get('status')}", "N/A")
    daily = record["daily"]
    rerun_s = min(record["full"]["wall_s"], record["skip_existing"]["wall_s"])
    measured = (
        f"API requests per daily run: {record['daily_fetched']}; catch-up:"
        f" {record['catch_up']['fetched']}; {daily['wall_s']:.3f} s (nothing new:"
        f" {record['nothing_new']['wall_s']:.3f} s) vs re-runs: full"
        f" {record['full']['wall_s']:.2f} s,"
        f" skip_existing {record['skip_existing']['wall_s']:.2f} s"
    )
    only_new = all(count == 1 for count in record["daily_fetched"])
    week = record["catch_up"]["fetched"] == WEEK_DAYS
    cheap = daily["wall_s"] <= MAX_DAILY_SHARE_OF_RERUN * rerun_s
    return Verdict("I12", claim, measured, "PASS" if only_new and week and cheap else "FAIL")


# ---------------------------------------------------------------------- worker


def _event(api_url: str, bucket: str, days: int, **extra: Any) -> dict[str, Any]:
    end = FIRST_DAY + timedelta(days=days - 1)
    date_range = {"start": FIRST_DAY.isoformat(), "end": end.isoformat(), **extra.pop("range", {})}
    return {
        "api_config": {"endpoint": api_url, "raw_bucket": bucket, "source_id": SOURCE_ID},
        "options": {"concurrency": CONCURRENCY, **extra.pop("options", {})},
        "date_range": date_range,
        **extra,
    }


def _timed(handler: Any, event: dict[str, Any], request_id: str) -> dict[str, Any]:
    started = time.perf_counter()
    result = handler(event, LocalContext(request_id))
    wall_s = time.perf_counter() - started
    if result["succeeded"] != result["requested"]:
        raise SystemExit(f"{request_id}: not every item succeeded: {result}")
    incremental = result.get("incremental") or {}
    return {
        "wall_s": wall_s,
        "requested": result["requested"],
        "fetched": result["requested"] - result["skipped_existing"] + result["retries"],
        "skipped": result["skipped_existing"],
        "watermark": incremental.get("watermark_after"),
    }


def _worker(api_url: str, bucket: str, days: int, next_days: int) -> dict[str, Any]:
    from handler.app import lambda_handler

    # Warm-up: imports, clients and the S3 server's first requests are not the history's.
    _timed(lambda_handler, _event(api_url, bucket, 1, request_id="warm-up"), "warm-up")
    incremental = {"range": {"incremental": True}}
    history = _timed(lambda_handler, _event(api_url, bucket, days, **incremental), "history")
    daily = [
        _timed(lambda_handler, _event(api_url, bucket, days + k, **incremental), f"daily-{k}")
        for k in range(1, next_days + 1)
    ]
    last = days + next_days
    nothing = _timed(lambda_handler, _event(api_url, bucket, last, **incremental), "nothing-new")
    week = _event(api_url, bucket, last + WEEK_DAYS, **incremental)
    catch_up = _timed(lambda_handler, week, "catch-up")
    # The peers answer "the day after the history" onto the history run's per-day keys.
    peer_days = days + 1
    per_day = {"key_template": "{source_id}/{param.date}.json"}
    skip = _event(api_url, bucket, peer_days, options={"skip_existing": True}, request_id="skip")
    skip["api_config"].update(per_day)
    full = _event(api_url, bucket, peer_days, request_id="full-rerun")
    return {
        "status": "ok",
        "history": history,
        "daily": _median_run(daily),
        "daily_runs": len(daily),
        "daily_fetched": [run["fetched"] for run in daily],
        "nothing_new": nothing,
        "catch_up": catch_up,
        "skip_existing": _timed(lambda_handler, skip, "skip-existing"),
        "full": _timed(lambda_handler, full, "full-rerun"),
    }


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    middle = sorted(runs, key=lambda run: run["wall_s"])[len(runs) // 2]
    return {**middle, "wall_s": statistics.median(run["wall_s"] for run in runs)}


if __name__ == "__main__":
    api, bucket_name, history_days, scheduled = sys.argv[1:5]
    print(json.dumps(_worker(api, bucket_name, int(history_days), int(scheduled))))
