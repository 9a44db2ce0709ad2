"""Issues 11 and 19: throttling that is polite (few 429s) but not timid (no time lost).

Three servers, each run with ``adaptive: true`` (the default) and, beside it in
the same repeat, ``adaptive: false`` (fixed concurrency; every item still waits
for its own Retry-After):

- **rate limit** (issue 11): the API allows 40 requests a second (a server-side
  token bucket holding 40), answers admitted requests after 100 ms and 429 +
  ``Retry-After: 1`` beyond. 400 items at concurrency 64: ideal 10 s. Targets:
  every item, 429s at most 15% of the API's requests, wall at most 1.3x ideal.
- **sparse refusals** (issue 19): an API with no rate limit refusing single
  requests: per 50 items one 429 + ``Retry-After: 1`` on its first request, two
  503 + ``Retry-After: 0`` once, one 404 and two 500 for good. 3,000 items at
  concurrency 128. Targets: adaptive within 1.2x of adaptive off, every good item
  written, the counts exact.
- **S3 SlowDown** (issue 19): the S3 sink answers SlowDown to half of all
  PutObjects, at random. 150 items at concurrency 64. Target: all written, within
  1.5x of the same run with adaptive off.
"""

from __future__ import annotations

import collections
import json
import statistics
import urllib.request
from collections.abc import Callable
from typing import Any

from benchmarks.measure import SMALL_BODY_BYTES, Bench, status_cell
from benchmarks.peers import key_prefix
from benchmarks.report import Section, Table, Verdict
from benchmarks.servers import (
    SPARSE_PERIOD,
    ApiOptions,
    Servers,
    count_objects,
    sparse_fate,
    start_servers,
)

PEERS = {"fanout_ingest": {}, "fanout_ingest adaptive:false": {"adaptive": False}}
OURS, OFF = "fanout_ingest", "fanout_ingest adaptive:false"

RATE_ITEMS, RATE_ITEMS_QUICK = 400, 200
RATE_CONCURRENCY = 64
RATE_PER_S = 40
RATE_LATENCY_MS = 100
RETRY_AFTER_S = 1
MAX_429_SHARE = 0.15  # of the API's requests
MAX_VS_IDEAL = 1.3

SPARSE_ITEMS, SPARSE_ITEMS_QUICK = 3000, 600
SPARSE_CONCURRENCY = 128
SPARSE_LATENCY_MS = 50
MAX_SPARSE_RATIO = 1.2

SLOWDOWN_ITEMS, SLOWDOWN_ITEMS_QUICK = 150, 150
SLOWDOWN_CONCURRENCY = 64
SLOWDOWN_SHARE = 0.5
MAX_SLOWDOWN_RATIO = 1.5

Records = dict[str, list[dict[str, Any]]]
COMMON = ["implementation", "runs", "succeeded", "API requests"]
RATE_HEADERS = [*COMMON, "429s", "429s ÷ requests", "wall s", "÷ ideal"]
SPARSE_HEADERS = [*COMMON, "refusals", "throttled", "API limit lowest / pace lowest"]
SPARSE_HEADERS += ["wall s", "÷ adaptive off"]
SLOWDOWN_HEADERS = [*COMMON, "SlowDowns", "throttled", "S3 limit lowest / pace lowest"]
SLOWDOWN_HEADERS += ["wall s", "÷ adaptive off"]


def run(bench: Bench) -> Section:
    """The three servers in turn, ours and ours with ``adaptive: false`` back to back."""
    section = Section(
        "throttling",
        "Throttling: a real rate limit, sparse refusals, S3 SlowDown (issues 11, 19)",
        f"Each part runs fanout-ingest with its defaults and with adaptive: false, back to "
        f"back, {bench.repeats} repeat(s), medians; no warm-up (it would spend the rate-"
        "limited API's tokens). Requests and refusals are counted by the servers.",
    )
    for part in (_rate_limit, _sparse, _slowdown):
        part(bench, section)
    return section


# ------------------------------------------------------------------ rate limit


