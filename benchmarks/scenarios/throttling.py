"""Issue 11: a rate-limited API is respected: few 429s, wall time near the ideal.

The API allows 40 requests a second (a server-side token bucket holding one
second's worth, 40 tokens), answers admitted requests after 100 ms and answers
429 with ``Retry-After: 1`` beyond the limit. 400 items at concurrency 64, so the
ideal wall time is 400 / 40 = 10 s. fanout-ingest runs with its defaults
(``adaptive: true``) and, beside it in the same repeat, with ``adaptive: false``:
a fixed-concurrency client that retries each 429 after its own Retry-After.
Targets for ours: every item succeeds; 429s received at most 20% of the items;
wall time at most 1.5x the ideal.
"""

from __future__ import annotations

import collections
import json
import statistics
import urllib.request
from typing import Any

from benchmarks.measure import SMALL_BODY_BYTES, Bench, status_cell
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import ApiOptions, Servers, start_servers

ITEMS_FULL, ITEMS_QUICK = 400, 200
CONCURRENCY = 64
RATE_PER_S = 40
LATENCY_MS = 100
RETRY_AFTER_S = 1
MAX_429_SHARE = 0.20
MAX_VS_IDEAL = 1.5
PEERS = {"fanout_ingest": {}, "fanout_ingest adaptive:false": {"adaptive": False}}


def run(bench: Bench) -> Section:
    """Ours and ours with ``adaptive: false``, back to back, ``bench.repeats`` times."""
    items = bench.size(full=ITEMS_FULL, quick=ITEMS_QUICK)
    ideal_s = items / RATE_PER_S
    records: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    api = ApiOptions(
        latency_ms=LATENCY_MS,
        body_bytes=SMALL_BODY_BYTES,
        rate_limit_per_s=RATE_PER_S,
        retry_after_s=RETRY_AFTER_S,
    )
    with start_servers(api=api, s3=bench.s3(), log_dir=bench.log_dir / "servers-throttling") as s:
        for _ in range(bench.repeats):
            for name, options in PEERS.items():
                records[name].append(_measured(bench, s, items, options))
    section = Section(
        "throttling",
        "A rate-limited API (issue 11)",
        f"{items} items of 9,000 bytes at concurrency {CONCURRENCY} against an API allowing "
        f"{RATE_PER_S} requests/s (server-side token bucket of {RATE_PER_S}), answering "
        f"admitted requests after {LATENCY_MS} ms and 429 with Retry-After: {RETRY_AFTER_S} "
        f"beyond; ideal wall time {ideal_s:.1f} s. No warm-up (it would spend the API's "
        f"tokens); each worker starts with the API's bucket full. {bench.repeats} repeat(s), "
        "medians; 429s counted by the API server.",
    )
    section.tables.append(_table(records, items, ideal_s))
    section.verdicts += _verdicts(records.get("fanout_ingest", []), items, ideal_s)
    section.raw = {"runs": records, "ideal_s": ideal_s}
    return section


def _measured(
    bench: Bench, servers: Servers, items: int, options: dict[str, Any]
) -> dict[str, Any]:
    before = _api_stats(servers)
    record = bench.run(
        servers,
        "fanout_ingest",
        items=items,
        concurrency=CONCURRENCY,
        body_bytes=SMALL_BODY_BYTES,
        options=options,
        warmup=0,
    )
    after = _api_stats(servers)
    record["api_429s"] = after["throttled"] - before["throttled"]
    record["api_requests"] = after["requests"] - before["requests"]
    return record


def _api_stats(servers: Servers) -> dict[str, int]:
    url = servers.api_url.rsplit("/v1/", 1)[0] + "/_stats"
    with urllib.request.urlopen(url, timeout=30) as response:
        return dict(json.load(response))


def _median(records: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in records if r.get(field) is not None]
    return statistics.median(values) if values else None


def _succeeded(record: dict[str, Any]) -> int:
    return int(record.get("succeeded") or 0)


def _table(records: dict[str, list[dict[str, Any]]], items: int, ideal_s: float) -> Table:
    rows = []
    for name, runs in records.items():
        wall = _median(runs, "wall_s")
        throttled = _median(runs, "api_429s")
        rows.append(
            [
                name,
                status_cell(
                    {
                        "status": _status(runs),
                        "runs": len(runs),
                        "ok_runs": _ok(runs),
                        "error": next((e for r in runs for e in r.get("errors", [])), None),
                    }
                ),
                statistics.median(_succeeded(r) for r in runs),
                throttled,
                throttled / items if throttled is not None else None,
                _median(runs, "api_requests"),
                wall,
                wall / ideal_s if wall is not None else None,
            ]
        )
    return Table(
        f"{items} items against {RATE_PER_S} requests/s (medians)",
        [
            "implementation",
            "runs",
            "succeeded",
            "429s received",
            "429s ÷ items",
            "API requests",
            "wall s",
            "÷ ideal",
        ],
        rows,
    )


def _ok(runs: list[dict[str, Any]]) -> int:
    return sum(1 for r in runs if r["status"] == "ok")


def _status(runs: list[dict[str, Any]]) -> str:
    return "ok" if runs and _ok(runs) == len(runs) else "failed"


def _verdicts(runs: list[dict[str, Any]], items: int, ideal_s: float) -> list[Verdict]:
    claims = (
        "every item succeeds (adaptive, defaults)",
        f"429s received <= {MAX_429_SHARE:.0%} of items ({int(items * MAX_429_SHARE)})",
        f"wall <= {MAX_VS_IDEAL}x ideal ({ideal_s * MAX_VS_IDEAL:.1f} s)",
    )
    if not runs:
        return [Verdict("issue 11", claim, "not run", "N/A") for claim in claims]
    worst_succeeded = min(_succeeded(r) for r in runs)
    throttled = _median(runs, "api_429s") or 0
    wall = _median(runs, "wall_s")
    wall_ok = wall is not None and wall <= MAX_VS_IDEAL * ideal_s
    return [
        Verdict(
            "issue 11",
            claims[0],
            f"{worst_succeeded}/{items} in the worst of {len(runs)} run(s)",
            "PASS" if worst_succeeded == items and _status(runs) == "ok" else "FAIL",
        ),
        Verdict(
            "issue 11",
            claims[1],
            f"{throttled:.0f} ({throttled / items:.1%}), median of {len(runs)}",
            "PASS" if throttled <= MAX_429_SHARE * items else "FAIL",
        ),
        Verdict(
            "issue 11",
            claims[2],
            f"{wall:.2f} s = {wall / ideal_s:.2f}x" if wall is not None else "no run",
            "PASS" if wall_ok else "FAIL",
        ),
    ]