def _rate_limit(bench: Bench, section: Section) -> None:
    items = bench.size(full=RATE_ITEMS, quick=RATE_ITEMS_QUICK)
    ideal_s = items / RATE_PER_S
    api = ApiOptions(
        latency_ms=RATE_LATENCY_MS,
        body_bytes=SMALL_BODY_BYTES,
        rate_limit_per_s=RATE_PER_S,
        retry_after_s=RETRY_AFTER_S,
    )
    records = _runs(bench, api, "rate", items, RATE_CONCURRENCY)
    rows = [
        [*_common_cells(name, runs), _median(runs, "api_429s"), _share_429(runs), _wall(runs)]
        for name, runs in records.items()
    ]
    rows = [[*row, _ratio(row[-1], ideal_s)] for row in rows]
    section.tables.append(
        Table(
            f"Rate limit: {items} items at c={RATE_CONCURRENCY} against {RATE_PER_S} requests/s "
            f"(burst {RATE_PER_S}, {RATE_LATENCY_MS} ms); ideal {ideal_s:.1f} s",
            RATE_HEADERS,
            rows,
        )
    )
    ours = records.get(OURS, [])
    share, wall = _share_429(ours), _wall(ours)
    section.verdicts += [
        _every_item(ours, items, "issue 11", "rate limit: every item succeeds"),
        _verdict(
            "issue 19",
            f"rate limit: 429s <= {MAX_429_SHARE:.0%} of requests",
            share,
            lambda v: f"{v:.1%} ({_median(ours, 'api_429s'):.0f} 429s)",
            lambda v: v <= MAX_429_SHARE,
        ),
        _verdict(
            "issue 19",
            f"rate limit: wall <= {MAX_VS_IDEAL}x ideal ({ideal_s * MAX_VS_IDEAL:.1f} s)",
            wall,
            lambda v: f"{v:.2f} s = {v / ideal_s:.2f}x",
            lambda v: v <= MAX_VS_IDEAL * ideal_s,
        ),
    ]
    section.raw["rate_limit"] = {"runs": records, "ideal_s": ideal_s}


def _share_429(runs: list[dict[str, Any]]) -> float | None:
    shares = [r["api_429s"] / r["api_requests"] for r in runs if r.get("api_requests")]
    return statistics.median(shares) if shares else None


# ------------------------------------------------------------------ sparse refusals


def _sparse(bench: Bench, section: Section) -> None:
    items = bench.size(full=SPARSE_ITEMS, quick=SPARSE_ITEMS_QUICK)
    fates = [sparse_fate(i) for i in range(items)]
    good = sum(1 for fate in fates if fate is None or fate[2])
    refused = sum(1 for fate in fates if fate is not None and fate[0] in (429, 503))
    api = ApiOptions(
        latency_ms=SPARSE_LATENCY_MS, body_bytes=SMALL_BODY_BYTES, sparse_refusals=True
    )

    expected = (good, items - good, refused)
    records = _runs(bench, api, "sparse", items, SPARSE_CONCURRENCY, expected=expected)
    rows = [
        [*_common_cells(name, runs), _median(runs, "api_refused"), *_tail(runs, records, "api")]
        for name, runs in records.items()
    ]
    section.tables.append(
        Table(
            f"Sparse refusals: {items} items at c={SPARSE_CONCURRENCY}, no rate limit; per "
            f"{SPARSE_PERIOD} items one 429 (Retry-After: 1) and two 503 (Retry-After: 0) "
            f"once, three hard failures; {good} good items",
            SPARSE_HEADERS,
            rows,
        )
    )
    ours = records.get(OURS, [])
    section.verdicts += [
        Verdict(
            "issue 19",
            f"sparse: every good item written, counts exact ({good} / {items - good} / "
            f"{refused} throttled)",
            "; ".join(f"{_counts(r)}, {r.get('objects')} objects" for r in ours) or "no run",
            "PASS" if ours and _status(ours) == "ok" else "FAIL",
        ),
        _against_off("sparse", ours, records.get(OFF, []), MAX_SPARSE_RATIO),
    ]
    section.raw["sparse"] = {"runs": records, "good": good, "refused": refused}


def _counts(record: dict[str, Any]) -> tuple[int, int, int]:
    detail = record.get("detail") or {}
    return (detail.get("succeeded") or 0, detail.get("failed") or 0, detail.get("throttled") or 0)


def _judge_expected(
    servers: Servers, record: dict[str, Any], expected: tuple[int, int, int]
) -> None:
    """A run whose items fail by design: ``ok`` when the counts (succeeded, failed,
    throttled) are exactly ``expected`` and exactly the good items' objects exist."""
    objects, _ = count_objects(servers, key_prefix(record["run_id"]))
    record["objects"] = objects
    problem = None
    if _counts(record) != expected:
        problem = f"counts {_counts(record)}, expected {expected}"
    elif objects != expected[0]:
        problem = f"{objects} objects, {expected[0]} expected"
    record["status"] = "ok" if problem is None else "failed"
    record["errors"] = [problem] if problem else []


# ------------------------------------------------------------------ S3 SlowDown


def _slowdown(bench: Bench, section: Section) -> None:
    items = bench.size(full=SLOWDOWN_ITEMS, quick=SLOWDOWN_ITEMS_QUICK)
    api = ApiOptions(body_bytes=SMALL_BODY_BYTES)
    records = _runs(
        bench, api, "slowdown", items, SLOWDOWN_CONCURRENCY, slowdown_share=SLOWDOWN_SHARE
    )
    rows = [
        [*_common_cells(name, runs), _median(runs, "s3_slowdowns"), *_tail(runs, records, "s3")]
        for name, runs in records.items()
    ]
    section.tables.append(
        Table(
            f"S3 SlowDown: {items} items at c={SLOWDOWN_CONCURRENCY}, the S3 sink answering "
            f"SlowDown to {SLOWDOWN_SHARE:.0%} of PutObjects",
            SLOWDOWN_HEADERS,
            rows,
        )
    )
    ours = records.get(OURS, [])
    section.verdicts += [
        _every_item(ours, items, "issue 19", "S3 SlowDown: every item written"),
        _against_off("S3 SlowDown", ours, records.get(OFF, []), MAX_SLOWDOWN_RATIO),
    ]
    section.raw["s3_slowdown"] = {"runs": records}


# ------------------------------------------------------------------ shared


def _runs(
    bench: Bench,
    api: ApiOptions,
    label: str,
    items: int,
    concurrency: int,
    *,
    expected: tuple[int, int, int] | None = None,
    slowdown_share: float = 0.0,
) -> Records:
    records: Records = collections.defaultdict(list)
    s3 = bench.s3(moto_ok=not slowdown_share)  # SlowDown is the sink's
    logs = bench.log_dir / f"servers-throttling-{label}"
    with start_servers(api=api, s3=s3, log_dir=logs, slowdown_share=slowdown_share) as servers:
        for _ in range(bench.repeats):
            for name, options in PEERS.items():
                record = _measured(bench, servers, items, concurrency, options)
                if expected is not None:
                    _judge_expected(servers, record, expected)
                records[name].append(record)
    return records


def _measured(
    bench: Bench,
    servers: Servers,
    items: int,
    concurrency: int,
    options: dict[str, Any],
) -> dict[str, Any]:
    before, s3_before = _stats(servers.api_url, reset=True), _sink_slowdowns(servers)
    record = bench.run(
        servers,
        "fanout_ingest",
        items=items,
        concurrency=concurrency,
        body_bytes=SMALL_BODY_BYTES,
        options=options,
        warmup=0,
    )
    after = _stats(servers.api_url)
    record["api_429s"] = after["throttled"] - before["throttled"]
    record["api_refused"] = after.get("refused", 0) - before.get("refused", 0)
    record["api_requests"] = after["requests"] - before["requests"]
    record["s3_slowdowns"] = _sink_slowdowns(servers) - s3_before
    return record


def _stats(api_url: str, *, reset: bool = False) -> dict[str, int]:
    """The API's counters; ``reset``: and make every item meet its refusals again."""
    base = api_url.rsplit("/v1/", 1)[0]
    request = urllib.request.Request(f"{base}/_reset", method="POST") if reset else None
    with urllib.request.urlopen(request or f"{base}/_stats", timeout=30) as response:
        return dict(json.load(response))


def _sink_slowdowns(servers: Servers) -> int:
    if servers.s3_kind != "sink":
        return 0
    with urllib.request.urlopen(f"{servers.s3_url}/_stats", timeout=30) as response:
        return int(json.load(response).get("slowdown", 0))


def _common_cells(name: str, runs: list[dict[str, Any]]) -> list[Any]:
    first_error = next((e for r in runs for e in r.get("errors", [])), None)
    summary = {"status": _status(runs), "runs": len(runs), "ok_runs": _ok(runs)}
    return [
        name,
        status_cell({**summary, "error": first_error}),
        statistics.median(_counts(r)[0] for r in runs) if runs else None,
        _median(runs, "api_requests"),
    ]


def _tail(runs: list[dict[str, Any]], records: Records, side: str) -> list[Any]:
    """Throttled, the lowest limit and pace, wall, and wall ÷ the adaptive-off run's."""
    wall = _wall(runs)
    return [_throttled(runs), _lowest(runs, side), wall, _ratio(wall, _wall(records.get(OFF, [])))]


def _throttled(runs: list[dict[str, Any]]) -> float | None:
    values = [_counts(r)[2] for r in runs]
    return statistics.median(values) if values else None


def _lowest(runs: list[dict[str, Any]], side: str = "api") -> str:
    """``64 / -`` from the last run's result: the limit's lowest point and the pace's."""
    adaptive = ((runs[-1].get("detail") or {}).get("adaptive") or {}) if runs else {}
    if not adaptive.get("enabled"):
        return "off"
    pace = adaptive.get(f"{side}_pace_lowest_per_s")
    return f"{adaptive.get(f'{side}_lowest')} / {'-' if pace is None else f'{pace:g}/s'}"


def _median(records: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in records if r.get(field) is not None]
    return statistics.median(values) if values else None


def _wall(runs: list[dict[str, Any]]) -> float | None:
    return _median(runs, "wall_s")


def _ratio(value: float | None, base: float | None) -> float | None:
    return None if value is None or not base else value / base


def _ok(runs: list[dict[str, Any]]) -> int:
    return sum(1 for r in runs if r["status"] == "ok")


def _status(runs: list[dict[str, Any]]) -> str:
    return "ok" if runs and _ok(runs) == len(runs) else "failed"


def _every_item(runs: list[dict[str, Any]], items: int, target: str, claim: str) -> Verdict:
    if not runs:
        return Verdict(target, claim, "not run", "N/A")
    worst = min(_counts(r)[0] for r in runs)
    passed = worst == items and _status(runs) == "ok"
    return Verdict(
        target, claim, f"{worst}/{items} in the worst of {len(runs)}", "PASS" if passed else "FAIL"
    )


def _against_off(
    what: str, ours: list[dict[str, Any]], off: list[dict[str, Any]], most: float
) -> Verdict:
    """Adaptive's wall time within ``most`` times that of adaptive off (medians)."""
    return _verdict(
        "issue 19",
        f"{what}: adaptive within {most}x of adaptive off",
        _ratio(_wall(ours), _wall(off)),
        lambda v: f"{v:.2f}x ({_wall(ours):.1f} s vs {_wall(off):.1f} s)",
        lambda v: v <= most,
    )


def _verdict(
    target: str,
    claim: str,
    value: float | None,
    shown: Callable[[float], str],
    passes: Callable[[float], bool],
) -> Verdict:
    if value is None:
        return Verdict(target, claim, "not run", "N/A")
    return Verdict(target, claim, shown(value), "PASS" if passes(value) else "FAIL")
